"""Garbage-collector settings for a long-running server, for as long as the app runs.

Why: a request that waits on Redis keeps its objects alive across an `await`, so with many
requests in flight the collector's young generation fills up every few requests and its
collections promote those objects until a full collection walks the whole heap: ~130,000
objects of imported modules (FastAPI, SQLAlchemy, pydantic...) that never become garbage.
Measured on the generated service (32 requests in flight): 570 young and 3 full collections
per 6,400 requests, ~50 us of collector time per request and p99 latency of ~100 ms under
load, against ~15 ms with these settings.

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
