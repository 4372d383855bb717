"""How hits are counted: in Redis or in this process's memory, and what happens while Redis is
away. Imports the rules, never the HTTP edge.

- failover.py         the outage policy and the fault model that decides when it applies
- redis_counter.py    counts in Redis: check.lua (one call per request; its argument layout and
                      reply are decoded here, next to the script) and slots.lua
- memory_counters.py  counts in this process's memory (no Redis, or the fail-open fallback)
- storage.py          the Redis connection, its timeouts, and how script calls travel
- resp.py             the limiter's own pipelined RESP connection for single-node Redis
"""
