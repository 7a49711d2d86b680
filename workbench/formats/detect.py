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
from .location import Location, is_url, open_location

__all__ = ["FORMATS", "FormatRead", "detect_format", "read_checkpoint", "load_metadata"]

FORMATS = ("dcp", "megatron", "hf")


@dataclass(frozen=True)
class FormatRead:
    """A checkpoint read by its format's reader: ``info`` is a `megatron.MegatronInfo`, an
    `hf_safetensors.HfInfo` or None (plain DCP)."""

    format: str
    directory: Path | str  # the URL for a checkpoint in object storage
    metadata: Metadata
    info: Any = None
    metadata_file: Path | None = None
    # in object storage: where it is, and its files -> sizes from the listing
    location: Location | None = None
    files: dict[str, int] | None = None


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
        raise _no_metadata(str(p), data)
    return "dcp"  # dcp.load_metadata explains what is missing


def _no_metadata(where: str, data: list[str]) -> MetadataError:
    return MetadataError(
        where,
        f"{len(data)} data files ({', '.join(data[:4])}{', ...' if len(data) > 4 else ''}) "
        "but no .metadata",
        "a .metadata written when the save finished",
        "The save was interrupted, or is an asynchronous save still running: torch writes "
        ".metadata last. Wait for it or re-save; the data files alone cannot be loaded.",
        path=where,
        reason="no_metadata",
    )


def _read_remote(url: str, rank: int | None, storage_options: dict | None) -> FormatRead:
    """A checkpoint in object storage: one listing (the files and their sizes), then the
    ``.metadata`` (and Megatron's ``metadata.json``, ``common.pt`` by ranged reads) fetched, or
    each safetensors header by two ranged reads; no tensor data is read."""
    loc = open_location(url, storage_options)
    files = loc.list()
    name = ".metadata" if rank is None else f"__{rank}.metadata"
    if rank is None and ("metadata.json" in files or "common.pt" in files):
        fmt = "megatron"
    elif name not in files and any(f.endswith(hf_safetensors.SUFFIX) for f in files):
        fmt = "hf"
    else:
        fmt = "dcp"
    if fmt == "hf":
        md, info = hf_safetensors.read_hf(url, location=loc)
        return FormatRead(
            format=fmt, directory=url, metadata=md, info=info, location=loc, files=files
        )
    if fmt == "megatron":
        md, info = megatron.read_megatron(url, location=loc, files=files)
        return FormatRead(
            format=fmt, directory=url, metadata=md, info=info, location=loc, files=files
        )
    if name not in files:
        data = sorted(f for f in files if f.startswith("__") and f.endswith(".distcp"))
        if data and rank is None:
            raise _no_metadata(url, data)
        raise MetadataError(
            loc.url_of(name),
            "no such metadata file",
            "a DCP checkpoint directory holding .metadata (or __<rank>.metadata)",
            "Point at the directory dcp.save wrote.",
            path=loc.url_of(name),
            reason="not_found",
        )
    return FormatRead(
        format="dcp",
        directory=url,
        metadata=dcp.read_remote_metadata(loc, rank),
        location=loc,
        files=files,
    )


def read_checkpoint(
    path, rank: int | None = None, *, storage_options: dict | None = None
) -> FormatRead:
    """Read a checkpoint of any supported format (see `detect_format`). ``path`` may be an
    fsspec URL (``s3://``, ``gs://``, ``az://``, ``hf://``, ``file://``) of a checkpoint of
    any of them, opened with ``storage_options`` (credentials, endpoint...) as fsspec takes
    them: only the listing and the metadata files (safetensors headers) are fetched."""
    if is_url(path):
        return _read_remote(path, rank, storage_options)
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


def load_metadata(
    path, rank: int | None = None, *, storage_options: dict | None = None
) -> Metadata:
    """The checkpoint's `Metadata` whatever its format (see `read_checkpoint`): for plain DCP
    what ``FileSystemReader(path).read_metadata(rank=rank)`` returns, for Megatron the same of
    its ``.metadata``, for HF what ``HuggingFaceStorageReader(path).read_metadata()`` returns;
    read without running anything from the files. ``path`` may be an fsspec URL, opened with
    ``storage_options`` (see `read_checkpoint`)."""
    return read_checkpoint(path, rank, storage_options=storage_options).metadata
