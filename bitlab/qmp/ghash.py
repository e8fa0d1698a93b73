"""Which unexpected member QEMU names: the iteration order of GLib's GHashTable (GLib 2.74).

QEMU's input visitor puts an object's keys into a GHashTable (in the QDict's order), removes each
member it visits, and names the first key left in the table's iteration order: ``Parameter 'x' is
unexpected``. So with two unexpected members, which one QEMU names depends on GLib's hashing,
probing and resizing, reproduced here (``g_str_hash``, ``g_hash_table_hash_to_index``, quadratic
probing, tombstones, ``g_hash_table_maybe_resize`` / ``g_hash_table_resize``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071, 262139,
             524287, 1048573, 2097143, 4194301, 8388593, 16777213, 33554393, 67108859, 134217689, 268435399,
             536870909, 1073741789, 2147483647)
MIN_SHIFT = 3
UNUSED, TOMBSTONE = 0, 1  # hash values 0 and 1 mark empty buckets; a key hashing to them is stored as 2
_U32 = 0xFFFFFFFF


def str_hash(key: str) -> int:
    """g_str_hash: djb2 over the UTF-8 bytes, read as signed chars."""
    h = 5381
    for byte in key.encode():
        h = (h * 33 + (byte - 256 if byte >= 128 else byte)) & _U32
    return h


class GHashSet:
    """The key layout of a GHashTable of strings (values play no part in the order)."""

    def __init__(self) -> None:
        self._set_shift(MIN_SHIFT)
        self.hashes = [UNUSED] * self.size
        self.keys: list[str | None] = [None] * self.size
        self.nnodes = 0
        self.noccupied = 0

    def _set_shift(self, shift: int) -> None:
        self.size, self.mod, self.mask = 1 << shift, PRIME_MOD[shift], (1 << shift) - 1

    def _set_shift_from_size(self, size: int) -> None:
        shift = 0
        while size:
            size >>= 1
            shift += 1
        self._set_shift(max(shift, MIN_SHIFT))

    def _index(self, h: int) -> int:
        return ((h * 11) & _U32) % self.mod

    def _lookup(self, key: str, h: int) -> tuple[int, bool]:
        """g_hash_table_lookup_node: the key's bucket (found) or where it would go (the first tombstone
        on its probe sequence, else the empty bucket that ends it)."""
        index, step, tombstone = self._index(h), 0, None
        while self.hashes[index] != UNUSED:
            if self.hashes[index] == h and self.keys[index] == key:
                return index, True
            if self.hashes[index] == TOMBSTONE and tombstone is None:
                tombstone = index
            step += 1
            index = (index + step) & self.mask
        return (index if tombstone is None else tombstone), False

    @staticmethod
    def _hash(key: str) -> int:
        h = str_hash(key)
        return 2 if h < 2 else h

    def insert(self, key: str) -> None:
        h = self._hash(key)
        index, found = self._lookup(key, h)
        if found:
            return
        old = self.hashes[index]
        self.hashes[index], self.keys[index] = h, key
        self.nnodes += 1
        if old == UNUSED:
            self.noccupied += 1
            self._maybe_resize()

    def remove(self, key: str) -> None:
        index, found = self._lookup(key, self._hash(key))
        if found:
            self.hashes[index], self.keys[index] = TOMBSTONE, None
            self.nnodes -= 1
            self._maybe_resize()

    def _maybe_resize(self) -> None:
        if ((self.size > self.nnodes * 4 and self.size > 1 << MIN_SHIFT)
                or self.size <= self.noccupied + self.noccupied // 16):
            self._resize()

    def _resize(self) -> None:
        """g_hash_table_resize: rehash in place, bucket by bucket, an entry in the way moving on next."""
        old_size = self.size
        self._set_shift_from_size(int(self.nnodes * 1.333))
        if self.size > old_size:
            self.hashes += [UNUSED] * (self.size - old_size)
            self.keys += [None] * (self.size - old_size)
        moved = [False] * max(self.size, old_size)
        for i in range(old_size):
            h = self.hashes[i]
            if h < 2:  # tombstones go
                self.hashes[i] = UNUSED
                continue
            if moved[i]:
                continue
            self.hashes[i], key = UNUSED, self.keys[i]
            self.keys[i] = None
            while True:
                index, step = self._index(h), 0
                while moved[index]:
                    step += 1
                    index = (index + step) & self.mask
                moved[index] = True
                replaced, replaced_key = self.hashes[index], self.keys[index]
                self.hashes[index], self.keys[index] = h, key
                if replaced < 2:
                    break
                h, key = replaced, replaced_key
        del self.hashes[self.size:], self.keys[self.size:]
        self.noccupied = self.nnodes

    def __iter__(self):
        """g_hash_table_iter_next: buckets in index order."""
        return (key for h, key in zip(self.hashes, self.keys, strict=True) if h >= 2)


def first_left(keys: Sequence[str], removed: Iterable[str]) -> str | None:
    """The first key a GHashTable filled with ``keys`` (in that order) iterates to after ``removed``
    are taken out (in that order)."""
    table = GHashSet()
    for key in keys:
        table.insert(key)
    for key in removed:
        table.remove(key)
    return next(iter(table), None)
