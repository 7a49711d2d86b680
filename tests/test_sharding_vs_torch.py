"""`local_shape_and_offset` and `held_indices` against torch 2.13 on random inputs: the shape and
offset torch computes, and the data torch really places on each rank (LocalTensorMode +
distribute_tensor on an index tensor); both fail on the same bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist  # noqa: E402
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.distributed._local_tensor import LocalTensorMode  # noqa: E402
from torch.distributed.device_mesh import DeviceMesh  # noqa: E402
from torch.distributed.tensor import distribute_tensor  # noqa: E402
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset  # noqa: E402
from torch.testing._internal.distributed.fake_pg import FakeStore  # noqa: E402

from workbench.errors import PlacementError  # noqa: E402
from workbench.sharding import (
    Partial,
    Replicate,
    Shard,
    StridedShard,
    box_matches_data,  # noqa: E402
    dtensor_layout,
    held_indices,
    local_shape_and_offset,
)
from workbench.torch_bridge.convert import placement_from_torch, placement_to_torch  # noqa: E402


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
