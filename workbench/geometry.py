"""Geometry: the one n-d box type (`Chunk`) and everything computed from boxes.

A chunk is a half-open box ``[offsets, offsets + sizes)`` in global tensor coordinates, the
workbench's ``ChunkStorageMetadata``. Every overlap test, intersection, volume and coverage
computation of the project lives here; no other module writes its own. Imports only the standard
library and numpy (torch's ``Size`` is accepted because it is a tuple).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np

from .errors import ChunkError

__all__ = [
    "Chunk",
    "limited_candidate_pairs",
    "as_chunk",
    "boxes_overlap",
    "intersect",
    "volume",
    "uncovered",
    "covered_volume",
    "format_box",
    "shares_elements",
    "as_ints",
    "int64_unsafe",
    "overlap_mask",
    "candidate_pairs",
    "Coverage",
    "coverage",
    "box_arrays",
]


_INT64_MAX = 2**63 - 1


def as_ints(
    values, what: str, fqn: str | None = None, error: type = ChunkError, example: str = "(4, 8)"
) -> tuple[int, ...]:
    """``values`` as a tuple of ints (a list, a tuple, numpy ints, a ``torch.Size``); a string, a
    float or a scalar is an ``error`` (a `WorkbenchError` subclass) naming ``what`` and ``fqn``.
    The one int-tuple converter of the package: records, layouts and chunks all call it."""
    if type(values) is tuple and all(type(v) is int for v in values):
        return values
    try:
        if isinstance(values, (str, bytes)):
            raise TypeError
        return tuple(operator.index(v) for v in values)
    except TypeError:
        raise error(
            fqn,
            f"{what} {values!r} is not a sequence of ints",
            f"e.g. {example}",
            f"Pass the {what} as a tuple of ints.",
            value=values,
        ) from None


def format_box(offsets: Sequence[int], sizes: Sequence[int]) -> str:
    """Slice notation of a box: ``[4:8, 0:6]``; a 0-d box prints as ``[]``."""
    return "[" + ", ".join(f"{o}:{o + s}" for o, s in zip(offsets, sizes)) + "]"


@dataclass(frozen=True, slots=True)
class Chunk:
    """A half-open box of a global tensor, torch's ``ChunkStorageMetadata(offsets, sizes)``.

    Lists, tuples and ``torch.Size`` normalise to tuples, so they compare equal. Prints in slice
    notation, ``[4:8, 0:6]``.
    """

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    def __post_init__(self):
        off, siz = self.offsets, self.sizes
        if (
            type(off) is not tuple
            or type(siz) is not tuple
            or not all(type(v) is int for v in off)
            or not all(type(v) is int for v in siz)
        ):
            off = as_ints(off, "offsets", None)
            siz = as_ints(siz, "sizes", None)
            object.__setattr__(self, "offsets", off)
            object.__setattr__(self, "sizes", siz)
        if len(off) != len(siz):
            raise ChunkError(
                None,
                f"chunk offsets {list(off)} and sizes {list(siz)} have different lengths "
                f"{len(off)} and {len(siz)}",
                "one offset and one size per tensor dim",
                "Give offsets and sizes of the same rank.",
                offsets=off,
                sizes=siz,
            )
        for s in siz:
            if s < 0:
                raise ChunkError(
                    None,
                    f"chunk with offsets {list(off)} has negative sizes {list(siz)}",
                    "sizes >= 0",
                    "Use a size of 0 for an empty chunk.",
                    offsets=off,
                    sizes=siz,
                )
        # torch.Size holds int64 ("Overflow when unpacking long long" past it)
        if off and (max(max(off), max(siz)) > _INT64_MAX or min(off) < -_INT64_MAX - 1):
            raise ChunkError(
                None,
                f"chunk offsets {list(off)} / sizes {list(siz)} leave int64",
                "values in [-2**63, 2**63), as torch.Size holds",
                "Check the chunk for a typo.",
                offsets=off,
                sizes=siz,
            )

    # -- derived values -------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.offsets)

    @property
    def ends(self) -> tuple[int, ...]:
        return tuple(o + s for o, s in zip(self.offsets, self.sizes))

    @property
    def volume(self) -> int:
        return reduce(operator.mul, self.sizes, 1)

    numel = volume

    @property
    def is_empty(self) -> bool:
        return any(s == 0 for s in self.sizes)

    def slices(self) -> tuple[slice, ...]:
        """Python slices selecting this box from a global array."""
        return tuple(slice(o, o + s) for o, s in zip(self.offsets, self.sizes))

    # -- relations --------------------------------------------------------------------------
    def overlaps(self, other: Chunk) -> bool:
        """DCP's box-overlap predicate (see `boxes_overlap`)."""
        return boxes_overlap(self.offsets, self.sizes, other.offsets, other.sizes)

    def intersect(self, other: Chunk) -> Chunk | None:
        return intersect(self, other)

    def contains(self, other: Chunk) -> bool:
        return all(
            a <= b and b + t <= a + s
            for a, s, b, t in zip(self.offsets, self.sizes, other.offsets, other.sizes)
        )

    def within(self, shape: Sequence[int]) -> bool:
        """True when the box lies inside a tensor of ``shape`` (torch's bounds rule)."""
        return len(shape) == self.ndim and all(
            o >= 0 and o + s <= d for o, s, d in zip(self.offsets, self.sizes, shape)
        )

    def __str__(self) -> str:
        return format_box(self.offsets, self.sizes)

    def __repr__(self) -> str:
        return f"Chunk{format_box(self.offsets, self.sizes)}"

    def torch_repr(self) -> str:
        """How torch 2.13 prints the same box as a ``ChunkStorageMetadata``."""
        return (
            f"ChunkStorageMetadata(offsets=torch.Size({list(self.offsets)}), "
            f"sizes=torch.Size({list(self.sizes)}))"
        )


def as_chunk(obj) -> Chunk:
    """A `Chunk` from a Chunk, anything with ``offsets`` / ``sizes`` (torch's records,
    ShardMetadata's ``shard_offsets`` / ``shard_sizes``) or an ``(offsets, sizes)`` pair."""
    if isinstance(obj, Chunk):
        return obj
    if hasattr(obj, "offsets") and hasattr(obj, "sizes"):
        return Chunk(tuple(obj.offsets), tuple(obj.sizes))
    if hasattr(obj, "shard_offsets") and hasattr(obj, "shard_sizes"):
        return Chunk(tuple(obj.shard_offsets), tuple(obj.shard_sizes))
    off, siz = obj
    return Chunk(tuple(off), tuple(siz))


def boxes_overlap(
    a_off: Sequence[int], a_size: Sequence[int], b_off: Sequence[int], b_size: Sequence[int]
) -> bool:
    """torch's ``_check_box_overlap``: per dim ``not (a.off >= b.end or b.off >= a.end)``.

    Note what this counts: a zero-size box strictly inside another box "overlaps" it, and a
    0-d pair always overlaps. Both read-item creation and plan validation use this predicate.
    """
    for ao, asz, bo, bsz in zip(a_off, a_size, b_off, b_size):
        if ao >= bo + bsz or bo >= ao + asz:
            return False
    return True


def intersect(a: Chunk, b: Chunk) -> Chunk | None:
    """The common box of ``a`` and ``b`` (possibly zero-size), or None when they are apart."""
    if a.ndim != b.ndim:
        raise ChunkError(
            None,
            f"cannot intersect {a} and {b} of different ranks {a.ndim} and {b.ndim}",
            "boxes of one tensor",
        )
    offs, sizes = [], []
    for ao, asz, bo, bsz in zip(a.offsets, a.sizes, b.offsets, b.sizes):
        lo, hi = max(ao, bo), min(ao + asz, bo + bsz)
        if hi < lo:
            return None
        offs.append(lo)
        sizes.append(hi - lo)
    return Chunk(tuple(offs), tuple(sizes))


def shares_elements(a: Chunk, b: Chunk) -> bool:
    """Whether ``a`` and ``b`` have at least one element in common (a non-empty intersection).

    Unlike torch's predicate (`boxes_overlap`), a zero-size box shares nothing."""
    c = intersect(a, b)
    return c is not None and not c.is_empty


def volume(shape_or_chunk) -> int:
    """Number of elements of a shape or a chunk."""
    sizes = shape_or_chunk.sizes if isinstance(shape_or_chunk, Chunk) else shape_or_chunk
    return math.prod(sizes)


def _merge_cells(free: np.ndarray) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Greedy maximal boxes of True cells of an n-d boolean grid, in C order of their first cell.

    Extends along the last dim first, then earlier dims while the whole slab stays free.
    """
    free = free.copy()
    out = []
    nd = free.ndim
    while True:
        idx = np.argwhere(free)
        if len(idx) == 0:
            break
        start = tuple(int(i) for i in idx[0])
        ends = [s + 1 for s in start]
        for d in range(nd - 1, -1, -1):
            while ends[d] < free.shape[d]:
                sl = tuple(
                    slice(start[k], ends[k]) if k != d else slice(ends[d], ends[d] + 1)
                    for k in range(nd)
                )
                if free[sl].all():
                    ends[d] += 1
                else:
                    break
        free[tuple(slice(s, e) for s, e in zip(start, ends))] = False
        out.append((start, tuple(ends)))
    return out


# Cells of the grid `uncovered` works on: real layouts' chunks share their edges (a 32 x 32 mesh
# makes 33 x 33 edges); only damaged or crafted metadata comes near.
MAX_GRID_CELLS = 1_000_000


def uncovered(box: Chunk, boxes: Iterable[Chunk]) -> list[Chunk]:
    """The exact regions of ``box`` that no box of ``boxes`` covers, as disjoint chunks.

    Computed on the grid of all box edges inside ``box`` (coordinate compression), so the result
    is exact whatever the boxes' sizes; the pieces are maximal greedy merges in C order. An empty
    ``box`` has nothing to cover. Cost: the product of the number of distinct edges per dim,
    at most `MAX_GRID_CELLS` (else a `ChunkError`).
    """
    if box.is_empty or box.ndim == 0:
        if box.ndim == 0 and not any(True for _ in boxes):
            return [box]
        return []
    clipped = []
    for b in boxes:
        c = intersect(box, b)
        if c is not None and not c.is_empty:
            clipped.append(c)
    if not clipped:
        return [box]
    edges = []
    for d in range(box.ndim):
        e = {box.offsets[d], box.offsets[d] + box.sizes[d]}
        for c in clipped:
            e.add(c.offsets[d])
            e.add(c.offsets[d] + c.sizes[d])
        edges.append(np.array(sorted(e), dtype=np.int64))
    cells = math.prod(len(e) - 1 for e in edges)
    if cells > MAX_GRID_CELLS:
        # hostile metadata: n staggered boxes in d dims make (2n)**d cells
        raise ChunkError(
            None,
            f"the holes of {box} among {len(clipped):,} chunks need a grid of {cells:,} cells",
            f"at most {MAX_GRID_CELLS:,} (chunks of real layouts share their edges)",
            "The metadata is badly damaged or crafted; re-save the checkpoint.",
            cells=cells,
        )
    free = np.ones([len(e) - 1 for e in edges], dtype=bool)
    for c in clipped:
        sl = tuple(
            slice(
                int(np.searchsorted(edges[d], c.offsets[d])),
                int(np.searchsorted(edges[d], c.offsets[d] + c.sizes[d])),
            )
            for d in range(box.ndim)
        )
        free[sl] = False
    if not free.any():
        return []
    out = []
    for start, end in _merge_cells(free):
        offs = tuple(int(edges[d][start[d]]) for d in range(box.ndim))
        sizes = tuple(int(edges[d][end[d]] - edges[d][start[d]]) for d in range(box.ndim))
        out.append(Chunk(offs, sizes))
    return out


def covered_volume(box: Chunk, boxes: Iterable[Chunk]) -> int:
    """Elements of ``box`` covered by at least one of ``boxes`` (overlaps counted once)."""
    return box.volume - sum(c.volume for c in uncovered(box, boxes))


# ----------------------------------------------------------------------------- columnar boxes
# The same predicates over many boxes at once: ``off`` and ``size`` are (n, ndim) int64 arrays,
# one box a row. Whole-model plans and diagnoses use these; their results equal the scalar ones.
_SAFE = 2**62  # offsets and sizes below this in magnitude: their sums and differences fit int64


def int64_unsafe(off: np.ndarray, size: np.ndarray) -> bool:
    """Whether ``offset + size`` could wrap in int64 (torch computes with Python ints, and a chunk
    of hand-made metadata can reach 2**63 - 1 past the end of its tensor): callers then fall back
    to the scalar functions above."""
    return bool(off.size) and (int(np.abs(off).max()) >= _SAFE or int(size.max()) >= _SAFE)


def overlap_mask(a_off, a_size, b_off, b_size) -> np.ndarray:
    """Row-wise `boxes_overlap` (torch's ``_check_box_overlap``); rows broadcast."""
    return ~((a_off >= b_off + b_size) | (b_off >= a_off + a_size)).any(axis=1)


def candidate_pairs(a_off, a_size, b_off, b_size) -> tuple[np.ndarray, np.ndarray]:
    """All of `limited_candidate_pairs`' pairs (no limit)."""
    return limited_candidate_pairs(a_off, a_size, b_off, b_size)[:2]


def limited_candidate_pairs(
    a_off, a_size, b_off, b_size, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """A superset of the index pairs ``(i, j)`` for which box ``a[i]`` can overlap box ``b[j]``
    (torch's predicate), from one dim's intervals, without the n x m matrix.

    The ``b`` boxes are sorted by start along a dim; a candidate starts before ``a[i]``'s end and,
    by the running maximum of ends, possibly ends after its start. The dim giving the fewest
    candidates is used; every overlapping pair is among them (overlap needs both interval
    conditions in every dim). Pairs come grouped by ``i`` ascending. With ``limit``, only the
    first ``limit`` pairs are built (hostile metadata can hold n boxes that all overlap: n**2 / 2
    pairs) and the third value counts the candidates left out."""
    na, nb = len(a_off), len(b_off)
    nd = a_off.shape[1]
    if nd == 0:
        return np.repeat(np.arange(na), nb), np.tile(np.arange(nb), na), 0
    best = None
    for d in range(nd):
        order = np.argsort(b_off[:, d], kind="stable")
        st = b_off[order, d]
        cmax = np.maximum.accumulate(b_off[order, d] + b_size[order, d])
        hi = np.searchsorted(st, a_off[:, d] + a_size[:, d], side="left")
        lo = np.searchsorted(cmax, a_off[:, d], side="right")
        cnt = np.maximum(hi - lo, 0)
        total = int(cnt.sum())
        if best is None or total < best[0]:
            best = (total, order, lo, cnt)
        if total <= na:
            break
    total, order, lo, cnt = best
    dropped = 0
    if limit is not None and total > limit:
        # keep whole runs of the first a-boxes, then part of the next one
        keep = np.minimum(cnt, np.maximum(limit - (np.cumsum(cnt) - cnt), 0))
        dropped, cnt, total = total - int(keep.sum()), keep, int(keep.sum())
    ai = np.repeat(np.arange(na), cnt)
    # position within each a-box's run, added to its lo
    run_start = np.repeat(np.cumsum(cnt) - cnt, cnt)
    bi = order[np.repeat(lo, cnt) + np.arange(total) - run_start]
    return ai, bi, dropped


@dataclass(frozen=True, slots=True)
class Coverage:
    """How a tensor's saved chunks relate to the tensor: ``tiles`` (disjoint, inside, complete),
    the global ``holes`` and the ``overlaps`` as ``(region, indices of the chunks that overlap
    there)``."""

    tiles: bool
    holes: tuple[Chunk, ...] = ()
    overlaps: tuple[tuple[Chunk, tuple[int, ...]], ...] = ()
    # overlapping pairs / regions beyond the listing bounds (hostile metadata), not in overlaps
    more_overlaps: int = 0


# Bounds of the overlap listing: n saved boxes that all overlap make n**2 / 2 pairs and regions.
MAX_OVERLAP_PAIRS = 100_000
MAX_OVERLAP_REGIONS = 256


def coverage(
    size: Sequence[int],
    chunks: Sequence[Chunk],
    arrays: tuple[np.ndarray, np.ndarray] | None = None,
) -> Coverage:
    """Coverage of a tensor of ``size`` by ``chunks`` (``arrays``: their `box_arrays`, when the
    caller has them).

    Fast path (the common case, vectorised): every non-empty chunk is inside the tensor, is
    exactly one cell of the grid of all chunk edges, no two share a cell, and the volumes add up to
    the tensor's: then the chunks tile it. Anything else gets exact holes and exact pairwise
    overlaps, clipped to the tensor (zero-size chunks hold no data and are ignored, unlike torch's
    validation predicate). Overlaps come in order of their first pair ``(i, j)``, ``i < j``.
    """
    size = tuple(size)
    numel = math.prod(size)
    if not size:  # a 0-d tensor: any saved chunk covers it
        return Coverage(True) if chunks else Coverage(False, (Chunk((), ()),))
    if not chunks:
        return Coverage(numel == 0, () if numel == 0 else (Chunk((0,) * len(size), size),))
    if arrays is not None:
        off, siz = arrays
    else:
        off = np.array([c.offsets for c in chunks], dtype=np.int64)
        siz = np.array([c.sizes for c in chunks], dtype=np.int64)
    keep = (siz > 0).all(axis=1)
    off, siz, idx = off[keep], siz[keep], np.flatnonzero(keep)
    end = off + siz
    shape = np.array(size, dtype=np.int64)
    inside = bool(((off >= 0) & (end <= shape)).all())
    if inside and int(np.prod(siz, axis=1).sum()) == numel:
        cell_ids = np.zeros(len(off), dtype=np.int64)
        one_cell = True
        for d in range(len(size)):
            edges = np.unique(np.concatenate([off[:, d], end[:, d]]))
            a = np.searchsorted(edges, off[:, d])
            b = np.searchsorted(edges, end[:, d])
            one_cell &= bool((b - a == 1).all())
            cell_ids = cell_ids * len(edges) + a
        if one_cell and len(np.unique(cell_ids)) == len(cell_ids):
            return Coverage(True)
    full = Chunk((0,) * len(size), size)
    holes = tuple(uncovered(full, [chunks[i] for i in idx]))
    # Clipped to the tensor (an edited chunk may reach past it), the chunks' volumes add up to
    # the covered volume exactly when no two overlap: only then is the pairwise search skipped.
    clipped = np.clip(np.minimum(end, shape) - np.maximum(off, 0), 0, None)
    if int(np.prod(clipped, axis=1).sum()) == numel - sum(h.volume for h in holes):
        return Coverage(not holes and inside, holes)
    overlaps, more = _overlap_regions(off, siz, end, shape, idx)
    return Coverage(not holes and not overlaps and not more and inside, holes, overlaps, more)


def _overlap_regions(off, siz, end, shape, idx):
    """The exact pairwise overlap regions (clipped to the tensor) with the chunk indices meeting
    there, in order of their first pair ``(i, j)``, ``i < j``, vectorised; copies of one box are
    collapsed first, and at most `MAX_OVERLAP_PAIRS` pairs / `MAX_OVERLAP_REGIONS` regions are
    listed (the second value counts what was left out)."""
    boxes, first, inv = np.unique(
        np.concatenate([off, siz], axis=1), axis=0, return_index=True, return_inverse=True
    )
    inv = inv.reshape(-1)
    u = np.argsort(first, kind="stable")  # unique boxes in order of first appearance
    rank_of = np.empty_like(u)
    rank_of[u] = np.arange(len(u))
    members = [[] for _ in range(len(u))]
    for k, g in enumerate(rank_of[inv]):
        members[g].append(int(idx[k]))
    uoff, usiz = boxes[u, : off.shape[1]], boxes[u, off.shape[1] :]
    uend = uoff + usiz
    a, b, dropped = limited_candidate_pairs(uoff, usiz, uoff, usiz, MAX_OVERLAP_PAIRS)
    cross = a < b
    a, b = a[cross], b[cross]
    lo = np.maximum(np.maximum(uoff[a], uoff[b]), 0)
    hi = np.minimum(np.minimum(uend[a], uend[b]), shape)
    hit = (hi > lo).all(axis=1)
    a, b, lo, hi = a[hit], b[hit], lo[hit], hi[hit]
    fa = np.array([m[0] for m in members], dtype=np.int64)  # first chunk index of each box
    found: dict[Chunk, set[int]] = {}
    # a copied box overlaps itself: its copies meet on the whole box (clipped)
    copies = [(g, m) for g, m in enumerate(members) if len(m) > 1]
    events = [((m[0], m[1]), 0, g) for g, m in copies] + [
        ((int(min(fa[i], fa[j])), int(max(fa[i], fa[j]))), 1, k)
        for k, (i, j) in enumerate(zip(a.tolist(), b.tolist()))
    ]
    more = dropped
    for _, what, k in sorted(events):
        if what == 0:
            lo_k = np.maximum(uoff[k], 0)
            hi_k = np.minimum(uend[k], shape)
            if not (hi_k > lo_k).all():
                continue
            ix = members[k]
        else:
            lo_k, hi_k = lo[k], hi[k]
            ix = members[a[k]] + members[b[k]]
        region = Chunk(tuple(int(x) for x in lo_k), tuple(int(x) for x in hi_k - lo_k))
        if region not in found and len(found) >= MAX_OVERLAP_REGIONS:
            more += 1
            continue
        found.setdefault(region, set()).update(ix)
    overlaps = tuple((region, tuple(sorted(ix))) for region, ix in found.items())
    return overlaps, more


def box_arrays(
    chunks: Sequence[Chunk],
    shape: Sequence[int],
    fqn: str | None = None,
    cache: dict | None = None,
    error: type = ChunkError,
) -> tuple[np.ndarray, np.ndarray]:
    """The chunks of a tensor of ``shape`` as read-only (n, ndim) int64 offset and size arrays; a
    chunk of another rank is an ``error`` naming ``fqn``. Chunks are immutable, so with a
    ``cache`` the arrays are shared by every call whose list holds the same chunk objects (a
    planned save reuses one layout's chunks for all fqns with that layout): converted once."""
    ndim = len(shape)
    held = getattr(chunks, "box_arrays", None)  # a reader's columns (formats.columns.ChunkList)
    if held is not None and held[0].shape[1] == ndim:
        return held
    sig = tuple(map(id, chunks))
    hit = cache.get(sig) if cache is not None else None
    if hit is not None and ndim == hit[0].shape[1]:
        return hit[0], hit[1]
    n = len(chunks)
    for c in chunks:
        if len(c.offsets) != ndim or len(c.sizes) != ndim:
            raise error(
                fqn,
                f"saved chunk {c} has {len(c.offsets)} dims for a tensor of size {tuple(shape)}",
                "chunks of the tensor's rank",
                "The checkpoint's metadata is corrupt; re-save it.",
                chunk=c,
            )
    offs = np.array([c.offsets for c in chunks], dtype=np.int64).reshape(n, ndim)
    sizes = np.array([c.sizes for c in chunks], dtype=np.int64).reshape(n, ndim)
    offs.setflags(write=False)
    sizes.setflags(write=False)
    if cache is not None:
        cache[sig] = (offs, sizes, list(chunks))  # the list keeps the ids alive and unique
    return offs, sizes
