"""A pycasbin policy container indexed by (owner, actor), with O(1) add, remove and count.

pycasbin's FastPolicy indexes rows too, but `len()` lists every rule and the
model calls `len()` on each add, which makes an add cost seconds at 1M rows.
Filtering is also exact-key only, while a likeness decision must see both the
pair's own rows and the owner's audience rows. This subclass keeps a running
count and unions those two buckets in one filter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from casbin.model import FastPolicy

ACTOR, OWNER = 0, 1

Rule = tuple[str, ...]


class PairIndexedPolicy(FastPolicy):
    """Rows in two flat maps: (owner, actor) -> the pair's own rules, owner -> audience rules.

    Flat, not owner -> actor -> rules: at 1M rules a decision's time goes to memory
    misses, and each level of nested dicts is two or three more of them (the dict, its
    table, its key). Measured with bench/consent_check.py's interleaved rounds.
    """

    def __init__(self) -> None:
        super().__init__([OWNER, ACTOR])
        self._pairs: dict[tuple[str, str], set[Rule]] = {}
        self._audience: dict[str, set[Rule]] = {}
        self._size = 0
        self._filtered: list[Rule] | None = None

    def _place(self, rule: Sequence[str]) -> tuple[dict[Any, set[Rule]], Any]:
        """The map a rule's bucket lives in, and its key there: audience rows (actor starts
        with '@') share one bucket per owner."""
        owner, actor = rule[OWNER], rule[ACTOR]
        if actor.startswith("@"):
            return self._audience, owner
        return self._pairs, (owner, actor)

    def _bucket(self, rule: Sequence[str], *, create: bool) -> set[Rule] | None:
        table, key = self._place(rule)
        bucket = table.get(key)
        if bucket is None and create:
            bucket = table[key] = set()
        return bucket

    def __iter__(self) -> Iterator[list[str]]:
        if self._filtered is not None:
            return (list(r) for r in self._filtered)
        return (list(r) for table in (self._pairs, self._audience) for b in table.values() for r in b)

    def __len__(self) -> int:
        if self._filtered is not None:
            return len(self._filtered)
        return self._size

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, list | tuple) or len(item) <= OWNER:
            return False
        bucket = self._bucket(item, create=False)
        return bucket is not None and tuple(item) in bucket

    def append(self, item: Sequence[str]) -> None:
        bucket = self._bucket(item, create=True)
        assert bucket is not None
        rule = tuple(item)
        if rule not in bucket:
            bucket.add(rule)
            self._size += 1

    def remove(self, policy: Sequence[str]) -> bool:
        bucket = self._bucket(policy, create=False)
        rule = tuple(policy)
        if bucket is None or rule not in bucket:
            return False
        bucket.remove(rule)
        self._size -= 1
        if not bucket:
            table, key = self._place(policy)
            del table[key]
        return True

    def rows_for(self, *, owner: str, actor: str) -> list[Rule]:
        """The pair's own rows plus the owner's audience rows."""
        rows = list(self._pairs.get((owner, actor), ()))
        rows.extend(self._audience.get(owner, ()))
        return rows

    def apply_filter(self, *keys: str) -> None:
        owner, actor = keys
        self._filtered = self.rows_for(owner=owner, actor=actor)

    def clear_filter(self) -> None:
        self._filtered = None
