"""Write the small real checkpoints committed under tests/data/checkpoints/ (a few KB each).

Run from the repository root: ``.venv/bin/python tools/make_format_fixtures.py [NAME ...]``.
Every checkpoint is written by the real writer (2 processes over gloo on 127.0.0.1 through
`workbench.torch_bridge.runs`): Megatron-Core 0.16.1's ``dist_checkpointing.save`` (torch_dist
backend) and torch 2.13's ``HuggingFaceStorageWriter``. `FORMAT_CHECKPOINTS` says what each one is; the
tests read them and compare them with what the same writers do at test time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from workbench.torch_bridge.writers import FORMAT_CHECKPOINTS, make_format_checkpoint

ROOT = Path(__file__).resolve().parent.parent / "tests" / "data" / "checkpoints"


def main(names: list[str]) -> None:
    for name in names or list(FORMAT_CHECKPOINTS):
        out = ROOT / name
        if out.exists():
            shutil.rmtree(out)
        make_format_checkpoint(name, out)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"{name}: {size} bytes in {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
