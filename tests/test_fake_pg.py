"""torch's own DefaultSavePlanner / DefaultLoadPlanner for every rank under the fake process group,
and `verify_with_torch`: the workbench's plan_save / plan_load equal torch's item by item."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import workbench as wb
from workbench import (
    Chunk,
    LoadItemType,
    WriteItemType,
    bytes_layout,
    dtensor_layout,
    load_metadata,
    sharded_layout,
    tensor_layout,
)
from workbench.torch_bridge import verify_with_torch
from workbench.torch_bridge.fake_pg import torch_load_plans, torch_save_plans

SAVES = {
    "fsdp + bytes": {
        "w": dtensor_layout((8, 6), (2,), "S(0)"),
        "b": dtensor_layout((6,), (2,), "R"),
        "step": bytes_layout(2),
    },
    "2-d mesh, uneven, empty shards": {
        "w": dtensor_layout((13, 2), (4, 2), "S(0), S(0)"),
        "v": dtensor_layout((3,), (8,), "S(0)"),
        "t": tensor_layout((), 8, "int64"),
    },
    "set-order tie-break": {"w": dtensor_layout((16,), (2, 8), "R, S(0)")},
    "sharded + plain": {
        "st": sharded_layout((4, 4), [[((0, 0), (2, 4))], [((2, 0), (2, 4))], []]),
        "t": tensor_layout((3, 3), 3, "bfloat16"),
    },
    "FSDP2+TP strided": {"w": dtensor_layout((12, 4), (2, 2), "SS(0,2), S(0)")},
    "ranks outside the mesh": {
        "w": dtensor_layout((6,), (2,), "S(0)", world_size=3),
        "t": tensor_layout((2,), 3, ranks=[2]),
    },
}

LOADS = [  # (save layouts, load layouts)
    (
        SAVES["fsdp + bytes"],
        {
            "w": dtensor_layout((8, 6), (2,), "S(1)"),
            "b": dtensor_layout((6,), (2,), "S(0)"),
            "step": bytes_layout(2),
        },
    ),
    (
        SAVES["2-d mesh, uneven, empty shards"],
        {
            "w": dtensor_layout((13, 2), (2, 4), "S(1), S(0)"),
            "v": dtensor_layout((3,), (8,), "R"),
            "t": tensor_layout((), 8, "int64"),
        },
    ),
    (
        SAVES["sharded + plain"],
        {"st": dtensor_layout((4, 4), (3,), "S(1)"), "t": tensor_layout((3, 3), 3, "float32")},
    ),
    # a _StridedShard destination: torch reads the box, the workbench must plan the same items
    ({"w": dtensor_layout((8, 3), (2,), "S(0)")}, {"w": dtensor_layout((8, 3), (2,), "SS(0,2)")}),
    # torch raises on some ranks: missing key, size mismatch, Partial, tensor into bytes
    (
        {"w": dtensor_layout((8, 6), (2,), "S(0)"), "s": bytes_layout(2)},
        {"w": dtensor_layout((8, 6), (2,), "S(0)"), "extra": tensor_layout((2,), 2, ranks=[1])},
    ),
    ({"w": dtensor_layout((8, 6), (2,), "S(0)")}, {"w": dtensor_layout((8, 4), (2,), "S(0)")}),
    ({"w": dtensor_layout((8, 6), (2,), "S(0)")}, {"w": dtensor_layout((8, 6), (2,), "P")}),
    ({"w": dtensor_layout((8, 6), (2,), "S(0)")}, {"w": bytes_layout(2)}),
]


@pytest.mark.parametrize("name", list(SAVES))
def test_save_plans_equal_torch(name):
    v = verify_with_torch(SAVES[name])
    assert v.equal, str(v)
    assert v.checked[0].startswith("save plans")


@pytest.mark.parametrize("i", range(len(LOADS)))
def test_load_plans_equal_torch(i):
    save, load = LOADS[i]
    v = verify_with_torch(save, load_layouts=load)
    assert v.equal, str(v)


def test_torch_writers_follow_cpython_set_order():
    # dcp-semantics 4.2 [verified]: (16,) on mesh (2, 8) [R, S(0)]: chunk k lives on {k, 8+k}
    plans = torch_save_plans(SAVES["set-order tie-break"])
    writers = [r for r, p in enumerate(plans.plans) for _ in p.items]
    assert writers == [0, 1, 2, 4, 6, 11, 13, 15]
    lowest = torch_save_plans(SAVES["set-order tie-break"], save_to_lowest_rank=True)
    assert [r for r, p in enumerate(lowest.plans) for _ in p.items] == list(range(8))
    assert [len(p.items) for p in plans.local_plans] == [1] * 16
    # metadata chunk order = writer order: ranks 0,1,2,4,6 write chunks 0,1,2,4,6, ranks 11,13,15
    # write chunks 3,5,7 (2 elements each)
    assert plans.metadata.state_dict_metadata["w"].chunks == [
        Chunk((2 * k,), (2,)) for k in (0, 1, 2, 4, 6, 3, 5, 7)
    ]


def test_torch_plans_are_workbench_records():
    plans = torch_save_plans(SAVES["fsdp + bytes"])
    item = plans.local_plans[0].items[0]
    assert item.type is WriteItemType.SHARD and item.tensor_data.chunk == Chunk((0, 0), (4, 6))
    assert plans.errors == [] and plans.rank_errors == [None, None]
    loads = torch_load_plans(plans.metadata, LOADS[0][1])
    first = loads.plans[1].items[0]
    assert first.type is LoadItemType.TENSOR and first.dest_index.fqn == "w"
    assert first.storage_offsets == (0, 3) and first.lengths == (4, 3)  # rank 1: cols 3:6


def test_save_validation_errors_equal_torch():
    # SS(0,2) on 2 ranks is misdescribed: boxes [0:4) and [2:6) overlap
    plans = torch_save_plans({"w": dtensor_layout((8,), (2,), "SS(0,2)")})
    # dcp-semantics 4.5: the current chunk is named first; volumes add up, so no fill error
    assert plans.errors == [
        "key:w has overlapping chunks: ChunkStorageMetadata(offsets=torch.Size([2]), "
        "sizes=torch.Size([4])) ChunkStorageMetadata(offsets=torch.Size([0]), "
        "sizes=torch.Size([4]))"
    ]
    assert verify_with_torch({"w": dtensor_layout((8,), (2,), "SS(0,2)")}).equal


def test_partial_save_raises_on_every_rank_in_torch():
    plans = torch_save_plans({"w": dtensor_layout((8,), (2,), "P")})
    assert all(
        "Any checkpointing related operations are not supported for DTensor with partial "
        "placements!" in e
        for e in plans.rank_errors
    )
    assert verify_with_torch({"w": dtensor_layout((8,), (2,), "P")}).equal


def test_a_difference_is_reported(monkeypatch):
    """Not vacuous: a planner that picks the lowest rank is caught at the first differing item."""
    import workbench.planning as planning

    real = planning.plan_save
    monkeypatch.setattr(
        planning, "plan_save", lambda lay, lowest=False, **kw: real(lay, True, **kw)
    )
    v = verify_with_torch(SAVES["set-order tie-break"])
    assert not v.equal and not v
    assert v.difference.startswith("final save plan rank 3")


def test_load_from_a_real_checkpoint(tmp_path):
    import torch
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.zeros(8, 6), "n": torch.zeros(6)}, checkpoint_id=str(tmp_path))
    md = load_metadata(tmp_path)
    v = verify_with_torch(
        {
            "w": dtensor_layout((8, 6), (2, 2), "S(0), S(1)"),
            "n": dtensor_layout((6,), (2, 2), "R, S(0)"),
        },
        md,
    )
    assert v.equal and v.checked == ["load plans of 2 entries on 4 ranks"]
    assert [
        len(p.items)
        for p in torch_load_plans(md, {"w": dtensor_layout((8, 6), (4,), "S(1)")}).plans
    ] == [1, 1, 1, 0]  # 6 columns over 4 ranks: 2, 2, 2, and an empty shard


@st.composite
def _dtensor(draw, world):
    mesh = draw(
        st.sampled_from(
            [m for m in [(1,), (2,), (3,), (4,), (2, 2), (3, 2), (2, 1)] if np.prod(m) <= world]
        )
    )
    ndim = draw(st.integers(1, 2))
    shape = tuple(draw(st.integers(0, 9)) for _ in range(ndim))
    pl = [
        draw(
            st.sampled_from(
                ["R"] + [f"S({d})" for d in range(ndim)] + [f"SS({d},2)" for d in range(ndim)]
            )
        )
        for _ in mesh
    ]
    return dtensor_layout(shape, mesh, ", ".join(pl), world_size=world)


@given(data=st.data())
def test_random_reshards_equal_torch(data):
    world = data.draw(st.sampled_from([2, 4, 6]))
    save = {f"t{i}": data.draw(_dtensor(world)) for i in range(data.draw(st.integers(1, 3)))}
    load = {
        k: dtensor_layout(v.shape, *_retarget(data.draw(_dtensor(world)), v), world_size=world)
        for k, v in save.items()
    }
    v = verify_with_torch(save, load_layouts=load)
    assert v.equal, str(v)


def _retarget(lay, like):
    """Mesh and placements of ``lay`` applied to ``like``'s shape (placements on dims it has)."""
    pl = [p if not hasattr(p, "dim") or p.dim < len(like.shape) else "R" for p in lay.placements]
    return lay.mesh_shape, pl


def test_a_load_difference_names_the_real_rank(monkeypatch):
    """Rank 0 raises in torch (missing key); the planted difference on rank 1 is named rank 1."""
    import workbench.planning as planning

    save = {"w": dtensor_layout((8, 6), (2,), "S(0)")}
    load = {"w": dtensor_layout((8, 6), (2,), "S(0)"), "extra": tensor_layout((2,), 2, ranks=[0])}
    assert verify_with_torch(save, load_layouts=load).equal
    real = planning.plan_load
    wrong = {**load, "w": dtensor_layout((8, 6), (2,), "S(1)")}
    monkeypatch.setattr(planning, "plan_load", lambda md, lay, **kw: real(md, wrong, **kw))
    v = verify_with_torch(save, load_layouts=load)
    assert not v.equal and v.difference.startswith("load plan rank 1 item #0: ours ReadItem(")


def test_ranks_outside_the_mesh_keep_the_dtensor_key():
    # w on mesh (2,) in a world of 3: rank 2 holds the DTensor with an empty local tensor, so a
    # missing key raises on rank 2 too (torch's create_default_local_load_plan checks the key
    # before it skips ranks outside the mesh); the bridge once left the key out on rank 2
    save = {"w": wb.dtensor_layout((8, 4), (2,), "S(0)", world_size=3)}
    load = {"w": save["w"], "x": wb.dtensor_layout((4,), (2,), "S(0)", world_size=3)}
    theirs = torch_load_plans(wb.plan_save(save).metadata, load)
    assert [
        e is not None and "Missing key in checkpoint state_dict: x." in e
        for e in theirs.rank_errors
    ] == [True, True, True]
    assert wb.verify_with_torch(save, load_layouts=load).equal
