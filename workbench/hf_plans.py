"""What DCP's HuggingFace safetensors storage does to a save plan (torch 2.13).

``HuggingFaceStorageWriter(save_distributed=True)`` receives the same deduplicated plans as
``FileSystemWriter`` but writes each rank's items into ONE safetensors file
(``shard-<rank+1:05>-model-00001-of-00001.safetensors``), a dict keyed by fqn: when a rank holds
several chunks of one fqn (a ShardedTensor with several local shards), only the LAST one in its
plan survives, and the file's ``DCP_SHARDING_INFO`` records that one's offsets. The others are
lost without an error. ``HuggingFaceStorageReader`` then builds the metadata from the files:
each tensor's size is the largest ``offset + shape`` over the surviving chunks, so a lost chunk
is a hole, or shrinks the tensor when it was the farthest one. This was observed on real saves
(tests/test_formats.py) and is mirrored here on a `planning.SavePlanResult`.

Must not import torch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .records import (
    DTYPE_SIZES,
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageInfo,
    TensorStorageMetadata,
)

__all__ = ["hf_file_name", "apply_hf_writer", "LostChunk"]


@dataclasses.dataclass(frozen=True, slots=True)
class LostChunk:
    """A chunk the HF writer drops: ``rank`` wrote ``kept`` of ``fqn`` over it."""

    fqn: str
    rank: int
    chunk: object
    kept: object


def hf_file_name(rank: int) -> str:
    """The file ``HuggingFaceStorageWriter(save_distributed=True)`` writes for ``rank`` (no
    ``fqn_to_index_mapping``: one file per rank)."""
    return f"shard-{rank + 1:05d}-model-00001-of-00001.safetensors"


def apply_hf_writer(result):
    """``result`` (a `planning.SavePlanResult` of the FileSystemWriter defaults) as the HF writer
    realises it: ``metadata`` = what ``HuggingFaceStorageReader`` will read back (files in rank
    order), ``writers`` in that chunk order, ``bytes_written`` without the lost chunks,
    ``storage="hf"`` and ``lost`` = the `LostChunk`s."""
    last: dict[tuple[str, int], object] = {}
    held: dict[tuple[str, int], list] = {}
    for r in range(result.world_size):
        for it in result.plans[r].items:
            if it.tensor_data is None:
                continue
            key = (it.index.fqn, r)
            held.setdefault(key, []).append(it.tensor_data.chunk)
            last[key] = it.tensor_data.chunk
    lost = [
        LostChunk(fqn=fqn, rank=r, chunk=c, kept=last[(fqn, r)])
        for (fqn, r), cs in held.items()
        for c in cs
        if c is not last[(fqn, r)]
    ]
    sdm: dict = {}
    storage: dict = {}
    writers: dict[str, list[int]] = {}
    bytes_written = np.zeros(result.world_size, dtype=np.int64)
    md = result.metadata
    for fqn, entry in md.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            sdm[fqn] = entry
            writers[fqn] = list(result.writers.get(fqn, []))
            continue
        kept = sorted((r, c) for (f, r), c in last.items() if f == fqn)
        if not kept:
            continue  # nothing written: the reader never hears of it
        size = tuple(
            max(c.offsets[d] + c.sizes[d] for _, c in kept) for d in range(len(entry.size))
        )
        sdm[fqn] = TensorStorageMetadata(entry.properties, size, [c for _, c in kept])
        writers[fqn] = [r for r, _ in kept]
        for i, (r, c) in enumerate(kept):
            storage[MetadataIndex(fqn, c.offsets, i)] = StorageInfo(hf_file_name(r), None, None)
            bytes_written[r] += c.volume * DTYPE_SIZES[entry.properties.dtype]
    metadata = Metadata(sdm, md.planner_data, storage, md.storage_meta, md.version)
    return dataclasses.replace(
        result,
        metadata=metadata,
        writers=writers,
        bytes_written=bytes_written,
        storage="hf",
        lost=tuple(lost),
    )
