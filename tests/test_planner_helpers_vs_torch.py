"""The public planner-helper mirrors (``wb.create_read_items_for_chunk_list``,
``wb.dedup_save_plans``, ``wb.create_default_global_save_plan``, ``wb.validate_global_plan``, the
plan-caching helpers and the state-dict helpers) called through top-level ``import workbench``
with torch's own records, plain tensors, DTensors and ShardedTensors under the fake process group,
against the installed torch 2.13; and the scalar mirrors run rank by rank on the wide random
cases.
"""

from __future__ import annotations

import io
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support import (
    helpers_load,
    helpers_save,
    house_form,
    metadata_key,
    wide_save_and_load,
    wide_settings,
    write_key,
)
from torch.distributed.checkpoint import _dedup_save_plans as TD
from torch.distributed.checkpoint import default_planner as TDP
from torch.distributed.checkpoint import metadata as TM
from torch.distributed.checkpoint import planner as TP
from torch.distributed.checkpoint import planner_helpers as TH
from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans
from torch.distributed.checkpoint.default_planner import (
    _validate_global_plan,
    create_default_global_save_plan,
)
from torch.distributed.tensor import DTensor
from torch.distributed.tensor import placement_types as TPL
from torch_support import T, fake_rank, real_dtensor, torch_load, torch_local_save, torch_tensor_md

import workbench as wb
from workbench.torch_bridge.convert import from_torch, to_torch

# ----------------------------------------------------------------------------- read items
READ_CASES = [  # (size, saved chunks, local chunks)
    ((8, 6), [((0, 0), (4, 6)), ((4, 0), (4, 6))], [((0, 0), (8, 3)), ((0, 3), (8, 3))]),
    (
        (13, 2),
        [((0, 0), (4, 2)), ((4, 0), (4, 2)), ((8, 0), (4, 2)), ((12, 0), (1, 2))],
        [((2, 0), (7, 1)), ((0, 1), (13, 1))],
    ),
    ((4, 10), [((0, 0), (4, 5)), ((0, 5), (4, 5))], [((1, 2), (2, 6))]),
    ((6,), [((0,), (3,)), ((3,), (3,))], [((2,), (3,)), ((6,), (0,))]),
    ((), [((), ())], [((), ())]),
]


@pytest.mark.parametrize("size,saved,local", READ_CASES)
def test_create_read_items_for_chunk_list_equals_torch(size, saved, local):
    tmd = torch_tensor_md(size, saved)
    tlocal = [TM.ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in local]
    want = [from_torch(x) for x in TH.create_read_items_for_chunk_list("w", tmd, tlocal)]
    assert want, "case must read something"
    # workbench records
    md = wb.TensorStorageMetadata(
        wb.TensorProperties("float32"), size, [wb.Chunk(o, s) for o, s in saved]
    )
    ours = wb.create_read_items_for_chunk_list("w", md, [wb.Chunk(o, s) for o, s in local])
    assert ours == want
    assert [(r.dest_index.index, r.storage_index.index) for r in ours] == [
        (r.dest_index.index, r.storage_index.index) for r in want
    ]
    # torch's records: returns workbench records, equal to torch's converted
    from_torch_args = wb.create_read_items_for_chunk_list("w", tmd, tlocal)
    assert from_torch_args == want and all(isinstance(r, wb.ReadItem) for r in from_torch_args)


@st.composite
def reshard_case(draw):
    """Saved chunks of one DTensor layout, wanted chunks of another (same global shape)."""
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.integers(0, 9)) for _ in range(ndim))

    def layout():
        mesh = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 2))))
        specs = [draw(st.sampled_from(["R", "S", "SS"] if ndim else ["R"])) for _ in mesh]
        specs = [
            s
            if s == "R"
            else f"S({draw(st.integers(0, ndim - 1))})"
            if s == "S"
            else f"SS({draw(st.integers(0, ndim - 1))},{draw(st.integers(1, 3))})"
            for s in specs
        ]
        return wb.dtensor_layout(shape, mesh, specs)

    saved, want = layout(), layout()
    saved_chunks = [c for r in range(saved.world_size) for c in saved.chunks(r)]
    rank = draw(st.integers(0, want.world_size - 1))
    return shape, saved_chunks, list(want.chunks(rank))


@settings(max_examples=80)
@given(reshard_case())
def test_random_read_items_equal_torch_with_torch_records(case):
    shape, saved, local = case
    tmd = torch_tensor_md(shape, [(c.offsets, c.sizes) for c in saved])
    tlocal = [to_torch(c) for c in local]
    want = [from_torch(x) for x in TH.create_read_items_for_chunk_list("w", tmd, tlocal)]
    got = wb.create_read_items_for_chunk_list("w", tmd, tlocal)
    assert got == want
    assert [(r.dest_index.index, r.storage_index.index) for r in got] == [
        (r.dest_index.index, r.storage_index.index) for r in want
    ]


# ----------------------------------------------------------------------------- global plan
def _plans_from_torch(torch_plans):
    return [from_torch(p) for p in torch_plans]


def _write_item(fqn, offsets, sizes, size, dtype=torch.float32):
    return TP.WriteItem(
        index=TM.MetadataIndex(fqn, torch.Size(offsets)),
        type=TP.WriteItemType.SHARD,
        tensor_data=TP.TensorWriteData(
            TM.ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)),
            TM.TensorProperties(dtype=dtype),
            torch.Size(size),
        ),
    )


def _torch_plans():
    """Replicated `w` on 10 ranks (set-order tie break), a plain tensor everywhere, bytes."""
    plans = []
    for r in range(10):
        items = [
            _write_item("w", (0,), (16,), (16,)),
            TP.WriteItem(
                index=TM.MetadataIndex("t", torch.Size([0, 0])),
                type=TP.WriteItemType.TENSOR,
                tensor_data=TP.TensorWriteData(
                    TM.ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([3, 3])),
                    TM.TensorProperties(dtype=torch.bfloat16),
                    torch.Size([3, 3]),
                ),
            ),
            _write_item("s", (r * 2,), (2,), (20,)),
            TP.WriteItem(index=TM.MetadataIndex("step"), type=TP.WriteItemType.BYTE_IO),
        ]
        plans.append(TP.SavePlan(items))
    return plans


@pytest.mark.parametrize("lowest", [False, True])
def test_dedup_and_global_save_plan_equal_torch_on_torch_plans(lowest):
    want = TD.dedup_save_plans(_torch_plans(), lowest)
    ours = wb.dedup_save_plans(_torch_plans(), save_to_lowest_rank=lowest)
    assert ours == _plans_from_torch(want)
    ours_wb = wb.dedup_save_plans(_plans_from_torch(_torch_plans()), lowest)
    assert ours_wb == ours
    g_want, md_want = TDP.create_default_global_save_plan(want, rewrite_index_hints=True)
    g_ours, md_ours = wb.create_default_global_save_plan(ours, rewrite_index_hints=True)
    assert g_ours == _plans_from_torch(g_want)
    assert [[i.index.index for i in p.items] for p in g_ours] == [
        [i.index.index for i in p.items] for p in g_want
    ]
    assert md_ours == from_torch(md_want)
    # torch's plans straight in
    g2, md2 = wb.create_default_global_save_plan(want)
    assert g2 == g_ours and md2 == md_ours
    assert (
        wb.validate_global_plan(g_want, md_want) == TDP._validate_global_plan(g_want, md_want) == []
    )


def test_validate_global_plan_exact_strings_with_torch_and_workbench_records():
    md = TM.Metadata(
        {
            "a": torch_tensor_md((8, 6), [((0, 0), (5, 6)), ((4, 0), (4, 6))]),  # overlap
            "b": torch_tensor_md((4,), [((0,), (2,)), ((3,), (2,))]),  # out of bounds + fill
            "c": torch_tensor_md((4, 4), [((0, 0), (2, 4))]),  # fill
        }
    )
    plans = [TP.SavePlan([]), TP.SavePlan([])]
    logging.getLogger("torch.distributed.checkpoint.default_planner").disabled = True
    try:
        want = TDP._validate_global_plan(plans, md)
    finally:
        logging.getLogger("torch.distributed.checkpoint.default_planner").disabled = False
    assert len(want) >= 4
    assert wb.validate_global_plan(plans, md) == want
    assert wb.validate_global_plan(_plans_from_torch(plans), from_torch(md)) == want


def test_compare_merge_contains_usable_with_torch_plans():
    a = TP.SavePlan([_write_item("w", (0,), (4,), (8,))])
    b = TP.SavePlan([_write_item("w", (0,), (4,), (8,), torch.float16)])  # dtype not compared
    c = TP.SavePlan([_write_item("w", (4,), (4,), (8,))])
    unusable = TP.SavePlan([], usable=False)
    for x, y in [(a, b), (a, c), (a, a), (a, unusable)]:
        assert wb.compare_save_plans(x, y) == TH._compare_save_plans(x, y)
        assert wb.compare_save_plans(from_torch(x), from_torch(y)) == TH._compare_save_plans(x, y)
    for deltas in ([None, unusable], [unusable, unusable], [a, None], []):
        assert wb.contains_usable_plan(deltas) == TH._contains_usable_plan(deltas)
    cached, deltas = [a, b, c], [unusable, None, c]
    assert wb.merge_delta_local_plans(cached, deltas) == TH._merge_delta_local_plans(cached, deltas)


# ----------------------------------------------------------------------------- real tensors
def test_state_dict_helpers_with_plain_tensors():
    sd = {"t": torch.ones(3, 4, dtype=torch.bfloat16), "n": 5, "b": io.BytesIO(b"x")}
    want = TH._create_default_metadata_only_plan(sd)
    assert wb.create_default_metadata_only_plan(sd) == from_torch(want)
    for fqn, v in sd.items():
        assert wb.create_write_items(fqn, v) == [
            from_torch(x) for x in TH._create_write_items(fqn, v)
        ]
    assert wb.create_chunk_list(sd["t"]) == [from_torch(c) for c in TH._create_chunk_list(sd["t"])]
    tmd = torch_tensor_md((3, 4), [((0, 0), (2, 4)), ((2, 0), (1, 4))], torch.bfloat16)
    assert wb.create_read_items("t", tmd, sd["t"]) == [
        from_torch(x) for x in TH._create_read_items("t", tmd, sd["t"])
    ]
    bmd = TM.BytesStorageMetadata()
    assert wb.create_read_items("n", bmd, 5) == [
        from_torch(x) for x in TH._create_read_items("n", bmd, 5)
    ]


def test_iterate_and_init_state_dict_like_torch():
    def run(fn, helpers):
        sd = {
            "t": torch.zeros(2),
            "odd": {1, 2},
            "nested": {"x": [torch.zeros(1), 3], "y": (4, "s")},
        }
        out = fn(sd, *helpers) if helpers else fn(sd)
        return sd, out

    helpers = (lambda v: "dt", lambda v: "st", lambda v: ("t", tuple(v.shape)))
    sd_t, out_t = run(TH._iterate_state_dict, helpers)
    sd_w, out_w = run(wb.iterate_state_dict, helpers)
    assert out_w == out_t and sd_w == sd_t
    sd_t, out_t = run(TH._init_state_dict, ())
    sd_w, out_w = run(wb.init_state_dict, ())
    assert out_w is None and out_t is None
    assert sd_w["odd"] is None and sd_t["odd"] is None
    assert sd_w.keys() == sd_t.keys()


def test_iterate_state_dict_dispatches_dtensors_like_torch():
    helpers = (lambda v: ("dt", tuple(v.to_local().shape)), lambda v: "st", lambda v: "t")
    with fake_rank(1, 2):

        def sd():
            return {
                "w": real_dtensor((7, 2), (2,), [TPL.Shard(0)]),
                "t": torch.zeros(1),
                "l": [real_dtensor((4,), (2,), [TPL.Replicate()])],
            }

        want = TH._iterate_state_dict(sd(), *helpers)
        got = wb.iterate_state_dict(sd(), *helpers)
        assert got == want == {"w": ("dt", (3, 2)), "t": "t", "l": [("dt", (4,))]}
        s = sd()
        assert wb.init_state_dict(s) is None and isinstance(s["w"], DTensor)


@pytest.mark.parametrize("specs", [["S(0)"], ["R"], ["SS(0,2)"], ["S(1)"]])
def test_helpers_with_dtensors_under_fake_process_group(specs):
    shape, mesh = (8, 6), (2,)
    pl = [T(wb.parse_placement(s)) for s in specs]
    saved = torch_tensor_md(shape, [((0, 0), (4, 6)), ((4, 0), (4, 6))])
    for rank in range(2):
        with fake_rank(rank, 2):
            dt = real_dtensor(shape, mesh, pl)
            assert wb.create_write_items("w", dt) == [
                from_torch(x) for x in TH._create_write_items("w", dt)
            ]
            assert wb.create_chunk_list(dt) == [from_torch(c) for c in TH._create_chunk_list(dt)]
            assert wb.create_read_items("w", saved, dt) == [
                from_torch(x) for x in TH._create_read_items("w", saved, dt)
            ]
            sd = {"w": dt, "step": 3}
            assert wb.create_default_metadata_only_plan(sd) == from_torch(
                TH._create_default_metadata_only_plan(sd)
            )
            got = wb.create_default_local_save_plan(sd, rank == 0)
            assert got == from_torch(TDP.create_default_local_save_plan(sd, rank == 0))
            tmd = TM.Metadata({"w": saved, "step": TM.BytesStorageMetadata()})
            want = TDP.create_default_local_load_plan(sd, tmd, True)
            assert wb.create_default_local_load_plan(sd, tmd, True) == from_torch(want)


def test_partial_dtensor_raises_workbench_error_with_torch_text():
    with fake_rank(0, 2):
        dt = real_dtensor((8, 6), (2,), [TPL.Partial()])
        with pytest.raises(ValueError) as theirs:
            TH._create_write_items("w", dt)
        with pytest.raises(wb.WorkbenchError) as ours:
            wb.create_write_items("w", dt)
    msg = house_form(ours.value, "w")
    assert str(theirs.value) in msg


def _sharded_tensor(rank, world_size, shard=3):
    """PyTorch's test_planner.create_sharded_tensor, one shard of ``shard`` rows per rank."""
    from torch.distributed._shard.sharded_tensor import (
        Shard as STShard,
    )
    from torch.distributed._shard.sharded_tensor import (
        ShardedTensor,
        ShardedTensorMetadata,
        ShardMetadata,
    )
    from torch.distributed._shard.sharded_tensor.metadata import TensorProperties as STProps

    mds = [ShardMetadata([i * shard], [shard], f"rank:{i}/cpu") for i in range(world_size)]
    local = [STShard.from_tensor_and_offsets(torch.zeros(shard), mds[rank].shard_offsets, rank)]
    st_md = ShardedTensorMetadata(
        mds, torch.Size([shard * world_size]), STProps.create_from_tensor(torch.zeros(1))
    )
    return ShardedTensor._init_from_local_shards_and_global_metadata(local, st_md)


def test_helpers_with_sharded_tensor_under_fake_process_group():
    saved = torch_tensor_md((6,), [((0,), (2,)), ((2,), (4,))])
    with fake_rank(1, 2):
        st = _sharded_tensor(1, 2)
        assert wb.create_write_items("st", st) == [
            from_torch(x) for x in TH._create_write_items("st", st)
        ]
        assert wb.create_chunk_list(st) == [from_torch(c) for c in TH._create_chunk_list(st)]
        assert wb.create_read_items("st", saved, st) == [
            from_torch(x) for x in TH._create_read_items("st", saved, st)
        ]
        sd = {"st": st}
        assert wb.create_default_metadata_only_plan(sd) == from_torch(
            TH._create_default_metadata_only_plan(sd)
        )


# ----------------------------------------------------------------------------- wide cases
@wide_settings
@given(wide_save_and_load())
def test_scalar_helpers_match_torch_on_wide_cases(case):
    saved, load, strict, lowest = case
    local = torch_local_save(saved)
    if any(isinstance(p, str) for p in local):
        return
    plans, md = create_default_global_save_plan(dedup_save_plans(local, lowest))
    h_local, h_plans, h_md, h_errors = helpers_save(saved, lowest)
    assert [[write_key(i) for i in p.items] for p in h_local] == [
        [write_key(i) for i in p.items] for p in local
    ]
    assert [[write_key(i) for i in p.items] for p in h_plans] == [
        [write_key(i) for i in p.items] for p in plans
    ]
    assert metadata_key(h_md) == metadata_key(md)
    assert h_errors == _validate_global_plan(plans, md)
    assert helpers_load(from_torch(md), load, strict) == torch_load(md, load, strict)
