"""DTensors on a submesh (``mesh_ranks``): a pipeline stage whose DeviceMesh names global ranks
4..7 of a world of 8. Layouts checked against torch's own ``compute_local_shape_and_global_offset``
on real DeviceMeshes under the fake process group, pipeline save / load plans and a reshard from
2 stages x 4 to 4 stages x 2 against torch's planners (`verify_with_torch`), a real 4-process gloo
save / load checked element by element, the consumers (plots, tables, CLI, convert) and bad input.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.cli import main
from workbench.errors import LayoutError, PlanError
from workbench.geometry import Chunk
from workbench.planning import plan_load, plan_save
from workbench.plots import mesh_data
from workbench.sharding import dtensor_layout, mesh_coordinate, tensor_layout
from workbench.tables import layout_chunks_table
from workbench.targets import read_json_target
from workbench.torch_bridge.fake_pg import torch_save_plans, verify_with_torch


# ----------------------------------------------------------------------------- worked examples
def test_two_rank_submesh_of_eight():
    lay = dtensor_layout((8, 4), (2,), "S(0)", world_size=8, mesh_ranks=[4, 6])
    assert lay.rank_chunks == (
        (),
        (),
        (),
        (),
        (Chunk((0, 0), (4, 4)),),
        (),
        (Chunk((4, 0), (4, 4)),),
        (),
    )
    assert lay.holders() == [4, 6]
    assert lay.mesh_ranks == (4, 6) and lay.mesh_ranks_or_default == (4, 6)
    assert [lay.coordinate(r) for r in range(8)] == [None] * 4 + [(0,), None, (1,), None]
    assert lay.held_indices(6) == {0: [4, 5, 6, 7]} and lay.held_indices(0) == {}
    assert lay.describe() == "DTensor (8, 4) float32 on mesh (2,) at ranks r4,6 [S(0)]"
    assert mesh_coordinate(6, (2,), (4, 6)) == (1,) and mesh_coordinate(5, (2,), (4, 6)) is None


def test_default_ranks_are_stored_as_none():
    """``range(n)`` is the default: the same (cached) layout, described as before."""
    plain = dtensor_layout((8, 4), (2, 2), "S(0), S(1)", world_size=8)
    assert dtensor_layout((8, 4), (2, 2), "S(0), S(1)", world_size=8, mesh_ranks=range(4)) is plain
    assert plain.mesh_ranks is None and plain.mesh_ranks_or_default == (0, 1, 2, 3)
    assert "at ranks" not in plain.describe()
    # the world defaults to the highest mesh rank + 1
    assert dtensor_layout((8,), (2,), "S(0)", mesh_ranks=[5, 2]).world_size == 6


def _torch_view(shape, mesh_shape, placements, mesh_ranks, world_size):
    """Per global rank: (coordinate, chunk) from torch's DeviceMesh.get_coordinate and
    compute_local_shape_and_global_offset on a real submesh, each rank under the fake group."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from workbench.torch_bridge.convert import placement_to_torch

    out = []
    for r in range(world_size):
        dist.init_process_group("fake", store=FakeStore(), rank=r, world_size=world_size)
        try:
            mesh = DeviceMesh("cpu", torch.tensor(mesh_ranks).reshape(mesh_shape))
            coord = mesh.get_coordinate()
            pl = [placement_to_torch(p) for p in placements]
            size, off = compute_local_shape_and_global_offset(torch.Size(shape), mesh, pl)
            out.append(
                (
                    None if coord is None else tuple(coord),
                    None if coord is None else Chunk(tuple(off), tuple(size)),
                )
            )
        finally:
            dist.destroy_process_group()
    return out


@pytest.mark.parametrize(
    "shape, mesh, placements, ranks",
    [
        ((8, 6), (2, 2), "S(0), S(1)", [4, 5, 6, 7]),
        ((8, 6), (2, 2), "S(0), S(1)", [4, 6, 5, 7]),  # column-major placement of the ranks
        ((7, 3), (3,), "S(0)", [7, 1, 4]),  # uneven, unordered
        ((6,), (2, 2), "S(0), SS(0,2)", [6, 2, 7, 3]),  # _StridedShard: misdescribed boxes
        ((5, 4), (2, 2), "R, S(1)", [1, 2, 3, 4]),
    ],
)
def test_chunks_and_coordinates_match_torch(shape, mesh, placements, ranks):
    lay = dtensor_layout(shape, mesh, placements, world_size=8, mesh_ranks=ranks)
    want = _torch_view(shape, mesh, lay.placements, ranks, 8)
    assert [lay.coordinate(r) for r in range(8)] == [c for c, _ in want]
    assert [lay.chunks(r)[0] if lay.chunks(r) else None for r in range(8)] == [c for _, c in want]
    # misdescribed ranks are global: the default mesh's positions, moved to the mesh ranks
    default = dtensor_layout(shape, mesh, placements, world_size=8)
    assert lay.misdescribed_ranks == tuple(sorted(ranks[i] for i in default.misdescribed_ranks))
    if "SS" in placements:
        assert lay.misdescribed_ranks  # the case really exercises the mapping
        for i, r in enumerate(ranks):
            assert lay.held_indices(r) == default.held_indices(i)


@given(st.data())
def test_submesh_moves_the_default_layout_to_the_mesh_ranks(data):
    """Any mesh at any distinct ranks: position i's chunk and coordinate sit at mesh_ranks[i],
    every other rank holds nothing and has no coordinate."""
    mesh = tuple(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    n = math.prod(mesh)
    world = data.draw(st.integers(n, 9))
    ranks = data.draw(st.permutations(range(world)))[:n]
    shape = (data.draw(st.integers(0, 7)), 3)
    pl = ", ".join(data.draw(st.sampled_from(["S(0)", "S(1)", "R", "SS(0,2)"])) for _ in mesh)
    lay = dtensor_layout(shape, mesh, pl, world_size=world, mesh_ranks=ranks)
    default = dtensor_layout(shape, mesh, pl, world_size=world)
    at = dict(zip(ranks, range(n)))
    for r in range(world):
        i = at.get(r)
        assert lay.chunks(r) == (default.chunks(i) if i is not None else ())
        assert lay.coordinate(r) == (default.coordinate(i) if i is not None else None)
        assert lay.held_indices(r) == (default.held_indices(i) if i is not None else {})
    assert set(lay.misdescribed_ranks) == {ranks[i] for i in default.misdescribed_ranks}
    assert lay.holders() == sorted(ranks)


# ----------------------------------------------------------------------------- plans vs torch
def _pipeline(n_layers, stages, mesh, world=8):
    """Layer k's weight and bias on stage k * stages // n_layers, whose submesh ``mesh`` sits at
    ranks stage * prod(mesh) ..; plus a step counter on every rank."""
    n = math.prod(mesh)
    out = {}
    for k in range(n_layers):
        s = k * stages // n_layers
        ranks = range(s * n, (s + 1) * n)
        w, b = ("S(0), S(1)", "R, S(0)") if len(mesh) == 2 else ("S(0)", "S(0)")
        out[f"layers.{k}.w"] = dtensor_layout((8, 6), mesh, w, world_size=world, mesh_ranks=ranks)
        out[f"layers.{k}.b"] = dtensor_layout((6,), mesh, b, world_size=world, mesh_ranks=ranks)
    out["step"] = tensor_layout((), world, "int64")
    return out


def test_two_stage_pipeline_plans_match_torch():
    lays = _pipeline(2, 2, (2, 2))
    v = verify_with_torch(lays)
    assert v.equal, v.difference
    # independently: stage 1's entries are written by ranks 4..7 only, stage 0's by 0..3
    ours = plan_save(lays)
    writers = {}
    for r, p in enumerate(ours.local_plans):
        for it in p.items:
            writers.setdefault(it.index.fqn, set()).add(r)
    assert writers["layers.0.w"] == {0, 1, 2, 3} and writers["layers.1.w"] == {4, 5, 6, 7}
    assert writers["layers.1.b"] == {4, 5, 6, 7}
    theirs = torch_save_plans(lays)
    assert [[it.index for it in p.items] for p in theirs.local_plans] == [
        [it.index for it in p.items] for p in ours.local_plans
    ]


def test_reshard_two_stages_of_four_to_four_stages_of_two():
    save = _pipeline(4, 2, (2, 2))
    load = _pipeline(4, 4, (2,))
    assert load["layers.3.w"].holders() == [6, 7] and save["layers.3.w"].holders() == [4, 5, 6, 7]
    v = verify_with_torch(save, load_layouts=load)
    assert v.equal, v.difference
    res = plan_load(plan_save(save).metadata, load)
    assert not res.failures
    for r in range(8):  # rank r reads only layer r // 2 (and the step)
        fqns = {it.dest_index.fqn for it in res.plans[r].items}
        assert fqns == {f"layers.{r // 2}.w", f"layers.{r // 2}.b", "step"}


def test_a_default_mesh_layout_would_differ_from_torch():
    """The comparison can fail: torch's plans for the submesh differ from those of the same
    tensors described on ranks 0..3."""
    lays = _pipeline(2, 2, (2, 2))
    wrong = {
        k: (
            dtensor_layout(v.shape, v.mesh_shape, v.placements, world_size=8) if v.mesh_ranks else v
        )
        for k, v in lays.items()
    }
    ours = plan_save(wrong)
    theirs = torch_save_plans(lays)
    assert [[it.index for it in p.items] for p in theirs.local_plans] != [
        [it.index for it in p.items] for p in ours.local_plans
    ]


def test_convert_describes_a_real_submesh_dtensor():
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from workbench.torch_bridge.convert import layout_from_torch, local_tensor_from_torch

    want = dtensor_layout((8, 4), (2, 2), "S(0), S(1)", world_size=8, mesh_ranks=[4, 6, 5, 7])
    for rank, local in ((6, (4, 2)), (1, (0, 0))):
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=8)
        try:
            mesh = DeviceMesh("cpu", torch.tensor([[4, 6], [5, 7]]))
            dt = DTensor.from_local(
                torch.zeros(local),
                mesh,
                [Shard(0), Shard(1)],
                run_check=False,
                shape=(8, 4),
                stride=(4, 1),
            )
            lay = layout_from_torch(dt)
            assert lay.rank_chunks == want.rank_chunks and lay.mesh_ranks == (4, 6, 5, 7)
            lt = local_tensor_from_torch(dt)
            assert lt.rank == rank and lt.chunks() == want.chunks(rank)
        finally:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- consumers
def test_mesh_picture_shows_global_ranks():
    lay = dtensor_layout((8, 4), (2, 2), "S(0), S(1)", world_size=8, mesh_ranks=[4, 6, 5, 7])
    pic = mesh_data(lay)
    cells = {(t.x, t.y): t for t in pic.tiles}
    # mesh [[4, 6], [5, 7]]: the rank at coordinate (0, 1) is 6; rank 6 holds rows 0:4, cols 2:4
    assert cells[(1, 0)].label == "r6\n(0, 1)\n[0:4, 2:4]"
    assert cells[(0, 1)].label == "r5\n(1, 0)\n[4:8, 0:2]"
    assert [t.ranks for t in pic.tiles] == [(4,), (6,), (5,), (7,)]
    assert pic.notes == ("outside the mesh (no chunk): r0-3",)


def test_chunks_table_coordinates_are_of_global_ranks():
    lay = dtensor_layout((8, 4), (2,), "S(0)", world_size=8, mesh_ranks=[4, 6])
    t = layout_chunks_table(lay)
    assert t["rank"].tolist() == [4, 6]
    assert t["coordinate"].tolist() == [(0,), (1,)]
    assert t["region"].tolist() == ["[0:4, 0:4]", "[4:8, 0:4]"]


@pytest.fixture(scope="module")
def one_rank_checkpoint(tmp_path_factory):
    """A checkpoint of {"w": arange(8) as float32} saved by one process (no process group)."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    path = tmp_path_factory.mktemp("one") / "ck"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"w": torch.arange(8, dtype=torch.float32)}, checkpoint_id=str(path))
    return path


def test_cli_json_target_takes_mesh_ranks(tmp_path, one_rank_checkpoint, capsys):
    f = tmp_path / "t.json"
    f.write_text(
        json.dumps(
            {
                "s0.w": {"shape": [8, 4], "mesh": [2], "placements": "S(0)"},
                "s1.w": {"shape": [8, 4], "mesh": [2], "placements": "S(0)", "mesh_ranks": [4, 6]},
            }
        )
    )
    out = read_json_target(f)
    assert out["s1.w"] is dtensor_layout((8, 4), (2,), "S(0)", world_size=7, mesh_ranks=[4, 6])
    assert out["s0.w"].world_size == 7 and out["s0.w"].holders() == [0, 1]
    # end to end: the saved [0:8] is read by ranks 4 and 6 of a world of 7, one item each
    f.write_text(
        json.dumps({"w": {"shape": [8], "mesh": [2], "placements": "S(0)", "mesh_ranks": [4, 6]}})
    )
    assert main(["plan", str(one_rank_checkpoint), "--target", str(f), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["world_size"] == 7 and got["ok"] and got["io"]["reads"] == 2
    assert got["io"]["bytes_needed"] == 32


@pytest.mark.parametrize(
    "entry, error, words",
    [
        ({"shape": [8], "mesh_ranks": [1]}, PlanError, "mesh_ranks without a mesh"),
        (
            {"shape": [8], "mesh": [2], "placements": "S(0)", "mesh_ranks": [3, 3]},
            LayoutError,
            "repeat ranks [3]",
        ),
        (
            {"shape": [8], "mesh": [2], "placements": "S(0)", "mesh_ranks": "ab"},
            PlanError,
            "malformed value",
        ),
    ],
)
def test_cli_json_target_refuses_bad_mesh_ranks(
    tmp_path, one_rank_checkpoint, entry, error, words, capsys
):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"w": entry}))
    with pytest.raises(error) as e:
        read_json_target(f)
    assert words in str(e.value)
    assert main(["plan", str(one_rank_checkpoint), "--target", str(f)]) == 2
    assert words in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "ranks, world, words",
    [
        ([4, 4], 8, "repeat ranks [4]"),
        ([4, 8], 8, "are not all in a world of 8 (0 <= rank < 8)"),
        ([-1, 2], None, "are not all in a world of 3"),
        ([4, 5, 6], 8, "name 3 ranks for a mesh of 2"),
        ([4], 8, "name 1 ranks for a mesh of 2"),
        ([4.0, 5], 8, "is not a sequence of ints"),
        (5, 8, "is not a sequence of ints"),
    ],
)
def test_bad_mesh_ranks(ranks, world, words):
    with pytest.raises(LayoutError) as e:
        dtensor_layout((8, 4), (2,), "S(0)", world_size=world, mesh_ranks=ranks, fqn="p.w")
    msg = str(e.value)
    assert msg.startswith("p.w: mesh ranks ") and words in msg
    assert "(" in msg and msg.rstrip().endswith(".")  # house form: what (expectation). fix.


# ----------------------------------------------------------------------------- real gloo run
def _values(shape):
    return np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) + 0.25


@pytest.mark.real
def test_real_run_saves_on_submeshes_and_loads_every_element(tmp_path):
    from workbench.torch_bridge.runs import LoadStep, SaveStep, run_steps

    # two stages of two ranks each save; one 2x2 mesh over all four (ranks reversed) and a stage
    # on ranks [3, 1] load
    save = {
        "a": dtensor_layout((4, 6), (2,), "S(0)", world_size=4, mesh_ranks=[0, 1]),
        "b": dtensor_layout((6,), (2,), "S(0)", world_size=4, mesh_ranks=[2, 3]),
    }
    load = {
        "a": dtensor_layout((4, 6), (2, 2), "S(0), S(1)", world_size=4, mesh_ranks=[3, 2, 1, 0]),
        "b": dtensor_layout((6,), (2,), "S(0)", world_size=4, mesh_ranks=[3, 1]),
    }
    path = str(tmp_path / "ck")
    saved, loaded = run_steps([SaveStep(path, save), LoadStep(path, load)], 4)
    assert saved.ok, saved.errors
    assert loaded.ok, (loaded.errors, loaded.mismatches())
    a, b = _values((4, 6)), _values((6,))
    vals = [r.values for r in loaded.ranks]
    # mesh [[3, 2], [1, 0]]: rank 3 at (0, 0), rank 2 at (0, 1), rank 1 at (1, 0), rank 0 (1, 1)
    np.testing.assert_array_equal(vals[3]["a"], a[0:2, 0:3])
    np.testing.assert_array_equal(vals[2]["a"], a[0:2, 3:6])
    np.testing.assert_array_equal(vals[1]["a"], a[2:4, 0:3])
    np.testing.assert_array_equal(vals[0]["a"], a[2:4, 3:6])
    np.testing.assert_array_equal(vals[3]["b"], b[0:3])
    np.testing.assert_array_equal(vals[1]["b"], b[3:6])
    assert vals[0]["b"].size == 0 and vals[2]["b"].size == 0  # outside b's mesh
    # the saved metadata is what plan_save predicts for the submesh save
    from workbench import load_metadata

    md = load_metadata(path)
    want = plan_save(save).metadata
    for fqn in save:
        assert list(md.state_dict_metadata[fqn].chunks) == list(
            want.state_dict_metadata[fqn].chunks
        )
