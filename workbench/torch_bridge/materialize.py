"""Real torch objects from layouts: the DTensors, ShardedTensors, plain tensors and bytes values
of one rank's state dict, filled with values that encode their global index (or left empty on a
device such as ``meta``), on the device meshes of the current process group.

Shared by the harness that runs torch (`runs`: real gloo save / load, `fake_pg`: torch's planners
under the fake process group). Lazy imports: torch is imported inside functions only.
"""

from __future__ import annotations

import math

from ..sharding import Layout

__all__ = [
    "global_values",
    "local_values",
    "bytes_value",
    "Meshes",
    "torch_state_dict",
    "exception_text",
]

_FLOATS = {"float64", "float32", "float16", "bfloat16"}


def global_values(layout: Layout, rank: int = 0, dtype: str | None = None):
    """The global tensor a rank saves for ``layout`` (torch tensor): element ``i`` (flat, row-major)
    is ``i`` (+ 0.25 for floating dtypes, + ``rank * numel`` when ``per_rank_values``), cast to
    ``dtype`` (the layout's by default)."""
    import torch

    dtype = dtype or layout.dtype
    v = torch.arange(layout.numel, dtype=torch.float64).reshape(layout.shape)
    if dtype in _FLOATS:
        v += 0.25
    if layout.per_rank_values:
        v += rank * max(layout.numel, 1)
    return v.to(getattr(torch, dtype))


def bytes_value(fqn: str, layout: Layout, rank: int) -> str:
    """The value a bytes entry holds on ``rank``: its fqn, with the rank when values differ."""
    return f"{fqn}@rank{rank}" if layout.per_rank_values else fqn


def local_values(layout: Layout, rank: int, g):
    """What ``rank`` really holds of global tensor ``g``: a DTensor's held indices (the real data
    of a ``_StridedShard``, not DCP's box); a ShardedTensor's chunks; the whole plain tensor."""
    import torch

    if layout.kind == "dtensor":
        for d, idx in layout.held_indices(rank).items():
            g = g.index_select(d, torch.tensor(idx, dtype=torch.long))
        return g.contiguous()
    if layout.kind == "sharded":
        out = []
        for c in layout.chunks(rank):
            t = g
            for d, (o, s) in enumerate(zip(c.offsets, c.sizes)):
                t = t.narrow(d, o, s)
            out.append(t.contiguous())
        return out
    return g


class Meshes:
    """One DeviceMesh per (mesh shape, mesh ranks) of the DTensor layouts, built on every rank,
    in the mesh or not (new_group is collective)."""

    def __init__(self):
        self.cache = {}

    def get(self, layout: Layout):
        import torch
        from torch.distributed.device_mesh import DeviceMesh

        key = (layout.mesh_shape, layout.mesh_ranks_or_default)
        if key not in self.cache:
            self.cache[key] = DeviceMesh("cpu", torch.tensor(key[1]).reshape(key[0]))
        return self.cache[key]


def _sharded_tensor(layout: Layout, rank: int, local):
    """A ShardedTensor from every rank's chunks (the global metadata is known on every rank, so
    no collective is needed: ``_init_from_local_shards_and_global_metadata``)."""
    import torch
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
    from torch.distributed._shard.sharded_tensor.metadata import (
        ShardedTensorMetadata,
        TensorProperties,
    )

    device = local[0].device.type if local else "cpu"

    def md(r, c):
        return ShardMetadata(list(c.offsets), list(c.sizes), f"rank:{r}/{device}")

    everyone = [md(r, c) for r in range(layout.world_size) for c in layout.chunks(r)]
    props = TensorProperties(dtype=getattr(torch, layout.dtype))
    shards = [Shard(t, md(rank, c)) for t, c in zip(local, layout.chunks(rank))]
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        shards, ShardedTensorMetadata(everyone, torch.Size(layout.shape), props)
    )


def _build(
    fqn: str,
    layout: Layout,
    rank: int,
    meshes: Meshes,
    fill: float | None = None,
    empty: str | None = None,
):
    """The state-dict value of ``rank`` for one entry: the encoded values; ``fill`` everywhere
    (a load destination); or, with ``empty`` (a device, e.g. ``"meta"``), uninitialised local
    tensors (planning only)."""
    import torch
    from torch.distributed.tensor import DTensor

    from .convert import placement_to_torch

    if layout.kind == "bytes":
        return "<not loaded>" if fill is not None else bytes_value(fqn, layout, rank)
    dt = getattr(torch, layout.dtype)
    if layout.kind == "dtensor" and not layout.chunks(rank):
        # a rank outside the mesh still holds the DTensor (torch plans nothing for it, but the
        # key is in its state dict); from_local needs a 0-d local tensor for a 0-d DTensor
        local = torch.empty((0,) if layout.ndim else (), dtype=dt, device=empty or "cpu")
    elif empty:
        local = [torch.empty(c.sizes, dtype=dt, device=empty) for c in layout.chunks(rank)]
        local = local if layout.kind == "sharded" else local[0]
    else:
        g = (
            global_values(layout, rank)
            if fill is None
            else torch.full(layout.shape, fill, dtype=torch.float64).to(dt)
        )
        local = local_values(layout, rank, g)
    if layout.kind == "dtensor":
        mesh = meshes.get(layout)
        stride = tuple(math.prod(layout.shape[d + 1 :]) for d in range(layout.ndim))
        return DTensor.from_local(
            local,
            mesh,
            [placement_to_torch(p) for p in layout.placements],
            run_check=False,
            shape=torch.Size(layout.shape),
            stride=stride,
        )
    if layout.kind == "sharded":
        return _sharded_tensor(layout, rank, local)
    return local


def torch_state_dict(layouts, rank, meshes, fill=None, empty=None):
    # Every rank takes part in every mesh (DeviceMesh creation is collective), even for entries
    # it does not hold.
    for lay in layouts.values():
        if lay.kind == "dtensor":
            meshes.get(lay)
    # DTensors and ShardedTensors are in every rank's state dict (with an empty local part where
    # the rank holds nothing), as in real programs; plain tensors and bytes only on their holders.
    # Exception: for the fake process group (``empty`` set) a ShardedTensor without local shards
    # is left out, because torch asks such a tensor for its device through
    # torch.cuda.current_device() unless the group's backend is gloo.
    return {
        fqn: _build(fqn, lay, rank, meshes, fill, empty)
        for fqn, lay in layouts.items()
        if lay.chunks(rank) or lay.kind == "dtensor" or (lay.kind == "sharded" and not empty)
    }


def exception_text(e: BaseException) -> str:
    """An exception as torch users see it: ``"ValueError: message"``."""
    return f"{type(e).__name__}: {e}"
