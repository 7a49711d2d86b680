"""A DCP directory's data files: the name ``FileSystemWriter`` gives each rank's file, the writer
rank a name encodes, and the ``storage_data`` of a planned (not yet written) save.

Imports records and numpy; no torch.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping

import numpy as np

from ..records import BytesStorageMetadata, MetadataIndex, StorageInfo
from .hf_safetensors import hf_writer_of_file

__all__ = ["file_name", "writer_of_file", "PlannedStorage"]

_FILE_RE = re.compile(r"^__(\d+)_(\d+)\.distcp$")


def file_name(rank: int) -> str:
    """The data file ``FileSystemWriter`` (defaults: one thread, one file per rank) gives a rank:
    ``f"{prefix}{file_count}.distcp"`` with prefix ``__{rank}_`` and count 0."""
    return f"__{rank}_0.distcp"


def writer_of_file(relative_path: str) -> int | None:
    """The writer rank encoded in a ``__<rank>_<n>.distcp`` name, or in an HF
    ``shard-<rank+1>-model-...safetensors`` name (0 for the single writer of ``model-*``
    files); None for other names."""
    m = _FILE_RE.match(str(relative_path))
    if m:
        return int(m[1])
    return hf_writer_of_file(str(relative_path))


class PlannedStorage(Mapping):
    """``Metadata.storage_data`` of a planned save: ``MetadataIndex -> StorageInfo(file, None,
    None)`` for every metadata chunk, answered from the writer arrays instead of building hundreds
    of thousands of keys up front. Iterates in metadata order with index hints set, as torch's
    dict does; read-only. Like a real ``storage_data`` it describes what was written: it keeps
    its own copy of the chunk lists, so editing the metadata's chunks afterwards does not move it."""

    def __init__(self, sdm: dict, writers: dict[str, np.ndarray]):
        self._writers = writers
        self._chunks = {
            f: None if isinstance(md, BytesStorageMetadata) else tuple(md.chunks)
            for f, md in sdm.items()
        }
        self._pos: dict[str, dict] = {}

    def writer_array(self, fqn: str, chunks) -> np.ndarray | None:
        """The writer rank of each of ``chunks`` (a tensor's metadata chunk list), or None when
        the list is no longer the one planned."""
        planned = self._chunks.get(fqn)
        if (
            planned is None
            or len(planned) != len(chunks)
            or not all(map(operator.is_, planned, chunks))  # C speed: 16k-rank plans
        ):
            return None
        return self._writers[fqn]

    def _positions(self, fqn: str) -> dict:
        pos = self._pos.get(fqn)
        if pos is None:
            chunks = self._chunks[fqn]
            pos = {None: 0} if chunks is None else {}
            for i, c in enumerate(chunks or ()):
                pos.setdefault(c.offsets, i)
            self._pos[fqn] = pos
        return pos

    def __getitem__(self, index: MetadataIndex) -> StorageInfo:
        if not isinstance(index, MetadataIndex) or index.fqn not in self._writers:
            raise KeyError(index)
        i = self._positions(index.fqn).get(index.offset)
        if i is None:
            raise KeyError(index)
        return StorageInfo(file_name(int(self._writers[index.fqn][i])), None, None)

    def __iter__(self):
        for fqn in self._writers:
            for off, i in self._positions(fqn).items():
                yield MetadataIndex(fqn, off, None if off is None else i)

    def __len__(self) -> int:
        return sum(len(self._positions(f)) for f in self._writers)

    def __repr__(self) -> str:
        return f"<planned storage_data: {len(self._writers)} entries' chunks -> __<rank>_0.distcp>"
