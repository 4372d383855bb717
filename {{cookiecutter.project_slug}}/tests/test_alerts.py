"""The alert rules and the dashboard in deploy/: valid, tested, and about metrics that exist.

promtool (Prometheus' own checker) validates the rules and runs their unit tests
(deploy/prometheus/rules_test.yml: series that make each alert fire and series that must not).
Every metric name a rule or a dashboard query uses must be one the running service exposes, or a
recording rule of rules.yml, so a renamed or misspelt metric fails here, not in the first incident.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

PROJECT = Path(__file__).resolve().parents[1]
PROMETHEUS = PROJECT / "deploy" / "prometheus"
DASHBOARD = PROJECT / "deploy" / "grafana" / "dashboards" / "ratelimit.json"
HOW_TO_INSTALL_PROMTOOL = (
    "promtool is not installed: `sudo apt-get install prometheus` (Debian, Ubuntu), "
    "`brew install prometheus` (macOS), or a release from https://prometheus.io/download/"
)
# Made by Prometheus itself, not by the service.
SCRAPE_METRICS = {"up"}
# PromQL words that look like metric names.
KEYWORDS = {"and", "or", "unless", "atan2", "bool", "offset", "group_left", "group_right"}
KEYWORDS |= {"inf", "nan"}  # PromQL's keywords are case-insensitive: compared in lower case
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may look like anything
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana's variables ($job, $__rate_interval)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # matchers, ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)\s*(\()?", expr)
    return {match[1] for match in found if not match[2] and match[1].lower() not in KEYWORDS}


def rule_groups() -> list[dict]:
    return yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]


def rule_names(kind: str) -> set[str]:
    """The names of the rules of one kind: "alert" or "record"."""
    return {rule[kind] for group in rule_groups() for rule in group["rules"] if kind in rule}


def rule_expressions() -> dict[str, str]:
    return {
        rule.get("alert") or rule["record"]: rule["expr"]
        for group in rule_groups()
        for rule in group["rules"]
    }


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        f"{panel['title']} ({target['refId']})": target["expr"]
        for panel in dashboard["panels"]
        for target in panel["targets"]
    }


def exposed_names(exposition: str) -> set[str]:
    """Every sample name the exposition can carry: a family without samples yet included."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)))
    return names


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(HOW_TO_INSTALL_PROMTOOL, pytrace=False)
    return found


@pytest.fixture
def service_metrics(start_uvicorn, redis_url, key_prefix, database_url) -> set[str]:
    """The names the service started as the README says (uvicorn, Redis, Postgres) exposes."""
    base_url = start_uvicorn(
        REDIS_URL=redis_url, RATELIMIT_KEY_PREFIX=key_prefix, DATABASE_URL=database_url
    )
    httpx.get(f"{base_url}/v1/items", timeout=10)  # one decision, so labelled series exist too
    return exposed_names(httpx.get(f"{base_url}/metrics", timeout=10).text)


def test_the_rules_pass_promtool_check(promtool):
    done = subprocess.run(
        [promtool, "check", "rules", "rules.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_alert_fires_on_its_series_and_stays_quiet_on_the_others(promtool):
    done = subprocess.run(
        [promtool, "test", "rules", "rules_test.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test():
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "rules_test.yml").read_text()))
    assert rule_names("alert") - tested == set()


def test_the_rules_cover_what_the_limiter_exports():
    used = set().union(*map(metric_names, rule_expressions().values()))
    assert {
        "ratelimit_storage_up",
        "ratelimit_storage_errors_total",
        "ratelimit_storage_may_evict",
        "ratelimit_decisions_total",
        "load_shed_total",
        "event_loop_lag_seconds",
        "plan_config_errors_total",
        "http_requests_total",
    } <= used


def test_every_metric_in_the_rules_is_one_the_service_exposes(service_metrics):
    known = service_metrics | rule_names("record") | SCRAPE_METRICS
    unknown = {
        name: sorted(metric_names(expr) - known)
        for name, expr in rule_expressions().items()
        if metric_names(expr) - known
    }
    assert unknown == {}


def test_every_dashboard_query_uses_metrics_the_service_exposes(service_metrics):
    known = service_metrics | rule_names("record") | SCRAPE_METRICS
    queries = dashboard_expressions()
    assert all(metric_names(expr) for expr in queries.values())  # each query selects something
    unknown = {
        panel: sorted(metric_names(expr) - known)
        for panel, expr in queries.items()
        if metric_names(expr) - known
    }
    assert unknown == {}


def test_the_dashboard_has_what_grafana_requires():
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["title"], str) and dashboard["title"]
    assert isinstance(dashboard["uid"], str) and len(dashboard["uid"]) <= 40
    assert isinstance(dashboard["schemaVersion"], int)
    assert {"from", "to"} <= dashboard["time"].keys()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] and panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24  # Grafana's grid width
        assert panel["datasource"]["uid"] == datasource_uid()
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def datasource_uid() -> str:
    provisioned = PROJECT / "deploy" / "grafana" / "provisioning" / "datasources"
    (source,) = yaml.safe_load((provisioned / "prometheus.yml").read_text())["datasources"]
    return str(source["uid"])


def test_the_metric_name_reader_finds_names_and_only_names():
    expr = (
        'sum by (plan, route) (rate(ratelimit_decisions_total{job=~"$job", decision="x y"}'
        "[$__rate_interval])) / on (plan) group_left sum(a:b:c offset 5m) > bool 1e3"
    )
    assert metric_names(expr) == {"ratelimit_decisions_total", "a:b:c"}
