"""PyTorch's own DCP and DTensor test cases, ported as worked examples (intervals in comments),
plus the worked examples of dcp-semantics.md. Expected values are PyTorch's; where cheap, the
installed torch is asked too.

Sources: test/distributed/checkpoint/test_planner.py (TestSavePlan, TestPlannerHelpers,
TestValidateGlobalPlan), test/distributed/checkpoint/test_dedup_tensors.py,
test/distributed/tensor/test_utils.py (test_compute_local_shape_and_global_offset_uneven).
"""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from workbench import dcp
from workbench import planner_helpers as H
from workbench.geometry import Chunk
from workbench.records import (
    BytesStorageMetadata,
    LoadItemType,
    Metadata,
    MetadataIndex,
    SavePlan,
    TensorProperties,
    TensorStorageMetadata,
    WriteItemType,
)
from workbench.sharding import (
    RankValue,
    Shard,
    StridedShard,
    dtensor_layout,
    held_indices,
    local_shape_and_offset,
    sharded_layout,
    tensor_layout,
)

logging.getLogger("torch.distributed.checkpoint.default_planner").setLevel(logging.ERROR)


def st_layout(world_size, shards_per_rank=1, shard_size=8):
    """test_planner.create_sharded_tensor: 1-D ShardedTensor, shard idx covers
    [idx*shard_size, (idx+1)*shard_size) and lives on rank idx // shards_per_rank."""
    per = {r: [] for r in range(world_size)}
    for idx in range(world_size * shards_per_rank):
        per[idx // shards_per_rank].append(Chunk((idx * shard_size,), (shard_size,)))
    return sharded_layout((shard_size * world_size * shards_per_rank,), per, "float32", world_size)


def planner_state_dict(rank, world_size=4):
    # {"tensor": torch.rand(10), "value": [1, 2, 3], "st": create_sharded_tensor(rank, 4, 1)}
    return {
        "tensor": RankValue(tensor_layout((10,), world_size), rank),
        "value": [1, 2, 3],
        "st": RankValue(st_layout(world_size), rank),
    }


# ----------------------------------------------------------------------------- test_planner.py
def test_local_plan():
    # rank 1 of 4: tensor [0:10] (TENSOR), st shard [8:16] (SHARD), value (BYTE_IO).
    # PyTorch's old test expected 2 items off the coordinator; since 2.1 every rank plans
    # every entry, so both calls give 3 (torch 2.13 agrees, see below).
    sd = planner_state_dict(1)
    for coord in (False, True):
        plan = H.create_default_local_save_plan(sd, coord)
        assert [i.type for i in plan.items] == [
            WriteItemType.TENSOR,
            WriteItemType.BYTE_IO,
            WriteItemType.SHARD,
        ]
    wi, bi, si = plan.items
    assert wi.index == MetadataIndex("tensor", [0])
    assert wi.tensor_data.size == (10,) and wi.tensor_data.chunk == Chunk((0,), (10,))
    assert wi.tensor_data.properties == TensorProperties("float32")
    assert bi.index == MetadataIndex("value") and bi.tensor_data is None
    assert si.index == MetadataIndex("st", [8])
    assert si.tensor_data.size == (32,) and si.tensor_data.chunk == Chunk((8,), (8,))

    from torch.distributed.checkpoint.default_planner import create_default_local_save_plan

    assert (
        len(create_default_local_save_plan({"t": torch.rand(10), "v": [1, 2, 3]}, False).items) == 2
    )


def test_global_plan_and_dedup_plans():
    # 4 ranks each plan tensor [0:10], value, and their st shard [8r:8r+8].
    plans = [H.create_default_local_save_plan(planner_state_dict(r), r == 0) for r in range(4)]
    deduped = H.dedup_save_plans(plans)
    # test_dedup_plans: same number of plans, each strictly smaller, and different from before
    assert len(deduped) == 4
    for new, old in zip(deduped, plans):
        assert len(new.items) < len(old.items)
        assert not H.compare_save_plans(new, old)
    # writers: tensor -> rank 0 (all loads 0, first of the set); value -> rank 1 (rank 0 carries
    # 40 bytes, rank 1 is the first zero-load rank in set order); st shard r -> rank r
    assert [[i.index.fqn for i in p.items] for p in deduped] == [
        ["tensor", "st"],
        ["value", "st"],
        ["st"],
        ["st"],
    ]
    final, md = H.create_default_global_save_plan(deduped)
    for new_plan, old_plan in zip(final, deduped):
        for new, old in zip(new_plan.items, old_plan.items):
            assert new.index == old.index and new.type == old.type
            assert new.tensor_data == old.tensor_data
            item_md = md.state_dict_metadata[new.index.fqn]
            if new.type == WriteItemType.BYTE_IO:
                assert isinstance(item_md, BytesStorageMetadata)
            else:
                assert item_md.size == old.tensor_data.size
                assert item_md.properties == old.tensor_data.properties
                # the hint is correct
                assert item_md.chunks[new.index.index] == old.tensor_data.chunk
    assert md.state_dict_metadata["st"].chunks == [Chunk((8 * r,), (8,)) for r in range(4)]


def test_local_load_plan():
    sd = planner_state_dict(1)
    md = H.create_default_local_metadata(sd)
    items = H.create_default_local_load_plan(sd, md).items
    assert len(items) == 3
    st_item = next(i for i in items if i.dest_index.fqn == "st")
    tensor_item = next(i for i in items if i.dest_index.fqn == "tensor")
    bytes_item = next(i for i in items if i.dest_index.fqn == "value")
    # st [8:16] from saved [8:16]: an exact copy
    assert st_item.type == LoadItemType.TENSOR
    assert (st_item.dest_index, st_item.dest_offsets) == (MetadataIndex("st", [8]), (0,))
    assert (st_item.storage_index, st_item.storage_offsets) == (MetadataIndex("st", [8]), (0,))
    assert st_item.lengths == (8,)
    assert (tensor_item.dest_index, tensor_item.storage_index) == (
        MetadataIndex("tensor", [0]),
    ) * 2
    assert (tensor_item.dest_offsets, tensor_item.storage_offsets, tensor_item.lengths) == (
        (0,),
        (0,),
        (10,),
    )
    assert bytes_item.type == LoadItemType.BYTE_IO and bytes_item.dest_index == MetadataIndex(
        "value"
    )


def test_load_with_resharding():
    def sd(rank, world):
        return {"st": RankValue(st_layout(world, shard_size=128 // world), rank)}

    world8_md = H.create_default_local_metadata(sd(1, 8))  # all 8 shards [16k, 16k+16)
    world4_md = H.create_default_local_metadata(sd(1, 4))  # all 4 shards [32k, 32k+32)
    # 8 -> 4: rank 1 wants [32:64] = saved [32:48] + [48:64]
    items = H.create_default_local_load_plan(sd(1, 4), world8_md).items
    assert [
        (i.storage_index, i.storage_offsets, i.dest_index, i.dest_offsets, i.lengths) for i in items
    ] == [
        (MetadataIndex("st", [32]), (0,), MetadataIndex("st", [32]), (0,), (16,)),
        (MetadataIndex("st", [48]), (0,), MetadataIndex("st", [32]), (16,), (16,)),
    ]
    # 4 -> 8: rank 1 wants [16:32] = upper half of saved [0:32]
    (ri,) = H.create_default_local_load_plan(sd(1, 8), world4_md).items
    assert (ri.storage_index, ri.storage_offsets) == (MetadataIndex("st", [0]), (16,))
    assert (ri.dest_index, ri.dest_offsets, ri.lengths) == (MetadataIndex("st", [16]), (0,), (16,))


def test_load_with_world_size_diff_by_one():
    # saved on 4 ranks: [0:30] [30:60] [60:90] [90:120]; rank 1 of 3 wants [40:80]
    world4_md = H.create_default_local_metadata({"st": RankValue(st_layout(4, shard_size=30), 1)})
    items = H.create_default_local_load_plan(
        {"st": RankValue(st_layout(3, shard_size=40), 1)}, world4_md
    ).items
    low, high = items
    # [30, 60] to load [40, 60]
    assert (low.storage_index, low.storage_offsets) == (MetadataIndex("st", [30]), (10,))
    assert (low.dest_index, low.dest_offsets, low.lengths) == (
        MetadataIndex("st", [40]),
        (0,),
        (20,),
    )
    # [60, 90] to load [60, 80]
    assert (high.storage_index, high.storage_offsets) == (MetadataIndex("st", [60]), (0,))
    assert (high.dest_index, high.dest_offsets, high.lengths) == (
        MetadataIndex("st", [40]),
        (20,),
        (20,),
    )


def test_create_read_item_from_chunks():
    # saved [0:8] [8:16]; local [4:11] -> saved #0 [4:8] then saved #1 [8:11]
    md = TensorStorageMetadata(
        TensorProperties("float32"), (16,), [Chunk((0,), (8,)), Chunk((8,), (8,))]
    )
    a, b = H.create_read_items_for_chunk_list("foo", md, [Chunk((4,), (7,))])
    assert (a.dest_index, a.dest_offsets) == (MetadataIndex("foo", [4]), (0,))
    assert (a.storage_index, a.storage_offsets, a.lengths) == (
        MetadataIndex("foo", [0]),
        (4,),
        (4,),
    )
    assert (b.dest_index, b.dest_offsets) == (MetadataIndex("foo", [4]), (4,))
    assert (b.storage_index, b.storage_offsets, b.lengths) == (
        MetadataIndex("foo", [8]),
        (0,),
        (3,),
    )


def test_merge_delta_local_plans():
    def data(rank):
        return H.create_default_local_save_plan(planner_state_dict(rank), rank == 0)

    cached = [data(0), data(1)]
    unusable = SavePlan([], usable=False)
    delta = [data(2), data(3)]
    assert H.merge_delta_local_plans(cached, delta) == delta  # both changed
    delta = [data(2), unusable]
    merged = H.merge_delta_local_plans(cached, delta)
    assert merged[0] is delta[0] and merged[1] is cached[1]  # first changed
    delta = [unusable, data(3)]
    merged = H.merge_delta_local_plans(cached, delta)
    assert merged[0] is cached[0] and merged[1] is delta[1]  # second changed
    merged = H.merge_delta_local_plans(cached, [unusable, unusable])
    assert merged[0] is cached[0] and merged[1] is cached[1]  # none changed


def test_compare_save_plans():
    p1 = H.create_default_local_save_plan(planner_state_dict(0), True)
    p2 = H.create_default_local_save_plan(planner_state_dict(1), False)
    assert not H.compare_save_plans(p1, p2)  # st shard [0:8] vs [8:16]
    assert H.compare_save_plans(p1, p1) and H.compare_save_plans(p2, p2)


def test_validate_global_plan_cases():
    def md(chunks, size):
        return Metadata({"param": TensorStorageMetadata(TensorProperties("float32"), size, chunks)})

    # [0:1] [1:2] [2:3] [3:4] of 4: valid (torch <2.13 returned True; 2.13 an empty list)
    assert (
        H.validate_global_plan([SavePlan([])], md([Chunk((i,), (1,)) for i in range(4)], (4,)))
        == []
    )
    # [0:2] and [1:3] of 4: the current (later-starting) chunk is printed first; one plan, so no
    # fill check although 4 elements are claimed over a 4-element tensor with [3:4] missing
    assert H.validate_global_plan(
        [SavePlan([])], md([Chunk((0,), (2,)), Chunk((1,), (2,))], (4,))
    ) == [
        "key:param has overlapping chunks: "
        "ChunkStorageMetadata(offsets=torch.Size([1]), sizes=torch.Size([2])) "
        "ChunkStorageMetadata(offsets=torch.Size([0]), sizes=torch.Size([2]))"
    ]


# ----------------------------------------------------------------------------- test_dedup_tensors.py
def test_dedup_shards():
    # each rank: tensor_0 [0:4] (as SHARD, 16 bytes) + its own r{rank} [0:10].
    def plan(second):
        a = H.create_write_item_for_tensor("tensor_0", RankValue(tensor_layout((4,), 1), 0))
        import dataclasses

        a = dataclasses.replace(a, type=WriteItemType.SHARD)
        b = H.create_write_item_for_tensor(second, RankValue(tensor_layout((10,), 1), 0))
        return SavePlan([a, b])

    d0, d1 = H.dedup_save_plans([plan("r0"), plan("r1")])
    assert [i.index.fqn for i in d0.items] == ["tensor_0", "r0"]
    assert [i.index.fqn for i in d1.items] == ["r1"]


# ----------------------------------------------------------------------------- tensor/test_utils.py
def _all(global_shape, mesh_shape, placements):
    for coord in itertools.product(*map(range, mesh_shape)):
        yield coord, local_shape_and_offset(global_shape, mesh_shape, coord, placements)


def test_uneven_strided_fsdp_tp_4096():
    # (4096, 4096) on DP=30 x TP=8, [SS(0,8), S(0)]: most DP ranks hold 18 rows of each TP
    # block of 512; dp 28 holds 8, dp 29 none, at offset 4096 (the dim size).
    for (dp, tp), (shape, off) in _all((4096, 4096), (30, 8), [StridedShard(0, 8), Shard(0)]):
        size, offset = (18, tp * 512 + 18 * dp)
        if dp == 28:
            size = 8
        elif dp == 29:
            size, offset = 0, 4096
        assert (shape, off) == ((size, 4096), (offset, 0))


@pytest.mark.parametrize(
    "rows,expected",
    [
        # (18, 2) on (4, 2) [S(0), S(0)]: dp blocks [0:5] [5:10] [10:15] [15:18], each split 3+2 (2+1)
        (
            18,
            {
                0: ((3, 0), (2, 3)),
                1: ((3, 5), (2, 8)),
                2: ((3, 10), (2, 13)),
                3: ((2, 15), (1, 17)),
            },
        ),
        # (13, 2): dp blocks [0:4] [4:8] [8:12] [12:13]; dp 3 tp 1 is empty at offset 13
        (
            13,
            {0: ((2, 0), (2, 2)), 1: ((2, 4), (2, 6)), 2: ((2, 8), (2, 10)), 3: ((1, 12), (0, 13))},
        ),
    ],
)
def test_shard_shard_uneven(rows, expected):
    for (dp, tp), (shape, off) in _all((rows, 2), (4, 2), [Shard(0), Shard(0)]):
        size, offset = expected[dp][tp]
        assert (shape, off) == ((size, 2), (offset, 0))


def test_strided_then_shard():
    # (18, 2) on (4, 2) [SS(0,2), S(0)]: TP blocks [0:9] [9:18]; dp r takes rows [3r:3r+3] of
    # each; dp 3 is empty at offset 18
    for (dp, tp), (shape, off) in _all((18, 2), (4, 2), [StridedShard(0, 2), Shard(0)]):
        size, offset = (0, 18) if dp == 3 else (3, tp * 9 + 3 * dp)
        assert (shape, off) == ((size, 2), (offset, 0))


def test_strided_strided():
    # (39, 2) on (4, 2) [SS(0,3), SS(0,4)]
    for (dp, tp), (shape, off) in _all((39, 2), (4, 2), [StridedShard(0, 3), StridedShard(0, 4)]):
        if dp < 3:
            size, offset = (8, 4 * dp) if tp == 0 else (4, 4 * dp + 2)
        else:
            size, offset = (3, 12) if tp == 0 else (0, 39)
        assert (shape, off) == ((size, 2), (offset, 0))


def test_shard_then_strided():
    # "(Shard, SS)": (18, 2) on (4, 2) [S(0), SS(0,2)]: dp blocks [0:5] ... [15:18]; within a
    # block of 5 split as [0:3] [3:5], tp 0 takes rows 0,1,3 (offset 5dp, size 3), tp 1 rows 2,4
    for (dp, tp), (shape, off) in _all((18, 2), (4, 2), [Shard(0), StridedShard(0, 2)]):
        if dp < 3:
            size, offset = (3, 5 * dp) if tp == 0 else (2, 5 * dp + 2)
        else:
            size, offset = (2, 15) if tp == 0 else (1, 16)
        assert (shape, off) == ((size, 2), (offset, 0))
    # the boxes DCP records are not the data: rank (0,0) holds rows 0,1,3 but records [0:3]
    assert held_indices((18, 2), (4, 2), (0, 0), "S(0), SS(0,2)") == {0: [0, 1, 3]}
    assert held_indices((18, 2), (4, 2), (0, 1), "S(0), SS(0,2)") == {0: [2, 4]}


def test_shard_strided_shard_3d_mesh():
    # "(Shard, SS, Shard)": (39, 2) on (4, 2, 3) [S(0), SS(0,2), S(0)]
    for (m0, m1, m2), (shape, off) in _all(
        (39, 2), (4, 2, 3), [Shard(0), StridedShard(0, 2), Shard(0)]
    ):
        if m0 < 3:
            table = {
                (0, 0): (0, 2),
                (0, 1): (2, 2),
                (0, 2): (6, 2),
                (1, 0): (3, 2),
                (1, 1): (8, 2),
                (1, 2): (None, 0),
            }
        else:
            table = {
                (0, 0): (0, 2),
                (0, 1): (2, 2),
                (0, 2): (6, 1),
                (1, 0): (3, 2),
                (1, 1): (7, 2),
                (1, 2): (None, 0),
            }
        rel, size = table[(m1, m2)]
        offset = 39 if rel is None else 10 * m0 + rel
        assert (shape, off) == ((size, 2), (offset, 0))


def test_utils_cases_agree_with_installed_torch():
    from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset

    from workbench.torch_bridge.convert import placement_to_torch

    cases = [
        ((4096, 4096), (30, 8), [StridedShard(0, 8), Shard(0)]),
        ((39, 2), (4, 2, 3), [Shard(0), StridedShard(0, 2), Shard(0)]),
        ((39, 2), (4, 2), [StridedShard(0, 3), StridedShard(0, 4)]),
    ]
    for shape, mesh, pl in cases:
        tpl = [placement_to_torch(p) for p in pl]
        for coord, ours in _all(shape, mesh, pl):
            theirs = _compute_local_shape_and_global_offset(shape, mesh, list(coord), tpl)
            assert ours == tuple(tuple(x) for x in theirs)


# ----------------------------------------------------------------------------- dcp-semantics.md
def _writers(plans, fqn="w"):
    return [r for r, p in enumerate(plans) for i in p.items if i.index.fqn == fqn]


def test_dedup_writers_follow_python_set_order():
    # (16,) on mesh (2, 8) [R, S(0)]: chunk k = [2k:2k+2] lives on ranks {k, 8+k}. Load
    # balancing ties are broken by min() over a set: {8+k, k} iterates in hash-table order,
    # which is not ascending once the set holds indices >= 8.
    L = dtensor_layout((16,), (2, 8), "R, S(0)")
    plans = [H.create_default_local_save_plan({"w": RankValue(L, r)}, r == 0) for r in range(16)]
    assert _writers(H.dedup_save_plans(plans)) == [0, 1, 2, 4, 6, 11, 13, 15]
    assert _writers(H.dedup_save_plans(plans, save_to_lowest_rank=True)) == list(range(8))
    from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans as torch_dedup

    from workbench.torch_bridge.convert import to_torch

    assert _writers(torch_dedup(to_torch(plans))) == [0, 1, 2, 4, 6, 11, 13, 15]


def test_dedup_charges_whole_tensor_bytes():
    # w: (64,) float32 on 2 ranks [S(0)], rank 0 writes [0:32] (128 bytes of data) but is charged
    # the whole tensor's 256; p: (40,) plain on both (160 bytes); q: (1,) plain on both.
    # Keys in first-appearance order: w@0 -> rank 0 (load 256), p -> rank 1 (load 160),
    # q -> least loaded = rank 1 (160 < 256). Charging chunk bytes (128) would pick rank 0.
    ws = 2

    def sd(r):
        return {
            "w": RankValue(dtensor_layout((64,), (2,), "S(0)"), r),
            "p": RankValue(tensor_layout((40,), ws), r),
            "q": RankValue(tensor_layout((1,), ws), r),
        }

    plans = [H.create_default_local_save_plan(sd(r), r == 0) for r in range(ws)]
    out = H.dedup_save_plans(plans)
    assert [[i.index.fqn for i in p.items] for p in out] == [["w"], ["w", "p", "q"]]
    assert plans[0].items[0].tensor_storage_size() == 256
    from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans as torch_dedup

    from workbench.torch_bridge.convert import to_torch

    assert [[i.index.fqn for i in p.items] for p in torch_dedup(to_torch(plans))] == [
        ["w"],
        ["w", "p", "q"],
    ]


def test_zero_size_dtensor_shards_collapse_to_one_chunk():
    # (13, 2) on (4, 2) [S(0), S(0)]: rank (3, 1) -> shape (0, 2) at offset (13, 0)
    L = dtensor_layout((13, 2), (4, 2), "S(0), S(0)")
    assert L.chunks(7) == (Chunk((13, 0), (0, 2)),)
    # (2,) on 4 ranks [S(0)]: ranks 2 and 3 are empty at offset 2 (one key): one zero-size chunk
    L = dtensor_layout((2,), (4,), "S(0)")
    plans = [H.create_default_local_save_plan({"w": RankValue(L, r)}, r == 0) for r in range(4)]
    final, md = H.create_default_global_save_plan(H.dedup_save_plans(plans))
    assert md.state_dict_metadata["w"].chunks == [
        Chunk((0,), (1,)),
        Chunk((1,), (1,)),
        Chunk((2,), (0,)),
    ]
    assert H.validate_global_plan(final, md) == []


def test_read_item_order_examples():
    md = lambda shape, chunks: TensorStorageMetadata(TensorProperties(), shape, chunks)  # noqa: E731
    left, right = Chunk((0, 0), (4, 4)), Chunk((0, 4), (4, 4))
    # (4,8), saved [cols 4:8 (#0), cols 0:4 (#1)], local full: saved #1 first (end 4 < 8)
    items = H.create_read_items_for_chunk_list(
        "w", md((4, 8), [right, left]), [Chunk((0, 0), (4, 8))]
    )
    assert [i.storage_index.index for i in items] == [1, 0]
    # (4,8), saved row halves, local [cols 4:8 (#0), cols 0:4 (#1)]: sweep dim 1, local #1
    # first; dest_index keeps the original numbering
    top, bottom = Chunk((0, 0), (2, 8)), Chunk((2, 0), (2, 8))
    items = H.create_read_items_for_chunk_list("w", md((4, 8), [top, bottom]), [right, left])
    assert [(i.dest_index.index, i.storage_index.index) for i in items] == [
        (1, 0),
        (1, 1),
        (0, 0),
        (0, 1),
    ]
    # (8,8) with every chunk inside cols 0:2: extents (8, 2), sweep dim 0 (not the tensor size)
    saved = [Chunk((4, 0), (4, 2)), Chunk((0, 0), (4, 2))]
    local = [Chunk((0, 1), (8, 1)), Chunk((0, 0), (8, 1))]
    items = H.create_read_items_for_chunk_list("w", md((8, 8), saved), local)
    # sweep dim 0: locals both start at 0 (stable: #0 then #1), saved by end on dim 0 (#1, #0)
    assert [(i.dest_index.index, i.storage_index.index) for i in items] == [
        (0, 1),
        (0, 0),
        (1, 1),
        (1, 0),
    ]


def test_zero_size_chunk_read_items():
    md = lambda chunks: TensorStorageMetadata(TensorProperties(), (10,), chunks)  # noqa: E731
    # saved [0:10] + zero-size [5:5], local [0:10]: two items, the zero-length one first (end 5)
    items = H.create_read_items_for_chunk_list(
        "w", md([Chunk((0,), (10,)), Chunk((5,), (0,))]), [Chunk((0,), (10,))]
    )
    assert [(i.storage_index.index, i.dest_offsets, i.lengths) for i in items] == [
        (1, (5,), (0,)),
        (0, (0,), (10,)),
    ]
    # at the dim end ([10:10], DTensor's convention for empty shards) nothing is produced
    items = H.create_read_items_for_chunk_list(
        "w", md([Chunk((0,), (10,)), Chunk((10,), (0,))]), [Chunk((0,), (10,))]
    )
    assert [i.storage_index.index for i in items] == [0]
    # empty local or saved lists read nothing
    assert H.create_read_items_for_chunk_list("w", md([]), [Chunk((0,), (10,))]) == []
    assert H.create_read_items_for_chunk_list("w", md([Chunk((0,), (10,))]), []) == []


def test_local_shape_examples():
    # Shard(-1) on (4, 3), mesh 2, rank 1 -> shape (4, 1) at offset (0, 2)
    assert local_shape_and_offset((4, 3), (2,), (1,), [Shard(-1)]) == ((4, 1), (0, 2))
    # (13,) on (3, 2) [SS(0,2), S(0)] rank (2, 0): holds rows 6, 11 but records [6:8]
    assert local_shape_and_offset((13,), (3, 2), (2, 0), "SS(0,2), S(0)") == ((2,), (6,))
    assert held_indices((13,), (3, 2), (2, 0), "SS(0,2), S(0)") == {0: [6, 11]}


def test_strided_save_fails_validation_like_torch():
    # (8,) on 2 ranks [SS(0,2)]: rank 0 holds 0,1,4,5 but records [0:4]; rank 1 holds 2,3,6,7
    # and records [2:6]: the boxes overlap, which validation reports (world size 2)
    L = dtensor_layout((8,), (2,), "SS(0,2)")
    plans = [H.create_default_local_save_plan({"w": RankValue(L, r)}, r == 0) for r in range(2)]
    final, md = H.create_default_global_save_plan(H.dedup_save_plans(plans))
    assert H.validate_global_plan(final, md) == [
        "key:w has overlapping chunks: "
        "ChunkStorageMetadata(offsets=torch.Size([2]), sizes=torch.Size([4])) "
        "ChunkStorageMetadata(offsets=torch.Size([0]), sizes=torch.Size([4]))"
    ]


def test_flatten_state_dict_examples():
    t = RankValue(tensor_layout((2,), 1), 0)
    flat, mapping = dcp.flatten_state_dict(
        {"model": {"w": t, "layers": [t, {"b": t}]}, "step": 3, "cfg": [1, 2], "pair": (t, t)}
    )
    assert list(flat) == ["model.w", "model.layers.0", "model.layers.1.b", "step", "cfg", "pair"]
    assert mapping["model.layers.1.b"] == ("model", "layers", 1, "b")
    assert flat["cfg"] == [1, 2]  # a list without tensors or containers is one leaf
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    tt = torch.zeros(2)
    tflat, tmap = flatten_state_dict(
        {"model": {"w": tt, "layers": [tt, {"b": tt}]}, "step": 3, "cfg": [1, 2], "pair": (tt, tt)}
    )
    assert list(tflat) == list(flat) and tmap == mapping


def test_iterate_state_dict_replaces_unknown_types_with_none():
    # {"a": t, "extra_set": {1, 2}, "extra_obj": Cfg()} -> extra_set=None, extra_obj=None
    class Cfg:
        pass

    t = RankValue(tensor_layout((2,), 1), 0)
    sd = {"a": t, "extra_set": {1, 2}, "extra_obj": Cfg(), "n": [1, (2, "x")], "io": None}
    assert H.init_state_dict(sd) is None
    assert sd == {"a": t, "extra_set": None, "extra_obj": None, "n": [1, (2, "x")], "io": None}
    from torch.distributed.checkpoint.planner_helpers import _init_state_dict

    tsd = {
        "a": torch.zeros(2),
        "extra_set": {1, 2},
        "extra_obj": Cfg(),
        "n": [1, (2, "x")],
        "io": None,
    }
    _init_state_dict(tsd)
    assert {k: v for k, v in tsd.items() if k != "a"} == {k: v for k, v in sd.items() if k != "a"}
