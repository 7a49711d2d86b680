"""Acceptance: the names DESIGN.md's "Acceptance interface" promises, called the way an outsider
reading DESIGN.md would (top-level ``import workbench``, documented argument orders, torch objects
wherever torch's own functions take them), with results checked against the installed torch 2.13.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import pickle
import warnings

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint import _dedup_save_plans as TD
from torch.distributed.checkpoint import default_planner as TDP
from torch.distributed.checkpoint import metadata as TM
from torch.distributed.checkpoint import planner as TP
from torch.distributed.checkpoint import planner_helpers as TH
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor import placement_types as TPL
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
from torch.testing._internal.distributed.fake_pg import FakeStore

import workbench as wb
from workbench.torch_bridge.convert import from_torch, to_torch


def house_form(err: Exception, fqn: str | None = None) -> str:
    """The message of a WorkbenchError, checked for ``<fqn>: <what> ... (<expectation>).``"""
    assert isinstance(err, wb.WorkbenchError) and isinstance(err, ValueError), type(err)
    msg = str(err)
    head = fqn if fqn is not None else "<input>"
    assert msg.startswith(f"{head}: "), msg
    assert "(" in msg and ")." in msg, msg
    return msg


@contextlib.contextmanager
def fake_rank(rank, world_size):
    dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dist.destroy_process_group()


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


# ----------------------------------------------------------------------------- placements
@pytest.mark.parametrize(
    "spec,obj,torch_obj",
    [
        ("S(0)", wb.Shard(0), TPL.Shard(0)),
        ("R", wb.Replicate(), TPL.Replicate()),
        ("SS(0,2)", wb.StridedShard(0, 2), TPL._StridedShard(0, split_factor=2)),
        ("P", wb.Partial(), TPL.Partial()),
    ],
)
def test_placements_parse_print_and_match_torch(spec, obj, torch_obj):
    assert wb.parse_placement(spec) == obj
    assert str(obj) == spec
    assert wb.parse_placement(str(obj)) == obj
    # torch's own printed forms parse too, and a torch placement converts to the same record
    assert wb.parse_placement(repr(torch_obj)) == obj
    assert wb.parse_placement(str(torch_obj)) == obj
    assert repr(obj) == repr(torch_obj)
    assert from_torch(torch_obj) == obj
    assert to_torch(obj) == torch_obj


def test_placement_fields_use_torch_names():
    assert wb.Shard(1).dim == TPL.Shard(1).dim
    ss = wb.StridedShard(dim=1, split_factor=3)
    assert (ss.dim, ss.split_factor) == (1, 3)
    assert wb.Partial().reduce_op == TPL.Partial().reduce_op == "sum"


# ----------------------------------------------------------------------------- shard math
SHARD_CASES = [
    ((8, 6), (2,), ["S(0)"]),
    ((7, 5), (4,), ["S(0)"]),  # uneven: 2, 2, 2, 1
    ((3,), (8,), ["S(0)"]),  # empty shards
    ((13, 2), (4, 2), ["S(0)", "S(0)"]),
    ((12, 4), (2, 2), ["SS(0,2)", "S(0)"]),
    ((10, 9), (2, 3), ["S(1)", "S(0)"]),
    ((9, 4), (3, 2), ["R", "S(1)"]),
    ((16,), (2, 2), ["SS(0,2)", "S(0)"]),
    ((5, 6), (2,), ["S(-1)"]),
]


def _coords(mesh_shape):
    return [
        tuple(int(c) for c in torch.unravel_index(torch.tensor(r), mesh_shape))
        for r in range(math.prod(mesh_shape))
    ]


@pytest.mark.parametrize("shape,mesh,specs", SHARD_CASES)
@pytest.mark.parametrize("form", ["workbench", "spec", "torch"])
def test_local_shape_and_offset_equals_torch(shape, mesh, specs, form):
    torch_pl = [T(wb.parse_placement(s)) for s in specs]
    given = {"workbench": [wb.parse_placement(s) for s in specs], "spec": specs, "torch": torch_pl}[
        form
    ]
    for coord in _coords(mesh):
        got = wb.local_shape_and_offset(shape, mesh, coord, given)
        want = _compute_local_shape_and_global_offset(shape, mesh, list(coord), torch_pl)
        assert got == (tuple(want[0]), tuple(want[1])), (coord, got, want)
        assert type(got) is tuple and all(type(x) is tuple for x in got)


def test_local_shape_and_offset_accepts_torch_size_and_tuples():
    got = wb.local_shape_and_offset(torch.Size([8, 6]), torch.Size([2]), (1,), (TPL.Shard(0),))
    assert got == ((4, 6), (4, 0))


def _torch_held(shape, mesh, coord, torch_pl):
    """Independently: split index tensors with torch's own placements, the way distribute_tensor
    shards a full tensor mesh dim by mesh dim."""
    idx = {d: torch.arange(shape[d]) for d in range(len(shape))}
    for m, p in enumerate(torch_pl):
        if isinstance(p, (TPL.Shard, TPL._StridedShard)):
            d = p.dim % len(shape)
            # the same placement on dim 0 of the 1-d index tensor of dim d
            p1 = (
                TPL.Shard(0)
                if type(p) is TPL.Shard
                else TPL._StridedShard(0, split_factor=p.split_factor)
            )
            pieces, _ = p1._split_tensor(idx[d], mesh[m], with_padding=False)
            idx[d] = pieces[coord[m]]
    sharded = {
        p.dim % len(shape) for p in torch_pl if isinstance(p, (TPL.Shard, TPL._StridedShard))
    }
    return {d: idx[d].tolist() for d in sorted(sharded)}


@pytest.mark.parametrize("shape,mesh,specs", SHARD_CASES)
def test_held_indices_match_torch_split(shape, mesh, specs):
    torch_pl = [T(wb.parse_placement(s)) for s in specs]
    for coord in _coords(mesh):
        got = wb.held_indices(shape, mesh, coord, specs)
        assert isinstance(got, dict) and all(type(v) is list for v in got.values())
        assert got == _torch_held(shape, mesh, coord, torch_pl), coord
        # torch placements are accepted as well
        assert wb.held_indices(shape, mesh, coord, torch_pl) == got


# ----------------------------------------------------------------------------- records
def test_records_take_torch_field_names_and_torch_values():
    c = wb.Chunk(offsets=torch.Size([4, 0]), sizes=[4, 6])
    assert c == wb.Chunk((4, 0), (4, 6)) and str(c) == "[4:8, 0:6]"
    assert wb.ChunkStorageMetadata is wb.Chunk
    i = wb.MetadataIndex("w", offset=torch.Size([4, 0]), index=3)
    assert i == wb.MetadataIndex("w", (4, 0)) and hash(i) == hash(wb.MetadataIndex("w", [4, 0]))
    assert wb.MetadataIndex("w").offset is None and wb.MetadataIndex("w").index is None
    for dtype in ("float32", torch.float32, "torch.float32"):
        assert wb.TensorProperties(dtype).dtype == "float32"
    assert wb.TensorProperties(dtype=torch.bfloat16).dtype == "bfloat16"
    tsm = wb.TensorStorageMetadata(
        properties=wb.TensorProperties("float16"), size=torch.Size([8, 6]), chunks=[c]
    )
    assert tsm.size == (8, 6) and type(tsm.size) is tuple and tsm.chunks == [c]
    md = wb.Metadata(state_dict_metadata={"w": tsm})
    assert md.state_dict_metadata["w"] is tsm
    assert [e.name for e in wb.LoadItemType] == [e.name for e in TP.LoadItemType]
    assert [e.value for e in wb.WriteItemType] == [e.value for e in TP.WriteItemType]
    ri = wb.ReadItem(
        type=wb.LoadItemType.TENSOR,
        dest_index=i,
        dest_offsets=torch.Size([0, 0]),
        storage_index=wb.MetadataIndex("w", (0, 0)),
        storage_offsets=[4, 0],
        lengths=(4, 6),
    )
    assert ri.lengths == (4, 6) and ri.dest_offsets == (0, 0)
    assert wb.SavePlan(items=[]).usable is True
    assert wb.LoadPlan(items=[ri]).items == [ri]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "float64"])
def test_write_item_tensor_storage_size_equals_torch(dtype):
    t = torch.zeros(5, 7, dtype=getattr(torch, dtype))
    theirs = TH._create_write_item_for_tensor("w", t)
    ours = wb.create_write_items("w", t)[0]
    assert ours.tensor_storage_size() == theirs.tensor_storage_size() == 35 * t.element_size()
    assert ours == from_torch(theirs)
    assert wb.create_write_items("s", 7)[0].tensor_storage_size() is None


# ----------------------------------------------------------------------------- helpers
def _torch_md(size, chunks, dtype=torch.float32):
    return TM.TensorStorageMetadata(
        TM.TensorProperties(dtype=dtype),
        torch.Size(size),
        [TM.ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in chunks],
    )


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
    tmd = _torch_md(size, saved)
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
            "a": _torch_md((8, 6), [((0, 0), (5, 6)), ((4, 0), (4, 6))]),  # overlap
            "b": _torch_md((4,), [((0,), (2,)), ((3,), (2,))]),  # out of bounds + fill
            "c": _torch_md((4, 4), [((0, 0), (2, 4))]),  # fill
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
    tmd = _torch_md((3, 4), [((0, 0), (2, 4)), ((2, 0), (1, 4))], torch.bfloat16)
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
    saved = _torch_md(shape, [((0, 0), (4, 6)), ((4, 0), (4, 6))])
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


# ----------------------------------------------------------------------------- layouts and plans
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


def test_plan_load_problems_are_records():
    md = wb.plan_save({"w": wb.dtensor_layout((8, 6), (2,), "S(0)")}).metadata
    res = wb.plan_load(
        md, {"w": wb.dtensor_layout((8, 4), (2,), "S(0)"), "x": wb.tensor_layout((2,), 2)}
    )
    kinds = {p.kind for p in res.problems}
    assert {"shape_mismatch", "missing_key"} <= kinds
    import dataclasses

    assert [f.name for f in dataclasses.fields(wb.Problem)] == [
        "fqn",
        "kind",
        "ranks",
        "region",
        "severity",
        "message",
        "fix",
    ]
    for p in res.problems:
        assert isinstance(p, wb.Problem)
        assert p.kind in wb.KINDS and p.severity in wb.SEVERITIES and type(p.ranks) is tuple
    size = next(p for p in res.problems if p.kind == "shape_mismatch")
    assert size.fqn == "w" and size.ranks == (0, 1) and size.severity == "error"


# ----------------------------------------------------------------------------- metadata files
def test_load_metadata_top_level_reads_torch_pickle(tmp_path):
    tmd = TM.Metadata(
        {
            "w": _torch_md((8, 6), [((0, 0), (4, 6)), ((4, 0), (4, 6))], torch.bfloat16),
            "step": TM.BytesStorageMetadata(),
        }
    )
    with open(tmp_path / ".metadata", "wb") as f:
        pickle.dump(tmd, f)
    md = wb.load_metadata(tmp_path)
    assert isinstance(md, wb.Metadata)
    assert md.state_dict_metadata == from_torch(tmd).state_dict_metadata
    assert wb.load_metadata(tmp_path / ".metadata").state_dict_metadata == md.state_dict_metadata
    assert wb.load_metadata(str(tmp_path)).state_dict_metadata == md.state_dict_metadata


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "payload,cls",
    [
        (pickle.dumps(_Evil()), wb.UnsafeCheckpointError),
        (pickle.dumps(_Evil(), protocol=0), wb.UnsafeCheckpointError),
        (pickle.dumps(TM.Metadata({}))[:-5], wb.MetadataError),  # truncated
        (b"", wb.MetadataError),
    ],
)
def test_load_metadata_hostile_or_broken(tmp_path, capfd, payload, cls):
    (tmp_path / ".metadata").write_bytes(payload)
    with pytest.raises(cls) as e:
        wb.load_metadata(tmp_path)
    assert "pwned" not in capfd.readouterr().out
    house_form(e.value, str(tmp_path / ".metadata"))


def test_explain_and_verify_with_torch():
    md = wb.plan_save({"w": wb.dtensor_layout((8, 6), (2,), "S(0)")}).metadata
    text = "Size mismatch between saved torch.Size([8, 6]) and current: torch.Size([8, 4]) for w"
    ex = wb.explain(text)
    assert isinstance(ex, wb.Explanation) and str(ex)
    ex2 = wb.explain(text, metadata=md, target={"w": wb.dtensor_layout((8, 4), (2,), "S(0)")})
    assert "w" in str(ex2)
    v = wb.verify_with_torch({"w": wb.dtensor_layout((8, 6), (2,), "S(0)")})
    assert v.equal, str(v)


# ----------------------------------------------------------------------------- pictures, tables, widgets
def test_checkpoint_explorer_on_a_directory(tmp_path):
    from workbench import widgets

    tmd = TM.Metadata(
        {
            "w": _torch_md((8, 6), [((0, 0), (4, 6)), ((4, 0), (4, 6))]),
            "step": TM.BytesStorageMetadata(),
        }
    )
    with open(tmp_path / ".metadata", "wb") as f:
        pickle.dump(tmd, f)
    c = widgets.CheckpointExplorer(
        tmp_path, {"w": wb.dtensor_layout((8, 6), (4,), "S(1)"), "step": wb.bytes_layout(4)}
    )
    assert c.result is not None and c.message.value == ""
    # rank 2 of S(1) on 4 ranks wants [0:8, 4:6]; state-dict order: w's reads, then step's
    assert c.plan.load.plans[2].items == [
        from_torch(x)
        for x in TH.create_read_items_for_chunk_list(
            "w",
            tmd.state_dict_metadata["w"],
            [TM.ChunkStorageMetadata(torch.Size([0, 4]), torch.Size([8, 2]))],
        )
    ] + [
        wb.ReadItem(
            wb.LoadItemType.BYTE_IO,
            wb.MetadataIndex("step"),
            (0,),
            wb.MetadataIndex("step"),
            (0,),
            (0,),
        )
    ]
    import matplotlib.pyplot as plt

    plt.close("all")


def test_plots_tables_widgets_headless():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from workbench import plots, tables, widgets

    lay = wb.dtensor_layout((8, 6), (2, 2), "S(0), S(1)")
    out = plots.plot_layout(lay)
    assert isinstance(out, (Axes, Figure))
    fig, ax = plt.subplots()
    assert plots.plot_layout(lay, ax=ax) is ax
    save = wb.plan_save({"w": lay})
    load = wb.plan_load(save.metadata, {"w": wb.dtensor_layout((8, 6), (4,), "S(1)")})
    assert isinstance(plots.plot_reshard(save.metadata, load, "w", 1), (Axes, Figure))
    plt.close("all")
    df = tables.layout_chunks_table(lay)
    assert len(df) == 4
    assert len(tables.read_items_table(load, "w", rank=1)) == len(load.plans[1].items)
    assert len(tables.checkpoint_chunks_table(save.metadata)) == 4
    assert tables.problems_table(load.problems).shape[0] == 0
    r = widgets.ReshardExplorer()
    good = r.result
    assert good is not None and r.message.value == ""
    r.load_placements.value = "S(5)"  # bad input: message in the panel, result kept
    assert r.result is good and "S(5)" in r.message.value
    c = widgets.CheckpointExplorer(save.metadata, {"w": wb.dtensor_layout((8, 6), (4,), "S(1)")})
    assert c.result is not None
    plt.close("all")


# ----------------------------------------------------------------------------- bad input
BAD = [
    ("chunk offsets/sizes lengths", lambda: wb.Chunk((0, 0), (4,)), None, ["[0, 0]", "[4]"]),
    ("negative size", lambda: wb.Chunk((0,), (-2,)), None, ["-2"]),
    (
        "shard dim past ndim",
        lambda: wb.local_shape_and_offset((8, 6), (2,), (0,), ["S(2)"]),
        None,
        ["S(2)", "(8, 6)"],
    ),
    (
        "shard dim past ndim, fqn",
        lambda: wb.dtensor_layout((8, 6), (2,), "S(2)", fqn="w"),
        "w",
        ["S(2)", "(8, 6)"],
    ),
    (
        "placements vs mesh",
        lambda: wb.dtensor_layout((8, 6), (2, 2), "S(0)", fqn="w"),
        "w",
        ["S(0)", "(2, 2)"],
    ),
    (
        "held placements vs mesh",
        lambda: wb.held_indices((8, 6), (2, 2), (0, 0), ["S(0)"]),
        None,
        ["(2, 2)"],
    ),
    ("split factor 0", lambda: wb.dtensor_layout((8,), (2,), "SS(0,0)", fqn="w"), "w", ["SS(0,0)"]),
    ("unknown dtype", lambda: wb.tensor_layout((2,), 2, "floaty32", fqn="w"), "w", ["floaty32"]),
    ("unknown dtype record", lambda: wb.TensorProperties("floaty32"), None, ["floaty32"]),
    ("bad spec", lambda: wb.parse_placement("X(1)"), None, ["X(1)"]),
    (
        "coordinate outside mesh",
        lambda: wb.local_shape_and_offset((8,), (2,), (2,), ["S(0)"]),
        None,
        ["(2,)"],
    ),
]


@pytest.mark.parametrize("name,call,fqn,values", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_house_form(name, call, fqn, values):
    with pytest.raises(wb.WorkbenchError) as e:
        call()
    msg = house_form(e.value, fqn)
    for v in values:
        assert v in msg, (v, msg)


def test_read_items_bad_input_names_the_fqn():
    md = wb.TensorStorageMetadata("float32", (8, 6), [wb.Chunk((0, 0), (8, 6))])
    # torch zips per dim and returns a garbage read here; the workbench refuses
    with pytest.raises(wb.ChunkError) as e:
        wb.create_read_items_for_chunk_list("w", md, [wb.Chunk((0,), (3,))])
    assert "[0:3]" in house_form(e.value, "w")
    with pytest.raises(wb.ChunkError) as e:
        wb.create_read_items_for_chunk_list("w", md, [((0, 0), (3,))])
    assert "[0, 0]" in house_form(e.value, "w")
    for bad in (None, {"w": md}):
        with pytest.raises(wb.PlanError) as e:
            wb.create_read_items("w", bad, torch.zeros(8, 6))
        house_form(e.value, "w")
    with pytest.raises(wb.PlanError) as e:
        wb.create_read_items_for_chunk_list("w", None, [wb.Chunk((0, 0), (8, 6))])
    house_form(e.value, "w")


def test_partial_in_a_checkpoint_is_reported():
    save = {"w": wb.dtensor_layout((8, 6), (2,), "P")}
    res = wb.plan_save(save)
    probs = wb.find_save_problems(res)
    assert any(p.kind == "partial" and p.fqn == "w" for p in probs)
    with pytest.raises(wb.WorkbenchError) as e:
        wb.create_write_items("w", wb.LocalTensor(save["w"], 0))
    assert "partial placements" in house_form(e.value, "w")


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
    saved = _torch_md((6,), [((0,), (2,)), ((2,), (4,))])
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


def test_explain_takes_torch_metadata_and_a_real_state_dict():
    md = wb.plan_save({"w": wb.dtensor_layout((8, 6), (2,), "S(0)")}).metadata
    text = "Size mismatch between saved torch.Size([8, 6]) and current: torch.Size([8, 4]) for w"
    want = wb.explain(text, md, {"w": wb.tensor_layout((8, 4), 1), "step": wb.bytes_layout(1)})
    got = wb.explain(text, to_torch(md), {"w": torch.empty(8, 4, device="meta"), "step": 3})
    assert got == want and got.fqn == "w"
    with pytest.raises(wb.MetadataError) as e:
        wb.explain(text, metadata="/some/checkpoint")
    assert "load_metadata" in house_form(e.value)
    with pytest.raises(wb.PlanError) as e:
        wb.explain(text, md, target=5)
    house_form(e.value)


def test_layout_table_of_a_real_dtensor_and_bad_paths():
    from workbench import tables

    with fake_rank(0, 4):
        dt = real_dtensor((7, 6), (2, 2), [TPL.Shard(0), TPL.Shard(1)])
        got = tables.layout_chunks_table(dt)
    want = tables.layout_chunks_table(wb.dtensor_layout((7, 6), (2, 2), "S(0), S(1)"))
    import pandas as pd

    pd.testing.assert_frame_equal(got, want)
    with pytest.raises(wb.LayoutError) as e:
        tables.layout_chunks_table("S(0)")
    house_form(e.value)
    with pytest.raises(wb.MetadataError) as e:
        wb.load_metadata(123)
    assert "123" in house_form(e.value)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st


@st.composite
def sharding_case(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(0, 12)) for _ in range(ndim))
    mesh = tuple(draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 3))))
    pl = []
    for _ in mesh:
        kind = draw(st.sampled_from(["S", "SS", "R", "P"]))
        d = draw(st.integers(0, ndim - 1))
        pl.append(
            {
                "S": TPL.Shard(d),
                "R": TPL.Replicate(),
                "P": TPL.Partial(),
                "SS": TPL._StridedShard(d, split_factor=draw(st.integers(1, 3))),
            }[kind]
        )
    return shape, mesh, pl


@settings(max_examples=80)
@given(sharding_case())
def test_random_torch_placements_local_shape_offset_and_held(case):
    shape, mesh, torch_pl = case
    for coord in _coords(mesh):
        want = _compute_local_shape_and_global_offset(shape, mesh, list(coord), torch_pl)
        assert wb.local_shape_and_offset(shape, mesh, coord, torch_pl) == (
            tuple(want[0]),
            tuple(want[1]),
        )
        assert wb.held_indices(shape, mesh, coord, torch_pl) == _torch_held(
            shape, mesh, coord, torch_pl
        )


def test_checkpoint_table_takes_torch_metadata():
    import pandas as pd

    from workbench import tables

    md = wb.plan_save(
        {"w": wb.dtensor_layout((8, 6), (2,), "S(0)"), "s": wb.bytes_layout(2)}
    ).metadata
    pd.testing.assert_frame_equal(
        tables.checkpoint_chunks_table(to_torch(md)), tables.checkpoint_chunks_table(md)
    )
    pd.testing.assert_frame_equal(
        tables.checkpoint_chunks_table(to_torch(md), "w"), tables.checkpoint_chunks_table(md, "w")
    )


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
    tmd = _torch_md(shape, [(c.offsets, c.sizes) for c in saved])
    tlocal = [to_torch(c) for c in local]
    want = [from_torch(x) for x in TH.create_read_items_for_chunk_list("w", tmd, tlocal)]
    got = wb.create_read_items_for_chunk_list("w", tmd, tlocal)
    assert got == want
    assert [(r.dest_index.index, r.storage_index.index) for r in got] == [
        (r.dest_index.index, r.storage_index.index) for r in want
    ]


def test_state_dict_from_module_takes_a_module_or_its_state_dict():
    with torch.device("meta"):
        m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    want = {
        "0.weight": ((4, 3), "float32"),
        "0.bias": ((4,), "float32"),
        "1.weight": ((4,), "float32"),
        "1.bias": ((4,), "float32"),
    }
    assert wb.state_dict_from_module(m) == want
    assert wb.state_dict_from_module(m.state_dict()) == want
    with pytest.raises(wb.PlanError) as e:
        wb.state_dict_from_module(5)
    house_form(e.value)


def test_pictures_accept_torch_metadata():
    from workbench import plots
    from workbench.torch_bridge import to_torch

    save = wb.plan_save({"w": wb.dtensor_layout((8, 4), (2,), "S(0)")})
    tmd = to_torch(save.metadata)
    ours = plots.layout_data(save.metadata, fqn="w")
    theirs = plots.layout_data(tmd, fqn="w")
    assert theirs == ours and len([t for t in ours.tiles if t.kind == "chunk"]) == 2
    pic = plots.reshard_data(tmd, wb.dtensor_layout((8, 4), (4,), "S(0)"), "w", 1)
    assert pic == plots.reshard_data(save.metadata, wb.dtensor_layout((8, 4), (4,), "S(0)"), "w", 1)
