"""Benchmark: what `CheckedLoadPlanner` adds to torch's ``DefaultLoadPlanner`` in ``dcp.load``'s
planning, on the reference reshard (DESIGN.md): a Llama-70B-like state dict (723 tensors) saved
Shard(0) on 64 ranks, loaded [Shard(0), Shard(1)] ([Shard(0), Replicate()] for 1-d norms) on an
8x8 mesh, every rank simulated under torch's ``fake`` process group in this process.

Per rank, both planners run ``set_up_planner`` + ``create_local_plan`` on that rank's real
DTensors (uninitialised CPU local tensors, as ``dcp.load`` sees them; built once, in alternating
order so that the shared machine's drift does not favour one), and the local plan is pickled (what DCP's gather sends: the checked plan carries the rank's entries in
``planner_data``); then the coordinator's ``create_global_plan`` on all 64 plans (the checked one
describes the job, plans the load with the workbench and runs its diagnosis) and every rank's
``finish_plan``. Reading data is the same for both and not timed.

Run: ``.venv/bin/python benchmarks/bench_checked_planner.py`` (about 6 minutes: building 64
ranks' DTensors dominates, and is not timed). Prints the times of both planners
measured in the same run and the ratio checked / default (target: under 1.5x of the planning,
which itself is a small part of a load that reads 140 GB).
"""

from __future__ import annotations

import gc
import pickle
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_plans import llama70b_shapes, load_placements  # noqa: E402

from workbench.planning import plan_save  # noqa: E402
from workbench.sharding import dtensor_layout  # noqa: E402

SAVE_WORLD, LOAD_MESH = 64, (8, 8)


def main() -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from workbench.torch_bridge.capture import fresh_dtensor_caches
    from workbench.torch_bridge.checked_planner import CheckedLoadPlanner
    from workbench.torch_bridge.convert import to_torch
    from workbench.torch_bridge.materialize import Meshes, torch_state_dict

    warnings.simplefilter("ignore")
    shapes = llama70b_shapes()
    saved = {
        f: dtensor_layout(s, (SAVE_WORLD,), "S(0)", "bfloat16", SAVE_WORLD)
        for f, s in shapes.items()
    }
    target = {
        f: dtensor_layout(s, LOAD_MESH, load_placements(s, "S(0), S(1)"), "bfloat16", SAVE_WORLD)
        for f, s in shapes.items()
    }
    md = to_torch(plan_save(saved).metadata)

    times = {"default": [0.0, 0.0, 0.0, 0.0], "checked": [0.0, 0.0, 0.0, 0.0]}
    sizes = {"default": 0, "checked": 0}
    planners = {"default": [], "checked": []}
    plans = {"default": [], "checked": []}
    for r in range(SAVE_WORLD):
        fresh_dtensor_caches()
        dist.init_process_group("fake", store=FakeStore(), rank=r, world_size=SAVE_WORLD)
        try:
            meshes = Meshes()
            sd = torch_state_dict(target, r, meshes, empty="cpu")  # both planners read it
            order = (("default", DefaultLoadPlanner), ("checked", CheckedLoadPlanner))
            for name, make in order if r % 2 == 0 else order[::-1]:  # alternate: no drift bias
                gc.collect()
                t0 = time.perf_counter()
                p = make()
                p.set_up_planner(sd, md, r == 0)
                plan = p.create_local_plan()
                t1 = time.perf_counter()
                blob = pickle.dumps(plan)  # what the gather sends
                plan = pickle.loads(blob)
                t2 = time.perf_counter()
                times[name][0] += t1 - t0
                times[name][1] += t2 - t1
                sizes[name] += len(blob)
                planners[name].append(p if r == 0 else None)
                plans[name].append(plan)
            del sd
            d, c = times["default"][0], times["checked"][0]
            print(
                f"rank {r}: local plans so far default {d:.2f} s, checked {c:.2f} s",
                file=sys.stderr,
            )
        finally:
            dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=SAVE_WORLD)
    try:
        for name in ("default", "checked"):
            t0 = time.perf_counter()
            central = planners[name][0].create_global_plan(plans[name])
            t1 = time.perf_counter()
            for c in central:
                planners[name][0].finish_plan(c)
            t2 = time.perf_counter()
            times[name][2] += t1 - t0
            times[name][3] += t2 - t1
            n_items = sum(len(c.items) for c in central)
            print(f"{name}: {n_items} read items in the global plan")
    finally:
        dist.destroy_process_group()

    labels = ("local plans (64 ranks)", "gather (pickle)", "global plan", "finish_plan")
    print(f"\n{len(shapes)} tensors, saved S(0) on {SAVE_WORLD}, loaded on {LOAD_MESH}")
    for i, label in enumerate(labels):
        d, c = times["default"][i], times["checked"][i]
        print(f"{label:>24}: default {d:8.3f} s  checked {c:8.3f} s")
    d_total, c_total = sum(times["default"]), sum(times["checked"])
    print(f"{'planning in all':>24}: default {d_total:8.3f} s  checked {c_total:8.3f} s")
    print(
        f"gathered plans: default {sizes['default'] / 1e6:.1f} MB, "
        f"checked {sizes['checked'] / 1e6:.1f} MB"
    )
    print(f"ratio checked / default (planning): {c_total / d_total:.2f}x")
    print(
        f"coordinator's extra time (workbench plan + diagnosis of the whole job): "
        f"{times['checked'][2] - times['default'][2]:.3f} s"
    )


if __name__ == "__main__":
    main()
