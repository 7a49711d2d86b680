"""plan_save / plan_load against torch 2.13's own planners, item by item and in order.

Every rank is run for real under torch's ``fake`` process group: a state dict of meta-device
DTensors (``DTensor.from_local`` on a ``DeviceMesh("cpu", ...)``), meta plain tensors, BytesIO
values and ShardedTensor stand-ins (objects with torch's ``__create_write_items__`` /
``__create_chunk_list__`` protocol producing exactly what ``ShardedTensor`` produces: one SHARD
item / chunk per local shard), then torch's ``create_default_local_save_plan``,
``dedup_save_plans``, ``create_default_global_save_plan``, ``_validate_global_plan`` and, on the
metadata torch itself produced, ``create_default_local_load_plan`` per rank of the load world.
Helper level: ``create_read_items_for_chunk_list`` on random explicit chunk lists.
The torch state dicts are built in support.py, independently of workbench.torch_bridge.
"""

from __future__ import annotations

import io

import pytest
import torch  # installed in .venv; the package itself never needs it
from hypothesis import event, given
from hypothesis import strategies as st
from support import (
    boxes_in,
    crowded_state_dicts,
    metadata_key,
    read_key,
    save_and_load,
    shapes,
    state_dicts,
    write_key,
)
from torch.distributed.checkpoint import default_planner as TDP
from torch.distributed.checkpoint import metadata as tmeta
from torch.distributed.checkpoint.default_planner import (
    create_default_local_save_plan,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.distributed.tensor import placement_types as TPL
from torch_support import (
    fake_rank,
    ours_load,
    real_dtensor,
    torch_load,
    torch_save,
    torch_state_dict,
)

import workbench as wb
from workbench import planner_helpers as ph
from workbench.planning import plan_load, plan_save
from workbench.records import Metadata, TensorStorageMetadata
from workbench.sharding import (
    bytes_layout,
    dtensor_layout,
    sharded_layout,
    tensor_layout,
)
from workbench.torch_bridge.convert import from_torch, to_torch


# ----------------------------------------------------------------------------- harness
def check_save(layouts, lowest):
    res = plan_save(layouts, save_to_lowest_rank=lowest)
    local, plans, md, errors = torch_save(layouts, lowest)
    for r in range(res.world_size):
        assert [write_key(i) for i in res.local_plans[r].items] == [
            write_key(i) for i in local[r].items
        ]
        assert [write_key(i) for i in res.plans[r].items] == [write_key(i) for i in plans[r].items]
    assert metadata_key(res.metadata) == metadata_key(md)
    assert res.errors == errors
    return res, md


# ----------------------------------------------------------------------------- worked examples
def test_dedup_tie_break_matches_torch():
    check_save({"w": dtensor_layout((16,), (2, 8), "R, S(0)")}, lowest=False)
    check_save({"w": dtensor_layout((16,), (2, 8), "R, S(0)")}, lowest=True)


def test_bytes_value_goes_to_rank_one_as_in_torch():
    res, _ = check_save({"tensor": tensor_layout((10,), 4), "value": bytes_layout(4)}, False)
    assert res.writers == {"tensor": [0], "value": [1]}


def test_fsdp_tp_and_uneven_layouts_match_torch():
    layouts = {
        "embed": dtensor_layout((13, 4), (3, 2), "SS(0,2), S(0)"),
        "q": dtensor_layout((9, 6), (3, 2), "S(0), S(1)"),
        "norm": dtensor_layout((6,), (3, 2), "R, R"),
        "empty": dtensor_layout((2, 0, 3), (3, 2), "S(0), S(2)"),
        "step": tensor_layout((), 6, "int64"),
        "cfg": bytes_layout(6),
    }
    res, md = check_save(layouts, False)
    load = {
        "embed": dtensor_layout((13, 4), (4,), "S(1)"),
        "q": dtensor_layout((9, 6), (2, 2), "S(1), S(0)"),
        "norm": dtensor_layout((6,), (4,), "S(0)"),
        "empty": dtensor_layout((2, 0, 3), (2, 2), "R, S(0)"),
        "step": tensor_layout((), 4, "int64"),
        "cfg": bytes_layout(4),
    }
    expected = torch_load(md, load, True)
    assert ours_load(plan_load(res.metadata, load)) == expected
    # torch's own Metadata object is accepted too (converted by torch_bridge)
    assert ours_load(plan_load(md, load)) == expected


def test_partial_load_message_matches_torch():
    res, md = check_save({"w": dtensor_layout((4, 2), (2,), "S(0)")}, False)
    load = {"w": dtensor_layout((4, 2), (2,), "P", world_size=3)}
    assert ours_load(plan_load(res.metadata, load)) == torch_load(md, load, True)


def test_partial_save_message_matches_torch():
    lay = {"w": dtensor_layout((4,), (2,), "P")}
    with fake_rank(0, 2), pytest.raises(ValueError) as e:
        create_default_local_save_plan(torch_state_dict(lay, 0), True)
    assert plan_save(lay).failures == [("w", (0, 1), str(e.value))]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_storage_data_matches_a_real_save(tmp_path):
    # a real single-process dcp.save (FileSystemWriter defaults): same metadata, same files
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    dcp.save(
        {"a": torch.zeros(4, 3), "step": torch.tensor(7), "cfg": io.BytesIO(b"x")},
        checkpoint_id=str(tmp_path),
    )
    real = FileSystemReader(str(tmp_path)).read_metadata()
    res = plan_save(
        {
            "a": tensor_layout((4, 3), 1),
            "step": tensor_layout((), 1, "int64"),
            "cfg": bytes_layout(1),
        }
    )
    assert metadata_key(res.metadata) == metadata_key(real)

    def files(sd):
        return {
            (k.fqn, None if k.offset is None else tuple(k.offset), k.index): v.relative_path
            for k, v in sd.items()
        }

    assert files(res.metadata.storage_data) == files(real.storage_data)


# ----------------------------------------------------------------------------- random layouts
@given(state_dicts(max_world=16), st.booleans())
def test_save_matches_torch(layouts, lowest):
    res, _ = check_save(layouts, lowest)
    event(f"world > 8: {res.world_size > 8}")
    event(f"validation errors: {bool(res.errors)}")
    event(
        f"dedup dropped items: {sum(len(p.items) for p in res.local_plans) > sum(len(p.items) for p in res.plans)}"
    )


@given(crowded_state_dicts(), st.booleans())
def test_crowded_dedup_matches_torch(layouts, lowest):
    # many shared keys between one-holder keys: the load-balanced writer choice, set order
    check_save(layouts, lowest)


@given(save_and_load(max_world=12))
def test_load_matches_torch(case):
    saved, load, strict, lowest = case
    res, md = check_save(saved, lowest)
    ours = plan_load(res.metadata, load, allow_partial_load=not strict)
    assert ours_load(ours) == torch_load(md, load, strict)
    event(f"failures: {bool(ours.failures)}")
    n = sum(len(p.items) for p in ours.plans)
    event(f"read items: {'0' if n == 0 else '1-9' if n < 10 else '10+'}")


@st.composite
def chunk_lists(draw):
    shape = draw(shapes)
    saved = draw(boxes_in(shape, max_n=6, outside=True))
    local = draw(boxes_in(shape, max_n=4, outside=True))
    return shape, saved, local


@given(chunk_lists())
def test_read_items_for_chunk_lists_match_torch(case):
    # explicit (ShardedTensor-like) chunks, overlapping, zero-size, out of bounds, several local
    shape, saved, local = case
    md = Metadata({"w": TensorStorageMetadata("float32", shape, saved)})
    res = plan_load(md, {"w": sharded_layout(shape, [local])})
    ours = [read_key(i) for i in res.plans[0].items]
    tmd = tmeta.TensorStorageMetadata(
        tmeta.TensorProperties(dtype=torch.float32),
        torch.Size(shape),
        [tmeta.ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)) for c in saved],
    )
    tlocal = [tmeta.ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)) for c in local]
    assert ours == [read_key(i) for i in create_read_items_for_chunk_list("w", tmd, tlocal)]
    assert ours == [
        read_key(i)
        for i in ph.create_read_items_for_chunk_list("w", md.state_dict_metadata["w"], local)
    ]


# ----------------------------------------------------------------------------- top-level layouts and plans
def test_layouts_and_plan_save_attributes():
    save = {
        "w": wb.dtensor_layout((8, 6), (2,), ["S(0)"]),
        "b": wb.tensor_layout((6,), 2),
        "step": wb.bytes_layout(2),
    }
    assert save["w"].chunks(1) == (wb.Chunk((4, 0), (4, 6)),)
    assert wb.dtensor_layout((8, 6), (2,), "S(0)").rank_chunks == save["w"].rank_chunks
    assert (
        wb.dtensor_layout((8, 6), [2], [TPL.Shard(0)], dtype="float32").rank_chunks
        == save["w"].rank_chunks
    )
    assert wb.tensor_layout((6,), 2, dtype="bfloat16").dtype == "bfloat16"
    assert wb.tensor_layout((6,), 2, torch.bfloat16).dtype == "bfloat16"
    res = wb.plan_save(save, save_to_lowest_rank=False)
    assert len(res.local_plans) == len(res.plans) == 2
    assert all(isinstance(p, wb.SavePlan) for p in res.plans)
    assert isinstance(res.metadata, wb.Metadata) and res.errors == []
    assert list(res.metadata.state_dict_metadata) == ["w", "b", "step"]
    # equal to the workbench's own helpers applied to the local plans
    plans, md = wb.create_default_global_save_plan(wb.dedup_save_plans(res.local_plans))
    assert list(res.plans) == plans
    assert res.metadata.state_dict_metadata == md.state_dict_metadata


def test_plan_load_items_equal_torch_under_fake_group():
    save = {"w": wb.dtensor_layout((8, 6), (2,), "S(0)"), "step": wb.bytes_layout(2)}
    md = wb.plan_save(save).metadata
    load = {"w": wb.dtensor_layout((8, 6), (2,), "S(1)"), "step": wb.bytes_layout(2)}
    res = wb.plan_load(md, load)
    tmd = to_torch(md)
    for rank in range(2):
        with fake_rank(rank, 2):
            sd = {"w": real_dtensor((8, 6), (2,), [TPL.Shard(1)]), "step": 0}
            want = TDP.create_default_local_load_plan(sd, tmd, True)
        assert list(res.plans[rank].items) == [from_torch(i) for i in want.items]
        assert [(i.dest_index.index, i.storage_index.index) for i in res.plans[rank].items] == [
            (i.dest_index.index, i.storage_index.index) for i in want.items
        ]
    assert res.problems == []
