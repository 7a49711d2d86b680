"""Test support without torch (conftest.py keeps fixtures only; the torch side is in
torch_support.py, so torch-free tests run where torch is not installed):

- hypothesis strategies: layouts and state dicts (``state_dicts``, ``save_and_load``, ...) and
  the wider ones reaching negative dims, big worlds and ShardedTensor chunk pools (``wide_*``);
- canonical forms of records, workbench's or torch's (``write_key``, ``read_key``,
  ``metadata_key``) and what each rank reports (``expected_per_rank``);
- the scalar mirrors of workbench.planner_helpers run rank by rank (``helpers_save``,
  ``helpers_load``);
- small builders and checks (``tsm``, ``house_form``).
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import workbench as wb
from workbench import planner_helpers as ph
from workbench.errors import PlanError
from workbench.geometry import Chunk
from workbench.records import TensorProperties, TensorStorageMetadata
from workbench.sharding import (
    Partial,
    RankValue,
    Replicate,
    Shard,
    StridedShard,
    bytes_layout,
    dtensor_layout,
    sharded_layout,
    tensor_layout,
)

DTYPES = ["float32", "bfloat16", "int64"]


# ----------------------------------------------------------------------------- strategies
# mostly non-empty dims (so that reshards read something), zero-size ones now and then
shapes = st.lists(st.one_of(st.integers(1, 8), st.integers(0, 8)), min_size=0, max_size=4).map(
    tuple
)


@st.composite
def meshes(draw, world):
    ndim = draw(st.integers(1, 3))
    while True:
        mesh = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
        if math.prod(mesh) <= world:
            return mesh
        ndim = max(1, ndim - 1)


@st.composite
def placements_for(draw, shape, mesh, partial=False):
    out = []
    for _ in mesh:
        opts = ["R"]
        if shape:
            opts += ["S", "S", "SS"]
        if partial:
            opts.append("P")
        kind = draw(st.sampled_from(opts))
        if kind == "R":
            out.append(Replicate())
        elif kind == "P":
            out.append(Partial())
        elif kind == "S":
            out.append(Shard(draw(st.integers(0, len(shape) - 1))))
        else:
            out.append(StridedShard(draw(st.integers(0, len(shape) - 1)), draw(st.integers(1, 3))))
    return tuple(out)


@st.composite
def boxes_in(draw, shape, max_n=2, outside=False):
    """Up to max_n boxes inside ``shape`` (zero-size ones included); with ``outside`` a box may
    poke out of the tensor (malformed ShardedTensor metadata)."""
    out = []
    for _ in range(draw(st.integers(0, max_n))):
        offs, sizes = [], []
        for d in shape:
            o = draw(st.integers(0, d))
            s = draw(st.integers(0, d - o + (1 if outside else 0)))
            offs.append(o)
            sizes.append(s)
        out.append(Chunk(tuple(offs), tuple(sizes)))
    return out


@st.composite
def layouts(
    draw,
    shape,
    world,
    kinds=("dtensor", "dtensor", "dtensor", "tensor", "bytes", "sharded"),
    partial=False,
):
    kind = draw(st.sampled_from(kinds))
    dtype = draw(st.sampled_from(DTYPES))
    if kind == "dtensor":
        mesh = draw(meshes(world))
        return dtensor_layout(
            shape, mesh, draw(placements_for(shape, mesh, partial)), dtype, world_size=world
        )
    if kind == "tensor":
        ranks = draw(st.one_of(st.none(), st.sets(st.integers(0, world - 1), min_size=1)))
        return tensor_layout(shape, world, dtype, ranks=ranks)
    if kind == "bytes":
        ranks = draw(st.one_of(st.none(), st.sets(st.integers(0, world - 1), min_size=1)))
        return bytes_layout(world, ranks=ranks)
    outside = draw(st.integers(0, 3)) == 0  # now and then malformed: out-of-bounds chunks
    per_rank = [draw(boxes_in(shape, outside=outside)) for _ in range(world)]
    return sharded_layout(shape, per_rank, dtype, world)


@st.composite
def state_dicts(draw, max_world=12, partial=False):
    world = draw(st.integers(1, max_world))
    n = draw(st.integers(1, 4))
    out = {}
    for i in range(n):
        out[f"m{i}.w"] = draw(layouts(draw(shapes), world, partial=partial))
    return out


@st.composite
def crowded_state_dicts(draw, max_world=20):
    """Many shared dedup keys mixed with one-holder keys: ShardedTensor-like entries whose ranks
    pick up to 3 chunks from a pool of 4 offsets, plus plain tensors and bytes on some ranks."""
    world = draw(st.integers(2, max_world))
    out = {}
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["sharded", "sharded", "sharded", "tensor", "bytes"]))
        if kind == "sharded":
            pool = [
                Chunk((o,), (s,))
                for o, s in zip(
                    draw(st.lists(st.integers(0, 9), min_size=4, max_size=4, unique=True)),
                    draw(st.lists(st.integers(0, 3), min_size=4, max_size=4)),
                )
            ]
            per_rank = [draw(st.lists(st.sampled_from(pool), max_size=3)) for _ in range(world)]
            out[f"s{i}"] = sharded_layout((12,), per_rank, draw(st.sampled_from(DTYPES)), world)
        else:
            out[f"s{i}"] = draw(layouts((3,), world, kinds=(kind,)))
    return out


@st.composite
def save_and_load(draw, max_world=12):
    """A state dict to save and one to load on another world size: same fqns mostly with new
    layouts; sometimes a new shape, a new kind, a dropped key or an extra key."""
    saved = draw(state_dicts(max_world))
    world = draw(st.integers(1, max_world))
    load = {}
    for fqn, lay in saved.items():
        action = draw(st.sampled_from(["same"] * 12 + ["reshape", "drop", "kind"]))
        if action == "drop":
            continue
        shape = lay.shape if lay.kind != "bytes" else draw(shapes)
        if action == "reshape":
            shape = draw(shapes)
        kinds = ("dtensor", "dtensor", "tensor", "sharded") if lay.kind != "bytes" else ("bytes",)
        if action == "kind":
            kinds = ("dtensor", "tensor", "bytes", "sharded")
        load[fqn] = draw(layouts(shape, world, kinds=kinds, partial=True))
    if draw(st.integers(0, 4)) == 0:
        load["extra.w"] = draw(layouts(draw(shapes), world))
    if not load:
        load["extra.w"] = draw(layouts(draw(shapes), world))
    return saved, load, draw(st.booleans()), draw(st.booleans())


# ----------------------------------------------------------------------------- wider strategies
# negative shard dims, size-1 and 5/8-wide mesh dims, worlds up to 24, ShardedTensor chunk pools
@st.composite
def wide_meshes(draw, world):
    ndim = draw(st.integers(1, 3))
    for _ in range(20):
        mesh = tuple(draw(st.sampled_from([1, 1, 2, 3, 4, 5, 8])) for _ in range(ndim))
        if math.prod(mesh) <= world:
            return mesh
    return (1,)


@st.composite
def wide_placements(draw, shape, mesh, partial):
    n, out = len(shape), []
    for _ in mesh:
        kind = draw(
            st.sampled_from(["R"] + (["S", "S", "SS"] if n else []) + (["P"] if partial else []))
        )
        if kind == "R":
            out.append(Replicate())
        elif kind == "P":
            out.append(Partial())
        else:
            d = draw(st.integers(-n, n - 1))  # negative dims too
            out.append(Shard(d) if kind == "S" else StridedShard(d, draw(st.integers(1, 5))))
    return tuple(out)


@st.composite
def pooled_sharded(draw, shape, world):
    """Chunks drawn from a small pool: several per rank, repeats on a rank, one offset with
    several sizes (dedup key collisions), now and then past the end, empty ones anywhere."""
    pool = []
    for _ in range(draw(st.integers(1, 5))):
        offs = [draw(st.integers(0, d)) for d in shape]
        for _ in range(draw(st.integers(1, 2))):
            pool.append(
                Chunk(
                    tuple(offs),
                    tuple(
                        draw(st.integers(0, d - o + draw(st.sampled_from([0, 0, 0, 1]))))
                        for o, d in zip(offs, shape)
                    ),
                )
            )
    per_rank = [draw(st.lists(st.sampled_from(pool), max_size=3)) for _ in range(world)]
    return sharded_layout(shape, per_rank, draw(st.sampled_from(DTYPES)), world)


wide_shapes = st.lists(st.sampled_from([0, 1, 2, 3, 5, 7, 8, 13, 16]), max_size=3).map(tuple)


@st.composite
def wide_layouts(draw, world, partial=False, shape=None):
    shape = draw(wide_shapes) if shape is None else shape
    kind = draw(st.sampled_from(["dtensor"] * 4 + ["tensor", "bytes", "sharded"]))
    dtype = draw(st.sampled_from(DTYPES))
    if kind == "dtensor":
        mesh = draw(wide_meshes(world))
        return dtensor_layout(
            shape, mesh, draw(wide_placements(shape, mesh, partial)), dtype, world_size=world
        )
    ranks = draw(st.one_of(st.none(), st.sets(st.integers(0, world - 1), min_size=1)))
    if kind == "tensor":
        return tensor_layout(shape, world, dtype, ranks=ranks)
    if kind == "bytes":
        return bytes_layout(world, ranks=ranks)
    return draw(pooled_sharded(shape, world))


@st.composite
def wide_state_dicts(draw, max_world=24, partial=False):
    world = draw(st.integers(1, max_world))
    return {f"k{i}": draw(wide_layouts(world, partial)) for i in range(draw(st.integers(1, 5)))}


@st.composite
def wide_save_and_load(draw, max_world=20):
    saved = draw(wide_state_dicts(max_world))
    world = draw(st.integers(1, max_world))
    load = {}
    for fqn, lay in saved.items():
        action = draw(st.sampled_from(["same"] * 8 + ["drop", "any"]))
        if action == "drop":
            continue
        keep_shape = action == "same" and lay.kind != "bytes"
        load[fqn] = draw(
            wide_layouts(
                world, partial=draw(st.integers(0, 5)) == 0, shape=lay.shape if keep_shape else None
            )
        )
    if draw(st.booleans()) or not load:
        load["extra"] = draw(wide_layouts(world))
    return saved, load, draw(st.booleans()), draw(st.booleans())


wide_settings = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# nested uneven shards of one dim: Shard after Shard, and _StridedShard before / after Shard
NESTED = (
    [[Shard(0), Shard(0)]]
    + [[Shard(0), StridedShard(0, k)] for k in range(1, 6)]
    + [[StridedShard(0, k), Shard(0)] for k in range(1, 6)]
)


# ----------------------------------------------------------------------------- canonical forms
def write_key(item):
    """A write item as plain data (workbench or torch record)."""
    td = item.tensor_data
    off = None if item.index.offset is None else tuple(item.index.offset)
    chunk = None if td is None else (tuple(td.chunk.offsets), tuple(td.chunk.sizes))
    size = None if td is None else tuple(td.size)
    dtype = None if td is None else str(td.properties.dtype).replace("torch.", "")
    return (item.type.name, item.index.fqn, off, item.index.index, chunk, size, dtype)


# a JSON target (`workbench plan --target FILE`) for the one-process checkpoint of w (8x4
# float32), b (4 bfloat16) and step (bytes) that tests/test_cli.py and test_remote.py save
SMALL_JSON_TARGET = {
    "w": {"shape": [8, 4], "dtype": "float32", "mesh": [2, 2], "placements": "S(0), S(1)"},
    "b": {"shape": [4], "dtype": "bfloat16"},
    "step": {"bytes": True},
}


def read_key(item):
    def idx(i):
        return (i.fqn, None if i.offset is None else tuple(i.offset), i.index)

    return (
        item.type.name,
        idx(item.dest_index),
        tuple(item.dest_offsets),
        idx(item.storage_index),
        tuple(item.storage_offsets),
        tuple(item.lengths),
    )


def metadata_key(md):
    out = []
    for fqn, m in md.state_dict_metadata.items():
        if type(m).__name__ == "BytesStorageMetadata":
            out.append((fqn, "bytes"))
        else:
            out.append(
                (
                    fqn,
                    tuple(m.size),
                    str(m.properties.dtype).replace("torch.", ""),
                    [(tuple(c.offsets), tuple(c.sizes)) for c in m.chunks],
                )
            )
    return out


# ----------------------------------------------------------------------------- helpers' reference
def helpers_save(sd, save_to_lowest_rank=False):
    """plan_save recomputed with the scalar mirrors, rank by rank."""
    world = next(iter(sd.values())).world_size
    local = [
        ph.create_default_local_save_plan({f: RankValue(lay, r) for f, lay in sd.items()}, r == 0)
        for r in range(world)
    ]
    plans, md = ph.create_default_global_save_plan(ph.dedup_save_plans(local, save_to_lowest_rank))
    return local, plans, md, ph.validate_global_plan(plans, md)


def helpers_load(md, sd, strict):
    """Per rank: the scalar mirror's read items, or its error message."""
    world = next(iter(sd.values())).world_size
    out = []
    for r in range(world):
        try:
            out.append(
                [
                    read_key(i)
                    for i in ph.create_default_local_load_plan(
                        {f: RankValue(lay, r) for f, lay in sd.items()}, md, strict
                    ).items
                ]
            )
        except PlanError as e:
            out.append(e.torch_message)
    return out


def expected_per_rank(res):
    """What a torch rank would report: its items, or the first failure that names it."""
    out = []
    for r in range(res.world_size):
        fail = next((msg for _, ranks, msg in res.failures if r in ranks), None)
        out.append(fail if fail is not None else [read_key(i) for i in res.plans[r].items])
    return out


# ----------------------------------------------------------------------------- builders and checks
def house_form(err: Exception, fqn: str | None = None) -> str:
    """The message of a WorkbenchError, checked for ``<fqn>: <what> ... (<expectation>).``"""
    assert isinstance(err, wb.WorkbenchError) and isinstance(err, ValueError), type(err)
    msg = str(err)
    head = fqn if fqn is not None else "<input>"
    assert msg.startswith(f"{head}: "), msg
    assert "(" in msg and ")." in msg, msg
    return msg


def tsm(size, chunks, dtype="float32"):
    return TensorStorageMetadata(TensorProperties(dtype), size, [Chunk(o, s) for o, s in chunks])
