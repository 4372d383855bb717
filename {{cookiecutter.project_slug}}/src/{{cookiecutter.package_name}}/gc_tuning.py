"""Garbage-collector settings for a long-running server, for as long as the app runs.

Why: a request that waits on Redis keeps its objects alive across an `await`, so with many
requests in flight the collector's young generation fills up every few requests and its
collections promote those objects until a full collection walks the whole heap: the objects of
imported modules (FastAPI, SQLAlchemy, pydantic...) that never become garbage. That cost shows
as CPU per request and as p99 latency under load (figures: the README's performance section).

- gc.freeze() moves everything alive after start-up out of the collector's sight.
- A higher first threshold lets the objects of in-flight requests die by reference counting,
  as nearly all of them do, before a collection looks at them. Cycles are still collected.

Both are process-wide, so they are undone when the app stops (tests run many apps in turn).
"""

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Allocations (net of deallocations) between young-generation collections; CPython's is 700.
YOUNG_GENERATION_THRESHOLD = 10_000


@contextmanager
def tuned_garbage_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
