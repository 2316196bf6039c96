"""Bearer API keys: shown once, stored as a key id plus a hash of the secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

TOKEN_PREFIX = "csk"  # noqa: S105 (a public marker, not a secret)


@dataclass(frozen=True)
class NewApiKey:
    key_id: str
    secret_hash: str
    token: str


def hash_secret(secret: str) -> str:
    # Secrets are 256 random bits, so a fast hash is enough: there is nothing
    # to brute-force, and a slow KDF would cost every authenticated request.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> NewApiKey:
    """Mint a key; the token is returned to the caller once and never stored."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewApiKey(
        key_id=key_id, secret_hash=hash_secret(secret), token=f"{TOKEN_PREFIX}_{key_id}_{secret}"
    )


def parse_token(token: str) -> tuple[str, str] | None:
    """Split a bearer token into (key id, secret), or None if it is not one of ours."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(parts[1]) != 16 or not parts[2]:
        return None
    return parts[1], parts[2]


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
