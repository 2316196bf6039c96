"""A pycasbin policy container indexed by (owner, actor), with O(1) add, remove and count.

pycasbin's FastPolicy indexes rows too, but `len()` lists every rule and the
model calls `len()` on each add, which makes an add cost seconds at 1M rows.
Filtering is also exact-key only, while a likeness decision must see both the
pair's own rows and the owner's audience rows. This subclass keeps a running
count and unions those two buckets in one filter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from casbin.model import FastPolicy

ACTOR, OWNER = 0, 1
AUDIENCE_BUCKET = "@audience"

Rule = tuple[str, ...]


def bucket_of(actor: str) -> str:
    """Audience rows (actor starts with '@') share one bucket per owner."""
    return AUDIENCE_BUCKET if actor.startswith("@") else actor


class PairIndexedPolicy(FastPolicy):
    """Rows grouped as owner -> actor bucket -> set of rules."""

    def __init__(self) -> None:
        super().__init__([OWNER, ACTOR])
        self._index: dict[str, dict[str, set[Rule]]] = {}
        self._size = 0
        self._filtered: list[Rule] | None = None

    def _bucket(self, rule: Sequence[str], *, create: bool) -> set[Rule] | None:
        owner, actor = rule[OWNER], bucket_of(rule[ACTOR])
        by_actor = self._index.get(owner)
        if by_actor is None:
            if not create:
                return None
            by_actor = self._index[owner] = {}
        bucket = by_actor.get(actor)
        if bucket is None and create:
            bucket = by_actor[actor] = set()
        return bucket

    def __iter__(self) -> Iterator[list[str]]:
        if self._filtered is not None:
            return (list(r) for r in self._filtered)
        return (list(r) for by_actor in self._index.values() for b in by_actor.values() for r in b)

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
            by_actor = self._index[policy[OWNER]]
            del by_actor[bucket_of(policy[ACTOR])]
            if not by_actor:
                del self._index[policy[OWNER]]
        return True

    def rows_for(self, *, owner: str, actor: str) -> list[Rule]:
        """The pair's own rows plus the owner's audience rows."""
        by_actor = self._index.get(owner)
        if not by_actor:
            return []
        rows = list(by_actor.get(actor, ()))
        rows.extend(by_actor.get(AUDIENCE_BUCKET, ()))
        return rows

    def apply_filter(self, *keys: str) -> None:
        owner, actor = keys
        self._filtered = self.rows_for(owner=owner, actor=actor)

    def clear_filter(self) -> None:
        self._filtered = None
