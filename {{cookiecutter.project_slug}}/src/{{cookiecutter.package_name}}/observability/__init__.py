"""Logs, request ids and Prometheus metrics.

- logs.py        JSON log lines on stderr, with the request id; health probes kept out
- metrics.py     the Prometheus metrics, and the /metrics route
- middleware.py  request id in and out, quota headers, request counts, header and body caps
"""

# Paths never attributed to a caller (ratelimit/middleware.py lets them through unresolved):
# the probes and the metrics scrape. Their routes are @limiter.exempt; nginx exempts /health/
# too and does not serve /metrics to the public.
HEALTH_PREFIX = "/health/"
METRICS_PATH = "/metrics"
