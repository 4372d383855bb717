"""Every knob of the service, read from the environment (and a local `.env` file).

One variable per knob; the names below are the environment variable names in upper case.
pydantic-settings docs: https://docs.pydantic.dev/latest/concepts/pydantic_settings/
"""

import re
import sys
from functools import lru_cache
from ipaddress import ip_network
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.asyncio.connection import parse_url as parse_redis_url
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .plans.grammar import limit_problem

# The limiting algorithms: the one list (ratelimit/counters/memory_counters.py implements each,
# check.lua has a branch for each, and the template's tests check its cookiecutter.json and hook
# agree).
Strategy = Literal["moving-window", "sliding-window-counter", "fixed-window", "gcra"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
OutagePolicy = Literal["fail-open", "fail-closed"]
Mode = Literal["enforce", "shadow"]


def _limit_string(value: str) -> str:
    # The one grammar of limits (plans/grammar.py, which imports nothing of the service): what
    # passes here is what the limiter can count, so a bad value stops at settings, in one line.
    problem = limit_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _log_client_key(value: SecretStr | None) -> SecretStr | None:
    # The placeholder is .env.example's, for a copy made by hand instead of by cookiecutter.
    secret = value.get_secret_value() if value is not None else None
    if secret is not None and (len(secret) < 16 or secret == "__generate_secret__"):
        raise ValueError(
            "too short or a placeholder; expected a random secret of 16 characters or more, "
            "e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Name shown in logs and the OpenAPI document.
    app_name: str = "{{ cookiecutter.project_name }}"
    # Level of the JSON logs on stderr.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # One JSON line per request (at INFO). Off where the proxy's access log is enough: the line
    # is a noticeable share of the CPU a cheap request costs (README, Performance).
    access_log: bool = True
    # Write the client's address in the access line, beside its hash. Off by default: addresses
    # are personal data, and the hash is enough to follow one client through the lines.
    log_client_address: bool = False
    # Key of the HMAC naming a client in the logs (`client`, `subject`), so nobody can test a
    # guessed address against a hash. cookiecutter writes one to .env; unset, each process
    # picks a random one (hashes then match within one process only). README, Logs.
    log_client_key: Annotated[SecretStr | None, AfterValidator(_log_client_key)] = None
    # Serve /docs, /redoc and /openapi.json. Turn off where the API description is not public.
    docs_enabled: bool = True
    # Origins allowed to call the API from a browser (CORS), comma-separated. Empty: CORS off.
    cors_origins: Annotated[list[str], NoDecode] = []
    # Largest request body accepted (413 above). nginx caps bodies at 1 MB in front as well.
    max_body_size_bytes: int = Field(default=1_048_576, ge=0)
    # Largest total size of request headers accepted (431 above); as nginx's 4 x 16k buffers.
    max_header_bytes: int = Field(default=65_536, ge=1024)

    # Shared limit storage: redis://, rediss://, redis+cluster://host:port,host:port or
    # redis+sentinel://host:port,host:port/service. Unset means in-memory limits, which are per
    # process: fine for a laptop, wrong behind a load balancer (each instance grants the limit).
    redis_url: str | None = None
    # Connect and read timeout for each Redis call. Kept well under a second so that a stalled
    # Redis costs a request this much at most, instead of hanging the worker. Not much lower:
    # the clock runs while the event loop serves other requests, so under a CPU-bound burst a
    # too-short timeout fires although Redis answered, and the outage policy kicks in.
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=5)
    # Redis connections per process. Requests beyond it wait for a free connection rather than
    # failing: a busy moment is not an outage. One event loop keeps a few connections busy at
    # most; a large pool only means a burst opens many connections at once, and their
    # handshakes can then exceed the connect timeout.
    redis_max_connections: int = Field(default=20, ge=1)
    # After a Redis failure, requests skip Redis (and follow the outage policy) for this long
    # before one of them tries again, so an outage does not cost every request a timeout.
    redis_retry_interval_seconds: float = Field(default=2.0, ge=0)

    # Algorithm used for every limit; see the README for the trade-offs.
    ratelimit_strategy: Strategy = "{{ cookiecutter.ratelimit_strategy }}"
    # While Redis is unreachable: serve with per-process in-memory limits (fail-open) or
    # answer 503 with Retry-After (fail-closed).
    ratelimit_outage_policy: OutagePolicy = "{{ cookiecutter.redis_outage_policy }}"
    # With the moving window, limits of more hits than this are counted by the sliding window
    # counter instead: a moving window keeps one Redis entry per admitted hit for its whole
    # window, so a busy key of `100000/day` would hold megabytes; the counter holds two numbers.
    # Exactness is kept where it is cheap (per-second and per-minute limits of most plans).
    ratelimit_moving_window_max_hits: int = Field(default=1000, ge=1)
    # shadow: every limit is counted and its would-be refusals logged (`ratelimit` logger,
    # shadow: true) and counted in metrics (decision="shadow_limited"), but nothing is refused:
    # how a first rollout is watched before it is enforced (README, Rolling out a new limit).
    ratelimit_mode: Mode = "enforce"
    # A request's concurrency slot (@limiter.concurrency) expires this long after it was taken
    # unless its instance renews it (three times per lease while the response is running): the
    # longest the slots of an instance that died stay taken.
    ratelimit_concurrency_lease_seconds: float = Field(default=30.0, ge=1, le=3600)
    # Prefix of every limiter key in Redis, so several services (or test runs) can share one Redis.
    ratelimit_key_prefix: str = "{{ cookiecutter.project_slug }}"

    # Where plans and API keys live: a postgresql:// URL. Unset means an SQLite file in the
    # working directory, migrated at start-up, for running without any infrastructure.
    database_url: str | None = None
    # Connect and query timeout for the database. Only cache misses query it.
    database_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    # After a database failure, cache misses skip the database (and get 503) for this long
    # before one of them tries again.
    database_retry_interval_seconds: float = Field(default=2.0, ge=0)
    # How long a resolved API key or plan is served from memory before it is read again: the
    # longest a revoked key or a changed plan keeps its old effect.
    plan_cache_ttl_seconds: float = Field(default=30.0, ge=0)
    # Most keys (and, apart, most unknown key ids) kept in each instance's cache; the least
    # recently used go first. Memory is bounded by it; keys beyond it are read again.
    plan_cache_max_entries: int = Field(default=100_000, ge=1)

    # Addresses (or CIDR networks) of the reverse proxies allowed to set X-Forwarded-For. The
    # header is ignored from anyone else, so a client cannot pick its own rate-limit identity.
    # Comma-separated, e.g. "10.0.0.0/8,172.16.0.0/12". Empty: no proxy is trusted.
    trusted_proxies: Annotated[list[str], NoDecode] = []
    # Anonymous IPv6 callers are counted per network of this prefix length, not per address:
    # one subscriber usually holds a whole /64 and could rotate through it for fresh budgets.
    anonymous_ipv6_prefix_length: int = Field(default=64, ge=1, le=128)
    # Failed authentications (a malformed, unknown or revoked key) allowed per client address;
    # past it, requests carrying a key get 429 before any database work. Key guessing is then
    # throttled by the app itself, not only by the proxy's coarse guard.
    auth_failure_limit: Annotated[str, AfterValidator(_limit_string)] = "20/minute"

    # Load shedding (ratelimit/http/shedding.py): event-loop lag, in milliseconds, at which an
    # instance starts refusing the lowest plan priority with 503, so that the CPU it has left
    # goes to paying plans instead of timing out everyone. Priority p is shed from a lag of
    # this x (p + 1): anonymous (0) first, free (1) at twice the lag. 0 turns shedding off.
    load_shedding_lag_ms: float = Field(default=500.0, ge=0)
    # Highest plan priority ever shed: plans above it (pro and enterprise, seeded 2 and 3) are
    # served however late, since shedding them would refuse the traffic the service is for.
    load_shedding_max_priority: int = Field(default=1, ge=0)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: str | list[str]) -> list[str]:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        bad = []
        for item in value:
            try:
                ip_network(item, strict=False)
            except ValueError:
                bad.append(repr(item))
        if bad:
            raise ValueError(
                f"not an IP address or network: {', '.join(bad)}; expected comma-separated "
                "addresses or CIDR networks, e.g. 10.0.0.1,172.16.0.0/12,fd00::/8"
            )
        return value

    # The URLs are checked here, not where they are first used: every entry point (uvicorn, the
    # command line, `dev`) then refuses a malformed one before doing anything, in the same words.
    @field_validator("redis_url")
    @classmethod
    def _valid_redis_url(cls, value: str | None) -> str | None:
        if value:
            try:
                _parse_redis_url(value)
            except ValueError as exc:
                raise ValueError(f"{exc}; expected {REDIS_URL_FORMS}, or unset") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _valid_database_url(cls, value: str | None) -> str | None:
        if value:
            try:
                drivername = make_url(value).drivername
            except (ArgumentError, ValueError):  # ValueError: a port that is not a number
                drivername = None
            if drivername not in DATABASE_DRIVERS:
                raise ValueError(
                    f"not a database URL this service can use; expected {DATABASE_URL_FORMS}, "
                    "or unset for an SQLite file"
                )
        return value


# What connect() in ratelimit/counters/storage.py (the `limits` library's forms) and database.py
# accept.
REDIS_URL_FORMS = (
    "redis://[:password@]host:port/db, rediss://... (TLS), unix:///path/to/redis.sock, "
    "redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/service"
)
DATABASE_URL_FORMS = "postgresql://user:password@host:port/database"
DATABASE_DRIVERS = ("postgresql", "postgres", "postgresql+asyncpg", "sqlite+aiosqlite")
# Never repeated in an error message.
SECRETS = {"LOG_CLIENT_KEY"}
# pydantic's message does not say what it accepts for these.
ACCEPTED = {"bool_parsing": "expected true or false (or 1/0, yes/no, on/off)"}


def _parse_redis_url(url: str) -> None:
    """Raises ValueError saying what is wrong with `url` (never quoting its password)."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss", "unix"):
        parse_redis_url(url)  # redis-py's own parser, the one the connection pool uses
        database = parts.path.strip("/")
        if parts.scheme != "unix" and database and not database.isdigit():
            raise ValueError(f"database {database!r} is not a number")  # redis-py ignores it
    elif parts.scheme in ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"):
        for host in parts.netloc.rpartition("@")[2].split(","):
            name, _, port = host.rpartition(":")
            if not (name or host) or (port and not port.isdigit()):
                raise ValueError(f"{host!r} is not host:port")
        service, _, database = parts.path.strip("/").partition("/")
        if parts.scheme.endswith("sentinel") and not service:
            raise ValueError("a Sentinel URL names its service")
        if database and not database.isdigit():
            raise ValueError(f"database {database!r} is not a number")
    else:
        raise ValueError("not a Redis URL")


def mask_password(text: str) -> str:
    """`scheme://user:secret@host...` -> `scheme://user:***@host...`, for logs and messages."""
    return re.sub(r"^([\w+.-]*://[^:/@]*):.*@", r"\1:***@", text)


def describe_errors(error: ValidationError) -> list[str]:
    """One line per bad variable: its name, its value (password masked) and what it accepts."""
    lines: dict[str, str] = {}
    prefix = Settings.model_config.get("env_prefix", "")
    for problem in error.errors(include_url=False):
        variable = f"{prefix}{problem['loc'][0]}".upper()
        reason = problem["msg"].removeprefix("Value error, ")
        reason = reason[:1].lower() + reason[1:]
        if problem["type"] in ACCEPTED:
            reason = f"{reason}; {ACCEPTED[problem['type']]}"
        if variable in lines:
            lines[variable] += f"; {reason}"
        else:
            value = "***" if variable in SECRETS else mask_password(str(problem["input"]))
            lines[variable] = f"error: {variable}={value!r}: {reason}"
    return list(lines.values())


def settings_or_exit() -> Settings:
    """The settings, or, when any is bad, one line per bad variable on stderr and exit status 2:
    what every entry point calls first, so that a typo never ends in a traceback."""
    try:
        return get_settings()
    except ValidationError as exc:
        print(*describe_errors(exc), sep="\n", file=sys.stderr)
        raise SystemExit(2) from None


@lru_cache
def get_settings() -> Settings:
    return Settings()
