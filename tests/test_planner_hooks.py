"""The planner hooks the checked planners use exist in every supported torch: checked against
each version's own sources (recorded from its wheel by ``tools/record_planner_hooks.py`` into
``tests/data/planner_hooks.json``), and that record against the installed torch's live classes."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from workbench.versions import SUPPORTED_TORCH_VERSIONS, installed_torch_version

DATA = json.loads((Path(__file__).parent / "data" / "planner_hooks.json").read_text())

# what CheckedLoadPlanner / CheckedSavePlanner override, call or read
OVERRIDDEN = {
    "create_local_plan": ["self"],
    "create_global_plan": None,  # (self, <plans>): the name differs between the two classes
    "finish_plan": ["self", "new_plan"],
}
READ = {
    "DefaultLoadPlanner": {"state_dict", "metadata", "allow_partial_load"},
    "DefaultSavePlanner": {"state_dict", "dedup_save_to_lowest_rank"},
}


def test_every_supported_version_is_recorded():
    assert set(DATA) == set(SUPPORTED_TORCH_VERSIONS)


@pytest.mark.parametrize("version", SUPPORTED_TORCH_VERSIONS)
def test_the_hooks_the_checked_planners_use_exist(version):
    rec = DATA[version]
    for cls in ("DefaultLoadPlanner", "DefaultSavePlanner"):
        methods = rec["methods"][cls]
        for name, args in OVERRIDDEN.items():
            assert name in methods, (version, cls, name)
            if args is not None:
                assert methods[name] == args, (version, cls, name)
            else:
                assert len(methods[name]) == 2, (version, cls, name)
        assert READ[cls] <= set(rec["attributes"][cls]), (version, cls)
    for plan in ("LoadPlan", "SavePlan"):
        assert "planner_data" in rec["plan_fields"][plan], (version, plan)
    # every rank's local plan reaches the coordinator's global step in one gather (DCP's own
    # reduce_scatter), and every rank's finish_plan sees its plan afterwards
    for flow in (rec["load_flow"], rec["save_flow"]):
        assert flow["reduce_scatter"]
        assert flow["local_step"][-1] == "create_local_plan"
        assert flow["global_step"] == ["create_global_plan"]
        assert "finish_plan" in flow["after"]
    assert rec["load_sorts_keys"]  # why held_layouts(for_load=True) sorts the top-level keys


def test_the_record_of_the_installed_torch_matches_its_live_classes():
    from torch.distributed.checkpoint import default_planner, planner

    rec = DATA[installed_torch_version()]
    for name in ("LoadPlanner", "SavePlanner", "DefaultLoadPlanner", "DefaultSavePlanner"):
        cls = getattr(planner, name, None) or getattr(default_planner, name)
        own = {k: v for k, v in vars(cls).items() if inspect.isfunction(v)}
        assert set(own) == set(rec["methods"][name]), name
        for meth, fn in own.items():
            params = inspect.signature(fn).parameters.values()
            names = [
                ("*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else "")
                + p.name
                for p in params
            ]
            assert names == rec["methods"][name][meth], (name, meth)
    for name in ("LoadPlan", "SavePlan"):
        fields = [f.name for f in dataclasses.fields(getattr(planner, name))]
        assert fields == rec["plan_fields"][name]
    # the attributes the checked planners read are there on live instances
    lp, sp = default_planner.DefaultLoadPlanner(), default_planner.DefaultSavePlanner()
    lp.set_up_planner({}, None, True)
    sp.set_up_planner({}, is_coordinator=True)
    assert all(hasattr(lp, a) for a in READ["DefaultLoadPlanner"])
    assert all(hasattr(sp, a) for a in READ["DefaultSavePlanner"])
