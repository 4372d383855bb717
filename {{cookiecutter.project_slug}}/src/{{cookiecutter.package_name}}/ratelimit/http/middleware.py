"""Who is calling, resolved before routing, by a pure ASGI middleware.

A malformed, unknown or revoked key is a 401 whatever path it is sent to, a blocked key a 403
with the reason the operator gave (`keys update --block`), a key of a deactivated plan a 403
"plan inactive" (not counted as a failed authentication), and an unknown key
while the plans database is away a 503, before any route runs; so is a WebSocket handshake
(denied with the same answer, or closed with code 1008 by a server that cannot send one). The
probes and the metrics scrape are passed through unresolved: they answer whatever the
credentials, and whether or not the database is up. The caller is left in the request's state
for the check (route.py).

Failed authentications are counted per client address (AUTH_FAILURE_LIMIT): past it, the
address gets 429 instead of 401, and once this instance has refused the address, a request
carrying a key is refused before its key is looked up (`CallerResolver.refused_addresses`),
until the refusal ends: guessing costs no database work.

Under overload, a resolved caller of a low plan priority gets 503 here (shedding.py), before
routing: a shed request spends no quota and never runs its endpoint.

No wrapped `send` here: the quota headers are added by the request context middleware.
"""

import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from ...observability import HEALTH_PREFIX, METRICS_PATH
from ...observability.logs import RefusalLog, hashed, request_id_var
from ...observability.metrics import RATELIMIT_DECISIONS, labelled
from ...observability.middleware import (
    PLAN_STATE_KEY,
    QUIET_STATE_KEY,
    RESPONSE_HEADERS_STATE_KEY,
)
from ...outages import Unavailable
from ...plans.caller import (
    BlockedKey,
    Caller,
    CallerResolver,
    InactivePlan,
    InvalidCredentials,
    RefusedAddress,
    UnusableClientAddress,
)
from ...plans.plan import ANONYMOUS
from ...problems import unavailable
from ..counters.failover import Failover
from ..rules.applied import LimitSet
from ..rules.counting import Decision, refused_until
from ..rules.limiter import CALLER_STATE_KEY
from .responses import (
    QuotaHeaders,
    bad_request,
    forbidden,
    too_many_requests,
    unauthorized,
)
from .shedding import LoadShedder

# The route label of failed authentications in metrics and logs.
AUTHENTICATION = "<authentication>"
# The requests of a blocked key are logged once per this many seconds, the rest summarised.
BLOCKED_LOG_WINDOW = 60.0


def reads_credentials(path: str) -> bool:
    """Whether the caller is resolved for `path`: not for the probes and the metrics scrape."""
    return not (path.startswith(HEALTH_PREFIX) or path == METRICS_PATH)


class CallerIdentifier:
    """The request's caller, or the response refusing it: 401, 403, 429, 400, or 503."""

    def __init__(
        self, resolver: CallerResolver, failure_limits: LimitSet, refusal_log: RefusalLog
    ) -> None:
        self.resolver = resolver
        self.failure_limits = failure_limits
        self.refusal_log = refusal_log
        # Set when the app starts (start()); until then failures are not counted.
        self.failover: Failover | None = None

    def start(self, failover: Failover) -> None:
        """Count failed authentications from now on."""
        self.failover = failover

    async def __call__(self, scope: Scope) -> Caller | Response:
        path = scope["path"]
        try:
            return await self.resolver.resolve(scope)
        except InvalidCredentials as exc:
            return await self._failed(scope, exc.address, unauthorized(str(exc), path))
        except RefusedAddress as exc:
            assert isinstance(exc.refusal, Decision)  # what _failed() told the resolver
            return self._too_many_failures(scope, exc.address, exc.refusal)
        except BlockedKey as exc:
            return self._blocked(scope, exc)
        except InactivePlan as exc:
            # A real key of a plan the operator turned off: said as it is, and not counted as
            # a failed authentication against the address (the caller guessed nothing).
            labelled(RATELIMIT_DECISIONS, exc.plan, AUTHENTICATION, "plan_inactive").inc()
            detail = f"The plan {exc.plan!r} of this API key is inactive (plan inactive)."
            return forbidden(detail, path)
        except UnusableClientAddress as exc:
            return bad_request(str(exc), path)
        except Unavailable as exc:
            return unavailable(exc.detail, path, exc.retry_after)

    async def _failed(self, scope: Scope, address: str | None, refusal: Response) -> Response:
        """Count a failed authentication against the client `address`; 429 past the limit."""
        if address is None or self.failover is None:
            return refusal
        try:
            decision = await self.failover.count(address, self.failure_limits)
        except Unavailable:
            return refusal  # Redis away, fail-closed: the 401 still says what is wrong
        if decision.admitted:
            return refusal
        until = refused_until(decision.results)
        if until is not None:  # until then, refused before any key lookup
            self.resolver.refused_addresses.remember(address, decision, until - time.time())
        return self._too_many_failures(scope, address, decision)

    def _blocked(self, scope: Scope, exc: BlockedKey) -> Response:
        plan = exc.caller.plan.name
        labelled(RATELIMIT_DECISIONS, plan, AUTHENTICATION, "blocked").inc()
        summary = {"plan": plan, "route": AUTHENTICATION, "subject": hashed(exc.caller.identity)}
        if not self.refusal_log.refused(
            (exc.caller.identity, "blocked"),
            BLOCKED_LOG_WINDOW,
            "blocked API key",
            {
                **summary,
                "path": scope["path"],
                "reason": str(exc),
                "request_id": request_id_var.get(),
            },
            summary,
        ):
            scope.setdefault("state", {})[QUIET_STATE_KEY] = True
        return forbidden(f"This API key is blocked: {exc}", scope["path"])

    def _too_many_failures(self, scope: Scope, address: str | None, decision: Decision) -> Response:
        labelled(RATELIMIT_DECISIONS, ANONYMOUS, AUTHENTICATION, "limited").inc()
        assert decision.binding is not None  # these limits are always enforced
        limit = decision.binding.limit
        subject = address or "ip:unknown"
        summary = {
            "plan": ANONYMOUS,
            "route": AUTHENTICATION,
            "subject": hashed(subject),
            "policy": limit.policy,
            "limit": limit.text,
        }
        state = scope.setdefault("state", {})
        if not self.refusal_log.refused(
            (subject, limit.key_suffix),
            limit.window_seconds,
            "authentication failures exceeded",
            {**summary, "path": scope["path"], "request_id": request_id_var.get()},
            summary,
        ):
            state[QUIET_STATE_KEY] = True
        state[RESPONSE_HEADERS_STATE_KEY] = QuotaHeaders(decision)
        return too_many_requests(decision, scope["path"])


async def refuse(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await deny_websocket(response, scope, receive, send)
    else:
        await response(scope, receive, send)


async def deny_websocket(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a WebSocket handshake with `response`, where the server can send one."""
    websocket = WebSocket(scope, receive, send)
    if "websocket.http.response" in scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=1008, reason=f"refused with HTTP {response.status_code}")


class CallerMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        identify: CallerIdentifier,
        shedder: LoadShedder | None = None,
        unchecked: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.identify = identify
        self.shedder = shedder  # None: load shedding is off
        # Paths served whatever the credentials: the documentation pages, so that a client
        # holding a wrong key (schemathesis -H "Authorization: ...") still reads the schema.
        self.unchecked = unchecked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, _one_line_refusal(scope, send))
            return
        path = scope.get("path", "")
        if not reads_credentials(path) or path in self.unchecked:
            await self.app(scope, receive, send)
            return
        caller = await self.identify(scope)
        if isinstance(caller, Response):
            await refuse(caller, scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER_STATE_KEY] = caller
        scope["state"][PLAN_STATE_KEY] = caller.plan.name
        shedder = self.shedder
        if shedder is not None and shedder.sheds(caller.plan.priority):
            await refuse(shedder.shed(caller.plan.name, path), scope, receive, send)
            return
        await self.app(scope, receive, send)


def _one_line_refusal(scope: Scope, send: Send) -> Send:
    """The lifespan's `send`, telling the server a start-up refusal of the limiter (a route
    without its check, service.py) in its one line, in place of the traceback it would log."""

    async def send_refusal(message: Message) -> None:
        if message["type"] == "lifespan.startup.failed":
            refusal = getattr(scope["app"].state, "startup_refusal", None)
            if refusal is not None:
                message = {**message, "message": refusal}
        await send(message)

    return send_refusal
