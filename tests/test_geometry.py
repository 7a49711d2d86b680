"""geometry.py: the Chunk record, torch's overlap predicate, intersections and exact coverage,
checked against brute-force numpy element masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.errors import ChunkError, WorkbenchError
from workbench.geometry import (
    Chunk,
    as_chunk,
    boxes_overlap,
    covered_volume,
    format_box,
    intersect,
    uncovered,
    volume,
)


def mask(shape, chunk: Chunk) -> np.ndarray:
    """Element mask of ``chunk`` clipped to an array of ``shape``."""
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(max(o, 0), max(o + s, 0)) for o, s in zip(chunk.offsets, chunk.sizes))] = True
    return m


@st.composite
def boxes_in(draw, shape, max_boxes=6):
    out = []
    for _ in range(draw(st.integers(0, max_boxes))):
        offs = tuple(draw(st.integers(0, d)) for d in shape)
        sizes = tuple(draw(st.integers(0, d - o)) for d, o in zip(shape, offs))
        out.append(Chunk(offs, sizes))
    return out


shapes = st.lists(st.integers(0, 6), min_size=1, max_size=3).map(tuple)


# ----------------------------------------------------------------------------- the record
def test_chunk_normalises_and_prints_in_slice_notation():
    a = Chunk([4, 0], [4, 6])
    assert a == Chunk((4, 0), (4, 6)) and hash(a) == hash(Chunk((4, 0), (4, 6)))
    assert (a.offsets, a.sizes, a.ends) == ((4, 0), (4, 6), (8, 6))
    assert str(a) == "[4:8, 0:6]" and repr(a) == "Chunk[4:8, 0:6]"
    assert str(Chunk((), ())) == "[]" and format_box((1,), (0,)) == "[1:1]"
    assert a.torch_repr() == (
        "ChunkStorageMetadata(offsets=torch.Size([4, 0]), sizes=torch.Size([4, 6]))"
    )
    assert (a.volume, a.ndim, a.is_empty) == (24, 2, False)
    assert Chunk((3,), (0,)).is_empty and Chunk((), ()).volume == 1
    assert a.slices() == (slice(4, 8), slice(0, 6))


def test_chunk_torch_repr_is_torchs():
    import torch
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    for c in (Chunk((4, 0), (4, 6)), Chunk((), ()), Chunk((7,), (0,))):
        assert c.torch_repr() == repr(
            ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes))
        )
        assert Chunk(torch.Size(c.offsets), torch.Size(c.sizes)) == c


def test_as_chunk_accepts_records_pairs_and_shard_metadata():
    class ShardMd:
        shard_offsets = [2, 0]
        shard_sizes = [2, 3]

    assert as_chunk(ShardMd()) == Chunk((2, 0), (2, 3))
    assert as_chunk(((1,), (2,))) == Chunk((1,), (2,))
    c = Chunk((1,), (2,))
    assert as_chunk(c) is c


@pytest.mark.parametrize(
    "offsets,sizes,text",
    [
        ((0, 0), (4,), "chunk offsets [0, 0] and sizes [4] have different lengths 2 and 1"),
        ((0,), (-1,), "chunk with offsets [0] has negative sizes [-1]"),
        (
            [0.5],
            [1],
            "offsets [0.5] is not a sequence of ints",
        ),  # (tuples skip this check: fast path)
    ],
)
def test_bad_chunks_raise_chunk_error(offsets, sizes, text):
    with pytest.raises(ChunkError) as ei:
        Chunk(offsets, sizes)
    assert text in str(ei.value)
    assert isinstance(ei.value, WorkbenchError)


def test_contains_and_within():
    big, small = Chunk((0, 0), (4, 4)), Chunk((1, 1), (2, 3))
    assert big.contains(small) and not small.contains(big)
    assert small.within((4, 4)) and not Chunk((3,), (2,)).within((4,))
    assert not Chunk((-1,), (1,)).within((4,)) and not big.within((4,))


# ----------------------------------------------------------------------------- predicates
def test_overlap_predicate_counts_zero_size_boxes_strictly_inside():
    # torch's predicate: a zero-size box strictly inside another "overlaps" it; at an edge not
    assert boxes_overlap((5,), (0,), (0,), (10,))
    assert not boxes_overlap((10,), (0,), (0,), (10,))
    assert not boxes_overlap((0,), (0,), (0,), (10,))  # 0 >= 0 + 0 on the other side
    assert boxes_overlap((), (), (), ())  # 0-d pairs always overlap
    assert not boxes_overlap((0,), (2,), (2,), (2,))  # touching half-open boxes


@given(shapes.flatmap(lambda s: st.tuples(st.just(s), boxes_in(s, 2), boxes_in(s, 2))))
def test_overlap_and_intersect_match_element_masks(case):
    shape, a_list, b_list = case
    for a in a_list:
        for b in b_list:
            common = (mask(shape, a) & mask(shape, b)).sum()
            if not a.is_empty and not b.is_empty:
                # for non-empty boxes the predicate is plain geometric overlap
                assert boxes_overlap(a.offsets, a.sizes, b.offsets, b.sizes) == (common > 0)
                assert a.overlaps(b) == (common > 0)
            c = intersect(a, b)
            if c is None:
                assert common == 0
            else:
                assert (mask(shape, c) == (mask(shape, a) & mask(shape, b))).all()
                assert a.contains(c) and b.contains(c)


def test_intersect_refuses_different_ranks():
    with pytest.raises(ChunkError):
        intersect(Chunk((0,), (1,)), Chunk((0, 0), (1, 1)))


# ----------------------------------------------------------------------------- coverage
@given(shapes.flatmap(lambda s: st.tuples(st.just(s), boxes_in(s))), st.data())
def test_uncovered_pieces_and_covered_parts_tile_the_box(case, data):
    shape, boxes = case
    box = data.draw(boxes_in(shape, 1).filter(len))[0]
    pieces = uncovered(box, boxes)
    covered = np.zeros(shape, dtype=bool)
    for b in boxes:
        covered |= mask(shape, b)
    box_m = mask(shape, box)
    count = np.zeros(shape, dtype=int)
    for p in pieces:
        assert not p.is_empty and box.contains(p)
        count += mask(shape, p)
    assert count.max(initial=0) <= 1  # pieces are disjoint
    assert ((count == 1) == (box_m & ~covered)).all()  # exactly the uncovered elements
    assert covered_volume(box, boxes) == int((box_m & covered).sum())


def test_uncovered_worked_examples():
    # (8, 8) with rows 0:6 covered -> [6:8, 0:8] missing (the house error's example)
    assert uncovered(Chunk((0, 0), (8, 8)), [Chunk((0, 0), (6, 8))]) == [Chunk((6, 0), (2, 8))]
    # rows [0:4] and [2:6] of 8 by 3: volumes add to 24 = 24 but [6:8] is missing
    parts = [Chunk((0, 0), (4, 3)), Chunk((2, 0), (4, 3))]
    assert sum(p.volume for p in parts) == 24 and covered_volume(Chunk((0, 0), (8, 3)), parts) == 18
    assert uncovered(Chunk((0, 0), (8, 3)), parts) == [Chunk((6, 0), (2, 3))]
    # empty box: nothing to cover; 0-d box: covered by any 0-d box
    assert uncovered(Chunk((3,), (0,)), []) == []
    assert uncovered(Chunk((), ()), []) == [Chunk((), ())]
    assert uncovered(Chunk((), ()), [Chunk((), ())]) == []


def test_volume():
    assert volume((2, 3, 4)) == 24 and volume(()) == 1 and volume(Chunk((1,), (5,))) == 5
