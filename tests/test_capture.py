"""`workbench.capture`: a user's own build() (model + parallelize) under torch's fake process
group, on the real code paths (FSDP2, tensor / sequence parallel, HSDP, FSDP2 + TP with uneven
rows, pipeline stages on submeshes, expert parallel MoE, a transformers model, AdamW after a
step). Every rank capture did not run is run here under the fake group and its torch local save
plan and local tensor shapes are checked against the derived layouts; bad builds give one
CaptureError naming the function and the rank, and leave nothing running."""

from __future__ import annotations

import json
import os
import time
from functools import partial

import capture_programs as P
import pytest

import workbench as wb
from workbench.sharding import fsdp2_tp_layout
from workbench.torch_bridge.capture import run_rank


def _items(view):
    return [
        (i.index.fqn, None if i.tensor_data is None else i.tensor_data.chunk) for i in view.items
    ]


def _derived(target, rank):
    out = []
    for fqn in P.target_keys(target, rank):
        lay = target[fqn]
        out += [(fqn, None)] if lay.kind == "bytes" else [(fqn, c) for c in lay.chunks(rank)]
    return out


def check_every_rank(build, target):
    """Every rank under the fake group (in this process) against the captured layouts: its keys,
    torch's write items (DCP's chunks) and its real local tensors' shapes."""
    for r in range(target.world_size):
        view = run_rank(build, r, target.world_size)
        assert view.keys() == P.target_keys(target, r), r
        assert _items(view) == _derived(target, r), r
        for e in view.entries:
            if e.kind == "dtensor" and target[e.fqn].coordinate(r) is not None:
                counts = tuple(len(v) for v in P.full_held(target[e.fqn], r).values())
                assert counts == e.local_shape, (r, e.fqn)


@pytest.fixture(scope="module")
def fsdp_tp():
    return wb.capture(P.build_fsdp_tp, 6)


def test_fsdp2_fully_shard():
    t = wb.capture(P.build_fsdp, 4)
    assert isinstance(t, wb.CapturedTarget) and t.world_size == 4 and t.ranks_run == (0, 3)
    assert list(t)[:3] == [
        "tok_embeddings.weight",
        "layers.0.attention_norm.weight",
        "layers.0.attention.wq.weight",
    ]
    assert len(t) == 21 and all(lay.kind == "dtensor" for lay in t.values())
    emb = t["tok_embeddings.weight"]  # 13 rows over 4: torch.chunk gives 4, 4, 4, 1
    assert [str(emb.chunks(r)[0]) for r in range(4)] == [
        "[0:4, 0:16]",
        "[4:8, 0:16]",
        "[8:12, 0:16]",
        "[12:13, 0:16]",
    ]
    assert t.represented_by == (0, 0, 0, 3)
    check_every_rank(P.build_fsdp, t)


def test_tensor_and_sequence_parallel_plan():
    t = wb.capture(P.build_tp, 2)
    specs = {k: str(v.placements[0]) for k, v in t.items()}
    assert specs["tok_embeddings.weight"] == "S(0)"  # RowwiseParallel on an embedding
    assert specs["layers.0.attention.wq.weight"] == "S(0)"  # colwise
    assert specs["layers.0.attention.wo.weight"] == "S(1)"  # rowwise
    assert specs["layers.0.feed_forward.w2.weight"] == "S(1)"
    assert specs["layers.0.attention_norm.weight"] == "R"  # SequenceParallel
    assert specs["norm.weight"] == "R" and specs["output.weight"] == "S(0)"
    check_every_rank(P.build_tp, t)


def test_hsdp():
    t = wb.capture(P.build_hsdp, 4)
    w = t["layers.1.feed_forward.w1.weight"]
    assert w.mesh_shape == (2, 2) and [str(p) for p in w.placements] == ["R", "S(0)"]
    assert w.chunks(0) == w.chunks(2) and w.chunks(1) == w.chunks(3)  # replicas
    check_every_rank(P.build_hsdp, t)


def test_fsdp2_tp_uneven_rows_carry_the_data_held(fsdp_tp):
    t = fsdp_tp
    emb = t["tok_embeddings.weight"]  # 13 rows, dp=3, tp=2: FSDP2's rows are right to left
    assert [str(p) for p in emb.placements] == ["SS(0,2)", "S(0)"]
    ref = fsdp2_tp_layout((13, 16), (3, 2))
    assert emb.misdescribed_ranks == ref.misdescribed_ranks == (4, 5)
    for r in range(6):
        assert emb.held_indices(r) == ref.held_indices(r) and emb.chunks(r) == ref.chunks(r)
    assert emb.held_indices(4) == {0: [6]} and str(emb.chunks(4)[0]) == "[6:8, 0:16]"
    # even rows (16): the placements describe the data; rowwise Shard(1): no _StridedShard
    assert t["layers.0.attention.wq.weight"].data_held is None
    wo = t["layers.0.attention.wo.weight"]
    assert [str(p) for p in wo.placements] == ["S(0)", "S(1)"] and wo.misdescribed_ranks == ()
    check_every_rank(P.build_fsdp_tp, t)


def test_all_ranks_give_the_same_target(fsdp_tp):
    every = wb.capture(P.build_fsdp_tp, 6, ranks="all")
    assert every.ranks_run == tuple(range(6)) and list(every) == list(fsdp_tp)
    for k, lay in every.items():
        other = fsdp_tp[k]
        assert (lay.rank_chunks, lay.placements, lay.mesh_ranks) == (
            other.rank_chunks,
            other.placements,
            other.mesh_ranks,
        )
        assert [lay.held_indices(r) for r in range(6)] == [other.held_indices(r) for r in range(6)]


def test_pipeline_stages_on_submeshes_and_per_rank_bytes():
    t = wb.capture(P.build_pipeline, 4)
    first, second = t["model.layers.0.attention.wq.weight"], t["model.layers.1.attention.wq.weight"]
    assert first.mesh_ranks_or_default == (0, 1) and second.mesh_ranks == (2, 3)
    assert first.holders() == [0, 1] and second.holders() == [2, 3]
    assert t["model.tok_embeddings.weight"].holders() == [0, 1]
    assert t["model.output.weight"].holders() == [2, 3]
    # per-DP-rank data loader state: rank 0 and 2 hold dp_rank_0, 1 and 3 dp_rank_1
    dl = {k: v.holders() for k, v in t.items() if k.startswith("dataloader")}
    assert dl == {"dataloader.dp_rank_0.position": [0, 2], "dataloader.dp_rank_1.position": [1, 3]}
    assert t.ranks_run == (0, 1, 2, 3)  # the witness saw other keys: every rank was run
    check_every_rank(P.build_pipeline, t)


def test_expert_parallel_moe():
    t = wb.capture(P.build_moe, 4)
    w1 = t["layers.0.moe.experts.w1"]  # (6, 24, 16): EP Shard(0) on ep, then FSDP2 over dp
    assert w1.shape == (6, 24, 16) and [str(p) for p in w1.placements] == ["SS(0,2)", "S(0)"]
    # a dense weight FSDP-sharded over mesh["dp"] of the (dp, ep) mesh: each ep index has its
    # own dp group (ranks 0, 2 and 1, 3), captured as one (2, 2) mesh with a leading R
    dense = t["layers.0.attention.wq.weight"]
    assert dense.mesh_ranks == (0, 2, 1, 3) and str(dense.placements[0]) == "R"
    assert dense.chunks(0) == dense.chunks(1) and dense.chunks(2) == dense.chunks(3)
    assert t.ranks_run == (0, 3)
    check_every_rank(P.build_moe, t)


def test_transformers_model_from_a_config():
    import transformers  # noqa: F401  (imported once here, not in every forked rank)

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    t = wb.capture(P.build_hf, 2)
    assert "model.layers.1.mlp.down_proj.weight" in t and "lm_head.weight" in t
    q = t["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (16, 16) and [str(p) for p in q.placements] == ["S(0)"]
    check_every_rank(P.build_hf, t)


def test_adamw_state_after_one_step():
    t = wb.capture(P.build_adamw, 2)
    p, m = (
        t["model.layers.0.feed_forward.w1.weight"],
        t["optim.state.layers.0.feed_forward.w1.weight.exp_avg"],
    )
    assert m.rank_chunks == p.rank_chunks and m.placements == p.placements
    step = t["optim.state.layers.0.feed_forward.w1.weight.step"]
    assert step.kind == "tensor" and step.shape == () and step.holders() == [0, 1]
    assert not step.per_rank_values  # the same step count on every rank
    assert t["optim.param_groups.0.lr"].kind == "bytes"
    # the same keys and order as the workbench's AdamW preset flattening
    assert [k for k in t if k.startswith("optim.param_groups")] == [
        k
        for k in wb.model_state_dict("llama", "tiny", optimizer=True)
        if k.startswith("optim.param_groups")
    ]
    check_every_rank(P.build_adamw, t)


def test_planning_a_captured_target():
    t = wb.capture(partial(P.build_fsdp_tp, dp=2, tp=2), 4)
    save = wb.plan_save(P.fsdp_checkpoint_layouts(t))
    load = wb.plan_load(save.metadata, t)
    assert load.world_size == 4 and not [p for p in load.problems if p.blocking]
    from workbench.torch_bridge.fake_pg import verify_with_torch

    assert verify_with_torch(t, save.metadata)  # torch's own load planner agrees


# ----------------------------------------------------------------------------- bad builds
def _raises_on_rank_3():
    import torch.distributed as dist

    if dist.get_rank() == 3:
        raise RuntimeError("no data for this shard")
    return P.build_fsdp()


def _needs_cuda():
    model = P.build_fsdp()  # (init_device_mesh("cuda", ...) itself works under the fake group)
    return model.cuda()


def _needs_data():
    model = P.build_fsdp()
    return model if float(model.norm.weight.to_local().sum().item()) else model


def _hangs(pidfile):
    import subprocess

    child = subprocess.Popen(["sleep", "600"])  # something the build started
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    time.sleep(600)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its parent is gone too
        return f.read().split()[2] == "Z"


def test_a_build_that_raises_names_function_and_rank():
    with pytest.raises(wb.CaptureError) as e:
        wb.capture(_raises_on_rank_3, 4)
    msg = str(e.value)
    assert msg.startswith("test_capture._raises_on_rank_3: build() raised on rank 3 of 4 at ")
    assert "RuntimeError: no data for this shard" in msg and e.value.rank == 3


def test_a_build_that_needs_cuda_or_data():
    with pytest.raises(wb.CaptureError, match=r"_needs_cuda: build\(\) raised on rank 0 of 4") as e:
        wb.capture(_needs_cuda, 4)
    assert "init_device_mesh('cpu', ...)" in str(e.value)
    with pytest.raises(wb.CaptureError, match=r"_needs_data: build\(\) raised on rank 0") as e:
        wb.capture(_needs_data, 4)
    assert "must not need real data" in str(e.value)


def test_a_build_that_hangs_is_killed_with_what_it_started(tmp_path):
    pidfile = tmp_path / "pids"
    t0 = time.monotonic()
    with pytest.raises(wb.CaptureError, match=r"did not return on rank 0 of 2 within 3 s") as e:
        wb.capture(partial(_hangs, str(pidfile)), 2, time_limit=3)
    assert time.monotonic() - t0 < 60 and e.value.rank == 0
    pids = [int(p) for p in pidfile.read_text().split()]
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(p) for p in pids)


def _returns_a_number():
    return 3


@pytest.mark.parametrize(
    "build,world,kw,match",
    [
        (P.build_fsdp, 0, {}, r"world size 0 \(an int >= 1\)"),
        (P.build_fsdp, 4, {"ranks": [7]}, r"ranks \[7\] are not in a world of 4"),
        (P.build_fsdp, 4, {"ranks": "some"}, r"ranks 'some'"),
        (P.build_fsdp, 4, {"time_limit": 0}, r"time limit 0"),
        ("no_colon", 4, {}, r"neither a function nor 'module:function'"),
        (_returns_a_number, 2, {}, r"_returns_a_number: returned a int on rank 0 \(an nn.Mo"),
        ("no_such_module_xyz:build", 2, {}, r"importing the build function raised on rank 0"),
    ],
)
def test_bad_input(build, world, kw, match):
    with pytest.raises(wb.CaptureError, match=match):
        wb.capture(build, world, **kw)


# ----------------------------------------------------------------------------- CLI, JSON, widget
def _same(a, b):
    assert list(a) == list(b)
    for k in a:
        x, y = a[k], b[k]
        fields = ("kind", "shape", "dtype", "world_size", "rank_chunks", "mesh_shape", "placements")
        assert [getattr(x, f) for f in fields] == [getattr(y, f) for f in fields], k
        assert (x.mesh_ranks_or_default, x.per_rank_values) == (
            y.mesh_ranks_or_default,
            y.per_rank_values,
        ), k
        assert x.misdescribed_ranks == y.misdescribed_ranks, k
        assert [x.held_indices(r) for r in range(x.world_size)] == [
            y.held_indices(r) for r in range(y.world_size)
        ], k


def test_cli_capture_writes_the_target_plan_reads_back(tmp_path, fsdp_tp, capsys):
    from workbench.cli import main
    from workbench.targets import parse_target

    out = tmp_path / "target.json"
    assert main(["capture", "capture_programs:build_fsdp_tp", "-n", "6", "-o", str(out)]) == 0
    assert "capture_programs:build_fsdp_tp on 6 ranks: 21 entries" in capsys.readouterr().out
    back = parse_target(str(out))  # what `workbench plan --target target.json` reads
    _same(back, fsdp_tp)
    assert back["tok_embeddings.weight"].held_indices(4) == {0: [6]}
    doc = json.loads(out.read_text())
    assert doc["tok_embeddings.weight"]["data_held"]["4"] == {"0": [[6, 7]]}


def test_json_round_trip_of_submeshes_bytes_and_optimizer_state(tmp_path):
    from workbench.targets import read_json_target, target_json

    for build, world in ((P.build_pipeline, 4), (P.build_moe, 4), (P.build_adamw, 2)):
        t = wb.capture(build, world)
        path = tmp_path / f"{build.__name__}.json"
        path.write_text(json.dumps(target_json(t)))
        _same(read_json_target(path), t)


def test_cli_capture_save_side(tmp_path, capsys):
    from workbench.cli import main

    out = tmp_path / "save.json"
    # FSDP2 + TP, 13 rows on (3, 2): torch's save validation rejects the strided boxes
    assert (
        main(["capture", "capture_programs:build_fsdp_tp", "-n", "6", "--save", "-o", str(out)])
        == 1
    )
    doc = json.loads(out.read_text())
    assert doc["ok"] is False and doc["world_size"] == 6
    assert any(
        "tok_embeddings.weight has overlapping chunks" in e for e in doc["validation_errors"]
    )
    emb = next(e for e in doc["entries"] if e["fqn"] == "tok_embeddings.weight")
    assert [c["writer"] for c in emb["chunks"]] == [0, 1, 2, 3, 4, 5]
    # even rows: a valid save, every chunk with its writer rank and file
    capsys.readouterr()
    assert main(["capture", "capture_programs:build_fsdp", "-n", "4", "--save"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["validation_errors"] == [] and len(doc["entries"]) == 21
    assert {f["file"] for f in doc["files"]} == {f"__{r}_0.distcp" for r in range(4)}


def test_cli_capture_bad_build_is_one_line(capsys):
    from workbench.cli import main

    assert main(["capture", "test_capture:_raises_on_rank_3", "-n", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("workbench capture: error: test_capture:_raises_on")
    assert "rank 3 of 4" in err


def test_checkpoint_explorer_takes_a_captured_target(fsdp_tp):
    from workbench.widgets import CheckpointExplorer

    save = wb.plan_save(P.fsdp_checkpoint_layouts(fsdp_tp, 4))
    ex = CheckpointExplorer(save.metadata, target=fsdp_tp, rank=4)
    assert ex.plan.layouts is not None and ex.plan.load.world_size == 6
    assert "capture_programs.build_fsdp_tp" in ex.header.value
    kinds = {(p.fqn, p.kind) for p in ex.plan.problems}
    assert ("tok_embeddings.weight", "strided_misdescribed") in kinds


def test_a_derivation_torch_disagrees_with_is_refused(fsdp_tp):
    """The check of every run rank against torch's own local save plan: a view whose DCP box
    is not the derived one is refused, naming the rank and both items."""
    import dataclasses

    from workbench.torch_bridge.capture import check_view

    view = run_rank(P.build_fsdp_tp, 5, 6)
    i = next(k for k, it in enumerate(view.items) if it.index.fqn == "output.weight")
    item = view.items[i]
    moved = dataclasses.replace(
        item,
        tensor_data=dataclasses.replace(item.tensor_data, chunk=wb.Chunk((0, 0), (1, 16))),
    )
    bad = dataclasses.replace(view, items=view.items[:i] + (moved,) + view.items[i + 1 :])
    check_view("b", fsdp_tp, view, 6)  # torch's own items agree
    with pytest.raises(wb.CaptureError, match=r"rank 5's derived write item \('output.weight'"):
        check_view("b", fsdp_tp, bad, 6)
