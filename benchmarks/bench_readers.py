"""Benchmark: opening a big checkpoint's ``.metadata``, the workbench's reader against torch's.

References (benchmarks/references.py), each a ``.metadata`` built from torch 2.13's own records
the way a real multi-process ``FileSystemWriter`` save assembles it:

- 1024 ranks: the Llama-70B-like state dict saved ``Shard(0)`` (740,340 chunks, ~100 MB);
- 16,384 ranks: a Llama-405B-like job, PP16 x DP128 x TP8 (937,600 chunks).

Each variant runs in its own process, so its peak RSS (the whole process, interpreter included)
is its own; CPU seconds are those of the read alone:

- torch: ``FileSystemReader(dir).read_metadata()`` (a bare ``pickle.load``; runs any code);
- ours, cold: ``workbench.formats.dcp.load_metadata(dir, cache=False)`` (bounded, allow-list);
- ours, first open: ``load_metadata(dir)`` with an empty cache (read, then the entry is saved);
- ours, from the cache: ``load_metadata(dir)`` again, in a new process.

Run: ``.venv/bin/python benchmarks/bench_readers.py [--only 1024] [--keep DIR]``; prints one
table per reference with the ratios to torch measured in the same run.
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

REFERENCES = {
    "1024": ("Llama-70B-like, Shard(0) on 1024 ranks", lambda R: R.flat(1024)),
    "16384": (
        "Llama-405B-like, PP16 x DP128 x TP8 = 16,384 ranks",
        lambda R: R.realistic(16, 128, 8),
    ),
}


def _child(variant: str, directory: str) -> None:
    """One measurement, printed as JSON: CPU seconds of the read, peak RSS of the process."""
    if variant == "torch":
        from torch.distributed.checkpoint import FileSystemReader

        def read():
            return FileSystemReader(directory).read_metadata()

    else:
        from workbench.formats.dcp import load_metadata

        def read():
            return load_metadata(directory, cache=variant != "cold")

    t = time.process_time()
    md = read()
    cpu = time.process_time() - t
    n = sum(len(getattr(e, "chunks", ())) for e in md.state_dict_metadata.values())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"cpu": cpu, "rss": rss, "chunks": n}))


def _measure(variant: str, directory: Path, cache_home: Path) -> dict:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home), PYTHONPATH=str(ROOT))
    env.pop("WORKBENCH_NO_CACHE", None)
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, str(directory)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _reference(name: str, keep: Path | None) -> Path:
    base = keep or Path(tempfile.mkdtemp(prefix="bench-readers-"))
    directory = base / f"ref-{name}"
    path = directory / ".metadata"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        # in a child: Linux children inherit the parent's peak RSS at fork, so building the
        # reference here (GBs of torch records) would become every measured variant's peak
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, __file__, "--build", name, str(path)], env=env, check=True)
        size = path.stat().st_size
        print(f"  (built {size / 1e6:.0f} MB in {time.perf_counter() - t:.0f} s)")
    return directory


def _build(name: str, path: str) -> None:
    import references as R

    Path(path).write_bytes(R.torch_metadata_bytes(REFERENCES[name][1](R)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(REFERENCES), help="one reference only")
    ap.add_argument("--keep", type=Path, help="directory keeping the reference files")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    if args.build:
        _build(*args.build)
        return
    for name in [args.only] if args.only else list(REFERENCES):
        print(f"reference: {REFERENCES[name][0]}")
        directory = _reference(name, args.keep)
        size = (directory / ".metadata").stat().st_size
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache_home:
            rows = {
                "torch read_metadata (pickle.load)": _measure("torch", directory, cache_home),
                "ours, cold (cache=False)": _measure("cold", directory, cache_home),
                "ours, first open (+ cache entry)": _measure("cache", directory, cache_home),
                "ours, from the cache": _measure("cache", directory, cache_home),
            }
        base = rows["torch read_metadata (pickle.load)"]
        print(f"  .metadata: {size / 1e6:.1f} MB, {base['chunks']:,} chunks")
        print(f"  {'variant':36s} {'CPU s':>7s} {'x torch':>8s} {'peak RSS':>9s} {'x torch':>8s}")
        for label, r in rows.items():
            print(
                f"  {label:36s} {r['cpu']:7.2f} {r['cpu'] / base['cpu']:8.2f} "
                f"{r['rss'] / 1e9:7.2f} GB {r['rss'] / base['rss']:8.2f}"
            )
            assert r["chunks"] == base["chunks"], (label, r["chunks"], base["chunks"])


if __name__ == "__main__":
    main()
