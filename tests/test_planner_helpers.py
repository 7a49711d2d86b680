"""Differential tests: every mirrored planner helper against the installed torch 2.13 on random
inputs, item by item and in order (index hints included, which ``==`` ignores)."""

from __future__ import annotations

import logging
import math
import random

import pytest
import torch
import torch.distributed.checkpoint.default_planner as TD
import torch.distributed.checkpoint.planner_helpers as TH
from hypothesis import given, settings
from hypothesis import strategies as st
from support import metadata_key as md_key
from support import read_key, write_key
from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans as torch_dedup
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch_support import fake_rank

from workbench import planner_helpers as H
from workbench.errors import PlanError, WorkbenchError
from workbench.geometry import Chunk
from workbench.records import (
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    SavePlan,
    TensorProperties,
    TensorStorageMetadata,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from workbench.sharding import (
    Partial,
    Replicate,
    Shard,
    StridedShard,
    bytes_layout,
    dtensor_layout,
    tensor_layout,
)
from workbench.torch_bridge.convert import from_torch, placement_to_torch, to_torch

# torch's validator logs every error at WARNING; the strings are what we compare.
logging.getLogger("torch.distributed.checkpoint.default_planner").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------- comparison keys
# canonical forms of records (workbench or torch): one definition, in support.py


def plans_key(plans):
    return [(p.usable, [write_key(i) for i in p.items]) for p in plans]


# ----------------------------------------------------------------------------- strategies
@st.composite
def grid_chunks(draw, shape):
    """A tiling of ``shape`` from random cut points, shuffled, some tiles dropped (holes), some
    random boxes added (overlaps, zero-size, poking out of bounds)."""
    cuts = []
    for d in shape:
        pts = sorted(set(draw(st.lists(st.integers(0, d), max_size=3))) | {0, d})
        cuts.append(list(zip(pts[:-1], pts[1:])) or [(0, 0)])
    tiles = [Chunk((), ())]
    for iv in cuts:
        tiles = [Chunk(t.offsets + (a,), t.sizes + (b - a,)) for t in tiles for a, b in iv]
    rnd = random.Random(draw(st.integers(0, 2**16)))
    rnd.shuffle(tiles)
    keep = [t for t in tiles if draw(st.integers(0, 9)) > 0]
    for _ in range(draw(st.integers(0, 3))):
        offs = tuple(draw(st.integers(0, d)) for d in shape)
        sizes = tuple(draw(st.integers(0, d - o + 1)) for d, o in zip(shape, offs))
        keep.insert(draw(st.integers(0, len(keep))), Chunk(offs, sizes))
    return keep[:12]


@st.composite
def read_cases(draw):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.integers(0, 9)) for _ in range(ndim))
    saved = draw(grid_chunks(shape))
    local = draw(grid_chunks(shape))[:6]
    return shape, saved, local


DTYPES = ["float32", "bfloat16", "int64", "uint8"]


@st.composite
def raw_save_plans(draw, max_ranks=12):
    """Random per-rank SavePlans over a shared pool of items (duplicates across and within
    plans, BYTE_IO items, tensors of different byte sizes, zero-size chunks)."""
    pool = []
    for t in range(draw(st.integers(1, 4))):
        fqn = f"t{t}"
        if draw(st.integers(0, 4)) == 0:
            pool.append(WriteItem(MetadataIndex(fqn), WriteItemType.BYTE_IO))
            continue
        shape = tuple(draw(st.integers(0, 12)) for _ in range(draw(st.integers(0, 2))))
        dtype = draw(st.sampled_from(DTYPES))
        if draw(st.booleans()):
            pool.append(
                WriteItem(
                    MetadataIndex(fqn, (0,) * len(shape)),
                    WriteItemType.TENSOR,
                    tensor_data=TensorWriteData(
                        Chunk((0,) * len(shape), shape), TensorProperties(dtype), shape
                    ),
                )
            )
            continue
        for c in draw(grid_chunks(shape))[:5]:
            pool.append(
                WriteItem(
                    MetadataIndex(fqn, c.offsets),
                    WriteItemType.SHARD,
                    tensor_data=TensorWriteData(c, TensorProperties(dtype), shape),
                )
            )
    pool = pool or [WriteItem(MetadataIndex("b"), WriteItemType.BYTE_IO)]
    n = draw(st.integers(1, max_ranks))
    idx = st.integers(0, len(pool) - 1)
    plans = [
        SavePlan([pool[i] for i in draw(st.lists(idx, max_size=len(pool) + 1))]) for _ in range(n)
    ]
    return plans


def unique_fqn_plans(plans):
    """Drop repeated TENSOR / BYTE_IO fqns (what dedup guarantees), keeping SHARD items."""
    seen, out = set(), []
    for p in plans:
        items = []
        for it in p.items:
            if it.type != WriteItemType.SHARD:
                if it.index.fqn in seen:
                    continue
                seen.add(it.index.fqn)
            items.append(it)
        out.append(SavePlan(items))
    return out


@st.composite
def metadata_cases(draw):
    sdm = {}
    for t in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 5)) == 0:
            sdm[f"b{t}"] = BytesStorageMetadata()
            continue
        shape = tuple(draw(st.integers(0, 9)) for _ in range(draw(st.integers(0, 3))))
        chunks = draw(grid_chunks(shape))
        # out of bounds: negative offsets, past the end
        for _ in range(draw(st.integers(0, 2))):
            if not shape:
                break
            offs = tuple(draw(st.integers(-2, d + 1)) for d in shape)
            sizes = tuple(draw(st.integers(0, 3)) for _ in shape)
            chunks.insert(draw(st.integers(0, len(chunks))), Chunk(offs, sizes))
        sdm[f"t{t}"] = TensorStorageMetadata(
            TensorProperties(draw(st.sampled_from(DTYPES))), shape, chunks
        )
    return Metadata(sdm), draw(st.integers(1, 3))


# ----------------------------------------------------------------------------- read items
@given(read_cases())
def test_read_items_match_torch(case):
    shape, saved, local = case
    md = TensorStorageMetadata(TensorProperties("float32"), shape, saved)
    ours = H.create_read_items_for_chunk_list("w", md, local)
    theirs = TH.create_read_items_for_chunk_list("w", to_torch(md), to_torch(local))
    assert [read_key(i) for i in ours] == [read_key(i) for i in theirs]


@given(read_cases())
def test_read_items_accept_torch_records(case):
    shape, saved, local = case
    md = TensorStorageMetadata(TensorProperties("float32"), shape, saved)
    a = H.create_read_items_for_chunk_list("w", md, local)
    b = H.create_read_items_for_chunk_list("w", to_torch(md), to_torch(local))
    assert [read_key(i) for i in a] == [read_key(i) for i in b]


@given(read_cases())
def test_overlap_region_and_pair_overlap_match_torch(case):
    from torch.distributed.checkpoint import resharding as TR

    _, saved, local = case
    for s in saved:
        for c in local:
            ts, tc = to_torch(s), to_torch(c)
            assert H.check_shard_metadata_pair_overlap(
                s, c
            ) == TR._check_shard_metadata_pair_overlap(ts, tc)
            assert H.check_box_overlap(s, c) == TD._check_box_overlap(ts, tc)
            assert H.shards_get_overlap_region_wrt_saved_tensor(
                s, c
            ) == TR._shards_get_overlap_region_wrt_saved_tensor(ts, tc)


# ----------------------------------------------------------------------------- dedup, global plan
@given(raw_save_plans(), st.booleans())
def test_dedup_matches_torch(plans, lowest):
    ours = H.dedup_save_plans(plans, lowest)
    theirs = torch_dedup(to_torch(plans), lowest)
    assert plans_key(ours) == plans_key(theirs)
    # torch objects in, same answer
    assert plans_key(H.dedup_save_plans(to_torch(plans), lowest)) == plans_key(theirs)


def check_global_plan_like_torch(plans, rewrite=True):
    """Same plans, metadata and validation strings as torch, or the same failure."""
    try:
        t_plans, t_md = TD.create_default_global_save_plan(to_torch(plans), rewrite)
    except AssertionError as e:
        with pytest.raises(PlanError) as ei:
            H.create_default_global_save_plan(plans, rewrite)
        assert ei.value.torch_message == str(e) == "item.index.fqn not in md"
        assert str(e) in str(ei.value)
        return False
    ours_plans, ours_md = H.create_default_global_save_plan(plans, rewrite)
    assert plans_key(ours_plans) == plans_key(t_plans)
    assert md_key(ours_md) == md_key(t_md)
    assert H.validate_global_plan(ours_plans, ours_md) == TD._validate_global_plan(t_plans, t_md)
    return True


@given(raw_save_plans(), st.booleans(), st.booleans())
def test_global_save_plan_after_dedup_matches_torch(plans, lowest, rewrite):
    # a plan repeating a TENSOR / BYTE_IO key keeps both copies through dedup: torch then fails
    check_global_plan_like_torch(H.dedup_save_plans(plans, lowest), rewrite)


@given(raw_save_plans())
def test_global_save_plan_on_raw_plans_matches_or_fails_like_torch(plans):
    check_global_plan_like_torch(plans)


def test_global_save_plan_both_outcomes_are_exercised():
    # the random strategy above reaches both branches (guards against a vacuous property)
    a = SavePlan([WriteItem(MetadataIndex("b"), WriteItemType.BYTE_IO)])
    assert check_global_plan_like_torch([a, SavePlan([])]) is True
    assert check_global_plan_like_torch([a, a]) is False


def test_global_save_plan_returns_plans_and_metadata_records():
    plans, md = H.create_default_global_save_plan([SavePlan([], planner_data={"a": ("a",)})])
    assert plans == [SavePlan([], planner_data={"a": ("a",)})]
    assert isinstance(md, Metadata) and md.state_dict_metadata == {}


# ----------------------------------------------------------------------------- validation
@given(metadata_cases())
def test_validate_matches_torch_exact_strings(case):
    md, nplans = case
    plans = [SavePlan([])] * nplans
    ours = H.validate_global_plan(plans, md)
    theirs = TD._validate_global_plan(to_torch(plans), to_torch(md))
    assert ours == theirs
    assert H.validate_global_plan(to_torch(plans), to_torch(md)) == theirs


@given(raw_save_plans(max_ranks=4))
def test_validate_on_real_global_plans(plans):
    g, md = H.create_default_global_save_plan(unique_fqn_plans(plans))
    assert H.validate_global_plan(g, md) == TD._validate_global_plan(to_torch(g), to_torch(md))


# ----------------------------------------------------------------------------- plan caching
def _mutate(plan: SavePlan, how: int) -> SavePlan:
    import dataclasses

    items = list(plan.items)
    if how == 0 or not items:
        return dataclasses.replace(plan, usable=not plan.usable)
    i = how % len(items)
    it = items[i]
    if how % 5 == 1:
        items[i] = dataclasses.replace(it, index=MetadataIndex(it.index.fqn, it.index.offset, 7))
    elif how % 5 == 2 and it.tensor_data is not None:
        items[i] = dataclasses.replace(
            it,
            tensor_data=dataclasses.replace(it.tensor_data, properties=TensorProperties("float64")),
        )
    elif how % 5 == 3 and it.tensor_data is not None:
        items[i] = dataclasses.replace(
            it, tensor_data=dataclasses.replace(it.tensor_data, size=it.tensor_data.size + (1,))
        )
    elif how % 5 == 4:
        del items[i]
    else:
        items[i] = dataclasses.replace(it, index=MetadataIndex(it.index.fqn + "x", it.index.offset))
    return dataclasses.replace(plan, items=items)


@given(raw_save_plans(max_ranks=3), st.integers(0, 20))
def test_compare_save_plans_matches_torch(plans, how):
    a = plans[0]
    b = _mutate(a, how)
    for x, y in ((a, a), (a, b), (b, a)):
        assert H.compare_save_plans(x, y) == TH._compare_save_plans(to_torch(x), to_torch(y))
        assert H.compare_save_plans(to_torch(x), to_torch(y)) == H.compare_save_plans(x, y)


plan_or_none = st.one_of(st.none(), st.builds(lambda u: SavePlan([], usable=u), st.booleans()))


@given(st.lists(plan_or_none, max_size=6), st.lists(plan_or_none, max_size=6))
def test_merge_and_contains_usable_match_torch(cached, delta):
    cached = [c if c is not None else SavePlan([]) for c in cached]
    ours = H.merge_delta_local_plans(cached, delta)
    t_cached = [to_torch(c) for c in cached]
    t_delta = [None if d is None else to_torch(d) for d in delta]
    theirs = TH._merge_delta_local_plans(t_cached, t_delta)

    def where(x, cs, ds):
        if x is None:
            return None
        for name, seq in (("cached", cs), ("delta", ds)):
            for i, y in enumerate(seq):
                if y is x:
                    return (name, i)
        raise AssertionError("merge returned an object it was not given")

    assert [where(x, cached, delta) for x in ours] == [where(x, t_cached, t_delta) for x in theirs]
    assert H.contains_usable_plan(delta) == TH._contains_usable_plan(t_delta)
    # torch objects pass straight through
    assert H.merge_delta_local_plans(t_cached, t_delta) == theirs


# ----------------------------------------------------------------------------- one-rank state dicts
def torch_value(lt: H.RankValue):
    """The real torch object a RankValue stands for, built under the fake group of its rank."""
    L = lt.layout
    if L.kind == "bytes":
        return 7
    dtype = getattr(torch, L.dtype)
    if L.kind == "tensor":
        return torch.zeros(L.shape, dtype=dtype)
    mesh = DeviceMesh("cpu", torch.arange(math.prod(L.mesh_shape)).reshape(L.mesh_shape))
    pl = [placement_to_torch(p) for p in L.placements]
    if not lt.in_mesh:
        # distribute_tensor returns at once off the mesh (from_local mis-sizes 0-d tensors there)
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(torch.zeros(L.shape, dtype=dtype), mesh, pl)
    local = L.chunks(lt.rank)[0].sizes
    stride = tuple(math.prod(L.shape[i + 1 :]) for i in range(len(L.shape)))
    return DTensor.from_local(
        torch.zeros(local, dtype=dtype), mesh, pl, shape=L.shape, stride=stride
    )


@st.composite
def placements_for(draw, ndim, mesh_ndim, partial_ok=True):
    out = []
    for _ in range(mesh_ndim):
        choices = (
            ["R"]
            + (["S", "SS"] if ndim else [])
            + (["P"] if partial_ok and draw(st.integers(0, 9)) == 0 else [])
        )
        kind = draw(st.sampled_from(choices))
        if kind == "R":
            out.append(Replicate())
        elif kind == "P":
            out.append(Partial())
        elif kind == "S":
            out.append(Shard(draw(st.integers(0, ndim - 1))))
        else:
            out.append(StridedShard(draw(st.integers(0, ndim - 1)), draw(st.integers(1, 3))))
    return out


@st.composite
def one_rank_cases(draw):
    """A state dict of one rank (a DTensor, maybe a plain tensor and a bytes value), and a saved
    layout of the same fqns for the checkpoint (shape sometimes different)."""
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.integers(0, 9)) for _ in range(ndim))
    mesh = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 2))))
    ws = math.prod(mesh) + draw(st.integers(0, 1))
    rank = draw(st.integers(0, ws - 1))
    dt = draw(st.sampled_from(DTYPES))
    want = {"w": dtensor_layout(shape, mesh, draw(placements_for(ndim, len(mesh))), dt, ws)}
    if draw(st.booleans()):
        want["plain"] = tensor_layout(shape, ws, dt)
    if draw(st.booleans()):
        want["obj"] = bytes_layout(ws)
    saved_shape = shape if draw(st.integers(0, 5)) else tuple(s + 1 for s in shape)
    smesh = (draw(st.integers(1, 4)),)
    saved = {
        "w": dtensor_layout(
            saved_shape,
            smesh,
            draw(placements_for(ndim, 1, partial_ok=False)),
            dt,
            math.prod(smesh),
        )
    }
    if draw(st.booleans()):
        saved["plain"] = tensor_layout(saved_shape, 2, dt)
    if draw(st.booleans()):
        saved["obj"] = bytes_layout(2)
    order = draw(st.permutations(list(want)))
    return {k: want[k] for k in order}, rank, saved


def saved_metadata(saved: dict) -> Metadata:
    ws = max(L.world_size for L in saved.values())
    plans = [
        H.create_default_local_save_plan(
            {k: H.RankValue(L, r) for k, L in saved.items() if r < L.world_size}, r == 0
        )
        for r in range(ws)
    ]
    return H.create_default_global_save_plan(H.dedup_save_plans(plans))[1]


def same_outcome(ours_fn, torch_fn, key):
    """Both return equal results (by ``key``), or both raise with torch's exact message."""
    try:
        theirs = torch_fn()
    except (ValueError, RuntimeError, AssertionError) as e:
        with pytest.raises(WorkbenchError) as ei:
            ours_fn()
        assert ei.value.torch_message == str(e), (ei.value, e)
        assert type(e).__name__ == ei.value.torch_type
        return str(e)
    assert key(ours_fn()) == key(theirs)
    return None


@given(one_rank_cases())
def test_one_rank_save_and_load_plans_match_torch(case):
    want, rank, saved = case
    md = saved_metadata(saved)
    ours_sd = {k: H.RankValue(L, rank) for k, L in want.items()}
    ws = want["w"].world_size
    with fake_rank(rank, ws):
        torch_sd = {k: torch_value(v) for k, v in ours_sd.items()}
        t_md = to_torch(md)
        wkeys = lambda plan: [write_key(i) for i in plan.items]  # noqa: E731
        rkeys = lambda plan: [read_key(i) for i in plan.items]  # noqa: E731
        same_outcome(
            lambda: H.create_default_local_save_plan(ours_sd, rank == 0),
            lambda: TD.create_default_local_save_plan(torch_sd, rank == 0),
            wkeys,
        )
        # torch's own objects through our function: the same answer as torch
        same_outcome(
            lambda: H.create_default_local_save_plan(torch_sd, False),
            lambda: TD.create_default_local_save_plan(torch_sd, False),
            wkeys,
        )
        for strict in (True, False):
            same_outcome(
                lambda strict=strict: H.create_default_local_load_plan(ours_sd, md, strict),
                lambda strict=strict: TD.create_default_local_load_plan(torch_sd, t_md, strict),
                rkeys,
            )
            same_outcome(
                lambda strict=strict: H.create_default_local_load_plan(torch_sd, t_md, strict),
                lambda strict=strict: TD.create_default_local_load_plan(torch_sd, t_md, strict),
                rkeys,
            )
        if ours_sd["w"].in_mesh:
            same_outcome(
                lambda: H.create_default_metadata_only_plan(ours_sd),
                lambda: TH._create_default_metadata_only_plan(torch_sd),
                wkeys,
            )
            same_outcome(
                lambda: H.create_chunk_list(ours_sd["w"]),
                lambda: TH._create_chunk_list(torch_sd["w"]),
                lambda cs: [(tuple(c.offsets), tuple(c.sizes)) for c in cs],
            )
            for fqn, smd in md.state_dict_metadata.items():
                if fqn in ours_sd:
                    same_outcome(
                        lambda fqn=fqn, smd=smd: H.create_read_items(fqn, smd, ours_sd[fqn]),
                        lambda fqn=fqn, smd=smd: TH._create_read_items(
                            fqn, to_torch(smd), torch_sd[fqn]
                        ),
                        lambda items: [read_key(i) for i in items],
                    )


def test_one_rank_cases_reach_every_torch_outcome():
    """The property above is not vacuous: hand-picked cases hit each of torch's branches."""
    ws = 2
    w = dtensor_layout((4, 4), (2,), "S(0)", world_size=ws)
    saved = {"w": dtensor_layout((4, 4), (2,), "S(1)")}
    md = saved_metadata(saved)
    with fake_rank(1, ws):
        lt = H.RankValue(w, 1)
        t = torch_value(lt)
        assert (
            same_outcome(
                lambda: H.create_default_local_load_plan({"w": lt}, md),
                lambda: TD.create_default_local_load_plan({"w": t}, to_torch(md)),
                lambda p: [read_key(i) for i in p.items],
            )
            is None
        )
        assert "Missing key" in same_outcome(
            lambda: H.create_default_local_load_plan({"v": lt}, md),
            lambda: TD.create_default_local_load_plan({"v": t}, to_torch(md)),
            None,
        )
        big = dtensor_layout((4, 5), (2,), "S(0)", world_size=ws)
        assert "Size mismatch" in same_outcome(
            lambda: H.create_default_local_load_plan({"w": H.RankValue(big, 1)}, md),
            lambda: TD.create_default_local_load_plan(
                {"w": torch_value(H.RankValue(big, 1))}, to_torch(md)
            ),
            None,
        )
        assert "Invalid checkpoint metadata" in same_outcome(
            lambda: H.create_default_local_load_plan({"w": 3}, md),
            lambda: TD.create_default_local_load_plan({"w": 3}, to_torch(md)),
            None,
        )
        part = H.RankValue(dtensor_layout((4, 4), (2,), "P", world_size=ws), 1)
        assert "partial placements" in same_outcome(
            lambda: H.create_default_local_save_plan({"w": part}, True),
            lambda: TD.create_default_local_save_plan({"w": torch_value(part)}, True),
            None,
        )
        assert "Invalid checkpoint metadata" in same_outcome(
            lambda: H.create_default_local_load_plan({"w": part}, md),
            lambda: TD.create_default_local_load_plan({"w": torch_value(part)}, to_torch(md)),
            None,
        )


def torch_sharded_tensor(rank, world_size, shards_per_rank, shard_size):
    """PyTorch's test_planner.create_sharded_tensor: shard idx [idx*size, (idx+1)*size) on rank
    idx // shards_per_rank."""
    from torch.distributed._shard.sharded_tensor import (
        Shard as STShard,
    )
    from torch.distributed._shard.sharded_tensor import (
        ShardedTensor,
        ShardedTensorMetadata,
        ShardMetadata,
    )
    from torch.distributed._shard.sharded_tensor.metadata import TensorProperties as STProps

    mds, local = [], []
    for idx in range(world_size * shards_per_rank):
        md = ShardMetadata([idx * shard_size], [shard_size], f"rank:{idx // shards_per_rank}/cpu")
        mds.append(md)
        if idx // shards_per_rank == rank:
            local.append(
                STShard.from_tensor_and_offsets(torch.zeros(shard_size), md.shard_offsets, rank)
            )
    st_md = ShardedTensorMetadata(
        mds, torch.Size([shard_size * len(mds)]), STProps.create_from_tensor(torch.zeros(1))
    )
    return ShardedTensor._init_from_local_shards_and_global_metadata(local, st_md)


def sharded_local(rank, world_size, shards_per_rank, shard_size):
    from workbench.sharding import sharded_layout

    per = {
        r: [
            Chunk((i * shard_size,), (shard_size,))
            for i in range(world_size * shards_per_rank)
            if i // shards_per_rank == r
        ]
        for r in range(world_size)
    }
    return H.RankValue(
        sharded_layout((shard_size * world_size * shards_per_rank,), per, "float32", world_size),
        rank,
    )


@pytest.mark.filterwarnings("ignore:Please use DTensor instead:FutureWarning")
@given(
    st.integers(1, 5),
    st.integers(1, 3),
    st.integers(0, 6),
    st.integers(1, 5),
    st.integers(1, 3),
    st.integers(0, 6),
    st.data(),
)
def test_sharded_tensor_plans_match_torch(ws, spr, size, ws2, spr2, size2, data):
    """ShardedTensor entries (world ws, spr shards per rank) loaded from a checkpoint saved by
    another ShardedTensor layout: local save, metadata-only and load plans as torch's."""
    rank = data.draw(st.integers(0, ws - 1))
    # the checkpoint: every shard of the saved layout (its metadata-only plan)
    saved = sharded_local(0, ws2, spr2, size2)
    md = H.create_default_local_metadata({"st": saved, "v": [1, 2]})
    wkeys = lambda plan: [write_key(i) for i in plan.items]  # noqa: E731
    with fake_rank(0, ws2):
        t_saved_md = TD._create_default_local_metadata(
            {"st": torch_sharded_tensor(0, ws2, spr2, size2), "v": [1, 2]}
        )
    assert md_key(md) == md_key(t_saved_md)
    with fake_rank(rank, ws):
        ours = {"st": sharded_local(rank, ws, spr, size), "v": [1, 2]}
        theirs = {"st": torch_sharded_tensor(rank, ws, spr, size), "v": [1, 2]}
        for sd in (ours, theirs):
            assert wkeys(H.create_default_local_save_plan(sd, rank == 0)) == wkeys(
                TD.create_default_local_save_plan(theirs, rank == 0)
            )
            assert wkeys(H.create_default_metadata_only_plan(sd)) == wkeys(
                TH._create_default_metadata_only_plan(theirs)
            )
            same_outcome(
                lambda sd=sd: H.create_default_local_load_plan(sd, md),
                lambda: TD.create_default_local_load_plan(theirs, t_saved_md),
                lambda p: [read_key(i) for i in p.items],
            )


# ----------------------------------------------------------------------------- small constructors
@given(
    st.lists(st.integers(0, 5), max_size=3), st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)
)
def test_item_constructors_match_torch(shape, a, b, c):
    shape = tuple(shape)
    t = torch.zeros(shape)
    lt = H.RankValue(tensor_layout(shape, 1), 0)
    assert H.create_chunk_from_tensor(lt) == from_torch(TH._create_chunk_from_tensor(t))
    assert H.create_chunk_from_tensor(t) == from_torch(TH._create_chunk_from_tensor(t))
    assert write_key(H.create_write_item_for_tensor("w", lt)) == write_key(
        TH._create_write_item_for_tensor("w", t)
    )
    assert write_key(H.create_write_item_for_bytesio("w", 3)) == write_key(
        TH._create_write_item_for_bytesio("w", 3)
    )
    d, s = MetadataIndex("w", shape, 1), MetadataIndex("w", shape[::-1], 2)
    n = len(shape)
    assert read_key(H.create_read_item_for_tensor(d, [a] * n, s, [b] * n, [c] * n)) == read_key(
        TH._create_read_item_for_tensor(to_torch(d), [a] * n, to_torch(s), [b] * n, [c] * n)
    )
    assert read_key(H.create_read_item_for_byteio(d, a, s, b, c)) == read_key(
        TH._create_read_item_for_byteio(to_torch(d), a, to_torch(s), b, c)
    )
    assert H.check_box_bounds((5, 5, 5)[:n], Chunk((a,) * n, (c,) * n)) == TD._check_box_bounds(
        torch.Size((5, 5, 5)[:n]), to_torch(Chunk((a,) * n, (c,) * n))
    )


def test_iterate_state_dict_dispatches_like_torch():
    def run(fn, sd):
        def tag(kind):
            return lambda v: kind

        return fn(sd, tag("dtensor"), tag("sharded"), tag("tensor"))

    with fake_rank(0, 2):
        L = dtensor_layout((4,), (2,), "S(0)")
        torch_sd = {
            "d": torch_value(H.RankValue(L, 0)),
            "s": torch_sharded_tensor(0, 2, 1, 2),
            "t": torch.zeros(1),
            "n": [1, (2.0, None)],
            "x": {3},
        }
        ours_sd = {
            "d": H.RankValue(L, 0),
            "s": sharded_local(0, 2, 1, 2),
            "t": H.RankValue(tensor_layout((1,), 2), 0),
            "n": [1, (2.0, None)],
            "x": {3},
        }
        theirs = run(TH._iterate_state_dict, dict(torch_sd))
        assert theirs == {
            "d": "dtensor",
            "s": "sharded",
            "t": "tensor",
            "n": [1, (2.0, None)],
            "x": None,
        }
        for sd in (ours_sd, dict(torch_sd)):
            ours = run(H.iterate_state_dict, sd)
            assert ours == theirs
            assert ours is sd  # dicts are rewritten in place


# ----------------------------------------------------------------------------- whole saves
@st.composite
def whole_state_dicts(draw):
    """Layouts of a few entries over one world: DTensors on meshes that may leave ranks out,
    plain tensors (held by every rank) and bytes values."""
    mesh = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 2))))
    ws = math.prod(mesh) + draw(st.integers(0, 2))
    layouts = {}
    for k in range(draw(st.integers(1, 3))):
        ndim = draw(st.integers(0, 2))
        shape = tuple(draw(st.integers(0, 7)) for _ in range(ndim))
        m = mesh if draw(st.booleans()) else (draw(st.integers(1, ws)),)
        layouts[f"w{k}"] = dtensor_layout(
            shape,
            m,
            draw(placements_for(ndim, len(m), partial_ok=False)),
            draw(st.sampled_from(DTYPES)),
            ws,
        )
    if draw(st.booleans()):
        layouts["plain"] = tensor_layout((draw(st.integers(0, 5)),), ws, "float32")
    if draw(st.booleans()):
        layouts["step"] = bytes_layout(ws)
    return layouts


@settings(max_examples=60)
@given(whole_state_dicts(), st.booleans())
def test_whole_save_matches_torch(layouts, lowest):
    """Every rank's local plan from real DTensors under the fake group, then torch's dedup,
    global plan and validation, against the same steps on RankValues."""
    ws = next(iter(layouts.values())).world_size
    ours = [
        H.create_default_local_save_plan({k: H.RankValue(L, r) for k, L in layouts.items()}, r == 0)
        for r in range(ws)
    ]
    theirs = []
    for r in range(ws):
        with fake_rank(r, ws):
            theirs.append(
                TD.create_default_local_save_plan(
                    {k: torch_value(H.RankValue(L, r)) for k, L in layouts.items()}, r == 0
                )
            )
    assert plans_key(ours) == plans_key(theirs)
    o_final, o_md = H.create_default_global_save_plan(H.dedup_save_plans(ours, lowest))
    t_final, t_md = TD.create_default_global_save_plan(torch_dedup(theirs, lowest))
    assert plans_key(o_final) == plans_key(t_final)
    assert md_key(o_md) == md_key(t_md)
    assert H.validate_global_plan(o_final, o_md) == TD._validate_global_plan(t_final, t_md)
