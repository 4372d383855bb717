"""JSON logs: one object per line on stderr, each with the request id of the request it serves.

python-json-logger's formatter on the root logger: it is a standard logging Formatter, so every
library's records (uvicorn's, alembic's, ours) come out in the same shape without touching their
call sites, and fields passed as `extra=` become keys. uvicorn's string access log is silenced:
the request middleware writes a structured access line instead (the `access` logger), which
names the client by a hash, not by its address.
"""

import hashlib
import logging
import sys
from contextvars import ContextVar
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


def hashed(identity: str) -> str:
    """A stable, non-reversible name for a caller in logs (client addresses are personal data):
    the access log and the refusal log name a caller alike."""
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


class _JsonHandler(logging.StreamHandler[TextIO]):
    """Ours, so that configuring again (one app per test, say) replaces it, not others."""


def configure_logging(level: str) -> None:
    """JSON on stderr for the root logger; uvicorn's loggers hand their records to it, except
    its access log, which the access line replaces."""
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
