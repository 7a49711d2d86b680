"""Conversions between the workbench's records and torch's, both ways.

`to_torch(record)` and `from_torch(obj)` dispatch on type and cover ``Chunk`` /
``ChunkStorageMetadata``, ``MetadataIndex``, ``TensorProperties``, ``TensorStorageMetadata``,
``BytesStorageMetadata``, ``StorageMeta``, ``Metadata``, ``StorageInfo`` / ``_StorageInfo``,
``BytesIOWriteData``, ``TensorWriteData``, ``WriteItem``, ``ReadItem``, ``SavePlan``, ``LoadPlan``,
the item-type enums, placements (``Shard`` / ``_StridedShard`` / ``Replicate`` / ``Partial``) and
lists, tuples and dicts of those. `layout_from_torch` / `local_tensor_from_torch` describe a real
DTensor, ShardedTensor or Tensor as a workbench `Layout` / `RankValue`.

Lazy imports: torch is imported inside functions only.
"""

from __future__ import annotations

from .. import records as R
from ..errors import LayoutError
from ..geometry import Chunk
from ..sharding import (
    Layout,
    Placement,
    Replicate,
    Shard,
    StridedShard,
    as_placement,
    dtensor_layout,
    sharded_layout,
    tensor_layout,
)
from ..versions import require_torch

__all__ = [
    "to_torch",
    "from_torch",
    "placement_to_torch",
    "placement_from_torch",
    "properties_to_torch",
    "properties_from_torch",
    "layout_from_torch",
    "local_tensor_from_torch",
]


def properties_to_torch(p: R.TensorProperties):
    import torch
    from torch.distributed.checkpoint.metadata import TensorProperties

    # strides only where the installed torch has them (2.15+), so each version pickles its own
    # TensorProperties state (a 6-tuple from 2.15, a 5-tuple before)
    extra = {"strides": p.strides} if "strides" in TensorProperties.__dataclass_fields__ else {}
    return TensorProperties(
        dtype=getattr(torch, p.dtype),
        layout=getattr(torch, p.layout),
        requires_grad=p.requires_grad,
        memory_format=getattr(torch, p.memory_format),
        pin_memory=p.pin_memory,
        **extra,
    )


def properties_from_torch(p) -> R.TensorProperties:
    strides = getattr(p, "strides", None)  # torch 2.15+
    return R.TensorProperties(
        dtype=str(p.dtype),
        layout=str(p.layout),
        requires_grad=bool(p.requires_grad),
        memory_format=str(p.memory_format),
        pin_memory=bool(p.pin_memory),
        strides=None if strides is None else tuple(int(x) for x in strides),
    )


def placement_to_torch(p):
    """A torch placement from a workbench placement or spec string (``"SS(0,2)"``)."""
    require_torch("placement_to_torch (torch.distributed.tensor placements)")
    from torch.distributed.tensor.placement_types import (
        Partial as TPartial,
    )
    from torch.distributed.tensor.placement_types import (
        Replicate as TReplicate,
    )
    from torch.distributed.tensor.placement_types import (
        Shard as TShard,
    )
    from torch.distributed.tensor.placement_types import (
        _StridedShard,
    )

    p = as_placement(p)
    if isinstance(p, Shard):
        return TShard(p.dim)
    if isinstance(p, StridedShard):
        return _StridedShard(p.dim, split_factor=p.split_factor)
    if isinstance(p, Replicate):
        return TReplicate()
    return TPartial(p.reduce_op)


placement_from_torch = as_placement


def _index_to_torch(i: R.MetadataIndex):
    from torch.distributed.checkpoint.metadata import MetadataIndex

    return MetadataIndex(i.fqn, i.offset, i.index)


def _since(cls, field_name: str, value) -> tuple:
    """``(value,)`` when the installed torch's dataclass ``cls`` has the field, else ``()``."""
    import dataclasses

    return (value,) if field_name in {f.name for f in dataclasses.fields(cls)} else ()


def to_torch(record):
    """The torch object for a workbench record (lists, tuples and dicts converted element-wise)."""
    import torch
    from torch.distributed.checkpoint import metadata as M
    from torch.distributed.checkpoint import planner as P
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    r = record
    if isinstance(r, list):
        return [to_torch(x) for x in r]
    if isinstance(r, tuple):
        return tuple(to_torch(x) for x in r)
    if isinstance(r, dict):
        return {to_torch(k): to_torch(v) for k, v in r.items()}
    if isinstance(r, Chunk):
        return M.ChunkStorageMetadata(offsets=torch.Size(r.offsets), sizes=torch.Size(r.sizes))
    if isinstance(r, R.MetadataIndex):
        return _index_to_torch(r)
    if isinstance(r, R.TensorProperties):
        return properties_to_torch(r)
    if isinstance(r, R.TensorStorageMetadata):
        return M.TensorStorageMetadata(
            properties_to_torch(r.properties), torch.Size(r.size), [to_torch(c) for c in r.chunks]
        )
    if isinstance(r, R.BytesStorageMetadata):
        return M.BytesStorageMetadata()
    # fields newer torch added are passed only to a torch that has them (modules and
    # transform_descriptors from 2.7, Metadata.version from 2.9)
    if isinstance(r, R.StorageMeta):
        return M.StorageMeta(
            r.checkpoint_id,
            r.save_id,
            r.load_id,
            *_since(M.StorageMeta, "modules", list(r.modules)),
        )
    if isinstance(r, R.Metadata):
        return M.Metadata(
            {k: to_torch(v) for k, v in r.state_dict_metadata.items()},
            planner_data=r.planner_data,
            storage_data=None if r.storage_data is None else to_torch(dict(r.storage_data)),
            storage_meta=None if r.storage_meta is None else to_torch(r.storage_meta),
            **dict(zip(["version"], _since(M.Metadata, "version", r.version))),
        )
    if isinstance(r, R.StorageInfo):
        td = None if r.transform_descriptors is None else list(r.transform_descriptors)
        return _StorageInfo(
            r.relative_path, r.offset, r.length, *_since(_StorageInfo, "transform_descriptors", td)
        )
    if isinstance(r, R.WriteItemType):
        return P.WriteItemType[r.name]
    if isinstance(r, R.LoadItemType):
        return P.LoadItemType[r.name]
    if isinstance(r, R.BytesIOWriteData):
        return P.BytesIOWriteData(r.nbytes)  # raises on a torch without it (never planned there)
    if isinstance(r, R.TensorWriteData):
        return P.TensorWriteData(
            to_torch(r.chunk), properties_to_torch(r.properties), torch.Size(r.size)
        )
    if isinstance(r, R.WriteItem):
        return P.WriteItem(
            index=_index_to_torch(r.index),
            type=P.WriteItemType[r.type.name],
            bytes_io_data=None if r.bytes_io_data is None else to_torch(r.bytes_io_data),
            tensor_data=None if r.tensor_data is None else to_torch(r.tensor_data),
        )
    if isinstance(r, R.ReadItem):
        return P.ReadItem(
            type=P.LoadItemType[r.type.name],
            dest_index=_index_to_torch(r.dest_index),
            dest_offsets=torch.Size(r.dest_offsets),
            storage_index=_index_to_torch(r.storage_index),
            storage_offsets=torch.Size(r.storage_offsets),
            lengths=torch.Size(r.lengths),
        )
    if isinstance(r, R.SavePlan):
        return P.SavePlan(
            [to_torch(i) for i in r.items],
            storage_data=r.storage_data,
            planner_data=r.planner_data,
            usable=r.usable,
        )
    if isinstance(r, R.LoadPlan):
        return P.LoadPlan(
            [to_torch(i) for i in r.items], storage_data=r.storage_data, planner_data=r.planner_data
        )
    if isinstance(r, Placement):
        return placement_to_torch(r)
    return r


def _idx(i) -> R.MetadataIndex:
    return R.MetadataIndex(i.fqn, None if i.offset is None else tuple(i.offset), i.index)


def from_torch(obj):
    """The workbench record for a torch record, placement or tensor (a Tensor / DTensor /
    ShardedTensor becomes a `RankValue`); lists, tuples and dicts element-wise; anything else
    unchanged."""
    if isinstance(obj, list):
        return [from_torch(x) for x in obj]
    if isinstance(obj, tuple) and type(obj) is tuple:
        return tuple(from_torch(x) for x in obj)
    if isinstance(obj, dict):
        return {from_torch(k): from_torch(v) for k, v in obj.items()}
    mod = type(obj).__module__
    if not mod.startswith("torch"):
        return obj
    import torch
    from torch.distributed.checkpoint import metadata as M
    from torch.distributed.checkpoint import planner as P
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    if isinstance(obj, torch.Tensor):
        return local_tensor_from_torch(obj)
    if isinstance(obj, torch.Size):
        return tuple(obj)
    if isinstance(obj, M.ChunkStorageMetadata):
        return Chunk(tuple(obj.offsets), tuple(obj.sizes))
    if isinstance(obj, M.MetadataIndex):
        return _idx(obj)
    if isinstance(obj, M.TensorProperties):
        return properties_from_torch(obj)
    if isinstance(obj, M.TensorStorageMetadata):
        return R.TensorStorageMetadata(
            properties_from_torch(obj.properties),
            tuple(obj.size),
            [from_torch(c) for c in obj.chunks],
        )
    if isinstance(obj, M.BytesStorageMetadata):
        return R.BytesStorageMetadata()
    if isinstance(obj, M.StorageMeta):
        return R.StorageMeta(
            obj.checkpoint_id, obj.save_id, obj.load_id, list(getattr(obj, "modules", []))
        )
    if isinstance(obj, M.Metadata):
        return R.Metadata(
            {k: from_torch(v) for k, v in obj.state_dict_metadata.items()},
            planner_data=obj.planner_data,
            storage_data=None if obj.storage_data is None else from_torch(dict(obj.storage_data)),
            storage_meta=None if obj.storage_meta is None else from_torch(obj.storage_meta),
            version=getattr(obj, "version", None),
        )
    if isinstance(obj, _StorageInfo):
        td = getattr(obj, "transform_descriptors", None)
        td = None if td is None else tuple(td)
        return R.StorageInfo(obj.relative_path, obj.offset, obj.length, td)
    if isinstance(obj, P.WriteItemType):
        return R.WriteItemType[obj.name]
    if isinstance(obj, P.LoadItemType):
        return R.LoadItemType[obj.name]
    if isinstance(obj, getattr(P, "BytesIOWriteData", ())):  # absent from older torch
        return R.BytesIOWriteData(obj.nbytes)
    if isinstance(obj, P.TensorWriteData):
        return R.TensorWriteData(
            from_torch(obj.chunk), properties_from_torch(obj.properties), tuple(obj.size)
        )
    if isinstance(obj, P.WriteItem):
        return R.WriteItem(
            _idx(obj.index),
            R.WriteItemType[obj.type.name],
            None
            if getattr(obj, "bytes_io_data", None) is None  # field absent before 2.8
            else from_torch(obj.bytes_io_data),
            None if obj.tensor_data is None else from_torch(obj.tensor_data),
        )
    if isinstance(obj, P.ReadItem):
        return R.ReadItem(
            R.LoadItemType[obj.type.name],
            _idx(obj.dest_index),
            tuple(obj.dest_offsets),
            _idx(obj.storage_index),
            tuple(obj.storage_offsets),
            tuple(obj.lengths),
        )
    if isinstance(obj, P.SavePlan):
        return R.SavePlan(
            [from_torch(i) for i in obj.items], obj.storage_data, obj.planner_data, obj.usable
        )
    if isinstance(obj, P.LoadPlan):
        return R.LoadPlan([from_torch(i) for i in obj.items], obj.storage_data, obj.planner_data)
    if type(obj).__name__ in ("Shard", "_StridedShard", "Replicate", "Partial"):
        return as_placement(obj)
    return obj


def _process_group_size(default: int) -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else default


def layout_from_torch(obj) -> Layout:
    """Every rank's chunks of a real DTensor (from its mesh shape and placements), ShardedTensor
    (from its global shard metadata) or plain Tensor (whole, on every rank of the default process
    group, or on one rank without one)."""
    require_torch("layout_from_torch (torch.distributed.tensor.DTensor)")
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        dtype = str(obj.dtype)
        mesh = tuple(obj.device_mesh.shape)
        ranks = [int(r) for r in obj.device_mesh.mesh.flatten().tolist()]  # global, row-major
        # the process group's world; without one, an extra rank stands for "outside the mesh"
        # when this rank has no coordinate
        ws = _process_group_size(max(ranks) + 1 + (obj.device_mesh.get_coordinate() is None))
        return dtensor_layout(
            tuple(obj.shape),
            mesh,
            [as_placement(p) for p in obj.placements],
            dtype,
            ws,
            mesh_ranks=ranks,
        )
    if isinstance(obj, ShardedTensor):
        md = obj.metadata()
        per: dict[int, list] = {}
        for s in md.shards_metadata:
            per.setdefault(s.placement.rank(), []).append(
                Chunk(tuple(s.shard_offsets), tuple(s.shard_sizes))
            )
        ws = max(_process_group_size(1), max(per, default=0) + 1)
        # (md's dtype: ShardedTensor.dtype warns that ShardedTensor is deprecated)
        return sharded_layout(tuple(md.size), per, str(md.tensor_properties.dtype), ws)
    if all(hasattr(obj, a) for a in _CHECKPOINTABLE_FIELDS):
        # torch 2.14+ saves such a plain tensor as the chunks it names, not as a whole tensor;
        # only this rank's chunks are known here, so no whole layout can be built from it
        offsets, sizes = list(obj.global_offsets), list(obj.local_sizes)
        raise LayoutError(
            None,
            f"a CheckpointableTensor (a plain tensor with global_shape "
            f"{tuple(obj.global_shape)} and {len(offsets)} chunk(s) on this rank) is not "
            "modelled from one rank's object",
            "a DTensor, a ShardedTensor or a plain tensor",
            "Describe it with sharded_layout(global_shape, {rank: [(global_offsets[i], "
            "local_sizes[i]), ...]}) for every rank: DCP 2.14+ plans it like that (here: "
            f"{list(zip(offsets, sizes))[:4]}).",
            kind="CheckpointableTensor",
        )
    return tensor_layout(tuple(obj.shape), _process_group_size(1), str(obj.dtype))


# torch 2.14's protocol.CheckpointableTensor: the attributes that make a plain tensor one
_CHECKPOINTABLE_FIELDS = ("global_shape", "global_offsets", "local_offsets", "local_sizes")


def local_tensor_from_torch(obj):
    """A real DTensor / ShardedTensor / Tensor as the `RankValue` of the current rank, with
    torch's own ``TensorProperties`` (DTensor: of ``to_local()``, ShardedTensor: of its metadata)."""
    require_torch("local_tensor_from_torch (torch.distributed.tensor.DTensor)")
    import numpy as np
    import torch.distributed as dist
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.checkpoint.metadata import TensorProperties
    from torch.distributed.tensor import DTensor

    from ..sharding import RankValue

    layout = layout_from_torch(obj)
    if isinstance(obj, DTensor):
        coord = obj.device_mesh.get_coordinate()
        rank = (
            layout.mesh_ranks_or_default[int(np.ravel_multi_index(tuple(coord), layout.mesh_shape))]
            if coord is not None
            else dist.get_rank()
            if dist.is_available() and dist.is_initialized()
            else layout.world_size - 1
        )
        props = TensorProperties.create_from_tensor(obj.to_local())
    elif isinstance(obj, ShardedTensor):
        rank = dist.get_rank() if dist.is_initialized() else 0
        # keep this rank's chunks in local_shards() order (what torch iterates)
        local = tuple(
            Chunk(tuple(s.metadata.shard_offsets), tuple(s.metadata.shard_sizes))
            for s in obj.local_shards()
        )
        rc = list(layout.rank_chunks)
        rc[rank] = local
        layout = sharded_layout(layout.shape, rc, layout.dtype, layout.world_size)
        tp = obj.metadata().tensor_properties
        props = TensorProperties(
            tp.dtype, tp.layout, tp.requires_grad, tp.memory_format, tp.pin_memory
        )
    else:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        props = TensorProperties.create_from_tensor(obj)
    return RankValue(layout, rank, properties_from_torch(props))
