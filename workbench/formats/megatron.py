"""Reader of Megatron-Core ``dist_checkpointing`` checkpoints saved with the torch_dist backend.

Such a directory is a DCP checkpoint (``.metadata`` + ``__<rank>_<n>.distcp``) plus
``metadata.json`` (backend and versions) and ``common.pt`` (a ``torch.save`` of the non-sharded
state). Megatron's ``.metadata`` pickles more than torch's: ``all_local_plans`` (every rank's
local ``SavePlan`` of ``WriteItem`` / ``TensorWriteData`` records, after Megatron dropped the
non-main replicas and before torch's dedup), in releases before 0.14 ``MCoreSavePlan`` records
and ``mcore_data`` (``nd_reformulated_orig_global_shape`` of tensors saved with
``flattened_range``), in 0.15 a ``MCoreMetadata`` subclass. These globals are added to the
allow-list of `formats.dcp` by name, as harmless stand-ins, and read as plain data.

``common.pt`` is a zip whose ``data.pkl`` is read with its own small allow-list (plain builtins,
``OrderedDict``, ``argparse.Namespace``); anything else is refused, reported, and never run.

Tensors saved with ``flattened_range`` are stored as ``[X//x, Y//y, ..., x*y*...]`` tensors (a
grid of local blocks, the last dim a block's flattened elements); `FlattenedTensor` maps each
stored chunk back to the boxes of the model-shaped tensor it holds. Non-tensor objects
(``ShardedObject``) are stored as bytes entries ``key/shard_<offsets>_<shape>`` and grouped by key.

Must not import torch.
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import MetadataError, UnsafeCheckpointError
from ..geometry import Chunk
from ..records import (
    Metadata,
    MetadataIndex,
    SavePlan,
    TensorStorageMetadata,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from . import dcp
from .limits import read_json
from .location import Location, local_location

__all__ = [
    "MEGATRON_GLOBALS",
    "model_metadata",
    "MegatronInfo",
    "FlattenedTensor",
    "FlatPiece",
    "ObjectShard",
    "flat_range_boxes",
    "is_megatron",
    "read_megatron",
    "read_common",
    "MAX_JSON_BYTES",
]

_PLANNER = "torch.distributed.checkpoint.planner"
_MCORE = "megatron.core.dist_checkpointing.strategies.torch"
MAX_JSON_BYTES = 1 << 20  # metadata.json is ~120 bytes; refuse anything absurd before reading


def _write_item_type(*args):
    """``WriteItemType(value)``: how the enum pickles (REDUCE on the class)."""
    if len(args) != 1 or args[0] not in (1, 2, 3):
        raise MetadataError(
            None,
            f"WriteItemType is called with {args!r:.60}",
            "1, 2 or 3",
            "The .metadata is corrupt.",
        )
    return WriteItemType(args[0])


def _sub_stand_in(module: str, name: str, base: type) -> type:
    # a subclass of a DCP record's stand-in reads as that record (MCoreMetadata is a Metadata)
    return type(base)(name, (base,), {"torch_name": f"{module}.{name}"})


_SAVE_PLAN = dcp.stand_in(_PLANNER, "SavePlan")
_WRITE_ITEM = dcp.stand_in(_PLANNER, "WriteItem")
_TENSOR_WRITE_DATA = dcp.stand_in(_PLANNER, "TensorWriteData")
_BYTES_WRITE_DATA = dcp.stand_in(_PLANNER, "BytesIOWriteData")

# Globals a Megatron-Core .metadata adds to torch's (seen in the real files of 0.13.1 and 0.16.1).
MEGATRON_GLOBALS: dict[tuple[str, str], Any] = {
    (_PLANNER, "SavePlan"): _SAVE_PLAN,
    (_PLANNER, "WriteItem"): _WRITE_ITEM,
    (_PLANNER, "TensorWriteData"): _TENSOR_WRITE_DATA,
    (_PLANNER, "BytesIOWriteData"): _BYTES_WRITE_DATA,
    (_PLANNER, "WriteItemType"): dcp.Reducer(f"{_PLANNER}.WriteItemType", _write_item_type),
    (_MCORE, "MCoreSavePlan"): _sub_stand_in(_MCORE, "MCoreSavePlan", _SAVE_PLAN),
    (_MCORE, "MCoreMetadata"): _sub_stand_in(
        _MCORE, "MCoreMetadata", dcp.dcp_class(dcp.DCP_METADATA, "Metadata")
    ),
}


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class FlatPiece:
    """One stored chunk of a flattened tensor: ``stored`` as in the metadata; ``block``: the
    model-shaped local block it belongs to; ``start``/``stop``: its flat range inside that block
    (row-major); ``boxes``: the model-shaped boxes those elements fill, in flat order."""

    stored: Chunk
    block: Chunk
    start: int
    stop: int
    boxes: tuple[Chunk, ...]


@dataclass(frozen=True, slots=True)
class FlattenedTensor:
    """A tensor saved with ``flattened_range``: stored as ``stored_size`` ([X//x, ..., x*y*..]),
    its model shape ``shape`` (``nd_reformulated_orig_global_shape``), one `FlatPiece` per
    stored chunk."""

    fqn: str
    stored_size: tuple[int, ...]
    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    pieces: tuple[FlatPiece, ...]


@dataclass(frozen=True, slots=True)
class ObjectShard:
    """One ``ShardedObject`` shard, stored as the bytes entry ``fqn`` = ``key/shard_<o>_<s>``."""

    key: str
    fqn: str
    offsets: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class MegatronInfo:
    """What a Megatron-Core checkpoint records beyond DCP's `Metadata`."""

    metadata_json: dict | None
    local_plans: tuple[SavePlan, ...] | None
    mcore_data: dict
    flattened: dict[str, FlattenedTensor]
    objects: dict[str, tuple[ObjectShard, ...]]
    common: Any = None  # common.pt's state as plain data, None when unread
    common_error: str | None = None  # why common.pt was not read
    subclass: str | None = None  # "MCoreMetadata" when the metadata is Megatron's subclass
    notes: tuple[str, ...] = field(default=())

    @property
    def backend(self) -> str | None:
        return (self.metadata_json or {}).get("sharded_backend")

    @property
    def backend_version(self) -> int | None:
        return (self.metadata_json or {}).get("sharded_backend_version")

    @cached_property
    def _holders(self) -> dict[str, dict]:
        # one pass over every rank's plan (a 70B model on 1024 ranks has ~10^6 items)
        out: dict[str, dict] = {}
        for r, plan in enumerate(self.local_plans or ()):
            for it in plan.items:
                out.setdefault(it.index.fqn, {}).setdefault(it.index.offset, []).append(r)
        return out

    def held(self, fqn: str) -> dict[tuple[int, ...] | None, tuple[int, ...]]:
        """Ranks whose local plan holds each of ``fqn``'s chunks (by offset; None for bytes),
        from ``all_local_plans``: who held a chunk, whoever wrote it."""
        return {k: tuple(v) for k, v in self._holders.get(fqn, {}).items()}

    def facts(self) -> dict[str, Any]:
        """The format's own facts, for tables and the CLI."""
        out = {"format": "megatron torch_dist"}
        for k, v in (self.metadata_json or {}).items():
            out[k] = v
        if self.subclass:
            out["metadata class"] = self.subclass
        if self.local_plans is not None:
            out["local plans"] = len(self.local_plans)
        if self.flattened:
            out["flattened tensors"] = len(self.flattened)
        if self.objects:
            out["sharded objects"] = len(self.objects)
        if self.common is not None:
            keys = list(self.common) if isinstance(self.common, dict) else []
            out["common.pt keys"] = ", ".join(map(str, keys)) or "(none)"
        if self.common_error:
            out["common.pt"] = self.common_error
        return out


# ----------------------------------------------------------------------------- flat ranges
def flat_range_boxes(shape, start: int, stop: int) -> list[Chunk]:
    """The boxes (row-major, in flat order) that elements ``[start, stop)`` of a tensor of
    ``shape`` fill: at most ``2 * ndim - 1`` boxes (a partial first row, whole rows, a partial
    last row, recursively)."""
    shape = tuple(shape)
    if start >= stop:
        return []
    if len(shape) <= 1:
        return [Chunk((start,), (stop - start,))]
    inner = math.prod(shape[1:])
    r0, c0 = divmod(start, inner)
    r1, c1 = divmod(stop, inner)

    def row(r, a, b):
        return [Chunk((r, *c.offsets), (1, *c.sizes)) for c in flat_range_boxes(shape[1:], a, b)]

    if r0 == r1:
        return row(r0, c0, c1)
    out = []
    if c0:
        out += row(r0, c0, inner)
        r0 += 1
    if r1 > r0:
        out.append(Chunk((r0,) + (0,) * (len(shape) - 1), (r1 - r0, *shape[1:])))
    if c1:
        out += row(r1, 0, c1)
    return out


def _flattened(fqn: str, entry: TensorStorageMetadata, shape) -> FlattenedTensor:
    stored = tuple(entry.size)
    grid = stored[:-1]
    bad = (
        len(shape) != len(grid)
        or any(g <= 0 or s % g for s, g in zip(shape, grid))
        or math.prod(s // g for s, g in zip(shape, grid)) != stored[-1]
    )
    if bad:
        raise MetadataError(
            fqn,
            f"stored size {list(stored)} does not reformulate nd_reformulated_orig_global_shape "
            f"{list(shape)}",
            "[X//x, Y//y, ..., x*y*...] for a model shape [X, Y, ...]",
            "The .metadata is corrupt or from an unknown Megatron release.",
        )
    block = tuple(s // g for s, g in zip(shape, grid))
    pieces = []
    for c in entry.chunks:
        cell, start = c.offsets[:-1], c.offsets[-1]
        stop = start + c.sizes[-1]
        base = tuple(i * b for i, b in zip(cell, block))
        boxes = tuple(
            Chunk(tuple(o + b for o, b in zip(box.offsets, base)), box.sizes)
            for box in flat_range_boxes(block, start, stop)
        )
        pieces.append(
            FlatPiece(stored=c, block=Chunk(base, block), start=start, stop=stop, boxes=boxes)
        )
    return FlattenedTensor(
        fqn=fqn, stored_size=stored, shape=tuple(shape), block_shape=block, pieces=tuple(pieces)
    )


_OBJECT_KEY = re.compile(r"^(?P<key>.+)/shard_(?P<off>\d+(?:\.\d+)*)_(?P<shape>\d+(?:\.\d+)*)$")


def _objects(md: Metadata) -> dict[str, tuple[ObjectShard, ...]]:
    out: dict[str, list[ObjectShard]] = {}
    for fqn, entry in md.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            continue
        m = _OBJECT_KEY.match(fqn)
        if m:
            off = tuple(int(x) for x in m["off"].split("."))
            shp = tuple(int(x) for x in m["shape"].split("."))
            out.setdefault(m["key"], []).append(ObjectShard(m["key"], fqn, off, shp))
    return {k: tuple(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- plans
def _expect(cond, what):
    if not cond:
        raise dcp.CorruptMetadata(what)


def _chunk(c, what):
    _expect(isinstance(c, dcp.dcp_class(dcp.DCP_METADATA, "ChunkStorageMetadata")), what)
    return Chunk(
        dcp.convert_ints(c.field("offsets"), what), dcp.convert_ints(c.field("sizes"), what)
    )


def _write_item(it, r, i) -> WriteItem:
    what = f"all_local_plans[{r}] item #{i}"
    _expect(isinstance(it, _WRITE_ITEM), f"{what} is {it!r:.60}, not a WriteItem")
    index = dcp.convert_index(it.field("index"))
    kind = it.field("type")
    _expect(isinstance(kind, WriteItemType), f"{what}: type {kind!r:.40}")
    td = it.field("tensor_data")
    tensor_data = None
    if td is not None:
        _expect(isinstance(td, _TENSOR_WRITE_DATA), f"{what}: tensor_data {td!r:.60}")
        tensor_data = TensorWriteData(
            _chunk(td.field("chunk"), f"{what} chunk"),
            dcp.convert_properties(td.field("properties"), index.fqn),
            dcp.convert_ints(td.field("size"), f"{what} size"),
        )
    return WriteItem(index, kind, None, tensor_data)


def _local_plans(raw) -> tuple[SavePlan, ...]:
    _expect(isinstance(raw, list), f"all_local_plans is {type(raw).__name__}, not a list")
    plans = []
    for r, p in enumerate(raw):
        _expect(isinstance(p, _SAVE_PLAN), f"all_local_plans[{r}] is {p!r:.60}")
        items = p.field("items") or []
        _expect(isinstance(items, list), f"all_local_plans[{r}].items is not a list")
        plans.append(
            SavePlan(
                [_write_item(it, r, i) for i, it in enumerate(items)],
                planner_data=dcp.plain_data(p.field("planner_data"), {}),
                usable=bool(p.field("usable", default=True)),
            )
        )
    return tuple(plans)


# ----------------------------------------------------------------------------- common.pt
class _CommonStandIn(dcp.StandIn):
    """An allowed class of common.pt (argparse.Namespace): only its state is kept."""


_NAMESPACE = type(dcp.StandIn)("Namespace", (_CommonStandIn,), {"torch_name": "argparse.Namespace"})
_COMMON_GLOBALS = {
    ("argparse", "Namespace"): _NAMESPACE,
    ("collections", "OrderedDict"): dcp.ALLOWED_GLOBALS[("collections", "OrderedDict")],
    **{k: v for k, v in dcp.ALLOWED_GLOBALS.items() if k[0] == "builtins"},
}


class _CommonUnpickler(dcp.AllowListUnpickler):
    """common.pt's data.pkl within the .metadata reader's bounds, with its own globals."""

    def find_class(self, module, name):
        try:
            return _COMMON_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                None,
                f"common.pt asks for the global {module}.{name}",
                "plain builtins, OrderedDict and argparse.Namespace",
                "Nothing was executed; common.pt was not read.",
                global_name=f"{module}.{name}",
            ) from None

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(
            None,
            "common.pt holds tensor storage (a persistent id)",
            "plain data only",
            "Nothing was executed; common.pt was not read.",
            global_name="persistent_load",
        )


def _common_plain(obj, memo):
    if isinstance(obj, _CommonStandIn):
        st = obj.state if isinstance(obj.state, dict) else {}
        return {"__class__": obj.torch_name, **dcp.plain_data(st, memo)}
    if isinstance(obj, dict):
        return {k: _common_plain(v, memo) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_common_plain(v, memo) for v in obj)
    return obj


def read_common(path, max_bytes: int = 64 << 20, *, location: Location | None = None) -> Any:
    """``common.pt``'s state as plain data (an ``argparse.Namespace`` becomes a dict with
    ``"__class__"``), read with an allow-list; raises `UnsafeCheckpointError` / `MetadataError`
    (nothing is executed). With ``location`` (object storage), ``path`` is the file's name
    there: the archive's directory and ``data.pkl`` are read by ranged requests."""
    if location is not None:
        with location.open(path) as f:
            return _read_common(f, location.url_of(path), max_bytes)
    return _read_common(Path(path), Path(path), max_bytes)


def _read_common(source, path, max_bytes: int) -> Any:
    try:
        with zipfile.ZipFile(source) as z:
            names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1:
                raise MetadataError(
                    str(path),
                    f"the archive holds {len(names)} data.pkl entries",
                    "one, as torch.save writes",
                    "Re-copy common.pt.",
                )
            info = z.getinfo(names[0])
            if info.file_size > max_bytes:
                raise MetadataError(
                    str(path),
                    f"data.pkl is {info.file_size} bytes",
                    f"at most {max_bytes}",
                    "Nothing was read.",
                )
            data = z.read(names[0])
    except (zipfile.BadZipFile, OSError) as e:
        raise MetadataError(
            str(path),
            f"common.pt cannot be read as a torch.save archive: {e}",
            "a zip written by torch.save",
            "Re-copy common.pt.",
        ) from None
    try:
        raw = _CommonUnpickler(data, source="common.pt").load()
    except UnsafeCheckpointError as e:
        raise type(e)(str(path), e.what, e.expectation, e.fix, **e.facts) from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged pickle raises
        raise MetadataError(
            str(path), f"data.pkl is not a valid pickle: {type(e).__name__}: {e}"
        ) from None
    return _common_plain(raw, {})


# ----------------------------------------------------------------------------- entry points
def is_megatron(directory) -> bool:
    """A Megatron-Core checkpoint directory: ``metadata.json`` or ``common.pt`` beside the DCP
    files."""
    d = Path(directory)
    return (d / "metadata.json").is_file() or (d / "common.pt").is_file()


def _metadata_json(location: Location, files: dict[str, int]) -> tuple[dict | None, list[str]]:
    if "metadata.json" not in files:
        return None, [
            "metadata.json is missing (Megatron writes it last: the save did not finish or "
            "the file was not copied)"
        ]
    size = files["metadata.json"]
    if size > MAX_JSON_BYTES:
        return None, [f"metadata.json is {size} bytes (at most {MAX_JSON_BYTES}); not read"]
    try:
        data = read_json(location.read_bytes("metadata.json"))
    except (ValueError, UnicodeDecodeError) as e:
        return None, [f"metadata.json is not valid JSON: {e}"]
    if not isinstance(data, dict):
        return None, ["metadata.json is not a JSON object"]
    notes = []
    if data.get("sharded_backend") not in (None, "torch_dist"):
        notes.append(
            f"sharded_backend is {data.get('sharded_backend')!r}; only torch_dist is DCP-shaped"
        )
    return data, notes


def read_megatron(
    directory, location: Location | None = None, files: dict[str, int] | None = None
) -> tuple[Metadata, MegatronInfo]:
    """The DCP `Metadata` of a Megatron-Core torch_dist checkpoint, as stored (what torch's
    planners see), and the `MegatronInfo` of what Megatron records beyond it. With ``location``
    (object storage; ``directory`` its URL) and ``files`` (its listing: name -> size), the
    small files are fetched and ``common.pt`` read by ranged requests."""
    local = location is None
    if local:
        location = local_location(directory)
        files = {
            n: p.stat().st_size
            for n in (".metadata", "metadata.json", "common.pt")
            if (p := Path(directory) / n).is_file()
        }
    mj, notes = _metadata_json(location, files)
    if mj is not None and mj.get("sharded_backend") not in (None, "torch_dist"):
        raise MetadataError(
            location.url,
            f"Megatron sharded_backend {mj.get('sharded_backend')!r}",
            "torch_dist (the DCP-shaped backend)",
            "Only torch_dist checkpoints are DCP checkpoints; convert others with Megatron.",
        )
    mpath = location.url_of(".metadata")
    try:
        if ".metadata" not in files:
            raise FileNotFoundError(mpath)
        data = location.read_bytes(".metadata")
    except FileNotFoundError:
        raise MetadataError(
            str(mpath),
            "no such metadata file",
            "a Megatron torch_dist checkpoint holding .metadata",
            "The save did not finish (Megatron writes .metadata after the .distcp files), or "
            "point at the directory dist_checkpointing.save wrote.",
            path=str(mpath),
            reason="no_metadata",
        ) from None
    extras: dict = {}
    md = dcp.read_metadata_bytes(data, str(mpath), MEGATRON_GLOBALS, extras)
    try:
        plans = None
        if extras.get("all_local_plans") is not None:
            plans = _local_plans(extras["all_local_plans"])
        mcore = dcp.plain_data(extras.get("mcore_data") or {}, {})
        _expect(isinstance(mcore, dict), "mcore_data is not a dict")
    except (dcp.CorruptMetadata, MetadataError, RecursionError) as e:
        raise MetadataError(
            str(mpath),
            f"the Megatron records are corrupt: {e}",
            "all_local_plans of SavePlan records, mcore_data a dict",
            "Re-copy the checkpoint.",
        ) from None
    flattened = {}
    for fqn, d in mcore.items():
        shape = d.get("nd_reformulated_orig_global_shape") if isinstance(d, dict) else None
        entry = md.state_dict_metadata.get(fqn)
        if shape is not None and isinstance(entry, TensorStorageMetadata):
            flattened[fqn] = _flattened(fqn, entry, tuple(shape))
    common, common_error = None, None
    if "common.pt" in files:
        try:
            common = (
                read_common(Path(directory) / "common.pt")
                if local
                else read_common("common.pt", location=location)
            )
        except MetadataError as e:  # UnsafeCheckpointError included: reported, not raised
            common_error = str(e)
    cls = extras.get("__class__", "")
    subclass = cls.rsplit(".", 1)[-1] if cls.startswith("megatron.") else None
    info = MegatronInfo(
        metadata_json=mj,
        local_plans=plans,
        mcore_data=mcore,
        flattened=flattened,
        objects=_objects(md),
        common=common,
        common_error=common_error,
        subclass=subclass,
        notes=tuple(notes),
    )
    return md, info


def model_metadata(md: Metadata, info: MegatronInfo) -> Metadata:
    """``md`` with every flattened tensor in its model shape: one chunk per box of each stored
    piece (`FlatPiece.boxes`), so pictures and coverage use the shapes the model has. Storage
    entries are keyed by the boxes' offsets and point at their piece's bytes (Megatron's own
    loader reads the pieces; DCP's planners only ever see the stored form)."""
    if not info.flattened:
        return md
    sdm = dict(md.state_dict_metadata)
    storage = dict(md.storage_data or {})
    for fqn, ft in info.flattened.items():
        entry = sdm[fqn]
        chunks = []
        for p in ft.pieces:
            src = storage.get(MetadataIndex(fqn, p.stored.offsets))
            for box in p.boxes:
                chunks.append(box)
                if src is not None:
                    storage.setdefault(MetadataIndex(fqn, box.offsets), src)
        sdm[fqn] = TensorStorageMetadata(entry.properties, ft.shape, chunks)
    return Metadata(sdm, md.planner_data, storage, md.storage_meta, md.version)
