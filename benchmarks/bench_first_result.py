"""Benchmark: time to the first result on a real 16,384-rank checkpoint directory, against the
time torch 2.13 takes only to read the same ``.metadata`` (``FileSystemReader.read_metadata``),
measured in the same run.

The directory is built once in a temporary folder: the ``.metadata`` torch's ``FileSystemWriter``
writes for the save (`references.torch_metadata_bytes`), one sparse ``__<rank>_0.distcp`` per
rank of the size its byte ranges need, and the target as the JSON ``workbench plan --target``
reads (`targets.target_json`, about 13 MB for the realistic case: every entry names its
pipeline stage's 2048 mesh ranks). Cases (`references.py`):

- ``realistic``: Llama-405B-like, PP16 x DP128 x TP8 saved, PP8 x DP256 x TP8 loaded (937,600
  saved chunks);
- ``flat``: the 70B reference, ``Shard(0)`` on 16,384 ranks, loaded ``[S(0), S(1)]`` on 128 x 128.

Each measurement runs in a fresh process under an address-space cap (``--cap-gb``):

- ``workbench inspect DIR``: seconds to its first printed line and to its end;
- ``workbench plan DIR --target T.json``: seconds to its first printed line and to its end,
  once with the ``.metadata`` read cold (``WORKBENCH_NO_CACHE=1``: a directory's first open)
  and then from the parsed-metadata cache (every later open; building the case warmed it);
- the explorer: ``plan_checkpoint`` (open, parse the target, plan every rank, problems, I/O
  table), then ``explore_checkpoint`` (the first tensor's tables and picture data for a rank),
  then a ``CheckpointExplorer`` built from scratch in the same process (its first scene);
- ``workbench report DIR --target T.json`` (and the size of the page it writes);
- torch: ``FileSystemReader(DIR).read_metadata()``.

Python runs as after ``pip install``: with compiled bytecode (kept in a temporary
``PYTHONPYCACHEPREFIX`` and written by one warm-up import; these machines set
``PYTHONDONTWRITEBYTECODE=1``, which makes every start compile the package again, ~0.4 s).

Run: ``.venv/bin/python benchmarks/bench_first_result.py [--kinds realistic,flat] [--cap-gb 8]``.
Building a case's directory takes about a minute (realistic) to several (flat).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def build(kind: str, out: Path) -> tuple[Path, Path]:
    """The checkpoint directory and the JSON target of a case."""
    import numpy as np
    from references import flat, realistic, torch_metadata_bytes

    from workbench.formats import read_checkpoint
    from workbench.targets import target_json

    if kind == "realistic":
        src, dst = realistic(16, 128, 8), realistic(8, 256, 8)
    else:
        src, dst = flat(16384), flat(16384, "S(0), S(1)", (128, 128))
    ckpt = out / kind
    ckpt.mkdir()
    (ckpt / ".metadata").write_bytes(torch_metadata_bytes(src))
    sd = read_checkpoint(ckpt).metadata.storage_data
    ends = np.zeros(len(sd.paths), np.int64)
    np.maximum.at(ends, sd.path_id, sd.offset + sd.length)
    for name, end in zip(sd.paths, ends.tolist()):
        with open(ckpt / name, "wb") as f:
            f.truncate(end)  # sparse: the sizes are what the checks read
    target = out / f"{kind}_target.json"
    target.write_text(json.dumps(target_json(dst)))
    return ckpt, target


def _capped(cap_gb: float):
    cap = int(cap_gb * 1e9)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def first_line(cmd: list[str], cap_gb: float, env: dict) -> dict:
    """Seconds to a command's first stdout line and to its end."""
    t = time.perf_counter()
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, preexec_fn=_capped(cap_gb), env=env
    )
    first = None
    for _ in p.stdout:
        if first is None:
            first = time.perf_counter() - t
    p.wait()
    total = time.perf_counter() - t
    return {"first": first if first is not None else total, "total": total, "rc": p.returncode}


EXPLORER = """
import json, sys, time
t = time.perf_counter()
from workbench.widgets.explore import explore_checkpoint, plan_checkpoint
plan = plan_checkpoint(sys.argv[1], sys.argv[2])
t1 = time.perf_counter()
explore_checkpoint(plan, rank=int(sys.argv[3]))
t2 = time.perf_counter()
from workbench.widgets.checkpoint import CheckpointExplorer
t3 = time.perf_counter()
CheckpointExplorer(sys.argv[1], sys.argv[2], rank=int(sys.argv[3]))
t4 = time.perf_counter()
print(json.dumps({"plan_checkpoint": t1 - t, "first_scene": t2 - t,
                  "explorer_again": t4 - t3}))
"""

TORCH = """
import sys, time
t = time.perf_counter()
import torch.distributed.checkpoint as dcp
t1 = time.perf_counter()
dcp.FileSystemReader(sys.argv[1]).read_metadata()
print(time.perf_counter() - t1)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="realistic")
    ap.add_argument("--cap-gb", type=float, default=8.0)
    ap.add_argument("--rank", type=int, default=5000)
    args = ap.parse_args()
    py = sys.executable
    env_cli = [py, "-m", "workbench.cli"]
    with tempfile.TemporaryDirectory(prefix="wb-first-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        warm = "import pandas, workbench.cli, workbench.report, workbench.widgets.checkpoint"
        subprocess.run([py, "-c", warm], check=True, env=env, cwd=ROOT)
        for kind in args.kinds.split(","):
            t = time.perf_counter()
            ckpt, target = build(kind, Path(tmp))
            print(f"{kind}: directory and target built in {time.perf_counter() - t:.0f} s")
            torch_s = float(
                subprocess.run(
                    [py, "-c", TORCH, str(ckpt)],
                    capture_output=True,
                    text=True,
                    check=True,
                    preexec_fn=_capped(args.cap_gb),
                    env=env,
                ).stdout
            )
            plan_cmd = [*env_cli, "plan", str(ckpt), "--target", str(target)]
            # the first open of a directory reads its .metadata cold (then it is cached)
            cold = first_line(plan_cmd, args.cap_gb, {**env, "WORKBENCH_NO_CACHE": "1"})
            plan = first_line(plan_cmd, args.cap_gb, env)
            inspect = first_line([*env_cli, "inspect", str(ckpt)], args.cap_gb, env)
            ex = json.loads(
                subprocess.run(
                    [py, "-c", EXPLORER, str(ckpt), str(target), str(args.rank)],
                    capture_output=True,
                    text=True,
                    check=True,
                    preexec_fn=_capped(args.cap_gb),
                    cwd=ROOT,
                    env=env,
                ).stdout
            )
            report = first_line(
                [
                    *env_cli,
                    "report",
                    str(ckpt),
                    "--target",
                    str(target),
                    "--output",
                    str(Path(tmp) / f"{kind}.html"),
                ],
                args.cap_gb,
                env,
            )
            rows = [
                ("torch read_metadata (reference)", torch_s),
                ("workbench plan, .metadata read cold: first line", cold["first"]),
                ("workbench plan: first line", plan["first"]),
                ("workbench plan: total", plan["total"]),
                ("workbench inspect: first line", inspect["first"]),
                ("workbench inspect: total", inspect["total"]),
                ("plan_checkpoint", ex["plan_checkpoint"]),
                ("explorer first scene (plan + tables + picture data)", ex["first_scene"]),
                ("CheckpointExplorer() (imports and caches warm)", ex["explorer_again"]),
                ("workbench report: total", report["total"]),
            ]
            print(f"{kind} 16,384 ranks (seconds; x = / torch's read_metadata alone)")
            for name, s in rows:
                print(f"  {name:<55} {s:7.2f}   x{s / torch_s:.2f}")
            page = Path(tmp) / f"{kind}.html"
            if page.exists():  # bounded whatever the scale (workbench.report's row caps)
                print(f"  workbench report: HTML {page.stat().st_size / 1e6:.2f} MB")
            if plan["rc"] not in (0, 1) or report["rc"] != 0:
                print(f"  exit codes: plan {plan['rc']}, report {report['rc']}")


if __name__ == "__main__":
    main()
