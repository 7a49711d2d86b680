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
from .planner_helpers import (
    PARTIAL_MESSAGE,
    _record,
    create_read_items_for_chunk_list,
    invalid_metadata_message,
    missing_key_message,
    size_mismatch_message,
    validate_global_plan,
)
from .records import (
    DTYPE_SIZES,
    BytesStorageMetadata,
    LoadItemType,
    LoadPlan,
    Metadata,
    MetadataIndex,
    ReadItem,
    SavePlan,
    StorageInfo,
    TensorProperties,
    TensorStorageMetadata,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from .sharding import Layout
from .versions import semantics

__all__ = [
    "plan_save",
    "plan_load",
    "SavePlanResult",
    "LoadPlanResult",
    "ReadBlock",
    "LoadIO",
    "file_name",
    "writer_of_file",
    "compare_targets",
    "TargetCost",
]

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
        raise PlanError(
            None,
            f"layouts is a {type(layouts).__name__}",
            "a dict {fqn: Layout} in state-dict order",
            "Build one with dtensor_layout / tensor_layout / sharded_layout / bytes_layout.",
        )
    if not layouts:
        raise PlanError(
            None,
            "the state dict is empty",
            "at least one entry",
            "Give at least one {fqn: Layout} entry.",
        )
    fqns, lays = list(layouts), list(layouts.values())
    for fqn, lay in zip(fqns, lays):
        if not isinstance(fqn, str):
            raise PlanError(
                None,
                f"key {fqn!r} is a {type(fqn).__name__}",
                "flattened string fqns",
                "Flatten the state dict first.",
            )
        if not isinstance(lay, Layout):
            raise PlanError(
                fqn,
                f"value is a {type(lay).__name__}",
                "a workbench Layout",
                "Build one with dtensor_layout / tensor_layout / sharded_layout / bytes_layout.",
            )
    ws = lays[0].world_size
    for fqn, lay in zip(fqns, lays):
        if lay.world_size != ws:
            raise PlanError(
                fqn,
                f"layout has world size {lay.world_size} but {fqns[0]} has {ws}",
                "one world size for the whole state dict",
                "Build every layout for the same number of ranks.",
                world_size=lay.world_size,
                expected=ws,
            )
    return fqns, lays, ws


@dataclass(frozen=True, eq=False)
class _Pattern:
    """Every rank's chunks of one layout as arrays, ordered by (rank, position in the rank's
    chunk tuple); ``starts[r]:starts[r+1]`` are rank r's entries.

    Dedup keys (distinct offsets) are numbered in first-appearance order: ``key[i]`` is entry i's
    key, ``key_first[k]`` its first entry and ``key_rank[k]`` its first holder (nondecreasing).
    ``key_holders`` lists the holders of the keys held by several ranks (``key_shared``);
    ``unshared_cnt[r]`` counts the one-holder keys of rank r and ``unshared_before[k]`` the
    one-holder keys numbered below k."""

    rank: np.ndarray
    pos: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    chunks: tuple
    starts: np.ndarray
    holder_ranks: np.ndarray
    key: np.ndarray
    key_first: np.ndarray
    key_rank: np.ndarray
    key_shared: np.ndarray
    key_holders: dict
    unshared_cnt: np.ndarray
    unshared_before: np.ndarray


_PATTERNS: weakref.WeakKeyDictionary[Layout, _Pattern] = weakref.WeakKeyDictionary()


def _pattern(layout: Layout) -> _Pattern:
    pat = _PATTERNS.get(layout)
    if pat is not None:
        return pat
    ws = layout.world_size
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
    if n == 0:
        key, first = np.zeros(0, np.int64), np.zeros(0, np.int64)
    elif nd == 0:
        key, first = np.zeros(n, np.int64), np.zeros(1, np.int64)
    else:
        _, first, inv = np.unique(offsets, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # renumber keys by first appearance
        renum = np.empty_like(order)
        renum[order] = np.arange(len(order))
        key, first = renum[inv.reshape(-1)], first[order]
    nkeys = len(first)
    # distinct (key, rank) pairs: a key repeats on one rank only for repeated ShardedTensor offsets
    pairs = np.unique(key * (ws + 1) + rank)
    n_holders = np.bincount(pairs // (ws + 1), minlength=nkeys)
    shared = n_holders > 1
    holders = {}
    if shared.any():
        pr, pk = pairs % (ws + 1), pairs // (ws + 1)
        for k in np.flatnonzero(shared).tolist():
            holders[k] = pr[pk == k].tolist()
    key_rank = rank[first]
    unshared = ~shared
    pat = _Pattern(
        rank,
        np.array(pos, dtype=np.int64),
        offsets,
        sizes,
        tuple(chunks),
        np.searchsorted(rank, np.arange(ws + 1)),
        np.unique(rank),
        key,
        first,
        key_rank,
        shared,
        holders,
        np.bincount(key_rank[unshared], minlength=ws),
        np.concatenate([[0], np.cumsum(unshared)]),
    )
    for a in vars(pat).values():
        if isinstance(a, np.ndarray):
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

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Sequence)
            and len(other) == self._n
            and all(a == b for a, b in zip(self, other))
        )

    __hash__ = None

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
    dict does; read-only. Like a real ``storage_data`` it describes what was written: it keeps
    its own copy of the chunk lists, so editing the metadata's chunks afterwards does not move it."""

    def __init__(self, sdm: dict, writers: dict[str, np.ndarray]):
        self._writers = writers
        self._chunks = {
            f: None if isinstance(md, BytesStorageMetadata) else tuple(md.chunks)
            for f, md in sdm.items()
        }
        self._pos: dict[str, dict] = {}

    def writer_array(self, fqn: str, chunks) -> np.ndarray | None:
        """The writer rank of each of ``chunks`` (a tensor's metadata chunk list), or None when
        the list is no longer the one planned."""
        planned = self._chunks.get(fqn)
        if (
            planned is None
            or len(planned) != len(chunks)
            or not all(a is b for a, b in zip(planned, chunks))
        ):
            return None
        return self._writers[fqn]

    def _positions(self, fqn: str) -> dict:
        pos = self._pos.get(fqn)
        if pos is None:
            chunks = self._chunks[fqn]
            pos = {None: 0} if chunks is None else {}
            for i, c in enumerate(chunks or ()):
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
    torch_version: str = "2.13"


def plan_save(
    layouts: Mapping[str, Layout],
    save_to_lowest_rank: bool = False,
    *,
    torch_version: str | None = None,
) -> SavePlanResult:
    """Plan ``dcp.save`` of ``layouts`` (``{fqn: Layout}`` in state-dict order) on every rank, as
    ``DefaultSavePlanner`` + ``FileSystemWriter`` defaults of ``torch_version`` (default
    `versions.default_torch_version`) would: local plans, ``dedup_save_plans(plans,
    save_to_lowest_rank)`` (load-balanced writer choice with CPython set tie-breaks),
    ``create_default_global_save_plan``, ``_validate_global_plan`` (whose checks and texts depend
    on the version; the rest is the same in 2.4 - 2.14)."""
    sem = semantics(torch_version)
    fqns, lays, ws = _check_layouts(layouts)
    failures = []
    pats: list[_Pattern | None] = []
    for fqn, lay in zip(fqns, lays):
        pat = _pattern(lay)
        if lay.kind == "dtensor" and lay.has_partial and len(pat.rank):
            # every rank in the mesh raises in __create_write_items__; plan without the entry
            failures.append((fqn, tuple(pat.holder_ranks.tolist()), PARTIAL_MESSAGE))
            pat = None
        pats.append(pat)

    # -- dedup: one writer per key (fqn, offset) -------------------------------------------
    sel_per_fqn = []
    for pat in pats:
        if pat is None:
            sel_per_fqn.append(None)
            continue
        # a key held by one rank has no choice; a shared key starts at its lowest holder
        sel_per_fqn.append(pat.key_rank.copy())
    if not save_to_lowest_rank and any(pat is not None and pat.key_holders for pat in pats):
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
        tsm = sdm[fqn] = TensorStorageMetadata(_props(lay.dtype), lay.shape)
        # set after construction: __post_init__ would re-normalise every (already Chunk) chunk
        tsm.chunks = (
            list(pat.chunks) if len(idx) == len(kept) else [pat.chunks[i] for i in idx.tolist()]
        )
        vol = np.prod(pat.sizes[idx], axis=1) * DTYPE_SIZES[lay.dtype]
        np.add.at(bytes_written, w, vol)
    metadata = Metadata(sdm, storage_data=_PlannedStorage(sdm, writer_arrays), version="1.0.0")

    def local_plan(r: int) -> SavePlan:
        return SavePlan(_write_items(r, fqns, lays, pats, None, None))

    def final_plan(r: int) -> SavePlan:
        return SavePlan(_write_items(r, fqns, lays, pats, kept_per_fqn, hint_per_fqn))

    plans = _LazyPlans(ws, final_plan)
    errors = _validate(sdm, pats, fqns, kept_per_fqn, plans, sem.version)
    return SavePlanResult(
        dict(layouts),
        ws,
        _LazyPlans(ws, local_plan),
        plans,
        metadata,
        errors,
        writers,
        bytes_written,
        failures,
        sem.version,
    )


def _balance(pats, lays, sel_per_fqn, ws) -> None:
    """torch's load-balanced ``dedup_save_plans`` choice for the shared keys, in place.

    torch visits keys in global first-appearance order, (first holder rank r0, fqn position, key
    number), and charges every key, shared or not, the GLOBAL tensor's bytes (1 for bytes entries
    and empty tensors) to its writer. All holders of a key are >= r0 and the one-holder keys of a
    rank > r0 come later, so when a shared key is visited a holder's load is the shared keys it
    already won, plus, for r0 itself, its one-holder keys visited so far (a prefix sum over fqns).
    Only the shared keys are looped over; each builds the Python ``set`` torch builds (holders
    added in plan order) so that ``min`` breaks ties in CPython's set order."""
    charge = [lay.nbytes or 1 for lay in lays]
    rows = sorted(
        (int(pat.key_rank[k]), f, k)
        for f, pat in enumerate(pats)
        if pat is not None
        for k in pat.key_holders
    )
    r0s = sorted({r for r, _, _ in rows})
    col = {r: j for j, r in enumerate(r0s)}
    r0a = np.array(r0s, dtype=np.int64)
    before = np.zeros((len(pats) + 1, len(r0s)), dtype=np.int64)
    for f, pat in enumerate(pats):
        if pat is not None:
            before[f + 1] = pat.unshared_cnt[r0a] * charge[f]
    before = np.cumsum(before, axis=0).tolist()
    won = [0] * ws
    for r0, f, k in rows:
        pat = pats[f]
        first_of_r0 = int(np.searchsorted(pat.key_rank, r0))
        own = (
            before[f][col[r0]]
            + int(pat.unshared_before[k] - pat.unshared_before[first_of_r0]) * charge[f]
        )
        holders = set()
        for h in pat.key_holders[k]:
            holders.add(h)
        w = min(holders, key=lambda h: won[h] + (own if h == r0 else 0))
        won[w] += charge[f]
        sel_per_fqn[f][k] = w


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
            items.append(
                WriteItem(
                    MetadataIndex(fqn, c.offsets, hint),
                    typ,
                    tensor_data=TensorWriteData(c, props, lay.shape),
                )
            )
    return items


def _validate(sdm, pats, fqns, kept_per_fqn, plans, torch_version: str) -> list[str]:
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
        check_fill = len(plans) > 1 or semantics(torch_version).validation_fill_single_plan
        sig = (id(pat), kept.tobytes(), md.size, check_fill)
        bad = verdicts.get(sig)
        if bad is None:
            bad = verdicts[sig] = _has_errors(
                pat.offsets[kept], pat.sizes[kept], md.size, check_fill
            )
        if bad:
            errors += validate_global_plan(plans, Metadata({fqn: md}), torch_version=torch_version)
    return errors


def _has_errors(offs: np.ndarray, sizes: np.ndarray, shape, check_fill: bool) -> bool:
    """Whether ``_validate_global_plan`` reports anything for these chunks: out of bounds,
    strictly overlapping (torch's predicate, zero-size boxes included), or volume != numel."""
    if _int64_unsafe(offs, sizes):
        return True  # let the scalar mirror (Python ints, as torch) decide
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
_SAFE = 2**62  # offsets and sizes below this in magnitude: their sums and differences fit int64


def _int64_unsafe(offs: np.ndarray, sizes: np.ndarray) -> bool:
    """Whether ``offset + size`` could wrap in int64 (torch computes with Python ints; a chunk
    can reach 2**63 - 1 past the end of its tensor in hand-made metadata)."""
    return bool(offs.size) and (int(np.abs(offs).max()) >= _SAFE or int(sizes.max()) >= _SAFE)


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
    return ReadBlock(
        fqn,
        "bytes",
        cols[0],
        cols[1],
        cols[2],
        z,
        z,
        z,
        np.searchsorted(cols[0], np.arange(ws + 1)),
    )


def _read_columns(s_off, s_size, pat: _Pattern, ws: int, nested: bool = False):
    """``create_read_items_for_chunk_list`` for every rank of a load layout at once: every
    overlapping (local, saved) pair, ordered per rank by (local start on the sweep dim, local
    index, saved end on the sweep dim, saved index), the sweep dim being the first dim of largest
    ``max(offset+size)`` over that rank's local chunks and all saved chunks (torch 2.11+); with
    ``nested`` (torch 2.4 - 2.10) by (local index, saved index)."""
    l_off, l_size = pat.offsets, pat.sizes
    nd = l_off.shape[1]
    if len(l_off) == 0 or len(s_off) == 0:
        return None
    if _int64_unsafe(l_off, l_size) or _int64_unsafe(s_off, s_size):
        return _exact_read_columns(s_off, s_size, pat, ws, "2.10" if nested else "2.13")
    li, si = _candidate_pairs(l_off, l_size, s_off, s_size)
    if nd:
        ok = _overlap_mask(l_off[li], l_size[li], s_off[si], s_size[si])
        li, si = li[ok], si[ok]
    if nested:
        # pattern entries are numbered in (rank, local index) order: the nested loop's order
        order = np.lexsort((si, li))
        return _columns(pat, ws, l_off, l_size, s_off, s_size, li[order], si[order])
    # sweep dim per rank (torch: the first dim of largest max(offset+size) over the rank's local
    # chunks and all saved chunks; 1-d: dim 0; 0-d: bounds (0, 1) everywhere, i.e. no reordering)
    sw_rank = np.zeros(ws, np.int64)
    if nd > 1:
        present = np.diff(pat.starts) > 0
        ext = np.maximum.reduceat(l_off + l_size, pat.starts[:-1][present], axis=0)
        ext = np.maximum(ext, (s_off + s_size).max(axis=0))
        sw_rank[present] = np.where(ext.max(axis=1) > 0, np.argmax(ext, axis=1), 0)
    zero = np.zeros(len(l_off), np.int64)
    sw_local = sw_rank[pat.rank]
    k_local = l_off[np.arange(len(l_off)), sw_local] if nd else zero
    # rank of each local chunk in its rank's visiting order: (local start on sw, local index)
    lpos = np.empty(len(l_off), np.int64)
    lpos[np.lexsort((pat.pos, k_local, pat.rank))] = np.arange(len(l_off))
    sw = sw_local[li]
    k_saved = (s_off[si, sw] + s_size[si, sw]) if nd else np.zeros(len(li), np.int64)
    # one int64 key (local visit position, saved end on sw, saved index) when it cannot overflow
    k_saved = k_saved - (k_saved.min() if len(k_saved) else 0)
    span = int(k_saved.max()) + 1 if len(k_saved) else 1
    if len(l_off) * span * len(s_off) < 2**62:
        order = np.argsort((lpos[li] * span + k_saved) * len(s_off) + si, kind="stable")
    else:
        order = np.lexsort((si, k_saved, lpos[li]))
    return _columns(pat, ws, l_off, l_size, s_off, s_size, li[order], si[order])


def _columns(pat: _Pattern, ws: int, l_off, l_size, s_off, s_size, li, si):
    """The read-item columns of the ordered overlapping pairs (local entry li, saved chunk si)."""
    rank, local_idx = pat.rank[li], pat.pos[li]
    lo, ls, so, ss = l_off[li], l_size[li], s_off[si], s_size[si]
    lengths = np.minimum(so + ss, lo + ls) - np.maximum(lo, so)
    after = so > lo
    storage = np.where(after, 0, lo - so)
    dest = np.where(after, so - lo, 0)
    starts = np.searchsorted(rank, np.arange(ws + 1))
    return _ro(rank, local_idx, si, dest, storage, lengths, starts)


def _exact_read_columns(s_off, s_size, pat: _Pattern, ws: int, torch_version: str):
    """`_read_columns` from the scalar mirror, rank by rank, in Python ints: for chunks whose
    ends could wrap int64."""
    saved = [Chunk(tuple(o), tuple(s)) for o, s in zip(s_off.tolist(), s_size.tolist())]
    md = TensorStorageMetadata(_props("uint8"), (), saved)
    rows = []
    for r in pat.holder_ranks.tolist():
        local = pat.chunks[int(pat.starts[r]) : int(pat.starts[r + 1])]
        rows += [
            (
                r,
                it.dest_index.index,
                it.storage_index.index,
                it.dest_offsets,
                it.storage_offsets,
                it.lengths,
            )
            for it in create_read_items_for_chunk_list("", md, local, torch_version=torch_version)
        ]
    nd = s_off.shape[1]
    cols = [np.array([row[i] for row in rows], np.int64).reshape(len(rows), -1) for i in range(6)]
    rank, local_idx, saved_idx = (c.reshape(-1) for c in cols[:3])
    dest, storage, lengths = (c.reshape(len(rows), nd) for c in cols[3:])
    return _ro(
        rank, local_idx, saved_idx, dest, storage, lengths, np.searchsorted(rank, np.arange(ws + 1))
    )


def _scalar_read_columns(fqn, md, lay: Layout, ranks: np.ndarray, ws: int, torch_version: str):
    """Columns from the scalar mirror's ``create_default_local_load_plan``, rank by rank: for the
    rare plans the columnar path does not model (a size mismatch of another tensor rank, planned
    by torch < 2.6)."""
    from .planner_helpers import LocalTensor, create_default_local_load_plan

    rows = []
    for r in ranks.tolist():
        plan = create_default_local_load_plan(
            {fqn: LocalTensor(lay, r)}, Metadata({fqn: md}), torch_version=torch_version
        )
        rows += [
            (
                r,
                it.dest_index.index,
                it.storage_index.index,
                *map(list, (it.dest_offsets, it.storage_offsets, it.lengths)),
            )
            for it in plan.items
        ]
    if not rows:
        return None
    width = len(rows[0][3])
    cols = [np.array([row[i] for row in rows], np.int64).reshape(len(rows), -1) for i in range(6)]
    rank, local_idx, saved_idx = (c.reshape(-1) for c in cols[:3])
    dest, storage, lengths = (c.reshape(len(rows), width) for c in cols[3:])
    return _ro(
        rank, local_idx, saved_idx, dest, storage, lengths, np.searchsorted(rank, np.arange(ws + 1))
    )


def _saved_arrays(md: TensorStorageMetadata, fqn: str, cache: dict):
    """The saved chunks' offsets and sizes as (n, ndim) arrays. Chunks are immutable, so arrays
    are shared by every fqn whose chunk list holds the same chunk objects (a planned save reuses
    one layout's chunks for all fqns with that layout): converted once per call, not per fqn."""
    sig = tuple(map(id, md.chunks))
    hit = cache.get(sig)
    if hit is not None and len(md.size) == hit[0].shape[1]:
        return hit[0], hit[1]
    nd = len(md.size)
    n = len(md.chunks)
    for c in md.chunks:
        if len(c.offsets) != nd or len(c.sizes) != nd:
            raise MetadataError(
                fqn,
                f"saved chunk {c} has {len(c.offsets)} dims for a tensor of size {tuple(md.size)}",
                "chunks of the tensor's rank",
                "The checkpoint's metadata is corrupt; re-save it.",
                chunk=c,
            )
    offs = np.array([c.offsets for c in md.chunks], dtype=np.int64).reshape(n, nd)
    sizes = np.array([c.sizes for c in md.chunks], dtype=np.int64).reshape(n, nd)
    _ro(offs, sizes)
    cache[sig] = (offs, sizes, list(md.chunks))  # the list keeps the ids alive and unique
    return offs, sizes


def _key_ranks(lay: Layout, pat: _Pattern) -> np.ndarray:
    """Ranks whose state dict holds the key: every rank for a DTensor (ranks outside the mesh
    still hold the object) or a ShardedTensor (possibly with no local shard); the holders for a
    plain tensor or a bytes value."""
    if lay.kind in ("dtensor", "sharded"):
        return np.arange(lay.world_size, dtype=np.int64)
    return pat.holder_ranks


@dataclass(frozen=True, eq=False)
class LoadIO:
    """What a load costs, per load rank and per file (see ``LoadPlanResult.io``).

    Per load rank (arrays of ``world_size``): ``files_opened``, ``reads`` (read items),
    ``bytes_needed`` (elements the rank receives x the saved element size), ``bytes_read`` (what
    ``FileSystemReader.read_data`` reads: the whole stored item for every read item, its
    ``StorageInfo.length`` when known, else the saved chunk's bytes), ``amplification``
    (bytes_read / bytes_needed, nan when nothing is needed). Per file (``files``, sorted by writer
    rank then name): ``file_writers`` (rank parsed from ``__<rank>_<n>.distcp``, -1 otherwise),
    ``readers[file]`` (load ranks opening it), ``file_reads`` / ``file_bytes_read`` (read items
    served, bytes loaded). Rank-to-file traffic as pairs (``pair_rank``, ``pair_file`` index into
    ``files``, ``pair_reads``, ``pair_bytes``; one row per rank that reads a file) and as dense
    ranks x files matrices ``traffic`` (bytes) and ``read_counts`` (items), built on first access
    (4096 x 4096 ranks and files is 128 MB each). ``bytes_written``: per save rank, from
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
    file_reads: np.ndarray
    file_bytes_read: np.ndarray
    pair_rank: np.ndarray
    pair_file: np.ndarray
    pair_reads: np.ndarray
    pair_bytes: np.ndarray
    bytes_written: np.ndarray | None

    def _dense(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros((len(self.reads), len(self.files)), np.int64)
        out[self.pair_rank, self.pair_file] = values
        return out

    @cached_property
    def traffic(self) -> np.ndarray:
        return self._dense(self.pair_bytes)

    @cached_property
    def read_counts(self) -> np.ndarray:
        return self._dense(self.pair_reads)


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
    _saved: dict = field(default_factory=dict, repr=False)  # fqn -> saved chunks' arrays
    torch_version: str = "2.13"

    def reads(self, fqn: str) -> ReadBlock:
        """The read items of ``fqn`` over all ranks (empty when it reads nothing)."""
        block = self._blocks.get(fqn)
        if block is None:
            if fqn not in self.layouts:
                raise PlanError(
                    fqn,
                    "is not in the planned state dict",
                    f"one of its {len(self.layouts)} fqns",
                    "Check the key's spelling.",
                )
            lay = self.layouts[fqn]
            block = _empty_block(
                fqn,
                "bytes" if lay.kind == "bytes" else "tensor",
                1 if lay.kind == "bytes" else lay.ndim,
                self.world_size,
            )
        return block

    @cached_property
    def problems(self):
        """`diagnosis.find_problems` of this plan, computed on first access."""
        from .diagnosis import find_problems

        return find_problems(self)

    @cached_property
    def io(self) -> LoadIO:
        return _load_io(self)


def plan_load(
    metadata: Metadata,
    layouts: Mapping[str, Layout],
    *,
    allow_partial_load: bool = False,
    torch_version: str | None = None,
) -> LoadPlanResult:
    """Plan ``dcp.load`` of ``layouts`` (``{fqn: Layout}`` in state-dict order, one world size)
    from a checkpoint's ``metadata`` on every rank, as ``DefaultLoadPlanner`` of
    ``torch_version`` (default `versions.default_torch_version`) would
    (``create_default_local_load_plan(state_dict, metadata, strict=not allow_partial_load)``):
    read items in the nested-loop order through 2.10, the sweep order from 2.11.

    Where torch raises on a rank (missing key when strict, size mismatch from 2.6, tensor
    metadata for a non-tensor value, a Partial DTensor), the entry gets no read items on any rank
    and ``(fqn, ranks, message)`` goes to ``.failures``; torch would stop at the first. Before
    2.6 a size mismatch is planned as torch plans it (reads against the wrong shape)."""
    sem = semantics(torch_version)
    nested = sem.read_item_order == "nested"
    fqns, lays, ws = _check_layouts(layouts)
    metadata = _record(metadata)
    sdm = getattr(metadata, "state_dict_metadata", None)
    if not isinstance(sdm, Mapping):
        raise MetadataError(
            None,
            f"metadata is a {type(metadata).__name__} without a state_dict_metadata mapping",
            "a DCP Metadata",
            "Read it with workbench.load_metadata(path) or plan it with plan_save.",
        )
    blocks: dict[str, ReadBlock] = {}
    saved: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    failures = []
    cache: dict = {}
    chunk_cache: dict = {}
    for fqn, lay in zip(fqns, lays):
        pat = _pattern(lay)
        key_ranks = _key_ranks(lay, pat)
        if len(key_ranks) == 0:
            continue
        md = sdm.get(fqn)
        if md is None:
            if not allow_partial_load:
                failures.append((fqn, tuple(key_ranks.tolist()), missing_key_message(fqn)))
            continue
        in_mesh = pat.holder_ranks if lay.kind == "dtensor" else key_ranks
        if isinstance(md, BytesStorageMetadata):
            blocks[fqn] = _bytes_block(fqn, in_mesh, ws)
            continue
        if not isinstance(md, TensorStorageMetadata):
            raise MetadataError(
                fqn,
                f"storage metadata is a {type(md).__name__}",
                "TensorStorageMetadata or BytesStorageMetadata",
                "The checkpoint's metadata is corrupt; re-save it.",
            )
        if lay.kind == "bytes":
            failures.append((fqn, tuple(key_ranks.tolist()), invalid_metadata_message(fqn)))
            continue
        if tuple(md.size) != lay.shape and sem.size_mismatch_raises:
            failures.append(
                (fqn, tuple(key_ranks.tolist()), size_mismatch_message(fqn, md.size, lay.shape))
            )
            continue
        if lay.has_partial:
            # the Partial ValueError is caught in _create_read_items and replaced by this text
            if len(in_mesh):
                failures.append((fqn, tuple(in_mesh.tolist()), invalid_metadata_message(fqn)))
            continue
        s_off, s_size = saved[fqn] = _saved_arrays(md, fqn, chunk_cache)
        if len(md.size) != lay.ndim:  # torch < 2.6, another tensor rank: its scalar path
            try:
                cols = _scalar_read_columns(fqn, md, lay, in_mesh, ws, sem.version)
            except PlanError as e:
                failures.append((fqn, tuple(in_mesh.tolist()), getattr(e, "torch_message", str(e))))
                continue
        else:
            sig = (id(pat), s_off.tobytes(), s_size.tobytes(), s_off.shape, nested)
            cols = cache.get(sig)
            if sig not in cache:
                cols = cache[sig] = _read_columns(s_off, s_size, pat, ws, nested)
        if cols is not None:
            blocks[fqn] = ReadBlock(fqn, "tensor", *cols)
    result = LoadPlanResult(
        metadata, dict(layouts), ws, None, failures, allow_partial_load, blocks, saved, sem.version
    )
    object.__setattr__(result, "plans", _LazyPlans(ws, lambda r: _load_plan(result, r)))
    return result


def _load_plan(res: LoadPlanResult, r: int) -> LoadPlan:
    """Rank r's ``LoadPlan`` from the columns, ReadItem records in torch's order. Indices are
    frozen records, so one ``MetadataIndex`` per chunk is shared by all the items naming it."""
    items = []
    sdm = res.metadata.state_dict_metadata
    for fqn, block in res._blocks.items():
        sl = block.of_rank(r)
        if sl.start == sl.stop:
            continue
        if block.kind == "bytes":
            items.append(
                ReadItem(
                    LoadItemType.BYTE_IO, MetadataIndex(fqn), (0,), MetadataIndex(fqn), (0,), (0,)
                )
            )
            continue
        local = res.layouts[fqn].rank_chunks[r]
        saved = sdm[fqn].chunks
        dest: dict[int, MetadataIndex] = {}
        storage: dict[int, MetadataIndex] = {}
        for li, si, do, so, ln in zip(
            block.local_idx[sl].tolist(),
            block.saved_idx[sl].tolist(),
            block.dest_offsets[sl].tolist(),
            block.storage_offsets[sl].tolist(),
            block.lengths[sl].tolist(),
        ):
            d = dest.get(li)
            if d is None:
                d = dest[li] = MetadataIndex(fqn, local[li].offsets, li)
            t = storage.get(si)
            if t is None:
                t = storage[si] = MetadataIndex(fqn, saved[si].offsets, si)
            items.append(ReadItem(LoadItemType.TENSOR, d, tuple(do), t, tuple(so), tuple(ln)))
    return LoadPlan(items)


class _Files:
    """File names of a checkpoint numbered in order of first sight, and each fqn's saved chunks
    as (file id, bytes a read of the chunk loads) columns; planned storage is answered from its
    writer arrays, a real ``storage_data`` by one lookup per chunk."""

    def __init__(self, res: LoadPlanResult):
        self.res = res
        self.ids: dict[str, int] = {}
        self._by_writers: dict = {}
        self._chunk_cache: dict = {}

    def _id(self, name: str) -> int:
        return self.ids.setdefault(name, len(self.ids))

    def columns(self, fqn: str, md) -> tuple[np.ndarray, np.ndarray]:
        sd = self.res.metadata.storage_data
        if isinstance(md, BytesStorageMetadata):
            nbytes = np.zeros(1, np.int64)
            keys = [MetadataIndex(fqn)]
        else:
            saved = self.res._saved.get(fqn)
            offs, sizes = saved if saved is not None else _saved_arrays(md, fqn, self._chunk_cache)
            nbytes = np.prod(sizes, axis=1) * md.properties.element_size
            keys = None
        w = (
            sd.writer_array(fqn, md.chunks)
            if isinstance(sd, _PlannedStorage) and keys is None
            else None
        )
        if w is not None:
            sig = w.tobytes()
            fid = self._by_writers.get(sig)
            if fid is None:
                uniq, inv = np.unique(w, return_inverse=True)
                lut = np.array([self._id(file_name(u)) for u in uniq.tolist()], np.int64)
                fid = self._by_writers[sig] = lut[inv.reshape(-1)]
            return fid, nbytes
        fid = np.full(len(nbytes), -1, np.int64)
        if sd is None or (not isinstance(sd, _PlannedStorage) and not sd):
            return fid, nbytes
        if keys is None:
            keys = [MetadataIndex(fqn, c.offsets) for c in md.chunks]
        nbytes = nbytes.copy()
        for i, k in enumerate(keys):
            info = sd.get(k)
            if info is None:
                continue
            fid[i] = self._id(str(info.relative_path))
            if getattr(info, "length", None) is not None:
                nbytes[i] = int(info.length)
        return fid, nbytes


def _load_io(res: LoadPlanResult) -> LoadIO:
    """The `LoadIO` of a load result. Sums are taken once per distinct (read pattern, files,
    chunk bytes) group and multiplied by the number of fqns in the group, so a 1000-rank model
    costs a few group computations, not one per fqn and item."""
    ws = res.world_size
    sdm = res.metadata.state_dict_metadata
    files = _Files(res)
    groups: dict = {}
    for fqn, block in res._blocks.items():
        md = sdm[fqn]
        fid, item_bytes = files.columns(fqn, md)
        esize = 0 if block.kind == "bytes" else md.properties.element_size
        g = (id(block.rank), fid.tobytes(), item_bytes.tobytes(), esize)
        if g in groups:
            groups[g][1] += 1
        else:
            groups[g] = [(block, fid, item_bytes, esize), 1]
    n_reads = np.zeros(ws, np.int64)
    needed = np.zeros(ws, np.int64)
    read = np.zeros(ws, np.int64)
    pair_keys, pair_bytes, pair_counts = [], [], []
    stride = ws + 1
    for (block, fid, item_bytes, esize), mult in groups.values():
        si = np.maximum(block.saved_idx, 0)  # a bytes entry's one "chunk"
        rb = item_bytes[si]
        n_reads += mult * np.bincount(block.rank, minlength=ws)
        if esize:
            nb = np.prod(block.lengths, axis=1) * esize
            needed += mult * _sum_by(block.rank, nb, ws)
        read += mult * _sum_by(block.rank, rb, ws)
        f = fid[si]
        known = f >= 0
        flat = f[known] * stride + block.rank[known]
        uniq, inv = np.unique(flat, return_inverse=True)
        pair_keys.append(uniq)
        pair_bytes.append(mult * _sum_by(inv.reshape(-1), rb[known], len(uniq)))
        pair_counts.append(mult * np.bincount(inv.reshape(-1), minlength=len(uniq)))
    # every file of the checkpoint, read or not, with what was written to it
    written: dict = {}
    for fqn, md in sdm.items():
        fid, item_bytes = files.columns(fqn, md)
        g = (fid.tobytes(), item_bytes.tobytes())
        if g in written:
            written[g][2] += 1
        else:
            written[g] = [fid, item_bytes, 1]
    names = list(files.ids)
    nf = len(names)
    per_file = np.zeros(nf, np.int64)
    for fid, item_bytes, mult in written.values():
        known = fid >= 0
        per_file += mult * _sum_by(fid[known], item_bytes[known], nf)
    writers = [writer_of_file(n) for n in names]
    order = sorted(range(nf), key=lambda i: (writers[i] is None, writers[i] or 0, names[i]))
    remap = np.empty(nf, np.int64)
    remap[order] = np.arange(nf)
    # merge the groups' (file, rank) pairs; the dense matrices are filled from the merged pairs
    # and the readers come from the pairs, never from scanning ranks x files
    keys = np.concatenate(pair_keys) if pair_keys else np.zeros(0, np.int64)
    uniq, inv = np.unique(keys, return_inverse=True)
    inv = inv.reshape(-1)
    pb = _sum_by(inv, np.concatenate(pair_bytes) if pair_bytes else keys, len(uniq))
    pc = _sum_by(inv, np.concatenate(pair_counts) if pair_counts else keys, len(uniq))
    pr, pf = uniq % stride, remap[uniq // stride] if nf else uniq
    files_t = tuple(names[i] for i in order)
    file_writers = np.array([-1 if writers[i] is None else writers[i] for i in order], np.int64)
    by_file = np.lexsort((pr, pf))
    cuts = np.searchsorted(pf[by_file], np.arange(nf + 1))
    ranks_by_file = pr[by_file].tolist()
    readers = {files_t[j]: tuple(ranks_by_file[cuts[j] : cuts[j + 1]]) for j in range(nf)}
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = np.where(needed > 0, read / np.maximum(needed, 1), np.nan)
    bytes_written = None
    if (file_writers >= 0).any():
        bytes_written = np.zeros(int(file_writers.max()) + 1, np.int64)
        known = file_writers >= 0
        np.add.at(bytes_written, file_writers[known], per_file[order][known])
    return LoadIO(
        np.bincount(pr, minlength=ws),
        n_reads,
        needed,
        read,
        amp,
        files_t,
        file_writers,
        readers,
        _sum_by(pf, pc, nf),
        _sum_by(pf, pb, nf),
        pr,
        pf,
        pc,
        pb,
        bytes_written,
    )


def _sum_by(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Exact int64 per-bin sums (``np.bincount`` weights are float64 and round above 2**53)."""
    out = np.zeros(n, np.int64)
    np.add.at(out, index, values)
    return out


# ----------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class TargetCost:
    """What loading one checkpoint into one candidate target costs (see `compare_targets`).

    Totals over load ranks (``reads``, ``bytes_needed``, ``bytes_read``), the busiest rank
    (``max_rank_bytes_read``, ``max_rank_reads``, ``max_rank_files``: the rank that finishes last
    sets the load time), ``amplification`` (total bytes read / bytes needed) and ``failures``
    (entries torch would raise on). ``result`` is the full `LoadPlanResult`."""

    name: str
    world_size: int
    reads: int
    bytes_needed: int
    bytes_read: int
    amplification: float
    max_rank_bytes_read: int
    max_rank_reads: int
    max_rank_files: int
    failures: int
    result: LoadPlanResult = field(repr=False)


def compare_targets(
    metadata: Metadata,
    targets: Mapping[str, Mapping[str, Layout]],
    *,
    allow_partial_load: bool = False,
    progress: bool | None = None,
) -> list[TargetCost]:
    """Plan the load of ``metadata`` into every candidate target (``{name: {fqn: Layout}}``) and
    return their I/O costs in the order given, so the cheaper layout can be picked.

    ``progress``: a tqdm bar over the candidates (``tqdm.auto``: a widget in a notebook, text in a
    terminal); None shows it when the work is large (over 100k tensor-ranks in all)."""
    if not isinstance(targets, Mapping) or not targets:
        raise PlanError(
            None,
            f"targets is {type(targets).__name__} {targets!r:.60}",
            "a non-empty dict {name: {fqn: Layout}}",
            "Name each candidate layout, e.g. {'fsdp64': ..., 'fsdp8+tp8': ...}.",
        )
    items = list(targets.items())
    if progress is None:
        progress = (
            sum(
                len(t) * next(iter(t.values())).world_size
                for _, t in items
                if isinstance(t, Mapping) and t
            )
            > 100_000
        )
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="planning targets", unit="target")
    out = []
    for name, layouts in items:
        res = plan_load(metadata, layouts, allow_partial_load=allow_partial_load)
        io = res.io
        needed, read = int(io.bytes_needed.sum()), int(io.bytes_read.sum())
        out.append(
            TargetCost(
                str(name),
                res.world_size,
                int(io.reads.sum()),
                needed,
                read,
                read / needed if needed else float("nan"),
                int(io.bytes_read.max(initial=0)),
                int(io.reads.max(initial=0)),
                int(io.files_opened.max(initial=0)),
                len(res.failures),
                res,
            )
        )
    return out
