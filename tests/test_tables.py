"""Tables: every frame compared with a small frame built by hand (pd.testing.assert_frame_equal).

Expected values come from torch-verified facts in dcp-semantics.md (quoted in the comments) or are
computed by hand from the intervals written next to them.
"""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import house_form, tsm
from torch.distributed.tensor import placement_types as TPL
from torch_support import fake_rank, real_dtensor

import workbench as wb
from workbench.diagnosis import Problem
from workbench.errors import MetadataError, PlanError
from workbench.geometry import Chunk
from workbench.planning import plan_load, plan_save
from workbench.records import (
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageInfo,
)
from workbench.tables import (
    checkpoint_chunks_table,
    chunk_holders,
    chunk_storage,
    distribution_table,
    equal_rows_table,
    file_io_table,
    io_table,
    layout_chunks_table,
    problems_table,
    read_items_table,
    style_by_rank,
    write_items_table,
)
from workbench.torch_bridge.convert import to_torch


def frame(schema: dict, rows: list[tuple]) -> pd.DataFrame:
    """A frame with ``schema``'s columns/dtypes from row tuples (tuples kept in object columns)."""
    cols = list(zip(*rows)) if rows else [[] for _ in schema]
    data = {}
    for (name, dtype), values in zip(schema.items(), cols):
        if dtype == "object":
            arr = np.empty(len(values), dtype=object)
            arr[:] = list(values)
            data[name] = pd.Series(arr, dtype=object)
        else:
            data[name] = pd.Series(list(values), dtype=dtype)
    return pd.DataFrame(data)


NA = None
LAYOUT = {
    "rank": "int64",
    "coordinate": "object",
    "chunk": "int64",
    "region": "str",
    "offsets": "object",
    "sizes": "object",
    "numel": "Int64",
    "bytes": "Int64",
    "replicas": "object",
    "is_empty": "bool",
    "misdescribed": "bool",
    "held": "str",
}
CHECKPOINT = {
    "fqn": "str",
    "kind": "str",
    "chunk": "Int64",
    "region": "str",
    "offsets": "object",
    "sizes": "object",
    "numel": "Int64",
    "bytes": "Int64",
    "dtype": "str",
    "file": "str",
    "offset": "Int64",
    "length": "Int64",
    "writer": "Int64",
}
WRITE = {
    "rank": "int64",
    "order": "int64",
    "fqn": "str",
    "type": "str",
    "region": "str",
    "numel": "Int64",
    "bytes": "Int64",
    "kept": "bool",
    "writer": "Int64",
    "file": "str",
}
READ = {
    "rank": "int64",
    "order": "int64",
    "fqn": "str",
    "type": "str",
    "dest_region": "str",
    "storage_region": "str",
    "dest_offsets": "object",
    "storage_offsets": "object",
    "lengths": "object",
    "numel": "Int64",
    "bytes": "Int64",
    "bytes_read": "Int64",
    "dest_chunk": "Int64",
    "source_chunk": "Int64",
    "source_file": "str",
    "writer": "Int64",
}
PROBLEMS = {
    "fqn": "str",
    "kind": "str",
    "severity": "str",
    "ranks": "object",
    "rank_list": "str",
    "region": "str",
    "message": "str",
    "fix": "str",
}
IO = {
    "rank": "int64",
    "files": "int64",
    "reads": "int64",
    "bytes_needed": "int64",
    "bytes_read": "int64",
    "amplification": "float64",
}
FILE_IO = {
    "file": "str",
    "writer": "Int64",
    "readers": "object",
    "n_readers": "int64",
    "reads": "int64",
    "bytes_read": "int64",
}


# ----------------------------------------------------------------------------- layouts
def test_layout_table_uneven_dtensor_has_empty_shard_at_dim_end():
    # dcp-semantics s.2: (13,2), mesh (4,2), [S(0),S(0)] -> rank (3,1) gets shape (0,2), offset
    # (13,0). Rows 13 split in 4 -> 4,4,4,1; each split in 2 -> [2,2],[2,2],[2,2],[1,0].
    got = layout_chunks_table(wb.dtensor_layout((13, 2), (4, 2), "S(0), S(0)"))
    rows = []
    for r, (start, n) in enumerate(
        [(0, 2), (2, 2), (4, 2), (6, 2), (8, 2), (10, 2), (12, 1), (13, 0)]
    ):
        rows.append(
            (
                r,
                divmod(r, 2),
                0,
                f"[{start}:{start + n}, 0:2]",
                (start, 0),
                (n, 2),
                2 * n,
                8 * n,
                (r,),
                n == 0,
                False,
                NA,
            )
        )
    pd.testing.assert_frame_equal(got, frame(LAYOUT, rows))


def test_layout_table_replicas_and_ranks_outside_the_mesh():
    # (8,4) on mesh (2,2) [R, S(1)]: ranks r and r+2 hold the same column half; world 6 ->
    # ranks 4, 5 hold nothing and have no row. bfloat16: 2 bytes per element.
    got = layout_chunks_table(wb.dtensor_layout((8, 4), (2, 2), "R, S(1)", "bfloat16", 6))
    rows = [
        (
            r,
            divmod(r, 2),
            0,
            f"[0:8, {2 * (r % 2)}:{2 * (r % 2) + 2}]",
            (0, 2 * (r % 2)),
            (8, 2),
            16,
            32,
            (r % 2, r % 2 + 2),
            False,
            False,
            NA,
        )
        for r in range(4)
    ]
    pd.testing.assert_frame_equal(got, frame(LAYOUT, rows))


def test_layout_table_strided_shard_is_misdescribed_with_held_rows():
    # dcp-semantics s.3: (8,) mesh (2,) SS(0,2): rank 0 holds 0,1,4,5, box [0,4); rank 1 holds
    # 2,3,6,7, box [2,6).
    got = layout_chunks_table(wb.dtensor_layout((8,), (2,), "SS(0,2)"))
    rows = [
        (0, (0,), 0, "[0:4]", (0,), (4,), 4, 16, (0,), False, True, "dim 0: 0:2, 4:6"),
        (1, (1,), 0, "[2:6]", (2,), (4,), 4, 16, (1,), False, True, "dim 0: 2:4, 6:8"),
    ]
    pd.testing.assert_frame_equal(got, frame(LAYOUT, rows))


def test_layout_table_plain_tensor_zero_d_and_bytes():
    got = layout_chunks_table(wb.tensor_layout((), 3, "int64", ranks=[0, 2]))
    rows = [(r, None, 0, "[]", (), (), 1, 8, (0, 2), False, False, NA) for r in (0, 2)]
    pd.testing.assert_frame_equal(got, frame(LAYOUT, rows))
    got = layout_chunks_table(wb.bytes_layout(2))
    rows = [(r, None, 0, NA, (), (), NA, NA, (0, 1), False, False, NA) for r in (0, 1)]
    pd.testing.assert_frame_equal(got, frame(LAYOUT, rows))


def test_layout_table_sharded_layout_with_two_chunks_on_a_rank():
    got = layout_chunks_table(
        wb.sharded_layout((6,), {0: [((0,), (2,)), ((4,), (2,))], 1: [((2,), (2,))]})
    )
    rows = [
        (0, None, 0, "[0:2]", (0,), (2,), 2, 8, (0,), False, False, NA),
        (0, None, 1, "[4:6]", (4,), (2,), 2, 8, (0,), False, False, NA),
        (1, None, 0, "[2:4]", (2,), (2,), 2, 8, (1,), False, False, NA),
    ]
    pd.testing.assert_frame_equal(got, frame(LAYOUT, rows))


def test_layout_table_on_4096_chunks_tiles_the_tensor():
    layout = wb.dtensor_layout((4096, 2048), (64, 64), "S(0), S(1)")
    got = layout_chunks_table(layout)
    assert len(got) == 4096
    assert got["numel"].sum() == 4096 * 2048
    assert got["region"].iloc[65] == "[64:128, 32:64]"  # rank 65 = mesh (1, 1)
    assert got["replicas"].map(len).eq(1).all()


@settings(max_examples=60)
@given(
    st.lists(st.integers(0, 9), min_size=1, max_size=3),
    st.lists(st.integers(1, 4), min_size=1, max_size=2),
    st.data(),
)
def test_layout_table_agrees_with_the_layout(shape, mesh, data):
    placements = [
        data.draw(st.sampled_from(["R"] + [f"S({d})" for d in range(len(shape))])) for _ in mesh
    ]
    layout = wb.dtensor_layout(shape, mesh, placements)
    got = layout_chunks_table(layout)
    assert list(got["rank"]) == list(range(math.prod(mesh)))
    for row in got.itertuples():
        c = layout.chunks(row.rank)[row.chunk]
        assert (row.offsets, row.sizes, row.region, row.numel) == (
            c.offsets,
            c.sizes,
            str(c),
            c.volume,
        )
        assert row.is_empty == c.is_empty
        assert set(row.replicas) == {r for r in range(math.prod(mesh)) if layout.chunks(r) == (c,)}
    # distinct boxes that are not empty cover the tensor exactly once (no StridedShard here)
    distinct = got.drop_duplicates(subset=["offsets", "sizes"])
    assert distinct["numel"].sum() == math.prod(shape)


# ----------------------------------------------------------------------------- checkpoints
def _metadata():
    sdm = {
        "w": tsm((4, 6), [((0, 0), (2, 6)), ((2, 0), (2, 6))], "bfloat16"),
        "step": BytesStorageMetadata(),
    }
    storage = {
        MetadataIndex("w", (0, 0)): StorageInfo("__0_0.distcp", 0, 1200),
        MetadataIndex("w", (2, 0)): StorageInfo("__1_0.distcp", 0, 1200),
        MetadataIndex("step"): StorageInfo("__1_0.distcp", 1200, 480),
    }
    return Metadata(sdm, storage_data=storage)


def test_checkpoint_table_with_files_byte_ranges_and_writers():
    got = checkpoint_chunks_table(_metadata())
    rows = [
        (
            "w",
            "tensor",
            0,
            "[0:2, 0:6]",
            (0, 0),
            (2, 6),
            12,
            24,
            "bfloat16",
            "__0_0.distcp",
            0,
            1200,
            0,
        ),
        (
            "w",
            "tensor",
            1,
            "[2:4, 0:6]",
            (2, 0),
            (2, 6),
            12,
            24,
            "bfloat16",
            "__1_0.distcp",
            0,
            1200,
            1,
        ),
        ("step", "bytes", NA, NA, NA, NA, NA, 480, NA, "__1_0.distcp", 1200, 480, 1),
    ]
    pd.testing.assert_frame_equal(got, frame(CHECKPOINT, rows))
    pd.testing.assert_frame_equal(
        checkpoint_chunks_table(_metadata(), "w"), frame(CHECKPOINT, rows[:2])
    )


def test_checkpoint_table_without_storage_and_of_a_bare_entry():
    entry = tsm((3,), [((0,), (3,))], "int8")
    want = frame(
        CHECKPOINT, [("t", "tensor", 0, "[0:3]", (0,), (3,), 3, 3, "int8", NA, NA, NA, NA)]
    )
    pd.testing.assert_frame_equal(checkpoint_chunks_table(entry, "t"), want)
    pd.testing.assert_frame_equal(checkpoint_chunks_table(Metadata({"t": entry})), want)


def test_checkpoint_table_of_a_planned_save_names_each_writers_file():
    # plan_save's storage_data is a lazy mapping; chunk i of S(0) on 4 ranks is written by rank i
    save = plan_save({"w": wb.dtensor_layout((8, 6), (4,), "S(0)")})
    got = checkpoint_chunks_table(save)
    rows = [
        (
            "w",
            "tensor",
            i,
            f"[{2 * i}:{2 * i + 2}, 0:6]",
            (2 * i, 0),
            (2, 6),
            12,
            48,
            "float32",
            f"__{i}_0.distcp",
            NA,
            NA,
            i,
        )
        for i in range(4)
    ]
    pd.testing.assert_frame_equal(got, frame(CHECKPOINT, rows))


def test_checkpoint_table_rejects_an_unknown_key_in_house_form():
    with pytest.raises(
        MetadataError,
        match=r"^nope: key 'nope' is not in the checkpoint \(keys: w, "
        r"step\) \(a key of",
    ):
        checkpoint_chunks_table(_metadata(), "nope")
    with pytest.raises(MetadataError, match="has no state_dict_metadata"):
        checkpoint_chunks_table(object())


# ----------------------------------------------------------------------------- save plans
def test_write_items_table_of_the_test_planner_scenario():
    # dcp-semantics s.4.2: in torch's test_planner scenario a 10-float tensor and a BYTE_IO value
    # on 2 ranks: the tensor goes to rank 0 (first zero-load rank), the value to rank 1 (rank 0
    # already carries the 40-byte tensor).
    save = plan_save({"tensor": wb.tensor_layout((10,), 2), "value": wb.bytes_layout(2)})
    got = write_items_table(save)
    rows = [
        (0, 0, "tensor", "TENSOR", "[0:10]", 10, 40, True, 0, "__0_0.distcp"),
        (0, 1, "value", "BYTE_IO", NA, NA, NA, False, 1, "__1_0.distcp"),
        (1, 0, "tensor", "TENSOR", "[0:10]", 10, 40, False, 0, "__0_0.distcp"),
        (1, 1, "value", "BYTE_IO", NA, NA, NA, True, 1, "__1_0.distcp"),
    ]
    pd.testing.assert_frame_equal(got, frame(WRITE, rows))


def test_write_items_table_load_balanced_writers_follow_set_order():
    # dcp-semantics s.4.2 [verified]: (16,) on mesh (2,8) [R, S(0)]: chunk k on ranks {k, 8+k};
    # load-balanced writers are [0,1,2,4,6,11,13,15].
    got = write_items_table(plan_save({"x": wb.dtensor_layout((16,), (2, 8), "R, S(0)")}))
    kept = got[got["kept"]]
    assert list(kept["rank"]) == [0, 1, 2, 4, 6, 11, 13, 15]
    assert list(got["writer"][:8]) == [0, 1, 2, 11, 4, 13, 6, 15]
    assert (got["writer"] == got["writer"].iloc[got.index % 8].to_numpy()).all()


# ----------------------------------------------------------------------------- load plans
def _one_rank_load(saved_chunks, local_chunks, size=(4, 8)):
    files = {
        MetadataIndex("t", o): StorageInfo(f"__{i}_0.distcp", 0, 160)
        for i, (o, _) in enumerate(saved_chunks)
    }
    md = Metadata({"t": tsm(size, saved_chunks)}, storage_data=files)
    return plan_load(md, {"t": wb.sharded_layout(size, [local_chunks])})


def test_read_items_table_orders_saved_chunks_by_end_on_the_sweep_dim():
    # dcp-semantics s.5.3: (4,8), saved [cols 4:8 (#0), cols 0:4 (#1)], local full: items come
    # as saved #1 then saved #0 (ends 4 < 8).
    load = _one_rank_load([((0, 4), (4, 4)), ((0, 0), (4, 4))], [((0, 0), (4, 8))])
    got = read_items_table(load)
    rows = [
        (
            0,
            0,
            "t",
            "TENSOR",
            "[0:4, 0:4]",
            "[0:4, 0:4]",
            (0, 0),
            (0, 0),
            (4, 4),
            16,
            64,
            160,
            0,
            1,
            "__1_0.distcp",
            1,
        ),
        (
            0,
            1,
            "t",
            "TENSOR",
            "[0:4, 4:8]",
            "[0:4, 4:8]",
            (0, 4),
            (0, 0),
            (4, 4),
            16,
            64,
            160,
            0,
            0,
            "__0_0.distcp",
            0,
        ),
    ]
    pd.testing.assert_frame_equal(got, frame(READ, rows))


def test_read_items_table_keeps_dest_index_numbering_when_locals_are_reordered():
    # dcp-semantics s.5.3: saved row halves, local [cols 4:8 (#0), cols 0:4 (#1)]: sw=1, order
    # (L1,S0), (L1,S1), (L0,S0), (L0,S1); dest_index.index keeps the local numbering.
    load = _one_rank_load(
        [((0, 0), (2, 8)), ((2, 0), (2, 8))], [((0, 4), (4, 4)), ((0, 0), (4, 4))]
    )
    got = read_items_table(load, rank=0)
    want = frame(
        READ,
        [
            (
                0,
                0,
                "t",
                "TENSOR",
                "[0:2, 0:4]",
                "[0:2, 0:4]",
                (0, 0),
                (0, 0),
                (2, 4),
                8,
                32,
                160,
                1,
                0,
                "__0_0.distcp",
                0,
            ),
            (
                0,
                1,
                "t",
                "TENSOR",
                "[2:4, 0:4]",
                "[2:4, 0:4]",
                (2, 0),
                (0, 0),
                (2, 4),
                8,
                32,
                160,
                1,
                1,
                "__1_0.distcp",
                1,
            ),
            (
                0,
                2,
                "t",
                "TENSOR",
                "[0:2, 4:8]",
                "[0:2, 4:8]",
                (0, 0),
                (0, 4),
                (2, 4),
                8,
                32,
                160,
                0,
                0,
                "__0_0.distcp",
                0,
            ),
            (
                0,
                3,
                "t",
                "TENSOR",
                "[2:4, 4:8]",
                "[2:4, 4:8]",
                (2, 0),
                (0, 4),
                (2, 4),
                8,
                32,
                160,
                0,
                1,
                "__1_0.distcp",
                1,
            ),
        ],
    )
    pd.testing.assert_frame_equal(got, want)


def _reshard():
    # (8,6) float32 saved S(0) on 4 ranks (rows 2i:2i+2 by rank i, 48 bytes each) plus a bytes
    # entry; loaded [S(1), S(0)] on a 2x2 mesh: rank (a, b) wants cols 3a:3a+3, rows 4b:4b+4, so
    # it reads two saved chunks (24 bytes each copied, 48 each loaded).
    save = plan_save({"w": wb.dtensor_layout((8, 6), (4,), "S(0)"), "b": wb.bytes_layout(4)})
    load = plan_load(
        save.metadata,
        {"w": wb.dtensor_layout((8, 6), (2, 2), "S(1), S(0)"), "b": wb.bytes_layout(4)},
    )
    return save, load


def test_read_items_table_filters_by_rank_and_fqn_and_keeps_dcp_order():
    _, load = _reshard()
    got = read_items_table(load, rank=1)
    # rank 1 = mesh (0, 1): cols 0:3, rows 4:8 -> saved chunks #2 (rows 4:6) and #3 (rows 6:8);
    # the bytes entry "b" was written by rank 1 (the first zero-load rank after rank 0's chunk)
    want = frame(
        READ,
        [
            (
                1,
                0,
                "w",
                "TENSOR",
                "[4:6, 0:3]",
                "[4:6, 0:3]",
                (0, 0),
                (0, 0),
                (2, 3),
                6,
                24,
                48,
                0,
                2,
                "__2_0.distcp",
                2,
            ),
            (
                1,
                1,
                "w",
                "TENSOR",
                "[6:8, 0:3]",
                "[6:8, 0:3]",
                (2, 0),
                (0, 0),
                (2, 3),
                6,
                24,
                48,
                0,
                3,
                "__3_0.distcp",
                3,
            ),
            (1, 2, "b", "BYTE_IO", NA, NA, (0,), (0,), (0,), NA, NA, NA, NA, NA, "__1_0.distcp", 1),
        ],
    )
    pd.testing.assert_frame_equal(got, want)
    only_b = read_items_table(load, "b")
    assert list(only_b["rank"]) == [0, 1, 2, 3] and list(only_b["order"]) == [2, 2, 2, 2]
    everything = read_items_table(load)
    assert len(everything) == 12
    pd.testing.assert_frame_equal(everything[everything["rank"] == 1].reset_index(drop=True), want)


def test_read_items_table_rejects_bad_rank_and_positional_rank():
    _, load = _reshard()
    with pytest.raises(PlanError, match=r"^w: rank 4 is not in a load plan of 4 ranks \(0 <= rank"):
        read_items_table(load, "w", rank=4)
    with pytest.raises(PlanError, match="fqn 3 is not a string"):
        read_items_table(load, 3)


def test_read_items_table_on_4096_chunks_copies_every_element_once():
    # saved S(0) on 4096 ranks, loaded S(1) on 64: every rank reads one column slab of every row
    shape = (4096, 64)
    save = plan_save({"w": wb.dtensor_layout(shape, (4096,), "S(0)")})
    load = plan_load(save.metadata, {"w": wb.dtensor_layout(shape, (64,), "S(1)", world_size=4096)})
    got = read_items_table(load, "w", rank=5)
    assert len(got) == 4096
    assert got["numel"].sum() == 4096
    assert got["dest_region"].iloc[7] == "[7:8, 5:6]"
    assert got["storage_region"].iloc[7] == "[7:8, 5:6]"
    assert list(got["source_chunk"][:3]) == [0, 1, 2]


# ----------------------------------------------------------------------------- problems
def test_problems_table_from_records():
    ps = [
        Problem(
            "w",
            "uncovered",
            (0, 1, 2, 3, 8),
            Chunk((6, 0), (2, 8)),
            "silent",
            "w: no saved chunk covers [6:8, 0:8].",
            "Save every row.",
        ),
        Problem("extra", "missing_key", (1,), None, "error", "extra: missing.", "Drop it."),
    ]
    want = frame(
        PROBLEMS,
        [
            (
                "w",
                "uncovered",
                "silent",
                (0, 1, 2, 3, 8),
                "r0-3,8",
                "[6:8, 0:8]",
                "w: no saved chunk covers [6:8, 0:8].",
                "Save every row.",
            ),
            ("extra", "missing_key", "error", (1,), "r1", NA, "extra: missing.", "Drop it."),
        ],
    )
    pd.testing.assert_frame_equal(problems_table(ps), want)
    pd.testing.assert_frame_equal(problems_table([]), frame(PROBLEMS, []))


def test_problems_table_of_a_load_with_a_hole():
    # dcp-semantics s.5.4: t (10 elements) with one saved chunk [0,5) loads without error;
    # elements 5..9 keep stale values.
    md = Metadata({"t": tsm((10,), [((0,), (5,))])})
    got = problems_table(plan_load(md, {"t": wb.tensor_layout((10,), 2)}).problems)
    hole = got[got["kind"] == "uncovered"]
    assert list(hole["region"]) == ["[5:10]"]
    assert list(hole["severity"]) == ["silent"]
    assert list(hole["ranks"]) == [(0, 1)]


# ----------------------------------------------------------------------------- I/O
def test_io_tables_of_a_reshard():
    _, load = _reshard()
    # each rank: files = 2 tensor files + b's file (__1_0, also a tensor file for ranks 0, 2)
    # rank 0 (cols 0:3, rows 0:4) reads #0, #1 (files 0, 1) and b (file 1) -> 2 files
    # rank 1 reads #2, #3 and b -> files 2, 3, 1; rank 2 = rank 0's rows; rank 3 = rank 1's.
    # needed = 2 x 24 bytes, loaded = 2 x 48 bytes (whole chunks; b's length unknown -> 0)
    want = frame(
        IO,
        [
            (0, 2, 3, 48, 96, 2.0),
            (1, 3, 3, 48, 96, 2.0),
            (2, 2, 3, 48, 96, 2.0),
            (3, 3, 3, 48, 96, 2.0),
        ],
    )
    pd.testing.assert_frame_equal(io_table(load), want)
    want = frame(
        FILE_IO,
        [
            ("__0_0.distcp", 0, (0, 2), 2, 2, 96),
            ("__1_0.distcp", 1, (0, 1, 2, 3), 4, 6, 96),
            ("__2_0.distcp", 2, (1, 3), 2, 2, 96),
            ("__3_0.distcp", 3, (1, 3), 2, 2, 96),
        ],
    )
    pd.testing.assert_frame_equal(file_io_table(load), want)


def test_io_table_agrees_with_the_read_items_table():
    save = plan_save({"w": wb.dtensor_layout((12, 10), (3,), "S(0)")})
    load = plan_load(save.metadata, {"w": wb.dtensor_layout((12, 10), (2, 2), "S(0), S(1)")})
    reads = read_items_table(load)
    io = io_table(load)
    by_rank = reads.groupby("rank")
    assert list(io["bytes_needed"]) == list(by_rank["bytes"].sum())
    assert list(io["bytes_read"]) == list(by_rank["bytes_read"].sum())
    assert list(io["files"]) == list(by_rank["source_file"].nunique())
    assert list(io["reads"]) == list(by_rank.size())


# ----------------------------------------------------------------------------- styling
def test_style_by_rank_colours_rank_columns_like_the_pictures():
    from workbench.colors import rank_color

    df = pd.DataFrame(
        {"rank": [0, 1], "writer": pd.array([3, None], dtype="Int64"), "numel": [1, 2]}
    )
    html = style_by_rank(df).to_html()
    for r in (0, 1, 3):
        assert f"background-color: {rank_color(r)}" in html
    assert html.count("background-color") == 3  # not the <NA> writer, not numel


def test_style_by_rank_escapes_markup_and_writes_bytes_in_human_units():
    from html.parser import HTMLParser

    evil = "<img src=x onerror=alert(1)>"
    df = pd.DataFrame(
        {"fqn": [evil], "<b>col</b>": ["x"], "bytes": pd.array([1536], dtype="Int64")},
        index=["<i>row</i>"],
    )
    html = style_by_rank(df).to_html()

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.data = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

        def handle_data(self, data):
            self.data.append(data.strip())

    parsed = Tags()
    parsed.feed(html)
    assert not {"img", "b", "i", "script"} & set(parsed.tags)
    assert {evil, "<b>col</b>", "<i>row</i>", "1.5 KiB"} <= set(parsed.data)
    assert df["bytes"].tolist() == [1536]  # the frame keeps the integers


def test_checkpoint_table_accepts_an_opened_checkpoint():
    from workbench.checkpoint import Checkpoint

    ckpt = Checkpoint("/nowhere", _metadata(), (), {"__0_0.distcp": 1200, "__1_0.distcp": 1680})
    pd.testing.assert_frame_equal(
        checkpoint_chunks_table(ckpt), checkpoint_chunks_table(_metadata())
    )


def test_chunk_holders_and_chunk_storage():
    layout = wb.dtensor_layout((8, 4), (2, 2), "R, S(1)")
    assert chunk_holders(layout) == {Chunk((0, 0), (8, 2)): (0, 2), Chunk((0, 2), (8, 2)): (1, 3)}
    md = _metadata()
    infos = chunk_storage(md.storage_data, "w", md.state_dict_metadata["w"])
    assert [i.relative_path for i in infos] == ["__0_0.distcp", "__1_0.distcp"]
    assert chunk_storage(md.storage_data, "step", BytesStorageMetadata()) == [
        StorageInfo("__1_0.distcp", 1200, 480)
    ]
    assert chunk_storage({}, "w", md.state_dict_metadata["w"]) == [None, None]


# ----------------------------------------------------------------------------- torch inputs
def test_layout_table_of_a_real_dtensor_and_bad_paths():
    from workbench import tables

    with fake_rank(0, 4):
        dt = real_dtensor((7, 6), (2, 2), [TPL.Shard(0), TPL.Shard(1)])
        got = tables.layout_chunks_table(dt)
    want = tables.layout_chunks_table(wb.dtensor_layout((7, 6), (2, 2), "S(0), S(1)"))
    import pandas as pd

    pd.testing.assert_frame_equal(got, want)
    with pytest.raises(wb.LayoutError) as e:
        tables.layout_chunks_table("S(0)")
    house_form(e.value)
    with pytest.raises(wb.MetadataError) as e:
        wb.load_metadata(123)
    assert "123" in house_form(e.value)


def test_checkpoint_table_takes_torch_metadata():
    import pandas as pd

    from workbench import tables

    md = wb.plan_save(
        {"w": wb.dtensor_layout((8, 6), (2,), "S(0)"), "s": wb.bytes_layout(2)}
    ).metadata
    pd.testing.assert_frame_equal(
        tables.checkpoint_chunks_table(to_torch(md)), tables.checkpoint_chunks_table(md)
    )
    pd.testing.assert_frame_equal(
        tables.checkpoint_chunks_table(to_torch(md), "w"), tables.checkpoint_chunks_table(md, "w")
    )


def test_distribution_and_equal_rows_of_a_per_rank_table():
    # five ranks, two I/O profiles: ranks 0, 2, 4 read 2 items of 8 bytes, ranks 1, 3 one of 4
    df = pd.DataFrame(
        {
            "rank": [0, 1, 2, 3, 4],
            "reads": [2, 1, 2, 1, 2],
            "bytes_read": [8, 4, 8, 4, 8],
            "amplification": [2.0, 1.0, 2.0, 1.0, 2.0],
        }
    )
    want = pd.DataFrame(
        {
            "over all ranks": ["min", "median", "max", "total"],
            "reads": pd.Series([1, 2, 2, 8], dtype="Int64"),
            "bytes_read": pd.Series([4, 8, 8, 32], dtype="Int64"),
            "amplification": [1.0, 2.0, 2.0, np.nan],
        }
    )
    pd.testing.assert_frame_equal(distribution_table(df, label="ranks"), want)
    want = pd.DataFrame(
        {
            "count": [3, 2],
            "reads": [2, 1],
            "bytes_read": [8, 4],
            "amplification": [2.0, 1.0],
            "ranks": ["ranks 0, 2, 4", "ranks 1, 3"],
        }
    )
    got = equal_rows_table(df, members="rank", by="bytes_read")
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    # a lower median is a value some rank has: ranks 0..3 reading 1, 2, 3, 4 items -> 2
    assert distribution_table(df.head(4).assign(reads=[1, 2, 3, 4]))["reads"][1] == 2
