"""Safe reader of a DCP checkpoint's ``.metadata``: an allow-list unpickler, no torch needed.

torch 2.13's ``FileSystemReader.read_metadata`` is a bare ``pickle.load``, so a ``.metadata``
from a stranger can run code on every rank that loads it. This module reads the same pickle with
``pickle.Unpickler.find_class`` restricted to the globals a real torch 2.13 ``.metadata`` uses
(learnt from the opcodes of real checkpoints, dcp-semantics sections 6 and 8), each mapped to a
harmless stand-in of our own, then converts the result to workbench records. Anything else
raises `UnsafeCheckpointError` naming the refused global before anything is called.

The opcodes are decoded by `formats.unpickler.BoundedUnpickler`, not CPython's C unpickler: a
1.4 KB real ``.metadata`` with one ``SETITEMS`` turned into ``LONG_BINPUT 0x30000000`` made the C
unpickler allocate gigabytes, and a million nested ``TUPLE1`` crashed it. Reading and converting
are charged to one `limits.Budget`, so memory and time stay linear in the file's size.

Must not import torch: reading works where torch is absent.
"""

from __future__ import annotations

import builtins
import math
import mmap
import os
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MetadataError, UnsafeCheckpointError, WorkbenchError
from ..records import (
    DTYPE_SIZES,
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageInfo,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from . import metadata_cache
from .columns import ChunkList, StorageColumns, check_chunk_hash_spread
from .dcp_fast import ChunkRun, FastRun, StorageRun, fast_paths
from .limits import MAX_INT64, Budget, brief, is_safe_key
from .location import Location, is_url, open_location
from .unpickler import BoundedUnpickler, UnpicklingError

__all__ = [
    "load_metadata",
    "load_writer_versions",
    "metadata_path",
    "read_metadata_bytes",
    "read_remote_metadata",
    "ALLOWED_GLOBALS",
    "AllowListUnpickler",
    "CorruptMetadata",
    "Named",
    "Reducer",
    "StandIn",
    "WriterVersions",
    "convert_index",
    "convert_ints",
    "convert_properties",
    "dcp_class",
    "infer_writer_versions",
    "plain_data",
    "stand_in",
]

_DCP = "torch.distributed.checkpoint.metadata"
_FS = "torch.distributed.checkpoint.filesystem"


# ----------------------------------------------------------------------------- stand-ins
def _refuse_setattr(owner, name):
    # BUILD with a slot state calls setattr on objects without __setstate__: the allow-listed
    # constants and callables are shared by every load, so a pickle must not change them.
    raise UnsafeCheckpointError(
        None,
        f"the pickle sets attribute {name!r} of {owner}",
        "torch never pickles that",
        "Nothing was executed. Do not load this checkpoint; it was not written by torch.",
        global_name=str(owner),
    )


class _StandInMeta(type):
    """Metaclass of the class stand-ins: pickle builds them with NEWOBJ (``cls.__new__``) and
    BUILD only. Calling one (a REDUCE or INST on the class) is not something torch pickles, so it
    is refused rather than executed. (A BUILD on the class itself calls the unbound
    ``__setstate__`` and fails, so the pickle cannot alter the class.)"""

    def __call__(cls, *args, **kwargs):
        raise UnsafeCheckpointError(
            None,
            f"the pickle calls {cls.torch_name} with arguments {brief(args)}",
            "torch pickles DCP records with NEWOBJ + BUILD",
            "Nothing was executed. Do not load this checkpoint; it was not "
            "written by torch's FileSystemWriter.",
            global_name=cls.torch_name,
        )


class _StandIn(metaclass=_StandInMeta):
    """A DCP record as pickled: only its state is kept (``BUILD`` goes through __setstate__, so
    the pickle cannot set arbitrary attributes)."""

    torch_name = ""

    def __new__(cls, *args):
        obj = object.__new__(cls)
        obj.state = None
        return obj

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.torch_name}>"

    def field(self, name, position=None, default=None):
        """A field from a dict state (dataclass BUILD) or from a tuple state (__getstate__)."""
        st = self.state
        if isinstance(st, dict):
            return st.get(name, default)
        if isinstance(st, tuple) and position is not None and position < len(st):
            return st[position]
        return default


def _stand_in(module: str, name: str) -> type:
    return _StandInMeta(name, (_StandIn,), {"torch_name": f"{module}.{name}"})


# One stand-in class per DCP record torch pickles.
_CLASSES = {
    (mod, n): _stand_in(mod, n)
    for mod, n in [
        (_DCP, "Metadata"),
        (_DCP, "TensorStorageMetadata"),
        (_DCP, "BytesStorageMetadata"),
        (_DCP, "ChunkStorageMetadata"),
        (_DCP, "TensorProperties"),
        (_DCP, "MetadataIndex"),
        (_DCP, "StorageMeta"),
        (_FS, "_StorageInfo"),
    ]
}


class _Frozen:
    __slots__ = ()

    def __setattr__(self, name, value):
        _refuse_setattr(repr(self), name)


class _Named(_Frozen):
    """A torch constant (dtype, layout, memory format) known by name only."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: str):
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "name", name)

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    def __call__(self, *args):
        raise UnsafeCheckpointError(
            None,
            f"the pickle calls {self!r} with {brief(args, 60)}",
            "torch never calls a dtype or layout in a .metadata",
            "Nothing was executed.",
            global_name=repr(self),
        )


class _Reducer(_Frozen):
    """An allow-listed callable of the pickle (a REDUCE target), rebuilt from plain data only."""

    __slots__ = ("torch_name", "fn")

    def __init__(self, torch_name: str, fn):
        object.__setattr__(self, "torch_name", torch_name)
        object.__setattr__(self, "fn", fn)

    def __repr__(self) -> str:
        return self.torch_name

    def __call__(self, *args):
        return self.fn(*args)


def _bad_call(name, args, expectation):
    return MetadataError(
        None, f"{name} is called with {brief(args)}", expectation, "The .metadata is corrupt."
    )


def _torch_size(*args):
    """``torch.Size(seq)`` -> a tuple (its values are checked as int64 by the conversion; the
    unpickler has charged the copy to its budget)."""
    if len(args) != 1 or type(args[0]) not in (tuple, list):
        raise _bad_call("torch.Size", args, "one tuple of ints")
    return tuple(args[0])


_LAYOUTS = {
    "torch.strided",
    "torch.sparse_coo",
    "torch.sparse_csr",
    "torch.sparse_csc",
    "torch.sparse_bsr",
    "torch.sparse_bsc",
    "torch._mkldnn",
    "torch.jagged",
}


def _get_layout(*args):
    """``torch.serialization._get_layout("torch.strided")``: how a torch.layout pickles."""
    if len(args) != 1 or args[0] not in _LAYOUTS:
        raise _bad_call("torch.serialization._get_layout", args, "a name such as 'torch.strided'")
    return _Named("layout", args[0][6:])


_MEM_FORMATS = {0: "contiguous_format", 1: "channels_last", 2: "preserve_format"}


def _mem_format_encoding(*args):
    """``_MEM_FORMAT_ENCODING(value)``: TensorProperties pickles its memory format as this enum."""
    if len(args) != 1 or args[0] not in _MEM_FORMATS:
        raise _bad_call("_MEM_FORMAT_ENCODING", args, "0, 1 or 2")
    return _Named("memory_format", _MEM_FORMATS[args[0]])


def _pure_path(cls):
    def make(*parts):
        if not all(isinstance(p, str) for p in parts):
            raise _bad_call(cls.__name__, parts, "strings")
        return cls(*parts)  # a pure path: no file-system access

    return make


def _safe_key(k) -> bool:
    """A dict key / set element a .metadata may hold: plain seeded-hash values or our own
    records and constants (hashed by identity)."""
    return is_safe_key(k) or isinstance(k, (_StandIn, _Named))


_CONTAINERS = (list, tuple, set, frozenset, dict)
_SCALARS = (str, bytes, int, float, bool, complex)
_ENCODINGS = {"utf-8", "utf8", "latin1", "latin-1", "ascii"}


def _builtin(name: str):
    """A plain builtin a protocol-2 pickle may REDUCE, with its arguments checked first: only
    plain data, no size to allocate (``bytes(2**40)``), only hashable keys that cannot be crafted
    to collide (the unpickler has already charged the arguments' sizes to its budget)."""
    fn = getattr(builtins, name)

    def make(*args):
        ok = len(args) <= (1 if name in ("list", "tuple", "set", "frozenset", "dict") else 3)
        if name in ("list", "tuple", "set", "frozenset", "dict"):
            ok = ok and all(type(a) in _CONTAINERS or type(a) is str for a in args)
            if ok and args and name in ("set", "frozenset"):
                ok = all(_safe_key(x) for x in args[0])
            if ok and args and name == "dict" and type(args[0]) is not dict:
                ok = all(
                    type(kv) in (tuple, list) and len(kv) == 2 and _safe_key(kv[0])
                    for kv in args[0]
                )
        elif name in ("bytes", "bytearray"):  # never an int: bytes(n) allocates n bytes
            ok = ok and (
                (len(args) == 1 and type(args[0]) in (bytes, bytearray))
                or (len(args) >= 2 and type(args[0]) is str and args[1] in _ENCODINGS)
            )
        elif name == "str":
            ok = ok and (
                (len(args) == 1 and type(args[0]) in _SCALARS)
                or (len(args) >= 2 and type(args[0]) is bytes and args[1] in _ENCODINGS)
            )
        else:  # int, float, bool, complex of scalars (int() of a long string is capped by Python)
            ok = ok and all(type(a) in _SCALARS for a in args)
        if not ok:
            raise _bad_call(f"builtins.{name}", args, "plain data as torch's pickles hold it")
        return fn(*args)

    return make


def _ordered_dict(*args):
    return _builtin("dict")(*args)


# Plain builtins a pickle may REDUCE to rebuild containers of plain data.
_BUILTINS = (
    "set",
    "frozenset",
    "list",
    "tuple",
    "dict",
    "int",
    "float",
    "str",
    "bytes",
    "bytearray",
    "bool",
    "complex",
)

# (module, name) -> what find_class returns: every global a torch 2.13 .metadata references.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **_CLASSES,
    **{("torch", d): _Named("dtype", d) for d in DTYPE_SIZES},
    **{
        ("torch", m): _Named("memory_format", m)
        for m in ("contiguous_format", "channels_last", "channels_last_3d", "preserve_format")
    },
    **{("torch", lay[6:]): _Named("layout", lay[6:]) for lay in _LAYOUTS},
    ("torch", "Size"): _Reducer("torch.Size", _torch_size),
    ("torch.serialization", "_get_layout"): _Reducer(
        "torch.serialization._get_layout", _get_layout
    ),
    (_DCP, "_MEM_FORMAT_ENCODING"): _Reducer(f"{_DCP}._MEM_FORMAT_ENCODING", _mem_format_encoding),
    **{
        ("pathlib", n): _Reducer(f"pathlib.{n}", _pure_path(cls))
        for n, cls in [
            ("PosixPath", pathlib.PurePosixPath),
            ("PurePosixPath", pathlib.PurePosixPath),
            ("WindowsPath", pathlib.PureWindowsPath),
            ("PureWindowsPath", pathlib.PureWindowsPath),
        ]
    },
    ("collections", "OrderedDict"): _Reducer("collections.OrderedDict", _ordered_dict),
    **{("builtins", n): _Reducer(f"builtins.{n}", _builtin(n)) for n in _BUILTINS},
}


class _AllowListUnpickler(BoundedUnpickler):
    """The bounded unpickler with the allow-list: globals from `ALLOWED_GLOBALS` only, records
    built as stand-ins (NEWOBJ + BUILD), calls only of the allow-listed reducers."""

    # globals a caller adds for its format (e.g. formats/megatron.py's MEGATRON_GLOBALS)
    extra_globals: dict = {}

    def find_class(self, module, name):
        try:
            return self.extra_globals.get((module, name)) or ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                None,
                f"the pickle asks for the global {str(module)[:60]}.{str(name)[:60]}",
                "only torch's DCP records, torch.Size, dtypes, layouts, memory formats, pathlib "
                "paths and plain builtins are allowed",
                "Nothing was executed. Do not load this checkpoint with torch (dcp.load runs "
                "pickle.load on it) unless you trust its author.",
                global_name=f"{module}.{name}",
            ) from None

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(
            None,
            f"the pickle asks for persistent id {brief(pid, 60)}",
            "a DCP .metadata has no persistent ids",
            "Nothing was executed.",
            global_name="persistent_load",
        )

    def call(self, func, args):
        # stand-in classes and torch constants refuse to be called; reducers check their args
        if type(func) is _Reducer:
            return func.fn(*args)
        if isinstance(func, (_Named, _StandInMeta)):
            return func(*args)
        raise UnpicklingError(f"the pickle calls {brief(func, 60)}, which is not callable")

    def new_object(self, cls, args, kwargs):
        if type(cls) is _StandInMeta and not kwargs:
            return cls.__new__(cls, *args)
        raise UnpicklingError(f"NEWOBJ of {brief(cls, 60)}: not a DCP record class")

    def build(self, obj, state):
        if isinstance(obj, _StandIn):
            obj.state = state
            return
        if isinstance(obj, _Frozen):  # a shared constant: the pickle may not change it
            slots = state[1] if type(state) is tuple and len(state) == 2 else state
            names = list(slots) if type(slots) is dict else ["__dict__"]
            _refuse_setattr(repr(obj), names[0] if names else "__dict__")
        raise UnpicklingError(f"BUILD of {brief(obj, 60)}: not a DCP record")

    def safe_key(self, obj):
        return isinstance(obj, (_StandIn, _Named, FastRun))

    def use_fast_paths(self) -> None:
        """Decode the runs of chunk records and storage entries at once (`formats.dcp_fast`)."""
        self.fast_type = _StandInMeta
        self.fast_paths = fast_paths(
            chunk_cls=_CLASSES[(_DCP, "ChunkStorageMetadata")],
            index_cls=_CLASSES[(_DCP, "MetadataIndex")],
            info_cls=_CLASSES[(_FS, "_StorageInfo")],
            size_fn=ALLOWED_GLOBALS[("torch", "Size")],
            budget=self.budget,
        )


# ----------------------------------------------------------------------------- conversion
class _Corrupt(Exception):
    """Raised while converting stand-ins; turned into a MetadataError naming the file."""


class _Converter:
    """Stand-ins -> workbench records, charged to the reading's budget (a record referenced many
    times is converted once and charged once per reference)."""

    def __init__(self, budget: Budget, source: str):
        self.budget = budget
        self.source = source
        self.sizes: dict[int, tuple] = {}  # id(tuple) -> checked tuple

    def ints(self, v, what):
        """A torch.Size as a tuple of int64 ints (checked once per distinct tuple object)."""
        got = self.sizes.get(id(v))
        if got is not None:
            self.budget.charge(1, "shared sizes")
            return got
        if type(v) is not tuple:
            raise _Corrupt(f"{what()} {brief(v)} is not a torch.Size")
        self.budget.charge(len(v) + 1, "sizes")
        for x in v:
            if type(x) is not int or not -MAX_INT64 - 1 <= x <= MAX_INT64:
                raise _Corrupt(f"{what()} {brief(v)} is not a torch.Size of int64 values")
        self.sizes[id(v)] = v  # v stays alive in the pickle's objects: ids are not reused
        return v

    def properties(self, p, fqn):
        if not _is(p, _DCP, "TensorProperties"):
            raise _Corrupt(f"{fqn}: properties {brief(p, 60)} are not TensorProperties")
        dtype = p.field("dtype", 0)
        if not (isinstance(dtype, _Named) and dtype.kind == "dtype"):
            raise _Corrupt(f"{fqn}: dtype {brief(dtype, 60)} is not a torch dtype")
        layout = p.field("layout", 1, _STRIDED)
        mem = p.field("memory_format", 3, _CONTIGUOUS)
        if not (isinstance(layout, _Named) and isinstance(mem, _Named)):
            raise _Corrupt(
                f"{fqn}: layout / memory format {brief(layout, 40)} {brief(mem, 40)} are not "
                "torch constants"
            )
        strides = p.field("strides", 5)  # torch 2.15+ pickles a 6-tuple; 5-tuples: None
        return TensorProperties(
            dtype.name,
            layout.name,
            bool(p.field("requires_grad", 2, False)),
            mem.name,
            bool(p.field("pin_memory", 4, False)),
            None if strides is None else self.ints(strides, lambda: f"{fqn}: strides"),
        )

    def storage_metadata(self, fqn, md):
        if _is(md, _DCP, "BytesStorageMetadata"):
            return BytesStorageMetadata()
        if not _is(md, _DCP, "TensorStorageMetadata"):
            raise _Corrupt(
                f"{fqn}: entry {brief(md, 60)} is neither TensorStorageMetadata nor "
                "BytesStorageMetadata"
            )
        size = self.ints(md.field("size"), lambda: f"{fqn}: size")
        chunks = md.field("chunks")
        if type(chunks) is not list:
            raise _Corrupt(f"{fqn}: chunks {brief(chunks, 60)} are not a list")
        self.budget.charge(len(chunks) + 1, "chunks")
        props = self.properties(md.field("properties"), fqn)
        # torch's tensors (and numpy's int64 counts downstream) end at 2**63 - 1 bytes; a size
        # beyond is data no torch wrote, refused here rather than overflowing a table later
        most = MAX_INT64 // DTYPE_SIZES[props.dtype]
        if math.prod(size) > most:
            raise _Corrupt(
                f"{fqn}: size {brief(list(size))} holds more elements than a torch tensor can "
                f"(at most 2**63 - 1 bytes of {props.dtype})"
            )
        offsets, sizes = self.chunk_columns(fqn, chunks, size, props, most)
        tsm = TensorStorageMetadata(props, size)
        # set after construction: __post_init__ would build a Chunk per row
        tsm.chunks = ChunkList(offsets, sizes)
        return tsm

    def chunk_columns(self, fqn, chunks, size, props, most):
        """A chunks list (stand-ins and `ChunkRun`s) as checked (n, ndim) offsets and sizes."""
        ndim = len(size)
        pieces: list[tuple[np.ndarray, np.ndarray]] = []
        offs: list = []
        sizs: list = []

        def flush():
            if offs:
                pieces.append(
                    (
                        np.array(offs, np.int64).reshape(len(offs), ndim),
                        np.array(sizs, np.int64).reshape(len(sizs), ndim),
                    )
                )
                offs.clear()
                sizs.clear()

        i = 0
        for c in chunks:
            if type(c) is ChunkRun:
                if c.ndim != ndim:
                    raise _Corrupt(
                        f"{fqn}: chunk #{i} offsets {brief(c.offsets[0].tolist())} sizes "
                        f"{brief(c.sizes[0].tolist())} do not fit a tensor of size "
                        f"{brief(list(size))}"
                    )
                flush()
                pieces.append((c.offsets, c.sizes))
                i += c.count
                continue
            if not _is(c, _DCP, "ChunkStorageMetadata"):
                raise _Corrupt(f"{fqn}: chunk #{i} is {brief(c, 60)}")
            off = self.ints(c.field("offsets"), lambda i=i: f"{fqn}: chunk #{i} offsets")
            siz = self.ints(c.field("sizes"), lambda i=i: f"{fqn}: chunk #{i} sizes")
            if not (len(off) == len(siz) == ndim):
                raise _Corrupt(
                    f"{fqn}: chunk #{i} offsets {brief(list(off))} sizes {brief(list(siz))} do "
                    f"not fit a tensor of size {brief(list(size))}"
                )
            offs.append(off)
            sizs.append(siz)
            i += 1
        flush()
        if len(pieces) == 1:
            offsets, sizes = pieces[0]
        elif pieces:
            offsets = np.concatenate([p[0] for p in pieces])
            sizes = np.concatenate([p[1] for p in pieces])
        else:
            offsets = sizes = np.zeros((0, ndim), np.int64)
        # checked on the columns: sizes >= 0, elements within a torch tensor's 2**63 - 1 bytes
        bad = np.flatnonzero((sizes < 0).any(axis=1)) if ndim else ()
        if len(bad):
            j = int(bad[0])
            raise _Corrupt(
                f"{fqn}: chunk #{j} offsets {brief(offsets[j].tolist())} sizes "
                f"{brief(sizes[j].tolist())} do not fit a tensor of size {brief(list(size))}"
            )
        if ndim:
            with np.errstate(over="ignore"):
                rough = np.prod(sizes.astype(np.float64), axis=1)
            for j in np.flatnonzero(rough > most / 2).tolist():  # exact where it could exceed
                if math.prod(sizes[j].tolist()) > most:
                    raise _Corrupt(
                        f"{fqn}: chunk #{j} sizes {brief(sizes[j].tolist())} hold more elements "
                        "than a torch tensor can (at most 2**63 - 1 bytes)"
                    )
        check_chunk_hash_spread(offsets, sizes, f"chunks of {fqn}", self.source)
        return offsets, sizes

    def index(self, k):
        if not _is(k, _DCP, "MetadataIndex"):
            raise _Corrupt(f"storage_data key {brief(k, 60)} is not a MetadataIndex")
        fqn, off, idx = k.field("fqn"), k.field("offset"), k.field("index")
        if not (
            type(fqn) is str
            and (off is None or type(off) is tuple)
            and (idx is None or type(idx) is int)
        ):
            raise _Corrupt(f"MetadataIndex fields {brief(fqn, 40)} {brief(off, 40)}")
        return MetadataIndex(
            fqn, None if off is None else self.ints(off, lambda: f"{fqn}: offset"), idx
        )

    def storage_info(self, v):
        if not _is(v, _FS, "_StorageInfo"):
            raise _Corrupt(f"storage_data value {brief(v, 60)} is not a _StorageInfo")
        path, off, length = v.field("relative_path"), v.field("offset"), v.field("length")
        td = v.field("transform_descriptors")
        if not (type(path) is str and type(off) is int and type(length) is int):
            raise _Corrupt(
                f"_StorageInfo fields {brief(path, 40)} {brief(off, 20)} {brief(length, 20)}"
            )
        if td is not None:
            if type(td) not in (list, tuple):
                raise _Corrupt(f"_StorageInfo transform_descriptors {brief(td, 40)}")
            self.budget.charge(len(td) + 1, "transform descriptors")
            td = tuple(td)
        return StorageInfo(path, off, length, td)

    def storage_columns(self, sd: dict) -> StorageColumns:
        """``storage_data`` (stand-in pairs and `StorageRun`s) as `StorageColumns`."""
        fqn_ids: dict[str, int] = {}
        path_ids: dict[str, int] = {}
        cols: dict[str, list] = {k: [] for k in _STORAGE_COLUMNS}
        offsets: list = []
        transforms = {}
        row = 0
        for k, v in sd.items():
            if type(k) is StorageRun:
                if v is not None:
                    raise _Corrupt(f"storage_data value {brief(v, 60)} of decoded entries")
                n = k.count
                for name, ids, (names, index) in (
                    ("fqn_id", fqn_ids, k.fqns),
                    ("path_id", path_ids, k.paths),
                ):
                    lut = np.array([ids.setdefault(f, len(ids)) for f in names], np.int64)
                    cols[name].append(lut[index])
                cols["ndim"].append(k.nd)
                offsets.append(k.offsets[np.arange(3)[None, :] < k.nd[:, None]])
                cols["hint"].append(k.hint)
                cols["has_hint"].append(k.has_hint)
                cols["offset"].append(k.file_offset)
                cols["length"].append(k.length)
                row += n
                continue
            key, info = self.index(k), self.storage_info(v)
            for value, what in ((info.offset, "offset"), (info.length, "length")):
                if not -MAX_INT64 - 1 <= value <= MAX_INT64:
                    raise _Corrupt(f"{key.fqn}: _StorageInfo {what} {brief(value)} leaves int64")
            if key.index is not None and not -MAX_INT64 - 1 <= key.index <= MAX_INT64:
                raise _Corrupt(f"{key.fqn}: MetadataIndex index {brief(key.index)} leaves int64")
            cols["fqn_id"].append([fqn_ids.setdefault(key.fqn, len(fqn_ids))])
            cols["path_id"].append([path_ids.setdefault(info.relative_path, len(path_ids))])
            cols["ndim"].append([-1 if key.offset is None else len(key.offset)])
            offsets.append(np.array(key.offset or (), np.int64))
            cols["hint"].append([0 if key.index is None else key.index])
            cols["has_hint"].append([key.index is not None])
            cols["offset"].append([info.offset])
            cols["length"].append([info.length])
            if info.transform_descriptors is not None:
                transforms[row] = info.transform_descriptors
            row += 1
        arrays = {
            k: np.concatenate([np.asarray(p, bool if k == "has_hint" else np.int64) for p in v])
            if v
            else np.zeros(0, bool if k == "has_hint" else np.int64)
            for k, v in cols.items()
        }
        nd = arrays.pop("ndim")
        return StorageColumns(
            fqns=list(fqn_ids),
            paths=list(path_ids),
            off_start=np.concatenate([[0], np.cumsum(np.maximum(nd, 0))]),
            offsets=np.concatenate(offsets) if offsets else np.zeros(0, np.int64),
            has_offset=nd >= 0,
            transforms=transforms,
            source=self.source,
            **arrays,
        )

    def plain(self, obj, memo: dict, depth: int = 0):
        """Plain data of planner_data / checkpoint ids: containers rebuilt, torch constants by
        name. ``memo`` keeps the pickle's sharing (a memoised list referenced a million times
        stays one list, so a small file cannot blow up) and its cycles."""
        if isinstance(obj, _Named):
            return obj.name
        if isinstance(obj, _StandIn):
            raise _Corrupt(f"a {obj.torch_name} record inside plain data")
        if isinstance(obj, FastRun):
            raise _Corrupt(f"DCP records ({obj!r}) inside plain data")
        if type(obj) not in (dict, list, tuple, set, frozenset):
            return obj
        if id(obj) in memo:
            self.budget.charge(1, "shared plain data")
            return memo[id(obj)]
        if depth > _MAX_DEPTH:
            raise _Corrupt(f"plain data nested deeper than {_MAX_DEPTH} levels")
        self.budget.charge(len(obj) + 1, "plain data")
        d = depth + 1
        if type(obj) is dict:
            out = memo[id(obj)] = {}
            for k, v in obj.items():
                out[self.plain(k, memo, d)] = self.plain(v, memo, d)
        elif type(obj) is list:
            out = memo[id(obj)] = []
            out.extend(self.plain(v, memo, d) for v in obj)
        else:
            out = memo[id(obj)] = type(obj)(self.plain(v, memo, d) for v in obj)
        return out

    def metadata(self, raw) -> Metadata:
        # isinstance: a format's subclass of Metadata (Megatron's MCoreMetadata) reads the same
        if not isinstance(raw, _CLASSES[(_DCP, "Metadata")]):
            raise _Corrupt(f"the pickle holds {type(raw).__name__}, not a DCP Metadata")
        sdm = raw.field("state_dict_metadata")
        if type(sdm) is not dict:
            raise _Corrupt("state_dict_metadata is not a dict")
        state = {}
        for fqn, md in sdm.items():
            if type(fqn) is not str:
                raise _Corrupt(f"key {brief(fqn, 60)} is not a string")
            state[fqn] = self.storage_metadata(fqn, md)
        sd = raw.field("storage_data")
        storage = None
        if sd is not None:
            if type(sd) is not dict:
                raise _Corrupt("storage_data is not a dict")
            storage = self.storage_columns(sd)
        sm = raw.field("storage_meta")
        if sm is None:  # FileSystemReader.read_metadata fills in an empty StorageMeta
            meta = StorageMeta()
        else:
            if not _is(sm, _DCP, "StorageMeta"):
                raise _Corrupt(f"storage_meta {brief(sm, 60)} is not a StorageMeta")
            meta = StorageMeta(
                self.plain(sm.field("checkpoint_id"), {}),
                sm.field("save_id"),
                sm.field("load_id"),
                self.plain(sm.field("modules") or [], {}),
            )
        return Metadata(
            state, self.plain(raw.field("planner_data"), {}), storage, meta, raw.field("version")
        )


_METADATA_FIELDS = (
    "state_dict_metadata",
    "planner_data",
    "storage_data",
    "storage_meta",
    "version",
)
_STORAGE_COLUMNS = ("fqn_id", "path_id", "ndim", "hint", "has_hint", "offset", "length")
_MAX_DEPTH = 100  # plain data deeper than this is no torch checkpoint's planner_data
_STRIDED = _Named("layout", "strided")
_CONTIGUOUS = _Named("memory_format", "contiguous_format")


def _is(obj, module, name):
    return type(obj) is _CLASSES[(module, name)]


# ----------------------------------------------------------------------------- entry points
def metadata_path(path, rank: int | None = None) -> pathlib.Path:
    """torch's ``FileSystemReader._get_metadata_path``: ``<dir>/.metadata`` or, with ``rank``,
    ``<dir>/__<rank>.metadata``; a file path is taken as is."""
    try:
        p = pathlib.Path(os.fspath(path))
    except TypeError:
        raise MetadataError(
            None,
            f"checkpoint path {path!r} of type {type(path).__name__} is not a path",
            "a str or os.PathLike naming a checkpoint directory or its .metadata",
            "Pass the directory dcp.save wrote.",
            path=path,
        ) from None
    if p.is_dir():
        return p / (".metadata" if rank is None else f"__{rank}.metadata")
    return p


def read_metadata_bytes(
    data: bytes,
    source: str = "<bytes>",
    extra_globals=None,
    extras: dict | None = None,
    writer: dict | None = None,
) -> Metadata:
    """Unpickle ``.metadata`` bytes with the allow-list and convert them to workbench records.
    ``extra_globals``: more ``(module, name) -> stand-in`` entries for formats that pickle more
    than torch (Megatron-Core); ``extras``, if given, receives the pickled Metadata's other
    attributes (e.g. ``all_local_plans``), still as stand-ins, for such a format to convert;
    ``writer``, if given, receives ``"versions"``: `infer_writer_versions` of the same reading
    (None when the fields contradict each other).
    Memory and time are bounded by the file's size (`formats.unpickler.BoundedUnpickler`)."""
    if not data:
        raise MetadataError(
            source,
            "the metadata file is empty (0 bytes)",
            "a pickled torch Metadata",
            "The save did not finish; look for .metadata.tmp beside it.",
        )
    budget = Budget(len(data), source=source)
    try:
        unpickler = _RecordingUnpickler(data, budget=budget, source=source)
        unpickler.use_fast_paths()
        if extra_globals:
            unpickler.extra_globals = dict(extra_globals)
        raw = unpickler.load()
    except UnsafeCheckpointError as e:
        raise type(e)(source, e.what, e.expectation, e.fix, **e.facts) from None
    except WorkbenchError as e:
        raise MetadataError(source, e.what, e.expectation, e.fix, **e.facts) from None
    except UnpicklingError as e:
        kind = "truncated" if e.truncated else "not a valid pickle"
        raise MetadataError(
            source,
            f"the metadata file ({len(data)} bytes) is {kind}: {e}",
            "a complete pickled torch Metadata",
            "Re-copy the checkpoint; the file is damaged or is not a DCP .metadata.",
            reason=kind,
        ) from None
    except Exception as e:  # noqa: BLE001 - e.g. a TypeError from a wrong call of a stand-in
        raise MetadataError(
            source,
            f"the metadata file ({len(data)} bytes) is not a valid pickle: "
            f"{type(e).__name__}: {brief(str(e), 200)}",
            "a complete pickled torch Metadata",
            "Re-copy the checkpoint; the file is damaged or is not a DCP .metadata.",
            reason="not a valid pickle",
        ) from None
    try:
        md = _Converter(budget, source).metadata(raw)
        if writer is not None:
            try:
                writer["versions"] = _writer_versions(raw, unpickler.names, source)
            except MetadataError:
                writer["versions"] = None
        if extras is not None and isinstance(raw.state, dict):
            extras.update((k, v) for k, v in raw.state.items() if k not in _METADATA_FIELDS)
            extras["__class__"] = type(raw).torch_name
        return md
    except (_Corrupt, WorkbenchError, RecursionError) as e:
        raise MetadataError(
            source,
            f"the metadata is corrupt: {e}",
            "torch 2.13 DCP Metadata records",
            "Re-copy the checkpoint or re-save it.",
        ) from None


def read_remote_metadata(location: Location, rank: int | None = None) -> Metadata:
    """The `Metadata` of a checkpoint in object storage (`location.Location`): its
    ``.metadata`` (or ``__<rank>.metadata``) fetched whole and read as `load_metadata` reads a
    local one. Never cached: the parsed-metadata cache keys local files only."""
    name = ".metadata" if rank is None else f"__{rank}.metadata"
    return read_metadata_bytes(location.read_bytes(name), location.url_of(name))


def load_metadata(
    path, rank: int | None = None, *, cache: bool = True, storage_options: dict | None = None
) -> Metadata:
    """The checkpoint's `Metadata` as ``FileSystemReader(path).read_metadata(rank=rank)`` would
    return it, in workbench records, but read with an allow-list unpickler: nothing in the file is
    executed (torch's reader is a bare ``pickle.load``). ``storage_meta.load_id`` is the file's
    (None for files torch wrote) where torch's reader stamps a fresh one.

    Chunks and storage entries are held as columns (`formats.columns`). With ``cache`` (and
    ``WORKBENCH_NO_CACHE`` unset) the parsed result is kept in the user's cache directory and
    reused while the file's size, mtime and content hash match (`formats.metadata_cache`).

    ``path`` may be an fsspec URL of the checkpoint directory (``s3://bucket/ckpt``...), read
    with ``storage_options`` (`read_remote_metadata`; not cached)."""
    if is_url(path):
        return read_remote_metadata(open_location(path, storage_options), rank)
    p = metadata_path(path, rank)
    use_cache = metadata_cache.cache_enabled(cache)
    try:
        st = p.stat()
        if use_cache and st.st_size:
            md = metadata_cache.load_cached(_cache_key(p, st))
            if md is not None:
                return md
        data = p.read_bytes()
    except FileNotFoundError:
        raise MetadataError(
            str(p),
            "no such metadata file",
            "a DCP checkpoint directory holding .metadata (or __<rank>.metadata)",
            "Point at the directory dcp.save wrote.",
            path=str(p),
        ) from None
    except OSError as e:
        raise MetadataError(
            str(p),
            f"the metadata file cannot be read: {e}",
            "a readable file",
            "Check the path and its permissions.",
            path=str(p),
        ) from None
    if not use_cache or not data:
        return read_metadata_bytes(data, str(p))
    key = metadata_cache.content_key(data, st.st_size, st.st_mtime_ns)  # the bytes parsed
    writer: dict = {}
    md = read_metadata_bytes(data, str(p), writer=writer)
    metadata_cache.store(key, md, len(data), writer_versions=writer.get("versions"))
    return md


def _cache_key(p: pathlib.Path, st: os.stat_result) -> dict:
    """The parsed-metadata cache's key of a non-empty local ``.metadata``, hashed in place (an
    mmap: a cache hit never copies the file into memory)."""
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return metadata_cache.content_key(view, st.st_size, st.st_mtime_ns)


def load_writer_versions(path, rank: int | None = None, extra_globals=None) -> WriterVersions:
    """`infer_writer_versions` of a local checkpoint's ``.metadata``: from the parsed-metadata
    cache when its entry holds them (a cold open records them), else read from the file."""
    p = metadata_path(path, rank)
    st = p.stat()
    if metadata_cache.cache_enabled() and not extra_globals and st.st_size:
        got = metadata_cache.load_cached_extra(_cache_key(p, st), "writer_versions")
        if got is not None:
            return WriterVersions(got[0], got[1], tuple(got[2]), got[3])
    return infer_writer_versions(p.read_bytes(), str(p), extra_globals)


# ----------------------------------------------------------------------------- for other readers
# Formats that pickle DCP records plus their own (formats/megatron.py) build their stand-ins and
# convert their records with these.
StandIn = _StandIn
AllowListUnpickler = _AllowListUnpickler
Named = _Named
Reducer = _Reducer
CorruptMetadata = _Corrupt
stand_in = _stand_in


def _unmetered() -> _Converter:
    # records another reader already unpickled within its own budget
    return _Converter(Budget(0, factor=0, constant=1 << 62), "<metadata>")


def convert_properties(p, fqn):
    return _unmetered().properties(p, fqn)


def convert_index(k):
    return _unmetered().index(k)


def convert_ints(v, what):
    return _unmetered().ints(v, lambda: what)


def plain_data(obj, memo: dict):
    return _unmetered().plain(obj, memo)


def dcp_class(module: str, name: str) -> type:
    """The stand-in class of a DCP record, e.g. ``dcp_class(DCP_METADATA, "Metadata")``."""
    return _CLASSES[(module, name)]


DCP_METADATA = _DCP


# ----------------------------------------------------------------------------- other versions
# Globals other torch / Python versions pickle in a .metadata (added to the allow-list above):
# Python 3.13 moved pathlib's classes to pathlib._local; torch <= 2.2 pickled TensorProperties
# and its memory-format enum from the ShardedTensor package.
_SHARD_MD = "torch.distributed._shard.sharded_tensor.metadata"
ALLOWED_GLOBALS.update(
    {
        **{
            ("pathlib._local", n): ALLOWED_GLOBALS[("pathlib", n)]
            for n in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")
        },
        (_SHARD_MD, "TensorProperties"): _CLASSES[(_DCP, "TensorProperties")],
        (_SHARD_MD, "MEM_FORMAT_ENCODING"): _Reducer(
            f"{_SHARD_MD}.MEM_FORMAT_ENCODING", _mem_format_encoding
        ),
    }
)


@dataclass(frozen=True, slots=True)
class WriterVersions:
    """Which torch versions could have written a ``.metadata``: ``low`` / ``high`` bounds
    (``"2.4"``; ``high`` None = up to the newest; ``low`` ``"2.2"`` with ``high`` ``"2.2"`` means
    2.2 or older), the ``evidence`` for each bound and the ``python`` note (3.13+ when its pickle
    names ``pathlib._local``)."""

    low: str
    high: str | None
    evidence: tuple[str, ...]
    python: str | None = None

    def __str__(self) -> str:
        if self.high == "2.2":
            rng = "torch 2.2 or older"
        elif self.high is None:
            rng = f"torch {self.low} or newer"
        elif self.low == self.high:
            rng = f"torch {self.low}"
        else:
            rng = f"torch {self.low} to {self.high}"
        return rng + (f" (Python {self.python})" if self.python else "")


class _RecordingUnpickler(_AllowListUnpickler):
    """The allow-list unpickler, noting which globals the pickle names."""

    def __init__(self, data, **kw):
        super().__init__(data, **kw)
        self.names: set[tuple[str, str]] = set()

    def find_class(self, module, name):
        self.names.add((module, name))
        return super().find_class(module, name)


def _state_keys(obj) -> set:
    st = getattr(obj, "state", None)
    return set(st) if isinstance(st, dict) else set()


def _properties_state_widths(sdm) -> set[int]:
    """The lengths of the ``TensorProperties`` tuple states in a ``state_dict_metadata``."""
    if not isinstance(sdm, dict):
        return set()
    out = set()
    for md in sdm.values():
        if _is(md, _DCP, "TensorStorageMetadata"):
            p = md.field("properties")
            if _is(p, _DCP, "TensorProperties") and isinstance(p.state, tuple):
                out.add(len(p.state))
    return out


def infer_writer_versions(
    data: bytes, source: str = "<bytes>", extra_globals=None
) -> WriterVersions:
    """The torch versions that write a ``.metadata`` like ``data`` (read with the allow-list
    unpickler: nothing is executed), from the globals and record fields present:
    ``TensorProperties`` from ``torch.distributed._shard`` (<= 2.2) or from
    ``torch.distributed.checkpoint.metadata`` (2.3+); ``Metadata.storage_meta`` (2.4+);
    ``StorageMeta.modules`` (2.7+); a ``_StorageInfo.transform_descriptors`` (2.7+, pickled only
    when set); ``Metadata.version`` (2.9+); ``TensorProperties.strides`` (2.15+: a 6-tuple state,
    5 before). 2.9 to 2.14 write the same schema."""
    un = _RecordingUnpickler(data, source=source)
    un.use_fast_paths()  # runs of chunk / storage records carry no version evidence
    if extra_globals:  # a format's own records (Megatron's), as read_metadata_bytes takes them
        un.extra_globals = dict(extra_globals)
    try:
        raw = un.load()
    except UnsafeCheckpointError as e:
        raise type(e)(source, e.what, e.expectation, e.fix, **e.facts) from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle: read_metadata_bytes words it
        raise MetadataError(
            source,
            f"the metadata cannot be read: {type(e).__name__}: {brief(str(e), 200)}",
            "a DCP .metadata",
        ) from None
    return _writer_versions(raw, un.names, source)


def _writer_versions(raw, names: set, source: str) -> WriterVersions:
    """The `WriterVersions` of an unpickled ``.metadata`` (stand-ins) and the globals it named."""
    if not isinstance(raw, _CLASSES[(_DCP, "Metadata")]):  # subclasses too (MCoreMetadata)
        raise MetadataError(source, "the pickle holds no DCP Metadata", "a DCP .metadata")
    low, high, why = (2, 3), None, []

    def at_least(v, reason):
        nonlocal low
        why.append(reason)
        low = max(low, v)

    def at_most(v, reason):
        nonlocal high
        why.append(reason)
        high = v if high is None else min(high, v)

    if (_SHARD_MD, "TensorProperties") in names:
        low = (2, 0)
        at_most((2, 2), "TensorProperties pickled from torch.distributed._shard (torch <= 2.2)")
    elif (_DCP, "TensorProperties") in names:
        at_least((2, 3), "TensorProperties from torch.distributed.checkpoint.metadata (2.3+)")
    keys = _state_keys(raw)
    if "storage_meta" in keys:
        at_least((2, 4), "Metadata.storage_meta (2.4+)")
    else:
        at_most((2, 3), "no Metadata.storage_meta (before 2.4)")
    sm = raw.field("storage_meta")
    if sm is not None and _is(sm, _DCP, "StorageMeta"):
        if "modules" in _state_keys(sm):
            at_least((2, 7), "StorageMeta.modules (2.7+)")
        else:
            at_most((2, 6), "StorageMeta without modules (before 2.7)")
    sd = raw.field("storage_data")
    if isinstance(sd, dict) and any("transform_descriptors" in _state_keys(v) for v in sd.values()):
        at_least((2, 7), "_StorageInfo.transform_descriptors (2.7+)")
    if "version" in keys:
        at_least((2, 9), "Metadata.version (2.9+)")
    elif "storage_meta" in keys:
        at_most((2, 8), "no Metadata.version (before 2.9)")
    widths = _properties_state_widths(raw.field("state_dict_metadata"))
    if 6 in widths:
        at_least((2, 15), "TensorProperties pickled with strides, a 6-tuple (2.15+)")
    if 5 in widths:
        at_most((2, 14), "TensorProperties pickled as a 5-tuple, without strides (before 2.15)")
    python = "3.13+" if any(m == "pathlib._local" for m, _ in names) else None
    if high is not None and high < low:  # contradicting fields: not one torch's writer
        raise MetadataError(
            source,
            f"its fields contradict each other ({'; '.join(why)})",
            "a .metadata written by one torch version",
            "It was edited or written by another tool.",
        )
    return WriterVersions(
        f"{low[0]}.{low[1]}",
        None if high is None else f"{high[0]}.{high[1]}",
        tuple(why),
        python,
    )
