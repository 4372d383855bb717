"""The API key format: `sk_<public id>_<secret>`.

The public id (12 hex characters) finds the key without revealing it; the secret (32 random
bytes) makes it unguessable. Only a SHA-256 of the whole key is stored: with 256 bits of
entropy a plain hash is as strong as a slow password hash, and cheap enough for every request.
"""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_RE = re.compile(r"sk_(?P<public_id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    public_id: str
    digest: str  # SHA-256 hex of the whole key


def generate_key() -> tuple[str, str]:
    """A new key and its public id. Show the key once; store only `hash_key(key)`."""
    public_id = secrets.token_hex(6)
    return f"sk_{public_id}_{secrets.token_urlsafe(32)}", public_id


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key(raw: str) -> ParsedKey | None:
    """The key's parts, or None when it cannot be one of ours (any length, any bytes)."""
    match = KEY_RE.fullmatch(raw)
    if match is None:
        return None
    return ParsedKey(public_id=match["public_id"], digest=hash_key(raw))


def digest_matches(parsed: ParsedKey, stored_hash: str) -> bool:
    return hmac.compare_digest(parsed.digest, stored_hash)
