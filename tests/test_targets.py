"""One targets module for every face: the same spec gives the same layouts to the CLI, the
explorer, the report and plan_load; every form (spec, JSON, preset tuple, dict, state dict) goes
through `targets.as_target`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import workbench as wb
from workbench.errors import PlanError
from workbench.models import apply_recipe, model_state_dict
from workbench.targets import PresetTarget, as_target, read_json_target, target_json

SPEC = "llama-tiny:fsdp2+tp:dp=2,tp=2"


def test_a_spec_parses_into_its_parts_and_prints_back():
    t = PresetTarget.parse(SPEC)
    assert (t.preset, t.size, t.recipe, t.mesh, t.optimizer) == (
        "llama",
        "tiny",
        "fsdp2+tp",
        (("dp", 2), ("tp", 2)),
        False,
    )
    assert str(t) == SPEC and t.mesh_shape == (2, 2)
    assert str(PresetTarget.parse("gpt2-small+optim:hsdp:replicate=2,dp=4")) == (
        "gpt2-small+optim:hsdp:replicate=2,dp=4"
    )


def test_every_form_gives_the_same_layouts(tmp_path):
    want = apply_recipe(model_state_dict("llama", "tiny"), "fsdp2+tp", (2, 2))
    path = tmp_path / "t.json"
    path.write_text(json.dumps(target_json(want)))
    for form in (SPEC, PresetTarget.parse(SPEC), ("llama", "fsdp2+tp", (2, 2)), want):
        assert as_target(form) == want, form
    # a JSON file: the same layouts in the JSON's normal form (FSDP2's rows as runs)
    assert target_json(as_target(path)) == target_json(read_json_target(path)) == target_json(want)


def test_the_cli_the_explorer_the_report_and_plan_load_plan_the_same_target(capsys):
    from workbench.cli import main
    from workbench.report import report_content
    from workbench.widgets import CheckpointExplorer

    ckpt = Path(__file__).parent / "data" / "torch-2.9" / "ckpt"  # a real torch 2.9 dcp.save
    want = as_target(SPEC)
    direct = wb.plan_load(wb.load_metadata(ckpt), want)
    assert direct.problems  # the preset's keys are not in this checkpoint: a real finding
    # the explorer, given the spec as the CLI takes it
    ex = CheckpointExplorer(str(ckpt), SPEC)
    assert ex.plan.load.layouts == want and SPEC in ex.header.value
    # the report
    assert report_content(wb.load_metadata(ckpt), as_target(SPEC)).result.layouts == want
    # the CLI: its --json problems and I/O are plan_load's on the spec's layouts
    assert main(["plan", str(ckpt), "--target", SPEC, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [(p["kind"], p["fqn"]) for p in doc["problems"]] == [
        (p.kind, p.fqn) for p in direct.problems
    ]
    assert doc["io"]["reads"] == int(direct.io.reads.sum())


def test_bad_targets_are_one_clear_error():
    with pytest.raises(PlanError, match="unknown model preset 'nosuch'"):
        as_target("nosuch:fsdp:dp=2")
    with pytest.raises(PlanError, match=r"recipe fsdp2\+tp got mesh dims \['dp'\]"):
        as_target("llama-tiny:fsdp2+tp:dp=2")
    with pytest.raises(PlanError, match="target is a int"):
        as_target(3)


def test_long_even_rank_lists_are_written_as_runs_and_read_back_equal(tmp_path):
    # pipeline stage 1 of 2 on a 2 x 8 mesh: mesh ranks 16..31, a run in the JSON
    stage = wb.dtensor_layout((64, 32), (2, 8), "S(0), S(1)", "bfloat16", mesh_ranks=range(16, 32))
    strided = wb.dtensor_layout((64,), (8,), "S(0)", world_size=32, mesh_ranks=range(1, 32, 4))
    short = wb.dtensor_layout((64,), (4,), "S(0)", world_size=32, mesh_ranks=[4, 5, 6, 7])
    few = wb.tensor_layout((8,), 32, ranks=[0, 2, 4, 6, 8, 10, 12, 14, 16, 31])
    layouts = {"a": stage, "b": strided, "c": short, "d": few}
    doc = target_json(layouts)
    assert doc["a"]["mesh_ranks"] == {"start": 16, "stop": 32, "step": 1}
    assert doc["b"]["mesh_ranks"] == {"start": 1, "stop": 30, "step": 4}
    assert doc["c"]["mesh_ranks"] == [4, 5, 6, 7]  # short lists stay lists
    assert doc["d"]["ranks"] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 31]  # not one step
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    back = read_json_target(path)
    for fqn, lay in layouts.items():
        got = back[fqn]
        assert (got.mesh_ranks, got.rank_chunks, got.world_size) == (
            lay.mesh_ranks,
            lay.rank_chunks,
            lay.world_size,
        ), fqn
    # a run and the list it names are one target
    doc["a"]["mesh_ranks"] = list(range(16, 32))
    path.write_text(json.dumps(doc))
    assert read_json_target(path)["a"].rank_chunks == stage.rank_chunks


@pytest.mark.parametrize(
    "run",
    [
        {"start": 4},
        {"start": 4, "stop": 4},
        {"start": -1, "stop": 4},
        {"start": 0, "stop": 8, "step": 0},
        {"start": 0, "stop": 8, "every": 2},
        {"start": 0, "stop": 10**12},
        {"start": "0", "stop": 8},
    ],
)
def test_a_bad_run_of_ranks_is_one_clear_error(tmp_path, run):
    path = tmp_path / "t.json"
    entry = {"shape": [8], "mesh": [4], "placements": "S(0)", "mesh_ranks": run}
    path.write_text(json.dumps({"w": entry}))
    with pytest.raises(PlanError, match=r"^w: target entry's mesh_ranks .* is not a run of ranks"):
        read_json_target(path)
