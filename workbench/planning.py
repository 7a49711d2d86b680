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
records (`SavePlan`, `LoadPlan`) are materialised per rank only when asked for. So memory
follows the distinct chunk geometries, not ranks x fqns: the flat 16,384-rank reference (739
million read items) plans in 2.2 GB (benchmarks/bench_scale.py). The scalar mirrors in
`planner_helpers` stay the reference; the tests compare both with torch.

Imports the layers above (errors, geometry, records, sharding, planner_helpers); never torch.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import NamedTuple

import numpy as np

from .errors import MetadataError, PlanError
from .formats.dcp_files import PlannedStorage
from .geometry import Chunk, box_arrays, candidate_pairs, int64_unsafe, overlap_mask
from .hf_plans import apply_hf_writer
from .planner_helpers import (
    PARTIAL_MESSAGE,
    create_default_local_load_plan,
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
    TensorProperties,
    TensorStorageMetadata,
    TensorWriteData,
    WriteItem,
    WriteItemType,
    contiguous_strides,
)
from .sharding import Layout, RankValue, for_torch_version
from .sources import as_record, held_layouts
from .versions import semantics

__all__ = [
    "plan_save",
    "plan_load",
    "SavePlanResult",
    "LoadPlanResult",
    "ReadBlock",
    "Failure",
]


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


_PATTERN_CACHE: weakref.WeakKeyDictionary[Layout, _Pattern] = weakref.WeakKeyDictionary()


def _pattern(layout: Layout) -> _Pattern:
    pat = _PATTERN_CACHE.get(layout)
    if pat is not None:
        return pat
    ws = layout.world_size
    nd = layout.ndim if layout.kind != "bytes" else 0
    boxes = layout.mesh_boxes()
    if boxes is not None:
        # a DTensor's one chunk per mesh position (equal boxes are one object already), sorted
        # by rank: 2048 positions of a 16,384-rank world without a walk over every rank
        at, mesh_chunks, mesh_offsets, mesh_sizes = boxes
        order = np.argsort(at, kind="stable")
        rank, offsets, sizes = at[order], mesh_offsets[order], mesh_sizes[order]
        chunks = [mesh_chunks[i] for i in order.tolist()]
        n = len(chunks)
        pos = np.zeros(n, np.int64)
    else:
        ranks, positions, chunks = [], [], []
        # equal chunks of several ranks (the empty shards of a tensor smaller than the mesh)
        # become one object, so the metadata chunk lists of fqns whose writers differ only there
        # hold the same objects and share one conversion to arrays (geometry.box_arrays caches
        # by identity)
        same: dict[Chunk, Chunk] = {}
        for r, cs in enumerate(layout.rank_chunks):
            for i, c in enumerate(cs):
                ranks.append(r)
                positions.append(i)
                chunks.append(same.setdefault(c, c))
        n = len(chunks)
        rank = np.array(ranks, dtype=np.int64)
        pos = np.array(positions, dtype=np.int64)
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
        rank=rank,
        pos=pos,
        offsets=offsets,
        sizes=sizes,
        chunks=tuple(chunks),
        starts=np.searchsorted(rank, np.arange(ws + 1)),
        holder_ranks=np.unique(rank),
        key=key,
        key_first=first,
        key_rank=key_rank,
        key_shared=shared,
        key_holders=holders,
        unshared_cnt=np.bincount(key_rank[unshared], minlength=ws),
        unshared_before=np.concatenate([[0], np.cumsum(unshared)]),
    )
    for a in vars(pat).values():
        if isinstance(a, np.ndarray):
            a.setflags(write=False)
    _PATTERN_CACHE[layout] = pat
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


_PROPS: dict[tuple, TensorProperties] = {}


def _props(dtype: str, sizes: tuple[int, ...] | None = None) -> TensorProperties:
    """The properties of a write item; with ``sizes`` (torch 2.15+) the strides of the
    contiguous local tensor of those sizes (``TensorProperties.create_from_tensor``)."""
    key = (dtype, sizes)
    p = _PROPS.get(key)
    if p is None:
        strides = None if sizes is None else contiguous_strides(sizes)
        p = _PROPS[key] = TensorProperties(dtype, strides=strides)
    return p


class Failure(NamedTuple):
    """An entry torch refuses on some ranks: its ``fqn``, the ``ranks`` that raise and torch's
    exact ``message``. A named tuple, so ``for fqn, ranks, message in result.failures`` reads
    the same as the record's fields."""

    fqn: str
    ranks: tuple[int, ...]
    message: str


# ----------------------------------------------------------------------------- save
@dataclass(frozen=True, eq=False)
class SavePlanResult:
    """Every rank's save plan of one state dict (see `plan_save`).

    ``local_plans[r]``: torch's ``create_default_local_save_plan`` on rank r; ``plans[r]``: after
    ``dedup_save_plans`` and ``create_default_global_save_plan`` (index hints rewritten);
    ``metadata``: the checkpoint's ``Metadata``; ``errors``: ``_validate_global_plan``'s strings;
    ``writers[fqn]``: the writer rank of each metadata chunk; ``bytes_written[r]``: tensor bytes
    rank r writes (bytes entries count 0: their pickled size is unknown before a real save);
    ``failures``: a `Failure` (fqn, ranks, torch's message) per entry torch refuses to save
    (Partial).
    """

    layouts: dict
    world_size: int
    local_plans: Sequence[SavePlan] = field(repr=False)
    plans: Sequence[SavePlan] = field(repr=False)
    metadata: Metadata = field(repr=False)
    errors: list[str]
    writers: dict[str, list[int]] = field(repr=False)
    bytes_written: np.ndarray = field(repr=False)
    failures: list[Failure] = field(default_factory=list)
    torch_version: str = "2.13"
    storage: str = "fs"  # "fs" (FileSystemWriter) or "hf" (HuggingFaceStorageWriter, hf_plans)
    lost: tuple = ()  # hf_plans.LostChunk: chunks the storage writer drops

    def __repr__(self) -> str:
        # every layout of a whole model is pages of text: the plain text is a summary
        return (
            f"SavePlanResult(entries={len(self.layouts)}, world_size={self.world_size}, "
            f"bytes_written={int(np.asarray(self.bytes_written).sum())}, "
            f"errors={len(self.errors)}, failures={len(self.failures)}, "
            f"torch_version={self.torch_version!r}, storage={self.storage!r})"
        )

    def _repr_html_(self) -> str:
        # the HTML layer sits above planning; loaded only when a notebook shows a result
        from .reprs import save_result_html

        return save_result_html(self)


def plan_save(
    layouts: Mapping[str, Layout],
    save_to_lowest_rank: bool = False,
    *,
    torch_version: str | None = None,
    storage: str = "fs",
    world_size: int | None = None,
) -> SavePlanResult:
    """Plan ``dcp.save`` of ``layouts`` (``{fqn: Layout}`` in state-dict order, or what a user
    holds: ``model.state_dict()``, the nested dict given to ``dcp.save``, a module, ``(model,
    optimizer)``; see `sources.held_layouts`, whose ``world_size`` this passes) on every rank, as
    ``DefaultSavePlanner`` + ``FileSystemWriter`` defaults of ``torch_version`` (default
    `versions.default_torch_version`) would: local plans, ``dedup_save_plans(plans,
    save_to_lowest_rank)`` (load-balanced writer choice with CPython set tie-breaks),
    ``create_default_global_save_plan``, ``_validate_global_plan`` (whose checks and texts depend
    on the version; the rest is the same in 2.4 - 2.15).
    ``storage="hf"``: with torch 2.13's ``HuggingFaceStorageWriter(save_distributed=True)``
    instead, whose files keep one chunk per fqn and rank (`hf_plans.apply_hf_writer`: ``.lost``,
    and the metadata its reader will see)."""
    if storage not in ("fs", "hf"):
        raise PlanError(
            None,
            f"storage {storage!r}",
            "'fs' (FileSystemWriter) or 'hf' (HuggingFaceStorageWriter)",
            "Pass storage='fs' or storage='hf'.",
        )
    layouts, _ = held_layouts(layouts, world_size=world_size)
    result = _plan_save(layouts, save_to_lowest_rank, torch_version)
    return apply_hf_writer(result) if storage == "hf" else result


@dataclass(frozen=True, slots=True, eq=False)
class _SaveEntry:
    """One fqn of a save being planned. ``pattern``: its layout's chunks as arrays (None when
    torch refuses the entry: a Partial DTensor); ``selected[k]``: the writer rank of dedup key k
    (filled in place by `_balance`); after dedup, per pattern entry, ``kept``: whether it is
    written and ``hint``: its position in the metadata's chunk list (valid where kept)."""

    fqn: str
    layout: Layout
    pattern: _Pattern | None
    selected: np.ndarray | None
    kept: np.ndarray | None = None
    hint: np.ndarray | None = None

    @property
    def planned(self) -> bool:
        """Whether the entry has chunks to write (a pattern with at least one entry)."""
        return self.pattern is not None and len(self.pattern.rank) > 0


def _plan_save(
    layouts: Mapping[str, Layout], save_to_lowest_rank: bool, torch_version: str | None
) -> SavePlanResult:
    sem = semantics(torch_version)
    fqns, lays, ws = _check_layouts(layouts)
    # DTensor boxes as this version's compute_local_shape_and_global_offset makes them
    lays = [for_torch_version(lay, sem.version, fqn=f) for f, lay in zip(fqns, lays)]
    layouts = dict(zip(fqns, lays))
    failures = []
    entries: list[_SaveEntry] = []
    for fqn, lay in zip(fqns, lays):
        pat = _pattern(lay)
        if lay.kind == "dtensor" and lay.has_partial and len(pat.rank):
            # every rank in the mesh raises in __create_write_items__; plan without the entry
            failures.append(
                Failure(fqn=fqn, ranks=tuple(pat.holder_ranks.tolist()), message=PARTIAL_MESSAGE)
            )
            pat = None
        # -- dedup: one writer per key (fqn, offset); a key held by one rank has no choice, a
        # shared key starts at its lowest holder
        entries.append(
            _SaveEntry(
                fqn=fqn,
                layout=lay,
                pattern=pat,
                selected=None if pat is None else pat.key_rank.copy(),
            )
        )
    if not save_to_lowest_rank and any(
        e.pattern is not None and e.pattern.key_holders for e in entries
    ):
        _balance(entries, ws)

    # -- global plan: metadata in (rank, item) order after dedup ----------------------------
    entries = [_deduplicated(e) for e in entries]
    md_order = sorted(
        (int(e.pattern.rank[e.kept][0]), f) for f, e in enumerate(entries) if e.planned
    )
    sdm: dict = {}
    writers: dict[str, list[int]] = {}
    writer_arrays: dict[str, np.ndarray] = {}
    bytes_written = np.zeros(ws, dtype=np.int64)
    for _, f in md_order:
        e = entries[f]
        fqn, lay, pat = e.fqn, e.layout, e.pattern
        idx = np.flatnonzero(e.kept)
        w = pat.rank[idx]
        writer_arrays[fqn] = w
        writers[fqn] = w.tolist()
        if lay.kind == "bytes":
            sdm[fqn] = BytesStorageMetadata()
            continue
        # torch keeps the properties of the first write item of the fqn (lowest writer)
        first = pat.chunks[int(idx[0])].sizes if sem.tensor_strides and len(idx) else None
        tsm = sdm[fqn] = TensorStorageMetadata(_props(lay.dtype, first), lay.shape)
        # set after construction: __post_init__ would re-normalise every (already Chunk) chunk
        tsm.chunks = (
            list(pat.chunks) if len(idx) == len(e.kept) else [pat.chunks[i] for i in idx.tolist()]
        )
        vol = np.prod(pat.sizes[idx], axis=1) * DTYPE_SIZES[lay.dtype]
        np.add.at(bytes_written, w, vol)
    metadata = Metadata(sdm, storage_data=PlannedStorage(sdm, writer_arrays), version="1.0.0")

    strides = sem.tensor_strides

    def local_plan(r: int) -> SavePlan:
        return SavePlan(_write_items(r, entries, False, strides))

    def final_plan(r: int) -> SavePlan:
        return SavePlan(_write_items(r, entries, True, strides))

    plans = _LazyPlans(ws, final_plan)
    errors = _validate(sdm, {e.fqn: e for e in entries}, plans, sem.version)
    return SavePlanResult(
        layouts=dict(layouts),
        world_size=ws,
        local_plans=_LazyPlans(ws, local_plan),
        plans=plans,
        metadata=metadata,
        errors=errors,
        writers=writers,
        bytes_written=bytes_written,
        failures=failures,
        torch_version=sem.version,
    )


def _deduplicated(e: _SaveEntry) -> _SaveEntry:
    """The entry with ``kept`` (the pattern entries whose rank writes their key) and ``hint``."""
    if not e.planned:
        return e
    kept = e.pattern.rank == e.selected[e.pattern.key]
    return replace(e, kept=kept, hint=np.cumsum(kept) - 1)


def _balance(entries: list[_SaveEntry], ws: int) -> None:
    """torch's load-balanced ``dedup_save_plans`` choice for the shared keys, in place.

    torch visits keys in global first-appearance order, (first holder rank r0, fqn position, key
    number), and charges every key, shared or not, the GLOBAL tensor's bytes (1 for bytes entries
    and empty tensors) to its writer. All holders of a key are >= r0 and the one-holder keys of a
    rank > r0 come later, so when a shared key is visited a holder's load is the shared keys it
    already won, plus, for r0 itself, its one-holder keys visited so far (a prefix sum over fqns).
    Only the shared keys are looped over; each builds the Python ``set`` torch builds (holders
    added in plan order) so that ``min`` breaks ties in CPython's set order."""
    charge = [e.layout.nbytes or 1 for e in entries]
    rows = sorted(
        (int(e.pattern.key_rank[k]), f, k)
        for f, e in enumerate(entries)
        if e.pattern is not None
        for k in e.pattern.key_holders
    )
    r0s = sorted({r for r, _, _ in rows})
    col = {r: j for j, r in enumerate(r0s)}
    r0a = np.array(r0s, dtype=np.int64)
    before = np.zeros((len(entries) + 1, len(r0s)), dtype=np.int64)
    for f, e in enumerate(entries):
        if e.pattern is not None:
            before[f + 1] = e.pattern.unshared_cnt[r0a] * charge[f]
    before = np.cumsum(before, axis=0).tolist()
    # every key is charged once, so no load exceeds the sum of all charges: int64 below 2**62,
    # else Python ints as torch
    total = sum(
        charge[f] * len(e.pattern.key_first) for f, e in enumerate(entries) if e.pattern is not None
    )
    won = np.zeros(ws, np.int64) if total < 2**62 else None
    won_list = [0] * ws
    # the iteration order of the set torch builds (holders added in plan order), once per
    # holder list: min() over it keeps the first minimum, and so does argmin over the array
    set_orders: dict[int, tuple[list, np.ndarray]] = {}
    for r0, f, k in rows:
        pat = entries[f].pattern
        first_of_r0 = int(np.searchsorted(pat.key_rank, r0))
        own = (
            before[f][col[r0]]
            + int(pat.unshared_before[k] - pat.unshared_before[first_of_r0]) * charge[f]
        )
        holders = pat.key_holders[k]  # set(holders) adds them in plan order, as torch's loop does
        if won is None:
            w = min(set(holders), key=lambda h: won_list[h] + (own if h == r0 else 0))
            won_list[w] += charge[f]
        else:
            hit = set_orders.get(id(holders))
            if hit is None:
                hit = set_orders[id(holders)] = (holders, np.fromiter(set(holders), np.int64))
            order = hit[1]
            load = won[order]
            load[order == r0] += own
            w = int(order[int(np.argmin(load))])
            won[w] += charge[f]
        entries[f].selected[k] = w


def _write_items(
    r: int, entries: list[_SaveEntry], deduplicated: bool, strides: bool = False
) -> list[WriteItem]:
    """Rank r's write items in state-dict order; ``deduplicated``: only the kept ones, their index
    hints rewritten to metadata chunk positions; ``strides`` (2.15+): properties carry the local
    tensor's strides."""
    items = []
    for e in entries:
        fqn, lay, pat = e.fqn, e.layout, e.pattern
        if pat is None:
            continue
        s, end = int(pat.starts[r]), int(pat.starts[r + 1])
        if s == end:
            continue
        if lay.kind == "bytes":
            if not deduplicated or e.kept[s]:
                items.append(WriteItem(MetadataIndex(fqn), WriteItemType.BYTE_IO))
            continue
        typ = WriteItemType.TENSOR if lay.kind == "tensor" else WriteItemType.SHARD
        props = _props(lay.dtype)
        for i in range(s, end):
            hint = None
            if deduplicated:
                if not e.kept[i]:
                    continue
                hint = int(e.hint[i])
            c = pat.chunks[i]
            items.append(
                WriteItem(
                    MetadataIndex(fqn, c.offsets, hint),
                    typ,
                    tensor_data=TensorWriteData(
                        c, _props(lay.dtype, c.sizes) if strides else props, lay.shape
                    ),
                )
            )
    return items


def _validate(sdm, entries: dict[str, _SaveEntry], plans, torch_version: str) -> list[str]:
    """``_validate_global_plan`` strings: vectorised checks find the tensors with any error (cached
    per chunk geometry); the scalar mirror writes their exact strings, in metadata order."""
    verdicts: dict = {}
    errors: list[str] = []
    check_fill = len(plans) > 1 or semantics(torch_version).validation_fill_single_plan
    for fqn, md in sdm.items():
        if isinstance(md, BytesStorageMetadata) or len(md.size) == 0:
            continue
        e = entries[fqn]
        pat, kept = e.pattern, e.kept
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
    if int64_unsafe(offs, sizes):
        return True  # let the scalar mirror (Python ints, as torch) decide
    shp = np.array(shape, dtype=np.int64)
    if ((offs < 0) | (sizes < 0) | (offs + sizes > shp)).any():
        return True
    if check_fill and int(np.prod(sizes, axis=1).sum()) != math.prod(shape):
        return True
    if len(offs) > 1:
        a, b = candidate_pairs(offs, sizes, offs, sizes)
        a, b = a[a != b], b[a != b]
        if overlap_mask(offs[a], sizes[a], offs[b], sizes[b]).any():
            return True
    return False


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
    return ReadBlock(
        fqn=fqn,
        kind=kind,
        rank=z,
        local_idx=z,
        saved_idx=z,
        dest_offsets=zz,
        storage_offsets=zz,
        lengths=zz,
        starts=np.zeros(ws + 1, np.int64),
    )


def _tensor_block(fqn: str, cols: tuple) -> ReadBlock:
    """A tensor's block from `_read_columns`' arrays (rank, local_idx, saved_idx, dest_offsets,
    storage_offsets, lengths, starts)."""
    rank, local_idx, saved_idx, dest_offsets, storage_offsets, lengths, starts = cols
    return ReadBlock(
        fqn=fqn,
        kind="tensor",
        rank=rank,
        local_idx=local_idx,
        saved_idx=saved_idx,
        dest_offsets=dest_offsets,
        storage_offsets=storage_offsets,
        lengths=lengths,
        starts=starts,
    )


def _bytes_block(fqn: str, ranks: np.ndarray, ws: int) -> ReadBlock:
    n = len(ranks)
    z = np.zeros((n, 1), np.int64)
    cols = _ro(ranks.astype(np.int64), np.zeros(n, np.int64), np.full(n, -1, np.int64), z)
    return ReadBlock(
        fqn=fqn,
        kind="bytes",
        rank=cols[0],
        local_idx=cols[1],
        saved_idx=cols[2],
        dest_offsets=z,
        storage_offsets=z,
        lengths=z,
        starts=np.searchsorted(cols[0], np.arange(ws + 1)),
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
    if int64_unsafe(l_off, l_size) or int64_unsafe(s_off, s_size):
        return _exact_read_columns(s_off, s_size, pat, ws, "2.10" if nested else "2.13")
    li, si = candidate_pairs(l_off, l_size, s_off, s_size)
    if nd:
        ok = overlap_mask(l_off[li], l_size[li], s_off[si], s_size[si])
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
    rows = []
    for r in ranks.tolist():
        plan = create_default_local_load_plan(
            {fqn: RankValue(lay, r)}, Metadata({fqn: md}), torch_version=torch_version
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


def _key_ranks(lay: Layout, pat: _Pattern) -> np.ndarray:
    """`Layout.key_ranks` as an array (the holders come from the layout's cached pattern)."""
    if lay.kind in ("dtensor", "sharded"):
        return np.arange(lay.world_size, dtype=np.int64)
    return pat.holder_ranks


@dataclass(frozen=True, eq=False)
class LoadPlanResult:
    """Every rank's load plan of one state dict against one checkpoint (see `plan_load`).

    ``plans[r]``: rank r's ``LoadPlan`` (built on first access); ``reads(fqn)``: one fqn's items
    over all ranks as columns; ``failures``: a `Failure` (fqn, ranks, torch's exact message) per entry
    torch raises on, which get no items; ``problems``: the diagnosis; ``io``: the I/O numbers."""

    metadata: Metadata = field(repr=False)
    layouts: dict = field(repr=False)
    world_size: int
    failures: list[Failure]
    allow_partial_load: bool = False
    blocks: dict = field(default_factory=dict, repr=False)  # fqn -> ReadBlock (fqns with reads)
    saved: dict = field(default_factory=dict, repr=False)  # fqn -> saved chunks' (offs, sizes)
    torch_version: str = "2.13"

    @cached_property
    def plans(self) -> Sequence[LoadPlan]:
        """Rank r's ``LoadPlan`` at ``plans[r]``, each built on first access."""
        return _LazyPlans(self.world_size, lambda r: _load_plan(self, r))

    def reads(self, fqn: str) -> ReadBlock:
        """The read items of ``fqn`` over all ranks (empty when it reads nothing)."""
        block = self.blocks.get(fqn)
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

    def replan(self, torch_version: str | None) -> LoadPlanResult:
        """The same load (metadata, target, ``allow_partial_load``) planned by another torch."""
        return plan_load(
            self.metadata,
            self.layouts,
            allow_partial_load=self.allow_partial_load,
            torch_version=torch_version,
        )

    @cached_property
    def problems(self):
        """`diagnosis.find_problems` of this plan, computed on first access."""
        from .diagnosis import find_problems  # diagnosis reads this result; never imports planning

        return find_problems(self)

    @cached_property
    def io(self):
        """`io_cost.load_io` of this plan (a `LoadIO`), computed on first access."""
        from .io_cost import load_io  # io_cost reads this result; it never imports planning

        return load_io(self)

    def __repr__(self) -> str:
        # torch's messages for a whole model's failures are pages: the plain text counts them
        return (
            f"LoadPlanResult(entries={len(self.layouts)}, world_size={self.world_size}, "
            f"failures={len(self.failures)}, allow_partial_load={self.allow_partial_load}, "
            f"torch_version={self.torch_version!r})"
        )

    def _repr_html_(self) -> str:
        # the HTML layer sits above planning; loaded only when a notebook shows a result
        from .reprs import load_result_html

        return load_result_html(self)


def plan_load(
    metadata: Metadata,
    layouts: Mapping[str, Layout],
    *,
    allow_partial_load: bool = False,
    torch_version: str | None = None,
    world_size: int | None = None,
) -> LoadPlanResult:
    """Plan ``dcp.load`` of ``layouts`` (``{fqn: Layout}`` in state-dict order, one world size, or
    what a user holds: ``model.state_dict()``, the nested dict given to ``dcp.load``, a module,
    ``(model, optimizer)``; see `sources.held_layouts`, whose ``world_size`` this passes) from a checkpoint's ``metadata`` on every rank, as ``DefaultLoadPlanner`` of
    ``torch_version`` (default `versions.default_torch_version`) would
    (``create_default_local_load_plan(state_dict, metadata, strict=not allow_partial_load)``):
    read items in the nested-loop order through 2.10, the sweep order from 2.11.

    Where torch raises on a rank (missing key when strict, size mismatch from 2.6, tensor
    metadata for a non-tensor value, a Partial DTensor), the entry gets no read items on any rank
    and ``(fqn, ranks, message)`` goes to ``.failures``; torch would stop at the first. Before
    2.6 a size mismatch is planned as torch plans it (reads against the wrong shape)."""
    sem = semantics(torch_version)
    nested = sem.read_item_order == "nested"
    layouts, _ = held_layouts(layouts, world_size=world_size, for_load=True)
    fqns, lays, ws = _check_layouts(layouts)
    lays = [for_torch_version(lay, sem.version, fqn=f) for f, lay in zip(fqns, lays)]
    layouts = dict(zip(fqns, lays))
    metadata = as_record(metadata)
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
                failures.append(Failure(fqn, tuple(key_ranks.tolist()), missing_key_message(fqn)))
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
            failures.append(Failure(fqn, tuple(key_ranks.tolist()), invalid_metadata_message(fqn)))
            continue
        if tuple(md.size) != lay.shape and sem.size_mismatch_raises:
            failures.append(
                Failure(
                    fqn, tuple(key_ranks.tolist()), size_mismatch_message(fqn, md.size, lay.shape)
                )
            )
            continue
        if lay.has_partial:
            # the Partial ValueError is caught in _create_read_items and replaced by this text
            if len(in_mesh):
                failures.append(
                    Failure(fqn, tuple(in_mesh.tolist()), invalid_metadata_message(fqn))
                )
            continue
        s_off, s_size = saved[fqn] = box_arrays(md.chunks, md.size, fqn, chunk_cache, MetadataError)
        if len(md.size) != lay.ndim:  # torch < 2.6, another tensor rank: its scalar path
            try:
                cols = _scalar_read_columns(fqn, md, lay, in_mesh, ws, sem.version)
            except PlanError as e:
                failures.append(
                    Failure(fqn, tuple(in_mesh.tolist()), getattr(e, "torch_message", str(e)))
                )
                continue
        else:
            sig = (id(pat), s_off.tobytes(), s_size.tobytes(), s_off.shape, nested)
            cols = cache.get(sig)
            if sig not in cache:
                cols = cache[sig] = _read_columns(s_off, s_size, pat, ws, nested)
        if cols is not None:
            blocks[fqn] = _tensor_block(fqn, cols)
    return LoadPlanResult(
        metadata=metadata,
        layouts=dict(layouts),
        world_size=ws,
        failures=failures,
        allow_partial_load=allow_partial_load,
        blocks=blocks,
        saved=saved,
        torch_version=sem.version,
    )


def _load_plan(res: LoadPlanResult, r: int) -> LoadPlan:
    """Rank r's ``LoadPlan`` from the columns, ReadItem records in torch's order. Indices are
    frozen records, so one ``MetadataIndex`` per chunk is shared by all the items naming it."""
    items = []
    sdm = res.metadata.state_dict_metadata
    for fqn, block in res.blocks.items():
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
