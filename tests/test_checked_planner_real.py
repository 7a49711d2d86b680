"""The checked planners in real ``dcp.save`` / ``dcp.load`` over gloo (marker ``real``): one
launch of 2 processes runs every step, with torch's default planners beside the checked ones on
the same checkpoints.

- a failing reshard (a missing key, a size mismatch) raises the workbench's message, naming the
  ranks and the keys, once (one failure in DCP's ``CheckpointException``), where the default
  planner fails with per-rank tracebacks;
- a silent wrong-value reshard (a plain tensor loaded into ``_StridedShard(0, 2)``, whose boxes are
  not its data): the default planner loads wrong values without a word, ``on_silent="raise"``
  refuses before reading, ``on_silent="warn"`` warns on every rank and loads what the default
  loads;
- a clean reshard ([S(0)] -> [S(1)], a plain tensor, a bytes entry) loads the same values as the
  default planner, element by element;
- saves: per-rank plain tensors (dedup keeps one rank's copy) and a Partial DTensor are refused by
  `CheckedSavePlanner` before anything is written.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from workbench.sharding import bytes_layout, dtensor_layout, tensor_layout
from workbench.torch_bridge.checked_planner import CheckedLoadPlanner, CheckedSavePlanner
from workbench.torch_bridge.runs import LoadStep, SaveStep, run_steps

pytestmark = pytest.mark.real

SAVED = {
    "w": dtensor_layout((8, 6), (2,), "S(0)"),
    "b": tensor_layout((3,), 2),
    "step": bytes_layout(2),
}
CLEAN = {
    "w": dtensor_layout((8, 6), (2,), "S(1)"),
    "b": tensor_layout((3,), 2),
    "step": bytes_layout(2),
}
FAILING = {
    "w": dtensor_layout((8, 6), (2,), "S(1)"),
    "b": tensor_layout((4,), 2),  # saved (3,)
    "c": tensor_layout((2,), 2),  # not saved
}
PLAIN = {"s": tensor_layout((8,), 2)}
STRIDED = {"s": dtensor_layout((8,), (2,), "SS(0,2)")}  # rank 0 holds 0,1,4,5; its box is [0:4]
PER_RANK = {"p": tensor_layout((4,), 2, per_rank_values=True)}
PARTIAL = {"q": dtensor_layout((4,), (2,), "P")}

WARN = partial(CheckedLoadPlanner, on_silent="warn")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("checked")
    a, p = str(d / "a"), str(d / "plain")
    steps = {
        "save": SaveStep(a, SAVED),
        "clean_default": LoadStep(a, CLEAN),
        "clean_checked": LoadStep(a, CLEAN, planner=CheckedLoadPlanner),
        "failing_default": LoadStep(a, FAILING),
        "failing_checked": LoadStep(a, FAILING, planner=CheckedLoadPlanner),
        "save_plain": SaveStep(p, PLAIN),
        "silent_default": LoadStep(p, STRIDED),
        "silent_raise": LoadStep(p, STRIDED, planner=CheckedLoadPlanner),
        "silent_warn": LoadStep(p, STRIDED, planner=WARN),
        "per_rank_default": SaveStep(str(d / "pr0"), PER_RANK),
        "per_rank_checked": SaveStep(str(d / "pr1"), PER_RANK, planner=CheckedSavePlanner),
        "partial_checked": SaveStep(str(d / "pa"), PARTIAL, planner=CheckedSavePlanner),
    }
    return dict(zip(steps, run_steps(list(steps.values()), 2, time_limit=240)))


def test_a_failing_reshard_raises_the_workbench_message_once(runs):
    default, checked = runs["failing_default"], runs["failing_checked"]
    assert sorted(default.errors) == [0, 1]
    # torch stops at the first error of each rank, with a traceback per rank
    assert "ranks:dict_keys([0, 1])" in default.errors[0]
    assert default.errors[0].count("Traceback") == 2
    assert "Missing key" not in default.errors[0]
    assert sorted(checked.errors) == [0, 1]
    for text in checked.errors.values():
        # one failure (the coordinator's), not a traceback per rank
        assert "CheckpointException ranks:dict_keys([0])" in text
        assert text.count("Traceback") == 1
        # dcp.load sorts the state dict's keys: b before c
        assert "CheckedLoadError: b: dcp.load would fail" in text
        assert "2 problem(s) on ranks 0, 1 in 2 key(s) (b, c)" in text
        assert "[error] missing_key c on ranks 0, 1" in text
        assert "[error] shape_mismatch b on ranks 0, 1" in text
        assert "Size mismatch between saved torch.Size([3]) and current: torch.Size([4])" in text


def test_a_silent_wrong_value_reshard_is_caught(runs):
    default = runs["silent_default"]
    assert not default.errors and default.mismatches()  # torch loads wrong values silently
    wrong = {(r, f) for r, f, _, _ in default.mismatches()}
    assert wrong == {(0, "s"), (1, "s")}
    raised = runs["silent_raise"]
    assert sorted(raised.errors) == [0, 1]
    for text in raised.errors.values():
        assert "[silent] strided_misdescribed s on rank 0" in text
        assert "[silent] strided_misdescribed s on rank 1" in text
    warned = runs["silent_warn"]
    assert not warned.errors
    assert warned.mismatches() == default.mismatches()  # it loads what torch loads
    for rank in warned.ranks:
        assert len(rank.warnings) == 1 and "strided_misdescribed s on rank 0" in rank.warnings[0]


def test_a_clean_reshard_loads_the_same_values_as_the_default_planner(runs):
    assert runs["save"].ok
    default, checked = runs["clean_default"], runs["clean_checked"]
    assert default.ok and checked.ok
    for d, c in zip(default.ranks, checked.ranks):
        assert list(d.values) == list(c.values) == ["w", "b", "step"]
        assert c.warnings == ()
        for fqn in d.values:
            if isinstance(d.values[fqn], np.ndarray):
                np.testing.assert_array_equal(c.values[fqn], d.values[fqn])
            else:
                assert c.values[fqn] == d.values[fqn]


def test_the_checked_save_refuses_what_the_save_would_lose(runs):
    assert runs["per_rank_default"].ok  # torch keeps one rank's copy without a word
    errors = runs["per_rank_checked"].errors
    assert all(e is not None for e in errors)
    assert "CheckedSaveError: p: dcp.save would" in errors[0]
    assert "[silent] dedup_loss p on rank" in errors[0]
    partial_errors = runs["partial_checked"].errors
    assert all("[error] partial q on ranks 0, 1" in e for e in partial_errors)
