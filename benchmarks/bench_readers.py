"""Benchmark: the bounded ``.metadata`` reader against torch's own reader on the reference metadata.

Reference (DESIGN.md): the Llama-70B-like state dict (723 tensors, bfloat16) saved ``Shard(0)`` on
``--ranks`` ranks (default 1024: 740k chunks); its ``Metadata`` comes from ``plan_save`` with byte
ranges filled in, converted to torch's records and pickled with ``pickle.dumps`` as
``FileSystemWriter`` does (about 104 MB at 1024 ranks). Timed in one run, CPU seconds:

- torch: ``pickle.loads`` (what ``FileSystemReader.read_metadata`` does; runs any code);
- C allow-list: CPython's C unpickler with our allow-list (the reader before it was bounded;
  unbounded memo, lengths and hashing);
- bounded: ``workbench.formats.dcp.read_metadata_bytes`` (decode + convert to records).

Run: ``.venv/bin/python benchmarks/bench_readers.py [--ranks 1024]``; prints ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_plans import llama70b_shapes  # noqa: E402

from workbench import dtensor_layout, plan_save  # noqa: E402
from workbench.formats import dcp  # noqa: E402
from workbench.records import StorageInfo  # noqa: E402


def reference_bytes(ranks: int) -> bytes:
    from workbench.torch_bridge.convert import to_torch

    lays = {
        k: dtensor_layout(s, (ranks,), "S(0)", "bfloat16") for k, s in llama70b_shapes().items()
    }
    md = plan_save(lays).metadata
    storage = {
        k: StorageInfo(v.relative_path, i * 4096, 4096)
        for i, (k, v) in enumerate(md.storage_data.items())
    }
    return pickle.dumps(to_torch(dataclasses.replace(md, storage_data=storage)))


class _CAllowList(pickle.Unpickler):
    def find_class(self, module, name):
        return dcp.ALLOWED_GLOBALS[(module, name)]


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=1024)
    args = ap.parse_args()
    import io

    data = reference_bytes(args.ranks)
    print(f"reference metadata: {args.ranks} ranks, {len(data) / 1e6:.1f} MB")
    t_torch = cpu(lambda: pickle.loads(data))
    t_c = cpu(lambda: _CAllowList(io.BytesIO(data)).load())
    t_all = cpu(lambda: dcp.read_metadata_bytes(data))
    print(f"torch pickle.loads           {t_torch:7.2f} s")
    print(f"C unpickler + allow-list     {t_c:7.2f} s  (decode only)")
    print(
        f"bounded decode + records     {t_all:7.2f} s  ({t_all / t_torch:.2f}x torch's reader, "
        f"{t_all / t_c:.2f}x the unbounded C decode alone)"
    )


if __name__ == "__main__":
    main()
