"""A software stand-in for a KMS or HSM: the private key lives only here; callers get signatures."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

_state: dict[str, Any] = {"key": None, "calls": 0, "fail": False}


def provision(key_pem: bytes) -> None:
    _state.update(key=serialization.load_pem_private_key(key_pem, password=None), calls=0, fail=False)


def calls() -> int:
    return int(_state["calls"])


def fail(on: bool) -> None:
    _state["fail"] = on


def sign(data: bytes) -> bytes:
    """ES256 over `data`, DER-encoded, as AWS KMS and PKCS#11 HSMs return it."""
    if _state["fail"]:
        raise RuntimeError("the HSM is unreachable")
    _state["calls"] += 1
    return bytes(_state["key"].sign(data, ec.ECDSA(hashes.SHA256())))
