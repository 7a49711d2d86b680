"""Test support on the torch side (torch-free helpers are in support.py): torch's planners per
rank under the ``fake`` process group (``fake_rank``) on torch state dicts built here,
independently of workbench.torch_bridge (``torch_state_dict``, ``torch_save``, ``torch_load``),
and small torch builders (``real_dtensor``, ``torch_tensor_md``, ``T``).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import torch
import torch.distributed as dist
from support import expected_per_rank, read_key
from torch.distributed.checkpoint import metadata as tmeta
from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans
from torch.distributed.checkpoint.default_planner import (
    _validate_global_plan,
    create_default_global_save_plan,
    create_default_local_load_plan,
    create_default_local_save_plan,
)
from torch.distributed.checkpoint.planner import WriteItem, WriteItemType
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import (
    _compute_local_shape_and_global_offset,
    compute_local_shape_and_global_offset,
)
from torch.distributed.tensor.placement_types import Partial as TPartial
from torch.distributed.tensor.placement_types import Replicate as TReplicate
from torch.distributed.tensor.placement_types import Shard as TShard
from torch.distributed.tensor.placement_types import _StridedShard
from torch.testing._internal.distributed.fake_pg import FakeStore

from workbench.sharding import (
    Partial,
    Replicate,
    Shard,
)
from workbench.torch_bridge.convert import to_torch


# ----------------------------------------------------------------------------- torch side
@contextlib.contextmanager
def fake_rank(rank, world_size):
    """torch's ``fake`` process group as rank ``rank``: DTensors and DCP's planners run as that
    rank would, with no other process (torch's warnings about it silenced)."""
    dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dist.destroy_process_group()


def torch_placement(p):
    if isinstance(p, Shard):
        return TShard(p.dim)
    if isinstance(p, Replicate):
        return TReplicate()
    if isinstance(p, Partial):
        return TPartial()
    return _StridedShard(p.dim, split_factor=p.split_factor)


class ShardedStandIn:
    """What a ShardedTensor gives DCP: SHARD write items and chunks for its local shards
    (torch's ``_create_write_item_for_shard`` / ``_chunk_for_shard``) and the global ``size()``."""

    def __init__(self, shape, chunks, dtype):
        self._shape, self._chunks = torch.Size(shape), chunks
        self._props = tmeta.TensorProperties(dtype=dtype)

    def size(self):
        return self._shape

    def __create_chunk_list__(self):
        return [
            tmeta.ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes))
            for c in self._chunks
        ]

    def __create_write_items__(self, fqn, obj):
        from torch.distributed.checkpoint.planner import TensorWriteData

        return [
            WriteItem(
                index=tmeta.MetadataIndex(fqn, torch.Size(c.offsets)),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(chunk=c, properties=self._props, size=self._shape),
            )
            for c in self.__create_chunk_list__()
        ]


def torch_value(lay, rank, meshes):
    """Rank ``rank``'s value for a layout, or None when the key is absent from its state dict."""
    dtype = getattr(torch, lay.dtype)
    if lay.kind == "bytes":
        return io.BytesIO(b"value") if lay.rank_chunks[rank] else None
    if lay.kind == "tensor":
        return torch.empty(lay.shape, dtype=dtype, device="meta") if lay.rank_chunks[rank] else None
    if lay.kind == "sharded":
        return ShardedStandIn(lay.shape, lay.rank_chunks[rank], dtype)
    mesh = meshes.get(lay.mesh_shape)
    if mesh is None:
        n = 1
        for m in lay.mesh_shape:
            n *= m
        mesh = meshes[lay.mesh_shape] = DeviceMesh("cpu", torch.arange(n).reshape(lay.mesh_shape))
    pl = [torch_placement(p) for p in lay.placements]
    # from_local treats an empty shape as "not given" and infers it from the local tensor, so a
    # 0-d DTensor needs a 0-d local tensor even on a rank outside the mesh
    local = (0,) if lay.shape else ()
    if mesh.get_coordinate() is not None:
        local, _ = compute_local_shape_and_global_offset(lay.shape, mesh, pl)
    stride = [1] * len(lay.shape)
    for d in range(len(lay.shape) - 2, -1, -1):
        stride[d] = stride[d + 1] * max(lay.shape[d + 1], 1)
    return DTensor.from_local(
        torch.empty(local, dtype=dtype, device="meta"),
        mesh,
        pl,
        run_check=False,
        shape=torch.Size(lay.shape),
        stride=tuple(stride),
    )


def torch_state_dict(layouts, rank):
    meshes = {}
    sd = {}
    for fqn, lay in layouts.items():
        v = torch_value(lay, rank, meshes)
        if v is not None:
            sd[fqn] = v
    return sd


def torch_save(layouts, lowest):
    world = next(iter(layouts.values())).world_size
    local = []
    for r in range(world):
        with fake_rank(r, world):
            local.append(create_default_local_save_plan(torch_state_dict(layouts, r), r == 0))
    plans, md = create_default_global_save_plan(dedup_save_plans(local, lowest))
    return local, plans, md, _validate_global_plan(plans, md)


def torch_load(md, layouts, strict):
    """Per rank: torch's read items as plain data, or the text of what it raised."""
    world = next(iter(layouts.values())).world_size
    out = []
    for r in range(world):
        with fake_rank(r, world):
            try:
                plan = create_default_local_load_plan(torch_state_dict(layouts, r), md, strict)
                out.append([read_key(i) for i in plan.items])
            except (RuntimeError, ValueError) as e:
                out.append(str(e))
    return out


# what each torch rank reports (its items or its first failure), computed from a plan_load result
ours_load = expected_per_rank


def torch_local_save(layouts):
    """Per rank: torch's local save plan, or the text of the ValueError it raised (Partial)."""
    world = next(iter(layouts.values())).world_size
    out = []
    for r in range(world):
        with fake_rank(r, world):
            try:
                out.append(create_default_local_save_plan(torch_state_dict(layouts, r), r == 0))
            except ValueError as e:
                out.append(str(e))
    return out


# ----------------------------------------------------------------------------- builders
def real_dtensor(shape, mesh_shape, placements, dtype=torch.float32):
    """A DTensor of global ``shape`` for the current fake rank (zeros of the local shape)."""
    mesh = DeviceMesh("cpu", torch.arange(math.prod(mesh_shape)).reshape(mesh_shape))
    coord = mesh.get_coordinate()
    local, _ = _compute_local_shape_and_global_offset(shape, mesh_shape, coord, placements)
    stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
    return DTensor.from_local(
        torch.zeros(local, dtype=dtype), mesh, placements, shape=shape, stride=stride
    )


def T(p):
    return to_torch(p)


def torch_tensor_md(size, chunks, dtype=torch.float32):
    return tmeta.TensorStorageMetadata(
        tmeta.TensorProperties(dtype=dtype),
        torch.Size(size),
        [tmeta.ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in chunks],
    )
