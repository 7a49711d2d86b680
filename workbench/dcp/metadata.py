"""``torch.distributed.checkpoint.metadata``'s records (and ``filesystem._StorageInfo``), with
torch's field names; tuples where torch has ``torch.Size``, dtype names where it has dtypes.
The code is in ``workbench.records``."""

from __future__ import annotations

from ..records import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageInfo,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

__all__ = [
    "ChunkStorageMetadata",
    "TensorProperties",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "MetadataIndex",
    "StorageMeta",
    "Metadata",
    # torch.distributed.checkpoint.filesystem._StorageInfo: where an item's bytes lie
    "StorageInfo",
]
