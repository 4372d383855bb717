"""What the service does while a dependency (Redis, the plans database) is away.

One type for the answer ("unavailable, retry after N seconds": a 503 with Retry-After) and one
timer for the waiting: after a failure the dependency is not asked again for a retry interval,
so an outage costs one timeout per interval, not one per request; then one caller probes it.
"""

import time


class Unavailable(Exception):
    """A dependency is away and nothing can stand in for it: answer 503 with Retry-After."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail = detail  # for the caller, in the 503's body
        self.retry_after = retry_after


class Outage:
    """Whether a dependency is known to be away, and until when it is left alone."""

    def __init__(self, detail: str, retry_interval: float) -> None:
        self.detail = detail
        self.retry_interval = retry_interval
        self._down_until = 0.0
        self._down = False

    def skips(self, now: float) -> bool:
        """True while the dependency is left alone after a failure."""
        return now < self._down_until

    def failed(self) -> bool:
        """Record a failure; True when it starts an outage (the moment to say so in the log)."""
        self._down_until = time.monotonic() + self.retry_interval
        started, self._down = not self._down, True
        return started

    def answered(self) -> bool:
        """Record a success; True when it ends an outage."""
        ended, self._down = self._down, False
        return ended

    def unavailable(self, now: float) -> Unavailable:
        """The 503 to answer meanwhile: retry when the dependency is next asked."""
        wait = self._down_until - now if self._down_until > now else self.retry_interval
        return Unavailable(self.detail, retry_after=max(1, round(wait)))
