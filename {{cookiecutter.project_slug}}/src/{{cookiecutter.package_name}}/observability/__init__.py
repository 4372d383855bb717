"""Logs, request ids and Prometheus metrics: a leaf every other part may call. It imports none
of them but problems.py, a leaf below it (the problem+json bodies of the 413 and 431 its
middleware answers).

- logs.py        JSON log lines on stderr (python-json-logger), with the request id; the keyed
                 hash naming clients; the bounded refusal log (first refusal, then a summary)
- metrics.py     the Prometheus metrics (served by api/routes/metrics.py)
- middleware.py  request id in and out, headers other parts leave for the response, request
                 counts and durations, the access line (health probes kept out), header and
                 body caps
"""

# Paths never attributed to a caller (ratelimit/http/middleware.py lets them through unresolved):
# the probes and the metrics scrape. Their routes are @limiter.exempt; nginx serves only
# /health/live to the public, behind a probe guard, and neither /health/ready nor /metrics.
HEALTH_PREFIX = "/health/"
METRICS_PATH = "/metrics"
