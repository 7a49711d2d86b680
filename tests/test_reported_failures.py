"""Publicly reported reshard failures, reproduced for real: ``tools/record_reported_failures.py``
ran the save and the load over gloo processes and stored the checkpoint and what torch did in
``tests/data/reported/<key>/``. From the checkpoint's files and the target alone the workbench
predicts each outcome (the same ranks, the same keys, the same severity), and `explain`
recognises each report's error text and points to the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.explanations import REPORTED_FAILURES, explain
from workbench.formats import load_metadata
from workbench.planning import plan_load

DATA = Path(__file__).parent / "data" / "reported"
KEYS = sorted(p.name for p in DATA.iterdir() if (p / "outcome.json").exists())


def outcome(key: str) -> dict:
    return json.loads((DATA / key / "outcome.json").read_text())


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


@pytest.mark.parametrize("key", KEYS)
def test_prediction_matches_the_real_run(key):
    out = outcome(key)
    case = out["case"]
    md = load_metadata(DATA / key / "ckpt")
    res = plan_load(md, layouts(case["load"], case["load_world"]))
    errors = {p.fqn: sorted(p.ranks) for p in res.problems if p.severity == "error"}
    # the keys torch named, on the ranks that named them
    assert errors == out["missing_keys"]
    assert sorted({r for rs in errors.values() for r in rs}) == out["failing_ranks"]
    # DCP re-raises a rank's planning failure on every rank: an error stops the whole load
    assert out["raised_on"] == (list(range(case["load_world"])) if errors else [])
    # the ranks that loaded got the checkpoint's values
    assert out["mismatches"] == []
    if not out["raised_on"]:
        # a silent failure: torch said nothing, the workbench names what is never loaded
        silent = {p.fqn for p in res.problems if p.severity == "silent"}
        assert silent == set(out["never_loaded"]) != set()


@pytest.mark.parametrize("report", [r for r in REPORTED_FAILURES if r.error], ids=lambda r: r.key)
def test_explain_points_to_the_report(report):
    texts = [t for t in outcome(report.key)["errors"] if t]
    assert texts
    for text in texts:
        e = explain(text)
        assert [r.key for r in e.reports] == [report.key], e
        assert report.url in str(e)
