"""Subscription plans, the accounts subscribed to them and their API keys: stored in the
database, resolved through an in-process cache. An account spends one budget across its keys.

- grammar.py     the grammar of limit strings and its bounds (imports nothing of the service)
- plan.py        a plan as the limiter uses it
- models.py      the `plans`, `accounts` and `api_keys` tables (SQLAlchemy 2)
- keys.py        API key format: generation, parsing, hashing (pure functions)
- repository.py  the queries, used by the cache and by the CLI
- cache.py       the in-process TTL cache the request path reads (no query per request)
- caller.py      request credentials or client address -> Caller (plan + stable identity: the
                 account for a key, the address for anonymous callers)
- service.py     the parts wired together, with their start-up and shutdown
"""
