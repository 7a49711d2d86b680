"""`local_shape_and_offset` and `held_indices` against torch 2.13 on random inputs: the shape and
offset torch computes, and the data torch really places on each rank (LocalTensorMode +
distribute_tensor on an index tensor); both fail on the same bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from support import NESTED
from torch.distributed._local_tensor import LocalTensorMode
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import distribute_tensor
from torch.distributed.tensor import placement_types as TPL
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch_support import T

import workbench as wb
from workbench.errors import (
    LayoutError,
    PlacementError,
)
from workbench.sharding import (
    Partial,
    Replicate,
    Shard,
    StridedShard,
    box_matches_data,
    bytes_layout,
    dtensor_layout,
    held_indices,
    local_shape_and_offset,
    sharded_layout,
)
from workbench.torch_bridge.convert import (
    from_torch,
    placement_from_torch,
    placement_to_torch,
    to_torch,
)


@st.composite
def sharding_cases(draw, partial=True, negative=True, min_ndim=0, max_ndim=4):
    ndim = draw(st.integers(min_ndim, max_ndim))
    shape = tuple(draw(st.integers(0, 7)) for _ in range(ndim))
    mesh = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 3))))
    pl = []
    for _ in mesh:
        kinds = ["R"] + (["P"] if partial else []) + (["S", "SS"] if ndim else [])
        k = draw(st.sampled_from(kinds))
        lo = -ndim if negative else 0
        if k == "R":
            pl.append(Replicate())
        elif k == "P":
            pl.append(Partial())
        elif k == "S":
            pl.append(Shard(draw(st.integers(lo, ndim - 1))))
        else:
            # torch 2.13 splits a 1-D arange along the dim: only -1 works among negative dims
            # (see test_strided_shard_negative_dim_below_minus_one)
            pl.append(
                StridedShard(draw(st.integers(max(lo, -1), ndim - 1)), draw(st.integers(1, 4)))
            )
    return shape, mesh, pl


def torch_local(shape, mesh, coord, pl):
    out = _compute_local_shape_and_global_offset(
        shape, mesh, list(coord), [placement_to_torch(p) for p in pl]
    )
    return tuple(out[0]), tuple(out[1])


@given(sharding_cases())
def test_local_shape_and_offset_matches_torch(case):
    shape, mesh, pl = case
    for coord in itertools.product(*map(range, mesh)):
        assert local_shape_and_offset(shape, mesh, coord, pl) == torch_local(shape, mesh, coord, pl)


@given(sharding_cases())
def test_placements_round_trip_through_torch(case):
    _, _, pl = case
    assert [placement_from_torch(placement_to_torch(p)) for p in pl] == pl


@pytest.fixture(scope="module")
def fake_group():
    # LocalTensorMode simulates every rank in one process; DeviceMesh needs some default group.
    # (world size 27 >= the largest mesh drawn, 3 x 3 x 3)
    dist.init_process_group("fake", rank=0, world_size=27, store=FakeStore())
    yield
    dist.destroy_process_group()


def torch_held(shape, mesh, pl):
    """{rank: {dim: indices}} read off the data distribute_tensor places on each rank: the tensor
    holds its own flat indices, unravelled per dim (only for ranks holding any data)."""
    n = math.prod(mesh)
    with LocalTensorMode(n):
        dm = DeviceMesh("cpu", torch.arange(n).reshape(mesh))
        x = torch.arange(math.prod(shape)).reshape(shape)
        # src_data_rank=None: local splits, no scatter (the scatter path rejects uneven strides)
        try:
            dt = distribute_tensor(x, dm, [placement_to_torch(p) for p in pl], src_data_rank=None)
        except RuntimeError as e:
            # torch 2.13 cannot place some strided layouts with an empty rank on another dim
            # ("Sizes of tensors must match" in _StridedShard._split_tensor): no oracle there
            assert "Sizes of tensors must match" in str(e)
            return None
        local = dt.to_local()
        # a one-rank mesh gives a plain tensor
        per_rank = getattr(local, "_local_tensors", None) or {0: local}
        locals_ = {r: t.clone() for r, t in per_rank.items()}
    out = {}
    for r, t in locals_.items():
        if t.numel() == 0:
            continue
        idx = np.unravel_index(t.numpy().ravel(), shape)
        per = {}
        for d in range(len(shape)):
            along = idx[d].reshape(tuple(t.shape))
            sl = tuple(slice(None) if k == d else 0 for k in range(len(shape)))
            per[d] = [int(v) for v in along[sl]]
        out[r] = per
    return out


@settings(max_examples=60)
@given(sharding_cases(partial=False, min_ndim=1, max_ndim=3))  # 0-d: nothing to hold per dim
def test_held_indices_match_the_data_torch_places(fake_group, case):
    shape, mesh, pl = case
    real = torch_held(shape, mesh, pl)
    assume(real is not None)
    L = dtensor_layout(shape, mesh, pl)
    for r, coord in enumerate(itertools.product(*map(range, mesh))):
        ours = held_indices(shape, mesh, coord, pl)
        local, offset = local_shape_and_offset(shape, mesh, coord, pl)
        if r in real:
            for d, idx in ours.items():
                assert idx == real[r][d]
            # the box DCP records describes the data exactly when box_matches_data says so
            box_ok = all(
                real[r][d] == list(range(offset[d], offset[d] + local[d]))
                for d in range(len(shape))
            )
            assert box_matches_data(shape, mesh, coord, pl) == box_ok
            # the layout is built like a DTensor, whose negative dims are normalised first
            c = L.rank_chunks[r][0]
            layout_ok = all(
                real[r][d] == list(range(c.offsets[d], c.ends[d])) for d in range(len(shape))
            )
            assert (r in L.misdescribed_ranks) == (not layout_ok)
        for d, idx in ours.items():
            assert len(idx) == local[d]


def test_held_indices_strided_example(fake_group):
    # (8,) on 2 ranks [SS(0,2)]: rank 0 holds 0,1,4,5 (box [0:4]); rank 1 holds 2,3,6,7 (box [2:6])
    assert torch_held((8,), (2,), [StridedShard(0, 2)]) == {
        0: {0: [0, 1, 4, 5]},
        1: {0: [2, 3, 6, 7]},
    }
    assert held_indices((8,), (2,), (1,), "SS(0,2)") == {0: [2, 3, 6, 7]}


# ----------------------------------------------------------------------------- same bad input
@pytest.mark.parametrize(
    "shape,mesh,coord,pl,torch_exc,torch_text",
    [
        # shard dim past ndim: torch reads global_shape[d] first
        ((4, 3), (2,), (0,), [Shard(2)], IndexError, "tuple index out of range"),
        ((4, 3), (2,), (0,), [Shard(-3)], IndexError, "tuple index out of range"),
        ((), (2,), (0,), [Shard(0)], IndexError, "tuple index out of range"),
        # more placements than mesh dims: torch reads mesh_shape[m] past its end
        ((4, 3), (2,), (0, 0), [Shard(0), Shard(1)], IndexError, "tuple index out of range"),
        # split factor 0 / negative: torch.chunk's assertion
        (
            (4, 3),
            (2,),
            (0,),
            [StridedShard(0, 0)],
            AssertionError,
            "Expected num_chunks > 0, got 0",
        ),
        (
            (4, 3),
            (2,),
            (0,),
            [StridedShard(1, -1)],
            AssertionError,
            "Expected num_chunks > 0, got -1",
        ),
    ],
)
def test_both_fail_on_the_same_bad_input(shape, mesh, coord, pl, torch_exc, torch_text):
    with pytest.raises(torch_exc, match=torch_text):
        torch_local(shape, mesh, coord, pl)
    with pytest.raises(PlacementError) as ei:
        local_shape_and_offset(shape, mesh, coord, pl, fqn="w")
    assert str(ei.value).startswith("w: ")


@pytest.mark.parametrize(
    "shape,mesh,coord,pl",
    [
        ((4, 3), (2, 2), (0,), [Shard(0)]),  # fewer placements than mesh dims
        ((4, 3), (2,), (2,), [Shard(0)]),  # coordinate outside the mesh
    ],
)
def test_stricter_than_torch_where_torch_answers_garbage(shape, mesh, coord, pl):
    # torch answers these without complaint (a rank at coordinate 2 of 2 gets offset 4 = the
    # dim size); the workbench refuses them
    torch_local(shape, mesh, coord, pl)
    with pytest.raises(PlacementError):
        local_shape_and_offset(shape, mesh, coord, pl)


def test_strided_shard_negative_dim_below_minus_one():
    # torch splits arange(L) (1-D) along dim -2: "Dimension out of range"
    with pytest.raises(IndexError, match="Dimension out of range"):
        torch_local((4, 3), (2,), (0,), [StridedShard(-2, 2)])
    with pytest.raises(PlacementError):
        local_shape_and_offset((4, 3), (2,), (0,), [StridedShard(-2, 2)])


def test_negative_dim_alias_misdescribes_the_box(fake_group):
    # [S(0), S(-2)] on (2, 1) over mesh (2, 1): torch keys its held map by the raw dim, so the
    # S(-2) step overwrites offset[0] with 0: rank 1 holds row 1 but DCP records [0:1, 0:1]
    shape, mesh, pl = (2, 1), (2, 1), [Shard(0), Shard(-2)]
    assert torch_local(shape, mesh, (1, 0), pl) == ((1, 1), (0, 0))
    assert torch_held(shape, mesh, pl)[1] == {0: [1], 1: [0]}
    assert not box_matches_data(shape, mesh, (1, 0), pl)
    # ... but a real DTensor normalises S(-2) to S(0) (DTensor.from_local), so DCP records
    # [1:2, 0:1] for rank 1 and the layout, built like the DTensor, matches its data
    assert dtensor_layout(shape, mesh, pl).misdescribed_ranks == ()
    assert dtensor_layout(shape, mesh, pl).rank_chunks[1][0].offsets == (1, 0)


# ----------------------------------------------------------------------------- placements
@pytest.mark.parametrize(
    "spec,obj,torch_obj",
    [
        ("S(0)", wb.Shard(0), TPL.Shard(0)),
        ("R", wb.Replicate(), TPL.Replicate()),
        ("SS(0,2)", wb.StridedShard(0, 2), TPL._StridedShard(0, split_factor=2)),
        ("P", wb.Partial(), TPL.Partial()),
    ],
)
def test_placements_parse_print_and_match_torch(spec, obj, torch_obj):
    assert wb.parse_placement(spec) == obj
    assert str(obj) == spec
    assert wb.parse_placement(str(obj)) == obj
    # torch's own printed forms parse too, and a torch placement converts to the same record
    assert wb.parse_placement(repr(torch_obj)) == obj
    assert wb.parse_placement(str(torch_obj)) == obj
    assert repr(obj) == repr(torch_obj)
    assert from_torch(torch_obj) == obj
    assert to_torch(obj) == torch_obj


def test_placement_fields_use_torch_names():
    assert wb.Shard(1).dim == TPL.Shard(1).dim
    ss = wb.StridedShard(dim=1, split_factor=3)
    assert (ss.dim, ss.split_factor) == (1, 3)
    assert wb.Partial().reduce_op == TPL.Partial().reduce_op == "sum"


# ----------------------------------------------------------------------------- torch placements
SHARD_CASES = [
    ((8, 6), (2,), ["S(0)"]),
    ((7, 5), (4,), ["S(0)"]),  # uneven: 2, 2, 2, 1
    ((3,), (8,), ["S(0)"]),  # empty shards
    ((13, 2), (4, 2), ["S(0)", "S(0)"]),
    ((12, 4), (2, 2), ["SS(0,2)", "S(0)"]),
    ((10, 9), (2, 3), ["S(1)", "S(0)"]),
    ((9, 4), (3, 2), ["R", "S(1)"]),
    ((16,), (2, 2), ["SS(0,2)", "S(0)"]),
    ((5, 6), (2,), ["S(-1)"]),
]


def _coords(mesh_shape):
    return [
        tuple(int(c) for c in torch.unravel_index(torch.tensor(r), mesh_shape))
        for r in range(math.prod(mesh_shape))
    ]


@pytest.mark.parametrize("shape,mesh,specs", SHARD_CASES)
@pytest.mark.parametrize("form", ["workbench", "spec", "torch"])
def test_local_shape_and_offset_equals_torch(shape, mesh, specs, form):
    torch_pl = [T(wb.parse_placement(s)) for s in specs]
    given = {"workbench": [wb.parse_placement(s) for s in specs], "spec": specs, "torch": torch_pl}[
        form
    ]
    for coord in _coords(mesh):
        got = wb.local_shape_and_offset(shape, mesh, coord, given)
        want = _compute_local_shape_and_global_offset(shape, mesh, list(coord), torch_pl)
        assert got == (tuple(want[0]), tuple(want[1])), (coord, got, want)
        assert type(got) is tuple and all(type(x) is tuple for x in got)


def test_local_shape_and_offset_accepts_torch_size_and_tuples():
    got = wb.local_shape_and_offset(torch.Size([8, 6]), torch.Size([2]), (1,), (TPL.Shard(0),))
    assert got == ((4, 6), (4, 0))


def _torch_held(shape, mesh, coord, torch_pl):
    """Independently: split index tensors with torch's own placements, the way distribute_tensor
    shards a full tensor mesh dim by mesh dim."""
    idx = {d: torch.arange(shape[d]) for d in range(len(shape))}
    for m, p in enumerate(torch_pl):
        if isinstance(p, (TPL.Shard, TPL._StridedShard)):
            d = p.dim % len(shape)
            # the same placement on dim 0 of the 1-d index tensor of dim d
            p1 = (
                TPL.Shard(0)
                if type(p) is TPL.Shard
                else TPL._StridedShard(0, split_factor=p.split_factor)
            )
            pieces, _ = p1._split_tensor(idx[d], mesh[m], with_padding=False)
            idx[d] = pieces[coord[m]]
    sharded = {
        p.dim % len(shape) for p in torch_pl if isinstance(p, (TPL.Shard, TPL._StridedShard))
    }
    return {d: idx[d].tolist() for d in sorted(sharded)}


@pytest.mark.parametrize("shape,mesh,specs", SHARD_CASES)
def test_held_indices_match_torch_split(shape, mesh, specs):
    torch_pl = [T(wb.parse_placement(s)) for s in specs]
    for coord in _coords(mesh):
        got = wb.held_indices(shape, mesh, coord, specs)
        assert isinstance(got, dict) and all(type(v) is list for v in got.values())
        assert got == _torch_held(shape, mesh, coord, torch_pl), coord
        # torch placements are accepted as well
        assert wb.held_indices(shape, mesh, coord, torch_pl) == got


@st.composite
def sharding_case(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(0, 12)) for _ in range(ndim))
    mesh = tuple(draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 3))))
    pl = []
    for _ in mesh:
        kind = draw(st.sampled_from(["S", "SS", "R", "P"]))
        d = draw(st.integers(0, ndim - 1))
        pl.append(
            {
                "S": TPL.Shard(d),
                "R": TPL.Replicate(),
                "P": TPL.Partial(),
                "SS": TPL._StridedShard(d, split_factor=draw(st.integers(1, 3))),
            }[kind]
        )
    return shape, mesh, pl


@settings(max_examples=80)
@given(sharding_case())
def test_random_torch_placements_local_shape_offset_and_held(case):
    shape, mesh, torch_pl = case
    for coord in _coords(mesh):
        want = _compute_local_shape_and_global_offset(shape, mesh, list(coord), torch_pl)
        assert wb.local_shape_and_offset(shape, mesh, coord, torch_pl) == (
            tuple(want[0]),
            tuple(want[1]),
        )
        assert wb.held_indices(shape, mesh, coord, torch_pl) == _torch_held(
            shape, mesh, coord, torch_pl
        )


# ----------------------------------------------------------------------------- nested uneven shards
@pytest.mark.parametrize("pl", NESTED, ids=lambda pl: ",".join(map(str, pl)))
def test_nested_uneven_local_shapes_match_torch_exhaustively(pl):
    # every row count 0..40 on meshes (a, b), a, b in {1, 2, 3, 5, 8}, every coordinate
    tpl = [placement_to_torch(p) for p in pl]
    for rows, m0, m1 in itertools.product(range(41), [1, 2, 3, 5, 8], [1, 2, 3, 5, 8]):
        for c in itertools.product(range(m0), range(m1)):
            want = _compute_local_shape_and_global_offset((rows, 2), (m0, m1), list(c), tpl)
            assert local_shape_and_offset((rows, 2), (m0, m1), c, pl) == (
                tuple(want[0]),
                tuple(want[1]),
            )


@settings(max_examples=150)
@given(sharding_cases())
def test_dtensor_layout_boxes_match_torch_at_every_mesh_position(case):
    # dtensor_layout computes Shard-only placements for all positions at once (numpy), the
    # others rank by rank: both must be torch's box at every coordinate, for the placements a
    # DTensor holds (negative dims normalised, as DTensor.from_local does)
    shape, mesh, pl = case
    lay = dtensor_layout(shape, mesh, pl)
    for i, coord in enumerate(itertools.product(*map(range, mesh))):
        local, offset = torch_local(shape, mesh, coord, lay.placements)
        (chunk,) = lay.rank_chunks[i]
        assert (chunk.offsets, chunk.sizes) == (offset, local), coord


def test_nested_uneven_shard_layout_boxes_match_torch_exhaustively():
    # two Shards of one dim, the vectorised path's composition: every row count 0..40 on meshes
    # (a, b), a, b in {1, 2, 3, 5, 8}, every coordinate (empty shards included)
    pl = [Shard(0), Shard(0)]
    tpl = [placement_to_torch(p) for p in pl]
    for rows, m0, m1 in itertools.product(range(41), [1, 2, 3, 5, 8], [1, 2, 3, 5, 8]):
        lay = dtensor_layout((rows, 2), (m0, m1), pl)
        for i, c in enumerate(itertools.product(range(m0), range(m1))):
            want = _compute_local_shape_and_global_offset((rows, 2), (m0, m1), list(c), tpl)
            (chunk,) = lay.rank_chunks[i]
            assert (chunk.sizes, chunk.offsets) == (tuple(want[0]), tuple(want[1]))


# ----------------------------------------------------------------------------- bad layouts
def test_layouts_refuse_ranks_outside_the_world():
    c = ((0,), (2,))
    with pytest.raises(LayoutError, match="lists 3 ranks for a world of 2"):
        sharded_layout((4,), [[c], [c], [c]], world_size=2)
    with pytest.raises(LayoutError, match=r"ranks \[0, 5\] are not all in a world of 3"):
        sharded_layout((4,), {0: [c], 5: [c]}, world_size=3)
    with pytest.raises(LayoutError, match=r"ranks \[-1\]"):
        sharded_layout((4,), {-1: [c]})
    with pytest.raises(LayoutError, match="world size 0 is below 1"):
        sharded_layout((4,), [], world_size=0)
    with pytest.raises(LayoutError, match=r"ranks \[5\] are not all in a world of 2"):
        bytes_layout(2, ranks=[5])
    with pytest.raises(LayoutError, match="world size 0"):
        bytes_layout(0)
