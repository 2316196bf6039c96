"""C2SP signed notes and tlog-checkpoints (writer side), and witness cosignatures (tlog-cosignature)."""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIG_PREFIX = "\u2014 "
ED25519 = 0x01
COSIGNATURE_V1 = 0x04


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(name: str, alg: int, public: bytes) -> bytes:
    """C2SP signed-note key id: first 4 bytes of SHA-256(name || '\\n' || alg || key)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()[:4]


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    """C2SP tlog-checkpoint body: origin, decimal size, base64 root, each ending in a newline."""
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


@dataclass(frozen=True)
class NoteSigner:
    """Signs notes as `name` with an Ed25519 key."""

    name: str
    key: Ed25519PrivateKey

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, ED25519, _raw(self.key.public_key()))

    @property
    def vkey(self) -> str:
        """The verifier key string auditors pin: name+hex(keyid)+base64(0x01||pubkey)."""
        raw = bytes([ED25519]) + _raw(self.key.public_key())
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(raw).decode()}"

    def sign(self, text: str) -> str:
        """The signed note: text, a blank line, and this signer's signature line."""
        if not text.endswith("\n"):
            raise ValueError("note text must end with a newline")
        sig = base64.b64encode(self.key_id + self.key.sign(text.encode())).decode()
        return f"{text}\n{SIG_PREFIX}{self.name} {sig}\n"


class CosignatureInvalid(ValueError):
    pass


@dataclass(frozen=True)
class WitnessKey:
    """A witness's public key, from its vkey `name+hexkeyid+base64(0x04||pubkey)`."""

    name: str
    key_id: bytes
    public: Ed25519PublicKey

    @classmethod
    def parse(cls, vkey: str) -> WitnessKey:
        try:
            name, hex_id, b64 = vkey.strip().split("+", 2)  # base64 may contain "+"
            raw = base64.b64decode(b64, validate=True)
        except ValueError as exc:
            raise CosignatureInvalid("malformed witness key") from exc
        if (
            len(raw) != 33
            or raw[0] != COSIGNATURE_V1
            or key_id(name, COSIGNATURE_V1, raw[1:]).hex() != hex_id
        ):
            raise CosignatureInvalid("not a cosignature/v1 Ed25519 witness key")
        return cls(
            name=name, key_id=bytes.fromhex(hex_id), public=Ed25519PublicKey.from_public_bytes(raw[1:])
        )

    def verify(self, line: str, body: str) -> int:
        """Check one cosignature line over a checkpoint body; returns its timestamp."""
        if not line.startswith(SIG_PREFIX):
            raise CosignatureInvalid("a cosignature line starts with an em dash")
        name, _, b64 = line[len(SIG_PREFIX) :].strip().rpartition(" ")
        try:
            blob = base64.b64decode(b64, validate=True)
        except ValueError as exc:
            raise CosignatureInvalid("cosignature is not base64") from exc
        if name != self.name or len(blob) != 4 + 8 + 64 or blob[:4] != self.key_id:
            raise CosignatureInvalid("cosignature is not from this witness")
        (timestamp,) = struct.unpack(">Q", blob[4:12])
        try:
            self.public.verify(blob[12:], cosigned_message(body, timestamp))
        except InvalidSignature as exc:
            raise CosignatureInvalid("cosignature does not verify") from exc
        return int(timestamp)


def cosigned_message(body: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: a header with the time, then the checkpoint body."""
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def witness_cosign(key: Ed25519PrivateKey, name: str, body: str, timestamp: int) -> tuple[str, str]:
    """Produce (vkey, cosignature line) as a witness would; used by tests and tools."""
    raw = _raw(key.public_key())
    kid = key_id(name, COSIGNATURE_V1, raw)
    vkey = f"{name}+{kid.hex()}+{base64.b64encode(bytes([COSIGNATURE_V1]) + raw).decode()}"
    sig = key.sign(cosigned_message(body, timestamp))
    line = f"{SIG_PREFIX}{name} {base64.b64encode(kid + struct.pack('>Q', timestamp) + sig).decode()}"
    return vkey, line
