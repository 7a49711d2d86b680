"""Benchmark: `workbench.capture` of a Llama-70B-like model (80 layers, 723 tensors, on the meta
device) parallelised FSDP2 + TP with torchtitan's plan, at 8 x 8 = 64 ranks and 128 x 8 = 1024
ranks, against running torch's fake process group for every rank.

capture runs few ranks (rank 0 and one witness) in forked children and derives every other rank;
the alternative is the user's build() and DCP's local save planning once per rank. That is
measured on a few ranks in this process (``run_rank``, the same work a capture child does) and
multiplied by the world size. Also: the same capture with the plans made (``plan_save`` on the
captured layouts) to show the whole path.

Run: ``.venv/bin/python benchmarks/bench_capture.py [--every N]``. Targets (issue 11): 8x8 under
20 s on a 2-core machine, 1024 ranks no more than 2x that. Prints times and ratios of one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the shared test programs (torchtitan-like Llama)

LLAMA_70B = dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab=128256, hidden=28672)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--every", type=int, default=3, help="ranks timed for the per-rank estimate")
    args = ap.parse_args()

    t0 = time.perf_counter()
    import capture_programs as P  # imports torch

    import workbench as wb
    from workbench.torch_bridge.capture import preload_torch, run_rank

    preload_torch()
    print(f"import torch + warm-up: {time.perf_counter() - t0:.1f} s (once per process)")

    results = {}
    for dp, tp in ((8, 8), (128, 8)):
        build = partial(P.build_fsdp_tp, dp=dp, tp=tp, **LLAMA_70B)
        t = time.perf_counter()
        target = wb.capture(build, dp * tp, time_limit=600)
        took = time.perf_counter() - t
        results[dp * tp] = took
        n_mis = sum(1 for v in target.values() if v.misdescribed_ranks)
        print(
            f"capture {dp}x{tp} = {dp * tp} ranks: {took:.1f} s, {len(target)} entries, "
            f"ran ranks {list(target.ranks_run)}, {n_mis} entries with FSDP2 rows off DCP's box"
        )
        t = time.perf_counter()
        save = wb.plan_save(target)
        print(
            f"  plan_save of the captured layouts: {time.perf_counter() - t:.1f} s, "
            f"{sum(len(p.items) for p in save.plans)} write items"
        )
        per = []
        for r in range(args.every):
            t = time.perf_counter()
            run_rank(build, r * (dp * tp // args.every), dp * tp)
            per.append(time.perf_counter() - t)
        every = sum(per) / len(per) * dp * tp
        print(
            f"  torch's fake group for every rank: {sum(per) / len(per):.2f} s a rank "
            f"(mean of {len(per)}) x {dp * tp} = {every:.0f} s estimated; "
            f"capture is {every / took:.0f}x faster"
        )
    print(
        f"1024 ranks / 64 ranks: {results[1024] / results[64]:.2f}x "
        f"(target <= 2x); 64 ranks {results[64]:.1f} s (target < 20 s)"
    )


if __name__ == "__main__":
    main()
