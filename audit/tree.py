"""Writer-side RFC 6962 / RFC 9162 tree math over stored perfect-subtree hashes.

Every complete subtree [i*2^l, (i+1)*2^l) has its hash stored as node (l, i).
Any subtree the RFC recursion needs is either such a node or a right edge
[lo, size) that splits into O(log n) of them, so a root or proof needs only
O(log n) node reads. Proofs run twice: once to learn which nodes they read,
then, after one batched fetch, to compute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from audit.hashes import empty_root, leaf_hash, node_hash

Coord = tuple[int, int]  # (level, index)
NodeGetter = Callable[[int, int], bytes]
_PLACEHOLDER = b"\x00" * 32


def split_point(n: int) -> int:
    """The largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_perfect(lo: int, hi: int) -> bool:
    size = hi - lo
    return size & (size - 1) == 0 and lo % size == 0


def subtree_hash(lo: int, hi: int, get: NodeGetter) -> bytes:
    """MTH of leaves [lo, hi)."""
    if _is_perfect(lo, hi):
        level = (hi - lo).bit_length() - 1
        return get(level, lo >> level)
    k = split_point(hi - lo)
    return node_hash(subtree_hash(lo, lo + k, get), subtree_hash(lo + k, hi, get))


def root(size: int, get: NodeGetter) -> bytes:
    return empty_root() if size == 0 else subtree_hash(0, size, get)


def _path(m: int, lo: int, hi: int, get: NodeGetter) -> list[bytes]:
    if hi - lo == 1:
        return []
    k = split_point(hi - lo)
    if m < lo + k:
        return [*_path(m, lo, lo + k, get), subtree_hash(lo + k, hi, get)]
    return [*_path(m, lo + k, hi, get), subtree_hash(lo, lo + k, get)]


def _subproof(m: int, lo: int, hi: int, whole: bool, get: NodeGetter) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if whole else [subtree_hash(lo, hi, get)]
    k = split_point(n)
    if m <= k:
        return [*_subproof(m, lo, lo + k, whole, get), subtree_hash(lo + k, hi, get)]
    return [*_subproof(m - k, lo + k, hi, False, get), subtree_hash(lo, lo + k, get)]


def inclusion_proof(index: int, size: int, get: NodeGetter) -> list[bytes]:
    """RFC 9162 PATH(index, D[size])."""
    if not 0 <= index < size:
        raise ValueError("index out of range")
    return _path(index, 0, size, get)


def consistency_proof(first: int, second: int, get: NodeGetter) -> list[bytes]:
    """RFC 9162 PROOF(first, D[second])."""
    if not 0 < first <= second:
        raise ValueError("need 0 < first <= second")
    return [] if first == second else _subproof(first, 0, second, True, get)


def needed_nodes(compute: Callable[[NodeGetter], object]) -> set[Coord]:
    """The node coordinates a computation reads, found by a dry run."""
    seen: set[Coord] = set()

    def record(level: int, idx: int) -> bytes:
        seen.add((level, idx))
        return _PLACEHOLDER

    compute(record)
    return seen


class Frontier:
    """The perfect subtrees covering [0, size): enough to append leaves and compute roots."""

    def __init__(self, size: int, nodes: dict[Coord, bytes]) -> None:
        self.size = size
        self._stack: list[tuple[int, int, bytes]] = []  # (level, index, hash), largest first
        lo = 0
        for level in reversed(range(size.bit_length())):
            if size >> level & 1:
                idx = lo >> level
                self._stack.append((level, idx, nodes[(level, idx)]))
                lo += 1 << level

    @staticmethod
    def coords(size: int) -> list[Coord]:
        """Which stored nodes a Frontier of this size is built from."""
        out, lo = [], 0
        for level in reversed(range(size.bit_length())):
            if size >> level & 1:
                out.append((level, lo >> level))
                lo += 1 << level
        return out

    def append(self, entries: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        """Append leaves; returns every newly completed node, leaves included."""
        created: list[tuple[int, int, bytes]] = []
        for entry in entries:
            node = (0, self.size, leaf_hash(entry))
            created.append(node)
            self.size += 1
            while self._stack and self._stack[-1][0] == node[0]:
                left = self._stack.pop()
                node = (node[0] + 1, node[1] >> 1, node_hash(left[2], node[2]))
                created.append(node)
            self._stack.append(node)
        return created

    def root(self) -> bytes:
        if not self._stack:
            return empty_root()
        h = self._stack[-1][2]
        for _, _, left in reversed(self._stack[:-1]):
            h = node_hash(left, h)
        return h
