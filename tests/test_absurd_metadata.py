"""Metadata that unpickles but makes no sense, written as real ``.metadata`` files with torch's own
pickle of torch's records, driven through every downstream path: the reader,
``find_checkpoint_problems``, ``plan_load`` (problems, I/O), tables, pictures, the CLI
(``inspect``, ``inspect --chunks``, ``plan``, ``report``) and ``CheckpointExplorer``. Each path
answers with problems or one clear ``WorkbenchError`` (CLI: exit 1 for a blocked plan, 2 with a one-line message for bad input), never
another exception; the bounds that keep hostile shapes from hanging are checked by their errors."""

from __future__ import annotations

import json
import pickle

import matplotlib
import pytest

import workbench as wb
from workbench import tables
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.geometry import MAX_OVERLAP_REGIONS, Chunk

matplotlib.use("Agg")

BIG = 2**62


def _write(root, name, size, chunks, dtype="float32"):
    """A checkpoint directory whose ``.metadata`` torch itself pickled: tensor ``w`` of ``size``
    with ``chunks`` [(offsets, sizes)], each with a storage entry; and a JSON target
    (``w`` as a DTensor Shard(0) on 2 ranks)."""
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    d = root / name
    d.mkdir()
    cs = [ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in chunks]
    props = TensorProperties(dtype=getattr(torch, dtype))
    md = Metadata(
        {"w": TensorStorageMetadata(props, torch.Size(size), cs)},
        storage_data={
            MetadataIndex("w", torch.Size(o), i): _StorageInfo(f"__{i % 2}_0.distcp", 0, 16)
            for i, (o, _) in enumerate(chunks)
        },
    )
    (d / ".metadata").write_bytes(pickle.dumps(md))
    target = d / "target.json"
    target.write_text(json.dumps({"w": {"shape": list(size), "mesh": [2], "placements": "S(0)"}}))
    return d, target


def _paths(d, target):
    """Run every downstream path; return {path: "ok" | error text}. Any exception other than a
    WorkbenchError fails the test (the CLI must exit 0 or 2)."""
    out = {}

    def run(label, fn):
        try:
            fn()
            out[label] = "ok"
        except WorkbenchError as e:
            out[label] = f"error: {e}"

    md = wb.load_metadata(d)
    layouts = wb.targets.json_target(target.read_bytes())
    run("checkpoint_problems", lambda: wb.find_checkpoint_problems(md))
    res = {}

    def plan():
        res["r"] = r = wb.plan_load(md, layouts)
        res["problems"] = r.problems
        r.io  # noqa: B018 - the I/O model runs on the same absurd chunks

    run("plan_load", plan)
    run("chunks_table", lambda: tables.checkpoint_chunks_table(md))
    if "r" in res:
        run("problems_table", lambda: tables.problems_table(res["problems"]))
        run("read_items_table", lambda: tables.read_items_table(res["r"]))

        def picture():
            from workbench import plots
            from workbench.picture_data import reshard_data

            pic = reshard_data(md, res["r"], "w")
            import matplotlib.pyplot as plt

            ax = plots.draw_picture(pic)
            plt.close(ax.figure)
            res["picture"] = pic

        run("picture", picture)
    for label, argv in {
        "cli inspect": ["inspect", str(d)],
        "cli inspect --chunks": ["inspect", str(d), "--chunks"],
        "cli plan": ["plan", str(d), "--target", str(target)],
        "cli report": ["report", str(d), "--target", str(target), "-o", str(d / "r.html")],
    }.items():
        code = main(argv)
        # 0: fine, 1: `plan` found a blocking problem (these files have no data files), 2: bad input
        assert code in (0, 1, 2), (label, code)
        out[label] = "ok" if code in (0, 1) else "exit 2"

    def explorer():
        from workbench.widgets import CheckpointExplorer

        CheckpointExplorer(str(d), layouts)

    run("explorer", explorer)
    return out, res


def test_chunk_outside_its_tensor_is_a_hole_not_a_crash(tmp_path, capsys):
    d, t = _write(tmp_path, "outside", (8, 6), [((0, 0), (4, 6)), ((100, 0), (4, 6))])
    out, res = _paths(d, t)
    assert set(out.values()) == {"ok"}, out
    probs = wb.find_checkpoint_problems(wb.load_metadata(d))
    assert [(q.kind, str(q.region)) for q in probs] == [("uncovered", "[4:8, 0:6]")]
    assert [(q.kind, q.ranks) for q in res["problems"]] == [("uncovered", (1,))]


def test_negative_offsets_and_ends_past_int64(tmp_path, capsys):
    d, t = _write(tmp_path, "neg", (8, 6), [((-4, 0), (8, 6)), ((4, 0), (4, 6))])
    out, _ = _paths(d, t)
    assert set(out.values()) == {"ok"}, out
    d, t = _write(tmp_path, "end", (8, 6), [((0, 0), (8, 6)), ((2**63 - 5, 0), (4, 6))])
    out, _ = _paths(d, t)
    assert set(out.values()) == {"ok"}, out


def test_sizes_no_torch_tensor_can_have_are_refused_on_reading(tmp_path):
    d, _ = _write(tmp_path, "huge", (BIG, BIG), [((0, 0), (BIG, BIG))])
    with pytest.raises(wb.MetadataError, match="w: size .* holds more elements than a torch"):
        wb.load_metadata(d)
    d, _ = _write(tmp_path, "huge_chunk", (8, 6), [((0, 0), (8, 6)), ((0, 0), (BIG, BIG))])
    with pytest.raises(wb.MetadataError, match="w: chunk #1 sizes .* hold more elements"):
        wb.load_metadata(d)
    assert main(["inspect", str(d)]) == 2


@pytest.mark.parametrize("log2", [40, 60])
def test_huge_tensors_plan_and_draw_by_proportion(tmp_path, capsys, log2):
    rows, cols = 2 ** (log2 // 2), 2 ** (log2 - log2 // 2)
    half = rows // 2
    d, t = _write(
        tmp_path, "big", (rows, cols), [((0, 0), (half, cols)), ((half, 0), (half, cols))]
    )
    out, res = _paths(d, t)
    assert set(out.values()) == {"ok"}, out
    assert res["problems"] == [] and wb.find_checkpoint_problems(wb.load_metadata(d)) == []
    # the picture keeps the proportions: the two saved halves are tiles of equal height
    pic = res["picture"]
    saved = [tile for tile in pic.tiles if tile.kind == "saved"]
    assert len(saved) == 2
    assert {tile.h for tile in saved} == {half} and {tile.y for tile in saved} == {0, half}


def test_a_thousand_copies_of_one_chunk_make_one_overlap(tmp_path, capsys):
    d, t = _write(tmp_path, "dup", (8, 6), [((0, 0), (8, 6))] * 1000)
    out, res = _paths(d, t)
    assert set(out.values()) == {"ok"}, out
    (q,) = wb.find_checkpoint_problems(wb.load_metadata(d))
    assert (q.kind, str(q.region)) == ("overlap", "[0:8, 0:6]")
    assert "and 996 more" in q.message


def test_staggered_overlaps_are_listed_within_bounds(tmp_path, capsys):
    n = 80  # 3,160 pairs of boxes, each overlapping on its own region
    d, t = _write(tmp_path, "stagger", (2000, 2000), [((i, i), (1000, 1000)) for i in range(n)])
    out, _ = _paths(d, t)
    assert set(out.values()) == {"ok"}, out
    probs = wb.find_checkpoint_problems(wb.load_metadata(d))
    overlaps = [q for q in probs if q.kind == "overlap"]
    assert len(overlaps) == MAX_OVERLAP_REGIONS + 1
    assert overlaps[-1].region is None and "more overlapping chunk pairs" in overlaps[-1].message


def test_too_many_distinct_edges_is_a_clear_error(tmp_path, capsys):
    # 1,000 staggered boxes: the exact holes need a 4,000,000-cell grid
    chunks = [((i, i), (10_000, 10_000)) for i in range(1000)]
    d, t = _write(tmp_path, "edges", (20_000, 20_000), chunks)
    with pytest.raises(wb.WorkbenchError, match=r"^w: the holes of .* need a grid of 4,000,000"):
        wb.find_checkpoint_problems(wb.load_metadata(d))
    assert main(["inspect", str(d)]) == 2
    assert "grid of 4,000,000 cells" in capsys.readouterr().err


def test_many_one_row_chunks(tmp_path, capsys):
    n = 5_000
    d, t = _write(tmp_path, "many", (n, 4), [((i, 0), (1, 4)) for i in range(n)])
    out, res = _paths(d, t)
    assert set(out.values()) == {"ok"}, out
    assert res["problems"] == []
    # the terminal table stops at 200 rows and says so
    main(["inspect", str(d), "--chunks"])
    assert "4,800 more rows" in capsys.readouterr().out


def test_duplicated_storage_indices_and_chunks(tmp_path, capsys):
    chunks = [((0, 0), (4, 6)), ((0, 0), (4, 6)), ((4, 0), (4, 6)), ((4, 0), (2, 6))]
    d, t = _write(tmp_path, "dupidx", (8, 6), chunks)
    out, res = _paths(d, t)
    assert set(out.values()) == {"ok"}, out
    kinds = [(q.kind, str(q.region)) for q in wb.find_checkpoint_problems(wb.load_metadata(d))]
    assert kinds == [("overlap", "[0:4, 0:6]"), ("overlap", "[4:6, 0:6]")]


def test_overlap_regions_are_exact_below_the_bounds():
    # three boxes on one row: pairs (0, 1) and (1, 2) overlap, in that order
    cov = wb.geometry.coverage(
        (1, 10), [Chunk((0, 0), (1, 5)), Chunk((0, 3), (1, 5)), Chunk((0, 7), (1, 3))]
    )
    assert [(str(r), ix) for r, ix in cov.overlaps] == [
        ("[0:1, 3:5]", (0, 1)),
        ("[0:1, 7:8]", (1, 2)),
    ]
    assert cov.more_overlaps == 0 and not cov.tiles


def test_json_targets_with_absurd_strided_shards_are_bounded(tmp_path):
    """Found by the fuzzer: a JSON target's _StridedShard with a split factor of 10**9, or over a
    dim of 2**40, looped / materialised positions without end."""
    layouts = wb.targets.json_target(
        b'{"w": {"shape": [8], "mesh": [2], "placements": "SS(0,1000000000)"}}'
    )
    assert layouts["w"].chunks(0) == (Chunk((0,), (8,)),)  # the first piece holds everything
    with pytest.raises(WorkbenchError, match="splits a dim of 1,099,511,627,776 elements"):
        wb.targets.json_target(
            b'{"w": {"shape": [1099511627776], "mesh": [2], "placements": "SS(0,2)"}}'
        )


@pytest.mark.parametrize(
    "doc",
    [
        b'{"t": {"shape": [4], "ranks": [0, 1], "world_size": 1e9994}}',  # found by the fuzzer
        b'{"t": {"shape": [4], "world_size": 2.0}}',
        b'{"t": {"shape": [4], "mesh": [true], "placements": "R"}}',
    ],
)
def test_json_target_numbers_that_are_not_ints(doc):
    with pytest.raises(WorkbenchError, match="malformed value"):
        wb.targets.json_target(doc)
