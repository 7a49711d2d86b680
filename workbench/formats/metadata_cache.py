"""A cache of parsed ``.metadata`` files, so reopening a big checkpoint takes a fraction of a second.

A read `Metadata` (its columns: `formats.columns`) is saved as one ``.wbmd`` file: a JSON
header (keys, dtypes, sizes, planner data, ... and where each array lies), never a pickle, then
the numeric columns as raw little-endian arrays, plus what every open computes next from the
columns alone (the storage row of each chunk). An entry is read through an mmap: the arrays are
views of the page cache, not copies (an ``.npz`` took 0.3 s to copy and checksum 114 MB at
16,384 ranks). The entry is named by a SHA-256 hash of the
``.metadata``'s bytes and records the file's size and modification time; it is used only when
all three match the file being opened (the hash is computed from the bytes just read, so an
edited file never reads a stale entry), and any entry that cannot be read back exactly is
ignored. Entries can be deleted at any time.

Where: ``$XDG_CACHE_HOME/dcp-reshard-workbench`` (default ``~/.cache/dcp-reshard-workbench``).
Off: ``load_metadata(..., cache=False)`` or the environment variable ``WORKBENCH_NO_CACHE=1``.

Imports numpy, records, columns and limits; no torch.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import pathlib
import tempfile

import numpy as np

from ..records import (
    BytesStorageMetadata,
    Metadata,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from .columns import ChunkList, StorageColumns
from .limits import JsonLimits, read_json

__all__ = [
    "cache_dir",
    "cache_enabled",
    "content_key",
    "load_cached",
    "load_cached_extra",
    "store",
    "FORMAT",
]

FORMAT = 6  # bumped when the layout of an entry changes: older entries are then ignored
_ENV_OFF = "WORKBENCH_NO_CACHE"


def cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/dcp-reshard-workbench`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "dcp-reshard-workbench"


def cache_enabled(cache: bool = True) -> bool:
    """Whether to use the cache: ``cache`` and ``WORKBENCH_NO_CACHE`` unset (or 0 / empty)."""
    return bool(cache) and os.environ.get(_ENV_OFF, "").strip() in ("", "0")


def content_key(data, size: int, mtime_ns: int) -> dict:
    """What an entry must match: the format, the file's size and mtime, its bytes' hash
    (``data``: bytes or any buffer, e.g. an mmap of the file)."""
    # SHA-256 runs on the CPU's SHA instructions: 0.11 s for a 157 MB .metadata, half BLAKE2b's
    return {
        "format": FORMAT,
        "size": int(size),
        "mtime_ns": int(mtime_ns),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _entry(key: dict) -> pathlib.Path:
    return cache_dir() / f"metadata-{key['sha256']}.wbmd"


# ----------------------------------------------------------------------------- plain data
class _NotCacheable(Exception):
    pass


def _encode(obj, budget: list):
    """Plain data as JSON with tags ({"l": list}, {"t": tuple}, {"d": [[k, v], ...]}, ...);
    ``budget[0]`` nodes at most (shared references are expanded: a file that shares one list a
    million times is simply not cached)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _NotCacheable
    t = type(obj)
    if obj is None or t in (bool, str):
        return obj
    if t is int:
        return obj if -(2**63) <= obj < 2**63 else {"i": str(obj)}
    if t is float:
        return {"x": obj.hex()}
    if t is complex:
        return {"c": [obj.real.hex(), obj.imag.hex()]}
    if t is bytes:
        return {"b": obj.hex()}
    if t is list:
        return {"l": [_encode(v, budget) for v in obj]}
    if t is tuple:
        return {"t": [_encode(v, budget) for v in obj]}
    if t in (set, frozenset):
        return {"s" if t is set else "f": [_encode(v, budget) for v in obj]}
    if t is dict:
        return {"d": [[_encode(k, budget), _encode(v, budget)] for k, v in obj.items()]}
    if isinstance(obj, pathlib.PurePosixPath):
        return {"p": str(obj)}
    if isinstance(obj, pathlib.PureWindowsPath):
        return {"w": str(obj)}
    raise _NotCacheable


def _decode(obj):
    if not isinstance(obj, dict):
        return obj
    ((tag, v),) = obj.items()
    if tag == "i":
        return int(v)
    if tag == "x":
        return float.fromhex(v)
    if tag == "c":
        return complex(float.fromhex(v[0]), float.fromhex(v[1]))
    if tag == "b":
        return bytes.fromhex(v)
    if tag == "l":
        return [_decode(x) for x in v]
    if tag == "t":
        return tuple(_decode(x) for x in v)
    if tag == "s":
        return {_decode(x) for x in v}
    if tag == "f":
        return frozenset(_decode(x) for x in v)
    if tag == "d":
        return {_decode(k): _decode(x) for k, x in v}
    if tag == "p":
        return pathlib.PurePosixPath(v)
    if tag == "w":
        return pathlib.PureWindowsPath(v)
    raise ValueError(f"unknown tag {tag!r}")


# ----------------------------------------------------------------------------- store / load
_STORAGE_ARRAYS = (
    "fqn_id",
    "off_start",
    "offsets",
    "has_offset",
    "hint",
    "has_hint",
    "path_id",
    "offset",
    "length",
)


def store(key: dict, md: Metadata, size_hint: int, writer_versions=None) -> bool:
    """Save ``md`` (as `formats.dcp` read it: chunk and storage columns) under ``key``, with
    the `formats.dcp.WriterVersions` of the same reading if given; False (nothing written) when
    it holds what the entry format cannot keep exactly or the cache directory is not
    writable."""
    try:
        arrays, meta = _pack(key, md, size_hint, writer_versions)
    except _NotCacheable:
        return False
    path = _entry(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".wbmd")
        try:
            with os.fdopen(fd, "wb") as f:
                _write_entry(f, meta, arrays)
            os.replace(tmp, path)  # atomic: a reader never sees half an entry (nor a mapped one)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        return False
    return True


def _pack(key: dict, md: Metadata, size_hint: int, writer_versions) -> tuple[dict, dict]:
    budget = [4 * size_hint + 100_000]
    entries, offs, sizes = [], [], []
    for fqn, e in md.state_dict_metadata.items():
        if isinstance(e, BytesStorageMetadata):
            entries.append([fqn, None])
            continue
        held = getattr(e.chunks, "box_arrays", None)
        if held is None:
            raise _NotCacheable  # edited since it was read
        p = e.properties
        entries.append(
            [
                fqn,
                [
                    p.dtype,
                    p.layout,
                    p.requires_grad,
                    p.memory_format,
                    p.pin_memory,
                    None if p.strides is None else list(p.strides),
                ],
                list(e.size),
                len(held[0]),
            ]
        )
        offs.append(held[0].reshape(-1))
        sizes.append(held[1].reshape(-1))
    sd = md.storage_data
    storage = None
    arrays = {
        "chunk_offsets": np.concatenate(offs) if offs else np.zeros(0, np.int64),
        "chunk_sizes": np.concatenate(sizes) if sizes else np.zeros(0, np.int64),
    }
    if sd is not None:
        if not isinstance(sd, StorageColumns) or sd.box_rows is None:
            raise _NotCacheable
        for name in _STORAGE_ARRAYS:
            arrays["sd_" + name] = getattr(sd, name)
        arrays["sd_keys"], arrays["sd_values"] = sd.box_rows
        # the storage row of each chunk: every open looks all of them up next (0.5 s at 16k ranks)
        rows = sd.chunk_rows(md.state_dict_metadata)
        if rows is None:
            raise _NotCacheable
        arrays["sd_chunk_rows"] = rows
        storage = {
            "fqns": sd.fqns,
            "paths": sd.paths,
            "transforms": [[r, _encode(v, budget)] for r, v in sd.transforms.items()],
        }
    sm = md.storage_meta
    meta = {
        "key": key,
        "entries": entries,
        "storage": storage,
        "planner_data": _encode(md.planner_data, budget),
        "storage_meta": None
        if sm is None
        else [
            _encode(sm.checkpoint_id, budget),
            _encode(sm.save_id, budget),
            _encode(sm.load_id, budget),
            _encode(sm.modules, budget),
        ],
        "version": _encode(md.version, budget),
        "writer_versions": None
        if writer_versions is None
        else [
            writer_versions.low,
            writer_versions.high,
            list(writer_versions.evidence),
            writer_versions.python,
        ],
    }
    return arrays, meta


def load_cached(key: dict) -> Metadata | None:
    """The `Metadata` saved under ``key``, or None when there is no entry or it does not match
    ``key`` exactly or cannot be read back."""
    path = _entry(key)
    if not path.is_file():
        return None
    try:
        meta, arrays = _read_entry(path)
        if meta.get("key") != key:
            return None
        return _unpack(meta, arrays)
    except Exception:  # noqa: BLE001 - a damaged or foreign entry is a miss, never an error
        return None


def load_cached_extra(key: dict, name: str):
    """What the entry under ``key`` recorded beside the metadata (``"writer_versions"``: [low,
    high, evidence, python]), or None (no entry, no match, not recorded)."""
    path = _entry(key)
    if not path.is_file():
        return None
    try:
        meta, _ = _read_entry(path)
        return meta.get(name) if meta.get("key") == key else None
    except Exception:  # noqa: BLE001 - a damaged or foreign entry is a miss, never an error
        return None


# ----------------------------------------------------------------------------- the entry file
# MAGIC, the header's length (8 bytes, little-endian), the JSON header, then each array's raw
# bytes at the offset the header names (64-byte aligned).
_MAGIC = b"WBMDCACH"
_ALIGN = 64


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _write_entry(f, meta: dict, arrays: dict) -> None:
    layout, at = {}, 0
    for name, a in arrays.items():
        layout[name] = [a.dtype.str, list(a.shape), at]
        at += _aligned(a.nbytes)
    head = json.dumps({"meta": meta, "arrays": layout}).encode("utf-8")
    start = _aligned(len(_MAGIC) + 8 + len(head))
    f.write(_MAGIC + len(head).to_bytes(8, "little") + head)
    f.write(b"\0" * (start - f.tell()))
    for name, a in arrays.items():
        f.seek(start + layout[name][2])
        f.write(np.ascontiguousarray(a).tobytes())


def _read_entry(path: pathlib.Path) -> tuple[dict, dict]:
    """(the metadata's JSON part, read-only arrays viewing the mapped file: they keep the
    mapping alive)."""
    with open(path, "rb") as f:
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if view[: len(_MAGIC)] != _MAGIC:
        raise ValueError("not a cache entry")
    n = int.from_bytes(view[len(_MAGIC) : len(_MAGIC) + 8], "little")
    limits = JsonLimits(max_bytes=1 << 30, max_depth=258)  # the metadata's 256 in a header
    head = read_json(view[len(_MAGIC) + 8 : len(_MAGIC) + 8 + n], str(path), limits)
    start = _aligned(len(_MAGIC) + 8 + n)
    arrays = {}
    for name, (dtype, shape, at) in head["arrays"].items():
        dt = np.dtype(dtype)
        if dt.hasobject or dt.kind not in "biu":
            raise ValueError(f"array {name} of dtype {dtype}")
        count = int(np.prod(shape, dtype=np.int64))
        a = np.frombuffer(view, dt, count, start + int(at))  # raises past the file's end
        arrays[name] = a.reshape(shape)
    return head["meta"], arrays


def _unpack(meta: dict, arrays: dict) -> Metadata:
    offs, sizes = arrays["chunk_offsets"], arrays["chunk_sizes"]
    state = {}
    at = 0
    for entry in meta["entries"]:
        fqn = entry[0]
        if entry[1] is None:
            state[fqn] = BytesStorageMetadata()
            continue
        (dtype, layout, grad, mem, pin, strides), size, n = entry[1], entry[2], entry[3]
        nd = len(size)
        props = TensorProperties(
            dtype, layout, grad, mem, pin, None if strides is None else tuple(strides)
        )
        tsm = TensorStorageMetadata(props, tuple(size))
        tsm.chunks = ChunkList(
            offs[at : at + n * nd].reshape(n, nd), sizes[at : at + n * nd].reshape(n, nd)
        )
        at += n * nd
        state[fqn] = tsm
    if at != len(offs):
        raise ValueError("chunk arrays do not match the entries")
    storage = None
    st = meta["storage"]
    if st is not None:
        storage = StorageColumns(
            fqns=st["fqns"],
            paths=st["paths"],
            transforms={int(r): _decode(v) for r, v in st["transforms"]},
            rows=(arrays["sd_keys"], arrays["sd_values"]),
            **{name: arrays["sd_" + name] for name in _STORAGE_ARRAYS},
        )
        _prime_rows(storage, state, arrays["sd_chunk_rows"])
    sm = meta["storage_meta"]
    return Metadata(
        state,
        _decode(meta["planner_data"]),
        storage,
        None if sm is None else StorageMeta(*(_decode(v) for v in sm)),
        _decode(meta["version"]),
    )


def _prime_rows(storage: StorageColumns, state: dict, rows: np.ndarray) -> None:
    """Hand ``storage`` the stored row of each chunk (`StorageColumns.chunk_rows` order: a
    bytes entry is one row) for the chunk arrays just built."""
    at = 0
    for fqn, e in state.items():
        if isinstance(e, BytesStorageMetadata):
            at += 1
            continue
        offsets = e.chunks.box_arrays[0]
        storage.prime_rows(fqn, offsets, rows[at : at + len(offsets)])
        at += len(offsets)
    if at != len(rows):
        raise ValueError("chunk rows do not match the entries")
