"""Problems (workbench.diagnosis) as records: the fields, kinds and severities plan_load reports,
and a Partial placement in a checkpoint reported by find_save_problems.
"""

from __future__ import annotations

import pytest
from support import house_form

import workbench as wb


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


def test_partial_in_a_checkpoint_is_reported():
    save = {"w": wb.dtensor_layout((8, 6), (2,), "P")}
    res = wb.plan_save(save)
    probs = wb.find_save_problems(res)
    assert any(p.kind == "partial" and p.fqn == "w" for p in probs)
    with pytest.raises(wb.WorkbenchError) as e:
        wb.create_write_items("w", wb.RankValue(save["w"], 0))
    assert "partial placements" in house_form(e.value, "w")
