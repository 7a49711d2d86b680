"""DCP-shaped records with torch's field names and equality rules, without torch.

Mirrors ``torch.distributed.checkpoint.metadata`` and ``.planner`` (2.13): ``MetadataIndex``
(``index`` excluded from equality and hash), ``TensorProperties`` (dtype by name),
``TensorStorageMetadata``, ``BytesStorageMetadata``, ``Metadata``, ``StorageInfo``,
``TensorWriteData``, ``WriteItem``, ``ReadItem``, ``SavePlan``, ``LoadPlan`` and the item-type
enums (same ``auto()`` values as torch). Offsets are tuples instead of ``torch.Size``; a chunk is
a `Chunk`. Must not import torch.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ChunkError, DtypeError, MetadataError
from .geometry import Chunk, as_chunk, as_ints

__all__ = [
    "DTYPE_SIZES",
    "metadata_of",
    "tensor_entries",
    "storage_data_of",
    "chunk_storage",
    "canonical_dtype",
    "contiguous_strides",
    "element_size",
    "MetadataIndex",
    "TensorProperties",
    "ChunkStorageMetadata",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "StorageMeta",
    "StorageInfo",
    "Metadata",
    "WriteItemType",
    "LoadItemType",
    "BytesIOWriteData",
    "TensorWriteData",
    "WriteItem",
    "ReadItem",
    "SavePlan",
    "LoadPlan",
]

# Element sizes of torch's dtypes by canonical name (torch._utils._element_size).
DTYPE_SIZES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "complex128": 16,
    "complex64": 8,
    "complex32": 4,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1,
    "qint8": 1,
    "quint8": 1,
    "qint32": 4,
    "quint4x2": 1,
    "quint2x4": 1,
}
_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "chalf": "complex32",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "fp64": "float64",
}


def canonical_dtype(dtype, fqn: str | None = None) -> str:
    """``"float32"`` from ``"float32"``, ``"torch.float32"``, ``"float"`` or ``torch.float32``."""
    name = dtype if isinstance(dtype, str) else str(dtype)
    if name.startswith("torch."):
        name = name[6:]
    name = _ALIASES.get(name, name)
    if name not in DTYPE_SIZES:
        raise DtypeError(
            fqn,
            f"unknown dtype {dtype!r}",
            "one of " + ", ".join(sorted(DTYPE_SIZES)),
            "Name the dtype as torch prints it without 'torch.', e.g. 'bfloat16'.",
            dtype=dtype,
        )
    return name


def element_size(dtype) -> int:
    return DTYPE_SIZES[canonical_dtype(dtype)]


def _size(v, what: str = "size", fqn: str | None = None) -> tuple[int, ...]:
    return as_ints(v, what, fqn)


def contiguous_strides(sizes: Sequence[int]) -> tuple[int, ...]:
    """The strides torch gives a contiguous tensor of ``sizes``: row-major, a dim of size 0
    counted as 1 (``(3, 0, 2)`` -> ``(2, 2, 1)``), what 2.15's ``TensorProperties`` records for
    a local tensor."""
    out, step = [], 1
    for n in reversed(tuple(sizes)):
        out.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(out))


def _as_properties(p) -> TensorProperties:
    """A workbench TensorProperties from ours, a dtype name, or torch's TensorProperties."""
    if isinstance(p, TensorProperties):
        return p
    if isinstance(p, str) or not hasattr(p, "dtype"):
        return TensorProperties(p)
    return TensorProperties(
        p.dtype,
        str(getattr(p, "layout", "strided")),
        bool(getattr(p, "requires_grad", False)),
        str(getattr(p, "memory_format", "contiguous_format")),
        bool(getattr(p, "pin_memory", False)),
        getattr(p, "strides", None),
    )


@dataclass(frozen=True, slots=True, init=False)
class MetadataIndex:
    """torch's ``MetadataIndex(fqn, offset=None, index=None)``; ``index`` is a hint excluded from
    ``==`` and ``hash``. ``MetadataIndex(f)`` (bytes) differs from ``MetadataIndex(f, [])`` (0-d)."""

    fqn: str
    offset: tuple[int, ...] | None = None
    index: int | None = field(default=None, compare=False, hash=False)

    def __init__(self, fqn: str, offset: Sequence[int] | None = None, index: int | None = None):
        object.__setattr__(self, "fqn", fqn)
        object.__setattr__(self, "offset", None if offset is None else _size(offset, "offset", fqn))
        object.__setattr__(self, "index", index)

    def __repr__(self) -> str:
        off = "None" if self.offset is None else f"torch.Size({list(self.offset)})"
        return f"MetadataIndex(fqn='{self.fqn}', offset={off}, index={self.index})"


@dataclass(frozen=True, slots=True)
class TensorProperties:
    """torch's ``TensorProperties``; ``dtype`` is a canonical name such as ``"bfloat16"``.

    ``strides`` (torch 2.15+): the stride of the tensor each write item was made from (a
    DTensor's local tensor), pickled as the sixth element of the state; None for what torch
    2.14 and older write (5-tuples, which 2.15 still reads as ``strides=None``)."""

    dtype: str = "float32"
    layout: str = "strided"
    requires_grad: bool = False
    memory_format: str = "contiguous_format"
    pin_memory: bool = False
    strides: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.dtype not in DTYPE_SIZES:
            object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.strides is not None:
            object.__setattr__(self, "strides", as_ints(self.strides, "strides"))
        for name in ("layout", "memory_format"):
            v = getattr(self, name)
            if not isinstance(v, str):
                v = str(v)
            if v.startswith("torch."):
                object.__setattr__(self, name, v[6:])

    @property
    def element_size(self) -> int:
        return DTYPE_SIZES[self.dtype]


ChunkStorageMetadata = Chunk


@dataclass
class TensorStorageMetadata:
    """torch's ``TensorStorageMetadata(properties, size, chunks)``; ``size`` is the global shape."""

    properties: TensorProperties
    size: tuple[int, ...]
    chunks: list[Chunk] = field(default_factory=list)

    def __post_init__(self):
        self.size = _size(self.size)
        if any(d < 0 for d in self.size):
            raise ChunkError(
                None,
                f"tensor size {list(self.size)} has a negative dim",
                "sizes >= 0",
                size=self.size,
            )
        self.properties = _as_properties(self.properties)
        self.chunks = [as_chunk(c) for c in self.chunks]

    @property
    def numel(self) -> int:
        return math.prod(self.size)

    @property
    def nbytes(self) -> int:
        return self.numel * self.properties.element_size


@dataclass
class BytesStorageMetadata:
    """torch's ``BytesStorageMetadata``: a non-tensor entry, pickled whole."""


@dataclass
class StorageMeta:
    checkpoint_id: Any = None
    save_id: str | None = None
    load_id: str | None = None
    modules: list = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StorageInfo:
    """torch's ``filesystem._StorageInfo``: where a saved item's bytes live."""

    relative_path: str
    offset: int
    length: int
    transform_descriptors: tuple | None = None


@dataclass
class Metadata:
    """torch's ``Metadata``: ``state_dict_metadata`` maps fqn -> storage metadata, chunk order as
    saved; ``storage_data`` maps `MetadataIndex` -> `StorageInfo` for real checkpoints."""

    state_dict_metadata: dict[str, TensorStorageMetadata | BytesStorageMetadata]
    planner_data: Any = None
    storage_data: Any = None
    storage_meta: StorageMeta | None = None
    version: str | None = None


class WriteItemType(enum.Enum):
    TENSOR = enum.auto()
    SHARD = enum.auto()
    BYTE_IO = enum.auto()


class LoadItemType(enum.Enum):
    TENSOR = enum.auto()
    BYTE_IO = enum.auto()


@dataclass(frozen=True, slots=True)
class BytesIOWriteData:
    nbytes: int


@dataclass(frozen=True, slots=True)
class TensorWriteData:
    """torch's ``TensorWriteData``: ``size`` is the GLOBAL tensor size, not the chunk's."""

    chunk: Chunk
    properties: TensorProperties
    size: tuple[int, ...]

    def __post_init__(self):
        if type(self.chunk) is not Chunk:
            object.__setattr__(self, "chunk", as_chunk(self.chunk))
        if type(self.properties) is not TensorProperties:
            object.__setattr__(self, "properties", _as_properties(self.properties))
        if type(self.size) is not tuple:
            object.__setattr__(self, "size", _size(self.size))


@dataclass(frozen=True, slots=True)
class WriteItem:
    """torch's ``WriteItem``."""

    index: MetadataIndex
    type: WriteItemType
    bytes_io_data: BytesIOWriteData | None = None
    tensor_data: TensorWriteData | None = None

    def tensor_storage_size(self) -> int | None:
        """Bytes of the GLOBAL tensor (``prod(tensor_data.size) * element size``), as torch
        computes it; None for BYTE_IO."""
        if self.tensor_data is None:
            return None
        return math.prod(self.tensor_data.size) * DTYPE_SIZES[self.tensor_data.properties.dtype]


@dataclass(frozen=True, slots=True)
class ReadItem:
    """torch's ``ReadItem``: ``dest_offsets`` are relative to the local chunk, ``storage_offsets``
    to the saved chunk."""

    type: LoadItemType
    dest_index: MetadataIndex
    dest_offsets: tuple[int, ...]
    storage_index: MetadataIndex
    storage_offsets: tuple[int, ...]
    lengths: tuple[int, ...]

    def __post_init__(self):
        for name in ("dest_offsets", "storage_offsets", "lengths"):
            v = getattr(self, name)
            if type(v) is not tuple:
                object.__setattr__(self, name, _size(v))

    @property
    def dest_chunk(self) -> Chunk:
        """The box written, in global coordinates (needs the destination's offsets)."""
        base = self.dest_index.offset or ()
        return Chunk(tuple(b + o for b, o in zip(base, self.dest_offsets)), self.lengths)

    @property
    def storage_chunk(self) -> Chunk:
        """The box read, in global coordinates."""
        base = self.storage_index.offset or ()
        return Chunk(tuple(b + o for b, o in zip(base, self.storage_offsets)), self.lengths)


@dataclass(frozen=True, slots=True)
class SavePlan:
    """torch's ``SavePlan`` (frozen)."""

    items: list[WriteItem]
    storage_data: Any = None
    planner_data: Any = None
    usable: bool = True


@dataclass
class LoadPlan:
    """torch's ``LoadPlan``."""

    items: list[ReadItem]
    storage_data: Any = None
    planner_data: Any = None


# ----------------------------------------------------------------------------- metadata access
def metadata_of(source):
    """The `Metadata` a save result or a `Checkpoint` carries (their ``.metadata``), else
    ``source`` itself."""
    return getattr(source, "metadata", source)


def tensor_entries(source, fqn: str | None = None) -> Mapping:
    """``{fqn: storage metadata}`` of a `Metadata` (or of what carries one, see `metadata_of`) (all entries, or the one named
    ``fqn``), or of one `TensorStorageMetadata` (labelled ``fqn`` or ``"<tensor>"``)."""
    record = metadata_of(source)
    if isinstance(record, TensorStorageMetadata):
        return {fqn or "<tensor>": record}
    sdm = getattr(record, "state_dict_metadata", None)
    if not isinstance(sdm, Mapping):
        raise MetadataError(
            fqn,
            f"{type(record).__name__} is not checkpoint metadata: it has no state_dict_metadata",
            "a Metadata, a save result, a Checkpoint or a TensorStorageMetadata",
            "Read the checkpoint with workbench.load_metadata(path) or plan it with plan_save(...).",
        )
    if fqn is None:
        return sdm
    if fqn not in sdm:
        keys = ", ".join(list(sdm)[:8]) + (", ..." if len(sdm) > 8 else "")
        raise MetadataError(
            fqn,
            f"key {fqn!r} is not in the checkpoint (keys: {keys})",
            "a key of metadata.state_dict_metadata",
            "Pick one of the saved keys.",
            keys=tuple(sdm),
        )
    return {fqn: sdm[fqn]}


def storage_data_of(metadata) -> Mapping:
    """``storage_data`` of a Metadata (a dict, or plan_save's lazy mapping), {} when absent."""
    sd = getattr(metadata, "storage_data", None)
    return sd if isinstance(sd, Mapping) else {}


def chunk_storage(storage_data: Mapping, fqn: str, entry) -> list:
    """Each saved item's ``StorageInfo`` (None where ``storage_data`` has none) for one entry, in
    chunk order (one item for a bytes entry), looked up as ``FileSystemReader`` does: by
    ``MetadataIndex(fqn, offsets)`` (``MetadataIndex(fqn)`` for bytes)."""
    if isinstance(entry, BytesStorageMetadata):
        return [storage_data.get(MetadataIndex(fqn))]
    # a reader's columns (formats.columns.StorageColumns) answer a tensor's chunks at once,
    # without a Chunk and a MetadataIndex per chunk (a million at 16,384 ranks)
    arrays = getattr(entry.chunks, "box_arrays", None)
    if arrays is not None and getattr(storage_data, "box_rows", None) is not None:
        return storage_data.values_at(storage_data.rows_of(fqn, arrays[0]))
    return [storage_data.get(MetadataIndex(fqn, c.offsets)) for c in entry.chunks]
