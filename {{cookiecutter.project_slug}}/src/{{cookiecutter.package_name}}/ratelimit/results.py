"""What a rate-limit check decided, limit by limit."""

from dataclasses import dataclass, field

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
    # The limit to report: the one that refused, else the one closest to refusing. Worked
    # out once: the check, the 429 body and the quota headers all read it.
    binding: LimitResult = field(init=False)

    def __post_init__(self) -> None:
        refused = [result for result in self.results if not result.allowed]
        binding = (
            refused[0]
            if refused
            else min(self.results, key=lambda result: (result.remaining, -result.reset_at))
        )
        object.__setattr__(self, "binding", binding)
