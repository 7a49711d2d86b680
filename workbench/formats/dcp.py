"""Safe reader of a DCP checkpoint's ``.metadata``: an allow-list unpickler, no torch needed.

torch 2.13's ``FileSystemReader.read_metadata`` is a bare ``pickle.load``, so a ``.metadata``
from a stranger can run code on every rank that loads it. This module reads the same pickle with
``pickle.Unpickler.find_class`` restricted to the globals a real torch 2.13 ``.metadata`` uses
(learnt from the opcodes of real checkpoints, dcp-semantics sections 6 and 8), each mapped to a
harmless stand-in of our own, then converts the result to workbench records. Anything else
raises `UnsafeCheckpointError` naming the refused global before anything is called.

Must not import torch: reading works where torch is absent.
"""

from __future__ import annotations

import builtins
import io
import os
import pathlib
import pickle
from dataclasses import dataclass
from typing import Any

from ..errors import MetadataError, UnsafeCheckpointError, WorkbenchError
from ..geometry import Chunk
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

__all__ = [
    "load_metadata",
    "metadata_path",
    "read_metadata_bytes",
    "ALLOWED_GLOBALS",
    "WriterVersions",
    "infer_writer_versions",
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
            f"the pickle calls {cls.torch_name} with arguments {args!r:.80}",
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
            f"the pickle calls {self!r} with {args!r:.60}",
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
        None, f"{name} is called with {args!r:.80}", expectation, "The .metadata is corrupt."
    )


def _torch_size(*args):
    """``torch.Size(seq)`` -> a tuple of ints."""
    if (
        len(args) != 1
        or not isinstance(args[0], (tuple, list))
        or not all(type(v) is int for v in args[0])
    ):
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
    ("collections", "OrderedDict"): _Reducer("collections.OrderedDict", dict),
    **{("builtins", n): _Reducer(f"builtins.{n}", getattr(builtins, n)) for n in _BUILTINS},
}


class _AllowListUnpickler(pickle.Unpickler):
    # globals a caller adds for its format (e.g. formats/megatron.py's MEGATRON_GLOBALS)
    extra_globals: dict = {}

    def find_class(self, module, name):
        try:
            return self.extra_globals.get((module, name)) or ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                None,
                f"the pickle asks for the global {module}.{name}",
                "only torch's DCP records, torch.Size, dtypes, layouts, memory formats, pathlib "
                "paths and plain builtins are allowed",
                "Nothing was executed. Do not load this checkpoint with torch (dcp.load runs "
                "pickle.load on it) unless you trust its author.",
                global_name=f"{module}.{name}",
            ) from None

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(
            None,
            f"the pickle asks for persistent id {pid!r:.60}",
            "a DCP .metadata has no persistent ids",
            "Nothing was executed.",
            global_name="persistent_load",
        )


# ----------------------------------------------------------------------------- conversion
class _Corrupt(Exception):
    """Raised while converting stand-ins; turned into a MetadataError naming the file."""


def _expect(cond, what):
    if not cond:
        raise _Corrupt(what)


def _ints(v, what):
    _expect(
        isinstance(v, tuple) and all(type(x) is int for x in v),
        f"{what} {v!r:.80} is not a torch.Size",
    )
    return v


def _is(obj, module, name):
    return type(obj) is _CLASSES[(module, name)]


def _read_properties(p, fqn):
    _expect(
        _is(p, _DCP, "TensorProperties"), f"{fqn}: properties {p!r:.60} are not TensorProperties"
    )
    dtype = p.field("dtype", 0)
    _expect(
        isinstance(dtype, _Named) and dtype.kind == "dtype",
        f"{fqn}: dtype {dtype!r:.60} is not a torch dtype",
    )
    layout = p.field("layout", 1, _Named("layout", "strided"))
    mem = p.field("memory_format", 3, _Named("memory_format", "contiguous_format"))
    _expect(
        isinstance(layout, _Named) and isinstance(mem, _Named),
        f"{fqn}: layout / memory format {layout!r:.40} {mem!r:.40} are not torch constants",
    )
    return TensorProperties(
        dtype.name,
        layout.name,
        bool(p.field("requires_grad", 2, False)),
        mem.name,
        bool(p.field("pin_memory", 4, False)),
    )


def _storage_metadata(fqn, md):
    if _is(md, _DCP, "BytesStorageMetadata"):
        return BytesStorageMetadata()
    _expect(
        _is(md, _DCP, "TensorStorageMetadata"),
        f"{fqn}: entry {md!r:.60} is neither TensorStorageMetadata nor BytesStorageMetadata",
    )
    size = _ints(md.field("size"), f"{fqn}: size")
    chunks = md.field("chunks")
    _expect(isinstance(chunks, list), f"{fqn}: chunks {chunks!r:.60} are not a list")
    out = []
    for i, c in enumerate(chunks):
        _expect(_is(c, _DCP, "ChunkStorageMetadata"), f"{fqn}: chunk #{i} is {c!r:.60}")
        off = _ints(c.field("offsets"), f"{fqn}: chunk #{i} offsets")
        siz = _ints(c.field("sizes"), f"{fqn}: chunk #{i} sizes")
        _expect(
            len(off) == len(siz) == len(size) and all(s >= 0 for s in siz),
            f"{fqn}: chunk #{i} offsets {list(off)} sizes {list(siz)} do not fit a tensor of "
            f"size {list(size)}",
        )
        out.append(Chunk(off, siz))
    return TensorStorageMetadata(_read_properties(md.field("properties"), fqn), size, out)


def _index(k):
    _expect(_is(k, _DCP, "MetadataIndex"), f"storage_data key {k!r:.60} is not a MetadataIndex")
    fqn, off, idx = k.field("fqn"), k.field("offset"), k.field("index")
    _expect(
        isinstance(fqn, str)
        and (off is None or isinstance(off, tuple))
        and (idx is None or type(idx) is int),
        f"MetadataIndex fields {fqn!r:.40} {off!r:.40}",
    )
    return MetadataIndex(fqn, None if off is None else _ints(off, f"{fqn}: offset"), idx)


def _storage_info(v):
    _expect(_is(v, _FS, "_StorageInfo"), f"storage_data value {v!r:.60} is not a _StorageInfo")
    path, off, length = v.field("relative_path"), v.field("offset"), v.field("length")
    td = v.field("transform_descriptors")
    _expect(
        isinstance(path, str) and type(off) is int and type(length) is int,
        f"_StorageInfo fields {path!r:.40} {off!r} {length!r}",
    )
    return StorageInfo(path, off, length, None if td is None else tuple(td))


def _plain_data(obj, memo: dict):
    """Plain data of planner_data / checkpoint ids: containers rebuilt, torch constants by name.
    ``memo`` keeps the pickle's sharing (a memoised list referenced a million times stays one
    list, so a small file cannot blow up) and its cycles."""
    if isinstance(obj, _Named):
        return obj.name
    if isinstance(obj, _StandIn):
        raise _Corrupt(f"a {obj.torch_name} record inside plain data")
    if type(obj) not in (dict, list, tuple, set, frozenset):
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    if type(obj) is dict:
        out = memo[id(obj)] = {}
        for k, v in obj.items():
            out[_plain_data(k, memo)] = _plain_data(v, memo)
    elif type(obj) is list:
        out = memo[id(obj)] = []
        out.extend(_plain_data(v, memo) for v in obj)
    else:
        out = memo[id(obj)] = type(obj)(_plain_data(v, memo) for v in obj)
    return out


_METADATA_FIELDS = (
    "state_dict_metadata",
    "planner_data",
    "storage_data",
    "storage_meta",
    "version",
)


def _convert(raw) -> Metadata:
    # isinstance: a format's subclass of Metadata (Megatron's MCoreMetadata) reads the same
    _expect(
        isinstance(raw, _CLASSES[(_DCP, "Metadata")]),
        f"the pickle holds {type(raw).__name__}, not a DCP Metadata",
    )
    sdm = raw.field("state_dict_metadata")
    _expect(isinstance(sdm, dict), "state_dict_metadata is not a dict")
    state = {}
    for fqn, md in sdm.items():
        _expect(isinstance(fqn, str), f"key {fqn!r:.60} is not a string")
        state[fqn] = _storage_metadata(fqn, md)
    sd = raw.field("storage_data")
    storage = None
    if sd is not None:
        _expect(isinstance(sd, dict), "storage_data is not a dict")
        storage = {_index(k): _storage_info(v) for k, v in sd.items()}
    sm = raw.field("storage_meta")
    if sm is None:  # FileSystemReader.read_metadata fills in an empty StorageMeta
        meta = StorageMeta()
    else:
        _expect(_is(sm, _DCP, "StorageMeta"), f"storage_meta {sm!r:.60} is not a StorageMeta")
        meta = StorageMeta(
            _plain_data(sm.field("checkpoint_id"), {}),
            sm.field("save_id"),
            sm.field("load_id"),
            _plain_data(sm.field("modules") or [], {}),
        )
    return Metadata(
        state, _plain_data(raw.field("planner_data"), {}), storage, meta, raw.field("version")
    )


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
    data: bytes, source: str = "<bytes>", extra_globals=None, extras: dict | None = None
) -> Metadata:
    """Unpickle ``.metadata`` bytes with the allow-list and convert them to workbench records.
    ``extra_globals``: more ``(module, name) -> stand-in`` entries for formats that pickle more
    than torch (Megatron-Core); ``extras``, if given, receives the pickled Metadata's other
    attributes (e.g. ``all_local_plans``), still as stand-ins, for such a format to convert."""
    if not data:
        raise MetadataError(
            source,
            "the metadata file is empty (0 bytes)",
            "a pickled torch Metadata",
            "The save did not finish; look for .metadata.tmp beside it.",
        )
    try:
        unpickler = _AllowListUnpickler(io.BytesIO(data))
        if extra_globals:
            unpickler.extra_globals = dict(extra_globals)
        raw = unpickler.load()
    except UnsafeCheckpointError as e:
        raise type(e)(source, e.what, e.expectation, e.fix, **e.facts) from None
    except WorkbenchError as e:
        raise MetadataError(source, e.what, e.expectation, e.fix) from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged pickle makes the unpickler raise
        msg = str(e).lower()
        kind = (
            "truncated"
            if isinstance(e, EOFError) or "ran out" in msg or "truncated" in msg
            else "not a valid pickle"
        )
        raise MetadataError(
            source,
            f"the metadata file ({len(data)} bytes) is {kind}: {type(e).__name__}: {e}",
            "a complete pickled torch Metadata",
            "Re-copy the checkpoint; the file is damaged or is not a DCP .metadata.",
            reason=kind,
        ) from None
    try:
        md = _convert(raw)
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


def load_metadata(path, rank: int | None = None) -> Metadata:
    """The checkpoint's `Metadata` as ``FileSystemReader(path).read_metadata(rank=rank)`` would
    return it, in workbench records, but read with an allow-list unpickler: nothing in the file is
    executed (torch's reader is a bare ``pickle.load``). ``storage_meta.load_id`` is the file's
    (None for files torch wrote) where torch's reader stamps a fresh one."""
    p = metadata_path(path, rank)
    try:
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
    return read_metadata_bytes(data, str(p))


# ----------------------------------------------------------------------------- for other readers
# Formats that pickle DCP records plus their own (formats/megatron.py) build their stand-ins and
# convert their records with these.
StandIn = _StandIn
Named = _Named
Reducer = _Reducer
CorruptMetadata = _Corrupt
stand_in = _stand_in
convert_properties = _read_properties
convert_index = _index
convert_ints = _ints
plain_data = _plain_data


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

    def __init__(self, file):
        super().__init__(file)
        self.names: set[tuple[str, str]] = set()

    def find_class(self, module, name):
        self.names.add((module, name))
        return super().find_class(module, name)


def _state_keys(obj) -> set:
    st = getattr(obj, "state", None)
    return set(st) if isinstance(st, dict) else set()


def infer_writer_versions(
    data: bytes, source: str = "<bytes>", extra_globals=None
) -> WriterVersions:
    """The torch versions that write a ``.metadata`` like ``data`` (read with the allow-list
    unpickler: nothing is executed), from the globals and record fields present:
    ``TensorProperties`` from ``torch.distributed._shard`` (<= 2.2) or from
    ``torch.distributed.checkpoint.metadata`` (2.3+); ``Metadata.storage_meta`` (2.4+);
    ``StorageMeta.modules`` (2.7+); a ``_StorageInfo.transform_descriptors`` (2.7+, pickled only
    when set); ``Metadata.version`` (2.9+). 2.9 to 2.14 write the same schema."""
    un = _RecordingUnpickler(io.BytesIO(data))
    if extra_globals:  # a format's own records (Megatron's), as read_metadata_bytes takes them
        un.extra_globals = dict(extra_globals)
    try:
        raw = un.load()
    except UnsafeCheckpointError as e:
        raise type(e)(source, e.what, e.expectation, e.fix, **e.facts) from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle: read_metadata_bytes words it
        raise MetadataError(
            source, f"the metadata cannot be read: {type(e).__name__}: {e}", "a DCP .metadata"
        ) from None
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

    if (_SHARD_MD, "TensorProperties") in un.names:
        low = (2, 0)
        at_most((2, 2), "TensorProperties pickled from torch.distributed._shard (torch <= 2.2)")
    elif (_DCP, "TensorProperties") in un.names:
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
    python = "3.13+" if any(m == "pathlib._local" for m, _ in un.names) else None
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
