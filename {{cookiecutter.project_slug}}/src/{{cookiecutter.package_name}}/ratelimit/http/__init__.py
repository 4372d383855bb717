"""The ASGI/FastAPI edge: who is calling, the check in front of every endpoint, and what a
refusal answers. Uses the rules and the counters; never imported by them.

- middleware.py  resolves the caller before routing (plans/caller.py): 401/403/400/503 here
- route.py       the route class and the check it runs before each endpoint: decide, record,
                 answer; unmatched paths and the start-up check of every route
- responses.py   the problem+json refusals and the quota headers
- shedding.py    under overload (event-loop lag), 503 for the lowest plan priorities first
- quotas.py      the quota endpoint's peek at every limit of a caller's plan
- openapi.py     what /openapi.json says each route answers
"""
