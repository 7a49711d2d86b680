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
    "as_chunk",
    "boxes_overlap",
    "intersect",
    "volume",
    "uncovered",
    "covered_volume",
    "format_box",
]


_INT64_MAX = 2**63 - 1


def _ints(values, what: str, fqn: str | None) -> tuple[int, ...]:
    try:
        out = tuple(operator.index(v) for v in values)
    except TypeError:
        raise ChunkError(
            fqn,
            f"{what} {values!r} are not integers",
            "a sequence of ints",
            "Pass offsets and sizes as tuples of ints.",
            values=values,
        ) from None
    return out


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
            off = _ints(off, "offsets", None)
            siz = _ints(siz, "sizes", None)
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


def uncovered(box: Chunk, boxes: Iterable[Chunk]) -> list[Chunk]:
    """The exact regions of ``box`` that no box of ``boxes`` covers, as disjoint chunks.

    Computed on the grid of all box edges inside ``box`` (coordinate compression), so the result
    is exact whatever the boxes' sizes; the pieces are maximal greedy merges in C order. An empty
    ``box`` has nothing to cover. Cost: the product of the number of distinct edges per dim.
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
