"""Benchmark: whole-job plans at 1024, 4096 and 16,384 ranks, time and peak memory, against torch
2.13's own helpers measured in the same run.

Cases (`references.py`):

- ``flat N``: the Llama-70B-like state dict (723 tensors) saved ``Shard(0)`` on N ranks, loaded
  ``[Shard(0), Shard(1)]`` on a sqrt(N) x sqrt(N) mesh (16,384 ranks: 128 x 128, 739 million
  read items over the job);
- ``realistic N``: the Llama-405B-like job under PP16 x DP(N/128) x TP8, loaded under
  PP8 x DP(N/64) x TP8 (16,384 ranks: 937,600 saved chunks).

Every case runs in fresh subprocesses, so each peak RSS (``resource.getrusage`` maxrss) is that
case's alone:

- workbench: ``dtensor_layout`` for both sides, then ``plan_save``, ``plan_load``, ``.problems``
  and ``.io`` over every rank of the job (each timed), then rank 0's ``LoadPlan`` records (what an
  explorer or ``workbench plan --rank 0`` shows first);
- torch: the same checkpoint's ``Metadata`` as torch records (built from the workbench's save
  plan, untimed), then ``create_default_local_load_plan`` on a sample of ranks (each rank's
  state dict a stand-in exposing its DTensor's ``__create_chunk_list__`` and ``size()``, as in
  bench_plans.py), timed; the whole job's load planning in torch is the per-rank mean times the
  ranks. Where the job has at most ``--torch-save-items`` write items, torch's
  ``dedup_save_plans`` + ``create_default_global_save_plan`` on every rank's ``SavePlan`` (of
  torch ``WriteItem`` records, built untimed) are timed too: the coordinator's step of a save.

The sampled ranks' read items, ours and torch's, are compared item by item and in order (a digest
of each rank's items crosses the process boundary).

Run: ``.venv/bin/python benchmarks/bench_scale.py [--ranks 1024,4096,16384] [--kinds
flat,realistic] [--sample 8] [--cap-gb 12]``. Targets: flat 16,384 plan_save / plan_load /
problems / io each < 30 s and < 8 GB peak; realistic 16,384 < 10 s and < 4 GB; 1024 < 1 s.
Takes about 15 minutes (torch plans one rank of the flat 16,384 case in 9 - 16 s).
A worker whose RSS passes ``--cap-gb`` is stopped and reported, so the machine stays up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _layouts(kind: str, ranks: int):
    from references import flat, realistic

    if kind == "flat":
        side = int(round(ranks**0.5))
        assert side * side == ranks, f"flat needs a square number of ranks, got {ranks}"
        return flat(ranks), flat(ranks, "S(0), S(1)", (side, side))
    assert ranks % 128 == 0, f"realistic needs a multiple of 128 ranks, got {ranks}"
    return realistic(16, ranks // 128, 8), realistic(8, ranks // 64, 8)


def _sample(ranks: int, n: int) -> list[int]:
    return sorted({round(i * (ranks - 1) / max(n - 1, 1)) for i in range(n)})


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def _watch(cap_gb: float) -> None:
    """Stop this worker when its RSS passes ``cap_gb`` (the machine is shared)."""

    def run():
        while True:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            if rss > cap_gb * 1e9:
                print(json.dumps({"capped": rss / 1e9}), flush=True)
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=run, daemon=True).start()


def _digest(items) -> str:
    """A digest of read items in order: (fqn, dest offset and index, storage offset and index,
    dest_offsets, storage_offsets, lengths) of each, from workbench or torch records alike."""
    h = hashlib.sha256()
    for it in items:
        d, s = it.dest_index, it.storage_index
        key = (
            d.fqn,
            tuple(d.offset),
            d.index,
            tuple(s.offset),
            s.index,
            tuple(map(int, it.dest_offsets)),
            tuple(map(int, it.storage_offsets)),
            tuple(map(int, it.lengths)),
        )
        h.update(repr(key).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- workers
def worker_ours(kind: str, ranks: int, sample: list[int]) -> dict:
    from workbench.planning import plan_load, plan_save

    out: dict = {}
    t = time.perf_counter()
    src, dst = _layouts(kind, ranks)
    out["layouts"] = time.perf_counter() - t
    t = time.perf_counter()
    save = plan_save(src)
    out["plan_save"] = time.perf_counter() - t
    t = time.perf_counter()
    res = plan_load(save.metadata, dst)
    out["plan_load"] = time.perf_counter() - t
    t = time.perf_counter()
    out["problems_found"] = len(res.problems)
    out["problems"] = time.perf_counter() - t
    t = time.perf_counter()
    _ = res.io
    out["io"] = time.perf_counter() - t
    t = time.perf_counter()
    first = res.plans[0]
    out["rank0_plan"] = time.perf_counter() - t
    out["rank0_items"] = len(first.items)
    out["items"] = sum(len(b) for b in res.blocks.values())
    out["chunks"] = sum(
        len(md.chunks) for md in save.metadata.state_dict_metadata.values() if hasattr(md, "chunks")
    )
    out["write_items"] = sum(len(w) for w in save.writers.values())
    out["errors"] = len(save.errors)
    out["digests"] = {str(r): _digest(res.plans[r].items) for r in sample}
    out["peak_gb"] = _peak_gb()
    return out


class _Value:
    """A load-side value as ``create_default_local_load_plan`` sees a DTensor on one rank: its
    ``size()`` and ``__create_chunk_list__`` (no process group needed)."""

    __slots__ = ("_size", "_chunks")

    def __init__(self, size, chunks):
        self._size, self._chunks = size, chunks

    def size(self):
        return self._size

    def __create_chunk_list__(self):
        return self._chunks


def worker_torch(kind: str, ranks: int, sample: list[int], save_items_cap: int) -> dict:
    import torch
    from torch.distributed.checkpoint.default_planner import (
        create_default_global_save_plan,
        create_default_local_load_plan,
        dedup_save_plans,
    )
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )
    from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem
    from torch.distributed.checkpoint.planner import WriteItemType as WIT

    from workbench.planning import plan_save

    out: dict = {}
    src, dst = _layouts(kind, ranks)
    save = plan_save(src)
    props = TensorProperties(dtype=torch.bfloat16)
    sdm = {}
    for fqn, md in save.metadata.state_dict_metadata.items():
        sdm[fqn] = TensorStorageMetadata(
            props,
            torch.Size(md.size),
            [ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)) for c in md.chunks],
        )
    metadata = Metadata(sdm)
    del save
    out["metadata_peak_gb"] = _peak_gb()
    times, digests = [], {}
    for r in sample:
        state = {
            fqn: _Value(
                torch.Size(lay.shape),
                [
                    ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes))
                    for c in lay.rank_chunks[r]
                ],
            )
            for fqn, lay in dst.items()
        }
        t = time.perf_counter()
        plan = create_default_local_load_plan(state, metadata, strict=True)
        times.append(time.perf_counter() - t)
        digests[str(r)] = _digest(plan.items)
    out["load_per_rank"] = sum(times) / len(times)
    out["digests"] = digests
    n_write = sum(len(lay.rank_chunks[r]) for lay in src.values() for r in range(ranks))
    out["write_items"] = n_write
    if n_write <= save_items_cap:
        plans = []
        for r in range(ranks):
            items = []
            for fqn, lay in src.items():
                size = torch.Size(lay.shape)
                for c in lay.rank_chunks[r]:
                    items.append(
                        WriteItem(
                            index=MetadataIndex(fqn, torch.Size(c.offsets)),
                            type=WIT.SHARD,
                            tensor_data=TensorWriteData(
                                chunk=ChunkStorageMetadata(
                                    torch.Size(c.offsets), torch.Size(c.sizes)
                                ),
                                properties=props,
                                size=size,
                            ),
                        )
                    )
            plans.append(SavePlan(items))
        t = time.perf_counter()
        plans = dedup_save_plans(plans, False)
        create_default_global_save_plan(plans)
        out["save_global"] = time.perf_counter() - t
    out["peak_gb"] = _peak_gb()
    return out


# ----------------------------------------------------------------------------- driver
def _run(which: str, kind: str, ranks: int, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        which,
        "--kinds",
        kind,
        "--ranks",
        str(ranks),
        "--sample",
        str(args.sample),
        "--cap-gb",
        str(args.cap_gb),
        "--torch-save-items",
        str(args.torch_save_items),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"failed": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1024,4096,16384")
    ap.add_argument("--kinds", default="flat,realistic")
    ap.add_argument("--sample", type=int, default=8, help="ranks planned by torch per case")
    ap.add_argument("--cap-gb", type=float, default=12.0, help="stop a worker past this RSS")
    ap.add_argument(
        "--torch-save-items",
        type=int,
        default=1_500_000,
        help="time torch's dedup + global save plan when the job has at most this many items",
    )
    ap.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    ranks_list = [int(x) for x in args.ranks.split(",")]
    kinds = args.kinds.split(",")

    if args.worker:
        _watch(args.cap_gb)
        kind, ranks = kinds[0], ranks_list[0]
        sample = _sample(ranks, args.sample)
        out = (
            worker_ours(kind, ranks, sample)
            if args.worker == "ours"
            else worker_torch(kind, ranks, sample, args.torch_save_items)
        )
        print(json.dumps(out), flush=True)
        return

    print(
        "whole-job plans, every case in fresh processes; torch 2.13's helpers on "
        f"{args.sample} sampled ranks in the same run"
    )
    for kind in kinds:
        for ranks in ranks_list:
            ours = _run("ours", kind, ranks, args)
            theirs = _run("torch", kind, ranks, args)
            print(f"{kind} {ranks} ranks")
            if "failed" in ours or "capped" in ours:
                print(f"  workbench: {ours}")
                continue
            plan = ours["plan_save"] + ours["plan_load"] + ours["problems"] + ours["io"]
            print(
                f"  workbench: layouts {ours['layouts']:.2f} s, plan_save {ours['plan_save']:.2f} s,"
                f" plan_load {ours['plan_load']:.2f} s, problems {ours['problems']:.2f} s, "
                f"io {ours['io']:.2f} s; all four {plan:.2f} s; peak RSS {ours['peak_gb']:.2f} GB"
            )
            print(
                f"             {ours['chunks']:,} saved chunks, {ours['items']:,} read items; "
                f"rank 0's LoadPlan ({ours['rank0_items']} items) {ours['rank0_plan'] * 1e3:.0f} ms"
                f" after planning; {ours['problems_found']} problems, {ours['errors']} errors"
            )
            if "failed" in theirs or "capped" in theirs:
                print(f"  torch:     {theirs}")
                continue
            per_rank = theirs["load_per_rank"]
            job = per_rank * ranks
            print(
                f"  torch:     create_default_local_load_plan {per_rank * 1e3:.1f} ms per rank "
                f"(x {ranks} ranks = {job:.1f} s), peak RSS {theirs['peak_gb']:.2f} GB per rank "
                f"process (metadata as torch records: {theirs['metadata_peak_gb']:.2f} GB)"
            )
            print(
                f"  ratio:     whole-job plan_load {ours['plan_load']:.2f} s = "
                f"{ours['plan_load'] / per_rank:.1f} torch ranks' load plans; torch's job / ours "
                f"{job / ours['plan_load']:.1f}x; peak memory ours / one torch rank "
                f"{ours['peak_gb'] / theirs['peak_gb']:.2f}x"
            )
            if "save_global" in theirs:
                print(
                    f"             save: torch dedup_save_plans + create_default_global_save_plan "
                    f"{theirs['save_global']:.2f} s, ours plan_save {ours['plan_save']:.2f} s: "
                    f"{theirs['save_global'] / ours['plan_save']:.1f}x"
                )
            else:
                print(
                    f"             save: torch's global step not timed ({theirs['write_items']:,} "
                    f"write items > --torch-save-items {args.torch_save_items:,})"
                )
            same = ours["digests"] == theirs["digests"]
            print(
                f"  read items of ranks {', '.join(theirs['digests'])}: "
                + ("identical to torch's, in order" if same else "DIFFER from torch's")
            )
            if not same:
                sys.exit(1)


if __name__ == "__main__":
    main()
