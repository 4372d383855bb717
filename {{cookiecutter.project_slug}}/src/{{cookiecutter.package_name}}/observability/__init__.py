"""Logs, request ids and Prometheus metrics: a leaf every other part may call, which imports
none of them.

- logs.py        JSON log lines on stderr (python-json-logger), with the request id
- metrics.py     the Prometheus metrics (served by api/routes/metrics.py)
- middleware.py  request id in and out, headers other parts leave for the response, request
                 counts and durations, the access line (health probes kept out), header and
                 body caps
"""

# Paths never attributed to a caller (ratelimit/middleware.py lets them through unresolved):
# the probes and the metrics scrape. Their routes are @limiter.exempt; nginx exempts /health/
# too and does not serve /metrics to the public.
HEALTH_PREFIX = "/health/"
METRICS_PATH = "/metrics"
