"""Publicly reported reshard failures, reproduced for real: ``tools/record_reported_failures.py``
ran the save and the load over gloo processes (on the torch version the report names, in a
throw-away venv, when only some versions fail) and stored the checkpoint and what torch did in
``tests/data/reported/<key>/`` (``outcome.json``; ``outcome-<X.Y>.json``: the same on the
installed torch). From the checkpoint's files and the target alone, under the torch version that
ran, the workbench predicts each outcome (the same ranks, the same keys, the same severity), and
`explain` recognises each report's error text and points to the report. These tests read the
recordings only (no process group)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.diagnosis import find_save_problems
from workbench.explanations import REPORTED_FAILURES, explain
from workbench.formats import load_metadata
from workbench.planning import plan_load, plan_save

DATA = Path(__file__).parent / "data" / "reported"
KEYS = sorted(p.name for p in DATA.iterdir() if (p / "outcome.json").exists())
RUNS = sorted((p.parent.name, p.name) for p in DATA.glob("*/outcome*.json"))


def outcome(key: str, name: str = "outcome.json") -> dict:
    return json.loads((DATA / key / name).read_text())


def version(out: dict) -> str:
    """The torch that ran, as the workbench names versions ("2.13.0+cpu" -> "2.13")."""
    return ".".join(out["torch"].split("+")[0].split(".")[:2])


def tool():
    """tools/record_reported_failures.py: its layouts() built the target the real load used."""
    import importlib.util

    path = DATA.parent.parent.parent / "tools" / "record_reported_failures.py"
    spec = importlib.util.spec_from_file_location("record_reported_failures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def layouts(specs: dict, world: int) -> dict:
    """The target the recording loaded into: the same specs through the same constructors."""
    return tool().layouts(specs, world)


def test_every_report_is_recorded():
    assert KEYS == sorted(r.key for r in REPORTED_FAILURES)
    assert len(KEYS) >= 10
    for r in REPORTED_FAILURES:
        case = outcome(r.key)
        # a version-specific report was reproduced on its version, and again on the installed one
        assert version(case) == (r.torch_version or version(case))
        if r.torch_version:
            assert len([n for k, n in RUNS if k == r.key]) == 2


def first_named(problems, fqns) -> dict[str, list[int]]:
    """The key each rank's exception names: torch raises on the first failing key of the rank's
    state dict, and ``dcp.load`` visits the state dict's keys sorted
    (``state_dict_loader.load``: ``keys = sorted(state_dict.keys())``)."""
    by_rank: dict[int, str] = {}
    for fqn in sorted(fqns):
        for p in problems:
            if p.fqn == fqn and p.severity == "error":
                for r in p.ranks:
                    by_rank.setdefault(r, fqn)
    out: dict[str, list[int]] = {}
    for r, fqn in sorted(by_rank.items()):
        out.setdefault(fqn, []).append(r)
    return out


@pytest.mark.parametrize("key,name", RUNS)
def test_prediction_matches_the_real_run(key, name):
    out = outcome(key, name)
    case, tv = out["case"], version(out)
    everyone = list(range(case["load_world" if case.get("side") != "save" else "save_world"]))
    if case.get("side") == "save":
        # nothing was written: the prediction comes from the layouts the ranks saved
        problems = find_save_problems(
            plan_save(layouts(case["save"], case["save_world"]), torch_version=tv)
        )
        errors = {p.fqn for p in problems if p.severity == "error"}
        assert errors == set(out["named_keys"])
        # the coordinator's validation failure is re-raised on every rank; a save torch
        # accepts is clean (nothing silently lost either)
        assert out["raised_on"] == (everyone if errors else [])
        if not errors:
            assert [p for p in problems if p.severity == "silent"] == []
        return
    target = layouts(case["load"], case["load_world"])
    res = plan_load(load_metadata(DATA / key / "ckpt"), target, torch_version=tv)
    errors = [p for p in res.problems if p.severity == "error"]
    # the keys torch named, on the ranks that named them
    assert first_named(errors, target) == out["named_keys"]
    assert sorted({r for p in errors for r in p.ranks}) == out["failing_ranks"]
    # DCP re-raises a rank's planning failure on every rank: an error stops the whole load
    assert out["raised_on"] == (everyone if errors else [])
    if errors:
        assert out["mismatches"] == []
        return
    # a silent failure: torch said nothing; the workbench names the entries loaded wrong (on
    # the ranks that got wrong values) and those never loaded
    silent = {p.fqn: set(p.ranks) for p in res.problems if p.severity == "silent"}
    wrong: dict[str, set[int]] = {}
    for r, fqn, *_ in out["mismatches"]:
        wrong.setdefault(fqn, set()).add(r)
    assert set(silent) == set(wrong) | set(out["never_loaded"]) != set()
    assert {f: silent[f] for f in wrong} == wrong


def test_version_specific_reports_change_with_the_upgrade():
    """The recorded runs themselves: the failure happened on the report's torch only."""
    old, new = outcome("pytorch-126604"), outcome("pytorch-126604", "outcome-2.13.json")
    assert old["raised_on"] == [] and old["mismatches"]  # 2.5: wrong values, no word
    # each rank got the saved rows' first 3 columns: value = 4 * row + col + 0.25 in [8, 4]
    for r, got in old["received"].items():
        rows = range(4 * int(r), 4 * int(r) + 4)
        assert got["w"] == [[4 * i + j + 0.25 for j in range(3)] for i in rows]
    assert new["named_keys"] == {"w": [0, 1]}  # 2.13 raises the size check on every rank
    old, new = outcome("pytorch-150862"), outcome("pytorch-150862", "outcome-2.13.json")
    assert old["raised_on"] == list(range(8)) and old["named_keys"] == {"w": [0]}
    assert new["raised_on"] == []


@pytest.mark.parametrize("report", [r for r in REPORTED_FAILURES if r.error], ids=lambda r: r.key)
def test_explain_points_to_the_report(report):
    texts = [t for t in outcome(report.key)["errors"] if t]
    assert texts
    ckpt = DATA / report.key / "ckpt"
    md = load_metadata(ckpt) if ckpt.exists() else None  # a failed save wrote nothing
    for text in texts:
        e = explain(text, md, torch_version=report.torch_version)
        assert [r.key for r in e.reports] == [report.key], e
        assert report.url in str(e)


def test_a_report_the_checkpoint_confirms_replaces_the_generic_one():
    """'Missing key ...: layer.weight.' alone is any missing key (pytorch #148252); with the
    checkpoint, whose key has torch.compile's '_orig_mod.' segment, it is torchtitan #2622, and
    the explanation names the saved key."""
    text = next(t for t in outcome("torchtitan-2622")["errors"] if t)
    assert [r.key for r in explain(text).reports] == ["pytorch-148252"]
    e = explain(text, load_metadata(DATA / "torchtitan-2622" / "ckpt"))
    assert [r.key for r in e.reports] == ["torchtitan-2622"]
    assert "'layer._orig_mod.weight'" in str(e.inner[0])


def test_unrequested_optimizer_state_is_silent_only_while_its_optimizer_loads():
    """KempnerForge PR 115's saved moments are lost silently because the target loads the same
    optimizer's param_groups; a target that leaves the optimizer out entirely (a fine-tune loading
    weights only) merely does not ask for them: a warning."""
    case = outcome("kempnerforge-115")["case"]
    md = load_metadata(DATA / "kempnerforge-115" / "ckpt")
    weights_only = {k: v for k, v in case["load"].items() if k.startswith("model.")}
    res = plan_load(md, layouts(weights_only, 2))
    sev = {p.fqn: p.severity for p in res.problems if p.fqn.startswith("optimizer.state.")}
    assert set(sev.values()) == {"warning"} and len(sev) == 3
