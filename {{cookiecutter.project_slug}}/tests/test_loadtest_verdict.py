"""The load test's verdict on recorded event sequences: each kind of breach fails the run."""

from xml.etree import ElementTree

from loadtests import picture
from loadtests.verdict import (
    Verdict,
    callers_in_flight,
    keyed_callers,
    parse_policies,
    parse_ratelimit,
)


def quota(policy: str, q: int, w: int, remaining: int, reset_in: int, now: float) -> dict:
    return {
        "ratelimit-policy": f'"{policy}";q={q};w={w}',
        "ratelimit": f'"{policy}";r={remaining};t={reset_in}',
        "x-ratelimit-limit": str(q),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(int(now) + reset_in),
    }


def refused(policy: str, q: int, w: int, now: float, reset_in: int = 30) -> dict:
    return {**quota(policy, q, w, 0, reset_in, now), "retry-after": str(reset_in)}


def clean_run(verdict: Verdict, now: float = 1_000_000.0) -> float:
    """5 admitted then 2 refused for a 5/60s key, and healthy probes."""
    for n in range(5):
        verdict.record("pro:a", "/v1/items", now + n, 200, quota("pro", 5, 60, 4 - n, 60 - n, now))
    for n in range(5, 7):
        verdict.record("pro:a", "/v1/items", now + n, 429, refused("pro", 5, 60, now + n))
    verdict.record_health(200)
    return now


def test_a_clean_run_passes():
    verdict = Verdict()
    clean_run(verdict)
    assert verdict.failures() == []
    assert verdict.table().endswith("PASS: the limits held")


def test_an_overshoot_fails():
    verdict = Verdict()
    now = clean_run(verdict)
    # Two instances counting separately: 5 more admitted within the same minute.
    for n in range(10, 15):
        verdict.record("pro:a", "/v1/items", now + n, 200, quota("pro", 5, 60, 4, 60, now + n))
    failures = verdict.failures()
    assert any("10 admitted within 60s under pro (quota 5)" in f for f in failures)
    assert "FAIL" in verdict.table()


def test_an_overshoot_within_the_stated_tolerance_passes():
    verdict = Verdict(overshoot_tolerance=2)
    now = clean_run(verdict)
    for n in range(10, 12):
        verdict.record("pro:a", "/v1/items", now + n, 200, quota("pro", 5, 60, 4, 60, now + n))
    assert verdict.failures() == []
    verdict.record("pro:a", "/v1/items", now + 13, 200, quota("pro", 5, 60, 4, 60, now + 13))
    assert verdict.failures()


def test_fixed_window_is_allowed_its_documented_burst_at_the_edge():
    verdict = Verdict(strategy="fixed-window")
    now = 1_000_000.0
    for n in range(10):  # 5 at the end of one window, 5 at the start of the next
        verdict.record("pro:a", "/v1/items", now + n, 200, quota("pro", 5, 60, 0, 60, now + n))
    assert verdict.failures() == []
    verdict.record("pro:a", "/v1/items", now + 11, 200, quota("pro", 5, 60, 0, 60, now + 11))
    assert verdict.failures()


def test_a_false_429_fails():
    verdict = Verdict()
    now = 1_000_000.0
    verdict.record("pro:a", "/v1/items", now, 200, quota("pro", 5, 60, 4, 60, now))
    verdict.record("pro:a", "/v1/items", now + 1, 429, refused("pro", 5, 60, now + 1))
    assert any("refused under pro after only 1 of 5 admitted" in f for f in verdict.failures())
    tolerant = Verdict(false_refusal_tolerance=1)
    tolerant.record("pro:a", "/v1/items", now, 200, quota("pro", 5, 60, 4, 60, now))
    tolerant.record("pro:a", "/v1/items", now + 1, 429, refused("pro", 5, 60, now + 1))
    assert tolerant.failures() == []


def test_a_429_without_retry_after_fails():
    verdict = Verdict()
    now = clean_run(verdict)
    headers = refused("pro", 5, 60, now + 8)
    del headers["retry-after"]
    verdict.record("pro:a", "/v1/items", now + 8, 429, headers)
    assert verdict.failures() == ["pro:a /v1/items: 429 without retry-after"]


def test_a_429_without_quota_headers_fails():
    verdict = Verdict()
    verdict.record("anonymous", "/v1/items", 1.0, 429, {"retry-after": "1"})
    failures = verdict.failures()
    assert len(failures) == 1 and "429 without x-ratelimit-limit" in failures[0]


def test_remaining_going_up_within_a_window_fails():
    verdict = Verdict()
    now = 1_000_000.0
    verdict.record("pro:a", "/v1/items", now, 200, quota("pro", 5, 60, 3, 60, now))
    verdict.record("pro:a", "/v1/items", now, 200, quota("pro", 5, 60, 4, 60, now))
    assert any("remaining went up from 3 to 4" in f for f in verdict.failures())


def test_a_reset_in_the_past_fails():
    verdict = Verdict()
    now = 1_000_000.0
    headers = quota("pro", 5, 60, 4, 60, now)
    headers["x-ratelimit-reset"] = str(int(now) - 30)
    verdict.record("pro:a", "/v1/items", now, 200, headers)
    assert any("is in the past" in f for f in verdict.failures())


def test_a_refused_or_failed_health_probe_fails():
    verdict = Verdict()
    clean_run(verdict)
    verdict.record_health(429)
    verdict.record_health(None)
    assert verdict.failures() == [
        "health probe answered 429",
        "health probe answered no response",
    ]


def test_a_server_error_fails():
    verdict = Verdict()
    verdict.record("anonymous", "/v1/items", 1.0, 500, {})
    assert verdict.failures() == ["anonymous /v1/items: the service answered 500"]


def test_header_parsing():
    assert [
        (p.name, p.quota, p.window) for p in parse_policies('"pro";q=10;w=60, "x";q=1;w=1')
    ] == [
        ("pro", 10, 60),
        ("x", 1, 1),
    ]
    assert parse_ratelimit('"pro";r=0;t=17') == ("pro", 0, 17)
    assert parse_policies("garbage") == [] and parse_ratelimit("garbage") is None


def test_a_refusal_by_a_shadow_limit_fails():
    verdict = Verdict()
    now = clean_run(verdict)
    verdict.record_shadow_policies("pro:b", {"pro-shadow"})
    verdict.record("pro:b", "/v1/items", now, 429, refused("pro-shadow", 2, 60, now))
    assert "pro:b /v1/items: refused by shadow limit pro-shadow" in verdict.failures()


def test_a_shadow_limit_in_the_quota_headers_fails():
    verdict = Verdict()
    now = clean_run(verdict)
    verdict.record_shadow_policies("pro:a", {"pro-shadow"})
    verdict.record("pro:a", "/v1/other", now, 200, quota("pro-shadow", 2, 60, 1, 60, now))
    assert verdict.failures() == ["pro:a /v1/other: shadow limit pro-shadow in the quota headers"]


def slots(now: float, in_flight: int = 2) -> dict:
    return {
        **quota("pro", 100, 60, 50, 60, now),
        "ratelimit-policy": '"pro";q=100;w=60, '
        f'"concurrency";q={in_flight};qu="concurrent-requests"',
    }


def test_more_in_flight_than_a_concurrency_policy_allows_fails():
    verdict = Verdict()
    now = clean_run(verdict)
    # Three requests of one caller overlapping for a second: one more than the two allowed.
    for n in range(3):
        verdict.record_interval("pro:a", "/export", now + n * 0.1, now + 1.5, 200, slots(now))
    assert verdict.failures() == [
        "pro:a /export: 3 in flight at once under concurrency (at most 2)"
    ]


def test_requests_one_after_another_do_not_count_as_in_flight_together():
    verdict = Verdict()
    now = clean_run(verdict)
    # Back to back (the client's timing overlaps by less than the network's share), refusals
    # and requests of another caller: never more than two at once.
    for n in range(6):
        verdict.record_interval("pro:a", "/export", now + n, now + n + 1.04, 200, slots(now))
        verdict.record_interval("pro:a", "/export", now + n, now + n + 1.04, 200, slots(now))
        verdict.record_interval("pro:a", "/export", now + n, now + n + 1, 429, slots(now))
        verdict.record_interval("pro:b", "/export", now + n, now + n + 1, 200, slots(now))
    assert verdict.failures() == []
    assert "concurrency" in verdict.table()


def test_shedding_fails_unless_the_run_expects_overload_for_that_plan():
    verdict = Verdict(sheddable=frozenset({"anonymous"}))
    clean_run(verdict)
    verdict.record_shed("anonymous", "anonymous", "/v1/items")
    assert verdict.failures() == []
    verdict.record_shed("pro:a", "pro", "/v1/items")
    assert verdict.failures() == ["pro:a /v1/items: shed although no overload was expected"]
    assert Verdict().failures() == [] and "shed (overload)" in verdict.table()


def test_a_refusal_that_the_callers_own_requests_in_flight_explain_passes():
    # Three users share the anonymous budget of 5: when one is refused after 3 admissions
    # recorded, the other two may hold admitted requests whose answers have not come yet.
    def run(verdict: Verdict) -> list[str]:
        now = 1_000_000.0
        for n in range(3):
            headers = quota("anonymous", 5, 60, 4 - n, 60, now)
            verdict.record("anonymous", "/v1/items", now + n / 10, 200, headers)
        refusal = refused("anonymous", 5, 60, now + 0.5)
        verdict.record("anonymous", "/v1/items", now + 0.5, 429, refusal)
        return verdict.failures()

    assert run(Verdict(concurrency={"anonymous": 3})) == []
    # One request at a time, the same refusal is a false one.
    (failure,) = run(Verdict())
    assert "refused under anonymous after only 3 of 5 admitted" in failure


def drawn(verdict: Verdict) -> ElementTree.Element:
    """The verdict's picture, parsed: it must be a well-formed SVG document."""
    svg = ElementTree.fromstring(picture.render(verdict.windows(), verdict.failures()))
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    return svg


def marked(svg: ElementTree.Element, kind: str) -> list[ElementTree.Element]:
    return [element for element in svg.iter() if element.get("class") == kind]


def text(svg: ElementTree.Element) -> str:
    return " ".join(element.text or "" for element in svg.iter())


def test_the_picture_of_a_passing_run_shows_quota_admissions_and_refusals_and_no_overshoot():
    verdict = Verdict()
    clean_run(verdict)
    svg = drawn(verdict)
    assert "PASS: the limits held" in text(svg)
    assert "pro:a" in text(svg) and "pro: 5/60s, refused 2 peak 5" in text(svg)
    assert len(marked(svg, "refused")) == 2
    assert marked(svg, "overshoot") == [] and "OVERSHOOT" not in text(svg)


def test_the_picture_of_an_overshoot_marks_the_windows_that_admitted_too_many():
    verdict = Verdict()
    now = clean_run(verdict)
    for n in range(10, 15):  # two instances counting apart: 10 admitted in one minute
        verdict.record("pro:a", "/v1/items", now + n, 200, quota("pro", 5, 60, 4, 60, now + n))
    verdict.record("free:b", "/v1/items", now, 200, quota("free", 5, 60, 4, 60, now))
    svg = drawn(verdict)
    assert "FAIL: the limits did not hold" in text(svg)
    assert "10 admitted within 60s under pro (quota 5)" in text(svg)  # the failure, listed
    assert "pro: 5/60s, refused 2 OVERSHOOT: peak 10" in text(svg)
    # The windows ending at the last five admissions hold 6 to 10: each is marked; the
    # caller that stayed under its quota is drawn unmarked.
    assert len(marked(svg, "overshoot")) == 5
    (overshot,) = marked(svg, "series overshot")
    assert "pro:a" in text(overshot)


def test_the_picture_escapes_what_callers_and_routes_are_named():
    verdict = Verdict()
    verdict.record("a<b>&", "/v1/<x>", 1.0, 200, quota("p&q", 5, 60, 4, 60, 1.0))
    assert "a<b>&" in text(drawn(verdict))  # parsed back: it was escaped, not markup


KEYS_FILE = {"pro": {"acme": ["sk_a", "sk_b"], "solo": ["sk_c"]}, "free": {"tiny": ["sk_d"]}}


def test_keys_of_one_account_are_one_caller_with_one_request_in_flight_per_key():
    assert keyed_callers(KEYS_FILE) == [
        ("pro", "pro:acme", "sk_a"),
        ("pro", "pro:acme", "sk_b"),
        ("pro", "pro:solo", "sk_c"),
        ("free", "free:tiny", "sk_d"),
    ]
    assert callers_in_flight(KEYS_FILE) == {"pro:acme": 2, "pro:solo": 1, "free:tiny": 1}


def test_two_keys_of_one_account_admitted_the_plan_each_is_an_overshoot():
    # Each key alone stays within 5/60s; the account they share got 8.
    verdict = Verdict(concurrency=callers_in_flight(KEYS_FILE))
    now = 1_000_000.0
    callers = {key: caller for _, caller, key in keyed_callers(KEYS_FILE)}
    for n in range(4):
        for key in ("sk_a", "sk_b"):
            headers = quota("pro", 5, 60, 4, 60 - n, now)
            verdict.record(callers[key], "/v1/items", now + n, 200, headers)
    (failure,) = verdict.failures()
    assert failure.startswith("pro:acme /v1/items: 8 admitted within 60s under pro (quota 5)")
