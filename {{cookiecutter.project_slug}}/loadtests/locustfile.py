"""Load test: users per plan and account, each with its own API key, and a verdict on whether
limits held.

    python loadtests/run.py --host https://staging.example.com --duration 2m   # see its --help

Settings (environment variables, so the same file serves laptops, compose and staging):
- LOADTEST_KEYS_FILE: JSON {"plan": {"account": ["key", ...]}} (`loadtest provision` writes
  it); one locust user per key. The caller the verdict judges is the account: all of its keys
  spend one budget, so their admissions are counted together.
- LOADTEST_ANONYMOUS_USERS (2), LOADTEST_HEALTH_USERS (1): users without a key.
- LOADTEST_RPS_PER_USER (2): the pace of each user.
- LOADTEST_STRATEGY (the service's default): the algorithm, for its documented slack.
- LOADTEST_MAX_RETRY_AFTER (5): users honour Retry-After, waiting at most this many seconds.
- LOADTEST_FALSE_REFUSAL_TOLERANCE (0): 429s under the quota accepted before failing.
- LOADTEST_OVERSHOOT_TOLERANCE (0): admissions over a quota accepted per window (a run across
  a Redis outage under fail-open admits a few extra requests while instances count alone).
- LOADTEST_SHEDDABLE_PLANS (none): plans whose requests may be shed (503 with `"shed": true`)
  because the run overloads the service on purpose; a shed request of any other plan fails it.

Each user first reads its quotas (`GET /v1/rate-limit`), so the verdict knows which of its limits
are shadow limits: those must never refuse nor appear in the quota headers.
"""

import json
import os
import random
from pathlib import Path

import gevent
from locust import HttpUser, constant_throughput, events, task

import picture  # beside this file: locust puts its directory on sys.path
from verdict import Verdict, callers_in_flight, keyed_callers

KEYS_FILE = os.environ.get("LOADTEST_KEYS_FILE", str(Path(__file__).with_name("keys.json")))
ANONYMOUS_USERS = int(os.environ.get("LOADTEST_ANONYMOUS_USERS", "2"))
HEALTH_USERS = int(os.environ.get("LOADTEST_HEALTH_USERS", "1"))
RPS_PER_USER = float(os.environ.get("LOADTEST_RPS_PER_USER", "2"))
MAX_RETRY_AFTER = float(os.environ.get("LOADTEST_MAX_RETRY_AFTER", "5"))


def read_keys(path: Path) -> dict[str, dict[str, list[str]]]:
    """The keys file: plan -> account -> keys. (Keys listed by plan alone, the format before
    accounts, cannot say which keys share a budget: refused.)"""
    if not path.exists():
        return {}
    keys = json.loads(path.read_text())
    if any(not isinstance(accounts, dict) for accounts in keys.values()):
        raise SystemExit(
            f"{path}: expected keys by plan, then by account, as `loadtest provision` writes them"
        )
    return keys


KEYS = read_keys(Path(KEYS_FILE))
VERDICT = Verdict(
    strategy=os.environ.get("LOADTEST_STRATEGY", "{{ cookiecutter.ratelimit_strategy }}"),
    false_refusal_tolerance=int(os.environ.get("LOADTEST_FALSE_REFUSAL_TOLERANCE", "0")),
    overshoot_tolerance=int(os.environ.get("LOADTEST_OVERSHOOT_TOLERANCE", "0")),
    concurrency={"anonymous": max(1, ANONYMOUS_USERS), **callers_in_flight(KEYS)},
    sheddable=frozenset(
        plan.strip() for plan in os.environ.get("LOADTEST_SHEDDABLE_PLANS", "").split(",") if plan
    ),
)


def _shed(response) -> bool:
    """A 503 by which an overloaded instance shed the request (see the service's README)."""
    if getattr(response, "status_code", None) != 503:
        return False
    try:
        return response.json().get("shed") is True
    except ValueError:
        return False


@events.request.add_listener
def judge(name, response, context, start_time, response_time, exception, **_):
    status = getattr(response, "status_code", None) or None  # 0 or None: no response at all
    if context.get("health"):
        VERDICT.record_health(status)
        return
    caller = context["caller"]
    if _shed(response):
        VERDICT.record_shed(caller, caller.split(":")[0], name)
        return
    at = start_time + response_time / 2000  # the middle of the exchange: when it was decided
    headers = {k.lower(): v for k, v in response.headers.items()} if response is not None else {}
    VERDICT.record(caller, name, at, status, headers)
    end = start_time + response_time / 1000
    VERDICT.record_interval(caller, name, start_time, end, status, headers)


@events.quitting.add_listener
def announce(environment, **_):
    print(VERDICT.table(), flush=True)
    failures = VERDICT.failures()
    html_report = getattr(environment.parsed_options, "html_file", None)
    if html_report:  # the picture goes beside locust's own report
        drawn = Path(html_report).with_name("verdict.svg")
        drawn.write_text(picture.render(VERDICT.windows(), failures))
        print(f"verdict picture: {drawn}", flush=True)
    if failures:
        environment.process_exit_code = 1


class ServiceUser(HttpUser):
    abstract = True
    wait_time = constant_throughput(RPS_PER_USER)
    caller = "anonymous"
    api_key: str | None = None

    def context(self) -> dict:
        return {"caller": self.caller}

    def on_start(self) -> None:
        self._read_shadow_limits()

    def _read_shadow_limits(self) -> None:
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        with self.client.get(
            "/v1/rate-limit", headers=headers, name="/v1/rate-limit", catch_response=True
        ) as response:
            if response.status_code == 200:
                quotas = response.json().get("quotas", [])
                shadow = {quota["policy"] for quota in quotas if quota.get("shadow")}
                VERDICT.record_shadow_policies(self.caller, shadow)
            response.success()  # a 429 here is the verdict's to judge, like any other

    def _call(self, method: str, path: str, name: str, **kwargs) -> None:
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        with self.client.request(
            method, path, name=name, headers=headers, catch_response=True, **kwargs
        ) as response:
            if response.status_code == 429:
                response.success()  # an expected answer; the verdict judges it
                retry_after = response.headers.get("Retry-After", "1")
                wait = float(retry_after) if retry_after.isdigit() else 1.0
                gevent.sleep(min(wait, MAX_RETRY_AFTER))
            elif response.status_code in (200, 201, 404) or _shed(response):
                response.success()  # shed: the verdict judges whether it was expected

    @task(6)
    def list_items(self) -> None:
        self._call("GET", "/v1/items", "/v1/items")

    @task(3)
    def get_item(self) -> None:
        self._call("GET", f"/v1/items/{random.randint(1, 50)}", "/v1/items/{item_id}")

    @task(1)
    def create_item(self) -> None:
        # Same route template as the list: the plan's budget for it is shared, as in the app.
        self._call("POST", "/v1/items", "/v1/items", json={"name": "load test"})


class AnonymousUser(ServiceUser):
    fixed_count = ANONYMOUS_USERS


class HealthProbe(HttpUser):
    fixed_count = HEALTH_USERS
    wait_time = constant_throughput(2)

    @task
    def probe(self) -> None:
        with self.client.get("/health/live", context={"health": True}, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"health answered {r.status_code}")


def _keyed_user(plan: str) -> type[ServiceUser]:
    pool = [(caller, key) for of_plan, caller, key in keyed_callers(KEYS) if of_plan == plan]

    def on_start(self) -> None:
        self.caller, self.api_key = pool.pop()  # judged per account: its keys share a budget
        self._read_shadow_limits()

    return type(
        f"{plan.title().replace('-', '').replace('_', '')}User",
        (ServiceUser,),
        {"fixed_count": len(pool), "on_start": on_start, "__module__": __name__},
    )


# One user class per plan in the keys file, one user per key. (Locust collects every User
# class in this module's namespace, so each is bound once, under its own name.)
globals().update(
    {
        cls.__name__: cls
        for cls in (_keyed_user(plan) for plan, accounts in KEYS.items() if accounts)
    }
)
