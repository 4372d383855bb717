"""JSON logs: one object per line on stderr, each with the request id of the request it serves.

The standard library's logging with a small formatter: every library's records (uvicorn's
access log included) come out in the same shape, and fields passed as `extra=` become keys.
"""

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

from . import HEALTH_PREFIX

# Set by RequestContextMiddleware for the duration of each request.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class SkipHealthChecks(logging.Filter):
    """Health probes are polled every few seconds: not traffic, kept out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn.access records carry (client, method, path, http_version, status) as args.
        args = record.args
        return not (
            isinstance(args, tuple) and len(args) >= 3 and str(args[2]).startswith(HEALTH_PREFIX)
        )


class _JsonHandler(logging.StreamHandler[TextIO]):
    """Ours, so that configuring again (one app per test, say) replaces it, not others."""


def configure_logging(level: str) -> None:
    """JSON on stderr for the root logger; uvicorn's loggers hand their records to it."""
    handler = _JsonHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _JsonHandler)] + [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, SkipHealthChecks) for f in access.filters):
        access.addFilter(SkipHealthChecks())
