"""Counts in Redis: check.lua decides every limit of a request in one script call (storage.py
sends it), and slots.lua releases and renews concurrency slots."""

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from redis.exceptions import RedisError

from ...refusals import RefusalMemory
from ...settings import Strategy
from ..rules.applied import AppliedLimit, LimitSet
from ..rules.counting import Count, Held, LimitResult, Slots, refused_until
from .storage import RedisClient, ScriptExpired, ScriptRunner

CHECK_SCRIPT = files(__package__).joinpath("check.lua").read_text()
SLOTS_SCRIPT = files(__package__).joinpath("slots.lua").read_text()
# `<prefix>:algorithm` names the algorithm of the instances counting under the prefix; an
# instance takes it when it is free or already its own, else is told who holds it.
CLAIM_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return owner end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""
# How long a claim outlives the last instance renewing it (renewed every third of it).
ALGORITHM_CLAIM_SECONDS = 30.0

logger = logging.getLogger(__name__)


def script_args(limit_set: LimitSet) -> tuple[int, ...]:
    """check.lua's arguments for the limits of a set (after the deadline, strategy, nonce,
    exact_max and lease): n, then amount, window seconds, cost and flags for each, flags 1
    shadow and 2 concurrency. Worked out on the set's first check, then kept with it."""
    args: tuple[int, ...] | None = limit_set.memo.get("check.lua")
    if args is None:
        encoded = [len(limit_set.limits)]
        for limit in limit_set.limits:
            flags = (1 if limit.shadow else 0) | (2 if limit.concurrent else 0)
            encoded += [limit.item.amount, limit.window_seconds, limit.cost, flags]
        args = limit_set.memo["check.lua"] = tuple(encoded)
    return args


class RedisCounter:
    """Counts in Redis: one check.lua call per request (storage.py sends it).

    A refusal is also remembered locally until the limit frees capacity (the reset time the
    script returned): until then Redis could only refuse again, since other instances can
    only add hits, so a flood over the limit is answered without a Redis call (evaluate()
    says so, `remembered`: such an answer says nothing of Redis's health). Not a refusal by a
    concurrency limit: a slot can free up any moment.

    Concurrency slots are leased: each expires `lease` seconds after it was taken or last
    renewed, and keep_leases() renews the slots of this process's requests in flight, so a
    slow response keeps its slot and an instance that dies loses its slots within a lease.
    """

    def __init__(
        self,
        client: RedisClient,
        strategy: Strategy,
        key_prefix: str,
        max_calls: int,
        timeout: float,
        moving_window_max_hits: int,
        lease: float = 30.0,
        deadline: float | None = None,
    ) -> None:
        """`deadline`: how long after it was sent a call may still count (default: `timeout`)."""
        self._client = client
        self._script = ScriptRunner(
            client,
            CHECK_SCRIPT,
            max_calls=max_calls,
            timeout=timeout,
            deadline=timeout if deadline is None else deadline,
        )
        self._slots_script = ScriptRunner(
            client, SLOTS_SCRIPT, max_calls=max_calls, timeout=timeout
        )
        self._strategy = strategy
        self._max_hits = moving_window_max_hits
        self._prefix = key_prefix
        self._lease = lease
        self._lease_arg = f"{lease:g}"  # as the scripts read it
        # Moving-window hits are members of a sorted set: each needs a unique name. A process
        # prefix and a sequence number are unique, and cheaper than a uuid per request.
        self._nonce_prefix = uuid.uuid4().hex[:12] + "-"
        self._sequence = itertools.count()
        # (counter keys, script arguments) of a refused request -> the results it got, until
        # Redis would no longer refuse it
        self._refusing: RefusalMemory[tuple[str | int, ...], tuple[LimitResult, ...]] = (
            RefusalMemory()
        )
        # Concurrency slots of this process's requests in flight: (key, member), to renew.
        self._in_flight: set[tuple[str, str]] = set()
        # Releases of slots whose taking call failed, running in the background.
        self._releasing: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        self._script.close()
        self._slots_script.close()

    def key(self, identity: str, limit: AppliedLimit) -> str:
        """`<prefix>:{<subject>}:<algorithm>:<limit>`. The subject is the hash tag: all of one
        caller's keys share a cluster slot. The algorithm that counts the limit is part of the
        name, so instances running different RATELIMIT_STRATEGY values on one Redis and prefix
        (a rolling change of the setting) count apart instead of reading each other's keys,
        which would fail (WRONGTYPE) or misread them."""
        subject = (limit.subject or identity).replace("{", "(").replace("}", ")")
        if limit.concurrent:
            algorithm = "concurrency"
        elif self._strategy == "moving-window" and limit.item.amount > self._max_hits:
            algorithm = "sliding-window-counter"  # as check.lua counts it
        else:
            algorithm = self._strategy
        return self._prefix + ":{" + subject + "}:" + algorithm + ":" + limit.key_suffix

    def known_refusal(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...] | None:
        if not self._refusing:  # nothing refused lately: spare building the keys twice
            return None
        keys = [self.key(identity, limit) for limit in limit_set.limits]
        return self._refusing.refusal((*keys, *script_args(limit_set)))

    async def evaluate(self, identity: str, limit_set: LimitSet) -> Count:
        known = self.known_refusal(identity, limit_set)
        if known is not None:  # Redis could only refuse it again: no call
            return Count(known, remembered=True)
        nonce = self._nonce_prefix + str(next(self._sequence))
        try:
            keys, results, admitted = await self._check(identity, limit_set, nonce)
        except (RedisError, OSError, TimeoutError):
            if limit_set.holds_slots:
                # The script may have run and taken slots whose answer was lost (the connection
                # dropped, the reply came too late): give them back rather than hold them for a
                # lease. Members are named by the nonce, so this needs no answer.
                self._release_lost(identity, limit_set, nonce)
            raise
        until = None if admitted else refused_until(results)
        if until is not None:
            signature: tuple[str | int, ...] = (*keys, *script_args(limit_set))
            self._refusing.remember(signature, results, until - time.time())
        slots = None
        if admitted and limit_set.holds_slots:
            held = tuple(
                (keys[index], f"{nonce}:{index + 1}")
                for index, result in enumerate(results)
                if result.limit.concurrent and result.allowed
            )
            if held:
                self._in_flight.update(held)
                slots = Slots(self, held)
        return Count(results, slots)

    async def release(self, held: Held) -> None:
        self._in_flight.difference_update(held)
        for key in {key for key, _ in held}:
            members = [member for k, member in held if k == key]
            await self._slots_script.call([key], [0, *members])

    @property
    def algorithm(self) -> str:
        """How this process counts, as instances sharing a prefix must agree on it."""
        if self._strategy == "moving-window":  # its exact limits depend on the threshold
            return f"moving-window, exact up to {self._max_hits} hits"
        return self._strategy

    async def claim_algorithm(self) -> str:
        """Mark the prefix as counted with this process's algorithm for ALGORITHM_CLAIM_SECONDS
        (renewed while it runs), unless instances counting otherwise hold it: the algorithm
        that holds the prefix now."""
        owner = await self._client.eval(
            CLAIM_SCRIPT,
            1,
            self._prefix + ":algorithm",
            self.algorithm,
            int(ALGORITHM_CLAIM_SECONDS * 1000),
        )
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    @asynccontextmanager
    async def keep_leases(self) -> AsyncIterator[None]:
        """Renew the leases of this process's slots in flight, three times per lease, and its
        claim on the prefix's algorithm."""
        tasks = [
            asyncio.create_task(self._renew_leases()),
            asyncio.create_task(self._renew_claim()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()

    async def _renew_claim(self) -> None:
        said = False
        while True:
            await asyncio.sleep(ALGORITHM_CLAIM_SECONDS / 3)
            try:
                owner = await self.claim_algorithm()
            except (RedisError, OSError, TimeoutError):  # Redis away: the policy speaks for it
                continue
            if owner != self.algorithm and not said:  # it started while Redis was away
                said = True
                logger.error(
                    "Instances counting with %s share this Redis and RATELIMIT_KEY_PREFIX; this "
                    "one counts with %s, apart from them: callers may get each limit twice "
                    "(README, 'Changing the algorithm')",
                    owner,
                    self.algorithm,
                )

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            by_key: dict[str, list[str]] = {}
            for key, member in list(self._in_flight):
                by_key.setdefault(key, []).append(member)
            for key, members in by_key.items():
                try:
                    await self._slots_script.call([key], [self._lease_arg, *members])
                except Exception as exc:  # the next round tries again; the lease has margin
                    logger.warning(
                        "Could not renew concurrency slots (%s: %s)", type(exc).__name__, exc
                    )

    def _release_lost(self, identity: str, limit_set: LimitSet, nonce: str) -> None:
        held = tuple(
            (self.key(identity, limit), f"{nonce}:{index + 1}")
            for index, limit in enumerate(limit_set.limits)
            if limit.concurrent
        )
        task = asyncio.create_task(self._release_quietly(held))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_quietly(self, held: Held) -> None:
        try:
            await self.release(held)
        except Exception as exc:  # Redis still away: the slots expire with their lease
            logger.info("Concurrency slots left to expire (%s: %s)", type(exc).__name__, exc)

    async def peek(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        """check.lua with an empty nonce: it reads every counter and writes none."""
        _, results, _ = await self._check(identity, limit_set, "")
        return results

    async def _check(
        self, identity: str, limit_set: LimitSet, nonce: str
    ) -> tuple[list[str], tuple[LimitResult, ...], bool]:
        """One check.lua call: the counter keys, each limit's result, and whether the request
        was admitted (no enforced limit refused it)."""
        limits = limit_set.limits
        keys = [self.key(identity, limit) for limit in limits]
        # The runner puts the call's deadline first, when it writes the call.
        reply = await self._script.call(
            keys, [self._strategy, nonce, self._max_hits, self._lease_arg, *script_args(limit_set)]
        )
        server_now, wall = reply[1], time.time()
        if reply[0] == -1:
            raise ScriptExpired("Redis ran the call after its deadline: it counted nothing")
        results = tuple(
            LimitResult(
                limit,
                bool(reply[2 + 3 * index]),
                reply[3 + 3 * index],
                wall + max(0.0, (reply[4 + 3 * index] - server_now) / 1000),
            )
            for index, limit in enumerate(limits)
        )
        return keys, results, bool(reply[0])
