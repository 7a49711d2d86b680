"""Whole-state-dict plans (workbench.planning): worked examples, invariants, and parity with the
scalar mirrors in workbench.planner_helpers run rank by rank. Parity with torch itself is in
test_planning_vs_torch.py; the strategies and comparison keys are in support.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import (
    crowded_state_dicts,
    expected_per_rank,
    helpers_load,
    helpers_save,
    metadata_key,
    save_and_load,
    state_dicts,
    write_key,
)

from workbench import planner_helpers as ph
from workbench.errors import MetadataError, PlanError
from workbench.formats.dcp_files import writer_of_file
from workbench.geometry import Chunk, uncovered
from workbench.planning import plan_load, plan_save
from workbench.records import (
    BytesStorageMetadata,
    LoadItemType,
    Metadata,
    MetadataIndex,
    StorageInfo,
    TensorStorageMetadata,
)
from workbench.sharding import (
    bytes_layout,
    dtensor_layout,
    sharded_layout,
    tensor_layout,
)


# ----------------------------------------------------------------------------- worked examples
def test_dedup_tie_break_is_cpython_set_order():
    # (16,) on mesh (2,8) [R, S(0)]: chunk k lives on ranks {k, 8+k}; torch picks these writers
    lay = {"w": dtensor_layout((16,), (2, 8), "R, S(0)")}
    assert plan_save(lay).writers == {"w": [0, 1, 2, 4, 6, 11, 13, 15]}
    assert plan_save(lay, save_to_lowest_rank=True).writers == {"w": list(range(8))}


def test_global_tensor_bytes_are_charged():
    # every rank holds a plain 10-float tensor (40 bytes) and a bytes value: rank 0 writes the
    # tensor first, so the bytes value goes to the first zero-load rank in set order, rank 1
    res = plan_save({"tensor": tensor_layout((10,), 2), "value": bytes_layout(2)})
    assert res.writers == {"tensor": [0], "value": [1]}
    assert res.bytes_written.tolist() == [40, 0]
    assert [write_key(i)[1] for i in res.plans[1].items] == ["value"]


def test_metadata_order_follows_first_writer():
    # "a" is written by rank 1 only: torch's metadata lists "b" (rank 0) first
    a = sharded_layout((4,), [[], [Chunk((0,), (4,))]], world_size=2)
    b = sharded_layout((4,), [[Chunk((0,), (4,))], []], world_size=2)
    res = plan_save({"a": a, "b": b})
    assert list(res.metadata.state_dict_metadata) == ["b", "a"]
    assert res.errors == []


def test_storage_data_names_writer_files():
    res = plan_save({"w": dtensor_layout((8, 4), (4,), "S(0)"), "b": bytes_layout(4)})
    sd = res.metadata.storage_data
    assert sd[MetadataIndex("w", (4, 0))] == StorageInfo("__2_0.distcp", None, None)
    assert sd[MetadataIndex("b")].relative_path == "__" + str(res.writers["b"][0]) + "_0.distcp"
    keys = list(sd)
    assert [k.index for k in keys[:4]] == [0, 1, 2, 3] and len(sd) == 5
    with pytest.raises(KeyError):
        sd[MetadataIndex("w", (1, 0))]
    assert dict(sd.items())[MetadataIndex("w", (6, 0))].relative_path == "__3_0.distcp"
    assert writer_of_file("__12_3.distcp") == 12 and writer_of_file("data.bin") is None


def test_validation_errors_and_single_rank_fill():
    # rows [0:4] and [2:6] of 8: overlap + wrong fill (torch's strings, current chunk first)
    lay = sharded_layout((8, 3), [[Chunk((0, 0), (4, 3))], [Chunk((2, 0), (4, 3))]])
    res = plan_save({"w": lay})
    assert res.errors == [
        "key:w has overlapping chunks: ChunkStorageMetadata(offsets=torch.Size([2, 0]), "
        "sizes=torch.Size([4, 3])) ChunkStorageMetadata(offsets=torch.Size([0, 0]), "
        "sizes=torch.Size([4, 3]))"
    ]  # 12 + 12 elements = 24: the fill check passes
    one = sharded_layout((8,), [[Chunk((0,), (4,))]])
    assert plan_save({"w": one}).errors == []  # one plan: never fill-checked
    two = sharded_layout((8,), [[Chunk((0,), (4,))], []])
    assert plan_save({"w": two}).errors == ["key:w invalid fill tensor-volume: 8 chunks-volume: 4"]


def test_misdescribed_strided_save_fails_validation():
    res = plan_save({"w": dtensor_layout((8,), (2,), "SS(0,2)")})
    assert res.errors == [
        "key:w has overlapping chunks: ChunkStorageMetadata(offsets=torch.Size([2]), "
        "sizes=torch.Size([4])) ChunkStorageMetadata(offsets=torch.Size([0]), "
        "sizes=torch.Size([4]))"
    ]


def test_read_items_worked_examples():
    # (4,8) saved [cols 4:8 (#0), cols 0:4 (#1)], local full: saved #1 first (ends 4 < 8)
    md = Metadata(
        {
            "w": TensorStorageMetadata(
                "float32", (4, 8), [Chunk((0, 4), (4, 4)), Chunk((0, 0), (4, 4))]
            )
        }
    )
    res = plan_load(md, {"w": tensor_layout((4, 8), 1)})
    assert res.reads("w").saved_idx.tolist() == [1, 0]
    assert res.reads("w").dest_offsets.tolist() == [[0, 0], [0, 4]]
    # saved row halves, local [cols 4:8 (#0), cols 0:4 (#1)]: sweep dim 1, local #1 first
    md = Metadata(
        {
            "w": TensorStorageMetadata(
                "float32", (4, 8), [Chunk((0, 0), (2, 8)), Chunk((2, 0), (2, 8))]
            )
        }
    )
    lay = sharded_layout((4, 8), [[Chunk((0, 4), (4, 4)), Chunk((0, 0), (4, 4))]])
    block = plan_load(md, {"w": lay}).reads("w")
    assert list(zip(block.local_idx.tolist(), block.saved_idx.tolist())) == [
        (1, 0),
        (1, 1),
        (0, 0),
        (0, 1),
    ]
    # zero-size saved [5,5) strictly inside [0,10): a zero-length item, first (its end is 5)
    md = Metadata(
        {"w": TensorStorageMetadata("float32", (10,), [Chunk((0,), (10,)), Chunk((5,), (0,))])}
    )
    items = plan_load(md, {"w": tensor_layout((10,), 1)}).plans[0].items
    assert [(i.dest_offsets, i.lengths, i.storage_index.index) for i in items] == [
        ((5,), (0,), 1),
        ((0,), (10,), 0),
    ]


def test_failures_are_recorded_not_raised():
    saved = plan_save({"w": dtensor_layout((4, 4), (2,), "S(0)"), "b": bytes_layout(2)}).metadata
    res = plan_load(
        saved,
        {
            "w": dtensor_layout((4, 5), (2,), "S(0)"),
            "b": tensor_layout((3,), 2),
            "x": tensor_layout((2,), 2, ranks=[1]),
        },
    )
    assert res.failures == [
        (
            "w",
            (0, 1),
            "Size mismatch between saved torch.Size([4, 4]) and current: torch.Size([4, 5]) for w",
        ),
        ("x", (1,), "Missing key in checkpoint state_dict: x."),
    ]
    assert len(res.reads("w")) == 0
    assert [i.type for i in res.plans[0].items] == [LoadItemType.BYTE_IO]
    assert plan_load(saved, {"x": tensor_layout((2,), 2)}, allow_partial_load=True).failures == []
    tsm = "<class 'torch.distributed.checkpoint.metadata.TensorStorageMetadata'>"
    res = plan_load(
        saved, {"w": bytes_layout(2), "b": dtensor_layout((2,), (1,), "P", world_size=2)}
    )
    assert res.failures == [
        (
            "w",
            (0, 1),
            f"Invalid checkpoint metadata for w, expected BytesStorageMetadata but found {tsm}",
        )
    ]
    # bytes metadata: a Partial DTensor still reads it on the ranks of its mesh
    assert res.reads("b").rank.tolist() == [0]
    res = plan_load(saved, {"w": dtensor_layout((4, 4), (2,), "P", world_size=3)})
    assert res.failures == [
        (
            "w",
            (0, 1),
            f"Invalid checkpoint metadata for w, expected BytesStorageMetadata but found {tsm}",
        )
    ]


def test_problems_come_from_diagnosis():
    saved = plan_save({"w": dtensor_layout((4, 4), (2,), "S(0)")}).metadata
    res = plan_load(saved, {"w": dtensor_layout((4, 4), (2,), "S(1)"), "x": tensor_layout((2,), 2)})
    assert [(p.fqn, p.kind) for p in res.problems if p.kind == "missing_key"] == [
        ("x", "missing_key")
    ]


def test_partial_save_is_a_failure():
    res = plan_save({"w": dtensor_layout((4,), (2,), "P"), "t": tensor_layout((2,), 2)})
    assert res.failures == [("w", (0, 1), ph.PARTIAL_MESSAGE)]
    assert list(res.metadata.state_dict_metadata) == ["t"]


def test_bad_input_raises():
    with pytest.raises(PlanError, match="one world size"):
        plan_save({"a": tensor_layout((2,), 2), "b": tensor_layout((2,), 3)})
    with pytest.raises(PlanError, match="state dict is empty"):
        plan_save({})
    with pytest.raises(PlanError, match="Layout"):
        plan_load(Metadata({}), {"a": (2, 2)})
    with pytest.raises(MetadataError):
        plan_load(object(), {"a": tensor_layout((2,), 2)})
    bad = Metadata({"w": TensorStorageMetadata("float32", (4,), [Chunk((0, 0), (4, 1))])})
    with pytest.raises(MetadataError, match="2 dims"):
        plan_load(bad, {"w": tensor_layout((4,), 1)})
    res = plan_load(Metadata({}), {"a": tensor_layout((2,), 2)}, allow_partial_load=True)
    with pytest.raises(PlanError, match="not in the planned state dict"):
        res.reads("nope")


def test_plans_are_lazy_and_cached():
    res = plan_save({"w": dtensor_layout((64, 8), (8,), "S(0)")})
    assert repr(res.plans) == "<8 plans, 0 built>"
    assert res.plans[3] is res.plans[3] and res.plans[-1] is res.plans[7]
    with pytest.raises(IndexError):
        res.plans[8]
    load = plan_load(res.metadata, {"w": dtensor_layout((64, 8), (2, 2), "S(0), S(1)")})
    assert load.plans[1] is load.plans[1] and len(load.plans[0:2]) == 2


def test_io_numbers_of_a_reshard():
    # (8, 4) float32 saved S(0) on 4 ranks (8 rows -> 2 rows each, 32 bytes a file), loaded S(1)
    # on 2 ranks: every load rank needs half of every row: 4 files, 4 reads of 32 bytes each
    res = plan_save({"w": dtensor_layout((8, 4), (4,), "S(0)")})
    io = plan_load(res.metadata, {"w": dtensor_layout((8, 4), (2,), "S(1)")}).io
    assert io.files == tuple(f"__{r}_0.distcp" for r in range(4))
    assert io.files_opened.tolist() == [4, 4] and io.reads.tolist() == [4, 4]
    assert io.bytes_needed.tolist() == [64, 64] and io.bytes_read.tolist() == [128, 128]
    assert io.amplification.tolist() == [2.0, 2.0]
    assert io.traffic.tolist() == [[32] * 4] * 2 and io.readers["__0_0.distcp"] == (0, 1)
    assert io.bytes_written.tolist() == [32] * 4 and io.file_writers.tolist() == [0, 1, 2, 3]
    assert io.file_reads.tolist() == [2] * 4 and io.file_bytes_read.tolist() == [64] * 4
    assert sorted(zip(io.pair_rank.tolist(), io.pair_file.tolist())) == [
        (r, f) for r in range(2) for f in range(4)
    ]


def test_storage_data_survives_edited_chunk_lists():
    # drop the second saved chunk of a planned checkpoint (a hole): the files stay the writers'
    res = plan_save({"w": dtensor_layout((8, 4), (4,), "S(0)")})
    res.metadata.state_dict_metadata["w"].chunks.pop(1)
    assert res.metadata.storage_data[MetadataIndex("w", (4, 0))].relative_path == "__2_0.distcp"
    assert len(res.metadata.storage_data) == 4  # what was written is unchanged
    load = plan_load(res.metadata, {"w": tensor_layout((8, 4), 1)})
    assert load.reads("w").saved_idx.tolist() == [0, 1, 2]
    assert load.io.files == ("__0_0.distcp", "__2_0.distcp", "__3_0.distcp")
    assert load.io.bytes_read.tolist() == [96] and load.io.bytes_needed.tolist() == [96]


def test_io_uses_storage_lengths_when_known():
    md = Metadata(
        {
            "w": TensorStorageMetadata("float32", (4,), [Chunk((0,), (4,))]),
            "b": BytesStorageMetadata(),
        },
        storage_data={
            MetadataIndex("w", (0,)): StorageInfo("__0_0.distcp", 0, 1000),
            MetadataIndex("b"): StorageInfo("__1_0.distcp", 1000, 77),
        },
    )
    io = plan_load(md, {"w": dtensor_layout((4,), (2,), "S(0)"), "b": bytes_layout(2)}).io
    assert io.bytes_read.tolist() == [1077, 1077] and io.bytes_needed.tolist() == [8, 8]
    assert io.bytes_written.tolist() == [1000, 77]
    none = plan_load(Metadata(md.state_dict_metadata), {"w": tensor_layout((4,), 1)}).io
    assert none.files == () and none.bytes_read.tolist() == [16] and none.bytes_written is None


# ----------------------------------------------------------------------------- properties
@given(state_dicts(), st.booleans())
def test_save_matches_scalar_helpers(sd, lowest):
    res = plan_save(sd, save_to_lowest_rank=lowest)
    local, plans, md, errors = helpers_save(sd, lowest)
    for r in range(res.world_size):
        assert [write_key(i) for i in res.local_plans[r].items] == [
            write_key(i) for i in local[r].items
        ]
        assert [write_key(i) for i in res.plans[r].items] == [write_key(i) for i in plans[r].items]
    assert metadata_key(res.metadata) == metadata_key(md)
    assert res.errors == errors
    for fqn, w in res.writers.items():
        assert res.metadata.storage_data[
            MetadataIndex(
                fqn,
                None
                if isinstance(md.state_dict_metadata[fqn], BytesStorageMetadata)
                else md.state_dict_metadata[fqn].chunks[-1].offsets,
            )
        ].relative_path.startswith("__")
        assert all(any(write_key(i)[1] == fqn for i in plans[r].items) for r in w)


@given(crowded_state_dicts(), st.booleans())
def test_crowded_dedup_matches_scalar_helpers(sd, lowest):
    res = plan_save(sd, save_to_lowest_rank=lowest)
    _, plans, md, errors = helpers_save(sd, lowest)
    assert [[write_key(i) for i in p.items] for p in res.plans] == [
        [write_key(i) for i in p.items] for p in plans
    ]
    assert metadata_key(res.metadata) == metadata_key(md) and res.errors == errors


@given(save_and_load())
def test_load_matches_scalar_helpers(case):
    saved, load, strict, lowest = case
    md = plan_save(saved, lowest).metadata
    res = plan_load(md, load, allow_partial_load=not strict)
    assert expected_per_rank(res) == helpers_load(md, load, strict)


@given(save_and_load(max_world=6))
def test_reads_stay_inside_both_chunks_and_tile_covered_chunks(case):
    saved, load, strict, lowest = case
    md = plan_save(saved, lowest).metadata
    res = plan_load(md, load, allow_partial_load=True)
    io = res.io
    assert io.reads.tolist() == [len(res.plans[r].items) for r in range(res.world_size)]
    assert io.traffic.sum() <= io.bytes_read.sum() and io.read_counts.sum() <= io.reads.sum()
    assert io.traffic.sum(axis=0).tolist() == io.file_bytes_read.tolist()
    assert io.read_counts.sum(axis=0).tolist() == io.file_reads.tolist()
    assert io.files_opened.tolist() == (io.read_counts > 0).sum(axis=1).tolist()
    assert {
        f: tuple(np.flatnonzero(io.read_counts[:, j]).tolist()) for j, f in enumerate(io.files)
    } == io.readers
    for fqn, lay in load.items():
        block = res.reads(fqn)
        if block.kind != "tensor" or len(block) == 0:
            continue
        saved_chunks = md.state_dict_metadata[fqn].chunks
        for r in range(res.world_size):
            sl = block.of_rank(r)
            for li in set(block.local_idx[sl].tolist()):
                local = lay.rank_chunks[r][li]
                rows = np.flatnonzero(block.local_idx[sl] == li) + sl.start
                got = [
                    Chunk(
                        tuple(np.add(local.offsets, block.dest_offsets[i]).tolist()),
                        tuple(block.lengths[i].tolist()),
                    )
                    for i in rows
                ]
                for i, g in zip(rows, got):
                    s = saved_chunks[block.saved_idx[i]]
                    assert s.contains(g) and local.contains(g)
                    assert tuple(np.add(s.offsets, block.storage_offsets[i]).tolist()) == g.offsets
                # what the reads miss is exactly what the saved chunks miss
                assert sum(c.volume for c in uncovered(local, got)) == sum(
                    c.volume for c in uncovered(local, saved_chunks)
                )
