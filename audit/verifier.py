"""Offline verification of exported audit logs and signed checkpoints.

Deliberately independent of the writer: it imports only audit.hashes, so a
bug in the log's own tree code cannot hide itself from this check.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.hashes import empty_root, leaf_hash, node_hash

SIG_PREFIX = "\u2014 "  # em dash and a space start every signed-note signature line
ED25519_ALG = 0x01


class VerificationError(Exception):
    """The first thing that failed, in words an auditor can act on."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    body: str


@dataclass(frozen=True)
class VerifierKey:
    name: str
    key_id: bytes
    public: Ed25519PublicKey

    @classmethod
    def parse(cls, vkey: str) -> VerifierKey:
        """Parse `name+hexkeyid+base64(0x01||pubkey)`, checking the key id."""
        try:
            name, hex_id, b64 = vkey.strip().split("+", 2)  # base64 may contain "+"
            raw = base64.b64decode(b64, validate=True)
        except ValueError as exc:
            raise VerificationError(f"malformed verifier key {vkey!r}") from exc
        if len(raw) != 33 or raw[0] != ED25519_ALG:
            raise VerificationError("verifier key is not an Ed25519 signed-note key")
        key_id = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
        if key_id.hex() != hex_id:
            raise VerificationError("verifier key id does not match its key")
        return cls(name=name, key_id=key_id, public=Ed25519PublicKey.from_public_bytes(raw[1:]))


def verify_note(note: str, key: VerifierKey) -> str:
    """Return the note text if `key` signed it, else raise."""
    cut = note.rfind("\n\n")
    if cut < 0:
        raise VerificationError("signed note has no signature block")
    text, sigs = note[: cut + 1], note[cut + 2 :]
    for line in sigs.splitlines():
        if not line.startswith(SIG_PREFIX):
            raise VerificationError(f"malformed signature line {line!r}")
        name, _, b64 = line[len(SIG_PREFIX) :].rpartition(" ")
        if name != key.name:
            continue
        try:
            blob = base64.b64decode(b64, validate=True)
        except ValueError as exc:
            raise VerificationError("signature line is not base64") from exc
        if blob[:4] != key.key_id:
            continue
        try:
            key.public.verify(blob[4:], text.encode())
        except InvalidSignature as exc:
            raise VerificationError(f"checkpoint signature by {name} does not verify") from exc
        return text
    raise VerificationError(f"checkpoint carries no signature by {key.name}")


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a C2SP tlog-checkpoint body: origin, tree size, base64 root, optional extensions."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise VerificationError("checkpoint body is not origin, size and root lines")
    try:
        size = int(lines[1])
        root = base64.b64decode(lines[2], validate=True)
    except ValueError as exc:
        raise VerificationError("checkpoint size or root hash is malformed") from exc
    if size < 0 or len(root) != 32 or str(size) != lines[1]:
        raise VerificationError("checkpoint size or root hash is malformed")
    return Checkpoint(origin=lines[0], size=size, root=root, body=text)


def root_of(leaves: Iterable[bytes]) -> bytes:
    """RFC 6962 MTH of leaf hashes in order, with a stack of perfect subtrees."""
    stack: list[tuple[int, bytes]] = []  # (number of leaves, hash)
    count = 0
    for h in leaves:
        count += 1
        item = (1, h)
        while stack and stack[-1][0] == item[0]:
            size, left = stack.pop()
            item = (size * 2, node_hash(left, item[1]))
        stack.append(item)
    if count == 0:
        return empty_root()
    result = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        result = node_hash(left, result)
    return result


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> None:
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        raise VerificationError(f"entry {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError(f"inclusion proof for entry {index} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise VerificationError(f"entry {index} is not included in the tree of size {size}")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: list[bytes]
) -> None:
    """RFC 9162 section 2.1.4.2."""
    if first == second:
        if proof or first_root != second_root:
            raise VerificationError(f"two different roots for tree size {first}")
        return
    if not 0 < first < second or not proof:
        raise VerificationError("consistency proof is empty or sizes are out of order")
    path = [first_root, *proof] if first & (first - 1) == 0 else list(proof)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != first_root or sr != second_root:
        raise VerificationError(f"tree of size {second} is not an extension of the tree of size {first}")


@dataclass
class Report:
    tree_size: int = 0
    entries: int = 0
    checkpoints: list[int] = field(default_factory=list)


def verify_export(lines: Iterable[str], *, key: VerifierKey, extra_checkpoints: Iterable[str] = ()) -> Report:
    """Check an NDJSON export and any further checkpoints; raise at the first failure.

    1. the export's checkpoint is signed by `key`; 2. every entry's inclusion
    proof verifies against it; 3. the root recomputed from all entries equals
    it; 4. every further checkpoint is signed and agrees with the entries at
    its size (two roots for one size are a fork).
    """
    it = iter(lines)
    try:
        header = json.loads(next(it))
    except (StopIteration, json.JSONDecodeError) as exc:
        raise VerificationError("export does not start with a checkpoint line") from exc
    if header.get("type") != "checkpoint":
        raise VerificationError("export does not start with a checkpoint line")
    head = parse_checkpoint(verify_note(header["note"], key))
    leaves: list[bytes] = []
    for n, raw in enumerate(it):
        leaves.append(_check_entry(raw, n, head))
    if len(leaves) != head.size:
        raise VerificationError(f"export holds {len(leaves)} entries, checkpoint says {head.size}")
    if root_of(leaves) != head.root:
        raise VerificationError("root recomputed from the entries does not match the checkpoint")
    report = Report(tree_size=head.size, entries=len(leaves), checkpoints=[head.size])
    roots = {head.size: head.root}
    for note in extra_checkpoints:
        cp = parse_checkpoint(verify_note(note, key))
        if cp.origin != head.origin:
            raise VerificationError(f"checkpoint is for another log ({cp.origin!r})")
        if cp.size in roots and roots[cp.size] != cp.root:
            raise VerificationError(f"fork: two signed checkpoints of size {cp.size} with different roots")
        if cp.size > head.size:
            raise VerificationError(f"checkpoint of size {cp.size} is newer than the export ({head.size})")
        if root_of(leaves[: cp.size]) != cp.root:
            raise VerificationError(f"checkpoint of size {cp.size} is inconsistent with the exported entries")
        roots[cp.size] = cp.root
        report.checkpoints.append(cp.size)
    return report


def _check_entry(raw: str, n: int, head: Checkpoint) -> bytes:
    try:
        line = json.loads(raw)
        entry = line["entry"]
        proof = [base64.b64decode(p, validate=True) for p in line["proof"]]
        index = int(line["index"])
        seq = json.loads(entry)["seq"]
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"export line {n + 2} is malformed") from exc
    if index != n or seq != n:
        raise VerificationError(
            f"entry at position {n} claims index {index} and seq {seq}: missing or reordered"
        )
    leaf = leaf_hash(entry.encode())
    verify_inclusion(leaf, index, head.size, proof, head.root)
    return leaf
