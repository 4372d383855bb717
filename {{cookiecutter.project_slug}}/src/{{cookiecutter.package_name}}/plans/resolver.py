"""From a request's credentials to its Caller: an API key's plan, or the anonymous plan."""

from starlette.types import Scope

from ..ratelimit.caller import Caller, address_identity, client_address
from .directory import PlanDirectory, PlansUnavailable
from .keys import digest_matches, parse_key
from .repository import ANONYMOUS


class InvalidCredentials(Exception):
    """The request carries an API key that is malformed, unknown or revoked (401)."""


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
    return keys[0]


class UnusableClientAddress(Exception):
    """A trusted proxy forwarded something that is not an address as the client's (400)."""


class CallerResolver:
    def __init__(self, directory: PlanDirectory, ipv6_prefix_length: int = 64) -> None:
        self.directory = directory
        self.ipv6_prefix_length = ipv6_prefix_length

    async def resolve(self, scope: Scope) -> Caller:
        raw_key = read_api_key(scope)
        if raw_key is None:
            plan = await self.directory.plan(ANONYMOUS)
            if plan is None:  # a database without the seeded plans: not migrated
                raise PlansUnavailable(retry_after=30)
            host = client_address(scope)
            identity = address_identity(host, self.ipv6_prefix_length)
            if identity is None:
                if scope.get("client") is not None:
                    # Never a key of its own (each garbage string a fresh budget), and not
                    # the proxy's address either (one client's garbage spending everyone's).
                    raise UnusableClientAddress(
                        "X-Forwarded-For from a trusted proxy does not end in a client address"
                    )
                identity = "ip:unknown"  # a server that knows no peer (a UNIX socket)
            return Caller(identity=identity, plan=plan)
        parsed = parse_key(raw_key)
        if parsed is None:
            raise InvalidCredentials("malformed API key")
        grant = await self.directory.key(parsed.public_id)
        if grant is None or not digest_matches(parsed, grant.secret_hash) or grant.plan is None:
            raise InvalidCredentials("unknown or revoked API key")
        return Caller(identity=f"key:{parsed.public_id}", plan=grant.plan)
