"""Which format a checkpoint path is, and its records read by that format's reader.

Formats: ``dcp`` (torch's FileSystemWriter: ``.metadata`` + ``__<rank>_<n>.distcp``, or a
per-rank ``__<rank>.metadata``), ``megatron`` (Megatron-Core torch_dist: the same plus
``metadata.json`` / ``common.pt``), ``hf`` (DCP's HuggingFace safetensors, distributed,
consolidated or a plain ``model-*.safetensors`` directory). Every reader returns the same
`Metadata` records; the format's own facts come beside them.

Must not import torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MetadataError
from ..records import Metadata
from . import dcp, hf_safetensors, megatron

__all__ = ["FORMATS", "FormatRead", "detect_format", "read_checkpoint", "load_metadata"]

FORMATS = ("dcp", "megatron", "hf")


@dataclass(frozen=True)
class FormatRead:
    """A checkpoint read by its format's reader: ``info`` is a `megatron.MegatronInfo`, an
    `hf_safetensors.HfInfo` or None (plain DCP)."""

    format: str
    directory: Path
    metadata: Metadata
    info: Any = None
    metadata_file: Path | None = None


def _distcp_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob("__*_*.distcp"))


def detect_format(path, rank: int | None = None) -> str:
    """``"dcp"``, ``"megatron"`` or ``"hf"`` for a checkpoint directory (a file path is a DCP
    metadata file); raises `MetadataError` when the directory holds none of them, naming an
    interrupted save (data files without ``.metadata``) as such."""
    dcp.metadata_path(path)  # a clear MetadataError when ``path`` is not a path at all
    p = Path(os.fspath(path))
    if not p.is_dir():
        return "dcp"  # a metadata file, or a missing path: dcp.load_metadata says which
    if rank is not None:
        return "dcp"
    has_md = (p / ".metadata").is_file()
    if megatron.is_megatron(p) and (has_md or not hf_safetensors.is_hf(p)):
        return "megatron"
    if has_md:
        return "dcp"
    if hf_safetensors.is_hf(p):
        return "hf"
    data = _distcp_files(p)
    if data:
        raise MetadataError(
            str(p),
            f"{len(data)} data files ({', '.join(data[:4])}{', ...' if len(data) > 4 else ''}) "
            "but no .metadata",
            "a .metadata written when the save finished",
            "The save was interrupted, or is an asynchronous save still running: torch writes "
            ".metadata last. Wait for it or re-save; the data files alone cannot be loaded.",
            path=str(p),
            reason="no_metadata",
        )
    return "dcp"  # dcp.load_metadata explains what is missing


def read_checkpoint(path, rank: int | None = None) -> FormatRead:
    """Read a checkpoint of any supported format (see `detect_format`)."""
    fmt = detect_format(path, rank)
    if fmt == "megatron":
        d = Path(path)
        md, info = megatron.read_megatron(d)
        return FormatRead(
            format=fmt, directory=d, metadata=md, info=info, metadata_file=d / ".metadata"
        )
    if fmt == "hf":
        d = Path(path)
        md, info = hf_safetensors.read_hf(d)
        return FormatRead(format=fmt, directory=d, metadata=md, info=info)
    mpath = dcp.metadata_path(path, rank)
    return FormatRead(
        format=fmt,
        directory=mpath.parent,
        metadata=dcp.load_metadata(mpath),
        metadata_file=mpath,
    )


def load_metadata(path, rank: int | None = None) -> Metadata:
    """The checkpoint's `Metadata` whatever its format (see `read_checkpoint`): for plain DCP
    what ``FileSystemReader(path).read_metadata(rank=rank)`` returns, for Megatron the same of
    its ``.metadata``, for HF what ``HuggingFaceStorageReader(path).read_metadata()`` returns;
    read without running anything from the files."""
    return read_checkpoint(path, rank).metadata
