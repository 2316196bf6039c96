"""RFC 6962 hash definitions: the only code the offline verifier shares with the log writer."""

from __future__ import annotations

import hashlib

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_SIZE = 32


def leaf_hash(entry: bytes) -> bytes:
    """MTH of a single leaf: SHA-256(0x00 || entry)."""
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def empty_root() -> bytes:
    """MTH of the empty tree: SHA-256 of nothing."""
    return hashlib.sha256(b"").digest()
