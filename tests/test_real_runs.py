"""Real multi-process dcp.save / dcp.load over gloo on 127.0.0.1 (marker ``real``): resharding
checked element by element, the broken checkpoints showing their failure, `open_checkpoint` on
real directories, and the launcher's limits. One launch of its own (``four``); the scenario
checkpoints and their real loads come from conftest's session-wide ``scenario_runs``."""

from __future__ import annotations

import multiprocessing
import shutil

import numpy as np
import pytest

from workbench import (
    PlanError,
    bytes_layout,
    dtensor_layout,
    load_metadata,
    sharded_layout,
    tensor_layout,
)
from workbench.checkpoint import open_checkpoint
from workbench.planning import plan_load, plan_save
from workbench.torch_bridge.runs import (
    LoadStep,
    SaveStep,
    run_load,
    run_steps,
)

pytestmark = pytest.mark.real

SAVE4 = {
    "w": dtensor_layout((8, 6), (2, 2), "S(0), S(1)"),
    "v": dtensor_layout((10,), (4,), "S(0)"),  # 3, 3, 3, 1 rows
    "st": sharded_layout((4, 3), [[((0, 0), (1, 3))], [((1, 0), (3, 3))], [], []]),
    "t": tensor_layout((3,), 4, "int32"),
    "sh": sharded_layout((6,), [[((0,), (2,))], [((2,), (4,))], [], []]),
    "step": bytes_layout(4),
}
LOAD4 = {
    "w": dtensor_layout((8, 6), (4,), "S(1)"),  # 2 columns each
    "v": dtensor_layout((10,), (2, 2), "SS(0,2), S(0)", "float64"),  # FSDP2+TP; contiguous
    "st": dtensor_layout((4, 3), (2, 2), "R, S(0)"),
    "t": tensor_layout((3,), 4, "int32"),
    "sh": sharded_layout((6,), [[], [((0,), (1,)), ((4,), (2,))], [((1,), (3,))], []]),
    "step": bytes_layout(4),
}


@pytest.fixture(scope="module")
def scenarios(scenario_runs):
    return scenario_runs[0]


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """One 4-process launch: a save, then a load with new layouts."""
    path = tmp_path_factory.mktemp("four") / "ck"
    save, load = run_steps([SaveStep(str(path), SAVE4), LoadStep(str(path), LOAD4)], 4)
    return path, save, load


@pytest.fixture(scope="module")
def loaded(scenario_runs):
    """Every scenario loaded (conftest's session-wide real runs)."""
    return scenario_runs[1]


def _global(shape, dtype="float32"):
    """The values every run encodes, computed with numpy: flat index (+ 0.25 for floats)."""
    v = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    return v + 0.25 if dtype.startswith("float") else v


def test_no_process_outlives_a_run(four, loaded):
    assert multiprocessing.active_children() == []


# ----------------------------------------------------------------------------- clean reshards
def test_two_process_reshard_loads_every_element(loaded):
    run = loaded["fsdp"]
    assert run.ok and run.world_size == 2
    g = _global((8, 6))
    for r in range(2):  # S(0) saved, S(1) loaded: rank r holds columns 3r:3r+3
        np.testing.assert_array_equal(run.ranks[r].values["w"], g[:, 3 * r : 3 * r + 3])
        np.testing.assert_array_equal(run.ranks[r].values["b"], _global((6,)))
        assert run.ranks[r].values["step"] == "step"


def test_four_process_save_and_reshard(four):
    path, save, load = four
    assert save.ok, save.errors
    assert load.ok, (load.errors, load.mismatches())
    g = _global((8, 6))
    for r in range(4):
        vals = load.ranks[r].values
        np.testing.assert_array_equal(vals["w"], g[:, 2 * r : 2 * r + 2])  # rank 3: [6:6], empty
        np.testing.assert_array_equal(vals["t"], [0, 1, 2])
        assert vals["step"] == "step"
    # [SS(0,2), S(0)] on 2x2, 10 rows: pieces [0:5], [5:10] split 3+2 over dim 0 -> rows
    # 0,1,2,5,6,7 and 3,4,8,9, then halved over dim 1
    rows = {0: [0, 1, 2], 1: [5, 6, 7], 2: [3, 4], 3: [8, 9]}
    assert {r: (load.ranks[r].values["v"] - 0.25).astype(int).tolist() for r in range(4)} == rows
    # R, S(0) on 2x2 for the ShardedTensor saved as rows [0:1] + [1:4]
    np.testing.assert_array_equal(load.ranks[1].values["st"], _global((4, 3))[2:4])
    # ShardedTensor to ShardedTensor: rank 1 holds [0:1] and [4:6], rank 2 [1:4]
    assert [a.tolist() for a in load.ranks[1].values["sh"]] == [[0.25], [4.25, 5.25]]
    assert [a.tolist() for a in load.ranks[2].values["sh"]] == [[1.25, 2.25, 3.25]]
    assert load.ranks[0].values["sh"] == []  # rank 0 holds the ShardedTensor, no local shard


def test_real_metadata_matches_plan_save(four, scenarios):
    """The planner's metadata and writers equal what real saves wrote."""
    path, _, _ = four
    real = open_checkpoint(path)
    planned = plan_save(SAVE4)
    assert {
        k: v for k, v in real.metadata.state_dict_metadata.items()
    } == planned.metadata.state_dict_metadata
    for fqn in SAVE4:
        assert real.writers(fqn) == planned.writers[fqn], fqn
    sc = scenarios["fsdp"]
    assert open_checkpoint(sc.path).writers("step") == plan_save(sc.save_layouts).writers["step"]


# ----------------------------------------------------------------------------- broken checkpoints
def test_hole_leaves_stale_values(loaded):
    run = loaded["hole"]
    assert not run.errors  # torch loads it without a word
    assert run.mismatches() == [(1, "w", 24, 24)]  # all 24 elements of rank 1 still -1
    np.testing.assert_array_equal(run.ranks[1].values["w"], np.full((4, 6), -1.0))
    np.testing.assert_array_equal(run.ranks[0].values["w"], _global((8, 6))[:4])


def test_hole_is_predicted_by_plan_load(scenarios):
    sc = scenarios["hole"]
    res = plan_load(load_metadata(sc.path), sc.load_layouts)
    reads_w = [[i for i in res.plans[r].items if i.dest_index.fqn == "w"] for r in range(2)]
    assert [len(x) for x in reads_w] == [1, 0]  # rank 1 reads nothing for w: stale, as observed


def test_strided_destination_gets_wrong_values(loaded):
    run = loaded["strided"]
    assert not run.errors
    g = _global((8, 6))
    # SS(0,2) on 2 ranks: rank 0 holds rows 0,1,4,5 but DCP fills its box [0:4]
    np.testing.assert_array_equal(run.ranks[0].expected["w"], g[[0, 1, 4, 5]])
    np.testing.assert_array_equal(run.ranks[0].values["w"], g[0:4])
    np.testing.assert_array_equal(run.ranks[1].values["w"], g[2:6])
    assert run.mismatches() == [(0, "w", 12, 0), (1, "w", 12, 0)]  # 2 of 4 rows wrong each


def test_dtype_change_is_silently_cast(loaded):
    run = loaded["dtype"]
    assert not run.errors
    g = _global((8, 6))
    np.testing.assert_array_equal(run.ranks[0].values["w"], np.floor(g[:4]))
    assert run.mismatches() == [(0, "w", 24, 0), (1, "w", 24, 0)]


def test_size_change_raises_torch_message(loaded):
    msg = "Size mismatch between saved torch.Size([8, 6]) and current: torch.Size([8, 4]) for w"
    assert set(loaded["size"].errors) == {0, 1}
    assert all(
        msg in e and e.startswith("CheckpointException") for e in loaded["size"].errors.values()
    )


def test_dedup_drops_per_rank_tensors(loaded, scenarios):
    run = loaded["dedup"]
    assert not run.errors
    writer = open_checkpoint(scenarios["dedup"].path).writers("t")
    assert writer == plan_save(scenarios["dedup"].save_layouts).writers["t"] == [0]
    for r in range(2):  # everyone loads rank 0's copy
        np.testing.assert_array_equal(run.ranks[r].values["t"], _global((4,)))
    assert run.mismatches() == [(1, "t", 4, 0)]


def test_missing_key_raises(loaded):
    errors = loaded["missing_key"].errors
    assert set(errors) == {0, 1}
    assert all("Missing key in checkpoint state_dict: extra." in e for e in errors.values())


def test_per_rank_bytes_at_a_new_world_size(loaded):
    run = loaded["bytes_world"]
    assert run.world_size == 4 and set(run.errors) == {0, 1, 2, 3}  # re-raised on every rank
    text = run.errors[0]
    assert "Missing key in checkpoint state_dict: dataloader.dp_rank_2." in text
    assert "Missing key in checkpoint state_dict: dataloader.dp_rank_3." in text


def test_scenarios_are_planned_the_same_way(scenarios):
    """plan_load's failures name the same messages the real loads raised."""
    res = plan_load(load_metadata(scenarios["size"].path), scenarios["size"].load_layouts)
    assert res.failures[0][2] == (
        "Size mismatch between saved torch.Size([8, 6]) and current: torch.Size([8, 4]) for w"
    )


# ----------------------------------------------------------------------------- open_checkpoint
def test_open_checkpoint_locates_every_chunk(four):
    path, _, _ = four
    ck = open_checkpoint(path)
    assert ck.problems() == [] and ck.missing_files == []
    assert set(ck.file_sizes) == {f"__{r}_0.distcp" for r in range(4)}
    for f, size in ck.file_sizes.items():
        assert size == (path / f).stat().st_size
    by_file = {}
    for c in ck.chunks:
        assert c.writer_rank == int(c.file.split("_")[2])
        assert 0 <= c.storage.offset and c.storage.offset + c.storage.length <= c.file_size
        by_file.setdefault(c.file, []).append((c.storage.offset, c.storage.length))
    for ranges in by_file.values():  # byte ranges of one file never overlap
        ranges.sort()
        assert all(a + n <= b for (a, n), (b, _) in zip(ranges, ranges[1:]))
    assert [str(c.chunk) for c in ck.chunks_of("v")] == ["[0:3]", "[3:6]", "[6:9]", "[9:10]"]
    assert ck.writers("v") == [0, 1, 2, 3]


def test_open_checkpoint_reports_missing_and_short_files(four, tmp_path):
    path, _, _ = four
    d = tmp_path / "ck"
    shutil.copytree(path, d)
    (d / "__2_0.distcp").unlink()
    with open(d / "__3_0.distcp", "r+b") as f:
        f.truncate(10)
    ck = open_checkpoint(d)
    assert ck.missing_files == ["__2_0.distcp"]
    assert all(c.file_missing for c in ck.chunks if c.file == "__2_0.distcp")
    assert {c.file for c in ck.truncated_chunks} == {"__3_0.distcp"}
    problems = ck.problems()
    assert problems[0].message.startswith("__2_0.distcp: data file is missing")
    assert any("of __3_0.distcp (10 bytes on disk)" in p.message for p in problems)


def test_open_checkpoint_reports_chunks_without_storage(scenarios):
    ck = open_checkpoint(scenarios["hole"].path)
    assert [str(c.chunk) for c in ck.chunks_of("w")] == ["[0:4, 0:6]"]  # the dropped chunk is gone
    assert ck.unlisted_chunks == []


# ----------------------------------------------------------------------------- launcher limits
def test_launcher_refuses_bad_worlds(tmp_path):
    with pytest.raises(PlanError, match="world size 9 for a real run"):
        run_load(tmp_path, {"t": tensor_layout((2,), 9)})
    with pytest.raises(PlanError, match="t: layout for world size 2 in a run of 4 processes"):
        run_steps([SaveStep(str(tmp_path), {"t": tensor_layout((2,), 2)})], 4)


def test_time_limit_kills_every_process(tmp_path):
    # 0.05 s: ranks forked from a warm forkserver are quick, but not through gloo and a save
    with pytest.raises(RuntimeError, match=r"exceeded 0.05 s; ranks \[0, 1\] were killed"):
        run_steps(
            [SaveStep(str(tmp_path / "x"), {"t": tensor_layout((2,), 2)})], 2, time_limit=0.05
        )
    assert multiprocessing.active_children() == []
