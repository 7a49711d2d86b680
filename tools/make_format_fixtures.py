"""Write the small real checkpoints committed under tests/data/checkpoints/ (a few KB each).

Run from the repository root: ``.venv/bin/python tools/make_format_fixtures.py [NAME ...]``.
Every checkpoint is written by the real writer (2 processes over gloo on 127.0.0.1 through
`workbench.torch_bridge.runs`): Megatron-Core 0.16.1's ``dist_checkpointing.save`` (torch_dist
backend) and torch 2.13's ``HuggingFaceStorageWriter``. `FORMAT_CHECKPOINTS` says what each one is; the
tests read them and compare them with what the same writers do at test time.

``megatron_flat`` needs megatron-core 0.13.1 (releases before 0.16 save ``flattened_range``),
installed beside torch 2.13 without another torch::

    pip install --no-deps --target /tmp/mcore013 megatron-core==0.13.1
    PYTHONPATH=/tmp/mcore013:. .venv/bin/python tools/make_format_fixtures.py megatron_flat

and ``megatron_015`` megatron-core 0.15.3 (whose metadata is its ``MCoreMetadata`` subclass)
the same way, from ``--target /tmp/mcore015``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from workbench.torch_bridge.writers import FORMAT_CHECKPOINTS, make_format_checkpoint

ROOT = Path(__file__).resolve().parent.parent / "tests" / "data" / "checkpoints"


def main(names: list[str]) -> None:
    default = [n for n, c in FORMAT_CHECKPOINTS.items() if c.megatron_version == "0.16.1"]
    for name in names or default:
        out = ROOT / name
        if out.exists():
            shutil.rmtree(out)
        make_format_checkpoint(name, out)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"{name}: {size} bytes in {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
