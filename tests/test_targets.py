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
