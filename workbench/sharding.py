"""Sharding: placements, DTensor's local-shape / global-offset math for every rank, the indices a
rank really holds, and layouts (every rank's chunks of one tensor at once).

Mirrors ``torch.distributed.tensor._utils._compute_local_shape_and_global_offset`` and the
``Shard`` / ``_StridedShard`` split rules of torch 2.13 without torch. A `Layout` is the neutral
record the planners consume: it can describe a DTensor on a mesh, a plain tensor on every rank,
ShardedTensor-style explicit chunks, or a non-tensor (bytes) entry. Imports geometry only.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Literal, get_args

import numpy as np

from .errors import ChunkError, LayoutError, PlacementError, PlanError
from .formatting import format_ranks
from .geometry import Chunk, as_chunk, as_ints
from .records import DTYPE_SIZES, TensorProperties, canonical_dtype
from .versions import resolve_torch_version, semantics

__all__ = [
    "Placement",
    "TorchMathsError",
    "LayoutKind",
    "LAYOUT_KINDS",
    "RankValue",
    "chunk_holders",
    "check_load_rank",
    "Shard",
    "Replicate",
    "StridedShard",
    "Partial",
    "parse_placement",
    "parse_placements",
    "format_placements",
    "as_placement",
    "local_shape_and_offset",
    "for_torch_version",
    "held_indices",
    "box_matches_data",
    "mesh_coordinate",
    "Layout",
    "dtensor_layout",
    "fsdp2_tp_layout",
    "with_fsdp2_rows",
    "with_data_held",
    "tensor_layout",
    "sharded_layout",
    "bytes_layout",
]


# ----------------------------------------------------------------------------- placements
class Placement:
    """Base of the workbench's placements (plain frozen records, no torch)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Shard(Placement):
    """``Shard(dim)``: torch.chunk the tensor dim ``dim`` over the mesh dim."""

    dim: int

    def __str__(self) -> str:
        return f"S({self.dim})"

    def __repr__(self) -> str:
        return f"Shard(dim={self.dim})"


@dataclass(frozen=True, slots=True)
class Replicate(Placement):
    """``Replicate()``: every rank of the mesh dim holds the whole (remaining) tensor."""

    def __str__(self) -> str:
        return "R"

    def __repr__(self) -> str:
        return "Replicate()"


@dataclass(frozen=True, slots=True)
class StridedShard(Placement):
    """torch's ``_StridedShard(dim, split_factor)``: split ``dim`` into ``split_factor`` pieces,
    each piece torch.chunked over the mesh dim; a rank takes its sub-chunk of every piece."""

    dim: int
    split_factor: int

    def __str__(self) -> str:
        return f"SS({self.dim},{self.split_factor})"

    def __repr__(self) -> str:
        return f"_StridedShard(dim={self.dim}, sf={self.split_factor})"


@dataclass(frozen=True, slots=True)
class Partial(Placement):
    """``Partial(reduce_op)``: pending reduction. DCP refuses it (save raises, load misreports)."""

    reduce_op: str = "sum"

    def __str__(self) -> str:
        return "P"

    def __repr__(self) -> str:
        return f"Partial({self.reduce_op})"


_PLACEMENT_SPEC = [
    (re.compile(r"^(?:S|Shard)\((?:dim=)?(-?\d+)\)$"), lambda m: Shard(int(m[1]))),
    (re.compile(r"^(?:R|Replicate\(\))$"), lambda m: Replicate()),
    (
        re.compile(
            r"^(?:SS|_S|_StridedShard|StridedShard)\((?:dim=)?(-?\d+),\s*(?:sf=|split_factor=)?(-?\d+)\)$"
        ),
        lambda m: StridedShard(int(m[1]), int(m[2])),
    ),
    (
        re.compile(r"^(?:P|Partial)(?:\((?:reduce_op=)?['\"]?(\w*)['\"]?\))?$"),
        lambda m: Partial(m[1] or "sum"),
    ),
]


def parse_placement(spec: str) -> Placement:
    """``"S(0)"`` -> Shard(0), ``"R"`` -> Replicate(), ``"SS(0,2)"`` -> StridedShard(0, 2),
    ``"P"`` -> Partial(). Also accepts torch's printed forms (``Shard(dim=0)``, ``_S(0, 2)``)."""
    if isinstance(spec, Placement):
        return spec
    s = str(spec).strip()
    for rx, make in _PLACEMENT_SPEC:
        m = rx.match(s)
        if m:
            return make(m)
    raise PlacementError(
        None,
        f"placement spec {spec!r} is not understood",
        "one of S(d), R, SS(d,k), P",
        "Write e.g. 'S(0)', 'R', 'SS(0,2)' or 'P'.",
        spec=spec,
    )


def parse_placements(specs) -> tuple[Placement, ...]:
    """A placement tuple from ``"S(0), R"``, a list of specs, or placement objects (workbench or
    torch)."""
    if isinstance(specs, str):
        parts = [p for p in re.split(r",\s*(?![^()]*\))", specs) if p.strip()]
        if not parts:
            raise PlacementError(
                None,
                f"placement list {specs!r} is empty",
                "one placement per mesh dim",
                "Write e.g. 'S(0), R'.",
                spec=specs,
            )
        return tuple(parse_placement(p) for p in parts)
    return tuple(as_placement(p) for p in specs)


def as_placement(p) -> Placement:
    """A workbench placement from a workbench placement, a spec string or a torch placement."""
    if isinstance(p, Placement):
        return p
    if isinstance(p, str):
        return parse_placement(p)
    name = type(p).__name__
    if name == "_StridedShard":
        return StridedShard(int(p.dim), int(p.split_factor))
    if name == "Shard":
        return Shard(int(p.dim))
    if name == "Replicate":
        return Replicate()
    if name in ("Partial", "_Partial", "_NormPartial", "MaskPartial"):
        return Partial(str(getattr(p, "reduce_op", "sum")))
    raise PlacementError(
        None,
        f"placement {p!r} of type {name} is not understood",
        "Shard, Replicate, _StridedShard or Partial",
    )


def format_placements(placements: Sequence[Placement]) -> str:
    return ", ".join(str(p) for p in placements)


# ----------------------------------------------------------------------------- shard math
# Positions of one _StridedShard dim the layout maths materialise (as torch's arange split does).
MAX_STRIDED_POSITIONS = 1 << 24


def _chunk_bounds(length: int, n: int, r: int) -> tuple[int, int]:
    """torch.chunk(length, n) padded with empty pieces: piece r is [start, end)."""
    full = -(-length // n) if length else 0
    start = min(full * r, length)
    end = min(full * (r + 1), length)
    return start, max(start, end)


def _positions(length: int, n: int, r: int, p: Placement) -> list[int] | range:
    """Local positions (0..length-1) that mesh index r of n keeps under placement p."""
    if isinstance(p, Shard):
        s, e = _chunk_bounds(length, n, r)
        return range(s, e)
    # _StridedShard: torch.chunk into split_factor pieces, each torch.chunked over n.
    if length > MAX_STRIDED_POSITIONS:
        # torch materialises arange(length) here too; a hostile target must not make us
        raise PlacementError(
            None,
            f"placement {p} splits a dim of {length:,} elements",
            f"at most {MAX_STRIDED_POSITIONS:,} for a _StridedShard dim (its positions are "
            "materialised, as torch does)",
            "Check the shape; shard that dim with Shard instead.",
            placement=p,
        )
    out: list[int] = []
    k = p.split_factor
    # pieces past the length-th are empty (torch.chunk pads with empty pieces)
    for j in range(min(k, length)):
        ps, pe = _chunk_bounds(length, k, j)
        s, e = _chunk_bounds(pe - ps, n, r)
        out.extend(range(ps + s, ps + e))
    return out


_NO_COORD = object()  # dtensor_layout checks every rank itself
_MAX_BYTES = 2**63 - 1  # torch (and numpy's int64 byte counts) cannot go past this


def _shape(values, what: str, fqn, error=PlacementError, itemsize: int = 1) -> tuple[int, ...]:
    """A tuple of ints from a shape-like (list, tuple, torch.Size); refuses strings, floats,
    negative sizes and tensors too large to exist."""
    out = as_ints(values, what, fqn, error, "(8, 6)")
    if any(v < 0 for v in out):
        raise error(fqn, f"{what} {out} has a negative size", "sizes >= 0", value=out)
    if math.prod(out) * itemsize > _MAX_BYTES:
        raise error(
            fqn,
            f"{what} {out} holds {math.prod(out)} elements of {itemsize} bytes",
            f"at most {_MAX_BYTES} bytes, as torch allows",
            "Check the shape for a typo.",
            value=out,
        )
    return out


def _checked_args(global_shape, mesh_shape, coordinate, placements, fqn):
    shape = _shape(global_shape, "global shape", fqn)
    mesh = _shape(mesh_shape, "mesh shape", fqn)
    pl = parse_placements(placements)
    if len(pl) != len(mesh):
        raise PlacementError(
            fqn,
            f"placements [{format_placements(pl)}] have {len(pl)} entries for a "
            f"mesh of shape {mesh}",
            "one placement per mesh dim",
            "Give exactly one placement per mesh dim.",
            placements=pl,
            mesh_shape=mesh,
        )
    if any(m < 1 for m in mesh):
        raise PlacementError(
            fqn, f"mesh shape {mesh} has a dim below 1", "every mesh dim >= 1", mesh_shape=mesh
        )
    for p in pl:
        if isinstance(p, (Shard, StridedShard)):
            if not -len(shape) <= p.dim < len(shape):
                raise PlacementError(
                    fqn,
                    f"placement {p} shards dim {p.dim} of a {len(shape)}-d tensor of shape {shape}",
                    f"dim in [{-len(shape)}, {len(shape)})"
                    if shape
                    else "a 0-d tensor can only be replicated",
                    "Shard a dim the tensor has.",
                    placement=p,
                    shape=shape,
                )
        if isinstance(p, StridedShard) and p.dim < -1:
            # torch splits a 1-D arange along p.dim: only -1 is in range ("Dimension out of range")
            raise PlacementError(
                fqn,
                f"placement {p} has negative dim {p.dim}",
                "a _StridedShard dim >= -1, as torch 2.13 accepts",
                "Use the non-negative dim.",
                placement=p,
            )
        if isinstance(p, StridedShard) and p.split_factor < 1:
            raise PlacementError(
                fqn,
                f"placement {p} has split factor {p.split_factor}",
                "split_factor >= 1",
                placement=p,
            )
    if coordinate is None:
        raise PlacementError(
            fqn,
            "coordinate None names no mesh position",
            f"a coordinate in the mesh of shape {mesh}",
            "A rank outside the mesh holds nothing (torch returns ((0,), ()) there); "
            "pass a coordinate such as mesh_coordinate(rank, mesh_shape).",
        )
    if coordinate is not _NO_COORD:
        coord = _shape(coordinate, "coordinate", fqn)
        if len(coord) != len(mesh) or any(not 0 <= c < m for c, m in zip(coord, mesh)):
            raise PlacementError(
                fqn,
                f"coordinate {coord} is not in a mesh of shape {mesh}",
                "0 <= coordinate[i] < mesh_shape[i]",
                coordinate=coord,
                mesh_shape=mesh,
            )
    else:
        coord = None
    return shape, mesh, coord, pl


def _walk(shape, mesh, coord, pl):
    """torch's left-to-right walk; returns (local_shape, torch's held map keyed by raw dim,
    the real held indices keyed by normalised dim)."""
    local = list(shape)
    torch_held: dict[int, list[int] | range] = {}
    real: dict[int, list[int] | range] = {}
    for m, p in enumerate(pl):
        if not isinstance(p, (Shard, StridedShard)):
            continue
        d = p.dim
        pos = _positions(local[d], mesh[m], coord[m], p)
        prev = torch_held.get(d)
        nd = d % len(shape)
        prev_real = real.get(nd)
        if len(pos) == 0:
            local[d] = 0
            torch_held[d] = [shape[d]]
            real[nd] = []
            continue
        torch_held[d] = pos if prev is None else [prev[i] for i in pos]
        real[nd] = pos if prev_real is None else [prev_real[i] for i in pos]
        local[d] = len(pos)
    return local, torch_held, real


def local_shape_and_offset(
    global_shape: Sequence[int],
    mesh_shape: Sequence[int],
    coordinate: Sequence[int],
    placements,
    *,
    fqn: str | None = None,
    torch_version: str | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """torch's ``_compute_local_shape_and_global_offset(global_shape, mesh_shape, coordinate,
    placements)``: the local shape and the global offset DCP records for that mesh coordinate,
    as ``torch_version`` computes them (default `versions.default_torch_version`).

    2.10+: uneven splits follow torch.chunk; an empty shard has offset == the dim's size; nested
    placements on one dim compose left to right; ``_StridedShard`` records only its first index.
    2.8, 2.9: ``_StridedShard`` reordered into plain shards, nested offsets replaced-or-added.
    2.4 - 2.7: the same without the reordering, and an empty shard's offset is the LOCAL dim size
    (it can equal another rank's real offset: DCP's dedup then keeps one of them).
    """
    shape, mesh, coord, pl = _checked_args(global_shape, mesh_shape, coordinate, placements, fqn)
    return _versioned_box(shape, mesh, coord, pl, resolve_torch_version(torch_version), fqn)


def _versioned_box(shape, mesh, coord, pl, version: str, fqn):
    """`_local_shape_and_offset` with ``version``'s maths; what that torch refuses is a
    PlacementError naming the version and quoting torch."""
    sem = semantics(version)
    if not sem.strided_shard and any(isinstance(p, StridedShard) for p in pl):
        raise PlacementError(
            fqn,
            f"placements [{format_placements(pl)}] use _StridedShard, which torch {version} "
            "does not have",
            "torch 2.5 or newer for _StridedShard (FSDP2 + TP)",
            "Plan with torch_version='2.5' or newer, or use Shard placements.",
            placements=pl,
            torch_version=version,
        )
    try:
        return _local_shape_and_offset(shape, mesh, coord, pl, sem.dtensor_maths)
    except TorchMathsError as e:
        raise PlacementError(
            fqn,
            f"torch {version}'s compute_local_shape_and_global_offset raises "
            f"{e.torch_type}('{e}') for placements [{format_placements(pl)}] on mesh {mesh}",
            "placements that torch version can checkpoint",
            "Reorder the placements, or plan with a newer torch_version (2.10+ computes them).",
            placements=pl,
            torch_version=version,
            torch_error=(e.torch_type, str(e)),
        ) from None


def _local_shape_and_offset(shape, mesh, coord, pl, maths: str = "2.10"):
    if maths != "2.10":
        return _OLD_MATHS[maths](shape, mesh, coord, pl)
    local, torch_held, _ = _walk(shape, mesh, coord, pl)
    offset = [0] * len(shape)
    for d, idx in torch_held.items():
        offset[d] = idx[0]
    return tuple(local), tuple(offset)


# ----------------------------------------------------------------------------- older torch's maths
# ``compute_local_shape_and_global_offset`` before the index-list walk above, ported line by line
# from each version's ``_utils.py`` / ``placement_types.py`` (the names below are the versions'
# own) and proved against what each version's own code computed (tools/record_torch_versions.py
# -> tests/data/torch-<X.Y>/dtensor.json). `versions.TorchSemantics.dtensor_maths` picks one.
class TorchMathsError(Exception):
    """What an old version's maths raises for a placement list it refuses (torch's type and
    message), turned into a PlacementError naming the version by the caller."""

    def __init__(self, torch_type: str, message: str):
        super().__init__(message)
        self.torch_type = torch_type


def _torch_str(p: Placement) -> str:
    """``str()`` of torch's placement (its error messages print it): ``_S(0, 2)`` for a
    ``_StridedShard``."""
    return f"_S({p.dim}, {p.split_factor})" if isinstance(p, StridedShard) else str(p)


def _shard_size_on_dim(size_on_dim: int, num_chunks: int, rank: int) -> tuple[int, int]:
    """``Shard._local_shard_size_on_dim(..., return_offset=True)`` (2.4 - 2.7) and
    ``_local_shard_size_and_offset`` (2.8, 2.9): torch.chunk's piece, and an empty piece's offset
    is the LOCAL dim size (not the global one)."""
    if size_on_dim % num_chunks == 0:
        full = size_on_dim // num_chunks
        return full, full * rank
    full = (size_on_dim + num_chunks - 1) // num_chunks
    start = full * rank
    if size_on_dim < start:
        return 0, size_on_dim
    return min(size_on_dim, start + full) - start, start


def _strided_offsets(local, mesh, coord, pl) -> list[int]:
    """2.5 - 2.7 with a ``_StridedShard``: every offset is ``local size x shard index``, the index
    from strides over the mesh dims (``split_factor`` says how many pieces the later shards cut)."""
    n = len(local)
    stride = [[0] * len(mesh) for _ in range(n)]
    num_shards = [1] * n
    for m, p in enumerate(pl):
        if isinstance(p, (Shard, StridedShard)):
            num_shards[p.dim] *= mesh[m]
    seen, ended = [False] * n, [False] * n
    for m, p in enumerate(pl):
        if not isinstance(p, (Shard, StridedShard)):
            continue
        d = p.dim
        if ended[d]:
            raise TorchMathsError(
                "NotImplementedError",
                "Strided sharding does not allow Shard() to appear after the strided part has "
                f"ended. {_torch_str(p)} at idx {m} in {list(pl)} violates this assumption.",
            )
        if seen[d]:
            ended[d] = True
        if isinstance(p, StridedShard):
            seen[d] = True
            stride[d][m] = num_shards[d] // (p.split_factor * mesh[m])
        else:
            num_shards[d] //= mesh[m]
            stride[d][m] = num_shards[d]
    idx = [sum(x * y for x, y in zip(stride[d], coord)) for d in range(n)]
    return [x * y for x, y in zip(local, idx)]


def _maths_2_4(shape, mesh, coord, pl):
    """2.4 - 2.7: left to right; an offset on a dim already sharded is replaced when the new
    local offset is not smaller, else added (so an empty shard's offset, the local dim size, can
    land on another rank's real start); a ``_StridedShard`` anywhere switches to
    `_strided_offsets` (2.5+; 2.4 has no ``_StridedShard``)."""
    local, offset = list(shape), [0] * len(shape)
    for m, p in enumerate(pl):
        if isinstance(p, (Shard, StridedShard)):
            d = p.dim
            size, off = _shard_size_on_dim(local[d], mesh[m], coord[m])
            local[d] = size
            offset[d] = off if offset[d] <= off else offset[d] + off
    if any(isinstance(p, StridedShard) for p in pl):
        offset = _strided_offsets(local, mesh, coord, pl)
    return tuple(local), tuple(offset)


def _explicit_order_placements(mesh, pl) -> list[tuple[int, Placement]]:
    """2.8+'s ``_explicit_order_placements``: each ``_StridedShard`` becomes a ``Shard`` applied
    after the ``Shard`` of its dim that follows it (its split factor must equal the mesh sizes
    sharded after it); one never followed by a ``Shard`` of its dim is dropped."""
    ordered: list[tuple[int, Placement]] = []
    deferred: dict[int, list[tuple[int, StridedShard]]] = defaultdict(list)
    ended: set[int] = set()
    for m, p in enumerate(pl):
        if isinstance(p, StridedShard):
            deferred[p.dim].append((m, p))
            continue
        ordered.append((m, p))
        if not isinstance(p, Shard):
            continue
        if p.dim in ended:
            raise TorchMathsError(
                "NotImplementedError",
                "Strided sharding does not allow Shard() to appear after the strided part has "
                f"ended. {_torch_str(p)} at mesh dim {m} in {list(pl)} violates this "
                "assumption.",
            )
        if p.dim in deferred:
            ended.add(p.dim)
            strided = deferred.pop(p.dim)
            aggregate = mesh[m]
            while strided:
                sm, sp = strided.pop()
                if sp.split_factor != aggregate:
                    raise TorchMathsError(
                        "RuntimeError",
                        "Can only convert _StridedShard to ordered Shard if "
                        f"split_factor({sp.split_factor}) == aggregate mesh size ({aggregate})",
                    )
                aggregate *= mesh[sm]
                ordered.append((sm, Shard(p.dim)))
    return ordered


def _maths_2_8(shape, mesh, coord, pl):
    """2.8, 2.9: the placements in `_explicit_order_placements`' order, replace-or-add offsets
    as before, but an empty shard sits at the GLOBAL dim size (PyTorch PR 150862)."""
    local, offset = list(shape), [0] * len(shape)
    for m, p in _explicit_order_placements(mesh, pl):
        if isinstance(p, Shard):
            d = p.dim
            size, off = _shard_size_on_dim(local[d], mesh[m], coord[m])
            local[d] = size
            if size == 0:
                offset[d] = shape[d]
            else:
                offset[d] = off if offset[d] <= off else offset[d] + off
    return tuple(local), tuple(offset)


_OLD_MATHS = {"2.4": _maths_2_4, "2.8": _maths_2_8}


def held_indices(
    global_shape: Sequence[int],
    mesh_shape: Sequence[int],
    coordinate: Sequence[int],
    placements,
    *,
    fqn: str | None = None,
) -> dict[int, list[int]]:
    """For each sharded tensor dim (normalised, >= 0), the global indices that mesh coordinate
    really holds, in local order (empty for an empty shard)."""
    shape, mesh, coord, pl = _checked_args(global_shape, mesh_shape, coordinate, placements, fqn)
    _, _, real = _walk(shape, mesh, coord, pl)
    return {d: list(v) for d, v in sorted(real.items())}


def box_matches_data(global_shape, mesh_shape, coordinate, placements, *, fqn=None) -> bool:
    """Whether DCP's box ``[offset, offset+size)`` describes the data that coordinate holds
    (False is the ``_StridedShard`` hazard: the box names other rows)."""
    shape, mesh, coord, pl = _checked_args(global_shape, mesh_shape, coordinate, placements, fqn)
    return _matches(shape, mesh, coord, pl)


def _matches(shape, mesh, coord, pl, box=None) -> bool:
    """Whether the box (default: the newest maths'; else ``(local, offset)``) is the data."""
    if box is None:
        box = _local_shape_and_offset(shape, mesh, coord, pl)
    local, offset = box
    _, _, real = _walk(shape, mesh, coord, pl)
    box_empty, data_empty = 0 in local, any(len(v) == 0 for v in real.values())
    if box_empty or data_empty:
        return box_empty and data_empty
    for d, idx in real.items():
        if len(idx) != local[d]:
            return False
        if list(idx) != list(range(offset[d], offset[d] + local[d])):
            return False
    return True


def mesh_coordinate(
    rank: int, mesh_shape: Sequence[int], mesh_ranks: Sequence[int] | None = None
) -> tuple[int, ...] | None:
    """Mesh coordinate of global ``rank`` (``DeviceMesh.get_coordinate`` on that rank): its
    row-major position in ``mesh_ranks`` (the mesh's global ranks, ``DeviceMesh.mesh`` flattened;
    default ``0..prod(mesh_shape)-1``); None when the rank is not in the mesh."""
    if mesh_ranks is not None:
        rank = list(mesh_ranks).index(rank) if rank in mesh_ranks else -1
    if rank >= math.prod(mesh_shape) or rank < 0:
        return None
    return tuple(int(c) for c in np.unravel_index(rank, tuple(mesh_shape)))


# ----------------------------------------------------------------------------- layouts
# What a state-dict value is to DCP (torch's planners branch on exactly these four).
LayoutKind = Literal["dtensor", "sharded", "tensor", "bytes"]
LAYOUT_KINDS: tuple[LayoutKind, ...] = get_args(LayoutKind)


@lru_cache(maxsize=64)
def _all_ranks(world_size: int) -> tuple[int, ...]:
    return tuple(range(world_size))


@dataclass(frozen=True, eq=False)
class Layout:
    """Every rank's local chunks of one state-dict entry.

    ``kind``: ``"dtensor"`` (one chunk per rank in the mesh, none outside it), ``"tensor"`` (a plain
    tensor: the whole tensor on every holding rank), ``"sharded"`` (ShardedTensor: explicit chunks
    per rank) or ``"bytes"`` (a non-tensor entry; shape ``()``). ``rank_chunks[r]`` is rank r's
    tuple of chunks. ``per_rank_values`` marks plain tensors / bytes whose values differ per rank
    (save-time dedup keeps one rank's copy). ``mesh_ranks`` (DTensor only): the mesh's global
    ranks in row-major mesh order, for a submesh such as a pipeline stage; None means
    ``0..prod(mesh_shape)-1`` (see `mesh_ranks_or_default`). ``data_held`` (DTensor only): per
    rank, ``{dim: global indices}`` it really holds when that is not what the placements say
    (FSDP2 + TP, see `fsdp2_tp_layout`), or None to follow the placements. ``torch_version``
    (DTensor only): the torch whose ``compute_local_shape_and_global_offset`` made the boxes
    (`for_torch_version` re-derives them for another; planning does so for its version).
    """

    kind: LayoutKind
    shape: tuple[int, ...]
    dtype: str
    world_size: int
    rank_chunks: tuple[tuple[Chunk, ...], ...]
    mesh_shape: tuple[int, ...] | None = None
    placements: tuple[Placement, ...] | None = None
    per_rank_values: bool = False
    _misdescribed: tuple[int, ...] = field(default=(), repr=False)
    mesh_ranks: tuple[int, ...] | None = None
    data_held: tuple[dict[int, range] | None, ...] | None = field(default=None, repr=False)
    torch_version: str | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES[self.dtype] if self.kind != "bytes" else 0

    @property
    def is_bytes(self) -> bool:
        return self.kind == "bytes"

    def chunks(self, rank: int) -> tuple[Chunk, ...]:
        return self.rank_chunks[rank]

    def holders(self) -> list[int]:
        """Ranks that hold the entry at all."""
        return list(self._holders)

    @cached_property
    def _holders(self) -> tuple[int, ...]:
        return tuple(r for r, c in enumerate(self.rank_chunks) if c)

    def key_ranks(self) -> tuple[int, ...]:
        """Ranks whose state dict carries the key: every rank for a DTensor (ranks outside the
        mesh still hold the object) or a ShardedTensor (possibly with no local shard); the
        holders for a plain tensor or a bytes value."""
        # asked per fqn several times by the diagnosis: at 16,384 ranks a fresh tuple costs
        # ~0.4 ms, so every layout of one world shares one tuple (a layout is immutable)
        if self.kind in ("dtensor", "sharded"):
            return _all_ranks(self.world_size)
        return self._holders

    @property
    def mesh_ranks_or_default(self) -> tuple[int, ...] | None:
        """The global rank at each row-major mesh position (None without a mesh)."""
        if self.mesh_shape is None:
            return None
        return self.mesh_ranks or tuple(range(math.prod(self.mesh_shape)))

    def mesh_boxes(self) -> tuple[np.ndarray, tuple[Chunk, ...], np.ndarray, np.ndarray] | None:
        """``(global rank, chunk, offsets, sizes)`` of each row-major mesh position (the chunk
        objects and n x ndim arrays are shared by every layout of the same shape, mesh and
        placements), or None unless this is a DTensor layout whose chunks are exactly its
        placements' boxes, as `dtensor_layout` builds them: planning then sorts them by rank
        instead of walking every rank's chunk tuple."""
        if self.kind != "dtensor" or None in (self.mesh_shape, self.placements, self.torch_version):
            return None
        try:
            boxes = _mesh_boxes(self.shape, self.mesh_shape, self.placements, self.torch_version)
        except (PlacementError, TypeError):  # hand-built placements: no cached boxes
            return None
        at, rc = self.mesh_ranks_or_default, self.rank_chunks
        if (
            len(at) != len(boxes.chunks)
            or len(rc) <= max(at)
            or rc.count(()) != len(rc) - len(at)
            # C-speed: equal tuples at the mesh ranks (the same objects as built compare fast)
            or (operator.itemgetter(*at)(rc) if len(at) > 1 else (rc[at[0]],)) != boxes.chunks
        ):
            return None
        return np.array(at, np.int64), boxes.chunk_objects, boxes.offsets, boxes.sizes

    def coordinate(self, rank: int) -> tuple[int, ...] | None:
        """Global ``rank``'s mesh coordinate; None outside the mesh (or without one)."""
        if self.mesh_shape is None:
            return None
        return mesh_coordinate(rank, self.mesh_shape, self.mesh_ranks)

    def held_indices(self, rank: int) -> dict[int, list[int]]:
        """What ``rank`` really holds per sharded dim (DTensor only; {} otherwise): ``data_held``
        where given (FSDP2 + TP), else what the placements say."""
        coord = self.coordinate(rank)
        if self.kind != "dtensor" or coord is None:
            return {}
        if self.data_held is not None and self.data_held[rank] is not None:
            return {d: list(v) for d, v in sorted(self.data_held[rank].items())}
        return held_indices(self.shape, self.mesh_shape, coord, self.placements)

    @property
    def misdescribed_ranks(self) -> tuple[int, ...]:
        """Ranks whose DCP box does not describe the data they hold (``_StridedShard``, or
        FSDP2 + TP's real rows): other indices, or another count, on some dim."""
        return self._misdescribed

    @property
    def has_partial(self) -> bool:
        return bool(self.placements) and any(isinstance(p, Partial) for p in self.placements)

    def describe(self) -> str:
        if self.kind == "dtensor":
            # a stage's ranks as runs: listed one by one they are 12 kB at 16,384 ranks
            at = f" at ranks {format_ranks(self.mesh_ranks)}" if self.mesh_ranks is not None else ""
            return (
                f"DTensor {self.shape} {self.dtype} on mesh {self.mesh_shape}{at} "
                f"[{format_placements(self.placements)}]"
            )
        if self.kind == "bytes":
            return f"bytes on {len(self.holders())} of {self.world_size} ranks"
        return f"{self.kind} {self.shape} {self.dtype} on {len(self.holders())} of {self.world_size} ranks"

    def __repr__(self) -> str:
        return f"Layout({self.describe()})"


def _world(world_size, default, fqn):
    if world_size is None:
        return default
    ws = int(world_size)
    if ws < default:
        raise LayoutError(
            fqn,
            f"world size {ws} is smaller than the mesh's {default} ranks",
            "world_size >= prod(mesh_shape)",
            world_size=ws,
        )
    return ws


def _named(fqn, build, *args):
    """``build(*args)`` (cached per spec, not per fqn); a PlacementError it raises names ``fqn``."""
    try:
        return build(*args)
    except PlacementError as e:
        if fqn is None or e.fqn != "<input>":
            raise
        raise PlacementError(fqn, e.what, e.expectation, e.fix, **e.facts) from None


@lru_cache(maxsize=1024)
def _mesh_boxes(shape, mesh, pl, version) -> _MeshBoxes:
    """Each row-major mesh position's chunk and the positions whose box is not their data: one
    computation per (shape, mesh, placements), whichever global ranks the mesh has (every
    pipeline stage's layers share it). Equal boxes are one object."""
    maths = semantics(version).dtensor_maths
    # what this version refuses whatever the coordinate is raised here
    first = _versioned_box(shape, mesh, (0,) * len(mesh), pl, version, None)
    if maths == "2.10" and _shards_only(shape, mesh, pl):
        offsets, sizes = _shard_boxes(shape, mesh, pl)
        bad: list[int] = []
    else:
        boxes = [first]
        bad = []
        # Only _StridedShard can make DCP's box differ from the data with the newest maths (dims
        # are normalised, so no tensor dim is named twice under two spellings); older maths can
        # also misplace nested shards, so they are always checked. product() walks the mesh in
        # row-major order, as np.unravel_index numbers it.
        check = maths != "2.10" or any(isinstance(p, StridedShard) for p in pl)
        for i, coord in enumerate(itertools.product(*map(range, mesh))):
            if i:
                try:
                    box = _local_shape_and_offset(shape, mesh, coord, pl, maths)
                except TorchMathsError:
                    box = _versioned_box(shape, mesh, coord, pl, version, None)  # raises
                boxes.append(box)
            if check and not _matches(shape, mesh, coord, pl, boxes[i]):
                bad.append(i)
        nd = len(shape)
        offsets = np.array([b[1] for b in boxes], np.int64).reshape(-1, nd)
        sizes = np.array([b[0] for b in boxes], np.int64).reshape(-1, nd)
    made: dict[tuple, tuple[Chunk]] = {}
    chunks = []
    for o, z in zip(offsets.tolist(), sizes.tolist()):
        key = (*o, *z)
        c = made.get(key)
        if c is None:
            c = made[key] = (Chunk(tuple(o), tuple(z)),)
        chunks.append(c)
    offsets.setflags(write=False)
    sizes.setflags(write=False)
    return _MeshBoxes(
        chunks=tuple(chunks),
        chunk_objects=tuple(c[0] for c in chunks),
        bad=tuple(bad),
        offsets=offsets,
        sizes=sizes,
    )


@dataclass(frozen=True)
class _MeshBoxes:
    chunks: tuple[tuple[Chunk], ...]  # per row-major mesh position: its rank's chunk tuple
    chunk_objects: tuple[Chunk, ...]  # the same chunks
    bad: tuple[int, ...]  # positions whose box is not their data
    offsets: np.ndarray  # the chunks' offsets and sizes, n x ndim
    sizes: np.ndarray


def _shards_only(shape, mesh, pl) -> bool:
    """Placements the vectorised walk computes exactly: plain Shard on non-negative dims (with
    Replicate / Partial), and sizes whose products stay inside int64."""
    if any(isinstance(p, StridedShard) or (isinstance(p, Shard) and p.dim < 0) for p in pl):
        return False
    return max(shape, default=0) * max(mesh, default=1) < 2**62


def _shard_boxes(shape, mesh, pl) -> tuple[np.ndarray, np.ndarray]:
    """`_walk` (2.10 maths) for every row-major mesh position at once, Shard placements only:
    (offsets, local sizes), n x ndim. A Shard keeps torch.chunk's piece of the dim's current
    length (`_chunk_bounds`); nested shards of one dim compose into a contiguous run, so its
    first index is the previous offset plus the piece's start; an empty piece sets the dim's
    size to 0 and its offset to the dim's global size, as torch records it."""
    n = math.prod(mesh)
    coords = np.indices(mesh, np.int64).reshape(len(mesh), n)
    local = np.tile(np.array(shape, np.int64), (n, 1)).reshape(n, len(shape))
    offset = np.zeros_like(local)
    for m, p in enumerate(pl):
        if not isinstance(p, Shard):
            continue
        d, length, c = p.dim, local[:, p.dim], coords[m]
        full = -(-length // mesh[m])
        start = np.minimum(full * c, length)
        end = np.maximum(np.minimum(full * (c + 1), length), start)
        empty = end == start
        offset[:, d] = np.where(empty, shape[d], offset[:, d] + start)
        local[:, d] = end - start
    return offset, local


@lru_cache(maxsize=4096)
def _dtensor_layout(shape, mesh, pl, dtype, world_size, mesh_ranks, version):
    n = math.prod(mesh)
    at = mesh_ranks or range(n)  # global rank of each row-major mesh position
    chunks: list[tuple[Chunk, ...]] = [()] * world_size
    boxes = _mesh_boxes(shape, mesh, pl, version)
    for i, box in enumerate(boxes.chunks):
        chunks[at[i]] = box
    bad = [at[i] for i in boxes.bad]
    return Layout(
        kind="dtensor",
        shape=shape,
        dtype=dtype,
        world_size=world_size,
        rank_chunks=tuple(chunks),
        mesh_shape=mesh,
        placements=pl,
        per_rank_values=False,
        _misdescribed=tuple(sorted(bad)),
        mesh_ranks=mesh_ranks,
        torch_version=version,
    )


def _mesh_ranks(mesh_ranks, n: int, world_size, fqn) -> tuple[tuple[int, ...] | None, int]:
    """(mesh ranks, world size) checked: ``n`` distinct ranks of the world (the world defaults to
    the highest mesh rank + 1). ``0..n-1`` is stored as None, the default, so equal layouts
    compare and cache equal."""
    if mesh_ranks is None:
        return None, _world(world_size, n, fqn)
    ranks = as_ints(mesh_ranks, "mesh ranks", fqn, LayoutError, "[4, 5, 6, 7]")
    if len(ranks) != n:
        raise LayoutError(
            fqn,
            f"mesh ranks {list(ranks)} name {len(ranks)} ranks for a mesh of {n}",
            f"{n} ranks, one per mesh position in row-major order",
            "Give one global rank per mesh position.",
            mesh_ranks=ranks,
        )
    if len(set(ranks)) != n:
        dup = sorted({r for r in ranks if ranks.count(r) > 1})
        raise LayoutError(
            fqn,
            f"mesh ranks {list(ranks)} repeat ranks {dup}",
            "distinct ranks",
            "Name each global rank once, as DeviceMesh does.",
            mesh_ranks=ranks,
        )
    ws = _world(world_size, n, fqn) if world_size is not None else max(max(ranks) + 1, n)
    if min(ranks) < 0 or max(ranks) >= ws:
        raise LayoutError(
            fqn,
            f"mesh ranks {list(ranks)} are not all in a world of {ws}",
            f"0 <= rank < {ws}",
            "Name only ranks of the world.",
            mesh_ranks=ranks,
            world_size=ws,
        )
    return (None if ranks == tuple(range(n)) else ranks), ws


def _normalized(p: Placement, ndim: int) -> Placement:
    """``p`` with a negative dim in range made non-negative (out-of-range dims are left for
    `_check` to refuse)."""
    if isinstance(p, (Shard, StridedShard)) and -ndim <= p.dim < 0:
        return (
            Shard(p.dim + ndim)
            if isinstance(p, Shard)
            else StridedShard(p.dim + ndim, p.split_factor)
        )
    return p


def dtensor_layout(
    shape: Sequence[int],
    mesh_shape: Sequence[int],
    placements,
    dtype="float32",
    world_size: int | None = None,
    *,
    mesh_ranks: Sequence[int] | None = None,
    fqn: str | None = None,
    torch_version: str | None = None,
) -> Layout:
    """A DTensor of global ``shape`` on a mesh of global ranks ``mesh_ranks`` in row-major mesh
    order (``DeviceMesh("cpu", torch.tensor(mesh_ranks).reshape(mesh_shape))``; default
    ``0..prod(mesh_shape)-1``, e.g. ``range(4, 8)`` for a pipeline stage's submesh); ranks of
    the world (``world_size``, default: the highest mesh rank + 1) outside the mesh hold nothing.
    ``placements`` may be a string (``"S(0), R"``), specs or placement objects.

    Negative shard dims are normalised (``S(-1)`` -> ``S(ndim-1)``), as ``DTensor.from_local``
    and ``distribute_tensor`` do before DCP sees the placements: ``[S(1), S(-1)]`` on a 2-d
    tensor is the nested ``[S(1), S(1)]``, not the raw ``_compute_local_shape_and_global_offset``
    walk that keys its offsets by the raw dim (see `local_shape_and_offset`).

    The boxes are ``torch_version``'s (default `versions.default_torch_version`): planning
    with another ``torch_version`` re-derives them (`for_torch_version`)."""
    version = resolve_torch_version(torch_version)
    pl = parse_placements(placements)
    ndim = len(_shape(shape, "global shape", fqn))
    pl = tuple(_normalized(p, ndim) for p in pl)
    shape, mesh, _, pl = _checked_args(shape, mesh_shape, _NO_COORD, pl, fqn)
    if not shape and any(isinstance(p, (Shard, StridedShard)) for p in pl):
        raise PlacementError(fqn, "a 0-d tensor cannot be sharded", "only R or P on a 0-d tensor")
    dt = canonical_dtype(dtype, fqn)
    _shape(shape, "shape", fqn, LayoutError, DTYPE_SIZES[dt])
    ranks, ws = _mesh_ranks(mesh_ranks, math.prod(mesh), world_size, fqn)
    return _named(fqn, _dtensor_layout, shape, mesh, pl, dt, ws, ranks, version)


def for_torch_version(layout: Layout, torch_version: str | None, *, fqn=None) -> Layout:
    """``layout`` with its DTensor boxes as ``torch_version``'s
    ``compute_local_shape_and_global_offset`` computes them (the same object when they cannot
    differ: not a DTensor, or the same maths); what FSDP2 really holds (``data_held``) is kept."""
    version = resolve_torch_version(torch_version)
    if layout.kind != "dtensor" or layout.torch_version == version:
        return layout
    if layout.torch_version is not None and (
        semantics(layout.torch_version).dtensor_maths == semantics(version).dtensor_maths
        and semantics(layout.torch_version).strided_shard == semantics(version).strided_shard
    ):
        return layout
    base = _named(
        fqn,
        _dtensor_layout,
        layout.shape,
        layout.mesh_shape,
        layout.placements,
        layout.dtype,
        layout.world_size,
        layout.mesh_ranks,
        version,
    )
    return base if layout.data_held is None else _with_held(base, layout.data_held)


def fsdp2_tp_layout(
    shape: Sequence[int],
    mesh_shape: Sequence[int],
    dtype="float32",
    world_size: int | None = None,
    *,
    fqn: str | None = None,
    torch_version: str | None = None,
) -> Layout:
    """A parameter ``parallelize_module`` shards on dim 0 over the last mesh dim (tp) and
    ``fully_shard`` then shards over the dp dim before it: mesh ``(dp, tp)``, or
    ``(replicate, dp, tp)`` for HSDP + TP.

    The placements are FSDP2's (``_fsdp_param._init_sharding_spec_tp``):
    ``[_StridedShard(0, tp), Shard(0)]`` (``Shard(0)`` first when tp == 1), after a
    ``Replicate()`` for HSDP; DCP plans from them, left to right. The data is not:
    ``_fsdp_param._init_sharded_param`` torch.chunks the TP-local tensor (TP's torch.chunk of
    the rows) over dp (``_chunk_with_empty``), right to left. ``data_held`` records those rows; a
    rank whose rows are not its box ``[offset, offset+size)`` is misdescribed (13 rows, dp=3,
    tp=2: rank (2, 0) holds [6] and (2, 1) holds [11, 12]; DCP's boxes are [6:8] and [12:13]).
    """
    mesh = _shape(mesh_shape, "mesh shape", fqn, LayoutError)
    if len(mesh) not in (2, 3):
        raise LayoutError(
            fqn,
            f"mesh shape {mesh} has {len(mesh)} dims",
            "(dp, tp) or (replicate, dp, tp)",
            "Give the FSDP2 + TP mesh, tp last.",
            mesh_shape=mesh,
        )
    tp = mesh[-1]
    pl = (Replicate(),) * (len(mesh) - 2) + (StridedShard(0, tp) if tp > 1 else Shard(0), Shard(0))
    # checks every argument
    base = dtensor_layout(shape, mesh, pl, dtype, world_size, fqn=fqn, torch_version=torch_version)
    return _fsdp2_tp_layout(
        base.shape,
        base.mesh_shape,
        base.placements,
        base.dtype,
        base.world_size,
        base.torch_version,
    )


@lru_cache(maxsize=4096)
def _fsdp2_tp_layout(shape, mesh, pl, dtype, world_size, version):
    base = _dtensor_layout(shape, mesh, pl, dtype, world_size, None, version)
    return _fsdp2_rows(base, len(mesh) - 2, 0)


def with_fsdp2_rows(layout: Layout, dp_mesh_dim: int, shard_dim: int = 0) -> Layout:
    """``layout`` (a DTensor ``fully_shard`` made) with FSDP2's real data in ``data_held``: the
    local tensor of the other placements (TP / EP: the placements with mesh dim ``dp_mesh_dim``
    taken as ``Replicate()``), torch.chunked over mesh dim ``dp_mesh_dim`` on tensor dim
    ``shard_dim`` (``_fsdp_param._init_sharded_param``'s ``_chunk_with_empty``), right to left,
    whatever the ``_StridedShard`` placement at ``dp_mesh_dim`` says. `fsdp2_tp_layout` is the
    common case (dim 0, mesh ``(dp, tp)`` or ``(replicate, dp, tp)``)."""
    if layout.kind != "dtensor":
        raise LayoutError(
            None, f"layout {layout.describe()} is no DTensor", "a DTensor layout", layout=layout
        )
    if not 0 <= dp_mesh_dim < len(layout.mesh_shape) or not 0 <= shard_dim < layout.ndim:
        raise LayoutError(
            None,
            f"FSDP mesh dim {dp_mesh_dim} / tensor dim {shard_dim} for {layout.describe()}",
            "a mesh dim of the layout's mesh and a dim of its tensor",
            dp_mesh_dim=dp_mesh_dim,
            shard_dim=shard_dim,
        )
    return _fsdp2_rows(layout, dp_mesh_dim, shard_dim)


@lru_cache(maxsize=4096)
def _fsdp2_rows(base: Layout, dp: int, shard_dim: int) -> Layout:
    # Layouts hash by identity and equal specs share one cached object, so this caches per spec.
    mesh, shape = base.mesh_shape, base.shape
    others = tuple(Replicate() if m == dp else p for m, p in enumerate(base.placements))
    held: list[dict[int, range | list[int]] | None] = [None] * base.world_size
    for i, r in enumerate(base.mesh_ranks_or_default):
        coord = tuple(int(c) for c in np.unravel_index(i, mesh))
        _, _, real = _walk(shape, mesh, coord, others)  # the TP / EP local tensor's indices
        local = real.get(shard_dim, range(shape[shard_dim]))
        s, e = _chunk_bounds(len(local), mesh[dp], coord[dp])  # FSDP2's torch.chunk over dp
        held[r] = {**real, shard_dim: local[s:e]}
    return _with_held(base, tuple(held))


def with_data_held(layout: Layout, held, *, fqn: str | None = None) -> Layout:
    """``layout`` (a DTensor) whose ranks really hold ``held[r]`` (``{dim: global indices}``, or
    None to follow the placements; a list with one entry per rank of the world or a dict
    ``{rank: ...}``) rather than what the placements say; DCP still plans from the placements,
    and a rank whose box is not its data is misdescribed (see `fsdp2_tp_layout`)."""
    if layout.kind != "dtensor":
        raise LayoutError(fqn, f"data held given for a {layout.kind}", "a DTensor layout")
    ws = layout.world_size
    per = dict(held) if isinstance(held, Mapping) else dict(enumerate(held))
    out: list[dict[int, list[int]] | None] = [None] * ws
    for r, dims in per.items():
        if dims is None:
            continue
        if not (isinstance(r, int) and 0 <= r < ws) or layout.coordinate(r) is None:
            raise LayoutError(
                fqn,
                f"data held names rank {r!r}, outside the mesh at ranks "
                f"{list(layout.mesh_ranks_or_default)}",
                "ranks of the DTensor's mesh",
                "Give data held only for ranks of the mesh.",
                rank=r,
            )
        row = {}
        for d, idx in dims.items():
            try:
                d = operator.index(d)
                idx = [operator.index(i) for i in idx]
            except TypeError:
                raise LayoutError(
                    fqn,
                    f"rank {r}'s data held {{{d!r}: {str(idx)[:40]}}} is not dim -> indices",
                    "{dim: [global indices]}",
                    rank=r,
                ) from None
            if not 0 <= d < layout.ndim or any(not 0 <= i < layout.shape[d] for i in idx):
                raise LayoutError(
                    fqn,
                    f"rank {r}'s data held on dim {d} is not in a tensor of shape {layout.shape}",
                    "a dim of the tensor and indices in [0, size)",
                    rank=r,
                )
            row[d] = idx
        out[r] = row
    return _with_held(layout, tuple(out))


def _with_held(base: Layout, held: tuple) -> Layout:
    """``base`` with ``data_held`` and its misdescribed ranks (a box that is not the data)."""
    bad = []
    for r, rows in enumerate(held):
        if rows is None or not base.chunks(r):
            continue
        (box,) = base.chunks(r)
        held_volume = math.prod(len(rows[d]) if d in rows else n for d, n in enumerate(base.shape))
        if box.volume == 0 and held_volume == 0:
            continue
        for d, idx in rows.items():
            want = range(box.offsets[d], box.offsets[d] + box.sizes[d])
            # range equality compares the index sequences: another start or count differs
            if (idx != want) if isinstance(idx, range) else (list(idx) != list(want)):
                bad.append(r)
                break
    return replace(base, _misdescribed=tuple(bad), data_held=held)


def _checked_world_size(world_size, fqn) -> int:
    ws = int(world_size)
    if ws < 1:
        raise LayoutError(fqn, f"world size {ws} is below 1", "world_size >= 1", world_size=ws)
    return ws


def _holders(ranks, ws: int, fqn) -> set[int]:
    """The ranks holding an entry: all of ``range(ws)`` by default, else ``ranks`` (each in it)."""
    holders = set(range(ws)) if ranks is None else set(int(r) for r in ranks)
    if any(not 0 <= r < ws for r in holders):
        raise LayoutError(
            fqn,
            f"ranks {sorted(holders)} are not all in a world of {ws}",
            f"0 <= rank < {ws}",
            "Name only ranks of the world.",
            world_size=ws,
        )
    return holders


def tensor_layout(
    shape: Sequence[int],
    world_size: int,
    dtype="float32",
    *,
    ranks: Iterable[int] | None = None,
    per_rank_values: bool = False,
    fqn: str | None = None,
) -> Layout:
    """A plain ``torch.Tensor`` of ``shape`` held whole by every rank (or by ``ranks``)."""
    dt = canonical_dtype(dtype, fqn)
    shape = _shape(shape, "shape", fqn, LayoutError, DTYPE_SIZES[dt])
    ws = _checked_world_size(world_size, fqn)
    holders = _holders(ranks, ws, fqn)
    full = (Chunk((0,) * len(shape), shape),)
    rc = tuple(full if r in holders else () for r in range(ws))
    return Layout(
        kind="tensor",
        shape=shape,
        dtype=dt,
        world_size=ws,
        rank_chunks=rc,
        per_rank_values=per_rank_values,
    )


def sharded_layout(
    shape: Sequence[int],
    rank_chunks,
    dtype="float32",
    world_size: int | None = None,
    *,
    fqn: str | None = None,
) -> Layout:
    """ShardedTensor-style explicit chunks: ``rank_chunks`` is a list (one entry per rank) or a
    dict ``{rank: [chunk, ...]}``; a chunk is a `Chunk` or an ``(offsets, sizes)`` pair."""
    dt = canonical_dtype(dtype, fqn)
    shape = _shape(shape, "shape", fqn, LayoutError, DTYPE_SIZES[dt])
    if isinstance(rank_chunks, dict):
        ranks = list(rank_chunks)
        ws = _checked_world_size(
            world_size if world_size is not None else max(max(ranks, default=0) + 1, 1), fqn
        )
        _holders(ranks, ws, fqn)
        per = [rank_chunks.get(r, ()) for r in range(ws)]
    else:
        per = list(rank_chunks)
        ws = _checked_world_size(world_size if world_size is not None else max(len(per), 1), fqn)
        if len(per) > ws:
            raise LayoutError(
                fqn,
                f"rank_chunks lists {len(per)} ranks for a world of {ws}",
                f"at most {ws} entries",
                "Pass world_size >= the ranks listed.",
                world_size=ws,
            )
        per += [()] * (ws - len(per))
    out = []
    for r, cs in enumerate(per):
        row = []
        for c in cs:
            try:
                c = as_chunk(c)
            except (ChunkError, TypeError, ValueError) as e:
                what = (
                    e.what if isinstance(e, ChunkError) else f"chunk {c!r} is not (offsets, sizes)"
                )
                expect = (
                    e.expectation
                    if isinstance(e, ChunkError) and e.expectation
                    else "a Chunk or an (offsets, sizes) pair"
                )
                raise LayoutError(
                    fqn,
                    f"rank {r}'s {what}",
                    expect,
                    "Give every chunk as Chunk(offsets, sizes).",
                    chunk=c,
                ) from None
            if c.ndim != len(shape):
                raise LayoutError(
                    fqn,
                    f"rank {r}'s chunk {c} has {c.ndim} dims for a tensor of shape {shape}",
                    "chunks of the tensor's rank",
                    chunk=c,
                    shape=shape,
                )
            row.append(c)
        out.append(tuple(row))
    return Layout(kind="sharded", shape=shape, dtype=dt, world_size=ws, rank_chunks=tuple(out))


def bytes_layout(
    world_size: int, *, ranks: Iterable[int] | None = None, per_rank_values: bool = False
) -> Layout:
    """A non-tensor entry (int, dict, BytesIO...) saved as BYTE_IO by every rank (or ``ranks``)."""
    ws = _checked_world_size(world_size, None)
    holders = _holders(ranks, ws, None)
    rc = tuple((Chunk((), ()),) if r in holders else () for r in range(ws))
    return Layout(
        kind="bytes",
        shape=(),
        dtype="uint8",
        world_size=ws,
        rank_chunks=rc,
        per_rank_values=per_rank_values,
    )


# ----------------------------------------------------------------------------- one rank's value
@dataclass(frozen=True, slots=True)
class RankValue:
    """One state-dict value as rank ``rank`` sees it: a `Layout` plus the rank.

    A ``"dtensor"`` layout is a DTensor (its one chunk; no chunk outside the mesh), ``"sharded"`` a
    ShardedTensor (the rank's local shards, possibly none), ``"tensor"`` a plain tensor (the full
    box) and ``"bytes"`` a non-tensor value (planned as BYTE_IO). A plain tensor or bytes entry on
    a rank that does not hold it is *absent* from that rank's state dict: planners skip it.
    ``properties`` overrides the ``TensorProperties`` derived from the layout's dtype (set when
    converted from a real tensor, so ``requires_grad`` etc. survive).
    """

    layout: Layout
    rank: int
    properties: TensorProperties | None = None

    def __post_init__(self):
        if not isinstance(self.layout, Layout):
            raise PlanError(
                None,
                f"RankValue got {type(self.layout).__name__} instead of a Layout",
                "a workbench Layout",
                "Build one with dtensor_layout / tensor_layout / sharded_layout / bytes_layout.",
            )
        if not 0 <= self.rank < self.layout.world_size:
            raise PlanError(
                None,
                f"rank {self.rank} is outside the layout's world of {self.layout.world_size} ranks",
                f"0 <= rank < {self.layout.world_size}",
                rank=self.rank,
                world_size=self.layout.world_size,
            )

    @property
    def kind(self) -> str:
        return self.layout.kind

    def size(self) -> tuple[int, ...]:
        """The global shape, like ``Tensor.size()``."""
        return self.layout.shape

    def chunks(self) -> tuple[Chunk, ...]:
        return self.layout.chunks(self.rank)

    @property
    def in_mesh(self) -> bool:
        """For a DTensor: whether ``mesh.get_coordinate()`` would be non-None on this rank."""
        return self.layout.coordinate(self.rank) is not None

    @property
    def absent(self) -> bool:
        """A plain tensor / bytes value this rank does not hold (not in its state dict)."""
        return self.kind in ("tensor", "bytes") and not self.chunks()

    def tensor_properties(self) -> TensorProperties:
        return (
            self.properties if self.properties is not None else TensorProperties(self.layout.dtype)
        )


def chunk_holders(layout: Layout) -> dict[Chunk, tuple[int, ...]]:
    """Every distinct box of a layout -> the ranks holding (requesting) it, ascending; boxes in
    order of first appearance (rank, then chunk). Replicas are the boxes with more than one
    holder.
    (The replicas column of `tables.layout_chunks_table`.)"""
    holders: dict[Chunk, list[int]] = defaultdict(list)
    for r, chunks in enumerate(layout.rank_chunks):
        for c in chunks:
            holders[c].append(r)
    return {c: tuple(rs) for c, rs in holders.items()}


def check_load_rank(rank: int, world: int, fqn: str | None = None, what: str = "rank") -> int:
    """``rank`` when it is a rank of a load world of ``world`` ranks, else a `PlanError`."""
    if not 0 <= rank < world:
        raise PlanError(
            fqn,
            f"{what} {rank} is not in the load world of {world} ranks",
            f"0 <= rank < {world}",
            "Pick a rank of the load world.",
            rank=rank,
        )
    return rank
