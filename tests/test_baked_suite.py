"""A baked service installs and passes its own test suite against real Redis and Postgres."""

import os

import pytest

from .conftest import ANSWER_SETS, bake_ok, project_venv, run

# Only answer sets for this interpreter's Python can be installed here.
RUNNABLE = [
    name for name, answers in ANSWER_SETS.items() if answers.get("python_version", "3.11") == "3.11"
]


@pytest.mark.baked_suite
@pytest.mark.parametrize("answer_set", RUNNABLE)
def test_baked_service_passes_its_own_tests(cookies, service_venv, answer_set, tmp_path):
    project = bake_ok(cookies, ANSWER_SETS[answer_set])
    venv = project_venv(service_venv, project, tmp_path / "venv")
    python = venv / "bin" / "python"
    # The defaults run the whole suite. The code is the same in every bake: what another answer
    # set changes (the defaults in .env and settings, the seeded plans, the names) is proven by
    # its fast subset, the tests that start no servers and wait out no outages.
    subset = [] if answer_set == "defaults" else ["-m", "not slow"]
    suite = run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *subset],
        cwd=project,
        timeout=1800,  # a hang guard: a busy machine has taken 12 minutes
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        DATABASE_URL=os.environ.get(
            "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
    )
    assert suite.returncode == 0, suite.stdout[-6000:] + suite.stderr[-3000:]
    assert " passed" in suite.stdout
