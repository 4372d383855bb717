"""Refusals remembered until they end: what this process knows it would only refuse again.

Two parts of the service keep such a memory: the Redis counter (a caller over a limit, until
the limit frees capacity: answered without a Redis call) and the caller resolver (an address
refused for failed authentications: its keys refused without a database lookup).
"""

import time
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RefusalMemory(dict[K, tuple[float, V]]):
    """Refusals by key, each until it ends (monotonic clock), in bounded memory: past
    `max_entries` the ended ones go, then (a flood from that many callers) all of them. A
    forgotten refusal costs one more ask of what decided it, nothing else.

    A dict, so that a caller's `if memory:` costs no call on the hot path, where nothing was
    refused lately."""

    def __init__(self, max_entries: int = 10_000) -> None:
        super().__init__()
        self.max_entries = max_entries

    def remember(self, key: K, refusal: V, seconds: float) -> None:
        """Remember `refusal` of `key` for `seconds` more (a key already held is refreshed); a
        refusal already ended (`seconds` <= 0) is not kept."""
        if seconds <= 0:
            return
        now = time.monotonic()
        if key not in self and len(self) >= self.max_entries:
            for ended in [k for k, (until, _) in self.items() if until <= now]:
                del self[ended]
            if len(self) >= self.max_entries:
                self.clear()
        self[key] = (now + seconds, refusal)

    def refusal(self, key: K) -> V | None:
        """The refusal `key` still gets, or None."""
        held = self.get(key)
        if held is None:
            return None
        if held[0] > time.monotonic():
            return held[1]
        del self[key]
        return None
