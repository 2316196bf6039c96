"""AES-256-GCM for secrets at rest (webhook signing secrets), with a key ring for rotation."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from consent_service.keyfiles import read_or_create

VERSION = b"\x01"


def load_or_create_key(path: Path, *, create: bool) -> bytes:
    """A 32-byte key file; created with mode 0600 only where allowed."""
    key = read_or_create(path, create=create, make=lambda: os.urandom(32))
    if len(key) != 32:
        raise ValueError(f"{path} must hold exactly 32 bytes")
    return key


@dataclass(frozen=True)
class SecretBox:
    """Encrypts with the current key; decrypts with any key in the ring (found by a 4-byte key id)."""

    current: bytes
    previous: tuple[bytes, ...] = ()

    @staticmethod
    def _kid(key: bytes) -> bytes:
        return hashlib.sha256(b"secretbox-key-id" + key).digest()[:4]

    def seal(self, plaintext: bytes, *, context: bytes) -> bytes:
        """version || key id || nonce || ciphertext; `context` is bound as associated data."""
        nonce = os.urandom(12)
        return (
            VERSION
            + self._kid(self.current)
            + nonce
            + AESGCM(self.current).encrypt(nonce, plaintext, context)
        )

    def open(self, blob: bytes, *, context: bytes) -> bytes:
        if blob[:1] != VERSION:
            raise ValueError("unknown secret format")
        keys = {self._kid(k): k for k in (self.current, *self.previous)}
        key = keys.get(blob[1:5])
        if key is None:
            raise ValueError("secret was sealed with a key that is not in the ring")
        try:
            return AESGCM(key).decrypt(blob[5:17], blob[17:], context)
        except InvalidTag as exc:
            raise ValueError("secret failed authentication") from exc
