"""Who is calling: from a request's credentials (or its client address) to a Caller, whose
identity limits are counted against and whose plan's limits apply."""

from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv6Address, ip_address, ip_network

from starlette.types import Scope

from ..outages import Unavailable
from ..refusals import RefusalMemory
from .cache import PlanCache
from .keys import digest_matches, parse_key
from .plan import ANONYMOUS, Plan


@dataclass(frozen=True, slots=True)
class Caller:
    # Stable, non-secret identity used in limiter keys: "ip:203.0.113.7" or "account:42" (every
    # key of an account spends one budget; a key's own limits are counted apart, see Plan).
    identity: str
    plan: Plan
    # The name of the account whose key it is; None for anonymous callers.
    account: str | None = None


class InvalidCredentials(Exception):
    """The request carries an API key that is malformed, unknown or revoked (401), from the
    client `address` (its identity, or None where it is unusable): a failure to count."""

    def __init__(self, reason: str, address: str | None = None) -> None:
        super().__init__(reason)
        self.address = address


class RefusedAddress(Exception):
    """The request carries a key from an address already refused for failed authentications
    (429): `refusal` is what refused its last failure (`CallerResolver.refused_addresses`).
    The key was not looked up."""

    def __init__(self, address: str, refusal: object) -> None:
        super().__init__(address)
        self.address = address
        self.refusal = refusal


class BlockedKey(Exception):
    """The request carries a valid API key that the operator blocked (403), with the reason."""

    def __init__(self, reason: str, caller: Caller) -> None:
        super().__init__(reason)
        self.caller = caller


class InactivePlan(Exception):
    """The request carries a valid API key whose plan an operator deactivated (403)."""

    def __init__(self, plan: str, public_id: str) -> None:
        super().__init__(plan)
        self.plan = plan
        self.public_id = public_id


class UnusableClientAddress(Exception):
    """A trusted proxy forwarded something that is not an address as the client's (400)."""


def read_api_key(scope: Scope) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`; None when neither.

    Raises InvalidCredentials for an Authorization header of another scheme, or two different
    keys: a client that sends credentials must not silently become anonymous.
    """
    keys = []
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                raise InvalidCredentials("use `Authorization: Bearer <key>` or `X-API-Key: <key>`")
            keys.append(token.strip())
        elif name == b"x-api-key":
            keys.append(value.decode("latin-1").strip())
    if not keys:
        return None
    if len(set(keys)) > 1:
        raise InvalidCredentials("the request carries more than one API key")
    key: str = keys[0]
    return key


def client_address(scope: Scope) -> str:
    """The real client address, as text.

    When the direct peer is a trusted proxy, uvicorn's ProxyHeadersMiddleware (installed by
    create_app) has already replaced it with the address from X-Forwarded-For; from anyone
    else the header is ignored. The proxy copies that entry as it is, so it may not be an
    address at all: address_identity() says so.
    """
    client = scope.get("client")
    return client[0] if client else "unknown"


@lru_cache(maxsize=65_536)  # parsing costs more than the lookup, and callers come back
def address_identity(host: str, ipv6_prefix_length: int) -> str | None:
    """The identity an anonymous caller at `host` is counted as, or None if it is no address.

    One text per address (`2001:DB8:0:0::1` is `2001:db8::1`; `::ffff:1.2.3.4` is `1.2.3.4`),
    and an IPv6 caller is counted by its network prefix (a /64 by default): one subscriber
    usually holds a whole /64, and would otherwise get a fresh budget from every address in it.
    """
    try:
        address = ip_address(host)
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ip_network((address, ipv6_prefix_length), strict=False)}"
    return f"ip:{address}"


class CallerResolver:
    """Resolves a request's caller through the plan cache: no database query in steady state."""

    def __init__(self, cache: PlanCache, ipv6_prefix_length: int = 64) -> None:
        self.cache = cache
        self.ipv6_prefix_length = ipv6_prefix_length
        # The client addresses this process refused for failed authentications, until each
        # refusal ends: a key from one is refused before it is looked up, so guessing costs no
        # database work. Told by the limiter, which counts the failures (ratelimit/http/
        # middleware.py); what another instance refused, this one learns at the address's next
        # failure here.
        self.refused_addresses: RefusalMemory[str, object] = RefusalMemory()

    def address(self, scope: Scope) -> str:
        """The identity of the request's client address; raises UnusableClientAddress."""
        host = client_address(scope)
        identity = address_identity(host, self.ipv6_prefix_length)
        if identity is None:
            if scope.get("client") is not None:
                # Never a key of its own (each garbage string a fresh budget), and not the
                # proxy's address either (one client's garbage spending everyone's).
                raise UnusableClientAddress(
                    "X-Forwarded-For from a trusted proxy does not end in a client address"
                )
            identity = "ip:unknown"  # a server that knows no peer (a UNIX socket)
        return identity

    async def resolve(self, scope: Scope) -> Caller:
        """The caller of a request: its API key's, or anonymous.

        Raises InvalidCredentials (with the client address, to count the failure against),
        RefusedAddress, BlockedKey, InactivePlan, UnusableClientAddress, or Unavailable (plans
        away)."""
        try:
            address: str | None = self.address(scope)
            unusable = None
        except UnusableClientAddress as exc:  # refused for an anonymous caller only, below
            address, unusable = None, exc
        try:
            raw_key = read_api_key(scope)
        except InvalidCredentials as exc:
            raise InvalidCredentials(str(exc), address) from None
        if raw_key is None:
            plan = await self.cache.plan(ANONYMOUS)
            if plan is None:  # a database without the seeded plans: not migrated
                raise Unavailable("Plans are temporarily unavailable.", retry_after=30)
            if address is None:
                assert unusable is not None
                raise unusable
            return Caller(identity=address, plan=plan)
        if address is not None and self.refused_addresses:
            refusal = self.refused_addresses.refusal(address)
            if refusal is not None:
                raise RefusedAddress(address, refusal)
        parsed = parse_key(raw_key)
        if parsed is None:
            raise InvalidCredentials("malformed API key", address)
        grant = await self.cache.key(parsed.public_id)
        if grant is None or not digest_matches(parsed, grant.secret_hash):
            raise InvalidCredentials("unknown or revoked API key", address)
        if grant.inactive_plan is not None:  # only told to a caller holding the key's secret
            raise InactivePlan(grant.inactive_plan, parsed.public_id)
        if grant.plan is None:
            raise InvalidCredentials("unknown or revoked API key", address)
        caller = Caller(identity=grant.identity, plan=grant.plan, account=grant.account)
        if grant.blocked is not None:
            raise BlockedKey(grant.blocked, caller)
        return caller
