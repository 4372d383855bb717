"""`python -m {{ cookiecutter.package_name }}`: the same command line as `{{ cookiecutter.project_slug }}`."""

import sys

from .cli import main

sys.exit(main())
