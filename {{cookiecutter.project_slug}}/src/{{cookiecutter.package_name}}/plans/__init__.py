"""Subscription plans and API keys: stored in the database, resolved through an in-process cache.

- models.py     the `plans` and `api_keys` tables (SQLAlchemy 2)
- keys.py       API key format: generation, parsing, hashing (pure functions)
- repository.py the queries, used by the cache and by the CLI
- directory.py  the in-process TTL cache the request path reads (no query per request)
- resolver.py   request credentials -> Caller (plan + stable identity), or why not
"""
