"""Bad input raises one WorkbenchError subclass in the house form ``<fqn>: <what> <values>
(<expectation>). <fix>``, naming the item and its values.
"""

from __future__ import annotations

import pytest
import torch
from support import house_form

import workbench as wb

BAD = [
    ("chunk offsets/sizes lengths", lambda: wb.Chunk((0, 0), (4,)), None, ["[0, 0]", "[4]"]),
    ("negative size", lambda: wb.Chunk((0,), (-2,)), None, ["-2"]),
    (
        "shard dim past ndim",
        lambda: wb.local_shape_and_offset((8, 6), (2,), (0,), ["S(2)"]),
        None,
        ["S(2)", "(8, 6)"],
    ),
    (
        "shard dim past ndim, fqn",
        lambda: wb.dtensor_layout((8, 6), (2,), "S(2)", fqn="w"),
        "w",
        ["S(2)", "(8, 6)"],
    ),
    (
        "placements vs mesh",
        lambda: wb.dtensor_layout((8, 6), (2, 2), "S(0)", fqn="w"),
        "w",
        ["S(0)", "(2, 2)"],
    ),
    (
        "held placements vs mesh",
        lambda: wb.held_indices((8, 6), (2, 2), (0, 0), ["S(0)"]),
        None,
        ["(2, 2)"],
    ),
    ("split factor 0", lambda: wb.dtensor_layout((8,), (2,), "SS(0,0)", fqn="w"), "w", ["SS(0,0)"]),
    ("unknown dtype", lambda: wb.tensor_layout((2,), 2, "floaty32", fqn="w"), "w", ["floaty32"]),
    ("unknown dtype record", lambda: wb.TensorProperties("floaty32"), None, ["floaty32"]),
    ("bad spec", lambda: wb.parse_placement("X(1)"), None, ["X(1)"]),
    (
        "coordinate outside mesh",
        lambda: wb.local_shape_and_offset((8,), (2,), (2,), ["S(0)"]),
        None,
        ["(2,)"],
    ),
]


@pytest.mark.parametrize("name,call,fqn,values", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_house_form(name, call, fqn, values):
    with pytest.raises(wb.WorkbenchError) as e:
        call()
    msg = house_form(e.value, fqn)
    for v in values:
        assert v in msg, (v, msg)


def test_read_items_bad_input_names_the_fqn():
    md = wb.TensorStorageMetadata("float32", (8, 6), [wb.Chunk((0, 0), (8, 6))])
    # torch zips per dim and returns a garbage read here; the workbench refuses
    with pytest.raises(wb.ChunkError) as e:
        wb.create_read_items_for_chunk_list("w", md, [wb.Chunk((0,), (3,))])
    assert "[0:3]" in house_form(e.value, "w")
    with pytest.raises(wb.ChunkError) as e:
        wb.create_read_items_for_chunk_list("w", md, [((0, 0), (3,))])
    assert "[0, 0]" in house_form(e.value, "w")
    for bad in (None, {"w": md}):
        with pytest.raises(wb.PlanError) as e:
            wb.create_read_items("w", bad, torch.zeros(8, 6))
        house_form(e.value, "w")
    with pytest.raises(wb.PlanError) as e:
        wb.create_read_items_for_chunk_list("w", None, [wb.Chunk((0, 0), (8, 6))])
    house_form(e.value, "w")
