"""torch's DCP planner helpers, mirrored: same names minus the leading underscore, same argument
order, torch 2.13's exact results in torch's exact order.

Covers ``torch/distributed/checkpoint/planner_helpers.py``, ``resharding.py``,
``_dedup_save_plans.py`` and the plan-level functions of ``default_planner.py``. Functions take the
workbench's records and, where torch's would, torch's own objects (Tensor, DTensor,
ShardedTensor, ``ChunkStorageMetadata``, ``Metadata``, ``SavePlan`` ...): those are converted by
``torch_bridge.convert``, which imports torch only when such an object is passed. Results are
always workbench records.

The "value on one rank" that torch's state-dict helpers take is a `RankValue(layout, rank)`:
a `Layout` as one rank sees it. Where torch raises, these raise a `WorkbenchError` subclass whose
message contains torch's exact text (also kept as ``.torch_message`` / ``.torch_type``).

Imports sharding and the layers above it; never torch at module level.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import sys
from bisect import bisect_right, insort
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ChunkError, PlanError, WorkbenchError
from .geometry import Chunk, as_chunk, boxes_overlap
from .records import (
    BytesStorageMetadata,
    LoadItemType,
    LoadPlan,
    Metadata,
    MetadataIndex,
    ReadItem,
    SavePlan,
    TensorStorageMetadata,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from .sharding import RankValue, format_placements
from .sources import as_record, as_value, torch_tensor_kind
from .versions import semantics

__all__ = [
    # torch's message texts
    "torch_size_text",
    "missing_key_message",
    "size_mismatch_message",
    "invalid_metadata_message",
    # planner_helpers.py
    "compare_save_plans",
    "contains_usable_plan",
    "merge_delta_local_plans",
    "create_chunk_from_tensor",
    "chunk_for_shard",
    "sharded_tensor_metadata",
    "create_write_items_for_dtensor",
    "create_write_item_for_shard",
    "create_write_item_for_tensor",
    "create_write_item_for_bytesio",
    "create_read_item_for_byteio",
    "create_read_item_for_tensor",
    "create_read_items_for_chunk_list",
    "create_default_metadata_only_plan",
    "create_write_items",
    "create_chunk_from_dtensor",
    "create_chunk_list",
    "create_read_items",
    "init_state_dict",
    "iterate_state_dict",
    # resharding.py
    "check_shard_metadata_pair_overlap",
    "shards_get_overlap_region_wrt_saved_tensor",
    # _dedup_save_plans.py
    "dedup_save_plans",
    # default_planner.py
    "create_default_local_load_plan",
    "create_default_global_load_plan",
    "create_default_local_save_plan",
    "create_default_global_save_plan",
    "create_default_local_metadata",
    "check_box_overlap",
    "check_box_bounds",
    "validate_global_plan",
]

PARTIAL_MESSAGE = (
    "Any checkpointing related operations are not supported for DTensor with partial placements!"
)
_TSM_CLASS = "<class 'torch.distributed.checkpoint.metadata.TensorStorageMetadata'>"


# ----------------------------------------------------------------------------- values
def _torch_error(
    cls, fqn, torch_text: str, torch_type: str, expectation: str = "", fix: str = "", **facts
) -> WorkbenchError:
    """A workbench error carrying torch's exact message (``torch_type`` is what torch raises)."""
    return cls(
        fqn, torch_text, expectation, fix, torch_message=torch_text, torch_type=torch_type, **facts
    )


def _chunks(fqn: str, chunks) -> list[Chunk]:
    """`Chunk`s from chunks, torch records or (offsets, sizes) pairs; a malformed one is reported
    under ``fqn`` with its position."""
    out = []
    for i, c in enumerate(chunks):
        try:
            out.append(as_chunk(c))
        except ChunkError as e:
            raise ChunkError(
                fqn, f"chunk #{i}: {e.what}", e.expectation, e.fix, **e.facts
            ) from None
    return out


def _tensor_kind(obj) -> str | None:
    return obj.kind if isinstance(obj, RankValue) and obj.kind != "bytes" else None


def torch_size_text(shape) -> str:
    """A shape as torch prints it in its messages: ``torch.Size([4, 8])``."""
    return f"torch.Size({list(shape)})"


# what one line of validate_global_plan's errors says: the key and the kind of failure
VALIDATION_ERROR = re.compile(
    r"key:(?P<fqn>\S+) (?:has )?(?P<what>overlapping chunks|out of bounds chunk|"
    r"invalid fill)"
)


# torch 2.13's messages in create_default_local_load_plan / _create_read_items, written once
def missing_key_message(fqn: str) -> str:
    return f"Missing key in checkpoint state_dict: {fqn}."


def size_mismatch_message(fqn: str, saved, current) -> str:
    return (
        f"Size mismatch between saved {torch_size_text(saved)} and current: "
        f"{torch_size_text(current)} for {fqn}"
    )


def invalid_metadata_message(fqn: str) -> str:
    return f"Invalid checkpoint metadata for {fqn}, expected BytesStorageMetadata but found {_TSM_CLASS}"


def _check_partial(fqn: str, t: RankValue) -> None:
    """torch's ``DTensor._raise_if_contains_partial_placements``."""
    if t.layout.has_partial:
        raise _torch_error(
            PlanError,
            fqn,
            PARTIAL_MESSAGE,
            "ValueError",
            f"placements [{format_placements(t.layout.placements)}] contain Partial",
            "Reduce the DTensor (e.g. redistribute to Replicate) before saving or loading it.",
            placements=t.layout.placements,
        )


def _check_in_mesh(fqn: str, t: RankValue) -> None:
    """The workbench refuses a rank outside the DTensor's mesh where torch would record a
    malformed ``offsets=(), sizes=(0,)`` chunk (torch's local planners skip such ranks)."""
    if not t.in_mesh:
        raise PlanError(
            fqn,
            f"rank {t.rank} is not in the DTensor's mesh of shape {t.layout.mesh_shape}",
            "a rank with a mesh coordinate",
            "torch's local plans skip such ranks; do the same.",
            rank=t.rank,
            mesh_shape=t.layout.mesh_shape,
        )


# ----------------------------------------------------------------------------- plan caching
def compare_save_plans(plan: SavePlan, other_plan: SavePlan) -> bool:
    """torch's ``_compare_save_plans``: ``usable``, item count, per item ``type``, ``index`` (fqn,
    offset AND the ``index`` hint), presence of ``tensor_data``, its ``size`` and chunk. Dtype and
    other properties, ``bytes_io_data``, ``storage_data`` and ``planner_data`` are not compared."""
    plan, other_plan = as_record(plan), as_record(other_plan)
    if plan.usable != other_plan.usable or len(plan.items) != len(other_plan.items):
        return False
    for a, b in zip(plan.items, other_plan.items):
        if a.type != b.type:
            return False
        if (
            a.index.fqn != b.index.fqn
            or a.index.offset != b.index.offset
            or a.index.index != b.index.index
        ):
            return False
        ta, tb = a.tensor_data, b.tensor_data
        if (ta is None) != (tb is None):
            return False
        if ta is not None and (
            ta.size != tb.size
            or ta.chunk.offsets != tb.chunk.offsets
            or ta.chunk.sizes != tb.chunk.sizes
        ):
            return False
    return True


def contains_usable_plan(delta_plans: Sequence[SavePlan | None]) -> bool:
    """torch's ``_contains_usable_plan``: ``any(d and d.usable ...)`` (None counts as not usable)."""
    return any(d is not None and d.usable for d in delta_plans)


def merge_delta_local_plans(
    cached_plans: Sequence[SavePlan], delta_plans: Sequence[SavePlan | None]
) -> list:
    """torch's ``_merge_delta_local_plans``: per position the cached plan when the delta is an
    unusable plan, else the delta itself (None included); ``zip`` truncates to the shorter list.
    Returns the very objects picked (workbench or torch plans alike)."""
    return [
        cached if delta is not None and not delta.usable else delta
        for cached, delta in zip(cached_plans, delta_plans)
    ]


# ----------------------------------------------------------------------------- chunks and items
def create_chunk_from_tensor(tensor) -> Chunk:
    """torch's ``_create_chunk_from_tensor``: the full box ``([0]*ndim, size)``."""
    tensor = as_value(tensor)
    shape = tuple(tensor.size())
    return Chunk((0,) * len(shape), shape)


def chunk_for_shard(shard_md) -> Chunk:
    """torch's ``_chunk_for_shard``: a ShardMetadata (or a `Chunk`) as a chunk."""
    return as_chunk(shard_md)


def sharded_tensor_metadata(sharded_tensor, shard_md) -> TensorWriteData:
    """torch's ``_sharded_tensor_metadata``: chunk of the shard, the global size."""
    t = as_value(sharded_tensor)
    return TensorWriteData(
        chunk=chunk_for_shard(shard_md), properties=t.tensor_properties(), size=t.size()
    )


def create_chunk_from_dtensor(tensor) -> Chunk:
    """torch's ``_create_chunk_from_dtensor``: ``(offset, local_shape)`` of the rank's coordinate."""
    t = as_value(tensor)
    _check_in_mesh(None, t)
    return t.chunks()[0]


def create_write_items_for_dtensor(fqn: str, tensor) -> WriteItem:
    """torch's ``_create_write_items_for_dtensor``: one SHARD item, ``index=(fqn, offset)``,
    ``size`` the global shape. Like torch it does not check for Partial (its callers do)."""
    t = as_value(tensor)
    _check_in_mesh(fqn, t)
    chunk = t.chunks()[0]
    return WriteItem(
        index=MetadataIndex(fqn, chunk.offsets),
        type=WriteItemType.SHARD,
        tensor_data=TensorWriteData(chunk, t.tensor_properties(), t.size()),
    )


def create_write_item_for_shard(fqn: str, sharded_tensor, shard_md) -> WriteItem:
    """torch's ``_create_write_item_for_shard``."""
    chunk = chunk_for_shard(shard_md)
    return WriteItem(
        index=MetadataIndex(fqn, chunk.offsets),
        type=WriteItemType.SHARD,
        tensor_data=sharded_tensor_metadata(sharded_tensor, chunk),
    )


def create_write_item_for_tensor(fqn: str, tensor) -> WriteItem:
    """torch's ``_create_write_item_for_tensor``: one TENSOR item for the whole tensor."""
    t = as_value(tensor)
    chunk = create_chunk_from_tensor(t)
    return WriteItem(
        index=MetadataIndex(fqn, chunk.offsets),
        type=WriteItemType.TENSOR,
        tensor_data=TensorWriteData(chunk, t.tensor_properties(), chunk.sizes),
    )


def create_write_item_for_bytesio(fqn: str, bytes: Any) -> WriteItem:  # noqa: A002 (torch's name)
    """torch's ``_create_write_item_for_bytesio``: ``MetadataIndex(fqn)`` (offset None)."""
    return WriteItem(index=MetadataIndex(fqn), type=WriteItemType.BYTE_IO)


def create_read_item_for_byteio(
    dest_index, dest_offset, storage_index, storage_offset, length
) -> ReadItem:
    """torch's ``_create_read_item_for_byteio``: one-element offsets and lengths."""
    return ReadItem(
        LoadItemType.BYTE_IO,
        as_record(dest_index),
        (dest_offset,),
        as_record(storage_index),
        (storage_offset,),
        (length,),
    )


def create_read_item_for_tensor(
    dest_index, dest_offsets, storage_index, storage_offsets, lengths
) -> ReadItem:
    """torch's ``_create_read_item_for_tensor``."""
    return ReadItem(
        LoadItemType.TENSOR,
        as_record(dest_index),
        tuple(dest_offsets),
        as_record(storage_index),
        tuple(storage_offsets),
        tuple(lengths),
    )


def check_shard_metadata_pair_overlap(shard1, shard2) -> bool:
    """torch's ``resharding._check_shard_metadata_pair_overlap`` (= `geometry.boxes_overlap`)."""
    a, b = as_chunk(shard1), as_chunk(shard2)
    return boxes_overlap(a.offsets, a.sizes, b.offsets, b.sizes)


def shards_get_overlap_region_wrt_saved_tensor(
    saved_shard, current_shard
) -> list[tuple[int, int, int, int]]:
    """torch's ``resharding._shards_get_overlap_region_wrt_saved_tensor``: per dim
    ``(dim, offset in saved, offset in current, length)``."""
    s, c = as_chunk(saved_shard), as_chunk(current_shard)
    out = []
    for dim, (so, co, ss, cs) in enumerate(zip(s.offsets, c.offsets, s.sizes, c.sizes)):
        length = min(so + ss, co + cs) - max(co, so)
        if so > co:
            out.append((dim, 0, so - co, length))
        else:
            out.append((dim, co - so, 0, length))
    return out


def create_read_items_for_chunk_list(
    fqn: str, checkpoint_md, local_chunks, *, torch_version: str | None = None
) -> list[ReadItem]:
    """torch's ``create_read_items_for_chunk_list``: every overlapping (local, saved) pair.

    Order by ``torch_version`` (default `versions.default_torch_version`): through 2.10 the
    nested loop (locals in list order, then saved chunks in list order); from 2.11 the sweep
    line: locals by start on the sweep dim (stable), then within a local the saved chunks by
    ``(end on the sweep dim, index)``.

    The sweep dim is the first dim with the largest ``offset + size`` over all local and saved
    chunks (not the tensor's size); 0-d chunks sweep as ``[0, 1)``. Written as torch's loop, not
    as a sort, so that the order is torch's by construction. Chunks of different ranks (torch
    zips them into garbage reads) raise a `ChunkError`.
    """
    if not hasattr(checkpoint_md, "chunks"):
        raise PlanError(
            fqn,
            f"checkpoint metadata of type {type(checkpoint_md).__name__} has no chunks",
            "a TensorStorageMetadata",
            "Pass the checkpoint's entry for this fqn: metadata.state_dict_metadata[fqn].",
            md_type=type(checkpoint_md),
        )
    saved = _chunks(fqn, checkpoint_md.chunks)
    local = _chunks(fqn, local_chunks)
    items: list[ReadItem] = []
    if not local or not saved:
        return items
    ndim = local[0].ndim
    # torch zips per dim and would silently read garbage boxes from chunks of another rank
    odd = next((c for c in (*local, *saved) if c.ndim != ndim), None)
    if odd is not None:
        raise ChunkError(
            fqn,
            f"chunk {odd} has {odd.ndim} dims but local chunk {local[0]} has {ndim}",
            "local and saved chunks of one tensor rank",
            "Describe the wanted chunks in the checkpoint's tensor rank.",
            chunk=odd,
            ndim=ndim,
        )
    if semantics(torch_version).read_item_order == "nested":
        return [
            _read_item(fqn, lc, li, sc, si)
            for li, lc in enumerate(local)
            for si, sc in enumerate(saved)
            if boxes_overlap(lc.offsets, lc.sizes, sc.offsets, sc.sizes)
        ]
    sweep = 0
    if ndim > 1:
        best = 0
        for d in range(ndim):
            ext = max(c.offsets[d] + c.sizes[d] for c in (*local, *saved))
            if ext > best:
                best, sweep = ext, d
    if ndim == 0:
        saved_b = [(0, 1)] * len(saved)
        local_b = [(0, 1)] * len(local)
    else:
        saved_b = [(c.offsets[sweep], c.offsets[sweep] + c.sizes[sweep]) for c in saved]
        local_b = [(c.offsets[sweep], c.offsets[sweep] + c.sizes[sweep]) for c in local]
    saved_order = sorted(range(len(saved)), key=lambda i: saved_b[i][0])
    local_order = sorted(range(len(local)), key=lambda i: local_b[i][0])
    active: list[tuple[int, int]] = []
    ptr = 0
    for li in local_order:
        lc = local[li]
        l_start, l_end = local_b[li]
        cut = bisect_right(active, (l_start, -1))
        if cut:
            del active[:cut]
        while ptr < len(saved_order):
            si = saved_order[ptr]
            if saved_b[si][0] >= l_end:
                break
            insort(active, (saved_b[si][1], si))
            ptr += 1
        for _, si in active:
            sc = saved[si]
            if boxes_overlap(lc.offsets, lc.sizes, sc.offsets, sc.sizes):
                items.append(_read_item(fqn, lc, li, sc, si))
    return items


def _read_item(fqn: str, lc: Chunk, li: int, sc: Chunk, si: int) -> ReadItem:
    """The read item of an overlapping (local #li, saved #si) pair (torch's loop body)."""
    region = shards_get_overlap_region_wrt_saved_tensor(sc, lc)
    return ReadItem(
        LoadItemType.TENSOR,
        MetadataIndex(fqn, lc.offsets, li),
        tuple(r[2] for r in region),
        MetadataIndex(fqn, sc.offsets, si),
        tuple(r[1] for r in region),
        tuple(r[3] for r in region),
    )


def create_write_items(fqn: str, object: Any) -> list[WriteItem]:  # noqa: A002 (torch's name)
    """torch's ``_create_write_items``: DTensor -> one SHARD item (Partial raises), ShardedTensor
    -> one SHARD item per local shard, Tensor -> one TENSOR item, anything else -> BYTE_IO."""
    obj = as_value(object)
    kind = _tensor_kind(obj)
    if kind is None:
        return [create_write_item_for_bytesio(fqn, obj)]
    if obj.absent:
        raise PlanError(
            fqn,
            f"rank {obj.rank} does not hold this {kind}",
            "a rank that holds it",
            "Leave the key out of that rank's state dict.",
            rank=obj.rank,
        )
    if kind == "dtensor":
        _check_partial(fqn, obj)
        return [create_write_items_for_dtensor(fqn, obj)]
    if kind == "sharded":
        return [create_write_item_for_shard(fqn, obj, c) for c in obj.chunks()]
    return [create_write_item_for_tensor(fqn, obj)]


def create_chunk_list(tensor) -> list[Chunk]:
    """torch's ``_create_chunk_list``: the chunks a rank wants. A non-tensor raises torch's
    ``Unsupported Type`` ValueError text."""
    obj = as_value(tensor)
    kind = _tensor_kind(obj)
    if kind is None:
        text = (
            "Unsupported Type, expecting one of [Tensor, DTensor, ShardedTensor] "
            f",but got {type(obj)}"
        )
        raise _torch_error(
            PlanError,
            None,
            text,
            "ValueError",
            "a tensor value",
            "Only tensors have chunks.",
            value_type=type(obj),
        )
    if kind == "dtensor":
        _check_partial(None, obj)
        return [create_chunk_from_dtensor(obj)]
    if kind == "sharded":
        return list(obj.chunks())
    return [create_chunk_from_tensor(obj)]


def create_read_items(
    fqn: str, md, obj: Any, *, torch_version: str | None = None
) -> list[ReadItem]:
    """torch's ``_create_read_items``: bytes metadata -> one BYTE_IO item (whatever the value);
    tensor metadata -> `create_read_items_for_chunk_list`. As in torch, a value without chunks
    (and a Partial DTensor) reports ``Invalid checkpoint metadata ... expected
    BytesStorageMetadata``, chained from the real cause."""
    md = as_record(md)
    if isinstance(md, BytesStorageMetadata):
        return [create_read_item_for_byteio(MetadataIndex(fqn), 0, MetadataIndex(fqn), 0, 0)]
    if not isinstance(md, TensorStorageMetadata):
        raise PlanError(
            fqn,
            f"checkpoint metadata {md!r} of type {type(md).__name__} is not storage metadata",
            "a TensorStorageMetadata or BytesStorageMetadata",
            "Pass metadata.state_dict_metadata[fqn].",
            md_type=type(md),
        )
    try:
        local_chunks = create_chunk_list(obj)
    except WorkbenchError as ex:
        if getattr(ex, "torch_type", None) != "ValueError":
            raise
        text = invalid_metadata_message(fqn)
        raise _torch_error(
            PlanError,
            fqn,
            text,
            "ValueError",
            f"cause: {ex.what}",
            "The checkpoint holds a tensor here; give a tensor value (not Partial).",
            cause=ex,
        ) from ex
    return create_read_items_for_chunk_list(fqn, md, local_chunks, torch_version=torch_version)


def create_default_metadata_only_plan(state_dict: dict) -> SavePlan:
    """torch's ``_create_default_metadata_only_plan``: like the local save plan, except that a
    ShardedTensor contributes ALL shards of its global metadata (rank order) and Partial is not
    checked."""
    items: list[WriteItem] = []
    for fqn, obj in state_dict.items():
        obj = as_value(obj)
        kind = _tensor_kind(obj)
        if isinstance(obj, RankValue) and obj.absent:
            continue
        if kind == "dtensor":
            items.append(create_write_items_for_dtensor(fqn, obj))
        elif kind == "sharded":
            items.extend(
                create_write_item_for_shard(fqn, obj, c)
                for cs in obj.layout.rank_chunks
                for c in cs
            )
        elif kind == "tensor":
            items.append(create_write_item_for_tensor(fqn, obj))
        else:
            items.append(create_write_item_for_bytesio(fqn, obj))
    return SavePlan(items)


# ----------------------------------------------------------------------------- state dicts
def iterate_state_dict(
    iter_object: Any, dtensor_func: Callable, sharded_tensor_func: Callable, tensor_func: Callable
):
    """torch's ``_iterate_state_dict``: DTensor / ShardedTensor / Tensor values (RankValues by
    kind, or real torch tensors) go through their function; int, float, str, bytes, BytesIO, None
    and bytes RankValues come back unchanged; dicts are rewritten IN PLACE; lists and tuples
    come back new; every other type becomes None (torch's hazard: a set or a custom object is
    replaced by None before loading)."""
    funcs = {"dtensor": dtensor_func, "sharded": sharded_tensor_func, "tensor": tensor_func}
    if isinstance(iter_object, RankValue):
        fn = funcs.get(iter_object.kind)
        return iter_object if fn is None else fn(iter_object)
    kind = torch_tensor_kind(iter_object)
    if kind is not None:
        return funcs[kind](iter_object)
    if isinstance(iter_object, (int, float, str, bytes, io.BytesIO)) or iter_object is None:
        return iter_object
    if isinstance(iter_object, dict):
        for key, value in iter_object.items():
            iter_object[key] = iterate_state_dict(
                value, dtensor_func, sharded_tensor_func, tensor_func
            )
        return iter_object
    if isinstance(iter_object, (list, tuple)):
        ret = [
            iterate_state_dict(v, dtensor_func, sharded_tensor_func, tensor_func)
            for v in iter_object
        ]
        return tuple(ret) if isinstance(iter_object, tuple) else ret
    return None


def init_state_dict(state_dict: dict) -> None:
    """torch's ``_init_state_dict``: walks the state dict with `iterate_state_dict`, mutating it
    in place and returning None. Its visible effects are mirrored: unknown leaf types become None,
    and a meta-device ShardedTensor raises torch's ``Found unsupported type ... for meta device
    loading.``. Meta Tensors / DTensors are left as they are (torch fills them with
    ``torch.empty_like`` garbage on the process group's device; nothing to plan from that)."""

    def sharded(value):
        if str(getattr(value, "device", None)) == "meta":
            raise _torch_error(
                PlanError,
                None,
                f"Found unsupported type {type(value)} for meta device loading.",
                "RuntimeError",
                "a materialised ShardedTensor",
                "Materialise ShardedTensors before loading into them.",
            )
        return value

    iterate_state_dict(state_dict, lambda v: v, sharded, lambda v: v)


# ----------------------------------------------------------------------------- dedup
def dedup_save_plans(
    all_plans: Sequence[SavePlan],
    save_to_lowest_rank: bool = False,
    *,
    torch_version: str | None = None,
) -> list[SavePlan]:
    """torch's ``_dedup_save_plans.dedup_save_plans``: every key ``(fqn, offset)`` held by several
    plans stays in one. Keys are visited in first-appearance order; the writer is ``min(S)``
    (``save_to_lowest_rank``) or the least-loaded plan, ties broken by ``min`` over a real Python
    ``set`` built in plan order (CPython set order, NOT lowest rank once indices >= 8 collide).
    The winner is charged the GLOBAL tensor's bytes of the last item seen with that key (1 for
    BYTE_IO or 0 bytes). Plans keep their item order, filtered.

    The same in every supported ``torch_version`` (2.8 rewrote it without changing a result;
    recorded); the argument is checked and kept for symmetry with the other helpers."""
    semantics(torch_version)
    all_plans = [as_record(p) for p in all_plans]
    where: dict[MetadataIndex, set[int]] = defaultdict(set)
    last_item: dict[MetadataIndex, WriteItem] = {}
    keep = [{item.index for item in plan.items} for plan in all_plans]
    for p, plan in enumerate(all_plans):
        for item in plan.items:
            where[item.index].add(p)
            last_item[item.index] = item
    load = [0] * len(all_plans)
    for key, plans in where.items():
        sel = min(plans) if save_to_lowest_rank else min(plans, key=lambda p: load[p])
        load[sel] += last_item[key].tensor_storage_size() or 1
        for p in plans - {sel}:
            keep[p].discard(key)
    return [
        dataclasses.replace(plan, items=[it for it in plan.items if it.index in kept])
        for plan, kept in zip(all_plans, keep)
    ]


# ----------------------------------------------------------------------------- default planner
def create_default_local_save_plan(state_dict: dict, is_coordinator: bool) -> SavePlan:
    """torch's ``create_default_local_save_plan``: every rank plans every entry in state-dict
    order (``is_coordinator`` is ignored, as in torch); a DTensor whose rank is outside its mesh
    contributes nothing; absent `RankValue` values are skipped."""
    items: list[WriteItem] = []
    for fqn, obj in state_dict.items():
        obj = as_value(obj)
        if isinstance(obj, RankValue) and (
            obj.absent or (obj.kind == "dtensor" and not obj.in_mesh)
        ):
            continue
        items += create_write_items(fqn, obj)
    return SavePlan(items)


def create_default_global_save_plan(
    all_plans: Sequence[SavePlan],
    rewrite_index_hints: bool = True,
    *,
    torch_version: str | None = None,
) -> tuple[list[SavePlan], Metadata]:
    """torch's ``create_default_global_save_plan``: the metadata's chunk list of each fqn is the
    concatenation of its items' chunks in (plan, item) order; ``size`` and ``properties`` come
    from the first item seen; index hints are rewritten to chunk positions. Returns
    ``(plans, metadata)``. A TENSOR / BYTE_IO fqn seen twice raises torch's (inverted) text
    ``item.index.fqn not in md``. The same result in every supported ``torch_version``
    (recorded); the argument is checked."""
    semantics(torch_version)
    md: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
    new_plans = []
    for plan in (as_record(p) for p in all_plans):
        new_items = []
        for item in plan.items:
            fqn = item.index.fqn
            if item.type != WriteItemType.SHARD and fqn in md:
                raise _torch_error(
                    PlanError,
                    fqn,
                    "item.index.fqn not in md",
                    "AssertionError",
                    f"a {item.type.name} entry appears once over all plans",
                    "Deduplicate the plans first (dedup_save_plans).",
                )
            if item.type == WriteItemType.BYTE_IO:
                md[fqn] = BytesStorageMetadata()
                new_items.append(item)
                continue
            if item.tensor_data is None:
                raise _torch_error(
                    PlanError,
                    fqn,
                    "item.tensor_data is not None",
                    "AssertionError",
                    "tensor items carry tensor_data",
                )
            tmd = md.setdefault(
                fqn, TensorStorageMetadata(item.tensor_data.properties, item.tensor_data.size, [])
            )
            if rewrite_index_hints:
                item = dataclasses.replace(
                    item, index=MetadataIndex(fqn, item.index.offset, len(tmd.chunks))
                )
            new_items.append(item)
            tmd.chunks.append(item.tensor_data.chunk)
        new_plans.append(dataclasses.replace(plan, items=new_items))
    return new_plans, Metadata(md)


def create_default_local_metadata(state_dict: dict) -> Metadata:
    """torch's ``_create_default_local_metadata``: the metadata of a metadata-only plan."""
    return create_default_global_save_plan([create_default_metadata_only_plan(state_dict)])[1]


def create_default_global_load_plan(all_plans: Sequence[LoadPlan]) -> list[LoadPlan]:
    """torch's ``create_default_global_load_plan``: the local plans, unchanged."""
    return all_plans


def check_box_overlap(box0, box1) -> bool:
    """torch's ``default_planner._check_box_overlap`` (the same predicate as resharding's)."""
    return check_shard_metadata_pair_overlap(box0, box1)


def check_box_bounds(outer_box_size: Sequence[int], inner_box) -> bool:
    """torch's ``_check_box_bounds``: offsets >= 0, sizes >= 0, end <= the dim, per dim."""
    c = as_chunk(inner_box)
    return all(
        c.offsets[i] >= 0 and c.sizes[i] >= 0 and c.offsets[i] + c.sizes[i] <= outer_box_size[i]
        for i in range(len(outer_box_size))
    )


# The texts torch 2.4 - 2.11 log (multi-line: the indentation of their source is part of them).
_OLD_BOUNDS = (
    "\n"
    + " " * 24
    + "key:{key} has out of bounds chunk:\n"
    + " " * 24
    + "tensor-size:{size} chunk: {chunk}\n"
    + " " * 20
)
_OLD_FILL = (
    "\n"
    + " " * 20
    + "key:{key} invalid fill tensor-volume:\n"
    + " " * 20
    + "{tv} chunks-volume: {cv}\n"
    + " " * 16
)


def validate_global_plan(
    global_plan: Sequence[SavePlan], metadata: Metadata, *, torch_version: str | None = None
) -> list[str]:
    """torch's ``_validate_global_plan``: the error strings (empty = valid), exact text and
    order. Per tensor key in metadata order (bytes and 0-d skipped): out-of-bounds chunks, then
    overlaps, then the fill check by volume.

    By ``torch_version`` (see `versions.TorchSemantics`): 2.12+ returns these strings; 2.4 - 2.11
    return a bool and *log* the same findings, in their own (multi-line) texts, which are what is
    returned here. Overlaps: 2.4 - 2.9 check each chunk against every later one, right after its
    bounds check (``key:k has overlapping chunks: i j``); 2.10+ sweep on the first dim of largest
    global size (current chunk printed first). The fill check runs only for several plans from
    2.9."""
    sem = semantics(torch_version)
    old_text = not sem.validation_returns_errors
    metadata = as_record(metadata)
    errors: list[str] = []
    for key, value in metadata.state_dict_metadata.items():
        if isinstance(value, BytesStorageMetadata) or len(value.size) == 0:
            continue
        size = value.size
        chunks = value.chunks
        volume = 0
        for i, chunk in enumerate(chunks):
            if chunk.ndim != len(size):
                raise ChunkError(
                    key,
                    f"chunk {chunk} has {chunk.ndim} dims for a tensor of size {size}",
                    "chunks of the tensor's rank",
                    "Fix the metadata's chunk list.",
                    chunk=chunk,
                    size=size,
                )
            if not check_box_bounds(size, chunk):
                if old_text:
                    errors.append(
                        _OLD_BOUNDS.format(
                            key=key, size=torch_size_text(size), chunk=chunk.torch_repr()
                        )
                    )
                else:
                    errors.append(
                        f"key:{key} has out of bounds chunk: tensor-size:{torch_size_text(size)} "
                        f"chunk: {chunk.torch_repr()}"
                    )
            volume += math.prod(chunk.sizes)
            if sem.validation_overlap == "pairwise":
                for other in chunks[i + 1 :]:
                    if boxes_overlap(chunk.offsets, chunk.sizes, other.offsets, other.sizes):
                        errors.append(_overlap_text(key, chunk, other))
        if len(chunks) > 1 and sem.validation_overlap == "sweep":
            errors += _sweep_overlaps(key, size, chunks)
        tensor_volume = math.prod(size)
        if (len(global_plan) > 1 or sem.validation_fill_single_plan) and volume != tensor_volume:
            if old_text:
                errors.append(_OLD_FILL.format(key=key, tv=tensor_volume, cv=volume))
            else:
                errors.append(
                    f"key:{key} invalid fill tensor-volume: {tensor_volume} chunks-volume: {volume}"
                )
    return errors


def _overlap_text(key: str, a: Chunk, b: Chunk) -> str:
    return f"key:{key} has overlapping chunks: {a.torch_repr()} {b.torch_repr()}"


def _sweep_overlaps(key: str, size, chunks) -> list[str]:
    """2.10+'s overlap check: sweep line on the first dim of largest global size."""
    errors = []
    sw = max(range(len(size)), default=0, key=lambda d: size[d])
    order = sorted(range(len(chunks)), key=lambda i: (chunks[i].offsets[sw], *chunks[i].offsets))
    active: list[tuple[int, int]] = []
    for i in order:
        cur = chunks[i]
        start = cur.offsets[sw]
        cut = bisect_right(active, (start, sys.maxsize))
        if cut:
            del active[:cut]
        for _, j in active:
            other = chunks[j]
            if boxes_overlap(cur.offsets, cur.sizes, other.offsets, other.sizes):
                errors.append(_overlap_text(key, cur, other))
        insort(active, (start + cur.sizes[sw], i))
    return errors


def create_default_local_load_plan(
    state_dict: dict, metadata: Metadata, strict: bool = True, *, torch_version: str | None = None
) -> LoadPlan:
    """torch's ``create_default_local_load_plan``: per entry in state-dict order, torch's checks
    and messages (missing key when ``strict``, size mismatch, tensor metadata for a non-tensor,
    Partial), then `create_read_items`. A DTensor whose rank is outside its mesh is checked but
    reads nothing; absent `RankValue` values are skipped. No dtype check, as in torch.

    ``torch_version`` 2.4 / 2.5 have no size check: the value's chunks are read against the saved
    ones as they are (a value of another tensor rank is compared dim by dim over the value's dims,
    as torch's ``_check_shard_metadata_pair_overlap`` does: fewer dims read truncated boxes, more
    dims raise torch's ``IndexError``)."""
    sem = semantics(torch_version)
    metadata = as_record(metadata)
    sdm = metadata.state_dict_metadata
    items: list[ReadItem] = []
    for fqn, obj in state_dict.items():
        obj = as_value(obj)
        if isinstance(obj, RankValue) and obj.absent:
            continue
        if fqn not in sdm:
            if strict:
                raise _torch_error(
                    PlanError,
                    fqn,
                    missing_key_message(fqn),
                    "RuntimeError",
                    "every requested key is in the checkpoint",
                    "Load with allow_partial_load=True (strict=False) or drop the key.",
                )
            continue
        md = sdm[fqn]
        mismatch = (
            isinstance(md, TensorStorageMetadata)
            and _tensor_kind(obj) is not None
            and md.size != obj.size()
        )
        if mismatch and sem.size_mismatch_raises:
            raise _torch_error(
                PlanError,
                fqn,
                size_mismatch_message(fqn, md.size, obj.size()),
                "ValueError",
                "the same global shape",
                "Load into a tensor of the saved shape.",
                saved_size=md.size,
                current_size=obj.size(),
            )
        if _tensor_kind(obj) == "dtensor" and not obj.in_mesh:
            continue
        if mismatch and len(md.size) != len(obj.size()):
            items += _zip_read_items(fqn, md, create_chunk_list(obj))
            continue
        items += create_read_items(fqn, md, obj, torch_version=sem.version)
    return LoadPlan(items)


def _zip_read_items(fqn: str, md: TensorStorageMetadata, local: list[Chunk]) -> list[ReadItem]:
    """torch 2.4 / 2.5's nested loop on chunks of different tensor ranks: the overlap test runs
    over the LOCAL chunk's dims (an IndexError when a saved chunk has fewer), the region zips."""
    saved = _chunks(fqn, md.chunks)
    items = []
    for li, lc in enumerate(local):
        for si, sc in enumerate(saved):
            if lc.ndim > sc.ndim:
                raise _torch_error(
                    PlanError,
                    fqn,
                    "tuple index out of range",
                    "IndexError",
                    f"saved chunk {sc} has fewer dims than the wanted chunk {lc}",
                    "Load into a tensor of the saved shape.",
                )
            if boxes_overlap(lc.offsets, lc.sizes, sc.offsets, sc.sizes):
                items.append(_read_item(fqn, lc, li, sc, si))
    return items
