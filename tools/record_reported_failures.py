"""Reproduce publicly reported reshard failures for real and record their outcomes as test data.

Not part of ``make test`` (it spawns gloo processes on 127.0.0.1); run it when a case changes::

    .venv/bin/python tools/record_reported_failures.py \\
        --python 2.5=/tmp/venv-2.5/bin/python --python 2.6=/tmp/venv-2.6/bin/python
    .venv/bin/python tools/record_reported_failures.py --reparse   # re-read stored messages only

For each case of `CASES` (one per `workbench.explanations.REPORTED_FAILURES` entry): a real
``dcp.save`` of the saved layouts by that many processes, then a real ``dcp.load`` into the target
layouts by the target's number of processes (`workbench.torch_bridge.runs`). The checkpoint goes
to ``tests/data/reported/<key>/ckpt/`` and what torch did to ``outcome.json``: per rank the
exception text (None when the rank loaded), the ranks and keys torch names, the entries whose
loaded values differ from the checkpoint's (and those values) and the saved keys nobody loaded.
A case with ``"side": "save"`` fails in ``dcp.save``: its outcome holds each rank's exception and
what torch's planner logged (2.4 - 2.11 raise a bare "Failed to validate global plan" and log
the reasons); nothing is written, so there is no checkpoint.

A case with ``"torch": "X.Y"`` happened on that version only: it runs in a throw-away venv
outside the repository with that torch (``--python X.Y=PATH``; ``python3 -m venv /tmp/venv-X.Y
&& /tmp/venv-X.Y/bin/pip install --no-deps torch-X.Y*.whl`` plus numpy, typing_extensions, sympy,
networkx, jinja2, fsspec, filelock, tqdm, rich; a CUDA build of torch also needs the
``nvidia-*-cu12`` packages its METADATA pins, e.g. ``pip install --no-deps --target /tmp/nv124``
and a ``.pth`` naming that directory in the venv), this repository on its ``PYTHONPATH``
(``USE_LIBUV=0``: before 2.6 the libuv TCPStore takes no listen socket). The installed torch then
loads the checkpoint that version wrote (or saves anew where it could not) into
``outcome-<X.Y>.json``: how the upgrade changed it.
``tests/test_reported_failures.py`` predicts every outcome from the files and the target.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "reported"

# Layout specs: ["dtensor", shape, mesh, placements(, dtype)] / ["tensor", shape(, dtype)] /
# ["bytes", [ranks]], the last two optionally ending in {"per_rank_values": true}
CASES = {
    # torchtitan #811: saved by dp_shard=8, resumed with 16; here 2 -> 4 data-parallel ranks
    "torchtitan-811": {
        "save_world": 2,
        "save": {
            "model.w": ["dtensor", [8, 4], [2], "S(0)"],
            **{f"dataloader.dp_rank_{r}": ["bytes", [r]] for r in range(2)},
        },
        "load_world": 4,
        "load": {
            "model.w": ["dtensor", [8, 4], [4], "S(0)"],
            **{f"dataloader.dp_rank_{r}": ["bytes", [r]] for r in range(4)},
        },
    },
    # torchtitan #816 (its case 2): saved with dp 4, loaded with dp 2
    "torchtitan-816": {
        "save_world": 4,
        "save": {
            "model.w": ["dtensor", [8, 4], [4], "S(0)"],
            **{f"dataloader.dp_rank_{r}": ["bytes", [r]] for r in range(4)},
        },
        "load_world": 2,
        "load": {
            "model.w": ["dtensor", [8, 4], [2], "S(0)"],
            **{f"dataloader.dp_rank_{r}": ["bytes", [r]] for r in range(2)},
        },
    },
    # pytorch #148252: a checkpoint of a 2-layer model loaded into a 3-layer one
    "pytorch-148252": {
        "save_world": 2,
        "save": {f"model.{i}.weight": ["tensor", [4, 4]] for i in range(2)},
        "load_world": 2,
        "load": {f"model.{i}.weight": ["tensor", [4, 4]] for i in range(3)},
    },
    # NeMo Automodel PR 2779: AdamW state is created lazily, so a parameter that never got a
    # gradient has no optim.state.<param>.* at save time; the resumed optimizer (state
    # materialised for every parameter, in AdamW's order step, exp_avg, exp_avg_sq) asks for it
    "nemo-automodel-2779": {
        "save_world": 2,
        "save": {
            "model.active.weight": ["dtensor", [8, 4], [2], "S(0)"],
            "model.inactive.weight": ["dtensor", [8, 4], [2], "S(0)"],
            "optim.state.active.weight.step": ["tensor", []],
            "optim.state.active.weight.exp_avg": ["dtensor", [8, 4], [2], "S(0)"],
            "optim.state.active.weight.exp_avg_sq": ["dtensor", [8, 4], [2], "S(0)"],
        },
        "load_world": 2,
        "load": {
            "model.active.weight": ["dtensor", [8, 4], [2], "S(0)"],
            "model.inactive.weight": ["dtensor", [8, 4], [2], "S(0)"],
            **{
                f"optim.state.{p}.weight.{s}": (
                    ["tensor", []] if s == "step" else ["dtensor", [8, 4], [2], "S(0)"]
                )
                for p in ("active", "inactive")
                for s in ("step", "exp_avg", "exp_avg_sq")
            },
        },
    },
    # RLinf #655: a [257152, 2048] embedding saved as a DTensor, resumed into FSDP1's flattened
    # local shard (numel / 4 on 4 ranks): here [8, 4] on 4 ranks into a 1-d tensor of 8
    "rlinf-655": {
        "save_world": 4,
        "save": {"model.embed_tokens.weight": ["dtensor", [8, 4], [4], "S(0)"]},
        "load_world": 4,
        "load": {"model.embed_tokens.weight": ["tensor", [8]]},
    },
    # pytorch #126604: DCP did not check shapes; torch 2.5 loads [8, 4] into [8, 3] without a
    # word (2.6 raises, PyTorch PR 141571)
    "pytorch-126604": {
        "torch": "2.5",
        "save_world": 2,
        "save": {"w": ["dtensor", [8, 4], [2], "S(0)"]},
        "load_world": 2,
        "load": {"w": ["dtensor", [8, 3], [2], "S(0)"]},
    },
    # pytorch #187138: a float32 checkpoint loaded into a bfloat16 template is cast silently
    "pytorch-187138": {
        "save_world": 2,
        "save": {"w": ["dtensor", [64, 8], [2], "S(0)"]},
        "load_world": 2,
        "load": {"w": ["dtensor", [64, 8], [2], "S(0)", "bfloat16"]},
    },
    # KempnerForge PR 115: optimizer.state_dict() round-tripped through DCP; on resume the
    # freshly built AdamW has no state yet, so its state dict requests only param_groups and the
    # saved moments are dropped without a word
    "kempnerforge-115": {
        "save_world": 2,
        "save": {
            "model.w": ["dtensor", [8, 4], [2], "S(0)"],
            "optimizer.state.0.step": ["tensor", []],
            "optimizer.state.0.exp_avg": ["dtensor", [8, 4], [2], "S(0)"],
            "optimizer.state.0.exp_avg_sq": ["dtensor", [8, 4], [2], "S(0)"],
            "optimizer.param_groups.0.lr": ["bytes", [0, 1]],
            "optimizer.param_groups.0.params.0": ["bytes", [0, 1]],
        },
        "load_world": 2,
        "load": {
            "model.w": ["dtensor", [8, 4], [2], "S(0)"],
            "optimizer.param_groups.0.lr": ["bytes", [0, 1]],
            "optimizer.param_groups.0.params.0": ["bytes", [0, 1]],
        },
    },
    # RLinf PR 1570: each rank's RNG state saved under the same keys (torch's generator state,
    # a uint8 tensor, and numpy's, an object): dcp.save keeps one rank's copy of each and every
    # rank resumes with that rank's streams
    "rlinf-1570": {
        "save_world": 2,
        "save": {
            "model.w": ["dtensor", [8, 4], [2], "S(0)"],
            "rng.torch": ["tensor", [16], "uint8", {"per_rank_values": True}],
            "rng.numpy": ["bytes", [0, 1], {"per_rank_values": True}],
        },
        "load_world": 2,
        "load": {
            "model.w": ["dtensor", [8, 4], [2], "S(0)"],
            "rng.torch": ["tensor", [16], "uint8", {"per_rank_values": True}],
            "rng.numpy": ["bytes", [0, 1], {"per_rank_values": True}],
        },
    },
    # torchtitan #2622: activation checkpointing wrapped around a compiled block saves
    # "layer._orig_mod.weight"; the model without activation checkpointing asks for
    # "layer.weight"
    "torchtitan-2622": {
        "save_world": 2,
        "save": {"layer._orig_mod.weight": ["dtensor", [8, 4], [2], "S(0)"]},
        "load_world": 2,
        "load": {"layer.weight": ["dtensor", [8, 4], [2], "S(0)"]},
    },
    # transformers PR 48802: FSDP x TP's _StridedShard "produces overlapping checkpoint
    # metadata, causing failure": FSDP2's [_StridedShard(0, tp), Shard(0)] on dp=3, tp=2 with
    # 13 rows (not divisible by dp * tp)
    "transformers-48802": {
        "side": "save",
        "save_world": 6,
        "save": {
            "model.layers.0.mlp.up_proj.weight": ["dtensor", [13, 4], [3, 2], "SS(0,2), S(0)"]
        },
    },
    # PyTorch PR 150862: through 2.7 an empty DTensor shard sat at another rank's offset and the
    # save's dedup dropped the real chunk there ("This caused DCP to fail to save a checkpoint")
    "pytorch-150862": {
        "torch": "2.6",
        "side": "save",
        "save_world": 8,
        "save": {"w": ["dtensor", [6], [2, 4], "S(0), S(0)"]},
    },
}


def layouts(specs: dict, world: int) -> dict:
    from workbench.sharding import bytes_layout, dtensor_layout, tensor_layout

    out = {}
    for fqn, s in specs.items():
        # a trailing {"per_rank_values": true}: each rank holds its own value under the key
        kw = s[-1] if isinstance(s[-1], dict) else {}
        s = s[:-1] if kw else s
        if s[0] == "dtensor":
            out[fqn] = dtensor_layout(tuple(s[1]), tuple(s[2]), s[3], *s[4:], world_size=world)
        elif s[0] == "tensor":
            out[fqn] = tensor_layout(tuple(s[1]), world, *s[2:], **kw)
        else:
            out[fqn] = bytes_layout(world, ranks=s[1], **kw)
    return out


# torch's message lines naming a key (not the traceback's source lines that build them)
NAMING = [
    re.compile(r"^RuntimeError: Missing key in checkpoint state_dict: (\S+?)\.?$", re.M),
    re.compile(r"^ValueError: Size mismatch between saved .* for (\S+)$", re.M),
    # the planner's logged validation reasons (2.4 - 2.11) / the appended strings (2.12+)
    re.compile(r"key:(\S+) (?:invalid fill|has overlapping|has out of bounds)"),
]
RANK = re.compile(r"\(RANK (\d+)\)")


def named(text: str, rank: int | None = None) -> dict[str, list[int]]:
    """``{key: [ranks]}`` torch's messages name: a CheckpointException's traceback blocks are
    headed ``(RANK r)`` and end with that rank's message; a bare text is ``rank``'s."""
    out: dict[str, set[int]] = {}
    blocks = RANK.split(text)
    pairs = list(zip(blocks[1::2], blocks[2::2])) or ([(rank, text)] if rank is not None else [])
    for r, block in pairs:
        for rx in NAMING:
            for key in rx.findall(block):
                out.setdefault(key, set()).add(int(r))
    return {k: sorted(v) for k, v in sorted(out.items())}


def save_logging(rank, world_size, path, layouts):
    """A real ``dcp.save`` on this rank (run inside `runs.run_steps` as a `runs.CallStep`) that
    also keeps what torch's DCP loggers say: 2.4 - 2.11 log the reasons a global plan fails
    validation and raise a bare message. Returns ``(exception text or None, log lines)``."""
    import logging

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from workbench.torch_bridge.materialize import Meshes, exception_text, torch_state_dict

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    log = logging.getLogger("torch.distributed.checkpoint")
    handler = Keep(logging.WARNING)
    log.addHandler(handler)
    try:
        dcp.save(torch_state_dict(layouts, rank, Meshes()), checkpoint_id=path)
        return None, lines
    except (Exception, CheckpointException) as e:
        return exception_text(e), lines
    finally:
        log.removeHandler(handler)


def _mismatched_values(loaded) -> dict:
    """Per rank and entry whose loaded values differ from the checkpoint's: what it received."""
    bad = {(r, f) for r, f, *_ in loaded.mismatches()}
    return {
        str(r.rank): {
            f: v.tolist() if hasattr(v, "tolist") else v
            for f, v in r.values.items()
            if (r.rank, f) in bad
        }
        for r in loaded.ranks
        if any(rr == r.rank for rr, _ in bad)
    }


def run_case(case: dict, ckpt: Path, *, save: bool = True) -> dict:
    """Save (and load) ``case`` for real with the installed torch; what torch did. ``save=False``:
    load the checkpoint already at ``ckpt`` (one an older torch wrote)."""
    import torch

    from workbench.torch_bridge.runs import CallStep, run_load, run_save, run_steps

    out = {"torch": torch.__version__, "case": case}
    if case.get("side") == "save":
        (got,) = run_steps(
            [
                CallStep(
                    str(ckpt),
                    save_logging,
                    {"layouts": layouts(case["save"], case["save_world"])},
                )
            ],
            case["save_world"],
            time_limit=400,
        )
        out["errors"] = [e for e, _ in got]
        out["logged"] = [lines for _, lines in got]
        return out
    saved = (
        run_save(ckpt, layouts(case["save"], case["save_world"]), time_limit=400) if save else None
    )
    if saved is not None and not saved.ok:
        raise SystemExit(f"the save failed: {saved.errors}")
    loaded = run_load(ckpt, layouts(case["load"], case["load_world"]), time_limit=400)
    out["errors"] = [r.error for r in loaded.ranks]
    out["mismatches"] = [list(m) for m in loaded.mismatches()]
    out["received"] = _mismatched_values(loaded)
    out["never_loaded"] = sorted(set(case["save"]) - set(case["load"]))
    return out


def _version(v: str) -> str:
    return ".".join(v.split("+")[0].split(".")[:2])


def record(key: str, case: dict, pythons: dict[str, str]) -> None:
    """Run ``case`` on its torch (a venv's python when it names another version) and, for a
    version-specific case, on the installed torch as well; write the outcomes."""
    import torch

    here = _version(torch.__version__)
    want = case.get("torch", here)
    dest = DATA / key
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if want != here:
        if want not in pythons:
            raise SystemExit(f"{key} happened on torch {want}: pass --python {want}=PATH")
        # torch before 2.6: the libuv TCPStore cannot take runs.py's bound listen socket
        env = {**os.environ, "PYTHONPATH": str(ROOT), "USE_LIBUV": "0"}
        subprocess.run(
            [pythons[want], __file__, "--only", key, "--keep-dir"],
            check=True,
            env=env,
            timeout=1200,
        )
    else:
        write_outcome(key, _run_into(key, case), "outcome.json")
    if "torch" in case and want != here:
        # the upgrade: the installed torch loads the checkpoint the old one wrote (or saves anew
        # where the old one could not)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "ckpt"
            old = (dest / "ckpt").exists()
            if old:
                shutil.copytree(dest / "ckpt", ckpt)
            out = run_case(case, ckpt, save=not old)
        write_outcome(key, out, f"outcome-{here}.json")


def _run_into(key: str, case: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        out = run_case(case, ckpt)
        if (ckpt / ".metadata").exists():
            shutil.copytree(ckpt, DATA / key / "ckpt")
    return out


def write_outcome(key: str, outcome: dict, name: str = "outcome.json") -> dict:
    """``outcome`` with what torch's messages name (``raised_on``: the ranks whose dcp.save /
    dcp.load raised, every rank since DCP re-raises a planning failure everywhere;
    ``failing_ranks`` / ``named_keys``: the ranks and keys its messages and logs name),
    written to the case."""
    named_keys: dict[str, list[int]] = {}
    logged = outcome.get("logged") or [[] for _ in outcome["errors"]]
    for r, (text, lines) in enumerate(zip(outcome["errors"], logged)):
        for k, rs in named("\n".join([text or "", *lines]), r).items():
            named_keys[k] = sorted(set(named_keys.get(k, [])) | set(rs))
    outcome.pop("missing_keys", None)  # the name of named_keys before save-side cases
    outcome["raised_on"] = [r for r, e in enumerate(outcome["errors"]) if e is not None]
    outcome["named_keys"] = named_keys
    outcome["failing_ranks"] = sorted({r for rs in named_keys.values() for r in rs})
    (DATA / key / name).write_text(json.dumps(outcome, indent=1) + "\n")
    print(f"{key} ({outcome['torch']}): raised on {outcome['raised_on']}, names {named_keys}")
    return outcome


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reparse", action="store_true", help="re-read stored messages only")
    ap.add_argument("--only", action="append", help="record these cases only")
    ap.add_argument("--python", action="append", default=[], help="X.Y=PATH of a venv's python")
    ap.add_argument("--keep-dir", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    pythons = dict(p.split("=", 1) for p in args.python)
    for key, case in CASES.items():
        if args.only and key not in args.only:
            continue
        if args.reparse:
            for f in sorted((DATA / key).glob("outcome*.json")):
                write_outcome(key, json.loads(f.read_text()), f.name)
        elif args.keep_dir:  # inside the venv of the case's torch: its run only
            write_outcome(key, _run_into(key, case), "outcome.json")
        else:
            record(key, case, pythons)
    return 0


if __name__ == "__main__":
    sys.exit(main())
