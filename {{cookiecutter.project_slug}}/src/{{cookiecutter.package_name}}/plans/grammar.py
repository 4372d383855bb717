"""The grammar of limit strings ("60/minute", "10 per second;1000/day"), bounded.

The one definition every reader of a limit uses: `Plan` parsing, the CLI (through the
repository), settings (AUTH_FAILURE_LIMIT), migration 0006's CHECK constraints and, by a copy a
template test keeps equal, the cookiecutter hook. It imports nothing of the service, so that
settings, below plans in the layers, can use it too.

It is `limits.parse_many`'s grammar (which then parses the string), narrowed: amounts and window
multiples above zero, and bounded, so that every number derived from a limit stays valid where
it goes. A counter or a header never exceeds MAX_AMOUNT (+ MAX_COST); a window in ms (PEXPIRE,
twice that for the sliding window counter) is far inside Redis' and a signed 64-bit integer's
range; and GCRA's arrival time (now + window / amount x cost, ms) stays below 2**53, where
check.lua's numbers (doubles) are still exact.
"""

import re

from limits import RateLimitItem, parse_many

# Most hits a limit can allow in one window.
MAX_AMOUNT = 1_000_000_000
# Longest window, per unit: ten of `limits`' years (a year there is 12 months of 30 days).
MAX_MULTIPLES = {
    "second": 311_040_000,
    "minute": 5_184_000,
    "hour": 86_400,
    "day": 3_600,
    "month": 120,
    "year": 10,
}
MAX_WINDOW_TEXT = "10 years"
# Most hits one request can count for (a route's `cost`).
MAX_COST = 10_000

LIMIT_EXAMPLE = "a limit such as '60/minute' or '10/second;1000/day'"


def _digits(low: int, high: int) -> str:
    # Written without doubled braces: this file is a cookiecutter (Jinja) template too.
    return "[0-9]{" + (str(low) if low == high else f"{low},{high}") + "}"


def _at_most(bound: int) -> str:
    """A regular expression of the whole numbers 1..bound, leading zeros allowed, in the
    dialect Python and Postgres share (no lookarounds, no backreferences)."""
    digits = str(bound)
    options = []
    if len(digits) > 1:  # every number of fewer digits
        options.append("[1-9]" + _digits(0, len(digits) - 2))
    for i, digit in enumerate(digits):  # as many digits: smaller at position i, same before
        low = 1 if i == 0 else 0
        if int(digit) > low:
            rest = len(digits) - i - 1
            tail = _digits(rest, rest) if rest else ""
            options.append(f"{digits[:i]}[{low}-{int(digit) - 1}]{tail}")
    options.append(digits)
    return "0*(" + "|".join(options) + ")"


def _limit(amount: str, windows: str) -> str:
    return rf"\s*{amount}\s*(/|\s*per\s*)\s*({windows})\s*"


# Shape only (unbounded): to tell a malformed string from one out of bounds.
_ANY = "0*[1-9][0-9]*"
_SHAPE = _limit(rf"({_ANY})", rf"({_ANY})?\s*(second|minute|hour|day|month|year)s?")
_PARTS = re.compile(rf"^{_SHAPE}$", re.IGNORECASE)
_SEPARATOR = re.compile("[,;|]")

# The bounded grammar, as one regular expression: the CHECK constraints of migration 0006 use
# it (matched case-insensitively there too), so the database refuses what the service cannot
# count, whoever writes the row.
_WINDOWS = "|".join(rf"({_at_most(bound)})?\s*{unit}s?" for unit, bound in MAX_MULTIPLES.items())
_BOUNDED = _limit(_at_most(MAX_AMOUNT), _WINDOWS)
LIMITS_PATTERN = rf"^{_BOUNDED}([,;|]{_BOUNDED})*$"
_LIMITS = re.compile(LIMITS_PATTERN, re.IGNORECASE)


def limit_problem(value: object) -> str | None:
    """What is wrong with a limit string, to follow "is" ("out of bounds: ..."); None if valid."""
    shape = f"not {LIMIT_EXAMPLE} (amounts and windows above zero)"
    if not isinstance(value, str):
        return shape
    if _LIMITS.fullmatch(value):
        return None
    for part in _SEPARATOR.split(value):
        match = _PARTS.fullmatch(part)
        if match is None:
            break
        problem = bounds_problem(int(match[1]), int(match[4] or 1), match[5].lower())
        if problem is not None:
            return problem
    return shape


def bounds_problem(amount: int, multiples: int, unit: str) -> str | None:
    """What is out of bounds in one parsed limit (also a route's declared one); None if fine."""
    if amount > MAX_AMOUNT:
        return f"out of bounds: a limit allows at most {MAX_AMOUNT} hits per window"
    if multiples > MAX_MULTIPLES[unit]:
        return f"out of bounds: a window is at most {MAX_WINDOW_TEXT}"
    return None


def parse_limits(value: str) -> tuple[RateLimitItem, ...]:
    """Limits in `limits` syntax ("1000/minute;20000/day"); ValueError naming what is wrong."""
    problem = limit_problem(value)
    if problem is not None:
        raise ValueError(f"{value!r} is {problem}")
    return tuple(parse_many(value))


def check_cost(cost: int) -> int:
    """A request's cost: a whole number from 1 to MAX_COST; ValueError otherwise."""
    if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= MAX_COST:
        raise ValueError(f"cost {cost!r} must be a whole number from 1 to {MAX_COST}")
    return cost
