"""Did the limits hold? Judges what a load test saw, response by response.

Pure Python, no locust import: the locustfile feeds it, the unit tests feed it recorded events.
Each response is attributed to a caller (an account, whose keys all spend one budget, see
`keyed_callers`; or "anonymous": all anonymous users share the load generator's address), a
route template and the policies its RateLimit-Policy header lists. A run fails when:

- overshoot: a caller was admitted more than a policy's quota within one window, allowing the
  algorithm's documented slack (fixed-window admits up to 2x across a window edge) and
  `overshoot_tolerance` extra requests (for runs across a Redis outage under fail-open, where
  each instance counts alone for a moment);
- false refusal: a caller got a 429 although it had been admitted less than the quota (minus
  its own concurrency) in the window before, more often than the stated tolerance;
- a health probe failed or was refused, or the service answered a 5xx;
- a 429 lacked Retry-After or the quota headers;
- the quota headers contradicted themselves: remaining going up while the reset time stays the
  same, or a reset time in the past;
- a shadow limit (one the caller's `GET /v1/rate-limit` lists as `shadow`) refused a request or
  appeared in the quota headers: shadow limits are counted and logged, never enforced;
- a caller had more requests admitted at once on a route than its concurrency policy allows
  (`"concurrency";q=N;qu="concurrent-requests"`), intervals as the client timed them, each
  narrowed by `slot_tolerance` at both ends for the network's share;
- a request was shed (503, `"shed": true` in its body: the instance was overloaded) although
  the run did not expect overload for its caller's plan (`sheddable`, empty by default).

Times are the client's; `clock_tolerance` absorbs the latency between the server's decision and
what the client measured.
"""

import re
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field

# How far each algorithm may exceed the quota within one window (the `limits` library docs).
SLACK = {"moving-window": 1.0, "sliding-window-counter": 2.0, "fixed-window": 2.0, "gcra": 2.0}

_POLICY_RE = re.compile(r'^\s*"([^"]*)"((?:;\s*[a-z]+=[^;,]*)*)\s*$')
_QUOTA_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit")


def keyed_callers(keys: Mapping[str, Mapping[str, list[str]]]) -> list[tuple[str, str, str]]:
    """(plan, caller, key) for every key of a keys file ({"plan": {"account": [keys]}}): the
    caller is the key's account, "pro:acme", as every key of an account spends its budget."""
    return [
        (plan, f"{plan}:{account}", key)
        for plan, accounts in keys.items()
        for account, account_keys in accounts.items()
        for key in account_keys
    ]


def callers_in_flight(keys: Mapping[str, Mapping[str, list[str]]]) -> dict[str, int]:
    """Requests each account may have in flight at once: one per key (a user per key)."""
    counts: dict[str, int] = {}
    for _plan, caller, _key in keyed_callers(keys):
        counts[caller] = counts.get(caller, 0) + 1
    return counts


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    quota: int
    window: int


def _params(text: str) -> dict[str, str]:
    return dict(part.strip().split("=", 1) for part in text.split(";") if "=" in part)


def parse_policies(header: str) -> list[Policy]:
    """`"pro";q=1000;w=60, "daily";q=5000;w=86400` -> policies; malformed items are skipped."""
    policies = []
    for item in header.split(","):
        match = _POLICY_RE.match(item)
        if match:
            params = _params(match[2])
            if params.get("q", "").isdigit() and params.get("w", "").isdigit():
                policies.append(Policy(match[1], int(params["q"]), int(params["w"])))
    return policies


def parse_concurrency(header: str) -> dict[str, int]:
    """The concurrency policies of a RateLimit-Policy header: name -> requests in flight."""
    found = {}
    for item in header.split(","):
        match = _POLICY_RE.match(item)
        if match:
            params = _params(match[2])
            unit = params.get("qu", "").strip('"')
            if unit == "concurrent-requests" and params.get("q", "").isdigit():
                found[match[1]] = int(params["q"])
    return found


def parse_ratelimit(header: str) -> tuple[str, int, int] | None:
    """`"pro";r=0;t=17` -> ("pro", 0, 17)."""
    match = _POLICY_RE.match(header)
    if not match:
        return None
    params = _params(match[2])
    if not (params.get("r", "").isdigit() and params.get("t", "").isdigit()):
        return None
    return match[1], int(params["r"]), int(params["t"])


@dataclass(slots=True)
class _Series:
    """What one caller saw on one route under one policy."""

    policy: Policy
    admitted: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Windows:
    """One caller's admissions on one route under one policy, window by window (the picture)."""

    caller: str
    route: str
    policy: Policy
    ends: list[float]  # each admission's time, sorted: a window ends there
    counts: list[int]  # admitted in the window ending there, as the verdict counts them
    refused: list[float]
    most: float  # the most one window may admit before the run fails


@dataclass
class Verdict:
    strategy: str = "moving-window"
    clock_tolerance: float = 1.0
    false_refusal_tolerance: int = 0
    overshoot_tolerance: int = 0
    # Requests a caller may have in flight at once (anonymous users share one budget).
    concurrency: Mapping[str, int] = field(default_factory=dict)
    # Plans whose requests may be shed (the run overloads the service on purpose).
    sheddable: frozenset[str] = frozenset()
    # Seconds of each admitted request's client-timed interval taken as network, not slot.
    slot_tolerance: float = 0.05

    def __post_init__(self) -> None:
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._refusals: list[tuple[str, str, str, float]] = []
        self._last_quota: dict[tuple[str, str], tuple[str, int, int]] = {}
        # caller -> names of its shadow limits
        self._shadow: dict[str, set[str]] = {}
        # (caller, route, concurrency policy) -> (its N, admitted (start, end) intervals)
        self._in_flight: dict[tuple[str, str, str], tuple[int, list[tuple[float, float]]]] = {}
        self.shed: dict[str, int] = {}
        self.problems: list[str] = []
        self.health = {"ok": 0, "failed": 0}

    def record_shadow_policies(self, caller: str, names: set[str]) -> None:
        """The caller's shadow limits, from its `GET /v1/rate-limit` (quotas with shadow)."""
        self._shadow.setdefault(caller, set()).update(names)

    def record_shed(self, caller: str, plan: str, route: str) -> None:
        """One request shed (503 `shed`), by an instance that said it was overloaded."""
        self.shed[plan] = self.shed.get(plan, 0) + 1
        if plan not in self.sheddable:
            self.problems.append(f"{caller} {route}: shed although no overload was expected")

    def record_interval(
        self, caller: str, route: str, start: float, end: float, status: int | None,
        headers: Mapping[str, str],
    ) -> None:  # fmt: skip
        """When an admitted request was in flight, as the client timed it."""
        if status is None or status == 429 or status >= 500:
            return
        for name, most in parse_concurrency(headers.get("ratelimit-policy", "")).items():
            _, intervals = self._in_flight.setdefault((caller, route, name), (most, []))
            intervals.append((start + self.slot_tolerance, end - self.slot_tolerance))

    def record_health(self, status: int | None) -> None:
        if status == 200:
            self.health["ok"] += 1
        else:
            self.health["failed"] += 1
            self.problems.append(f"health probe answered {status or 'no response'}")

    def record(
        self, caller: str, route: str, at: float, status: int | None, headers: Mapping[str, str]
    ) -> None:
        """One response (`headers` with lower-case names); `status` None for a failed request."""
        if status is None:
            return  # transport errors are locust's own failures, not a verdict on limits
        if status >= 500:
            self.problems.append(f"{caller} {route}: the service answered {status}")
        policies = parse_policies(headers.get("ratelimit-policy", ""))
        shadow = self._shadow.get(caller, set())
        listed = shadow.intersection(p.name for p in policies) | shadow.intersection(
            parse_concurrency(headers.get("ratelimit-policy", ""))
        )
        if listed:
            names = ", ".join(sorted(listed))
            self.problems.append(f"{caller} {route}: shadow limit {names} in the quota headers")
        if status == 429:
            binding = parse_ratelimit(headers.get("ratelimit", ""))
            if binding is not None and binding[0] in shadow:
                self.problems.append(f"{caller} {route}: refused by shadow limit {binding[0]}")
            self._check_refusal(caller, route, at, headers)
        for policy in policies:
            series = self._series.setdefault((caller, route, policy.name), _Series(policy))
            if status == 429:
                series.refused.append(at)
            else:
                series.admitted.append(at)
        if status != 429 and policies:
            self._check_quota_headers(caller, route, at, headers)

    def _check_refusal(
        self, caller: str, route: str, at: float, headers: Mapping[str, str]
    ) -> None:
        missing = [name for name in ("retry-after", *_QUOTA_HEADERS) if name not in headers]
        if missing:
            self.problems.append(f"{caller} {route}: 429 without {', '.join(missing)}")
            return
        if not headers["retry-after"].isdigit():
            self.problems.append(f"{caller} {route}: Retry-After {headers['retry-after']!r}")
        binding = parse_ratelimit(headers["ratelimit"])
        if binding is not None:
            self._refusals.append((caller, route, binding[0], at))

    def _check_quota_headers(
        self, caller: str, route: str, at: float, headers: Mapping[str, str]
    ) -> None:
        if any(name not in headers for name in _QUOTA_HEADERS):
            self.problems.append(f"{caller} {route}: admitted response without quota headers")
            return
        remaining, reset = headers["x-ratelimit-remaining"], headers["x-ratelimit-reset"]
        if not (remaining.isdigit() and reset.isdigit()):
            self.problems.append(f"{caller} {route}: quota headers {remaining!r}, {reset!r}")
            return
        if int(reset) < at - self.clock_tolerance:
            self.problems.append(f"{caller} {route}: X-RateLimit-Reset {reset} is in the past")
        binding = parse_ratelimit(headers["ratelimit"])
        if binding is None or self.concurrency.get(caller, 1) > 1:
            return  # out-of-order answers are normal when a caller has several in flight
        current = (binding[0], int(reset), int(remaining))
        previous = self._last_quota.get((caller, route))
        if previous and previous[:2] == current[:2] and current[2] > previous[2]:
            self.problems.append(
                f"{caller} {route}: remaining went up from {previous[2]} to {current[2]} "
                f"within the window ending {reset}"
            )
        self._last_quota[(caller, route)] = current

    def _window_counts(self, times: list[float], window: float) -> list[int]:
        """Admitted in the window ending at each time (`times` sorted); their most is the most
        any window held, since a fullest window can be slid until it ends at an admission."""
        span = window - self.clock_tolerance
        return [i + 1 - bisect_left(times, t - span) for i, t in enumerate(times)]

    def _max_in_window(self, times: list[float], window: float) -> int:
        return max(self._window_counts(sorted(times), window), default=0)

    def _most(self, policy: Policy) -> float:
        return policy.quota * SLACK.get(self.strategy, 1.0) + self.overshoot_tolerance

    def windows(self) -> list[Windows]:
        """Each caller, route and policy, window by window: what the picture draws."""
        found = []
        for (caller, route, _), series in sorted(self._series.items()):
            ends = sorted(series.admitted)
            counts = self._window_counts(ends, series.policy.window)
            most = self._most(series.policy)
            found.append(Windows(caller, route, series.policy, ends, counts, series.refused, most))
        return found

    def _admitted_before(self, caller: str, policy_name: str, at: float, window: float) -> int:
        """Admitted under this policy in the window before `at`, over every route (generous)."""
        start = at - window - self.clock_tolerance
        count = 0
        for (who, _, name), series in self._series.items():
            if who == caller and name == policy_name:
                times = sorted(series.admitted)
                count += bisect_left(times, at) - bisect_left(times, start)
        return count

    def failures(self) -> list[str]:
        """Every reason the run failed; empty when the limits held."""
        found = list(self.problems)
        for (caller, route, name), series in sorted(self._series.items()):
            peak = self._max_in_window(series.admitted, series.policy.window)
            if peak > self._most(series.policy):
                found.append(
                    f"{caller} {route}: {peak} admitted within {series.policy.window}s "
                    f"under {name} (quota {series.policy.quota})"
                )
        false_refusals = []
        for caller, route, name, at in self._refusals:
            policy = next(
                (s.policy for (c, _, n), s in self._series.items() if c == caller and n == name),
                None,
            )
            if policy is None:
                continue
            admitted = self._admitted_before(caller, name, at, policy.window)
            if admitted < policy.quota - self.concurrency.get(caller, 1):
                false_refusals.append(
                    f"{caller} {route}: refused under {name} after only {admitted} of "
                    f"{policy.quota} admitted"
                )
        if len(false_refusals) > self.false_refusal_tolerance:
            found.extend(false_refusals)
        for (caller, route, name), (most, intervals) in sorted(self._in_flight.items()):
            peak = _most_at_once(intervals)
            if peak > most:
                found.append(
                    f"{caller} {route}: {peak} in flight at once under {name} (at most {most})"
                )
        return found

    def table(self) -> str:
        """A readable summary: one row per caller, route and policy."""
        rows = [("caller", "route", "policy", "quota/window", "admitted", "refused", "peak")]
        for (caller, route, name), series in sorted(self._series.items()):
            policy = series.policy
            rows.append(
                (
                    caller,
                    route,
                    name,
                    f"{policy.quota}/{policy.window}s",
                    str(len(series.admitted)),
                    str(len(series.refused)),
                    str(self._max_in_window(series.admitted, policy.window)),
                )
            )
        for (caller, route, name), (most, intervals) in sorted(self._in_flight.items()):
            peak = str(_most_at_once(intervals))
            rows.append((caller, route, name, f"{most} at once", str(len(intervals)), "-", peak))
        for plan, count in sorted(self.shed.items()):
            rows.append((plan, "*", "shed (overload)", "-", "-", str(count), "-"))
        rows.append(("health", "/health/live", "-", "-", str(self.health["ok"]), "-", "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            for row in rows
        ]
        failures = self.failures()
        verdict = "PASS: the limits held" if not failures else "FAIL:\n  " + "\n  ".join(failures)
        return "\n".join([*lines, "", verdict])


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals overlapping at any moment (empty ones, start >= end, left out)."""
    events = sorted(
        [(start, 1) for start, end in intervals if start < end]
        + [(end, -1) for start, end in intervals if start < end]
    )  # at a tie, an end (-1) sorts before a start: touching intervals do not overlap
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak
