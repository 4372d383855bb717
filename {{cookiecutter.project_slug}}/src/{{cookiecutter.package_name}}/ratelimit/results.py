"""What a rate-limit check decided, limit by limit."""

from dataclasses import dataclass

from .rules import AppliedLimit, LimitSet


@dataclass(frozen=True, slots=True)
class LimitResult:
    limit: AppliedLimit
    allowed: bool
    remaining: int
    reset_at: float  # epoch seconds at which the window frees capacity again


@dataclass(frozen=True, slots=True)
class Decision:
    limit_set: LimitSet
    results: tuple[LimitResult, ...]
    # True when Redis was unreachable and the in-memory, per-process fallback decided.
    fallback: bool = False

    @property
    def allowed(self) -> bool:
        return all(result.allowed for result in self.results)

    @property
    def binding(self) -> LimitResult:
        """The limit to report: the one that refused, else the one closest to refusing."""
        for result in self.results:
            if not result.allowed:
                return result
        return min(self.results, key=lambda result: (result.remaining, -result.reset_at))
