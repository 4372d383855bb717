"""What applies and what a count decided: pure, no I/O, tested without Redis or Postgres.

- limiter.py   the slowapi `Limiter` routes declare their limits on, and what it reads of them
- applied.py   which limits apply to a request: the caller's plan plus the route's declarations
- counting.py  what a count decided (Decision, LimitResult), and the HitCounter protocol that the
               counters implement
"""
