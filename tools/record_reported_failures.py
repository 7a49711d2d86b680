"""Reproduce publicly reported reshard failures for real and record their outcomes as test data.

Not part of ``make test`` (it spawns gloo processes on 127.0.0.1); run it when a case changes::

    .venv/bin/python tools/record_reported_failures.py            # --reparse: messages only

For each case of `CASES` (one per `workbench.explanations.REPORTED_FAILURES` entry): a real
``dcp.save`` of the saved layouts by that many processes, then a real ``dcp.load`` into the target
layouts by the target's number of processes (`workbench.torch_bridge.runs`). The checkpoint goes
to ``tests/data/reported/<key>/ckpt/`` and what torch did to ``outcome.json``: per rank the
exception text (None when the rank loaded), the ranks and keys torch names, and the saved keys
nobody loaded. ``tests/test_reported_failures.py`` predicts the same from the files and the target.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "reported"

# Layout specs: ["dtensor", shape, mesh, placements] / ["tensor", shape] / ["bytes", [ranks]]
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
}


def layouts(specs: dict, world: int) -> dict:
    from workbench.sharding import bytes_layout, dtensor_layout, tensor_layout

    out = {}
    for fqn, s in specs.items():
        if s[0] == "dtensor":
            out[fqn] = dtensor_layout(tuple(s[1]), tuple(s[2]), s[3], world_size=world)
        elif s[0] == "tensor":
            out[fqn] = tensor_layout(tuple(s[1]), world)
        else:
            out[fqn] = bytes_layout(world, ranks=s[1])
    return out


# torch's message line (not the traceback's source line that builds it from {fqn})
MISSING = re.compile(r"^RuntimeError: Missing key in checkpoint state_dict: (\S+?)\.?$", re.M)
RANK = re.compile(r"\(RANK (\d+)\)")


def named(text: str) -> dict[str, list[int]]:
    """``{key: [ranks]}`` torch's CheckpointException names (each rank's traceback block is
    headed ``(RANK r)`` and ends with its message)."""
    out: dict[str, set[int]] = {}
    blocks = RANK.split(text)
    for r, block in zip(blocks[1::2], blocks[2::2]):
        for key in MISSING.findall(block):
            out.setdefault(key, set()).add(int(r))
    return {k: sorted(v) for k, v in sorted(out.items())}


def record(key: str, case: dict) -> dict:
    from workbench.torch_bridge.runs import run_load, run_save

    dest = DATA / key
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        saved = run_save(ckpt, layouts(case["save"], case["save_world"]), time_limit=400)
        if not saved.ok:
            raise SystemExit(f"{key}: the save failed: {saved.errors}")
        loaded = run_load(ckpt, layouts(case["load"], case["load_world"]), time_limit=400)
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        shutil.copytree(ckpt, dest / "ckpt")
    import torch

    outcome = {
        "torch": torch.__version__,
        "case": case,
        "errors": [r.error for r in loaded.ranks],
        "mismatches": [list(m) for m in loaded.mismatches()],
        "never_loaded": sorted(set(case["save"]) - set(case["load"])),
    }
    return write_outcome(key, outcome)


def write_outcome(key: str, outcome: dict) -> dict:
    """``outcome`` with what torch's messages name (``raised_on``: the ranks whose dcp.load
    raised, every rank since DCP re-raises a planning failure everywhere; ``failing_ranks`` /
    ``missing_keys``: the ranks and keys its CheckpointException names), written to the case."""
    named_keys: dict[str, list[int]] = {}
    for text in outcome["errors"]:
        for k, rs in named(text or "").items():
            named_keys[k] = sorted(set(named_keys.get(k, [])) | set(rs))
    outcome["raised_on"] = [r for r, e in enumerate(outcome["errors"]) if e is not None]
    outcome["missing_keys"] = named_keys
    outcome["failing_ranks"] = sorted({r for rs in named_keys.values() for r in rs})
    (DATA / key / "outcome.json").write_text(json.dumps(outcome, indent=1) + "\n")
    print(f"{key}: raised on {outcome['raised_on']}, names {named_keys}")
    return outcome


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for key, case in CASES.items():
        if "--reparse" in args:  # re-read the stored messages only (no run)
            write_outcome(key, json.loads((DATA / key / "outcome.json").read_text()))
        else:
            record(key, case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
