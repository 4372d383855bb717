"""Template-local extensions (cookiecutter's `_extensions`): a failed hook without a traceback,
and JSON rendered in the order the answers were given.

The pre-generation hook prints one line per bad answer, naming the field. cookiecutter then logs
"Stopping generation because pre_gen_project hook script didn't exit successfully" with the
traceback of its own code (hooks.run_hook_from_repo_dir), a dozen lines under ours that say
nothing more. This filter keeps cookiecutter's one line and drops its traceback. It lives in a
Jinja extension because that is the one part of a template cookiecutter loads into its own
process before the hooks run.
"""

import logging

from jinja2 import Environment
from jinja2.ext import Extension

FAILED_HOOK = "Stopping generation because"


class HookFailureWithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(FAILED_HOOK):
            record.exc_info = None
            record.exc_text = None
        return True


class QuietHookFailures(Extension):
    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        hooks_logger = logging.getLogger("cookiecutter.hooks")
        # One filter, however many environments cookiecutter builds (this module may be
        # imported afresh for each, so the check is by name, not by class).
        if not any(type(f).__name__ == "HookFailureWithoutTraceback" for f in hooks_logger.filters):
            hooks_logger.addFilter(HookFailureWithoutTraceback())


class AnswerOrderJson(Extension):
    """`tojson` keeps the order of the answers' keys.

    Jinja's `tojson` sorts keys by default, so the seeded plans came out alphabetical
    (`enterprise` before `free`), and so did the priorities migration 0004 gives them in seed
    order: load shedding then dropped the best customers first. The plans are answered in a
    meaningful order, lowest first; that order is the one written.
    """

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.policies["json.dumps_kwargs"] = {"sort_keys": False}
