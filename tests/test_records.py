"""records.py (torch's field names and equality rules) and torch_bridge.convert (both ways)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.errors import DtypeError
from workbench.geometry import Chunk
from workbench.records import (
    DTYPE_SIZES,
    BytesIOWriteData,
    BytesStorageMetadata,
    LoadItemType,
    LoadPlan,
    Metadata,
    MetadataIndex,
    ReadItem,
    SavePlan,
    StorageInfo,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
    TensorWriteData,
    WriteItem,
    WriteItemType,
    canonical_dtype,
)


# ----------------------------------------------------------------------------- equality rules
def test_metadata_index_hint_is_not_part_of_equality():
    a, b = MetadataIndex("w", [4, 0], 3), MetadataIndex("w", (4, 0), None)
    assert a == b and hash(a) == hash(b)
    assert {a: "x"}[b] == "x"  # storage_data lookups ignore the hint
    assert a.index == 3 and b.index is None


def test_metadata_index_bytes_differs_from_zero_dim():
    assert MetadataIndex("w") != MetadataIndex("w", [])
    assert MetadataIndex("w").offset is None and MetadataIndex("w", []).offset == ()
    assert MetadataIndex("w", [0]) != MetadataIndex("v", [0])


def test_metadata_index_repr_prints_torch_size():
    assert (
        repr(MetadataIndex("w", [4]))
        == "MetadataIndex(fqn='w', offset=torch.Size([4]), index=None)"
    )


def test_equality_rules_match_torch():
    import torch
    from torch.distributed.checkpoint.metadata import MetadataIndex as TMI

    assert TMI("w", [4, 0], 3) == TMI("w", torch.Size([4, 0]))
    assert TMI("w") != TMI("w", [])
    assert hash(TMI("w", [1], 5)) == hash(TMI("w", [1]))


def _wi(size, dtype):
    return WriteItem(
        MetadataIndex("w", (0,) * len(size)),
        WriteItemType.SHARD,
        tensor_data=TensorWriteData(
            Chunk((0,) * len(size), (0,) * len(size)), TensorProperties(dtype), size
        ),
    )


def test_tensor_storage_size_is_the_global_tensors_bytes():
    # a zero-size chunk of a (1000, 8) bfloat16 tensor is charged 16000 bytes
    assert _wi((1000, 8), "bfloat16").tensor_storage_size() == 16000
    assert _wi((), "int64").tensor_storage_size() == 8
    assert WriteItem(MetadataIndex("b"), WriteItemType.BYTE_IO).tensor_storage_size() is None


@given(st.lists(st.integers(0, 50), max_size=3), st.sampled_from(sorted(DTYPE_SIZES)))
def test_tensor_storage_size_matches_torch(size, dtype):
    import torch

    if not hasattr(torch, dtype):
        return
    from workbench.torch_bridge.convert import to_torch

    item = _wi(tuple(size), dtype)
    assert item.tensor_storage_size() == to_torch(item).tensor_storage_size()


def test_canonical_dtype():
    assert canonical_dtype("torch.bfloat16") == "bfloat16"
    assert canonical_dtype("float") == "float32" and canonical_dtype("half") == "float16"
    assert TensorProperties("torch.int64").dtype == "int64"
    with pytest.raises(DtypeError) as ei:
        canonical_dtype("float31", "w")
    assert str(ei.value).startswith("w: unknown dtype 'float31'")


def test_records_normalise_sequences():
    a = TensorStorageMetadata("float32", [4, 4], [((0, 0), (2, 4)), Chunk((2, 0), (2, 4))])
    assert a.size == (4, 4) and a.chunks == [Chunk((0, 0), (2, 4)), Chunk((2, 0), (2, 4))]
    assert a.properties == TensorProperties("float32") and a.nbytes == 64
    r = ReadItem(
        LoadItemType.TENSOR, MetadataIndex("w", [4]), [1], MetadataIndex("w", [0]), [5], [2]
    )
    assert (r.dest_offsets, r.storage_offsets, r.lengths) == ((1,), (5,), (2,))
    assert r.dest_chunk == Chunk((5,), (2,)) and r.storage_chunk == Chunk((5,), (2,))


def test_enum_values_match_torch():
    import torch  # noqa: F401  (torch is a dependency: fail, never skip)
    from torch.distributed.checkpoint import planner as P

    assert [(e.name, e.value) for e in WriteItemType] == [
        (e.name, e.value) for e in P.WriteItemType
    ]
    assert [(e.name, e.value) for e in LoadItemType] == [(e.name, e.value) for e in P.LoadItemType]


# ----------------------------------------------------------------------------- conversions
chunks = st.integers(0, 3).flatmap(
    lambda n: st.builds(
        Chunk, st.tuples(*[st.integers(0, 9)] * n), st.tuples(*[st.integers(0, 9)] * n)
    )
)
props = st.builds(
    TensorProperties,
    st.sampled_from(["float32", "bfloat16", "int8", "bool"]),
    requires_grad=st.booleans(),
    pin_memory=st.just(False),
    memory_format=st.sampled_from(["contiguous_format", "channels_last"]),
)
indices = st.builds(
    MetadataIndex,
    st.sampled_from(["w", "a.b"]),
    st.one_of(st.none(), st.lists(st.integers(0, 9), max_size=3)),
    st.one_of(st.none(), st.integers(0, 5)),
)
write_items = st.one_of(
    st.builds(
        lambda i: WriteItem(
            MetadataIndex(i.fqn, None, i.index),
            WriteItemType.BYTE_IO,
            bytes_io_data=BytesIOWriteData(12),
        ),
        indices,
    ),
    st.builds(
        lambda i, c, p, t: WriteItem(
            MetadataIndex(i.fqn, c.offsets, i.index), t, tensor_data=TensorWriteData(c, p, c.ends)
        ),
        indices,
        chunks,
        props,
        st.sampled_from([WriteItemType.TENSOR, WriteItemType.SHARD]),
    ),
)
read_items = st.builds(
    lambda t, d, s, n: ReadItem(t, d, (1,) * n, s, (2,) * n, (3,) * n),
    st.sampled_from(list(LoadItemType)),
    indices,
    indices,
    st.integers(0, 3),
)
tensor_md = st.builds(
    lambda p, cs: TensorStorageMetadata(p, (9,) * (cs[0].ndim if cs else 1), cs),
    props,
    st.integers(0, 2).flatmap(
        lambda n: st.lists(
            st.builds(
                Chunk, st.tuples(*[st.integers(0, 4)] * n), st.tuples(*[st.integers(0, 4)] * n)
            ),
            max_size=3,
        )
    ),
)
metadata = st.builds(
    lambda sdm, sd, ver: Metadata(
        sdm,
        planner_data={"a.b": ("a", "b")},
        storage_data=sd,
        storage_meta=StorageMeta("/ckpt", "s1", None, ["m"]),
        version=ver,
    ),
    st.dictionaries(
        st.sampled_from(["w", "b", "v"]),
        st.one_of(tensor_md, st.just(BytesStorageMetadata())),
        max_size=3,
    ),
    st.one_of(
        st.none(),
        st.dictionaries(
            indices,
            st.builds(StorageInfo, st.just("__0_0.distcp"), st.integers(0, 99), st.integers(0, 99)),
            max_size=3,
        ),
    ),
    st.sampled_from([None, "1.0.0"]),
)


def _deep(x):
    """Comparable form including MetadataIndex hints (which == ignores)."""
    if isinstance(x, MetadataIndex):
        return ("MI", x.fqn, x.offset, x.index)
    if isinstance(x, (list, tuple)):
        return [_deep(v) for v in x]
    if isinstance(x, dict):
        return sorted((repr(_deep(k)), _deep(v)) for k, v in x.items())
    if hasattr(x, "__dataclass_fields__"):
        return (type(x).__name__, [(f, _deep(getattr(x, f))) for f in x.__dataclass_fields__])
    return x


@given(
    st.one_of(
        chunks,
        props,
        indices,
        write_items,
        read_items,
        tensor_md,
        metadata,
        st.builds(SavePlan, st.lists(write_items, max_size=3), usable=st.booleans()),
        st.builds(LoadPlan, st.lists(read_items, max_size=3)),
    )
)
def test_round_trip_through_torch(record):
    import torch  # noqa: F401  (torch is a dependency: fail, never skip)

    from workbench.torch_bridge.convert import from_torch, to_torch

    t = to_torch(record)
    assert type(t).__module__.startswith("torch")
    assert _deep(from_torch(t)) == _deep(record)


def test_to_torch_builds_torchs_own_values():
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
    from torch.distributed.checkpoint.metadata import TensorProperties as TP

    from workbench.torch_bridge.convert import from_torch, to_torch

    assert to_torch(Chunk((1,), (2,))) == ChunkStorageMetadata(torch.Size([1]), torch.Size([2]))
    assert to_torch(TensorProperties("bfloat16", requires_grad=True)) == TP(
        dtype=torch.bfloat16, requires_grad=True
    )
    assert to_torch(StorageInfo("__1_0.distcp", 8, 16)) == _StorageInfo("__1_0.distcp", 8, 16)
    assert from_torch(TP.create_from_tensor(torch.zeros(2, dtype=torch.int16))) == TensorProperties(
        "int16"
    )
    # placements both ways
    from torch.distributed.tensor import Replicate as TR
    from torch.distributed.tensor import Shard as TS
    from torch.distributed.tensor.placement_types import _StridedShard

    from workbench.sharding import Replicate, Shard, StridedShard

    assert to_torch([Shard(1), Replicate(), StridedShard(0, 2)]) == [
        TS(1),
        TR(),
        _StridedShard(0, split_factor=2),
    ]
    assert from_torch([TS(1), _StridedShard(0, split_factor=2)]) == [Shard(1), StridedShard(0, 2)]


def test_layout_from_real_dtensor_and_sharded_tensor():
    import torch
    import torch.distributed as dist
    from torch.distributed._shard.sharded_tensor import Shard as STShard
    from torch.distributed._shard.sharded_tensor import (
        ShardedTensor,
        ShardedTensorMetadata,
        ShardMetadata,
    )
    from torch.distributed._shard.sharded_tensor.metadata import TensorProperties as STProps
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor import Shard as TS
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from workbench.sharding import dtensor_layout
    from workbench.torch_bridge.convert import layout_from_torch, local_tensor_from_torch

    dist.init_process_group("fake", rank=3, world_size=4, store=FakeStore())
    try:
        mesh = DeviceMesh("cpu", torch.arange(4).reshape(2, 2))
        dt = DTensor.from_local(
            torch.zeros(3, 2, requires_grad=True), mesh, [TS(0), TS(1)], shape=(6, 4), stride=(4, 1)
        )
        lt = local_tensor_from_torch(dt)
        assert lt.layout.rank_chunks == dtensor_layout((6, 4), (2, 2), "S(0), S(1)").rank_chunks
        assert lt.rank == 3 and lt.chunks() == (Chunk((3, 2), (3, 2)),)
        assert lt.properties.requires_grad
        # a ShardedTensor: [8r:8r+8] on rank r of 4
        mds = [ShardMetadata([8 * r], [8], f"rank:{r}/cpu") for r in range(4)]
        st_md = ShardedTensorMetadata(
            mds, torch.Size([32]), STProps.create_from_tensor(torch.zeros(1))
        )
        sh = ShardedTensor._init_from_local_shards_and_global_metadata(
            [STShard.from_tensor_and_offsets(torch.zeros(8), [24], 3)], st_md
        )
        L = layout_from_torch(sh)
        assert L.kind == "sharded" and L.rank_chunks == tuple(
            (Chunk((8 * r,), (8,)),) for r in range(4)
        )
        assert local_tensor_from_torch(sh).chunks() == (Chunk((24,), (8,)),)
    finally:
        dist.destroy_process_group()
