"""Whole plans: every rank's DCP save plan and load plan for a whole state dict at once, plus the
I/O they imply, computed columnar with numpy so that thousands of ranks stay interactive.

`plan_save` reproduces, for every rank at once, what ``DefaultSavePlanner`` does in torch 2.13:
``create_default_local_save_plan`` per rank, ``dedup_save_plans``,
``create_default_global_save_plan`` (index hints rewritten) and ``_validate_global_plan``; the
metadata names each writer's file as ``FileSystemWriter`` does with its defaults
(``__{rank}_0.distcp``). `plan_load` reproduces ``create_default_local_load_plan`` per rank: read
items in torch's order (state-dict order of fqns, then the sweep order of
``create_read_items_for_chunk_list``), with the entries torch would raise on recorded in
``.failures`` instead of raised.

Speed comes from three things: every layout's chunks become arrays once (cached per `Layout`),
the read-item pattern of one (saved chunks, load layout) signature is computed once and shared by
every fqn with that signature (the 80 layers of a transformer share a handful), and plans made of
records (`SavePlan`, `LoadPlan`) are materialised per rank only when asked for. The scalar
mirrors in `planner_helpers` stay the reference; the tests compare both with torch.

Imports the layers above (errors, geometry, records, sharding, planner_helpers); never torch.
"""
from __future__ import annotations

import math
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .errors import MetadataError, PlanError
from .geometry import Chunk
from .planner_helpers import PARTIAL_MESSAGE, _record, validate_global_plan
from .records import (DTYPE_SIZES, BytesStorageMetadata, LoadItemType, LoadPlan, Metadata,
                      MetadataIndex, ReadItem, SavePlan, StorageInfo, TensorProperties,
                      TensorStorageMetadata, TensorWriteData, WriteItem, WriteItemType)
from .sharding import Layout

__all__ = ["plan_save", "plan_load", "SavePlanResult", "LoadPlanResult", "ReadBlock", "LoadIO",
           "file_name", "writer_of_file"]

_TSM_CLASS = "<class 'torch.distributed.checkpoint.metadata.TensorStorageMetadata'>"
_FILE_RE = re.compile(r"^__(\d+)_(\d+)\.distcp$")


def file_name(rank: int) -> str:
    """The data file ``FileSystemWriter`` (defaults: one thread, one file per rank) gives a rank:
    ``f"{prefix}{file_count}.distcp"`` with prefix ``__{rank}_`` and count 0."""
    return f"__{rank}_0.distcp"


def writer_of_file(relative_path: str) -> int | None:
    """The writer rank encoded in a ``__<rank>_<n>.distcp`` name; None for other names."""
    m = _FILE_RE.match(str(relative_path))
    return int(m[1]) if m else None


# ----------------------------------------------------------------------------- inputs
def _check_layouts(layouts) -> tuple[list[str], list[Layout], int]:
    if not isinstance(layouts, Mapping):
        raise PlanError(None, f"layouts is a {type(layouts).__name__}",
                        "a dict {fqn: Layout} in state-dict order",
                        "Build one with dtensor_layout / tensor_layout / sharded_layout / bytes_layout.")
    if not layouts:
        raise PlanError(None, "the state dict is empty", "at least one entry",
                        "Give at least one {fqn: Layout} entry.")
    fqns, lays = list(layouts), list(layouts.values())
    for fqn, lay in zip(fqns, lays):
        if not isinstance(fqn, str):
            raise PlanError(None, f"key {fqn!r} is a {type(fqn).__name__}",
                            "flattened string fqns", "Flatten the state dict first.")
        if not isinstance(lay, Layout):
            raise PlanError(fqn, f"value is a {type(lay).__name__}", "a workbench Layout",
                            "Build one with dtensor_layout / tensor_layout / sharded_layout / "
                            "bytes_layout.")
    ws = lays[0].world_size
    for fqn, lay in zip(fqns, lays):
        if lay.world_size != ws:
            raise PlanError(fqn, f"layout has world size {lay.world_size} but {fqns[0]} has {ws}",
                            "one world size for the whole state dict",
                            "Build every layout for the same number of ranks.",
                            world_size=lay.world_size, expected=ws)
    return fqns, lays, ws


@dataclass(frozen=True, eq=False)
class _Pattern:
    """Every rank's chunks of one layout as arrays, ordered by (rank, position in the rank's
    chunk tuple); ``starts[r]:starts[r+1]`` are rank r's entries. ``key`` numbers the distinct
    offsets (dedup keys) in first-appearance order; ``key_first`` is each key's first entry."""

    rank: np.ndarray
    pos: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    chunks: tuple
    starts: np.ndarray
    key: np.ndarray
    key_first: np.ndarray
    key_holders: dict  # shared key -> the ranks holding it, ascending
    key_shared: np.ndarray  # per key: held by more than one rank


_PATTERNS: "weakref.WeakKeyDictionary[Layout, _Pattern]" = weakref.WeakKeyDictionary()


def _pattern(layout: Layout) -> _Pattern:
    pat = _PATTERNS.get(layout)
    if pat is not None:
        return pat
    nd = layout.ndim if layout.kind != "bytes" else 0
    ranks, pos, chunks = [], [], []
    for r, cs in enumerate(layout.rank_chunks):
        for i, c in enumerate(cs):
            ranks.append(r)
            pos.append(i)
            chunks.append(c)
    n = len(chunks)
    rank = np.array(ranks, dtype=np.int64)
    offsets = np.array([c.offsets for c in chunks], dtype=np.int64).reshape(n, nd)
    sizes = np.array([c.sizes for c in chunks], dtype=np.int64).reshape(n, nd)
    starts = np.searchsorted(rank, np.arange(layout.world_size + 1))
    if n == 0:
        key = np.zeros(0, np.int64)
        first = np.zeros(0, np.int64)
    elif nd == 0:
        key = np.zeros(n, np.int64)
        first = np.zeros(1, np.int64)
    else:
        _, first, inv = np.unique(offsets, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # renumber keys by first appearance
        renum = np.empty_like(order)
        renum[order] = np.arange(len(order))
        key, first = renum[inv.reshape(-1)], first[order]
    nkeys = len(first)
    n_holders = np.zeros(nkeys, np.int64)
    # distinct (key, rank) pairs: entries are rank-sorted, so a pair repeats only within a rank
    kr = np.unique(key * (layout.world_size + 1) + rank) if n else np.zeros(0, np.int64)
    np.add.at(n_holders, kr // (layout.world_size + 1), 1)
    shared = n_holders > 1
    holders = {}
    for k in np.flatnonzero(shared).tolist():
        holders[k] = np.unique(rank[key == k]).tolist()
    pat = _Pattern(rank, np.array(pos, dtype=np.int64), offsets, sizes, tuple(chunks), starts,
                   key, first, holders, shared)
    for a in (pat.rank, pat.pos, pat.offsets, pat.sizes, pat.starts, pat.key, pat.key_first,
              pat.key_shared):
        a.setflags(write=False)
    _PATTERNS[layout] = pat
    return pat


class _LazyPlans(Sequence):
    """One plan per rank, built on first access and cached (a plan of records for every rank of
    a large job would cost seconds and most callers look at a few ranks)."""

    def __init__(self, n: int, build):
        self._n, self._build, self._cache = n, build, {}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"rank {i} out of range for {self._n} ranks")
        plan = self._cache.get(i)
        if plan is None:
            plan = self._cache[i] = self._build(i)
        return plan

    def __repr__(self) -> str:
        return f"<{self._n} plans, {len(self._cache)} built>"


_PROPS: dict[str, TensorProperties] = {}


def _props(dtype: str) -> TensorProperties:
    p = _PROPS.get(dtype)
    if p is None:
        p = _PROPS[dtype] = TensorProperties(dtype)
    return p


# ----------------------------------------------------------------------------- save
class _PlannedStorage(Mapping):
    """``Metadata.storage_data`` of a planned save: ``MetadataIndex -> StorageInfo(file, None,
    None)`` for every metadata chunk, answered from the writer arrays instead of building hundreds
    of thousands of keys up front. Iterates in metadata order with index hints set, as torch's
    dict does; read-only."""

    def __init__(self, sdm: dict, writers: dict[str, np.ndarray]):
        self._sdm, self._writers = sdm, writers
        self._pos: dict[str, dict] = {}

    def writer_array(self, fqn: str) -> np.ndarray:
        return self._writers[fqn]

    def _positions(self, fqn: str) -> dict:
        pos = self._pos.get(fqn)
        if pos is None:
            md = self._sdm[fqn]
            if isinstance(md, BytesStorageMetadata):
                pos = {None: 0}
            else:
                pos = {}
                for i, c in enumerate(md.chunks):
                    pos.setdefault(c.offsets, i)
            self._pos[fqn] = pos
        return pos

    def __getitem__(self, index: MetadataIndex) -> StorageInfo:
        if not isinstance(index, MetadataIndex) or index.fqn not in self._writers:
            raise KeyError(index)
        i = self._positions(index.fqn).get(index.offset)
        if i is None:
            raise KeyError(index)
        return StorageInfo(file_name(int(self._writers[index.fqn][i])), None, None)

    def __iter__(self):
        for fqn in self._writers:
            for off, i in self._positions(fqn).items():
                yield MetadataIndex(fqn, off, None if off is None else i)

    def __len__(self) -> int:
        return sum(len(self._positions(f)) for f in self._writers)

    def __repr__(self) -> str:
        return f"<planned storage_data: {len(self._writers)} entries' chunks -> __<rank>_0.distcp>"


@dataclass(frozen=True, eq=False)
class SavePlanResult:
    """Every rank's save plan of one state dict (see `plan_save`).

    ``local_plans[r]``: torch's ``create_default_local_save_plan`` on rank r; ``plans[r]``: after
    ``dedup_save_plans`` and ``create_default_global_save_plan`` (index hints rewritten);
    ``metadata``: the checkpoint's ``Metadata``; ``errors``: ``_validate_global_plan``'s strings;
    ``writers[fqn]``: the writer rank of each metadata chunk; ``bytes_written[r]``: tensor bytes
    rank r writes (bytes entries count 0: their pickled size is unknown before a real save);
    ``failures``: ``(fqn, ranks, torch's message)`` for entries torch refuses to save (Partial).
    """

    layouts: dict
    world_size: int
    local_plans: Sequence[SavePlan] = field(repr=False)
    plans: Sequence[SavePlan] = field(repr=False)
    metadata: Metadata = field(repr=False)
    errors: list[str]
    writers: dict[str, list[int]] = field(repr=False)
    bytes_written: np.ndarray = field(repr=False)
    failures: list = field(default_factory=list)


def plan_save(layouts: Mapping[str, Layout], save_to_lowest_rank: bool = False) -> SavePlanResult:
    """Plan ``dcp.save`` of ``layouts`` (``{fqn: Layout}`` in state-dict order) on every rank, as
    torch 2.13's ``DefaultSavePlanner`` + ``FileSystemWriter`` defaults would: local plans,
    ``dedup_save_plans(plans, save_to_lowest_rank)`` (load-balanced writer choice with CPython
    set tie-breaks), ``create_default_global_save_plan``, ``_validate_global_plan``."""
    fqns, lays, ws = _check_layouts(layouts)
    failures = []
    pats: list[_Pattern | None] = []
    for fqn, lay in zip(fqns, lays):
        pat = _pattern(lay)
        if lay.kind == "dtensor" and lay.has_partial and len(pat.rank):
            # every rank in the mesh raises in __create_write_items__; plan without the entry
            failures.append((fqn, tuple(np.unique(pat.rank).tolist()), PARTIAL_MESSAGE))
            pat = None
        pats.append(pat)

    # -- dedup: one writer per key (fqn, offset) -------------------------------------------
    sel_per_fqn = []
    for pat in pats:
        if pat is None:
            sel_per_fqn.append(None)
            continue
        # a key held by one rank has no choice; a shared key starts at its lowest holder
        sel_per_fqn.append(pat.rank[pat.key_first].copy())
    shared = [(f, k) for f, pat in enumerate(pats) if pat is not None
              for k in np.flatnonzero(pat.key_shared).tolist()]
    if shared and not save_to_lowest_rank:
        _balance(pats, lays, sel_per_fqn, ws)

    # -- global plan: metadata in (rank, item) order after dedup ----------------------------
    kept_per_fqn, first_rank = [], []
    for pat, sel in zip(pats, sel_per_fqn):
        if pat is None or len(pat.rank) == 0:
            kept_per_fqn.append(None)
            first_rank.append(None)
            continue
        kept = pat.rank == sel[pat.key]
        kept_per_fqn.append(kept)
        first_rank.append(int(pat.rank[kept][0]))
    md_order = sorted((r, f) for f, r in enumerate(first_rank) if r is not None)
    sdm: dict = {}
    writers: dict[str, list[int]] = {}
    writer_arrays: dict[str, np.ndarray] = {}
    hint_per_fqn: list[np.ndarray | None] = [None] * len(fqns)
    bytes_written = np.zeros(ws, dtype=np.int64)
    for _, f in md_order:
        fqn, lay, pat, kept = fqns[f], lays[f], pats[f], kept_per_fqn[f]
        idx = np.flatnonzero(kept)
        w = pat.rank[idx]
        writer_arrays[fqn] = w
        writers[fqn] = w.tolist()
        hint = np.cumsum(kept) - 1
        hint_per_fqn[f] = hint
        if lay.kind == "bytes":
            sdm[fqn] = BytesStorageMetadata()
            continue
        sdm[fqn] = TensorStorageMetadata(_props(lay.dtype), lay.shape,
                                         [pat.chunks[i] for i in idx.tolist()])
        vol = np.prod(pat.sizes[idx], axis=1) * DTYPE_SIZES[lay.dtype]
        np.add.at(bytes_written, w, vol)
    metadata = Metadata(sdm, storage_data=_PlannedStorage(sdm, writer_arrays), version="1.0.0")

    def local_plan(r: int) -> SavePlan:
        return SavePlan(_write_items(r, fqns, lays, pats, None, None))

    def final_plan(r: int) -> SavePlan:
        return SavePlan(_write_items(r, fqns, lays, pats, kept_per_fqn, hint_per_fqn))

    plans = _LazyPlans(ws, final_plan)
    errors = _validate(sdm, pats, lays, fqns, kept_per_fqn, plans)
    return SavePlanResult(dict(layouts), ws, _LazyPlans(ws, local_plan), plans, metadata, errors,
                          writers, bytes_written, failures)


def _balance(pats, lays, sel_per_fqn, ws) -> None:
    """torch's load-balanced ``dedup_save_plans`` choice for shared keys, in place.

    Keys are visited in global first-appearance order, (first rank, fqn position, key number);
    every key, shared or not, charges its writer the GLOBAL tensor's bytes (1 for bytes entries
    and empty tensors). Only shared keys need a choice, so the keys held by one rank between two
    shared keys are charged in bulk; each shared key builds the same Python ``set`` torch builds
    (holders added in plan order) so that ``min`` breaks ties in CPython's set order."""
    fr, fi, kn, size, shared = [], [], [], [], []
    for f, pat in enumerate(pats):
        if pat is None or len(pat.key_first) == 0:
            continue
        nk = len(pat.key_first)
        fr.append(pat.rank[pat.key_first])
        fi.append(np.full(nk, f, np.int64))
        kn.append(np.arange(nk, dtype=np.int64))
        charge = lays[f].nbytes if lays[f].kind != "bytes" else 0
        size.append(np.full(nk, charge or 1, np.int64))
        shared.append(pat.key_shared)
    fr, fi, kn = np.concatenate(fr), np.concatenate(fi), np.concatenate(kn)
    size, shared = np.concatenate(size), np.concatenate(shared)
    order = np.lexsort((kn, fi, fr))
    fr, fi, kn, size, shared = fr[order], fi[order], kn[order], size[order], shared[order]
    sel = fr.copy()  # unshared keys: their only holder
    load = np.zeros(ws, dtype=np.int64)
    prev = 0
    for p in np.flatnonzero(shared).tolist():
        np.add.at(load, sel[prev:p], size[prev:p])
        holders = set()
        for r in pats[fi[p]].key_holders[int(kn[p])]:
            holders.add(r)
        loads = load.tolist()
        w = min(holders, key=lambda r: loads[r])
        sel[p] = w
        load[w] += size[p]
        sel_per_fqn[fi[p]][kn[p]] = w
        prev = p + 1


def _write_items(r, fqns, lays, pats, kept_per_fqn, hint_per_fqn) -> list[WriteItem]:
    """Rank r's write items in state-dict order; with ``kept_per_fqn`` only the deduplicated ones,
    their index hints rewritten to metadata chunk positions."""
    items = []
    for f, (fqn, lay, pat) in enumerate(zip(fqns, lays, pats)):
        if pat is None:
            continue
        s, e = int(pat.starts[r]), int(pat.starts[r + 1])
        if s == e:
            continue
        if lay.kind == "bytes":
            if kept_per_fqn is None or kept_per_fqn[f][s]:
                items.append(WriteItem(MetadataIndex(fqn), WriteItemType.BYTE_IO))
            continue
        typ = WriteItemType.TENSOR if lay.kind == "tensor" else WriteItemType.SHARD
        props = _props(lay.dtype)
        for i in range(s, e):
            hint = None
            if kept_per_fqn is not None:
                if not kept_per_fqn[f][i]:
                    continue
                hint = int(hint_per_fqn[f][i])
            c = pat.chunks[i]
            items.append(WriteItem(MetadataIndex(fqn, c.offsets, hint), typ,
                                   tensor_data=TensorWriteData(c, props, lay.shape)))
    return items


def _validate(sdm, pats, lays, fqns, kept_per_fqn, plans) -> list[str]:
    """``_validate_global_plan`` strings: vectorised checks find the tensors with any error (cached
    per chunk geometry); the scalar mirror writes their exact strings, in metadata order."""
    pos = {f: i for i, f in enumerate(fqns)}
    verdicts: dict = {}
    errors: list[str] = []
    for fqn, md in sdm.items():
        if isinstance(md, BytesStorageMetadata) or len(md.size) == 0:
            continue
        f = pos[fqn]
        pat, kept = pats[f], kept_per_fqn[f]
        sig = (id(pat), kept.tobytes(), md.size, len(plans) > 1)
        bad = verdicts.get(sig)
        if bad is None:
            bad = verdicts[sig] = _has_errors(pat.offsets[kept], pat.sizes[kept], md.size,
                                              len(plans) > 1)
        if bad:
            errors += validate_global_plan(plans, Metadata({fqn: md}))
    return errors


def _has_errors(offs: np.ndarray, sizes: np.ndarray, shape, check_fill: bool) -> bool:
    """Whether ``_validate_global_plan`` reports anything for these chunks: out of bounds,
    strictly overlapping (torch's predicate, zero-size boxes included), or volume != numel."""
    shp = np.array(shape, dtype=np.int64)
    if ((offs < 0) | (sizes < 0) | (offs + sizes > shp)).any():
        return True
    if check_fill and int(np.prod(sizes, axis=1).sum()) != math.prod(shape):
        return True
    if len(offs) > 1:
        a, b = _candidate_pairs(offs, sizes, offs, sizes)
        a, b = a[a != b], b[a != b]
        if _overlap_mask(offs[a], sizes[a], offs[b], sizes[b]).any():
            return True
    return False


# ----------------------------------------------------------------------------- geometry (columnar)
def _overlap_mask(a_off, a_size, b_off, b_size) -> np.ndarray:
    """Row-wise torch ``_check_box_overlap`` (the predicate of `geometry.boxes_overlap`)."""
    return ~((a_off >= b_off + b_size) | (b_off >= a_off + a_size)).any(axis=1)


def _candidate_pairs(l_off, l_size, s_off, s_size) -> tuple[np.ndarray, np.ndarray]:
    """A superset of the (local, saved) index pairs that can overlap, from one dim's intervals:
    saved boxes sorted by start; those starting before a local box's end and, by the running
    maximum of ends, possibly ending after its start. The dim is the one giving the fewest
    candidates; every overlapping pair is among them (overlap needs both interval conditions)."""
    nl, ns = len(l_off), len(s_off)
    nd = l_off.shape[1]
    if nd == 0:
        return np.repeat(np.arange(nl), ns), np.tile(np.arange(ns), nl)
    best = None
    for d in range(nd):
        order = np.argsort(s_off[:, d], kind="stable")
        st = s_off[order, d]
        cmax = np.maximum.accumulate(s_off[order, d] + s_size[order, d])
        hi = np.searchsorted(st, l_off[:, d] + l_size[:, d], side="left")
        lo = np.searchsorted(cmax, l_off[:, d], side="right")
        cnt = np.maximum(hi - lo, 0)
        total = int(cnt.sum())
        if best is None or total < best[0]:
            best = (total, order, lo, cnt)
        if total <= nl:
            break
    total, order, lo, cnt = best
    li = np.repeat(np.arange(nl), cnt)
    # position within each local's run, added to its lo
    run_start = np.repeat(np.cumsum(cnt) - cnt, cnt)
    si = order[np.repeat(lo, cnt) + np.arange(total) - run_start]
    return li, si


# ----------------------------------------------------------------------------- load
@dataclass(frozen=True, eq=False)
class ReadBlock:
    """One fqn's read items over all ranks as columns, ordered by rank then torch's order.

    ``rank``, ``local_idx`` (position in the rank's local chunk list), ``saved_idx`` (position in
    the metadata's chunk list; -1 for a bytes entry), ``dest_offsets`` / ``storage_offsets`` /
    ``lengths`` (k x ndim, torch's ReadItem fields; a bytes entry has torch's placeholder zeros,
    k x 1). Arrays are read-only and may be shared by fqns with the same layouts."""

    fqn: str
    kind: str  # "tensor" | "bytes"
    rank: np.ndarray
    local_idx: np.ndarray
    saved_idx: np.ndarray
    dest_offsets: np.ndarray
    storage_offsets: np.ndarray
    lengths: np.ndarray
    starts: np.ndarray = field(repr=False)  # starts[r]:starts[r+1] are rank r's rows

    def __len__(self) -> int:
        return len(self.rank)

    def of_rank(self, r: int) -> slice:
        return slice(int(self.starts[r]), int(self.starts[r + 1]))


def _ro(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _empty_block(fqn: str, kind: str, nd: int, ws: int) -> ReadBlock:
    z = np.zeros(0, np.int64)
    zz = np.zeros((0, nd), np.int64)
    return ReadBlock(fqn, kind, z, z, z, zz, zz, zz, np.zeros(ws + 1, np.int64))


def _bytes_block(fqn: str, ranks: np.ndarray, ws: int) -> ReadBlock:
    n = len(ranks)
    z = np.zeros((n, 1), np.int64)
    cols = _ro(ranks.astype(np.int64), np.zeros(n, np.int64), np.full(n, -1, np.int64), z)
    return ReadBlock(fqn, "bytes", cols[0], cols[1], cols[2], z, z, z,
                     np.searchsorted(cols[0], np.arange(ws + 1)))


def _read_columns(s_off, s_size, pat: _Pattern, ws: int):
    """``create_read_items_for_chunk_list`` for every rank of a load layout at once: every
    overlapping (local, saved) pair, ordered per rank by (local start on the sweep dim, local
    index, saved end on the sweep dim, saved index), the sweep dim being the first dim of largest
    ``max(offset+size)`` over that rank's local chunks and all saved chunks (torch 2.13)."""
    l_off, l_size = pat.offsets, pat.sizes
    nd = l_off.shape[1]
    if len(l_off) == 0 or len(s_off) == 0:
        return None
    li, si = _candidate_pairs(l_off, l_size, s_off, s_size)
    if nd:
        ok = _overlap_mask(l_off[li], l_size[li], s_off[si], s_size[si])
        li, si = li[ok], si[ok]
    rank = pat.rank[li]
    if nd > 1:
        ext = np.maximum.reduceat(l_off + l_size, pat.starts[:-1][np.diff(pat.starts) > 0], axis=0)
        ext = np.maximum(ext, (s_off + s_size).max(axis=0))
        sw_present = np.where(ext.max(axis=1) > 0, np.argmax(ext, axis=1), 0)
        sw_rank = np.zeros(ws, np.int64)
        sw_rank[np.flatnonzero(np.diff(pat.starts) > 0)] = sw_present
        sw = sw_rank[rank]
        k_local = l_off[li, sw]
        k_saved = s_off[si, sw] + s_size[si, sw]
    else:
        # 1-d: dim 0; 0-d: torch uses bounds (0, 1) for every chunk, i.e. no reordering
        k_local = l_off[li, 0] if nd else np.zeros(len(li), np.int64)
        k_saved = (s_off[si, 0] + s_size[si, 0]) if nd else np.zeros(len(li), np.int64)
    local_idx = pat.pos[li]
    order = np.lexsort((si, k_saved, local_idx, k_local, rank))
    li, si, rank, local_idx = li[order], si[order], rank[order], local_idx[order]
    lo, ls, so, ss = l_off[li], l_size[li], s_off[si], s_size[si]
    lengths = np.minimum(so + ss, lo + ls) - np.maximum(lo, so)
    after = so > lo
    storage = np.where(after, 0, lo - so)
    dest = np.where(after, so - lo, 0)
    starts = np.searchsorted(rank, np.arange(ws + 1))
    return _ro(rank, local_idx, si, dest, storage, lengths, starts)


def _saved_arrays(md: TensorStorageMetadata, fqn: str):
    nd = len(md.size)
    n = len(md.chunks)
    for c in md.chunks:
        if len(c.offsets) != nd:
            raise MetadataError(fqn, f"saved chunk {c} has {len(c.offsets)} dims for a tensor of "
                                f"size {tuple(md.size)}", "chunks of the tensor's rank",
                                "The checkpoint's metadata is corrupt; re-save it.", chunk=c)
    offs = np.array([c.offsets for c in md.chunks], dtype=np.int64).reshape(n, nd)
    sizes = np.array([c.sizes for c in md.chunks], dtype=np.int64).reshape(n, nd)
    return offs, sizes


def _key_ranks(lay: Layout, pat: _Pattern) -> np.ndarray:
    """Ranks whose state dict holds the key: every rank for a DTensor (ranks outside the mesh
    still hold the object) or a ShardedTensor (possibly with no local shard); the holders for a
    plain tensor or a bytes value."""
    if lay.kind in ("dtensor", "sharded"):
        return np.arange(lay.world_size, dtype=np.int64)
    return np.unique(pat.rank)


def _torch_size(shape) -> str:
    return f"torch.Size({list(shape)})"


@dataclass(frozen=True)
class LoadIO:
    """What a load costs, per load rank and per file (see ``LoadPlanResult.io``).

    Per load rank (arrays of ``world_size``): ``files_opened``, ``reads`` (read items),
    ``bytes_needed`` (elements the rank receives x element size), ``bytes_read`` (what
    ``FileSystemReader.read_data`` reads: the whole stored item for every read item, its
    ``StorageInfo.length`` when known, else the saved chunk's bytes), ``amplification``
    (bytes_read / bytes_needed, nan when nothing is needed). Per file (``files``, sorted by writer
    rank then name): ``file_writers`` (rank parsed from ``__<rank>_<n>.distcp``, -1 otherwise),
    ``readers[file]`` (load ranks opening it), ``traffic`` (ranks x files bytes read),
    ``read_counts`` (ranks x files read items). ``bytes_written``: per save rank, from
    ``StorageInfo.length`` or the chunks' bytes, or None when no file names a rank. Reads whose
    chunk has no storage entry count in the per-rank numbers but in no file."""

    files_opened: np.ndarray
    reads: np.ndarray
    bytes_needed: np.ndarray
    bytes_read: np.ndarray
    amplification: np.ndarray
    files: tuple[str, ...]
    file_writers: np.ndarray
    readers: dict
    traffic: np.ndarray
    read_counts: np.ndarray
    bytes_written: np.ndarray | None


@dataclass(frozen=True, eq=False)
class LoadPlanResult:
    """Every rank's load plan of one state dict against one checkpoint (see `plan_load`).

    ``plans[r]``: rank r's ``LoadPlan`` (built on first access); ``reads(fqn)``: one fqn's items
    over all ranks as columns; ``failures``: ``(fqn, ranks, torch's exact message)`` for entries
    torch raises on, which get no items; ``problems``: the diagnosis; ``io``: the I/O numbers."""

    metadata: Metadata = field(repr=False)
    layouts: dict = field(repr=False)
    world_size: int
    plans: Sequence[LoadPlan] = field(repr=False)
    failures: list
    allow_partial_load: bool = False
    _blocks: dict = field(default_factory=dict, repr=False)

    def reads(self, fqn: str) -> ReadBlock:
        """The read items of ``fqn`` over all ranks (empty when it reads nothing)."""
        block = self._blocks.get(fqn)
        if block is None:
            if fqn not in self.layouts:
                raise PlanError(fqn, "is not in the planned state dict",
                                f"one of its {len(self.layouts)} fqns", "Check the key's spelling.")
            lay = self.layouts[fqn]
            block = _empty_block(fqn, "bytes" if lay.kind == "bytes" else "tensor",
                                 1 if lay.kind == "bytes" else lay.ndim, self.world_size)
        return block

    @property
    def problems(self):
        from .diagnosis import find_problems
        return find_problems(self)

    @cached_property
    def io(self) -> LoadIO:
        return _load_io(self)


def plan_load(metadata: Metadata, layouts: Mapping[str, Layout], *,
              allow_partial_load: bool = False) -> LoadPlanResult:
    """Plan ``dcp.load`` of ``layouts`` (``{fqn: Layout}`` in state-dict order, one world size)
    from a checkpoint's ``metadata`` on every rank, as torch 2.13's ``DefaultLoadPlanner`` would
    (``create_default_local_load_plan(state_dict, metadata, strict=not allow_partial_load)``).

    Where torch raises on a rank (missing key when strict, size mismatch, tensor metadata for a
    non-tensor value, a Partial DTensor), the entry gets no read items on any rank and
    ``(fqn, ranks, message)`` goes to ``.failures``; torch would stop at the first."""
    fqns, lays, ws = _check_layouts(layouts)
    metadata = _record(metadata)
    sdm = getattr(metadata, "state_dict_metadata", None)
    if not isinstance(sdm, Mapping):
        raise MetadataError(None, f"metadata is a {type(metadata).__name__} without a "
                            "state_dict_metadata mapping", "a DCP Metadata",
                            "Read it with workbench.load_metadata(path) or plan it with plan_save.")
    blocks: dict[str, ReadBlock] = {}
    failures = []
    cache: dict = {}
    for fqn, lay in zip(fqns, lays):
        pat = _pattern(lay)
        key_ranks = _key_ranks(lay, pat)
        if len(key_ranks) == 0:
            continue
        md = sdm.get(fqn)
        if md is None:
            if not allow_partial_load:
                failures.append((fqn, tuple(key_ranks.tolist()),
                                 f"Missing key in checkpoint state_dict: {fqn}."))
            continue
        in_mesh = np.unique(pat.rank) if lay.kind == "dtensor" else key_ranks
        if isinstance(md, BytesStorageMetadata):
            blocks[fqn] = _bytes_block(fqn, in_mesh, ws)
            continue
        if not isinstance(md, TensorStorageMetadata):
            raise MetadataError(fqn, f"storage metadata is a {type(md).__name__}",
                                "TensorStorageMetadata or BytesStorageMetadata",
                                "The checkpoint's metadata is corrupt; re-save it.")
        if lay.kind == "bytes":
            failures.append((fqn, tuple(key_ranks.tolist()),
                             f"Invalid checkpoint metadata for {fqn}, expected "
                             f"BytesStorageMetadata but found {_TSM_CLASS}"))
            continue
        if tuple(md.size) != lay.shape:
            failures.append((fqn, tuple(key_ranks.tolist()),
                             f"Size mismatch between saved {_torch_size(md.size)} and current: "
                             f"{_torch_size(lay.shape)} for {fqn}"))
            continue
        if lay.has_partial:
            # the Partial ValueError is caught in _create_read_items and replaced by this text
            if len(in_mesh):
                failures.append((fqn, tuple(in_mesh.tolist()),
                                 f"Invalid checkpoint metadata for {fqn}, expected "
                                 f"BytesStorageMetadata but found {_TSM_CLASS}"))
            continue
        s_off, s_size = _saved_arrays(md, fqn)
        sig = (id(pat), s_off.tobytes(), s_size.tobytes(), s_off.shape)
        cols = cache.get(sig)
        if sig not in cache:
            cols = cache[sig] = _read_columns(s_off, s_size, pat, ws)
        if cols is not None:
            blocks[fqn] = ReadBlock(fqn, "tensor", *cols)
    result = LoadPlanResult(metadata, dict(layouts), ws, None, failures, allow_partial_load, blocks)
    object.__setattr__(result, "plans", _LazyPlans(ws, lambda r: _load_plan(result, r)))
    return result


def _load_plan(res: LoadPlanResult, r: int) -> LoadPlan:
    """Rank r's ``LoadPlan`` from the columns, ReadItem records in torch's order."""
    items = []
    sdm = res.metadata.state_dict_metadata
    for fqn, block in res._blocks.items():
        sl = block.of_rank(r)
        if sl.start == sl.stop:
            continue
        if block.kind == "bytes":
            items.append(ReadItem(LoadItemType.BYTE_IO, MetadataIndex(fqn), (0,), MetadataIndex(fqn),
                                  (0,), (0,)))
            continue
        local = res.layouts[fqn].rank_chunks[r]
        saved = sdm[fqn].chunks
        for li, si, do, so, ln in zip(block.local_idx[sl].tolist(), block.saved_idx[sl].tolist(),
                                      block.dest_offsets[sl].tolist(),
                                      block.storage_offsets[sl].tolist(), block.lengths[sl].tolist()):
            items.append(ReadItem(LoadItemType.TENSOR, MetadataIndex(fqn, local[li].offsets, li),
                                  tuple(do), MetadataIndex(fqn, saved[si].offsets, si), tuple(so),
                                  tuple(ln)))
    return LoadPlan(items)


def _storage_columns(metadata: Metadata, fqn: str, md, file_ids: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per saved chunk of ``fqn``: the id of its file (-1 when storage_data has no entry) and the
    bytes a read of it loads (``StorageInfo.length`` when known, else the chunk's bytes)."""
    sd = metadata.storage_data
    if isinstance(md, BytesStorageMetadata):
        chunk_bytes = np.zeros(1, np.int64)
        keys = [MetadataIndex(fqn)]
    else:
        esize = md.properties.element_size
        chunk_bytes = np.array([math.prod(c.sizes) * esize for c in md.chunks], np.int64)
        keys = None
    if isinstance(sd, _PlannedStorage) and fqn in sd._writers:
        w = sd.writer_array(fqn)
        fid = np.array([file_ids.setdefault(file_name(x), len(file_ids)) for x in w.tolist()],
                       np.int64)
        return fid, chunk_bytes
    if not sd:
        return np.full(len(chunk_bytes), -1, np.int64), chunk_bytes
    if keys is None:
        keys = [MetadataIndex(fqn, c.offsets) for c in md.chunks]
    fid = np.full(len(keys), -1, np.int64)
    nbytes = chunk_bytes.copy()
    for i, k in enumerate(keys):
        info = sd.get(k)
        if info is None:
            continue
        fid[i] = file_ids.setdefault(str(info.relative_path), len(file_ids))
        if getattr(info, "length", None) is not None:
            nbytes[i] = int(info.length)
    return fid, nbytes


def _load_io(res: LoadPlanResult) -> LoadIO:
    ws = res.world_size
    sdm = res.metadata.state_dict_metadata
    file_ids: dict[str, int] = {}
    ranks, fids, needed, read = [], [], [], []
    for fqn, block in res._blocks.items():
        md = sdm[fqn]
        fid, item_bytes = _storage_columns(res.metadata, fqn, md, file_ids)
        si = np.maximum(block.saved_idx, 0)
        ranks.append(block.rank)
        fids.append(fid[si])
        read.append(item_bytes[si])
        if block.kind == "bytes":
            needed.append(np.zeros(len(block), np.int64))
        else:
            needed.append(np.prod(block.lengths, axis=1) * md.properties.element_size)
    # files that nobody reads still belong to the checkpoint (their writers wrote them)
    written_by_file: dict[int, int] = {}
    for fqn, md in sdm.items():
        fid, item_bytes = _storage_columns(res.metadata, fqn, md, file_ids)
        for f, b in zip(fid.tolist(), item_bytes.tolist()):
            if f >= 0:
                written_by_file[f] = written_by_file.get(f, 0) + b
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    rank, fid, need, rd = cat(ranks), cat(fids), cat(needed), cat(read)
    names = list(file_ids)
    writers = [writer_of_file(n) for n in names]
    order = sorted(range(len(names)), key=lambda i: (writers[i] is None, writers[i] or 0, names[i]))
    remap = np.empty(len(names), np.int64)
    remap[order] = np.arange(len(names))
    nf = len(names)
    known = fid >= 0
    col = remap[fid[known]] if nf else fid[known]
    flat = rank[known] * nf + col
    traffic = np.bincount(flat, weights=rd[known], minlength=ws * nf).astype(np.int64).reshape(ws, nf)
    counts = np.bincount(flat, minlength=ws * nf).astype(np.int64).reshape(ws, nf)
    files = tuple(names[i] for i in order)
    file_writers = np.array([-1 if writers[i] is None else writers[i] for i in order], np.int64)
    readers = {files[j]: tuple(np.flatnonzero(counts[:, j]).tolist()) for j in range(nf)}
    n_reads = np.bincount(rank, minlength=ws).astype(np.int64)
    bytes_needed = np.zeros(ws, np.int64)
    np.add.at(bytes_needed, rank, need)
    bytes_read = np.zeros(ws, np.int64)
    np.add.at(bytes_read, rank, rd)
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = np.where(bytes_needed > 0, bytes_read / np.maximum(bytes_needed, 1), np.nan)
    bytes_written = None
    if (file_writers >= 0).any():
        bytes_written = np.zeros(int(file_writers.max()) + 1, np.int64)
        for f, b in written_by_file.items():
            w = writers[f]
            if w is not None:
                bytes_written[w] += b
    return LoadIO((counts > 0).sum(axis=1), n_reads, bytes_needed, bytes_read, amp, files,
                  file_writers, readers, traffic, counts, bytes_written)
