"""Every knob of the service, read from the environment (and a local `.env` file).

One variable per knob; the names below are the environment variable names in upper case.
pydantic-settings docs: https://docs.pydantic.dev/latest/concepts/pydantic_settings/
"""

from functools import lru_cache
from ipaddress import ip_network
from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The limiting algorithms: the one list (ratelimit/counting.py implements each, check.lua has a
# branch for each, and the template's tests check its cookiecutter.json and hook agree).
Strategy = Literal["moving-window", "sliding-window-counter", "fixed-window", "gcra"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
OutagePolicy = Literal["fail-open", "fail-closed"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Name shown in logs and the OpenAPI document.
    app_name: str = "{{ cookiecutter.project_name }}"
    # Level of the JSON logs on stderr.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
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

    # Addresses (or CIDR networks) of the reverse proxies allowed to set X-Forwarded-For. The
    # header is ignored from anyone else, so a client cannot pick its own rate-limit identity.
    # Comma-separated, e.g. "10.0.0.0/8,172.16.0.0/12". Empty: no proxy is trusted.
    trusted_proxies: Annotated[list[str], NoDecode] = []
    # Anonymous IPv6 callers are counted per network of this prefix length, not per address:
    # one subscriber usually holds a whole /64 and could rotate through it for fresh budgets.
    anonymous_ipv6_prefix_length: int = Field(default=64, ge=1, le=128)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        for item in value:
            ip_network(item, strict=False)  # raises ValueError naming the bad entry
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
