"""Logs an attacker can neither read addresses from nor inflate: a client is named by a keyed
hash, and a flood of refusals writes a bounded number of lines, all of it still counted."""

import asyncio
import hashlib
import json
import logging
import time

import pytest
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.observability.logs import JsonFormatter, RefusalLog, keyed_hash
from {{ cookiecutter.package_name }}.settings import Settings, describe_errors

from .conftest import metric, running_client, set_plan

KEY = "one-deployment-key-0123456789"
OTHER_KEY = "another-deployment-key-98765"


def lines(records: list[logging.LogRecord], logger: str) -> list[dict]:
    return [json.loads(JsonFormatter().format(r)) for r in records if r.name == logger]


async def access_client(settings: Settings, caplog: pytest.LogCaptureFixture) -> str:
    caplog.clear()
    async with running_client(settings, client_ip="127.0.0.1") as client:
        await client.get("/v1/items")
    [line] = lines(caplog.records, "access")
    return str(line["client"])


async def test_the_client_hash_is_keyed_so_an_address_cannot_be_tried(make_settings, caplog):
    caplog.set_level(logging.INFO)
    first = await access_client(make_settings(log_client_key=KEY), caplog)
    again = await access_client(make_settings(log_client_key=KEY), caplog)
    other = await access_client(make_settings(log_client_key=OTHER_KEY), caplog)
    unkeyed = hashlib.sha256(b"ip:127.0.0.1").hexdigest()[:16]
    assert first == again  # one key: the lines of every instance name a client alike
    assert first != other  # a new key starts new names
    assert unkeyed not in (first, other)  # the hash of the guessed address does not match
    assert first == keyed_hash(KEY.encode(), "ip:127.0.0.1")
    # No key set: a random one of the process, said at start-up; still not the plain hash.
    unset = await access_client(make_settings(), caplog)
    assert unset not in (first, other, unkeyed, keyed_hash(b"", "ip:127.0.0.1"))
    assert "LOG_CLIENT_KEY is not set" in caplog.text


def test_a_placeholder_or_short_log_client_key_is_refused_without_repeating_it():
    for value in ("__generate_secret__", "tiny-secret"):
        with pytest.raises(ValidationError) as caught:
            Settings(_env_file=None, log_client_key=value)
        [line] = describe_errors(caught.value)
        assert line.startswith("error: LOG_CLIENT_KEY='***': too short or a placeholder"), line
        assert value not in line


async def test_a_flood_of_refusals_writes_one_line_and_a_summary_and_counts_every_one(
    make_settings, database_url, caplog
):
    caplog.set_level(logging.INFO)
    await set_plan(database_url, "anonymous", "5/minute")
    flood = 300
    async with running_client(make_settings(log_client_key=KEY)) as client:
        before = (await client.get("/metrics")).text  # metrics are the process's: a delta
        answers = [(await client.get("/v1/items")).status_code for _ in range(5 + flood)]
        scraped = (await client.get("/metrics")).text
    # Leaving the client shut the app down: the open window's summary is written then.
    assert answers.count(429) == flood
    refusals = lines(caplog.records, "ratelimit")
    first = [line for line in refusals if "more" not in line]
    summaries = [line for line in refusals if "more" in line]
    # One window (two if the flood crossed a clock minute): its first refusal and a summary.
    assert 1 <= len(first) <= 2 and len(summaries) == len(first), refusals
    assert len(first) + sum(line["more"] for line in summaries) == flood
    if len(first) == 1:
        assert summaries[0]["more"] == flood - 1
    summary = summaries[0]
    assert summary["subject"] == first[0]["subject"] and summary["policy"] == "anonymous"
    assert summary["route"] == "/v1/items" and summary["limit"] == "5 per 1 minute"
    # The access log keeps the admitted requests and the logged refusals, not the repeats.
    access = [line["status"] for line in lines(caplog.records, "access")]
    assert access.count(200) == 5 + 2 and access.count(429) == len(first)  # + 2 /metrics
    # Metrics still count every refusal.
    limited = {"plan": "anonymous", "route": "/v1/items", "decision": "limited"}
    assert (
        metric(scraped, "ratelimit_decisions_total", **limited)
        - metric(before, "ratelimit_decisions_total", **limited)
        == flood
    )


async def test_the_summary_is_written_when_the_window_ends_while_the_service_runs(
    make_settings, database_url, caplog
):
    caplog.set_level(logging.INFO)
    await set_plan(database_url, "anonymous", "1/second")
    async with running_client(make_settings(log_client_key=KEY)) as client:
        statuses = [(await client.get("/v1/items")).status_code for _ in range(20)]
        deadline = time.monotonic() + 5
        while not any("more" in line for line in lines(caplog.records, "ratelimit")):
            assert time.monotonic() < deadline, "no summary within 5 s of the window's end"
            await client.get("/health/live")  # lets the sweep run; a probe is never refused
            await asyncio.sleep(0.05)
    refused = statuses.count(429)
    refusals = lines(caplog.records, "ratelimit")
    first = [line for line in refusals if "more" not in line]
    assert len(first) + sum(line.get("more", 0) for line in refusals) == refused
    assert len(refusals) <= 2 * 3  # at most three one-second windows in the loop


def test_refusals_of_more_callers_than_the_table_holds_are_summarised_not_kept():
    logger = logging.getLogger("test-refusal-log")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        log = RefusalLog(logger, max_entries=3)
        for caller in range(10):
            for _ in range(4):
                log.refused(caller, 60, "refused", {"caller": caller}, {"caller": caller})
        assert len(log._windows) == 3  # memory bounded
        log.sweep()
    finally:
        logger.removeHandler(handler)
    written = [(r.getMessage(), getattr(r, "more", None)) for r in records]
    assert written[:3] == [("refused", None)] * 3  # the first three callers' first refusals
    assert sorted(more for _, more in written[3:]) == [3, 3, 3, 7 * 4]
    assert len(log._windows) == 0 and not log._overflow
