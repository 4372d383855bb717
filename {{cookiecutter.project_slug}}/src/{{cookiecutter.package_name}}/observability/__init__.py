"""Logs, request ids and Prometheus metrics.

- logs.py        JSON log lines on stderr, with the request id; health probes kept out
- metrics.py     the Prometheus metrics, and the /metrics route
- middleware.py  request id in and out, quota headers, request counts, header and body caps
"""

# The probes' and the metrics scrape's paths. Their routes are @limiter.exempt; nginx exempts
# /health/ too, does not serve /metrics to the public, and the access log skips /health/.
HEALTH_PREFIX = "/health/"
METRICS_PATH = "/metrics"
