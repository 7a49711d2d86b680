"""The ``workbench`` command, in-process through ``main([...])`` and once through the installed
console script. Checkpoints are real: written by torch's own ``dcp.save`` (one process, and
several gloo processes through ``torch_bridge.runs``)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from support import SMALL_JSON_TARGET

from workbench import Replicate, Shard, StridedShard
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.formats import load_metadata
from workbench.targets import parse_target


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A one-process checkpoint: a 2-d float32, a 1-d bfloat16 and a non-tensor entry."""
    import torch.distributed.checkpoint as dcp

    path = tmp_path_factory.mktemp("ckpt")
    sd = {"w": torch.arange(32.0).reshape(8, 4), "b": torch.arange(4).to(torch.bfloat16), "step": 3}
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(sd, checkpoint_id=str(path))
    return path


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- help
def test_help_lists_every_command(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    for cmd in ("inspect", "plan", "explain", "report", "lab"):
        assert cmd in out
    assert "PRESET[-SIZE][+optim]:RECIPE:DIM=N" in out and "exit status" in out


def test_plan_help_documents_the_target_syntax(capsys):
    rc, out, _ = run(capsys, "plan", "--help")
    assert rc == 0 and "llama-tiny:fsdp2+tp:dp=2,tp=2" in out and '"placements"' in out


def test_console_script_is_installed_and_runs():
    exe = Path(sys.executable).parent / "workbench"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "usage: workbench" in r.stdout
    r = subprocess.run(
        [str(exe), "inspect", "/no/such/checkpoint"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("workbench inspect: error: ")


def test_usage_error_is_exit_2(capsys):
    rc, _, err = run(capsys, "plan", "/tmp")  # --target missing
    assert rc == 2 and "--target" in err


def test_list_presets(capsys):
    rc, out, _ = run(capsys, "plan", "--list-presets")
    assert rc == 0 and "llama-tiny" in out and "fsdp2+tp:dp=N,tp=N" in out


# ----------------------------------------------------------------------------- inspect
def test_inspect_table_names_every_entry(capsys, ckpt):
    rc, out, err = run(capsys, "inspect", ckpt, "--chunks")
    assert rc == 0, err
    for text in ("w", "b", "step", "8x4", "bfloat16", "[0:8, 0:4]", "__0_0.distcp"):
        assert text in out


def test_inspect_json_matches_the_files_on_disk(capsys, ckpt):
    """The JSON's byte ranges are checked independently: torch.load of each range gives back the
    saved tensor (FileSystemWriter stores every item as its own torch.save blob)."""
    import io

    rc, out, _ = run(capsys, "inspect", ckpt, "--json")
    assert rc == 0
    doc = json.loads(out)
    entries = {e["fqn"]: e for e in doc["entries"]}
    assert list(entries) == ["w", "b", "step"]
    assert entries["w"]["shape"] == [8, 4] and entries["w"]["dtype"] == "float32"
    assert entries["b"]["shape"] == [4] and entries["b"]["dtype"] == "bfloat16"
    assert entries["step"]["kind"] == "bytes" and entries["step"]["shape"] is None
    assert entries["w"]["nbytes"] == 128 and entries["b"]["nbytes"] == 8
    expected = {"w": torch.arange(32.0).reshape(8, 4), "b": torch.arange(4).to(torch.bfloat16)}
    for fqn, want in expected.items():
        (chunk,) = entries[fqn]["chunks"]
        assert chunk["writer"] == 0 and chunk["region"] == str(
            "[" + ", ".join(f"0:{n}" for n in want.shape) + "]"
        )
        blob = (ckpt / chunk["file"]).read_bytes()[
            chunk["offset"] : chunk["offset"] + chunk["length"]
        ]
        assert torch.equal(torch.load(io.BytesIO(blob), weights_only=True), want)
    (f,) = doc["files"]
    assert f == {
        "file": "__0_0.distcp",
        "writer": 0,
        "items": 3,
        "bytes": (ckpt / "__0_0.distcp").stat().st_size,
    }
    assert doc["damage"] == []


@pytest.mark.parametrize("bad", ["/no/such/dir", "empty-dir", "truncated", "not-a-pickle"])
def test_inspect_bad_checkpoint_is_one_line_exit_2(capsys, ckpt, tmp_path, bad):
    if bad == "empty-dir":
        path = tmp_path
    elif bad in ("truncated", "not-a-pickle"):
        path = tmp_path / bad
        path.mkdir()
        data = (ckpt / ".metadata").read_bytes()
        (path / ".metadata").write_bytes(
            data[: len(data) // 2] if bad == "truncated" else b"hello, not a pickle"
        )
    else:
        path = bad
    rc, out, err = run(capsys, "inspect", path)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("workbench inspect: error: ")
    assert "Traceback" not in err


class _Boom:
    def __reduce__(self):  # what a hostile .metadata does: call a function while unpickling
        return (Path.touch, (Path("/tmp/workbench-cli-pwned"),))


def test_inspect_refuses_a_hostile_checkpoint_without_running_it(capsys, tmp_path):
    marker = Path("/tmp/workbench-cli-pwned")
    marker.unlink(missing_ok=True)
    (tmp_path / ".metadata").write_bytes(pickle.dumps(_Boom()))
    rc, _, err = run(capsys, "inspect", tmp_path)
    assert rc == 2 and "Traceback" not in err and not marker.exists()


# ----------------------------------------------------------------------------- targets
def test_preset_target_uses_the_recipe_mesh_order():
    layouts = parse_target("llama-tiny:fsdp2+tp:dp=2,tp=3")
    q = layouts["layers.0.self_attn.q_proj.weight"]
    assert q.mesh_shape == (2, 3) and q.world_size == 6
    # FSDP2 + colwise TP on dim 0: [_StridedShard(0, tp), Shard(0)] (fully_shard's spec)
    assert q.placements == (StridedShard(0, 3), Shard(0))
    o = layouts["layers.0.self_attn.o_proj.weight"]  # rowwise: TP shards dim 1
    assert o.placements == (Shard(0), Shard(1))
    hsdp = parse_target("gpt2-tiny:hsdp:replicate=2,dp=4")
    assert hsdp["lm_head.weight"].placements == (Replicate(), Shard(0))
    assert hsdp["lm_head.weight"].mesh_shape == (2, 4)


def test_preset_target_with_optimizer_state():
    layouts = parse_target("llama-tiny+optim:fsdp:dp=4")
    plain = parse_target("llama-tiny:fsdp:dp=4")
    assert "model.norm.weight" in layouts and "norm.weight" in plain
    moment = layouts["optim.state.norm.weight.exp_avg"]  # AdamW moments follow their parameter
    assert moment.placements == (Shard(0),) and moment.shape == plain["norm.weight"].shape
    assert layouts["optim.state.norm.weight.step"].kind == "tensor"  # 0-d step: plain tensor
    assert all(lay.world_size == 4 for lay in layouts.values())


def test_json_target(tmp_path):
    path = tmp_path / "target.json"
    path.write_text(json.dumps(SMALL_JSON_TARGET))
    layouts = parse_target(str(path))
    assert list(layouts) == ["w", "b", "step"]
    assert [str(layouts["w"].chunks(r)[0]) for r in range(4)] == [
        "[0:4, 0:2]",
        "[0:4, 2:4]",
        "[4:8, 0:2]",
        "[4:8, 2:4]",
    ]
    assert layouts["b"].kind == "tensor" and layouts["b"].holders() == [0, 1, 2, 3]
    assert layouts["step"].is_bytes and layouts["b"].dtype == "bfloat16"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("llama", "neither PRESET:RECIPE"),
        ("nosuch-tiny:fsdp:dp=2", "unknown model preset"),
        ("llama-huge:fsdp:dp=2", "unknown size"),
        ("llama-tiny:zero3:dp=2", "recipe 'zero3'"),
        ("llama-tiny:fsdp2+tp:dp=2", "exactly dp, tp"),
        ("llama-tiny:fsdp:dp=two", "is not NAME=N"),
        ("llama-tiny:fsdp:dp=0", "is not NAME=N"),
        ("llama-tiny:fsdp:dp=2,dp=4", "is not NAME=N"),
        ("/no/such/target.json", "does not exist"),
    ],
)
def test_bad_target_is_one_line_exit_2(capsys, ckpt, spec, words):
    rc, out, err = run(capsys, "plan", ckpt, "--target", spec)
    assert rc == 2 and out == "" and err.count("\n") == 1, err
    assert words in err and "Traceback" not in err


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "non-empty JSON object"),
        ('{"w": {"shape": [4], "mesh": [2]}}', "one of mesh and placements"),
        ('{"w": {"shape": [4], "colour": "red"}}', "unknown keys ['colour']"),
        ('{"w": {"shape": [4], "mesh": [2], "placements": "S(3)"}}', "shards dim 3"),
        ('{"w": {"shape": [4], "dtype": "float33"}}', "float33"),
    ],
)
def test_bad_json_target(tmp_path, content, words):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(WorkbenchError) as e:
        parse_target(str(path))
    assert words in str(e.value)


# ----------------------------------------------------------------------------- real checkpoints
def _target_entry(layout) -> dict:
    """A `Layout` written in the JSON target syntax of `workbench plan --help`."""
    from workbench.sharding import format_placements

    if layout.kind == "dtensor":
        return {
            "shape": list(layout.shape),
            "dtype": layout.dtype,
            "mesh": list(layout.mesh_shape),
            "placements": format_placements(layout.placements),
            "world_size": layout.world_size,
        }
    extra = {
        "ranks": layout.holders(),
        "per_rank_values": layout.per_rank_values,
        "world_size": layout.world_size,
    }
    if layout.is_bytes:
        return {"bytes": True, **extra}
    return {"shape": list(layout.shape), "dtype": layout.dtype, **extra}


@pytest.fixture(scope="module")
def real(tmp_path_factory, scenario_runs):
    """Every broken-checkpoint kind of `runs`, saved by real gloo processes, its JSON target, and
    what a real dcp.load into that target does (conftest's session-wide ``scenario_runs``; the
    targets are written in a directory of this module)."""
    root = tmp_path_factory.mktemp("real")
    scenarios, loads = scenario_runs
    for kind, sc in scenarios.items():
        (root / f"{kind}.json").write_text(
            json.dumps({fqn: _target_entry(lay) for fqn, lay in sc.load_layouts.items()})
        )
    return root, scenarios, loads


@pytest.mark.real
def test_json_target_round_trips_the_scenario_layouts(real):
    root, scenarios, _ = real
    for kind, sc in scenarios.items():
        got = parse_target(str(root / f"{kind}.json"))
        assert list(got) == list(sc.load_layouts)
        for fqn, lay in sc.load_layouts.items():
            assert got[fqn].rank_chunks == lay.rank_chunks and got[fqn].dtype == lay.dtype, kind


@pytest.mark.real
def test_plan_exit_status_agrees_with_a_real_load(real, capsys):
    """`workbench plan` exits 1 exactly when the real dcp.load raises or loads wrong values.

    Not included: "dedup", whose checkpoint is intact and loads exactly what it holds; its loss
    (one rank's per-rank values kept) happened at save time, which `find_save_problems` reports;
    a load-side check sees it only when the target marks the entry ``per_rank_values``."""
    root, scenarios, loads = real
    seen = {}
    for kind, sc in scenarios.items():
        if kind == "dedup":
            continue
        rc, out, err = run(capsys, "plan", sc.path, "--target", root / f"{kind}.json")
        assert err == "", err
        seen[kind] = (rc, loads[kind].ok)
        assert rc == (0 if loads[kind].ok else 1), (
            kind,
            out,
            loads[kind].errors,
            loads[kind].mismatches(),
        )
        assert ("BLOCKED" in out) == (rc == 1)
    assert sorted(k for k, (rc, _) in seen.items() if rc == 0) == ["fsdp"]


@pytest.mark.real
def test_plan_json_names_the_real_failure(real, capsys):
    root, scenarios, loads = real
    rc, out, _ = run(
        capsys, "plan", scenarios["size"].path, "--target", root / "size.json", "--json"
    )
    doc = json.loads(out)
    assert rc == 1 and doc["ok"] is False and doc["world_size"] == 2
    (p,) = doc["problems"]
    assert p["kind"] == "shape_mismatch" and p["severity"] == "error" and p["fqn"] == "w"
    # the message quotes the very error the real load raised on every rank
    torch_text = (
        "Size mismatch between saved torch.Size([8, 6]) and current: torch.Size([8, 4]) for w"
    )
    assert torch_text in p["message"]
    assert all(torch_text in e for e in loads["size"].errors.values())

    rc, out, _ = run(
        capsys, "plan", scenarios["hole"].path, "--target", root / "hole.json", "--json"
    )
    doc = json.loads(out)
    (p,) = [p for p in doc["problems"] if p["kind"] == "uncovered"]
    # runs dropped w's chunk [4:8, 0:6]; the real load left rank 1's 24 elements stale
    assert p["region"] == "[4:8, 0:6]" and p["ranks"] == [1] and p["severity"] == "silent"
    assert loads["hole"].mismatches() == [(1, "w", 24, 24)]
    # inspect finds the same hole from the checkpoint alone, whatever the target
    rc, out, _ = run(capsys, "inspect", scenarios["hole"].path, "--json")
    (p,) = json.loads(out)["problems"]
    assert rc == 0 and (p["kind"], p["fqn"], p["region"]) == ("uncovered", "w", "[4:8, 0:6]")


@pytest.mark.real
def test_plan_io_numbers(real, capsys):
    root, scenarios, _ = real
    rc, out, _ = run(
        capsys, "plan", scenarios["fsdp"].path, "--target", root / "fsdp.json", "--json"
    )
    doc = json.loads(out)
    assert rc == 0 and doc["ok"] and doc["problems"] == []
    io = doc["io"]
    # saved: w rows [0:4] / [4:8] (float32 8x6) and b [0:3] / [3:6] on ranks 0 / 1; target: w
    # S(1) (each rank wants 3 columns of all 8 rows: 2 reads of 4x3), b replicated (2 reads of
    # 3), step (bytes: 1 read per rank). Needed per rank: 24*4 + 6*4 = 120 bytes.
    assert io["reads"] == 2 * (2 + 2 + 1) and io["max_reads_per_rank"] == 5
    assert io["bytes_needed"] == 2 * 120
    assert io["max_files_per_rank"] == 2 and io["files_read"] == 2


@pytest.mark.real
def test_plan_with_a_preset_target_on_a_mismatched_checkpoint(real, capsys):
    _, scenarios, _ = real
    rc, out, _ = run(
        capsys, "plan", scenarios["fsdp"].path, "--target", "llama-tiny:fsdp:dp=2", "--json"
    )
    doc = json.loads(out)
    kinds = {p["kind"] for p in doc["problems"]}
    assert rc == 1 and "missing_key" in kinds  # llama's keys are not in a {w, b, step} checkpoint
    assert doc["io"]["reads"] == 0 and doc["io"]["files_read"] == 0  # nothing left to read


# ----------------------------------------------------------------------------- explain
SIZE_ERROR = "Size mismatch between saved torch.Size([8, 6]) and current: torch.Size([8, 4]) for w"


def test_explain_text(capsys):
    rc, out, _ = run(capsys, "explain", SIZE_ERROR)
    assert rc == 0 and "w: " in out and "[size_mismatch]" in out


def test_explain_json(capsys):
    rc, out, _ = run(capsys, "explain", SIZE_ERROR, "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["pattern"] == "size_mismatch" and doc["fqn"] == "w"
    assert doc["what_to_check"] and doc["text"] == SIZE_ERROR


def test_explain_unknown_text_is_not_an_error(capsys):
    rc, out, _ = run(capsys, "explain", "something else entirely", "--json")
    assert rc == 0 and json.loads(out)["pattern"] == "unknown"


@pytest.mark.real
def test_explain_with_checkpoint_and_target(real, capsys):
    root, scenarios, loads = real
    error = loads["size"].errors[0]  # the real CheckpointException dump of rank 0
    rc, out, _ = run(
        capsys,
        "explain",
        error,
        "--checkpoint",
        scenarios["size"].path,
        "--target",
        root / "size.json",
        "--json",
    )
    doc = json.loads(out)
    assert rc == 0 and doc["pattern"] == "checkpoint_exception"
    assert any(
        inner["pattern"] == "size_mismatch" and inner["fqn"] == "w" for inner in doc["inner"]
    )


# ----------------------------------------------------------------------------- lab
def test_lab_starts_jupyterlab_on_the_tour(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert main(["lab", "--no-browser"]) == 0
    (cmd,) = calls
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert cmd[-2].endswith("notebooks/00_tour.ipynb") and Path(cmd[-2]).is_file()
    assert cmd[-1] == "--no-browser" and "--ServerApp.ip=127.0.0.1" in cmd


def test_help_imports_no_heavy_library():
    """`workbench --help` must stay fast: the commands import their helpers when they run."""
    code = (
        "import sys; from workbench.cli import main; main(['--help']); "
        "print([m for m in ('torch', 'pandas', 'matplotlib', 'ipywidgets') if m in sys.modules])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr


@pytest.mark.real
def test_damaged_checkpoint_blocks_plan_as_a_real_load_fails(real, tmp_path, capsys):
    """A data file missing or cut short: `inspect` reports it, `plan` exits 1, and a real dcp.load
    into the same (otherwise fine) target raises."""
    import shutil

    from workbench.torch_bridge.runs import LoadStep, run_steps

    root, scenarios, _ = real
    sc = scenarios["fsdp"]
    missing, short = tmp_path / "missing", tmp_path / "short"
    shutil.copytree(sc.path, missing)
    shutil.copytree(sc.path, short)
    (missing / "__1_0.distcp").unlink()
    data = (short / "__0_0.distcp").read_bytes()
    (short / "__0_0.distcp").write_bytes(data[: len(data) // 2])

    rc, out, _ = run(capsys, "inspect", missing)
    assert (
        rc == 0 and "damaged checkpoint (1)" in out and "__1_0.distcp: data file is missing" in out
    )
    rc, out, _ = run(capsys, "inspect", short, "--json")
    damage = json.loads(out)["damage"]
    assert rc == 0 and damage and all("__0_0.distcp" in d for d in damage)

    for path in (missing, short):
        rc, out, _ = run(capsys, "plan", path, "--target", root / "fsdp.json", "--json")
        doc = json.loads(out)
        assert rc == 1 and doc["ok"] is False and doc["problems"] == [] and doc["damaged_keys"]
    loads = run_steps(
        [LoadStep(str(missing), sc.load_layouts), LoadStep(str(short), sc.load_layouts)],
        world_size=2,
    )
    assert all(run.errors for run in loads), [run.errors for run in loads]


def test_a_newer_installed_torch_is_named_in_the_plan_header_and_the_report(
    tmp_path, monkeypatch, capsys
):
    """A torch newer than the newest recorded version: the CLI header and the report say which
    version's semantics are assumed (versions.assumed_version_note), in one line."""
    import workbench.versions as versions
    from workbench.report import write_report

    monkeypatch.setattr(versions, "installed_torch_version", lambda: "2.16")
    ckpt = Path(__file__).parent / "data" / "torch-2.9" / "ckpt"
    target = tmp_path / "t.json"
    target.write_text(
        '{"w": {"shape": [4, 3], "dtype": "float32"}, "b": {"shape": [2], "dtype": "int64"},'
        ' "step": {"bytes": true}}'
    )
    with pytest.warns(versions.NewerTorchWarning):
        assert main(["plan", str(ckpt), "--target", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"DCP semantics of torch {versions.NEWEST_TORCH_VERSION} (installed torch 2.16)" in out
    assert "note: torch 2.16 is installed, newer than" in out
    page = write_report(tmp_path / "r.html", load_metadata(ckpt), parse_target(str(target)))
    assert "torch 2.16 is installed, newer than" in Path(page).read_text()


def test_the_help_names_every_supported_torch(capsys):
    """The range in --help follows the recorded versions (it once said 2.14 after 2.15 landed)."""
    from workbench.versions import NEWEST_TORCH_VERSION, SUPPORTED_TORCH_VERSIONS

    for argv in (["--help"], ["plan", "--help"]):
        assert main(argv) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert f"{SUPPORTED_TORCH_VERSIONS[0]} to {NEWEST_TORCH_VERSION}" in text, argv
