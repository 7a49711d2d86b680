"""What a real DCP checkpoint directory holds: every key, its chunks, and for every saved chunk
the data file, byte range and writer rank, with the files' sizes on disk.

Reads ``.metadata`` only through the allow-list reader (`workbench.formats.dcp`), so a
checkpoint from a stranger is inspected without running anything and without torch. A data file
that is missing or shorter than a chunk's byte range is reported, never crashed on (torch's
reader fails on it mid-load).
"""

from __future__ import annotations

from dataclasses import dataclass

from .diagnosis import Problem
from .formats import load_metadata, metadata_path
from .formats.dcp_files import writer_of_file
from .geometry import Chunk
from .records import BytesStorageMetadata, Metadata, MetadataIndex, StorageInfo

__all__ = ["SavedChunk", "Checkpoint", "open_checkpoint"]


@dataclass(frozen=True, slots=True)
class SavedChunk:
    """One saved item: ``chunk`` is None for a bytes entry; ``storage`` is None when the metadata
    has no storage entry for it (torch's reader then raises ``KeyError(MetadataIndex(...))``)."""

    fqn: str
    position: int
    chunk: Chunk | None
    storage: StorageInfo | None
    writer_rank: int | None
    file_size: int | None  # bytes of the data file on disk; None when the file is missing

    @property
    def file(self) -> str | None:
        return None if self.storage is None else self.storage.relative_path

    @property
    def file_missing(self) -> bool:
        return self.storage is not None and self.file_size is None

    @property
    def truncated(self) -> bool:
        """The byte range runs past the end of the data file."""
        s = self.storage
        return s is not None and self.file_size is not None and s.offset + s.length > self.file_size


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory: its `Metadata` and every saved chunk in metadata order."""

    path: str
    metadata: Metadata
    chunks: tuple[SavedChunk, ...]
    file_sizes: dict[str, int | None]  # every data file the metadata names -> size or None

    @property
    def keys(self) -> list[str]:
        return list(self.metadata.state_dict_metadata)

    @property
    def missing_files(self) -> list[str]:
        return [f for f, s in self.file_sizes.items() if s is None]

    @property
    def unlisted_chunks(self) -> list[SavedChunk]:
        """Chunks of the metadata without a storage entry."""
        return [c for c in self.chunks if c.storage is None]

    @property
    def truncated_chunks(self) -> list[SavedChunk]:
        return [c for c in self.chunks if c.truncated]

    @property
    def damaged_chunks(self) -> list[SavedChunk]:
        """Chunks torch's reader fails on: data file missing, byte range past its end, or no
        storage entry."""
        return [c for c in self.chunks if c.file_missing or c.truncated or c.storage is None]

    def chunks_of(self, fqn: str) -> list[SavedChunk]:
        return [c for c in self.chunks if c.fqn == fqn]

    def writers(self, fqn: str) -> list[int | None]:
        """Writer rank of each of ``fqn``'s chunks, in chunk order."""
        return [c.writer_rank for c in self.chunks_of(fqn)]

    def problems(self) -> list[Problem]:
        """`Problem`s (severity ``error``: torch's reader raises mid-load) for missing data files
        (fqn: the file), chunks without a storage entry and byte ranges past their file's end."""
        out = [
            Problem(
                fqn=f,
                kind="missing_file",
                ranks=(),
                region=None,
                severity="error",
                message=f"{f}: data file is missing from {self.path} (an existing file named by "
                ".metadata). Copy every __<rank>_<n>.distcp of the checkpoint.",
                fix="Copy the file from where the checkpoint was written.",
            )
            for f in self.missing_files
        ]
        out += [
            Problem(
                fqn=c.fqn,
                kind="unlisted_chunk",
                ranks=(),
                region=c.chunk,
                severity="error",
                message=f"{c.fqn}: chunk #{c.position} {c.chunk} has no storage entry (every "
                "chunk listed in storage_data). torch's reader raises KeyError on it.",
                fix="Re-save the checkpoint; its .metadata is incomplete.",
            )
            for c in self.unlisted_chunks
        ]
        out += [
            Problem(
                fqn=c.fqn,
                kind="truncated_file",
                ranks=(),
                region=c.chunk,
                severity="error",
                message=f"{c.fqn}: chunk #{c.position} reads bytes {c.storage.offset}:"
                f"{c.storage.offset + c.storage.length} of {c.file} ({c.file_size} bytes on "
                "disk) (a range inside the file). Re-copy the file.",
                fix="Re-copy the file.",
            )
            for c in self.truncated_chunks
        ]
        return out


def open_checkpoint(path, rank: int | None = None) -> Checkpoint:
    """Open a DCP checkpoint directory (``.metadata`` + ``__<rank>_<n>.distcp``) safely: the
    metadata via the allow-list reader, each chunk's storage entry (``storage_data[MetadataIndex(
    fqn, chunk.offsets)]``, as ``FileSystemReader.read_data`` looks it up) and the data files'
    sizes on disk."""
    mpath = metadata_path(path, rank)
    directory = mpath.parent
    md = load_metadata(mpath)
    storage = md.storage_data or {}
    sizes = {}
    for info in storage.values():
        if info.relative_path not in sizes:
            f = directory / info.relative_path
            sizes[info.relative_path] = f.stat().st_size if f.is_file() else None
    chunks = []
    for fqn, entry in md.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            items = [(0, None, MetadataIndex(fqn))]
        else:
            items = [(i, c, MetadataIndex(fqn, c.offsets)) for i, c in enumerate(entry.chunks)]
        for pos, chunk, key in items:
            info = storage.get(key)
            chunks.append(
                SavedChunk(
                    fqn,
                    pos,
                    chunk,
                    info,
                    None if info is None else writer_of_file(info.relative_path),
                    None if info is None else sizes[info.relative_path],
                )
            )
    return Checkpoint(str(directory), md, tuple(chunks), sizes)
