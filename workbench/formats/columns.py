"""Columnar storage of a read checkpoint's chunks and storage entries, behind the records' API.

A 1024-rank ``.metadata`` lists 740,000 chunks and as many storage entries; one Python object per
chunk, per offset tuple, per ``MetadataIndex`` and per ``StorageInfo`` costs seconds and a
gigabyte. The readers keep them as numpy columns instead:

- `ChunkList`: a tensor's chunks, ``TensorStorageMetadata.chunks``. A sequence of `Chunk`
  built on access (equal, not identical, records each time); its ``box_arrays`` are the
  ``(n, ndim)`` offsets and sizes, which ``geometry.box_arrays`` and the planners take as they
  are. The first mutation (tests and tools edit metadata) turns it into a plain list inside.
- `StorageColumns`: ``Metadata.storage_data``, the mapping ``MetadataIndex -> StorageInfo`` in
  file order, with dict semantics (a repeated key keeps its first position and its last value);
  `StorageColumns.rows_of` answers one tensor's chunks at once (a sorted index of the keys,
  rows compared exactly), `chunk_rows` every entry's, `values_at` their `StorageInfo`s. Mutable
  the same way.
- `check_row_hash_spread`: `limits.check_hash_spread` for boxes held as rows, from CPython's own
  tuple hash computed with numpy (checked against ``hash`` by the tests), so crafted offsets that
  would make the lookups quadratic are refused without building a tuple per row.

Imports numpy, geometry, records and limits; no torch.
"""

from __future__ import annotations

import sys
from collections.abc import ItemsView, MutableMapping, MutableSequence, Sequence

import numpy as np

from ..errors import InputLimitError
from ..geometry import Chunk
from ..records import MetadataIndex, StorageInfo
from .limits import check_hash_spread

__all__ = [
    "ChunkList",
    "StorageColumns",
    "tuple_hashes",
    "check_row_hash_spread",
    "check_chunk_hash_spread",
]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class ChunkList(MutableSequence):
    """A tensor's saved chunks held as ``offsets`` / ``sizes`` arrays (n x ndim, int64); reads
    like a ``list[Chunk]`` and becomes one on the first mutation."""

    __slots__ = ("_offsets", "_sizes", "_list")

    def __init__(self, offsets: np.ndarray, sizes: np.ndarray):
        self._offsets = _readonly(np.ascontiguousarray(offsets, dtype=np.int64))
        self._sizes = _readonly(np.ascontiguousarray(sizes, dtype=np.int64))
        self._list: list | None = None

    @property
    def box_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(offsets, sizes)`` read-only arrays, or None once the list was edited."""
        return None if self._list is not None else (self._offsets, self._sizes)

    def _materialise(self) -> list:
        if self._list is None:
            self._list = list(self)
            self._offsets = self._sizes = None
        return self._list

    def __len__(self) -> int:
        return len(self._list) if self._list is not None else len(self._offsets)

    def __getitem__(self, i):
        if self._list is not None:
            return self._list[i]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return Chunk(tuple(self._offsets[i].tolist()), tuple(self._sizes[i].tolist()))

    def __iter__(self):
        if self._list is not None:
            yield from self._list
            return
        # a block at a time: tolist() is the fast way to Python ints
        for s in range(0, len(self._offsets), 4096):
            offs = self._offsets[s : s + 4096].tolist()
            sizes = self._sizes[s : s + 4096].tolist()
            for o, z in zip(offs, sizes):
                yield Chunk(tuple(o), tuple(z))

    def __setitem__(self, i, value):
        self._materialise()[i] = value

    def __delitem__(self, i):
        del self._materialise()[i]

    def insert(self, i, value):
        self._materialise().insert(i, value)

    def __eq__(self, other) -> bool:
        if isinstance(other, ChunkList) and self._list is None and other._list is None:
            return np.array_equal(self._offsets, other._offsets) and np.array_equal(
                self._sizes, other._sizes
            )
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None

    def __repr__(self) -> str:
        return repr(list(self))

    def __reduce__(self):  # copy / pickle as the plain list it stands for
        return (list, (list(self),))


class StorageColumns(MutableMapping):
    """``Metadata.storage_data`` of a read ``.metadata``: ``MetadataIndex -> StorageInfo`` held as
    columns, one row per pickled entry in file order (see the module docstring).

    Columns: ``fqn_id`` (into ``fqns``), ``off_start`` (row i's offsets are
    ``offsets[off_start[i]:off_start[i + 1]]``; ``has_offset`` False for a bytes entry's
    ``MetadataIndex(fqn)``), ``hint`` / ``has_hint`` (the index hint), ``path_id`` (into
    ``paths``), ``offset``, ``length``; ``transforms`` maps a row to its
    ``transform_descriptors``; ``rows``: `box_rows` already known (skips the dedup)."""

    def __init__(
        self,
        *,
        fqns: list[str],
        paths: list[str],
        fqn_id,
        off_start,
        offsets,
        has_offset,
        hint,
        has_hint,
        path_id,
        offset,
        length,
        transforms: dict | None = None,
        source: str = "<metadata>",
        rows: tuple | None = None,
    ):
        self.fqns, self.paths = fqns, paths
        self.fqn_id = _readonly(np.asarray(fqn_id, np.int64))
        self.off_start = _readonly(np.asarray(off_start, np.int64))
        self.offsets = _readonly(np.asarray(offsets, np.int64))
        self.has_offset = _readonly(np.asarray(has_offset, bool))
        self.hint = _readonly(np.asarray(hint, np.int64))
        self.has_hint = _readonly(np.asarray(has_hint, bool))
        self.path_id = _readonly(np.asarray(path_id, np.int64))
        self.offset = _readonly(np.asarray(offset, np.int64))
        self.length = _readonly(np.asarray(length, np.int64))
        self.transforms = dict(transforms or {})
        self._dict: dict | None = None
        self._lookup: dict[int, dict] = {}
        self._rows_cache: dict[str, tuple] = {}
        # rows: (first row of each key, row of its value) known already (a cache entry)
        self._keys, self._value_row = (
            self._dedup(source) if rows is None else (_readonly(rows[0]), _readonly(rows[1]))
        )

    @property
    def box_rows(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(first row of each distinct key in order, the row holding its value), or None once
        the mapping was edited."""
        return None if self._dict is not None else (self._keys, self._value_row)

    # -- construction -------------------------------------------------------------------
    def _key_matrix(self) -> np.ndarray:
        """Rows as (fqn id, ndim or -1, offsets padded with 0): equal rows are equal keys."""
        n = len(self.fqn_id)
        nd = np.diff(self.off_start)
        width = int(nd.max()) if n else 0
        m = np.zeros((n, 2 + width), np.int64)
        m[:, 0] = self.fqn_id
        m[:, 1] = np.where(self.has_offset, nd, -1)
        if width:
            col = np.arange(len(self.offsets)) - np.repeat(self.off_start[:-1], nd)
            m[np.repeat(np.arange(n), nd), 2 + col] = self.offsets
        return m

    def _dedup(self, source: str):
        """(first row of each distinct key in order, the row holding its value): a dict keeps
        a repeated key's first position and its last value. Also refuses crafted offsets that
        would share one hash (the per-fqn lookup dicts hash offset tuples)."""
        n = len(self.fqn_id)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        m = self._key_matrix()
        nd = np.diff(self.off_start)
        for d in np.unique(nd[self.has_offset]).tolist():
            rows = np.flatnonzero(self.has_offset & (nd == d))
            check_row_hash_spread(
                m[rows, 2 : 2 + d], self.fqn_id[rows], "storage_data offsets", source
            )
        _, first, inv = np.unique(m, axis=0, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if len(first) == n:
            rows = np.arange(n)
            return rows, rows
        last = np.zeros(len(first), np.int64)
        np.maximum.at(last, inv, np.arange(n))
        order = np.argsort(first, kind="stable")
        return first[order], last[order]

    # -- rows ---------------------------------------------------------------------------
    def _offsets_of(self, row: int) -> tuple[int, ...] | None:
        if not self.has_offset[row]:
            return None
        return tuple(self.offsets[self.off_start[row] : self.off_start[row + 1]].tolist())

    def _key(self, row: int) -> MetadataIndex:
        hint = int(self.hint[row]) if self.has_hint[row] else None
        return MetadataIndex(self.fqns[self.fqn_id[row]], self._offsets_of(row), hint)

    def _value(self, row: int) -> StorageInfo:
        return StorageInfo(
            self.paths[self.path_id[row]],
            int(self.offset[row]),
            int(self.length[row]),
            self.transforms.get(row),
        )

    def _fqn_lookup(self, fqn: str) -> dict:
        """``{offsets (None for bytes): value row}`` of one fqn, built on first use."""
        try:
            fid = self.fqns.index(fqn) if len(self.fqns) < 64 else self._fqn_ids()[fqn]
        except (ValueError, KeyError):
            return {}
        got = self._lookup.get(fid)
        if got is None:
            mine = np.flatnonzero(self.fqn_id[self._keys] == fid)
            got = self._lookup[fid] = {
                self._offsets_of(int(self._keys[i])): int(self._value_row[i]) for i in mine
            }
        return got

    def _fqn_ids(self) -> dict:
        ids = self.__dict__.get("_ids")
        if ids is None:
            ids = self.__dict__["_ids"] = {f: i for i, f in enumerate(self.fqns)}
        return ids

    def rows_of(self, fqn: str, offsets: np.ndarray) -> np.ndarray:
        """The value row of each ``MetadataIndex(fqn, offsets[i])`` (``offsets``: n x ndim
        array), -1 where there is none; -1 for every row once the mapping was edited."""
        if self._dict is not None:
            return np.full(len(offsets), -1, np.int64)
        hit = self._rows_cache.get(fqn)
        if hit is not None and hit[0] is offsets:  # the same chunk arrays asked again
            return hit[1]
        rows = _readonly(self._rows_of(fqn, np.asarray(offsets, np.int64)))
        self._rows_cache[fqn] = (offsets, rows)  # holds the array: its identity stays its own
        return rows

    def prime_rows(self, fqn: str, offsets: np.ndarray, rows: np.ndarray) -> None:
        """Record `rows_of`'s answer for ``(fqn, offsets)`` computed earlier from these same
        columns (the parsed-metadata cache stores it): asked with this ``offsets`` array, it is
        returned without a lookup."""
        self._rows_cache[fqn] = (offsets, _readonly(np.asarray(rows, np.int64)))

    def _rows_of(self, fqn: str, offsets: np.ndarray) -> np.ndarray:
        try:
            fid = self.fqns.index(fqn) if len(self.fqns) < 64 else self._fqn_ids()[fqn]
        except (ValueError, KeyError):
            return np.full(len(offsets), -1, np.int64)
        keys, mixed, fids, value_rows = self._sorted_keys()
        lo, hi = np.searchsorted(fids, [fid, fid + 1]).tolist()
        mine, mine_mixed = keys[lo:hi], mixed[lo:hi]
        width = keys.shape[1] - 2
        if hi == lo or offsets.shape[1] > width:  # no key of this fqn has that many dims
            return np.full(len(offsets), -1, np.int64)
        if (mine_mixed[1:] == mine_mixed[:-1]).any():  # two keys share a mix: one by one
            get = self._fqn_lookup(fqn).get
            return np.array([get(tuple(o), -1) for o in offsets.tolist()], np.int64).reshape(-1)
        want = np.zeros((len(offsets), 1 + width), np.int64)
        want[:, 0] = offsets.shape[1]
        want[:, 1 : 1 + offsets.shape[1]] = offsets
        want_mixed = _row_mix(want)
        at = np.minimum(np.searchsorted(mine_mixed, want_mixed), hi - lo - 1)
        # the mix finds the candidate; the rows themselves decide
        hit = (mine_mixed[at] == want_mixed) & (mine[at, 1:] == want).all(axis=1)
        return np.where(hit, value_rows[lo + at], -1)

    def values_at(self, rows: np.ndarray) -> list:
        """The ``StorageInfo`` of each value row (`rows_of`'s answer), None where it is -1."""
        paths, path_id = self.paths, self.path_id[rows].tolist()
        offset, length = self.offset[rows].tolist(), self.length[rows].tolist()
        tf = self.transforms
        return [
            None if r < 0 else StorageInfo(paths[p], o, n, tf.get(r))
            for r, p, o, n in zip(rows.tolist(), path_id, offset, length)
        ]

    def _sorted_keys(self):
        """The distinct keys as rows ``(fqn id, ndim, offsets...)`` sorted by fqn id then by a
        mix of ``(ndim, offsets)``, with those mixes, fqn ids and value rows (built once)."""
        got = self.__dict__.get("_sorted")
        if got is None:
            keys = self._key_matrix()[self._keys]
            mixed = _row_mix(keys[:, 1:])
            order = np.lexsort((mixed, keys[:, 0]))
            got = self.__dict__["_sorted"] = (
                keys[order],
                mixed[order],
                keys[order, 0],
                self._value_row[order],
            )
        return got

    def chunk_rows(self, entries) -> np.ndarray | None:
        """The value row of every chunk of ``entries`` (``state_dict_metadata``), in metadata
        order (a bytes entry: one chunk, ``MetadataIndex(fqn)``), -1 where the mapping holds no
        key for it: a tensor's lookups at once (`rows_of`). None when the mapping or a chunk
        list was edited: look up one by one then."""
        if self._dict is not None:
            return None
        parts = []
        for fqn, entry in entries.items():
            chunks = getattr(entry, "chunks", None)
            if chunks is None:  # a bytes entry
                parts.append(np.array([self._fqn_lookup(fqn).get(None, -1)], np.int64))
                continue
            arrays = getattr(chunks, "box_arrays", None)
            if arrays is None:
                return None
            parts.append(self.rows_of(fqn, arrays[0]))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    # -- Mapping ------------------------------------------------------------------------
    def _materialise(self) -> dict:
        if self._dict is None:
            self._dict = dict(self.items())
        return self._dict

    def __getitem__(self, key):
        if self._dict is not None:
            return self._dict[key]
        if not isinstance(key, MetadataIndex):
            raise KeyError(key)
        row = self._fqn_lookup(key.fqn).get(key.offset)
        if row is None:
            raise KeyError(key)
        return self._value(row)

    def __iter__(self):
        if self._dict is not None:
            yield from self._dict
            return
        for row in self._keys.tolist():
            yield self._key(row)

    def items(self):
        if self._dict is not None:
            return self._dict.items()
        return _Items(self)

    def __len__(self) -> int:
        return len(self._dict) if self._dict is not None else len(self._keys)

    def __contains__(self, key) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __setitem__(self, key, value):
        self._materialise()[key] = value

    def __delitem__(self, key):
        del self._materialise()[key]

    def __repr__(self) -> str:
        return f"<storage_data: {len(self)} entries in {len(self.paths)} files>"

    def __reduce__(self):
        return (dict, (dict(self.items()),))


class _Items(ItemsView):
    """``StorageColumns.items()``: (key, value) pairs in file order without a lookup each."""

    def __init__(self, cols: StorageColumns):
        super().__init__(cols)
        self.cols = cols

    def __iter__(self):
        c = self.cols
        for k, v in zip(c._keys.tolist(), c._value_row.tolist()):
            yield c._key(k), c._value(v)


# ----------------------------------------------------------------------------- hashing
def _row_mix(rows: np.ndarray) -> np.ndarray:
    """A cheap 64-bit mix of each int64 row (for matching rows that are then compared; not
    Python's hash)."""
    acc = np.zeros(len(rows), np.uint64)
    with np.errstate(over="ignore"):
        for col in rows.T:
            acc = (acc ^ col.astype(np.uint64)) * _XXPRIME_1
            acc ^= acc >> np.uint64(29)
    return acc


_P = (1 << 61) - 1  # CPython's modulus for int hashes (64-bit builds)
_XXPRIME_1 = np.uint64(11400714785074694791)
_XXPRIME_2 = np.uint64(14029467366897019727)
_XXPRIME_5 = np.uint64(2870177450012600261)
_NATIVE = sys.hash_info.width == 64 and sys.hash_info.modulus == _P


def _int_hashes(v: np.ndarray) -> np.ndarray:
    """``hash(int(x))`` of int64 values as uint64 bit patterns."""
    neg = v < 0
    mag = np.where(neg, (-(v + 1)).astype(np.uint64) + np.uint64(1), v.astype(np.uint64))
    h = (mag % np.uint64(_P)).astype(np.int64)
    h = np.where(neg, -h, h)
    h = np.where(h == -1, -2, h)
    return h.astype(np.uint64)


def tuple_hashes(*lanes: np.ndarray) -> np.ndarray:
    """``hash(tuple(row))`` for every row of int64 columns / matrices (each a lane per column),
    or a matrix of already computed uint64 hashes given as ``lanes`` of one column each: CPython
    3.8+'s xxHash-based tuple hash, as int64. Only valid where ``sys.hash_info`` says a 64-bit
    build (see ``_NATIVE``)."""
    cols = []
    for a in lanes:
        cols.extend(a.T if a.ndim == 2 else [a])
    n = len(cols[0]) if cols else 0
    acc = np.full(n, _XXPRIME_5, np.uint64)
    with np.errstate(over="ignore"):
        for c in cols:
            lane = c if c.dtype == np.uint64 else _int_hashes(c)
            acc = acc + lane * _XXPRIME_2
            acc = (acc << np.uint64(31)) | (acc >> np.uint64(33))
            acc = acc * _XXPRIME_1
        acc = acc + (np.uint64(len(cols)) ^ (_XXPRIME_5 ^ np.uint64(3527539)))
    out = acc.view(np.int64).copy()
    out[out == -1] = 1546275796
    return out


def check_chunk_hash_spread(offsets, sizes, what: str, source: str = "<input>") -> None:
    """`limits.check_hash_spread` of the `Chunk` records the rows stand for (a Chunk hashes as
    ``hash((offsets, sizes))``), computed on the arrays."""
    offsets = np.asarray(offsets, np.int64)
    sizes = np.asarray(sizes, np.int64)
    if len(offsets) <= 64:
        return
    if not _NATIVE:
        pairs = zip(map(tuple, offsets.tolist()), map(tuple, sizes.tolist()))
        check_hash_spread(list(pairs), what, source)
        return
    h = tuple_hashes(tuple_hashes(offsets).view(np.uint64), tuple_hashes(sizes).view(np.uint64))
    _check_spread(h, np.concatenate([offsets, sizes], axis=1), None, what, source)


def check_row_hash_spread(rows: np.ndarray, groups, what: str, source: str = "<input>") -> None:
    """`limits.check_hash_spread` of the tuples ``tuple(rows[i])`` within each group
    (``groups[i]``, e.g. the fqn; None: one group), computed on the arrays. Falls back to the
    exact Python check on a build whose hashes differ."""
    rows = np.asarray(rows, np.int64)
    if len(rows) <= 64:
        return
    if not _NATIVE:
        check_hash_spread([tuple(r) for r in rows.tolist()], what, source)
        return
    _check_spread(tuple_hashes(rows), rows, groups, what, source)


def _check_spread(h: np.ndarray, rows: np.ndarray, groups, what: str, source: str) -> None:
    both = h if groups is None else tuple_hashes(h.view(np.uint64), np.asarray(groups, np.int64))
    # a linear pre-check: no bucket of (hash mod 2n + 1) holding more than 64 rows means no
    # (group, hash) pair does either (nearly always the case; the sort below is for the rest)
    if np.bincount(both.view(np.uint64) % np.uint64(2 * len(h) + 1)).max() <= 64:
        return
    key = h if groups is None else np.stack([np.asarray(groups, np.int64), h], axis=1)
    # crowded hash values: count the distinct rows among them exactly
    crowded_keys, cnt = np.unique(key, axis=0 if key.ndim == 2 else None, return_counts=True)
    for k in crowded_keys[cnt > 64]:
        sel = (key == k).all(axis=1) if key.ndim == 2 else key == k
        distinct = len(np.unique(rows[sel], axis=0))
        if distinct > 64:
            raise InputLimitError(
                source,
                f"{distinct} distinct {what} share one hash value",
                "at most 64 (real files never come close)",
                "The file is crafted to make dictionaries quadratic; it was not written by torch.",
            )
