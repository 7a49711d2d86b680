"""What users hold goes straight in (`sources.held_layouts` and the entry points through it):
``model.state_dict()``, the nested dict given to ``dcp.save`` / ``dcp.load`` (optimizer state
included), a module and ``(model, optimizer)``, built in this process (real CPU or meta tensors)
or under the fake process group as rank r. Checked against torch's own flattening, torch's own
planners (their flattened state dict and local save plan) and `capture` on the same build."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from functools import partial

import capture_programs as P
import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict
from torch.testing._internal.distributed.fake_pg import FakeStore

from workbench.errors import PlanError
from workbench.planning import plan_load, plan_save
from workbench.records import WriteItemType
from workbench.sharding import dtensor_layout, tensor_layout
from workbench.sources import held_layouts
from workbench.torch_bridge.capture import capture, fresh_dtensor_caches
from workbench.torch_bridge.convert import from_torch


def _spec(layout) -> tuple:
    # Layouts compare by identity (cached per spec); their fields say what they describe
    return tuple(getattr(layout, f.name) for f in dataclasses.fields(layout))


def _specs(layouts) -> dict:
    return {fqn: _spec(lay) for fqn, lay in layouts.items()}


def _trained():
    """A plain model and AdamW after one real step (state: step, exp_avg, exp_avg_sq)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def _nested(model, opt) -> dict:
    """The dict a training script gives dcp.save: nested model and raw optimizer state (integer
    keys, param_groups lists), and non-tensor values in lists and dicts."""
    return {
        "model": model.state_dict(),
        "optim": opt.state_dict(),
        "extra": {"step": 7, "seen": [1, 2, 3], "rng": [torch.zeros(2), 5]},
    }


def _torch_save_items(sd) -> list[tuple]:
    """torch's own local save plan for ``sd`` in this process (no process group)."""
    planner = DefaultSavePlanner()
    planner.set_up_planner(sd, is_coordinator=True)
    plan = planner.create_local_plan()
    return [
        (i.index.fqn, from_torch(i.type), None if i.tensor_data is None else i.tensor_data.chunk)
        for i in plan.items
    ], planner.state_dict


def _our_items(layouts, rank=0) -> list[tuple]:
    out = []
    for fqn, lay in layouts.items():
        if lay.kind == "bytes":
            out.append((fqn, WriteItemType.BYTE_IO, None))
        else:
            kind = WriteItemType.TENSOR if lay.kind == "tensor" else WriteItemType.SHARD
            out += [(fqn, kind, from_torch(c)) for c in lay.chunks(rank)]
    return out


def test_a_nested_dict_with_optimizer_state_is_flattened_as_dcp_flattens_it():
    sd = _nested(*_trained())
    layouts, ws = held_layouts(sd, world_size=2)
    flat, _ = flatten_state_dict(sd)
    assert ws == 2 and list(layouts) == list(flat)
    assert "optim.state.0.exp_avg_sq" in layouts and "optim.param_groups.0.params" in layouts
    for fqn, value in flat.items():
        lay = layouts[fqn]
        if isinstance(value, torch.Tensor):
            assert (lay.kind, lay.shape, lay.dtype) == ("tensor", tuple(value.shape), "float32")
            assert lay.holders() == [0, 1]
        else:  # saved as bytes: lr, betas, the params list, extra.step, extra.rng.1 ...
            assert lay.kind == "bytes", fqn
    # torch's own planner: the same state dict and the same write items, in order
    items, planner_sd = _torch_save_items(sd)
    assert list(planner_sd) == list(layouts)
    assert [
        (f, t, None if c is None else (tuple(c.offsets), tuple(c.sizes))) for f, t, c in items
    ] == [
        (f, t, None if c is None else (tuple(c.offsets), tuple(c.sizes)))
        for f, t, c in _our_items(layouts)
    ]


def test_get_state_dict_of_model_and_optimizer_and_the_pair_itself():
    model, opt = _trained()
    msd, osd = get_state_dict(model, opt)
    by_pair, _ = held_layouts((model, opt), world_size=3)
    by_dict, _ = held_layouts({"model": msd, "optim": osd}, world_size=3)
    assert _specs(by_pair) == _specs(by_dict)
    assert list(by_pair) == list(flatten_state_dict({"model": msd, "optim": osd})[0])
    assert by_pair["optim.state.0.weight.step"].shape == ()
    by_module, _ = held_layouts(model, world_size=3)
    assert (
        list(by_module)
        == list(get_model_state_dict(model))
        == ["0.weight", "0.bias", "2.weight", "2.bias"]
    )


def test_dcp_load_sees_the_keys_sorted_and_stateful_values_as_their_state_dict(tmp_path):
    model, opt = _trained()
    sd = {"optim": opt.state_dict(), "model": model}  # a Module is Stateful: its state_dict()
    seen = []

    class Recording(DefaultLoadPlanner):
        def create_local_plan(self):
            seen.extend(self.state_dict)
            return super().create_local_plan()

    with pytest.warns(UserWarning):  # no process group: torch says it works in one process
        dcp.save({"optim": opt.state_dict(), "model": model.state_dict()}, checkpoint_id=tmp_path)
        dcp.load(sd, checkpoint_id=tmp_path, planner=Recording())
    layouts, _ = held_layouts(sd, world_size=1, for_load=True)
    assert list(layouts) == seen and seen[0].startswith("model.")
    save_layouts, _ = held_layouts(sd, world_size=1)
    assert list(save_layouts)[0].startswith("optim.")  # dcp.save keeps the given order


def test_meta_tensors_of_a_module_built_in_this_process():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    layouts, ws = held_layouts(model, world_size=4)
    assert ws == 4 and _spec(layouts["0.weight"]) == _spec(tensor_layout((16, 8), 4))


def test_plain_tensors_need_the_world_size():
    model, _ = _trained()
    with pytest.raises(PlanError) as e:
        held_layouts(model.state_dict())
    assert str(e.value) == (
        "0.weight: 4 plain tensor(s) / non-tensor value(s) (0.weight, 0.bias, 2.weight, ...) and "
        "no DTensor, Layout or process group say how many ranks hold them (the number of ranks "
        "of the job). Pass world_size=N, e.g. plan_load(md, model.state_dict(), world_size=8)."
    )
    with pytest.raises(PlanError, match="world_size 0"):
        held_layouts(model.state_dict(), world_size=0)
    with pytest.raises(PlanError, match="target is a int"):
        held_layouts(3)


def test_the_entry_points_take_a_state_dict():
    model, opt = _trained()
    save = plan_save({"model": model.state_dict(), "optim": opt.state_dict()}, world_size=2)
    assert "optim.state.1.exp_avg" in save.metadata.state_dict_metadata
    load = plan_load(save.metadata, (model, opt), world_size=2)
    assert load.world_size == 2
    # (model, optimizer) asks for get_state_dict's names (optim.state.<param fqn>...), not the
    # raw optimizer's integer ids: every such key is reported missing, by the workbench's words
    missing = {p.fqn for p in load.problems if p.kind == "missing_key"}
    assert "optim.state.0.weight.exp_avg" in missing
    same = plan_load(
        save.metadata, {"model": model.state_dict(), "optim": opt.state_dict()}, world_size=2
    )
    assert not [p for p in same.problems if p.blocking]


def _under_fake_group(build, rank, world_size):
    fresh_dtensor_caches()
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        return held_layouts(build())
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def captured_adamw():
    return capture(P.build_adamw, 2)


@pytest.mark.parametrize("rank", [0, 1])
def test_model_and_optimizer_under_the_fake_group_equal_capture(rank, captured_adamw):
    layouts, ws = _under_fake_group(P.build_adamw, rank, 2)
    captured = captured_adamw
    assert ws == 2 and list(layouts) == list(captured)
    assert _specs(layouts) == _specs(captured)


def test_fsdp2_tp_module_under_the_fake_group_equals_capture():
    build = partial(P.build_fsdp_tp, dp=2, tp=2)
    layouts, ws = _under_fake_group(build, 3, 4)
    captured = capture(build, 4)
    assert ws == 4 and _specs(layouts) == _specs(captured)
    w1 = layouts["layers.0.feed_forward.w1.weight"]
    assert [str(p) for p in w1.placements] == ["SS(0,2)", "S(0)"]


def test_a_dtensor_state_dict_gives_the_world_size_and_plain_tensors_follow():
    fresh_dtensor_caches()
    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=4)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (4,))
        sd = {"w": distribute_tensor(torch.zeros(8, 2), mesh, [Shard(0)]), "t": torch.ones(3)}
        layouts, ws = held_layouts(sd)
    finally:
        dist.destroy_process_group()
    assert ws == 4
    assert _spec(layouts["w"]) == _spec(dtensor_layout((8, 2), (4,), ["S(0)"], "float32", 4))
    assert _spec(layouts["t"]) == _spec(tensor_layout((3,), 4))


def test_without_torch_a_nested_dict_of_layouts_is_flattened():
    code = (
        "import json, sys\n"
        "from workbench.sharding import tensor_layout\n"
        "from workbench.sources import held_layouts\n"
        "t = tensor_layout((4,), 2)\n"
        "lay, ws = held_layouts({'m': {'w': t, 'l': [t, t]}, 'step': 3})\n"
        "print(json.dumps([list(lay), [v.kind for v in lay.values()], ws, 'torch' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    keys, kinds, ws, torch_loaded = json.loads(out.stdout)
    # torch's traversal enters a list holding tensors (here: layouts standing for them)
    assert keys == ["m.w", "m.l.0", "m.l.1", "step"]
    assert kinds == ["tensor", "tensor", "tensor", "bytes"] and ws == 2 and not torch_loaded
