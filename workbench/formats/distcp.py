"""The framing of DCP data files (``__<rank>_<n>.distcp``, torch 2.13's FileSystemWriter and
Megatron-Core's writer): each saved item is a complete ``torch.save`` archive (a zip) at its
``_StorageInfo`` byte range. A tensor's archive holds ``data.pkl`` (a ``_rebuild_tensor_v2``
call on a persistent storage id) and ``data/<key>`` (the raw elements); a bytes item's archive
holds an arbitrary pickle.

`describe_item` reads one item's archive for the deep check: the zip's CRCs, and for tensors the
dtype, shape and storage size from ``data.pkl`` read with an allow-list (``_rebuild_tensor_v2``,
typed storage classes, ``OrderedDict``) into plain data; nothing in it is called. A bytes item's
pickle is never unpickled.

Must not import torch.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass

from ..errors import UnsafeCheckpointError
from ..records import DTYPE_SIZES
from .unpickler import BoundedUnpickler, UnpicklingError

__all__ = ["STORAGE_DTYPES", "ItemArchive", "describe_item", "expected_storage_bytes"]

# torch.storage._dtype_to_storage_type_map(), inverted (torch 2.13)
STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "QInt8Storage": "qint8",
    "QInt32Storage": "qint32",
    "QUInt8Storage": "quint8",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
}


@dataclass(frozen=True, slots=True)
class ItemArchive:
    """What one item's archive holds: for a tensor ``dtype`` / ``shape`` / ``storage_bytes``
    (bytes of its ``data/<key>`` entry) / ``storage_numel`` (elements the pickle declares);
    ``error`` when the archive is not readable (bad zip, CRC, refused global)."""

    is_tensor: bool
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    storage_numel: int | None = None
    storage_bytes: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _StorageRef:
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple
    stride: tuple


class _StorageType:
    def __init__(self, name):
        self.name = name

    def __call__(self, *a):
        raise UnsafeCheckpointError(None, f"the pickle calls torch.{self.name}", "never called")


def _rebuild_tensor_v2(storage, offset, shape, stride, *rest):
    if not (
        isinstance(storage, _StorageRef)
        and type(offset) is int
        and isinstance(shape, tuple)
        and all(type(v) is int and v >= 0 for v in shape)
        and isinstance(stride, tuple)
    ):
        raise ValueError("_rebuild_tensor_v2 arguments are not a tensor's")
    return _TensorRef(storage, offset, shape, stride)


def _empty_hooks(*a):
    return {}  # backward hooks: always empty in a saved chunk


class _TensorUnpickler(BoundedUnpickler):
    """torch.save's data.pkl of one tensor, decoded within bounds (`formats.unpickler`): only
    `_rebuild_tensor_v2`, typed storages and an empty OrderedDict are called."""

    def call(self, func, args):
        if func is _rebuild_tensor_v2 or func is _empty_hooks or isinstance(func, _StorageType):
            return func(*args)
        raise UnpicklingError(f"the tensor archive calls {func!r:.40}")

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return _empty_hooks
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            None,
            f"the tensor archive asks for the global {module}.{name}",
            "torch._utils._rebuild_tensor_v2, typed storages and OrderedDict",
            "Nothing was executed.",
            global_name=f"{module}.{name}",
        )

    def persistent_load(self, pid):
        ok = (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and type(pid[4]) is int
        )
        if not ok:
            raise ValueError(f"persistent id {pid!r:.80} is not a storage")
        return _StorageRef(STORAGE_DTYPES[pid[1].name], pid[2], pid[4])


def describe_item(blob: bytes, is_tensor: bool) -> ItemArchive:
    """Check one saved item's bytes: a readable zip with good CRCs; for a tensor, its dtype and
    shape from ``data.pkl`` and the size of its storage entry."""
    try:
        z = zipfile.ZipFile(io.BytesIO(blob))
        # torch.save stores entries uncompressed: an entry declaring more bytes than the whole
        # item is a zip bomb (testzip would inflate it), refused before anything is read
        big = [i.filename for i in z.infolist() if i.file_size > len(blob)]
        if big:
            return ItemArchive(
                is_tensor, error=f"entry {big[0]} declares more bytes than the item holds"
            )
        bad = z.testzip()  # reads every entry and checks its CRC
        if bad is not None:
            return ItemArchive(is_tensor, error=f"entry {bad} fails its CRC check")
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            return ItemArchive(is_tensor, error=f"{len(pkl)} data.pkl entries in the archive")
        if not is_tensor:
            return ItemArchive(False)
        ref = _TensorUnpickler(z.read(pkl[0]), source="data.pkl").load()
        if not isinstance(ref, _TensorRef):
            return ItemArchive(True, error="data.pkl does not hold one tensor")
        prefix = pkl[0][: -len("data.pkl")]
        key = f"{prefix}data/{ref.storage.key}"
        size = z.getinfo(key).file_size if key in names else None
        return ItemArchive(
            is_tensor=True,
            dtype=ref.storage.dtype,
            shape=ref.shape,
            storage_numel=ref.storage.numel,
            storage_bytes=size,
        )
    except UnsafeCheckpointError as e:
        return ItemArchive(is_tensor, error=e.what)
    except (zipfile.BadZipFile, ValueError, EOFError, UnpicklingError, KeyError) as e:
        return ItemArchive(is_tensor, error=f"not a torch.save archive: {type(e).__name__}: {e}")


def expected_storage_bytes(dtype: str, shape) -> int:
    """Bytes a contiguous chunk of ``shape`` and ``dtype`` needs."""
    return math.prod(shape) * DTYPE_SIZES[dtype]
