"""plan_save / plan_load on the edge cases test_planning_vs_torch's strategies do not reach, each
compared with the installed torch 2.13 (its planners run per rank under the ``fake``
process group on state dicts built independently of workbench.torch_bridge, by the harness in
support.py).

Reached here and not there: negative shard dims (``S(-1)``, ``SS(-2,k)``) alone and aliased with
their positive spelling; meshes with size-1 dims and dims of 5 and 8; world sizes larger than the
mesh (ranks outside it hold the DTensor but plan nothing); worlds of 9..64 ranks (CPython set
order in the dedup tie-break); ``_StridedShard`` split factors up to 5 nested with ``Shard`` on one
dim; ShardedTensor chunk pools (several chunks per rank, the same chunk twice on a rank, one offset
with several sizes across ranks = a dedup key collision, chunks past the end, empty chunks at the
dim end and inside); loads from metadata that failed validation; load world sizes W -> W'.

Found and fixed (sharding.dtensor_layout): negative shard dims were walked raw, as
``_compute_local_shape_and_global_offset`` does, but a DTensor normalises them first
(``DTensor.from_local`` / ``distribute_tensor``), so DCP saw ``[S(1), S(-1)]`` as the nested
``[S(1), S(1)]`` while the workbench recorded other boxes; and ``SS(-2,k)`` was refused although
torch accepts it. Also: ``sharded_layout`` / ``bytes_layout`` accepted ranks outside the world.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from support import (
    DTYPES,
    NESTED,
    metadata_key,
    read_key,
    wide_placements,
    wide_save_and_load,
    wide_settings,
    wide_state_dicts,
    write_key,
)
from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans
from torch.distributed.checkpoint.default_planner import (
    DefaultSavePlanner,
    _validate_global_plan,
    create_default_global_save_plan,
)
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
from torch_support import ours_load, torch_load, torch_local_save

from workbench.errors import LayoutError
from workbench.geometry import Chunk
from workbench.planning import plan_load, plan_save
from workbench.sharding import (
    Shard,
    bytes_layout,
    dtensor_layout,
    local_shape_and_offset,
    sharded_layout,
    tensor_layout,
)
from workbench.torch_bridge.convert import placement_to_torch, to_torch
from workbench.torch_bridge.fake_pg import verify_with_torch


# ----------------------------------------------------------------------------- harness
def check_save(layouts, lowest=False):
    """plan_save against torch: per-rank failures when a rank raises, else local plans, final
    plans (index hints included), metadata (key order, chunks) and the validation strings.
    Returns (result, torch metadata or None, torch's local plans)."""
    res = plan_save(layouts, save_to_lowest_rank=lowest)
    local = torch_local_save(layouts)
    if any(isinstance(p, str) for p in local):
        for r, p in enumerate(local):
            want = next((m for _, ranks, m in res.failures if r in ranks), None)
            assert (p if isinstance(p, str) else None) == want, r
        return res, None, local
    assert not res.failures
    plans, md = create_default_global_save_plan(dedup_save_plans(local, lowest))
    for r in range(res.world_size):
        assert [write_key(i) for i in res.local_plans[r].items] == [
            write_key(i) for i in local[r].items
        ], r
        assert [write_key(i) for i in res.plans[r].items] == [
            write_key(i) for i in plans[r].items
        ], r
    assert metadata_key(res.metadata) == metadata_key(md)
    assert res.errors == _validate_global_plan(plans, md)
    return res, md, local


def check_load(res, md, load, strict=True):
    """plan_load (from the planned metadata) against torch's per-rank load plans from torch's
    metadata: items in order with index hints, or the message each rank raises."""
    ours = plan_load(res.metadata, load, allow_partial_load=not strict)
    assert ours_load(ours) == torch_load(md, load, strict)
    return ours


def chunks_of(md, fqn):
    return [(tuple(c.offsets), tuple(c.sizes)) for c in md.state_dict_metadata[fqn].chunks]


# ----------------------------------------------------------------------------- negative dims
def test_negative_shard_dims_are_normalised_as_a_dtensor_does():
    # (8, 7) on mesh (2, 3) with [S(1), S(-1)]: a DTensor normalises S(-1) to S(1), so dim 1 is
    # split twice: cols [0:4) / [4:7) over mesh dim 0, then each over 3:
    # [0:4) -> [0:2) [2:4) and an empty shard at 7; [4:7) -> [4:5) [5:6) [6:7)
    res, md, _ = check_save({"w": dtensor_layout((8, 7), (2, 3), "S(1), S(-1)")})
    assert chunks_of(md, "w") == [
        ((0, 0), (8, 2)),
        ((0, 2), (8, 2)),
        ((0, 7), (8, 0)),
        ((0, 4), (8, 1)),
        ((0, 5), (8, 1)),
        ((0, 6), (8, 1)),
    ]
    assert res.errors == []
    # the raw mirror keeps torch's raw-dim keying (offsets of S(-1) not mapped through S(1)):
    # rank (1, 0) gets offset (0, 0) there, (0, 4) from the DTensor
    assert local_shape_and_offset((8, 7), (2, 3), (1, 0), [Shard(1), Shard(-1)]) == ((8, 1), (0, 0))
    assert _compute_local_shape_and_global_offset(
        (8, 7), (2, 3), [1, 0], [placement_to_torch(Shard(1)), placement_to_torch(Shard(-1))]
    ) == ((8, 1), (0, 0))
    assert dtensor_layout((8, 7), (2, 3), "S(1), S(-1)").placements == (Shard(1), Shard(1))


@pytest.mark.parametrize(
    "spec",
    [
        "S(-1), S(1)",
        "S(-2), S(0)",
        "S(0), SS(-2,2)",
        "SS(-1,3), S(1)",
        "S(-1), S(-1)",
        "SS(-2,2), S(-2)",
        "R, S(-1)",
    ],
)
@pytest.mark.parametrize("shape", [(8, 7), (5, 13), (0, 3)])
def test_negative_dims_save_and_load_like_torch(spec, shape):
    res, md, _ = check_save({"w": dtensor_layout(shape, (2, 3), spec)})
    if md is not None and not res.errors:
        check_load(res, md, {"w": dtensor_layout(shape, (4,), "S(-1)", world_size=5)})
        check_load(res, md, {"w": dtensor_layout(shape, (3, 1), "S(-2), S(-1)")})


def test_negative_dims_through_verify_with_torch():
    v = verify_with_torch(
        {"w": dtensor_layout((8, 6), (2, 2), "S(1), S(-1)")},
        load_layouts={"w": dtensor_layout((8, 6), (2, 2), "S(-2), S(0)")},
    )
    assert v.equal, str(v)


# ----------------------------------------------------------------------------- ranks outside the mesh
def test_ranks_outside_the_mesh_hold_the_dtensor_but_plan_nothing():
    # world 6, DTensor on the 4-rank mesh (2, 2); rank 4 and 5 hold it (torch skips them), bytes
    # only on rank 5, a plain tensor on ranks 3 and 4
    sd = {
        "w": dtensor_layout((6, 4), (2, 2), "S(0), S(1)", world_size=6),
        "b": bytes_layout(6, ranks=[5]),
        "t": tensor_layout((3,), 6, ranks=[3, 4]),
    }
    res, md, local = check_save(sd)
    assert [len(p.items) for p in local] == [1, 1, 1, 2, 1, 1]
    assert res.writers == {"w": [0, 1, 2, 3], "t": [4], "b": [5]}
    # load on 7 ranks: 4 in a (4,) mesh, 3 outside; strict, a key the checkpoint lacks: every
    # rank holding the DTensor raises, inside the mesh or not
    check_load(
        res,
        md,
        {
            "w": dtensor_layout((6, 4), (4,), "S(1)", world_size=7),
            "t": tensor_layout((3,), 7, ranks=[6]),
            "b": bytes_layout(7),
        },
    )
    ours = check_load(res, md, {"x": dtensor_layout((2,), (2,), "S(0)", world_size=7)})
    assert ours.failures == [("x", tuple(range(7)), "Missing key in checkpoint state_dict: x.")]
    ours = check_load(res, md, {"w": dtensor_layout((6, 5), (2,), "R", world_size=7)})
    assert ours.failures[0][1] == tuple(range(7))
    # a Partial destination raises only inside its mesh
    ours = check_load(res, md, {"w": dtensor_layout((6, 4), (2,), "P", world_size=4)})
    assert ours.failures[0][1] == (0, 1)


@pytest.mark.parametrize(
    "mesh,spec",
    [
        ((1, 4, 1), "R, S(0), S(1)"),
        ((4, 1), "S(0), S(0)"),
        ((1,), "S(0)"),
        ((1, 1), "R, P"),
        ((1, 3), "S(-1), S(-2)"),
    ],
)
def test_size_one_mesh_dims(mesh, spec):
    res, md, _ = check_save(
        {"w": dtensor_layout((5, 3), mesh, spec, world_size=6), "b": bytes_layout(6)}
    )
    if md is not None and not res.errors:
        check_load(
            res,
            md,
            {"w": dtensor_layout((5, 3), (1, 2), "S(1), S(0)", world_size=6), "b": bytes_layout(6)},
        )


# ----------------------------------------------------------------------------- 0-d and zero-size
def test_zero_d_dtensors_tensors_and_shards():
    # 0-d values: a replicated DTensor on (2, 2) in a world of 5, a plain tensor on ranks 1 and 3,
    # a ShardedTensor whose rank 2 lists the 0-d chunk twice (one key: both stay on rank 2)
    point = Chunk((), ())
    sd = {
        "d": dtensor_layout((), (2, 2), "R, R", "int64", world_size=5),
        "t": tensor_layout((), 5, ranks=[1, 3]),
        "s": sharded_layout((), {0: [point], 2: [point, point]}, world_size=5),
    }
    res, md, _ = check_save(sd)
    assert chunks_of(md, "s") == [((), ()), ((), ())]  # both of rank 2's (rank 0 charged by d)
    assert res.writers == {"d": [0], "t": [1], "s": [2, 2]}
    assert res.errors == []  # 0-d keys are never validated
    check_load(
        res,
        md,
        {
            "d": dtensor_layout((), (5,), "R"),
            "t": tensor_layout((), 5),
            "s": sharded_layout((), [[point, point]] * 5),
        },
    )
    # 0-d vs (1,): Size mismatch, also on ranks outside the destination mesh
    check_load(res, md, {"d": dtensor_layout((1,), (2,), "S(0)", world_size=5)})


@pytest.mark.parametrize(
    "shape,spec",
    [
        (shape, spec)
        for shape in [(0, 5), (5, 0), (0,), (2, 5)]
        for spec in ["S(0)", "S(-1)", "S(0), S(0)", "SS(0,3), S(-1)"]
    ],
)
def test_zero_size_dims_and_empty_shards(shape, spec):
    mesh = (4,) if spec.count(",") == 0 else (2, 2)
    res, md, _ = check_save({"w": dtensor_layout(shape, mesh, spec, world_size=5)})
    if md is not None and not res.errors:
        check_load(res, md, {"w": dtensor_layout(shape, (3,), "S(0)", world_size=5)})


def test_empty_shards_share_the_dim_end_offset_and_collapse():
    # (2, 5) on 4 ranks [S(0)]: rows [0:1) [1:2), ranks 2 and 3 empty at offset (2, 0): one key,
    # so dedup keeps one zero-size chunk (load-balanced: rank 2)
    res, md, _ = check_save({"w": dtensor_layout((2, 5), (4,), "S(0)")})
    assert chunks_of(md, "w") == [((0, 0), (1, 5)), ((1, 0), (1, 5)), ((2, 0), (0, 5))]
    assert res.writers == {"w": [0, 1, 2]}


# ----------------------------------------------------------------------------- ShardedTensor chunks
@pytest.mark.parametrize("lowest", [False, True])
def test_dedup_key_collision_between_different_sizes(lowest):
    # rank 0 holds [0:4), rank 1 holds [0:2) and [2:4): the key (w, [0]) is on both ranks, so one
    # of [0:4) / [0:2) is dropped although they differ. Rank 0 keeps [0:4) (both modes); rank 1
    # keeps [2:4): metadata [0:4) [2:4) overlaps and over-fills (6 elements for 4)
    res, md, _ = check_save(
        {"w": sharded_layout((4,), [[((0,), (4,))], [((0,), (2,)), ((2,), (2,))]])}, lowest
    )
    assert chunks_of(md, "w") == [((0,), (4,)), ((2,), (2,))]
    assert res.errors[-1] == "key:w invalid fill tensor-volume: 4 chunks-volume: 6"


def test_overlap_out_of_bounds_and_empty_chunk_strings():
    # tensor (6,): rank 0 [0:4) and an empty chunk at the end [6:6); rank 1 [3:6), an empty chunk
    # inside [2:2) and [5:7) past the end. torch reports the out-of-bounds chunk, then the
    # overlaps in sweep order (the current chunk first: [2:2) inside [0:4) overlaps it; [6:6)
    # overlaps [5:7) because that one pokes past the end), then the fill (9 for 6)
    res, md, _ = check_save(
        {
            "w": sharded_layout(
                (6,), [[((0,), (4,)), ((6,), (0,))], [((3,), (3,)), ((2,), (0,)), ((5,), (2,))]]
            )
        }
    )
    assert len(res.errors) == 6
    assert res.errors[0].startswith("key:w has out of bounds chunk: tensor-size:torch.Size([6])")
    assert res.errors[1] == (
        "key:w has overlapping chunks: ChunkStorageMetadata(offsets=torch."
        "Size([2]), sizes=torch.Size([0])) ChunkStorageMetadata(offsets=torch."
        "Size([0]), sizes=torch.Size([4]))"
    )


def test_validation_errors_over_500_chars_are_kept_whole():
    # [0:8) on rank 0 and five 2-wide chunks on ranks 1..5: 1574 characters of errors. plan_save
    # keeps torch's _validate_global_plan list; DefaultSavePlanner cuts the joined text at 500
    lay = {"w": sharded_layout((8,), [[((0,), (8,))]] + [[((i,), (2,))] for i in range(1, 6)])}
    res, _, local = check_save(lay)
    joined = "; ".join(res.errors)
    assert len(joined) > 500
    planner = DefaultSavePlanner(flatten_state_dict=False, enable_plan_caching=False)
    with pytest.raises(ValueError) as e:
        planner.create_global_plan(local)
    assert str(e.value) == f"Failed to validate global plan: {joined[:500]}... (truncated)"


# ----------------------------------------------------------------------------- dedup and order
@pytest.mark.parametrize(
    "mesh,writers",
    [((2, 8), [0, 1, 2, 4, 6, 11, 13, 15]), ((4, 4), [0, 1, 2, 11]), ((3, 5), [0, 1, 2, 8, 9])],
)
def test_hsdp_replicas_follow_cpython_set_order(mesh, writers):
    # (W,) on [R, S(0)]: chunk k lives on ranks {k, n+k, 2n+k, ...}; torch's min() over a set of
    # plan indices >= 8 is not lowest-rank first. Writers as torch 2.13 computed them.
    w = math.prod(mesh)
    res, _, _ = check_save({"w": dtensor_layout((w,), mesh, "R, S(0)")})
    assert res.writers["w"] == writers
    res, _, _ = check_save({"w": dtensor_layout((w,), mesh, "R, S(0)")}, lowest=True)
    assert res.writers["w"] == list(range(mesh[1]))


@pytest.mark.parametrize("mesh", [(2, 8), (4, 4), (3, 5), (8, 8), (2, 16), (24,)])
@pytest.mark.parametrize("extra", [0, 3])
@pytest.mark.parametrize("lowest", [False, True])
def test_hsdp_interleaved_with_bytes_and_tensors(mesh, extra, lowest):
    w = math.prod(mesh) + extra
    pl = "R, S(0)" if len(mesh) == 2 else "S(0)"
    sd = {
        "a": tensor_layout((2,), w),
        "w": dtensor_layout((13, 3), mesh, pl, world_size=w),
        "b": bytes_layout(w, ranks=range(1, w, 2)),
        "v": dtensor_layout((2 * w + 1,), mesh, pl, "bfloat16", world_size=w),
        "c": bytes_layout(w),
        "e": dtensor_layout((0, 4), mesh, pl, world_size=w),
    }
    check_save(sd, lowest)


def test_metadata_order_is_first_writer_then_state_dict():
    # state-dict order late, t, w, b; writers: w rank 0 (chunk 0), b rank 1 (rank 0 already
    # carries w's 16 bytes), t rank 2 (the least loaded of {1, 2}), late rank 3 (its only holder)
    sd = {
        "late": bytes_layout(4, ranks=[3]),
        "t": tensor_layout((3,), 4, ranks=[1, 2]),
        "w": dtensor_layout((4,), (2,), "S(0)", world_size=4),
        "b": bytes_layout(4),
    }
    res, md, _ = check_save(sd)
    assert list(md.state_dict_metadata) == ["w", "b", "t", "late"]
    assert res.writers == {"w": [0, 1], "b": [1], "t": [2], "late": [3]}


# ----------------------------------------------------------------------------- nested uneven shards
@pytest.mark.parametrize("pl", NESTED, ids=lambda pl: ",".join(map(str, pl)))
@pytest.mark.parametrize("rows,mesh", [(13, (3, 2)), (40, (2, 5)), (7, (2, 4))])
def test_nested_uneven_save_and_load_like_torch(pl, rows, mesh):
    # misdescribed strided boxes fail validation (the strings are compared); the rest load
    res, md, _ = check_save({"w": dtensor_layout((rows, 3), mesh, pl)})
    if not res.errors:
        check_load(res, md, {"w": dtensor_layout((rows, 3), (4,), "S(0)")})
        check_load(res, md, {"w": dtensor_layout((rows, 3), mesh[::-1], pl[::-1])})


@pytest.mark.parametrize("w_save,w_load", list(itertools.product([1, 2, 3, 5, 8], repeat=2)))
def test_load_across_world_sizes(w_save, w_load):
    sd = {
        "x": dtensor_layout((13, 3), (w_save,), "S(0)", world_size=w_save + 1),
        "y": bytes_layout(w_save + 1, ranks=[w_save]),
        "z": tensor_layout((2,), w_save + 1, ranks=[0]),
    }
    res, md, _ = check_save(sd)
    for strict in (True, False):
        check_load(
            res,
            md,
            {
                "x": dtensor_layout((13, 3), (1, w_load), "R, S(1)", world_size=w_load + 1),
                "y": bytes_layout(w_load + 1),
                "q": tensor_layout((2,), w_load + 1, ranks=[w_load]),
            },
            strict,
        )


# ----------------------------------------------------------------------------- random, wider
@st.composite
def big_crowded_state_dicts(draw):
    """9..64 ranks: shared dedup keys of ShardedTensor pools, DTensors on wide meshes, plain
    tensors and bytes on rank subsets (the set tie-break with large plan indices)."""
    world = draw(st.integers(9, 64))
    sd = {}
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["sharded", "sharded", "dtensor", "tensor", "bytes"]))
        ranks = draw(st.one_of(st.none(), st.sets(st.integers(0, world - 1), min_size=1)))
        if kind == "sharded":
            offs = draw(st.lists(st.integers(0, 9), min_size=3, max_size=3, unique=True))
            pool = [Chunk((o,), (draw(st.integers(0, 3)),)) for o in offs]
            sd[f"s{i}"] = sharded_layout(
                (12,),
                [draw(st.lists(st.sampled_from(pool), max_size=2)) for _ in range(world)],
                draw(st.sampled_from(DTYPES)),
                world,
            )
        elif kind == "dtensor":
            mesh = draw(
                st.sampled_from(
                    [(2, 4), (8,), (3, 3), (2, 2, 2), (4, 4), (2, 8), (3, 5), (8, 8), (4, 8)]
                )
            )
            mesh = mesh if math.prod(mesh) <= world else (world,)
            sd[f"s{i}"] = dtensor_layout(
                (draw(st.integers(0, 20)),),
                mesh,
                draw(wide_placements((1,), mesh, False)),
                draw(st.sampled_from(DTYPES)),
                world_size=world,
            )
        elif kind == "tensor":
            sd[f"s{i}"] = tensor_layout((draw(st.integers(0, 3)),), world, ranks=ranks)
        else:
            sd[f"s{i}"] = bytes_layout(world, ranks=ranks)
    return sd


@wide_settings
@given(wide_state_dicts(partial=True), st.booleans())
def test_wide_saves_match_torch(layouts, lowest):
    res, md, _ = check_save(layouts, lowest)
    event(f"torch raised: {md is None}")
    event(f"validation errors: {bool(res.errors)}")


@wide_settings
@given(wide_save_and_load())
def test_wide_loads_match_torch(case):
    # loads also from metadata that failed validation (what a planner skipping it would write)
    saved, load, strict, lowest = case
    res, md, _ = check_save(saved, lowest)
    if md is not None:
        ours = check_load(res, md, load, strict)
        event(f"failures: {bool(ours.failures)}")


@wide_settings
@given(big_crowded_state_dicts(), st.booleans())
def test_big_world_dedup_matches_torch(layouts, lowest):
    check_save(layouts, lowest)


# ----------------------------------------------------------------------------- int64 edges
def test_chunk_ends_past_int64_are_computed_exactly():
    # torch computes offset + size in Python ints; int64 columns wrapped. One chunk
    # [2**62, 2**63) of a (2**62,) tensor is out of bounds for torch; the columnar check saw
    # 2**62 + 2**62 wrap to -2**63 and reported nothing
    from torch.distributed.checkpoint import metadata as tmeta
    from torch.distributed.checkpoint.planner import SavePlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    from workbench.records import Metadata, TensorStorageMetadata

    big, top = 2**62, 2**63 - 1
    res = plan_save({"w": sharded_layout((big,), [[((big,), (big,))]], "bool")})
    assert res.errors == _validate_global_plan([SavePlan([])], to_torch(res.metadata))
    assert len(res.errors) == 1
    # load: hand-made metadata and local chunks near the top of int64; the wrapped columns
    # found 3 of torch's 7 read items
    saved = [((0,), (top,)), ((top - 5,), (top,)), ((big,), (big,)), ((3,), (0,))]
    local = [((top - 3,), (top,)), ((1,), (5,)), ((big + 1,), (2,))]
    md = Metadata({"w": TensorStorageMetadata("bool", (top,), saved)})
    ours = plan_load(md, {"w": sharded_layout((top,), [local], "bool")}).plans[0].items
    theirs = create_read_items_for_chunk_list(
        "w",
        to_torch(md).state_dict_metadata["w"],
        [tmeta.ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in local],
    )
    assert [read_key(i) for i in ours] == [read_key(i) for i in theirs]
    assert len(ours) == 7
    # torch.Size cannot hold 2**63: neither can a Chunk
    with pytest.raises(LayoutError, match="leave int64"):
        sharded_layout((4,), [[((2**63,), (1,))]])
