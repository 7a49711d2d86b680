"""Plans of big jobs share work between fqns with the same chunk geometry (io_cost groups reads by
the files and bytes they touch, diagnosis checks each geometry once, equal chunks of a layout are
one object). These tests build small jobs where that sharing could go wrong and compare with the
answer computed item by item from the per-rank records. Timings are in
benchmarks/bench_scale.py, not here."""

from __future__ import annotations

import numpy as np

from workbench.diagnosis import find_checkpoint_problems, find_problems
from workbench.geometry import Chunk
from workbench.planning import plan_load, plan_save
from workbench.records import Metadata, TensorProperties, TensorStorageMetadata
from workbench.sharding import dtensor_layout, tensor_layout


def _brute_io(res):
    """Per rank: reads, bytes needed, bytes read, and the (rank, file) -> bytes traffic, from
    every rank's ReadItem records and the metadata's storage_data, one item at a time."""
    sdm, sd = res.metadata.state_dict_metadata, res.metadata.storage_data
    ws = res.world_size
    reads, needed, read = np.zeros(ws, int), np.zeros(ws, int), np.zeros(ws, int)
    traffic: dict[tuple[int, str], int] = {}
    for r in range(ws):
        for it in res.plans[r].items:
            md = sdm[it.storage_index.fqn]
            esize = md.properties.element_size
            chunk = md.chunks[it.storage_index.index]
            info = sd[it.storage_index]
            nbytes = chunk.volume * esize
            reads[r] += 1
            needed[r] += int(np.prod(it.lengths)) * esize
            read[r] += nbytes
            key = (r, str(info.relative_path))
            traffic[key] = traffic.get(key, 0) + nbytes
    return reads, needed, read, traffic


def test_io_of_fqns_whose_writers_differ_only_on_unread_chunks():
    # 3 rows on 8 ranks: ranks 3..7 hold an empty shard at offset (3, 0), one key shared by five
    # ranks; the load-balanced dedup gives each fqn another writer for it, and no load reads it
    saved = {f"w{i}": dtensor_layout((3, 4), (8,), "S(0)", "float32") for i in range(6)}
    load = {f"w{i}": dtensor_layout((3, 4), (2, 4), "S(0), S(1)", "float32") for i in range(6)}
    save = plan_save(saved)
    empty_writers = {tuple(w[3:]) for w in save.writers.values()}
    assert len(empty_writers) > 1, "the case needs fqns whose empty-shard writers differ"
    res = plan_load(save.metadata, load)
    io = res.io
    reads, needed, read, traffic = _brute_io(res)
    assert io.reads.tolist() == reads.tolist()
    assert io.bytes_needed.tolist() == needed.tolist()
    assert io.bytes_read.tolist() == read.tolist()
    got = {
        (int(r), io.files[int(f)]): int(b)
        for r, f, b in zip(io.pair_rank, io.pair_file, io.pair_bytes)
    }
    assert got == traffic
    assert io.files_opened.tolist() == [
        len({f for (rr, f) in traffic if rr == r}) for r in range(res.world_size)
    ]
    # every file written, read or not (the empty shards' writers' files hold 0 bytes)
    assert set(io.files) == {str(info.relative_path) for info in res.metadata.storage_data.values()}


def test_equal_chunks_of_a_layout_share_one_object_in_the_metadata():
    save = plan_save({"a": dtensor_layout((2, 4), (6,), "S(0)", "float32")})
    chunks = save.metadata.state_dict_metadata["a"].chunks
    assert list(chunks) == [
        Chunk((0, 0), (1, 4)),
        Chunk((1, 0), (1, 4)),
        Chunk((2, 0), (0, 4)),
    ]
    lay = save.layouts["a"]
    # ranks 2..5 hold equal empty chunks; the write item of each names the same object
    items = [save.local_plans[r].items[0].tensor_data.chunk for r in range(2, 6)]
    assert all(c is items[0] for c in items) and all(
        items[r - 2] == lay.chunks(r)[0] for r in range(2, 6)
    )


def test_problems_of_fqns_sharing_a_geometry_are_their_own():
    # the coverage of one geometry is computed once: a tensor with the same shape but a hole
    # must still get its own problem, and the complete ones none
    props = TensorProperties("float32")
    whole = [Chunk((0, 0), (2, 4)), Chunk((2, 0), (2, 4))]
    holed = [Chunk((0, 0), (2, 4))]
    md = Metadata(
        {
            "a": TensorStorageMetadata(props, (4, 4), list(whole)),
            "b": TensorStorageMetadata(props, (4, 4), list(holed)),
            "c": TensorStorageMetadata(props, (4, 4), list(whole)),
        }
    )
    checkpoint = find_checkpoint_problems(md)
    assert [(p.fqn, p.kind, p.region) for p in checkpoint] == [
        ("b", "uncovered", Chunk((2, 0), (2, 4)))
    ]
    load = {f: dtensor_layout((4, 4), (2,), "S(0)", "float32") for f in "abc"}
    problems = find_problems(plan_load(md, load))
    assert {(p.fqn, p.kind) for p in problems} == {("b", "uncovered")}


def test_traffic_heatmap_of_many_ranks_sums_blocks():
    # 4100 ranks and files: the heatmap sums blocks of 3 ranks x 3 files (1367 cells a side)
    # instead of drawing a dense 4100 x 4100 matrix; every byte is still counted
    import matplotlib

    matplotlib.use("Agg")
    from workbench.plots import plot_traffic

    n = 4100
    save = plan_save({"w": dtensor_layout((n, 2), (n,), "S(0)", "float32")})
    res = plan_load(save.metadata, {"w": dtensor_layout((n, 2), (n,), "S(1)", "float32")})
    ax = plot_traffic(res)
    shown = ax.images[0].get_array()
    assert shown.shape == (1367, 1367)
    assert "a cell sums 3 ranks x 3 files" in ax.get_title()
    # cells in bytes (the largest is 48 B): every byte of the rank-file pairs is in the picture
    assert (
        float(shown.sum()) == float(res.io.pair_bytes.sum()) == n * 2 * 8
    )  # each saved row (8 B) read whole by 2 ranks


def test_io_of_a_read_checkpoint_answers_storage_rows_at_once(tmp_path):
    # a real single-process dcp.save read back by the bounded reader (storage_data held as
    # columns): load_io looks a tensor's rows up at once; it must agree with the per-chunk
    # lookups of the same storage_data held as a plain dict
    import dataclasses

    import torch
    import torch.distributed.checkpoint as dcp

    from workbench.formats.dcp import load_metadata
    from workbench.io_cost import load_io

    dcp.save(
        {"a": torch.arange(24.0).reshape(6, 4), "b": torch.ones(5, dtype=torch.bfloat16)},
        checkpoint_id=str(tmp_path),
    )
    md = load_metadata(tmp_path, cache=False)
    assert getattr(md.storage_data, "box_rows", None) is not None
    target = {
        "a": dtensor_layout((6, 4), (2, 2), "S(0), S(1)", "float32"),
        "b": dtensor_layout((5,), (2, 2), "S(0), R", "bfloat16"),
    }
    columns = load_io(plan_load(md, target))
    plain = dataclasses.replace(md, storage_data=dict(md.storage_data.items()))
    per_chunk = load_io(plan_load(plain, target))
    for f in dataclasses.fields(columns):
        a, b = getattr(columns, f.name), getattr(per_chunk, f.name)
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f.name
        else:
            assert a == b, f.name
    assert columns.bytes_read.sum() > columns.bytes_needed.sum() > 0


def test_load_balanced_dedup_past_int64_loads_matches_the_scalar_helpers():
    # charges of 2**62 bytes per key: the writers' loads leave int64, so the balance runs on
    # Python ints as torch does; writers as the scalar mirror of dedup_save_plans chooses them
    from support import helpers_save, metadata_key, write_key

    sd = {
        "huge": tensor_layout((2**60,), 3, "float32"),
        "small": tensor_layout((4,), 3, "float32"),
        "huge2": tensor_layout((2**60,), 3, "float32"),
    }
    res = plan_save(sd)
    _, plans, md, _ = helpers_save(sd, False)
    assert [[write_key(i) for i in p.items] for p in res.plans] == [
        [write_key(i) for i in p.items] for p in plans
    ]
    assert metadata_key(res.metadata) == metadata_key(md)
    assert res.writers == {"huge": [0], "small": [1], "huge2": [2]}
