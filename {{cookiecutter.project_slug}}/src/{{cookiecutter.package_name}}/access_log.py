"""Keep health probes out of the access log: they are polled every few seconds, not traffic."""

import logging

# Health routes live under this prefix (api/routes/health.py); the caller middleware and nginx
# exempt the same prefix.
# Health routes live under this prefix (api/routes/health.py); the caller middleware and nginx
# exempt the same prefix.
HEALTH_PREFIX = "/health/"


class SkipHealthChecks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn.access records carry (client, method, path, http_version, status) as args.
        args = record.args
        return not (
            isinstance(args, tuple) and len(args) >= 3 and str(args[2]).startswith(HEALTH_PREFIX)
        )


def install_access_log_filter() -> None:
    access_logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, SkipHealthChecks) for f in access_logger.filters):
        access_logger.addFilter(SkipHealthChecks())
