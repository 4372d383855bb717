"""JSON logs: one object per line on stderr, each with the request id of the request it serves.

python-json-logger's formatter on the root logger: it is a standard logging Formatter, so every
library's records (uvicorn's, alembic's, ours) come out in the same shape without touching their
call sites, and fields passed as `extra=` become keys. uvicorn's string access log is silenced:
the request middleware writes a structured access line instead (the `access` logger), which
names the client by a keyed hash, not by its address. RefusalLog bounds what refusals write.
"""

import asyncio
import hashlib
import hmac
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as LibraryJsonFormatter

# Set by RequestContextMiddleware for the duration of each request.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# One line per request answered (health probes left out), written by RequestContextMiddleware.
access = logging.getLogger("access")


class JsonFormatter(LibraryJsonFormatter):
    """time, level, logger, message, the record's `extra=` fields, and the request id."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
            # uvicorn adds `color_message`, its message with ANSI colour escapes, to its records.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        )
        super().add_fields(log_data, record, message_dict)
        log_data["level"] = record.levelname.lower()
        request_id = request_id_var.get()
        if request_id and "request_id" not in log_data:
            log_data["request_id"] = request_id


# The key of the client hashes in logs: LOG_CLIENT_KEY (configure_logging), else a random key
# of this process. Either way nobody without the key can test a guessed address against a hash,
# which an unkeyed hash allows (all of IPv4 is 2^32 tries).
_PROCESS_KEY = secrets.token_bytes(32)
_client_key = _PROCESS_KEY


def hashed(identity: str) -> str:
    """A stable name for a caller in logs that does not reveal it (client addresses are
    personal data): an HMAC-SHA256 of the identity under the deployment's key, so lines of every
    instance sharing the key name a caller alike, and the access and refusal logs agree."""
    return keyed_hash(_client_key, identity)


def keyed_hash(key: bytes, identity: str) -> str:
    # 64 bits: collisions among a day's callers are negligible, and the line stays short.
    return hmac.new(key, identity.encode(), hashlib.sha256).hexdigest()[:16]


class _JsonHandler(logging.StreamHandler[TextIO]):
    """Ours, so that configuring again (one app per test, say) replaces it, not others."""


def configure_logging(level: str, client_key: str | None = None) -> None:
    """JSON on stderr for the root logger; uvicorn's loggers hand their records to it, except
    its access log, which the access line replaces. `client_key`: LOG_CLIENT_KEY."""
    global _client_key
    _client_key = client_key.encode() if client_key else _PROCESS_KEY
    handler = _JsonHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _JsonHandler)] + [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # uvicorn's access log, off whatever its command line says: its line holds the raw client
    # address, and the request would be logged twice. With no handler to reach, uvicorn does
    # not even build the line.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    if not client_key:
        logging.getLogger(__name__).warning(
            "LOG_CLIENT_KEY is not set: client hashes in the logs use a random key of this "
            "process, so they match only within its lines (the post-gen hook writes one to .env)"
        )


@dataclass(slots=True)
class _Window:
    ends: float  # epoch seconds
    fields: dict[str, Any]  # what the summary line repeats of the first line
    more: int = 0  # refused since the first, not logged one by one


class RefusalLog:
    """The first refusal of a caller per window and policy, and one summary line of the rest.

    Every refusal is counted in metrics; this bounds what a flood writes to the log: two lines
    per caller, policy and window, whatever the number of requests. The window is the limit's
    own, aligned to the clock (a minute limit: each clock minute). The summary ("N more
    refused") is written once the window has ended, by the sweep that runs every second while
    the service runs (and at the next refusal), and at shutdown. Memory is bounded too: past
    `max_entries` windows at once, a new caller's first refusal is counted in an
    "other callers" summary instead of being written.
    """

    SWEEP_INTERVAL = 1.0

    def __init__(self, logger: logging.Logger, max_entries: int = 10_000) -> None:
        self.logger = logger
        self.max_entries = max_entries
        self._windows: dict[Hashable, _Window] = {}
        self._overflow: dict[str, Any] = {}  # refusals not written because the table was full
        self._next_sweep = 0.0

    def refused(
        self,
        key: Hashable,
        window_seconds: float,
        message: str,
        fields: dict[str, Any],
        summary: dict[str, Any],
    ) -> bool:
        """Write this refusal if it is the first of `key` (caller and policy) in the current
        window, else count it; True when written. `summary`: the fields the summary repeats."""
        now = time.time()
        if now >= self._next_sweep:
            self.sweep(now)
        window_seconds = max(window_seconds, 1.0)
        start = now - now % window_seconds
        window_key = (key, start)
        window = self._windows.get(window_key)
        if window is not None:
            window.more += 1
            return False
        if len(self._windows) >= self.max_entries:
            self._overflow["count"] = self._overflow.get("count", 0) + 1
            return False
        self._windows[window_key] = _Window(start + window_seconds, {"message": message, **summary})
        self.logger.warning(message, extra=fields)
        return True

    def sweep(self, now: float | None = None) -> None:
        """Summarise and forget the windows that have ended (all of them when `now` is None)."""
        now_or_end = time.time() if now is None else now
        self._next_sweep = now_or_end + self.SWEEP_INTERVAL
        ended = [key for key, window in self._windows.items() if now is None or window.ends <= now]
        for key in ended:
            window = self._windows.pop(key)
            if window.more:
                fields = dict(window.fields)
                message = fields.pop("message")
                self.logger.warning(
                    "%s: %d more refused in the window (not logged one by one)",
                    message,
                    window.more,
                    extra={**fields, "more": window.more, "request_id": None},
                )
        if self._overflow:
            more = self._overflow.pop("count")
            self.logger.warning(
                "%d refusals of other callers not logged one by one (too many callers refused "
                "at once)",
                more,
                extra={"more": more, "request_id": None},
            )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Sweep every second while the service runs; summarise what is left at shutdown."""
        task = asyncio.create_task(self._sweep_forever())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            self.sweep()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.SWEEP_INTERVAL)
            if self._windows or self._overflow:
                self.sweep(time.time())
