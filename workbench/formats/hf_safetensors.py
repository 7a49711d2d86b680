"""Reader of DCP's HuggingFace safetensors checkpoints (torch's ``HuggingFaceStorageWriter``)
and of plain HF ``model-*.safetensors`` directories: headers only, never the tensor bytes.

A safetensors file is an 8-byte little-endian header length, a JSON header, then the bytes. The
header maps each tensor to ``dtype`` (a code such as ``F32``), ``shape`` (the chunk's sizes) and
``data_offsets`` (its byte range after the header); DCP's writer adds ``__metadata__`` with
``DCP_SHARDING_INFO`` (``{fqn: {"saved_offsets": [...]}}``). The header length is checked
against the file's size before anything else is read, and headers are bounded like the
safetensors library bounds them (100 MB).

The records are the ones torch's ``HuggingFaceStorageReader.read_metadata`` builds: every
``*.safetensors`` file of the directory in listing order (the index is not used), its tensors
sorted by name (as ``safe_open(...).keys()`` lists them), one chunk per
(file, tensor) at its saved offsets (zeros without sharding info), and the tensor's size = the
largest ``offset + shape`` per dim over its chunks, so a missing last shard shrinks a tensor and
a missing middle one leaves a hole, without an error. Byte ranges are absolute in the file
(``8 + header length + data_offsets``). The index's ``weight_map`` is kept and compared.

Must not import torch.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MetadataError
from ..geometry import Chunk
from ..records import (
    DTYPE_SIZES,
    Metadata,
    MetadataIndex,
    StorageInfo,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from .limits import read_json
from .location import Location, local_location

__all__ = [
    "HF_DTYPES",
    "MAX_HEADER_BYTES",
    "INDEX_NAME",
    "SafetensorsHeader",
    "HfInfo",
    "is_hf",
    "read_header",
    "read_hf",
    "hf_writer_of_file",
]

# safetensors' dtype codes -> torch dtype names (safetensors.torch._TYPES)
HF_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2": "float8_e5m2",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "C64": "complex64",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
MAX_INDEX_BYTES = 64 << 20
INDEX_NAME = "model.safetensors.index.json"
SUFFIX = ".safetensors"
_SHARD_FILE = re.compile(r"^shard-(\d+)-model-\d+-of-\d+\.safetensors$")


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """One file's header: ``tensors[fqn] = (dtype name, shape, (begin, end))`` with byte offsets
    absolute in the file; ``offsets[fqn]`` from DCP_SHARDING_INFO (None without it)."""

    file: str
    file_size: int
    header_length: int
    tensors: dict
    offsets: dict | None
    metadata: dict


@dataclass(frozen=True)
class HfInfo:
    """What an HF directory records beyond the chunks: its files' headers, the index's weight
    map, and which layout it is (``distributed``: ``shard-*`` files of save_distributed;
    ``consolidated``: model files beside a ``sharded/`` directory; ``plain``: model files)."""

    layout: str
    headers: tuple[SafetensorsHeader, ...]
    weight_map: dict | None
    total_size: int | None
    dcp_version: str | None
    notes: tuple[str, ...] = field(default=())

    def facts(self) -> dict:
        out = {
            "format": f"huggingface safetensors ({self.layout})",
            "files": len(self.headers),
        }
        if self.dcp_version:
            out["DCP_VERSION"] = self.dcp_version
        if self.weight_map is not None:
            out[INDEX_NAME] = f"{len(self.weight_map)} weights, total_size {self.total_size}"
        return out


def _bad(path, what, expectation, fix="The file is damaged or not a safetensors file.", **kw):
    return MetadataError(str(path), what, expectation, fix, **kw)


def _header_bytes(read, size: int, path) -> tuple[int, bytes]:
    """The header's length and bytes, by ``read(start, length)``: 8 bytes, then the header."""
    head = read(0, 8)
    if len(head) < 8:
        raise _bad(path, f"the file is {size} bytes", "at least the 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    # checked before reading: a forged length must not make us read (or allocate) more
    if n > size - 8 or n > MAX_HEADER_BYTES:
        raise _bad(
            path,
            f"the header length is {n} bytes in a file of {size} bytes",
            f"at most the file size - 8 and at most {MAX_HEADER_BYTES}",
        )
    return n, read(8, n)


def read_header(
    path, *, location: Location | None = None, size: int | None = None
) -> SafetensorsHeader:
    """Read and check one safetensors header (never the tensor bytes). With ``location`` (object
    storage), ``path`` is the file's name there and ``size`` its size from the listing: two
    ranged reads, the 8-byte length and the header."""
    if location is not None:
        name, path = path, location.url_of(path)
        n, raw = _header_bytes(lambda s, k: location.read_range(name, s, k), size, path)
    else:
        path = Path(path)
        name, size = path.name, path.stat().st_size
        with open(path, "rb") as f:
            # the two reads are consecutive (0:8, then 8:8+n): the file is read straight on
            n, raw = _header_bytes(lambda _start, k: f.read(k), size, path)
    try:
        header = read_json(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(path, f"the header is not valid JSON: {e}", "a JSON object") from None
    if not isinstance(header, dict):
        raise _bad(path, "the header is not a JSON object", "{name: {dtype, shape, data_offsets}}")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _bad(path, "__metadata__ is not a map of strings", "{str: str}")
    start = 8 + n
    tensors = {}
    for fqn, t in header.items():
        if not isinstance(t, dict):
            raise _bad(path, f"{fqn}: entry {t!r:.60}", "{dtype, shape, data_offsets}")
        dtype, shape, offs = t.get("dtype"), t.get("shape"), t.get("data_offsets")
        if dtype not in HF_DTYPES:
            raise _bad(path, f"{fqn}: dtype code {dtype!r}", "one of " + ", ".join(HF_DTYPES))
        ok = (
            isinstance(shape, list)
            and all(type(v) is int and v >= 0 for v in shape)
            and isinstance(offs, list)
            and len(offs) == 2
            and all(type(v) is int for v in offs)
            and 0 <= offs[0] <= offs[1]
        )
        if not ok:
            raise _bad(
                path,
                f"{fqn}: shape {shape!r:.60} / data_offsets {offs!r:.60}",
                "a list of sizes >= 0 and [begin, end] with 0 <= begin <= end",
            )
        tensors[fqn] = (HF_DTYPES[dtype], tuple(shape), (start + offs[0], start + offs[1]))
    offsets = None
    info = meta.get("DCP_SHARDING_INFO")
    if info is not None:
        try:
            parsed = read_json(info)
        except ValueError as e:
            raise _bad(path, f"DCP_SHARDING_INFO is not valid JSON: {e}", "a JSON object") from None
        offsets = {}
        for fqn, (_dtype, shape, _) in tensors.items():
            o = (parsed.get(fqn) or {}).get("saved_offsets") if isinstance(parsed, dict) else None
            ok = (
                isinstance(o, list)
                and len(o) == len(shape)
                and all(type(v) is int and v >= 0 for v in o)
            )
            if not ok:
                raise _bad(
                    path,
                    f"{fqn}: DCP_SHARDING_INFO saved_offsets {o!r:.60}",
                    f"{len(shape)} offsets >= 0, one per dim of shape {list(shape)}",
                )
            offsets[fqn] = tuple(o)
    return SafetensorsHeader(
        file=name,
        file_size=size,
        header_length=n,
        tensors=tensors,
        offsets=offsets,
        metadata=meta,
    )


def hf_writer_of_file(name: str) -> int | None:
    """The rank that wrote a ``shard-<rank+1>-model-...`` file; 0 for the single writer of
    ``model-*`` files (rank 0 writes them, or consolidates them)."""
    m = _SHARD_FILE.match(name)
    if m:
        return int(m.group(1)) - 1
    return 0 if name.endswith(SUFFIX) else None


def is_hf(directory) -> bool:
    d = Path(directory)
    return d.is_dir() and any(p.suffix == SUFFIX and p.is_file() for p in d.iterdir())


def _index(location: Location, files: dict[str, int]) -> tuple[dict | None, int | None, list]:
    if INDEX_NAME not in files:
        return None, None, []
    if files[INDEX_NAME] > MAX_INDEX_BYTES:
        return None, None, [f"{INDEX_NAME} is larger than {MAX_INDEX_BYTES} bytes; not read"]
    try:
        data = read_json(location.read_bytes(INDEX_NAME))
        wm = data["weight_map"]
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise ValueError("weight_map is not {name: file}")
        total = (data.get("metadata") or {}).get("total_size")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        return None, None, [f"{INDEX_NAME} is not a valid index: {e}"]
    return wm, total if type(total) is int else None, []


def read_hf(directory, location: Location | None = None) -> tuple[Metadata, HfInfo]:
    """The `Metadata` torch's ``HuggingFaceStorageReader(directory).read_metadata()`` builds
    (same chunks, sizes and order), with byte ranges, and the `HfInfo` of the directory. With
    ``location`` (object storage; ``directory`` its URL), the files come from the listing and
    each header from two ranged reads."""
    if location is None:
        location = local_location(directory)
        directory = Path(directory)
        # listing order, as torch's reader (FileSystem.ls = Path.iterdir): chunk order follows it
        files = [p for p in directory.iterdir() if p.name.endswith(SUFFIX) and p.is_file()]
        headers = [read_header(p) for p in files]
        listing = {
            p.name: p.stat().st_size
            for p in directory.iterdir()
            if p.name == INDEX_NAME and p.is_file()
        }
    else:
        listing = location.list()  # sorted by name, as fsspec's ls of a bucket lists
        files = [n for n in listing if n.endswith(SUFFIX)]
        headers = [read_header(n, location=location, size=listing[n]) for n in files]
    if not files:
        raise MetadataError(
            str(directory),
            "no *.safetensors file",
            "an HF safetensors checkpoint directory",
            "Point at the directory HuggingFaceStorageWriter wrote (the consolidated one, or "
            "its sharded/ subdirectory).",
            path=str(directory),
        )
    sdm: dict[str, TensorStorageMetadata] = {}
    storage: dict[MetadataIndex, StorageInfo] = {}
    for h in headers:
        # safetensors' safe_open(...).keys() lists a file's tensors sorted by name
        for fqn in sorted(h.tensors):
            dtype, shape, (b, e) = h.tensors[fqn]
            off = h.offsets[fqn] if h.offsets is not None else (0,) * len(shape)
            nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
            if e - b != nbytes:
                raise _bad(
                    location.url_of(h.file),
                    f"{fqn}: data_offsets span {e - b} bytes for shape {list(shape)} {dtype}",
                    f"{nbytes} bytes",
                )
            chunk = Chunk(off, shape)
            entry = sdm.get(fqn)
            if entry is None:
                sdm[fqn] = TensorStorageMetadata(
                    TensorProperties(dtype),
                    tuple(s + o for s, o in zip(shape, off)),
                    [chunk],
                )
            else:
                if len(off) != len(entry.size):
                    raise _bad(
                        directory / h.file,
                        f"{fqn}: a chunk of {len(off)} dims for a tensor of {len(entry.size)}",
                        "one rank per tensor across files",
                    )
                entry.chunks.append(chunk)
                entry.size = tuple(max(a, s + o) for a, s, o in zip(entry.size, shape, off))
            storage[MetadataIndex(fqn, off)] = StorageInfo(h.file, b, e - b)
    wm, total, notes = _index(location, listing)
    names = [h.file for h in headers]
    if any(_SHARD_FILE.match(n) for n in names):
        layout = "distributed"
    elif location.is_dir("sharded"):
        layout = "consolidated"
    else:
        layout = "plain"
    versions = {h.metadata.get("DCP_VERSION") for h in headers} - {None}
    md = Metadata(sdm, None, storage, StorageMeta(), None)
    info = HfInfo(
        layout=layout,
        headers=tuple(headers),
        weight_map=wm,
        total_size=total,
        dcp_version=", ".join(sorted(versions)) or None,
        notes=tuple(notes),
    )
    return md, info
