"""The checked planners under torch's fake process group, every rank in turn in this process (the
real gloo runs are in test_checked_planner_real.py): what the coordinator raises, that the
plans it returns are torch's own (the default planner's, ``planner_data`` included), and the
error's facts surviving DCP's pickling."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.testing._internal.distributed.fake_pg import FakeStore

from workbench.errors import WorkbenchError
from workbench.planning import plan_save
from workbench.sharding import bytes_layout, dtensor_layout, sharded_layout, tensor_layout
from workbench.torch_bridge.checked_planner import (
    CheckedLoadError,
    CheckedLoadPlanner,
    CheckedPlanWarning,
    CheckedSaveError,
    CheckedSavePlanner,
    checked_error,
)
from workbench.torch_bridge.convert import to_torch
from workbench.torch_bridge.materialize import Meshes, torch_state_dict

SAVED = {
    "w": dtensor_layout((8, 4), (4,), "S(0)", "float32", 4),
    "b": tensor_layout((3,), 4),
    "step": bytes_layout(4),
}


def _fake(rank, world_size):
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)


def _load(make, layouts, metadata):
    """DCP's load planning, rank by rank: local plans, the coordinator's global plan, every
    rank's finish_plan (warnings recorded)."""
    ws = next(iter(layouts.values())).world_size
    planners, local = [], []
    for r in range(ws):
        _fake(r, ws)
        try:
            p = make()
            p.set_up_planner(torch_state_dict(layouts, r, Meshes(), fill=-1.0), metadata, r == 0)
            local.append(p.create_local_plan())
            planners.append(p)
        finally:
            dist.destroy_process_group()
    _fake(0, ws)
    try:
        central = planners[0].create_global_plan(local)
    finally:
        dist.destroy_process_group()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        final = [p.finish_plan(c) for p, c in zip(planners, central)]
    return final, [w for w in caught if issubclass(w.category, CheckedPlanWarning)]


@pytest.fixture(scope="module")
def metadata():
    return to_torch(plan_save(SAVED).metadata)


def test_a_clean_load_plans_what_the_default_planner_plans(metadata):
    target = {
        "w": dtensor_layout((8, 4), (2,), "S(1)", "float32", 2),
        "b": tensor_layout((3,), 2),
        "step": bytes_layout(2),
    }
    ours, said = _load(CheckedLoadPlanner, target, metadata)
    theirs, _ = _load(DefaultLoadPlanner, target, metadata)
    assert said == []
    assert ours == theirs  # items, storage_data and planner_data: torch's own


def test_errors_of_every_rank_raise_once_with_the_workbench_message(metadata):
    target = {"w": dtensor_layout((8, 5), (2,), "S(0)", "float32", 2), "c": tensor_layout((1,), 2)}
    with pytest.raises(CheckedLoadError) as e:
        _load(CheckedLoadPlanner, target, metadata)
    err = e.value
    assert err.fqns == ("w", "c") and err.ranks == (0, 1)
    assert [(p.kind, p.severity) for p in err.problems] == [
        ("shape_mismatch", "error"),
        ("missing_key", "error"),
    ]
    again = pickle.loads(pickle.dumps(err))  # DCP scatters it to every rank by pickle
    assert str(again) == str(err) and again.fqns == err.fqns and again.problems == err.problems
    assert str(err).splitlines()[1].startswith("  [error] shape_mismatch w on ranks 0, 1: ")


def test_silent_problems_raise_or_warn_on_every_rank(metadata):
    target = {"w": dtensor_layout((8, 4), (2,), "S(0)", "float16", 2)}  # saved float32
    with pytest.raises(CheckedLoadError, match=r"\[silent\] dtype_mismatch w on ranks 0, 1"):
        _load(CheckedLoadPlanner, target, metadata)
    warn = lambda **kw: CheckedLoadPlanner(on_silent="warn", **kw)  # noqa: E731
    plans, said = _load(warn, target, metadata)
    assert plans == _load(DefaultLoadPlanner, target, metadata)[0]
    assert len(said) == 2 and "dtype_mismatch w" in str(said[0].message)


def test_ranks_that_disagree_on_an_entry_are_reported(metadata):
    ws = 2
    planners, local = [], []
    for r in range(ws):
        # rank 1 builds "b" with another shape: no one job describes both
        target = {"b": tensor_layout((3,) if r == 0 else (4,), ws)}
        _fake(r, ws)
        try:
            p = CheckedLoadPlanner()
            p.set_up_planner(torch_state_dict(target, r, Meshes(), fill=0.0), metadata, r == 0)
            local.append(p.create_local_plan())
            planners.append(p)
        finally:
            dist.destroy_process_group()
    with pytest.raises(CheckedLoadError, match="do not describe one job: entry differs"):
        planners[0].create_global_plan(local)


def test_the_checked_save_keeps_torchs_metadata_and_flatten_mappings():
    layouts = {"w": dtensor_layout((8, 4), (2,), "S(0)", "float32", 2), "t": tensor_layout((3,), 2)}
    out = {}
    for name, make in (("default", DefaultSavePlanner), ("checked", CheckedSavePlanner)):
        planners, local = [], []
        for r in range(2):
            _fake(r, 2)
            try:
                p = make()
                p.set_up_planner(
                    {"m": torch_state_dict(layouts, r, Meshes())}, is_coordinator=r == 0
                )
                local.append(p.create_local_plan())
                planners.append(p)
            finally:
                dist.destroy_process_group()
        plans, md = planners[0].create_global_plan(local)
        out[name] = ([pl.items for pl in plans], md.state_dict_metadata, md.planner_data)
    assert out["checked"] == out["default"]
    assert out["checked"][2] == {"m.w": ("m", "w"), "m.t": ("m", "t")}


def test_bad_options_and_foreign_exceptions():
    with pytest.raises(WorkbenchError, match="on_silent 'ignore'"):
        CheckedLoadPlanner(on_silent="ignore")
    err = CheckedLoadError("w", "what", "expectation", "fix", problems=())
    wrapped = CheckpointException("plan", {0: (err, None)})
    assert checked_error(wrapped) is err and checked_error(ValueError("x")) is None


def test_the_checked_save_reports_chunks_the_hf_writer_drops():
    # rank 0 holds two chunks of "s": HuggingFaceStorageWriter keeps one chunk per fqn and rank
    layouts = {
        "s": sharded_layout((6,), [[((0,), (2,)), ((2,), (2,))], [((4,), (2,))]], world_size=2)
    }
    planners, local = [], []
    for r in range(2):
        _fake(r, 2)
        try:
            p = CheckedSavePlanner(storage="hf")
            p.set_up_planner(torch_state_dict(layouts, r, Meshes()), is_coordinator=r == 0)
            local.append(p.create_local_plan())
            planners.append(p)
        finally:
            dist.destroy_process_group()
    with pytest.raises(CheckedSaveError, match=r"\[silent\] hf_lost_chunk s on rank 0"):
        planners[0].create_global_plan(local)
