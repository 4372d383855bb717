"""The suite itself: safe to run in parallel, and beside other suites, on shared servers."""

import os
import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url

from .conftest import PROJECT, TEST_DB_PREFIX, TEST_REDIS_KEY_PREFIX


def names_under(**env: str) -> list[str]:
    """The database and Redis key prefixes the suite would use with `env`."""
    probe = "from tests import conftest as c; print(c.TEST_DB_PREFIX, c.TEST_REDIS_KEY_PREFIX)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


@pytest.mark.slow  # three Python processes
def test_the_names_the_suite_uses_come_from_the_environment_and_the_worker():
    names = names_under(
        TEST_DATABASE_PREFIX="ci_orders_",
        TEST_REDIS_KEY_PREFIX="ci-orders-",
        PYTEST_XDIST_WORKER="gw3",
    )
    assert names == ["ci_orders_gw3_", "ci-orders-gw3-"]
    # Two workers of one run never share a name.
    assert names_under(PYTEST_XDIST_WORKER="gw0") != names_under(PYTEST_XDIST_WORKER="gw1")


def test_a_tests_database_and_keys_carry_the_suites_names(database_url, key_prefix):
    assert (make_url(database_url).database or "").startswith(TEST_DB_PREFIX)
    assert key_prefix.startswith(TEST_REDIS_KEY_PREFIX)
