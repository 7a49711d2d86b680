"""What a user holds in this process, described for every rank: a module, ``(model,
optimizer)``, a list of pipeline-stage modules or the (nested) state dict given to ``dcp.save`` /
``dcp.load``, built in the notebook (real meta or CPU tensors) or under the fake process group as
rank r.

`state_dict_of` turns the held object into the state dict DCP is given, as capture reads a
``build()``'s result (``get_model_state_dict`` / ``get_state_dict``). `rank_layouts` describes
the flattened entries of this one rank for the whole world: a DTensor from its mesh and
placements (FSDP2's real rows where ``fully_shard`` on a DTensor says otherwise, read from the
modules' own ``FSDPParam``), a ShardedTensor from its global shard metadata, a plain tensor or a
non-tensor value held by every rank. What one rank cannot tell -- per-rank values, keys that
only some ranks hold -- is what `capture.capture` runs more ranks for.

The flattening itself is the workbench's mirror (`workbench.sources.held_layouts`). Imports the
core records only; `capture` builds on it.

Lazy imports: torch inside functions only (the caller holds torch objects, so torch is loaded
already).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import CaptureError, PlanError
from ..records import canonical_dtype
from ..sharding import (
    Layout,
    Placement,
    bytes_layout,
    dtensor_layout,
    sharded_layout,
    tensor_layout,
    with_fsdp2_rows,
)

__all__ = [
    "state_dict_of",
    "rank_layouts",
    "flatten_sharded_tensors",
    "RankEntry",
    "FsdpParam",
    "rank_entries",
    "fsdp_params",
    "layout_of_entries",
]


def state_dict_of(held):
    """(the state dict DCP is given, the modules in it) for a module, ``(model, optimizer)``
    (``{"model": ..., "optim": ...}`` as ``get_state_dict`` gives them), a list of this rank's
    pipeline-stage modules (merged as torchtitan's ``ModelWrapper`` does) or a mapping (as is);
    None for anything else."""
    from torch import nn
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict
    from torch.optim import Optimizer

    if isinstance(held, nn.Module):
        return get_model_state_dict(held), [held]
    if (
        isinstance(held, (tuple, list))
        and len(held) == 2
        and isinstance(held[0], nn.Module)
        and isinstance(held[1], Optimizer)
    ):
        model_sd, optim_sd = get_state_dict(held[0], held[1])
        return {"model": model_sd, "optim": optim_sd}, [held[0]]
    if isinstance(held, (tuple, list)) and held and all(isinstance(m, nn.Module) for m in held):
        sd = {}
        for m in held:
            sd.update(get_model_state_dict(m))
        return sd, list(held)
    if isinstance(held, Mapping):
        return held, [v for v in held.values() if isinstance(v, nn.Module)]
    return None


def flatten_sharded_tensors(state_dict: dict) -> dict:
    """torch's ``_flatten_sharded_tensors`` (2D FSDP's nested ShardedTensors) when a value is a
    ShardedTensor; the state dict itself otherwise (torch returns a copy; nothing here mutates)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if not any(isinstance(v, ShardedTensor) for v in state_dict.values()):
        return state_dict
    from torch.distributed.checkpoint._sharded_tensor_utils import _flatten_sharded_tensors

    return _flatten_sharded_tensors(state_dict)


def _process_group_size() -> int | None:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else None


def rank_layouts(flat: Mapping, modules, world_size: int | None) -> tuple[dict[str, Layout], int]:
    """``{fqn: Layout}`` for the world from one rank's flattened state dict (Layout values kept)
    and the world size: ``world_size``, else the Layouts', else the process group's, else the
    DTensors' meshes (their highest rank + 1); one `PlanError` when nothing says and a plain
    tensor or a non-tensor value needs it."""
    torch_flat = {k: v for k, v in flat.items() if not isinstance(v, Layout)}
    entries = {e.fqn: e for e in rank_entries(torch_flat, digests=False)}
    ws = _world_size(flat, entries, world_size)
    fsdp = {f.key(): f for f in fsdp_params(modules)} if modules else {}
    out = {}
    for fqn, value in flat.items():
        if isinstance(value, Layout):
            out[fqn] = value
            continue
        e = entries[fqn]
        if e.kind == "sharded":
            lay = e.layout
            out[fqn] = sharded_layout(lay.shape, list(lay.rank_chunks), lay.dtype, ws, fqn=fqn)
            continue
        holders = list(e.mesh_ranks) if e.kind == "dtensor" else list(range(ws))
        out[fqn] = layout_of_entries(fqn, [e], holders, ws, fsdp)
    return out, ws


def _world_size(flat: Mapping, entries: Mapping, world_size: int | None) -> int:
    sizes = {v.world_size for v in flat.values() if isinstance(v, Layout)}
    mesh_top = max(
        (max(e.mesh_ranks) + 1 for e in entries.values() if e.kind == "dtensor"), default=0
    )
    sharded_top = max(
        (len(e.layout.rank_chunks) for e in entries.values() if e.kind == "sharded"), default=0
    )
    if world_size is not None:
        ws = world_size
    elif sizes:
        ws = min(sizes)  # several sizes are reported below
    else:
        ws = _process_group_size() or (max(mesh_top, sharded_top) or None)
    if ws is None:
        plain = [f for f, e in entries.items() if e.kind in ("tensor", "bytes")]
        raise PlanError(
            plain[0] if plain else None,
            f"{len(plain)} plain tensor(s) / non-tensor value(s) ({', '.join(plain[:3])}"
            f"{', ...' if len(plain) > 3 else ''}) and no DTensor, Layout or process group say "
            "how many ranks hold them",
            "the number of ranks of the job",
            "Pass world_size=N, e.g. plan_load(md, model.state_dict(), world_size=8).",
        )
    bad_sizes = sorted(s for s in sizes if s != ws)
    if bad_sizes:
        raise PlanError(
            None,
            f"layouts of world size {bad_sizes} beside a world of {ws}",
            "one world size for the whole state dict",
            "Build every layout for the same number of ranks, or pass that world_size.",
        )
    if max(mesh_top, sharded_top) > ws:
        fqn = next(
            f
            for f, e in entries.items()
            if (e.kind == "dtensor" and max(e.mesh_ranks) >= ws)
            or (e.kind == "sharded" and len(e.layout.rank_chunks) > ws)
        )
        raise PlanError(
            fqn,
            f"held on rank {max(mesh_top, sharded_top) - 1}, outside a world of {ws}",
            "every mesh rank below the world size",
            f"Pass world_size={max(mesh_top, sharded_top)} or more.",
        )
    return ws


# ----------------------------------------------------------------------------- one rank's entries
_DIGEST_LIMIT = 1 << 26  # tensors up to 64 MiB are hashed to tell per-rank values apart


@dataclass(frozen=True, slots=True)
class RankEntry:
    """One flattened state-dict entry as one rank holds it. ``kind``: ``dtensor`` / ``tensor`` /
    ``sharded`` / ``bytes``; DTensor: global ``shape``, ``mesh_shape``, ``mesh_ranks`` (global,
    row-major), ``placements``, ``local_shape`` (the real local tensor's); ``digest``: a hash of
    the values (plain tensors off the meta device, bytes entries) to tell per-rank values apart;
    ``layout``: a ShardedTensor's global layout; ``slices``: every slice of the DTensor mesh's
    root mesh along the same dims (``mesh["dp"]`` of a ``(dp, ep)`` mesh: one per ep index),
    the ranks of each in row-major order."""

    fqn: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    mesh_shape: tuple[int, ...] | None = None
    mesh_ranks: tuple[int, ...] | None = None
    placements: tuple[Placement, ...] | None = None
    local_shape: tuple[int, ...] | None = None
    digest: str | None = None
    layout: Layout | None = None
    slices: tuple[tuple[int, ...], ...] | None = None

    def spec(self) -> tuple:
        """What must be equal on every rank holding the entry (not the values, the local part,
        or which slice of the root mesh the rank's DTensor mesh is)."""
        if self.kind == "sharded":
            return (self.kind, self.shape, self.dtype, self.layout.rank_chunks)
        return (self.kind, self.shape, self.dtype, self.mesh_shape, self.placements)


@dataclass(frozen=True, slots=True)
class FsdpParam:
    """A parameter ``fully_shard`` manages as a DTensor of other placements (TP, EP): its sharded
    DTensor's spec, the mesh dim FSDP2 shards over and the tensor dim it shards."""

    shape: tuple[int, ...]
    mesh_shape: tuple[int, ...]
    mesh_ranks: tuple[int, ...]
    placements: tuple[Placement, ...]
    dp_mesh_dim: int
    shard_dim: int

    def key(self) -> tuple:
        return (self.shape, self.mesh_shape, self.placements)


def _dtype(dt) -> str:
    return canonical_dtype(str(dt))


def _digest_tensor(t) -> str | None:
    import torch

    if t.is_meta or t.numel() * t.element_size() > _DIGEST_LIMIT:
        return None
    raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha1(raw).hexdigest()


def _digest_object(v) -> str:
    import io

    if isinstance(v, io.BytesIO):
        raw = v.getvalue()
    else:
        try:
            raw = pickle.dumps(v)
        except Exception:  # an unpicklable object: torch.save would fail too; compare reprs
            raw = repr(v).encode()
    return hashlib.sha1(raw).hexdigest()


def _entry(fqn: str, v, slices: dict | None = None, digests: bool = True) -> RankEntry:
    import torch
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    from ..sharding import as_placement
    from .convert import layout_from_torch

    if isinstance(v, DTensor):
        mesh = v.device_mesh
        return RankEntry(
            fqn,
            "dtensor",
            tuple(v.shape),
            _dtype(v.dtype),
            mesh_shape=tuple(mesh.shape),
            mesh_ranks=_ranks(mesh) if slices is None else _memo(slices, ("r", mesh), _ranks),
            placements=tuple(as_placement(p) for p in v.placements),
            local_shape=tuple(v._local_tensor.shape),
            slices=_slices(mesh) if slices is None else _memo(slices, mesh, _slices),
        )
    if isinstance(v, ShardedTensor):
        lay = layout_from_torch(v)
        return RankEntry(fqn, "sharded", lay.shape, lay.dtype, layout=lay)
    if isinstance(v, torch.Tensor):
        digest = _digest_tensor(v) if digests else None
        return RankEntry(fqn, "tensor", tuple(v.shape), _dtype(v.dtype), digest=digest)
    return RankEntry(fqn, "bytes", (), "uint8", digest=_digest_object(v) if digests else None)


def _memo(cache: dict, obj, fn):
    """``fn(mesh)`` once per mesh object (``obj``: a mesh, or ``(tag, mesh)``)."""
    mesh = obj[1] if isinstance(obj, tuple) else obj
    key = (obj[0], id(mesh)) if isinstance(obj, tuple) else id(mesh)
    if key not in cache:
        cache[key] = (mesh, fn(mesh))  # the mesh kept alive so its id is not reused
    return cache[key][1]


def _ranks(mesh) -> tuple[int, ...]:
    return tuple(int(r) for r in mesh.mesh.flatten().tolist())


def _slices(mesh) -> tuple[tuple[int, ...], ...]:
    """Every slice of ``mesh``'s root mesh along ``mesh``'s dims (by name), ``mesh`` among them;
    just ``mesh`` when it is the root or not a plain slice of it (flattened dims)."""
    own = tuple(int(r) for r in mesh.mesh.flatten().tolist())
    get_root = getattr(mesh, "_get_root_mesh", None)
    root = get_root() if callable(get_root) else None
    names = mesh.mesh_dim_names
    root_names = getattr(root, "mesh_dim_names", None)
    if root is None or root is mesh or not names or not root_names:
        return (own,)
    if any(n not in root_names for n in names):
        return (own,)
    dims = [root_names.index(n) for n in names]
    rest = [d for d in range(root.mesh.ndim) if d not in dims]
    arr = root.mesh.permute(*rest, *dims).reshape(-1, *[root.mesh.shape[d] for d in dims])
    out = tuple(tuple(int(r) for r in a.flatten().tolist()) for a in arr)
    return out if own in out else (own,)


def rank_entries(flat, digests: bool = True) -> tuple[RankEntry, ...]:
    """One rank's flattened state dict as `RankEntry` records, in its order; ``digests``: hash
    plain tensors' and non-tensor values' contents (to tell per-rank values apart)."""
    slices: dict[int, tuple] = {}  # per mesh object: many tensors share a few meshes
    return tuple(_entry(k, v, slices, digests) for k, v in flat.items())


def _fsdp_param(fp, cache: dict) -> FsdpParam | None:
    """What FSDP2 did to one parameter, from its ``FSDPParam`` (torch 2.13's
    ``_fsdp_param.py``): only DTensor parameters (TP / EP before FSDP) sharded over one mesh
    dim; plain parameters' data is what their placements say."""
    from ..sharding import as_placement

    info = fp.mesh_info
    if not getattr(fp, "is_dtensor", False) or not hasattr(info, "shard_mesh_size"):
        return None
    spmd = tuple(fp._spmd_placements)
    if getattr(info, "is_spmd_mesh", False):
        names = info.dp_mesh_dims.shard_names
        if len(names) != 1:  # several dp dims flattened into one: not modelled
            return None
        dp = tuple(fp._spmd_mesh.mesh_dim_names).index(names[0])
    else:  # (replicate,) + (fsdp, *tp_placements), see _init_sharding_spec_tp
        dp = len(spmd) - len(fp._unsharded_dtensor_spec.placements) - 1
    p = fp.sharded_param
    return FsdpParam(
        tuple(p.shape),
        tuple(p.device_mesh.shape),
        _memo(cache, ("r", p.device_mesh), _ranks),
        tuple(as_placement(x) for x in p.placements),
        dp,
        int(fp.fsdp_placement.dim),
    )


def fsdp_params(modules) -> tuple[FsdpParam, ...]:
    """What ``fully_shard`` did to the DTensor parameters of ``modules`` (one per spec)."""
    out, seen, cache = [], set(), {}
    for root in modules:
        for m in root.modules():
            get = getattr(m, "_get_fsdp_state", None)
            group = getattr(get(), "_fsdp_param_group", None) if callable(get) else None
            for fp in getattr(group, "fsdp_params", ()) or ():
                p = fp.sharded_param  # one spec per (shape, mesh, placements), read once
                key = (tuple(p.shape), id(p.device_mesh), tuple(p.placements))
                if key in seen:
                    continue
                seen.add(key)
                spec = _fsdp_param(fp, cache)
                if spec is not None:
                    out.append(spec)
    return tuple(out)


def layout_of_entries(fqn, entries, holders, world_size, fsdp) -> Layout:
    """The layout of ``fqn`` for the world from the entries of the ranks run (one spec on every
    holder), its ``holders`` and FSDP2's parameters (``{FsdpParam.key(): FsdpParam}``)."""
    first = entries[0]
    specs = {e.spec() for e in entries}
    if len(specs) > 1:
        raise CaptureError(
            fqn,
            f"entry differs between ranks: {sorted(map(str, specs))[:2]}",
            "one global shape, dtype, mesh and placements on every rank holding it",
            "Check that every rank builds the same model part for this key.",
        )
    if first.kind == "dtensor":
        lay, extra = _dtensor(fqn, entries, holders, world_size)
        spec = fsdp.get((first.shape, first.mesh_shape, first.placements))
        if spec is not None:
            return _with_rows_if_other(lay, spec.dp_mesh_dim + extra, spec.shard_dim)
        return lay
    if first.kind == "sharded":
        return first.layout
    per_rank = len({e.digest for e in entries if e.digest is not None}) > 1
    if first.kind == "tensor":
        return tensor_layout(
            first.shape, world_size, first.dtype, ranks=holders, per_rank_values=per_rank, fqn=fqn
        )
    return bytes_layout(world_size, ranks=holders, per_rank_values=per_rank)


@functools.lru_cache(maxsize=4096)
def _with_rows_if_other(lay: Layout, dp_mesh_dim: int, shard_dim: int) -> Layout:
    """``lay`` with FSDP2's real rows where they are not what its placements say (layouts are
    cached per spec and hash by identity: one comparison per spec, not per tensor)."""
    rows = with_fsdp2_rows(lay, dp_mesh_dim, shard_dim)
    if any(rows.held_indices(r) != lay.held_indices(r) for r in lay.holders()):
        return rows
    return lay


def _dtensor(fqn, entries, holders, world_size) -> tuple[Layout, int]:
    """The layout of a DTensor every holder has with one spec, on the slices of the root mesh
    that its holders are in: one slice is the DTensor's own mesh (a pipeline stage's submesh
    stays one); several (FSDP over ``mesh["dp"]`` of a ``(dp, ep)`` mesh: each ep index has its
    own dp group holding the whole tensor) become one mesh ``(copies, *mesh)`` with a leading
    ``Replicate()``, whose chunks are exactly each slice's. Returns (layout, mesh dims added)."""
    first = entries[0]
    slices = {e.mesh_ranks for e in entries}
    for e in entries:
        slices.update(e.slices or ())
    held = set(holders)
    used = sorted(s for s in slices if held.intersection(s))
    stray = sorted(held.difference(r for s in used for r in s))
    short = sorted(set(r for s in used for r in s) - held)
    if stray or short:
        raise CaptureError(
            fqn,
            f"DTensor on meshes {used} is held by ranks {sorted(held)}",
            "every rank of each mesh holding it, and only those",
            "Pass ranks='all' to run every rank.",
        )
    if len(used) == 1:
        mesh, placements, ranks, extra = first.mesh_shape, first.placements, used[0], 0
    else:
        from ..sharding import Replicate

        mesh = (len(used), *first.mesh_shape)
        placements = (Replicate(), *first.placements)
        ranks, extra = tuple(r for s in used for r in s), 1
    lay = dtensor_layout(
        first.shape, mesh, placements, first.dtype, world_size, mesh_ranks=ranks, fqn=fqn
    )
    return lay, extra
