"""Every diagnosis kind reproduced by real ``dcp.save`` / ``dcp.load`` runs (2 and 4 processes over
gloo on 127.0.0.1, tiny tensors whose elements encode their global index), showing torch's
behaviour (the raised message, or wrong / stale values read back) and the workbench finding the
same thing from the checkpoint's real ``.metadata``; plus property tests that uncovered regions
and read items tile every requested chunk.

Three launches in all (save on 2 ranks; save + load on 4 ranks; loads on 2 ranks)."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import workbench as wb
from workbench.diagnosis import find_problems, find_save_problems
from workbench.explanations import explain
from workbench.planner_helpers import PARTIAL_MESSAGE

FILL = -1.0


def _w(pl, shape=(8, 6), dtype="float32", ws=2):
    return wb.dtensor_layout(shape, (ws,), pl, dtype, world_size=ws)


def _per_rank(n, ws):
    return {
        f"dataloader.dp_rank_{r}": wb.bytes_layout(ws, ranks=[r], per_rank_values=True)
        for r in range(n)
    }


def _edit(path, fqn, edit):
    """Rewrite ``.metadata`` (torch's own pickle, as a hand edit would) after ``edit(chunks)``
    returned ``{old offset: new chunk}``; storage_data keys follow the chunks' offsets."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import MetadataIndex

    md = dcp.FileSystemReader(str(path)).read_metadata()  # our own file: trusted
    tsm = md.state_dict_metadata[fqn]
    moved = edit(tsm.chunks)
    tsm.chunks = [
        moved.get(tuple(c.offsets), c) for c in tsm.chunks if moved.get(tuple(c.offsets), c)
    ]
    data = {}
    for k, v in md.storage_data.items():
        if k.fqn == fqn and tuple(k.offset) in moved:
            new = moved[tuple(k.offset)]
            if new is None:
                continue
            k = MetadataIndex(fqn, torch.Size(new.offsets), k.index)
        data[k] = v
    md.storage_data = data
    md.storage_meta.load_id = None
    with open(Path(path) / ".metadata", "wb") as f:
        pickle.dump(md, f)


def _drop_rows_4_8(chunks):
    return {(4, 0): None}


def _move_rows_4_8_to_2(chunks):
    import torch
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    return {(4, 0): ChunkStorageMetadata(torch.Size([2, 0]), torch.Size([4, 6]))}


BASE = {"w": _w("S(0)"), "b": wb.dtensor_layout((6,), (2,), "S(0)")}
LOADS = {  # name -> (checkpoint, layouts on 2 ranks)
    "hole": ("hole", BASE),
    "overlap": ("overlap", BASE),
    "strided": ("base", {"w": _w("SS(0,2)", shape=(8, 6))}),
    "dtype": ("base", {"w": _w("S(0)", dtype="int32")}),
    "size": ("base", {"w": _w("S(0)", shape=(8, 4))}),
    "missing": ("base", {"w": _w("S(0)"), "extra": _w("S(0)")}),
    "partial": ("base", {"w": _w("P")}),
    "dedup": ("dedup", {"t": wb.tensor_layout((4,), 2, per_rank_values=True)}),
    "bytes_4_to_2": ("bytes4", _per_rank(2, 2)),
}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from workbench.torch_bridge.runs import LoadStep, SaveStep, run_steps

    root = tmp_path_factory.mktemp("diag_real")
    p = {
        k: str(root / k)
        for k in (
            "base",
            "dedup",
            "strided_save",
            "partial_save",
            "bytes2",
            "bytes4",
            "hole",
            "overlap",
        )
    }
    saves = {
        "base": BASE,
        "dedup": {"t": wb.tensor_layout((4,), 2, per_rank_values=True)},
        "strided_save": {"w": wb.dtensor_layout((8,), (2,), "SS(0,2)")},
        "partial_save": {"g": wb.dtensor_layout((4,), (2,), "P")},
        "bytes2": _per_rank(2, 2),
    }
    runs = dict(zip(saves, run_steps([SaveStep(p[k], v) for k, v in saves.items()], 2)))
    four = run_steps(
        [SaveStep(p["bytes4"], _per_rank(4, 4)), LoadStep(p["bytes2"], _per_rank(4, 4), fill=FILL)],
        4,
    )
    runs["bytes4"], runs["bytes_2_to_4"] = four
    for name, edit in (("hole", _drop_rows_4_8), ("overlap", _move_rows_4_8_to_2)):
        shutil.copytree(p["base"], p[name])
        _edit(p[name], "w", edit)
    loads = run_steps([LoadStep(p[ck], lay, fill=FILL) for ck, lay in LOADS.values()], 2)
    runs.update(zip(LOADS, loads))
    return p, runs


def _problems(path, layouts, *, unexpected=False):
    """The workbench's problems for loading the real checkpoint at ``path`` into ``layouts``;
    most loads here leave the base checkpoint's ``b`` unrequested (an ``unexpected_key`` warning,
    left out unless asked for)."""
    probs = find_problems(wb.plan_load(wb.load_metadata(path), layouts))
    return [q for q in probs if unexpected or q.kind != "unexpected_key"]


def _error(run) -> str:
    """The error text of a failed real load (every failing rank reports the same exception)."""
    texts = sorted(set(run.errors.values()))
    assert texts, "torch raised nothing"
    return texts[0]


@pytest.mark.real
def test_hole_leaves_stale_values_and_is_found(real):
    p, runs = real
    run = runs["hole"]
    assert not run.errors  # no error from torch
    assert run.mismatches() == [(1, "w", 24, 24)]  # rank 1's rows 4:8 x 6 stay at the fill value
    (prob,) = _problems(p["hole"], BASE)
    assert (prob.kind, prob.ranks, str(prob.region), prob.severity) == (
        "uncovered",
        (1,),
        "[4:8, 0:6]",
        "silent",
    )
    assert prob.region.volume == 24


@pytest.mark.real
def test_overlap_plus_hole_with_equal_volumes(real):
    p, runs = real
    run = runs["overlap"]
    assert not run.errors
    r1 = run.ranks[1]
    got, want = r1.values["w"], r1.expected["w"]
    # rank 1 holds rows 4:8: rows 6, 7 (local 2, 3) are stale, rows 4, 5 got saved rows 6, 7
    assert (got[2:] == FILL).all()
    np.testing.assert_array_equal(got[:2], want[2:])
    probs = _problems(p["overlap"], BASE)
    assert [(q.kind, q.ranks, str(q.region)) for q in probs] == [
        ("uncovered", (1,), "[6:8, 0:6]"),
        ("overlap", (0,), "[2:4, 0:6]"),
    ]
    # rank 0's rows 2:4 come from one of the two overlapping chunks: saved rows 2,3 or 4,5
    got0, want0 = run.ranks[0].values["w"], run.ranks[0].expected["w"]
    assert (got0[2:4] == want0[2:4]).all() or (got0[2:4] == (want0[2:4] + 12)).all()


@pytest.mark.real
def test_strided_destination_reads_its_box(real):
    p, runs = real
    run = runs["strided"]
    assert not run.errors
    lay = LOADS["strided"][1]["w"]
    probs = _problems(p["base"], LOADS["strided"][1])
    assert [(q.kind, q.ranks) for q in probs] == [
        ("strided_misdescribed", (0,)),
        ("strided_misdescribed", (1,)),
    ]
    g = np.arange(48, dtype=np.float64).reshape(8, 6) + 0.25
    for r, q in enumerate(probs):
        got = run.ranks[r].values["w"]
        box = q.region
        # torch fills the rank with the rows of its box, as the workbench says
        np.testing.assert_array_equal(got, g[box.offsets[0] : box.offsets[0] + box.sizes[0]])
        wrong = int((got != run.ranks[r].expected["w"]).any(axis=1).sum())
        assert wrong == 2 and "local positions [2, 3]" in q.message
        assert q.region == lay.chunks(r)[0]


@pytest.mark.real
def test_dtype_is_cast_silently(real):
    p, runs = real
    run = runs["dtype"]
    assert not run.errors
    for rl in run.ranks:
        np.testing.assert_array_equal(rl.values["w"], np.trunc(rl.expected["w"]))
    q, b = _problems(p["base"], LOADS["dtype"][1], unexpected=True)
    # torch loaded w and ignored the saved bias nobody asked for
    assert (b.fqn, b.kind, b.severity) == ("b", "unexpected_key", "warning")
    assert (q.kind, q.severity) == ("dtype_mismatch", "silent") and "float32 -> int32" in q.message


@pytest.mark.real
def test_size_mismatch_and_missing_key_messages_match_torch(real):
    p, runs = real
    text = _error(runs["size"])
    torch_msg = (
        "Size mismatch between saved torch.Size([8, 6]) and current: torch.Size([8, 4]) for w"
    )
    assert torch_msg in text
    (q,) = _problems(p["base"], LOADS["size"][1])
    assert (q.kind, q.severity) == ("shape_mismatch", "error") and q.message.endswith(torch_msg)
    e = explain(text, target=LOADS["size"][1])
    assert e.pattern == "checkpoint_exception" and e.fqn == "w"
    assert e.inner[0].pattern == "size_mismatch" and e.inner[0].numbers["current"] == (8, 4)

    text = _error(runs["missing"])
    assert "Missing key in checkpoint state_dict: extra." in text
    (q,) = _problems(p["base"], LOADS["missing"][1])
    assert (q.fqn, q.kind, q.severity) == ("extra", "missing_key", "error")
    assert "Missing key in checkpoint state_dict: extra." in q.message
    assert explain(text).inner[0].fqn == "extra"


@pytest.mark.real
def test_partial_load_and_save(real):
    p, runs = real
    text = _error(runs["partial"])
    msg = (
        "Invalid checkpoint metadata for w, expected BytesStorageMetadata but found <class "
        "'torch.distributed.checkpoint.metadata.TensorStorageMetadata'>"
    )
    assert msg in text
    (q,) = _problems(p["base"], LOADS["partial"][1])
    assert (q.kind, q.severity) == ("partial", "error") and msg in q.message
    assert (
        "Partial placement" in explain(text, target=LOADS["partial"][1]).inner[0].what_to_check[0]
    )

    save = runs["partial_save"]
    assert all(PARTIAL_MESSAGE in e for e in save.errors)
    (q,) = find_save_problems(wb.plan_save({"g": wb.dtensor_layout((4,), (2,), "P")}))
    assert (q.kind, q.ranks) == ("partial", (0, 1)) and PARTIAL_MESSAGE in q.message


@pytest.mark.real
def test_strided_save_fails_validation_as_predicted(real):
    p, runs = real
    save = runs["strided_save"]
    assert not save.ok
    sv = wb.plan_save({"w": wb.dtensor_layout((8,), (2,), "SS(0,2)")})
    probs = find_save_problems(sv)
    assert [(q.kind, q.severity) for q in probs] == [("strided_misdescribed", "error")] * 2
    torch_text = probs[0].message.split("torch raises: ")[1]
    assert torch_text.startswith("Failed to validate global plan: key:w has overlapping chunks")
    assert all(torch_text in e for e in save.errors)  # the exact text torch raised on both ranks
    assert not (Path(p["strided_save"]) / ".metadata").exists()
    assert explain(save.errors[0]).inner[0].pattern == "validate_global_plan"


@pytest.mark.real
def test_dedup_keeps_one_ranks_copy(real):
    p, runs = real
    lay = {"t": wb.tensor_layout((4,), 2, per_rank_values=True)}
    (q,) = find_save_problems(wb.plan_save(lay))
    run = runs["dedup"]
    assert not run.errors
    # every element encodes (saving rank) * 4 + index + 0.25: both ranks read the same copy
    kept = {int(rl.values["t"][0] // 4) for rl in run.ranks}
    assert kept == {1 - q.ranks[0]} and q.kind == "dedup_loss"
    assert [rl.rank for rl in run.ranks if (rl.values["t"] != rl.expected["t"]).any()] == list(
        q.ranks
    )


@pytest.mark.real
def test_per_rank_bytes_both_directions(real):
    p, runs = real
    up = runs["bytes_2_to_4"]
    assert "Missing key in checkpoint state_dict: dataloader.dp_rank_2." in _error(up)
    probs = _problems(p["bytes2"], _per_rank(4, 4))
    assert [(q.fqn, q.kind, q.severity) for q in probs] == [
        ("dataloader.dp_rank_2", "per_rank_bytes", "error"),
        ("dataloader.dp_rank_3", "per_rank_bytes", "error"),
    ]

    down = runs["bytes_4_to_2"]
    assert down.ok  # silently: ranks 0, 1 load their own state ...
    saved = wb.load_metadata(p["bytes4"]).state_dict_metadata
    assert {"dataloader.dp_rank_2", "dataloader.dp_rank_3"} <= set(saved)  # ... 2, 3 are dropped
    probs = _problems(p["bytes4"], _per_rank(2, 2))
    assert [(q.fqn, q.severity) for q in probs] == [
        ("dataloader.dp_rank_2", "silent"),
        ("dataloader.dp_rank_3", "silent"),
    ]


# ----------------------------------------------------------------------------- properties
@st.composite
def _case(draw):
    shape = (draw(st.integers(1, 9)), draw(st.integers(1, 7)))
    boxes = []
    for _ in range(draw(st.integers(0, 5))):
        o = (draw(st.integers(0, shape[0])), draw(st.integers(0, shape[1])))
        s = (draw(st.integers(0, shape[0] - o[0])), draw(st.integers(0, shape[1] - o[1])))
        boxes.append(wb.Chunk(o, s))
    disjoint = draw(st.booleans())
    if disjoint:  # keep the first of every overlapping pair: reads then tile exactly
        kept = []
        for b in boxes:
            if not any(
                wb.intersect(b, k) is not None and not wb.intersect(b, k).is_empty for k in kept
            ):
                kept.append(b)
        boxes = kept
    mesh = draw(st.sampled_from([(1,), (2,), (3,), (2, 2), (4,)]))
    specs = ["S(0)", "S(1)", "R"]
    pl = ", ".join(draw(st.sampled_from(specs)) for _ in mesh)
    return shape, boxes, mesh, pl, disjoint


@given(_case())
def test_uncovered_regions_and_reads_tile_every_requested_chunk(case):
    shape, boxes, mesh, pl, disjoint = case
    md = wb.Metadata({"t": wb.TensorStorageMetadata("float32", shape, boxes)})
    lay = wb.dtensor_layout(shape, mesh, pl)
    res = wb.plan_load(md, {"t": lay})
    probs = [q for q in find_problems(res) if q.kind == "uncovered"]
    block = res.reads("t")
    for r in range(lay.world_size):
        (want,) = lay.chunks(r)
        seen = np.zeros(shape, dtype=int)
        sl = block.of_rank(r)
        for d_off, ln in zip(block.dest_offsets[sl], block.lengths[sl]):
            box = tuple(
                slice(want.offsets[d] + d_off[d], want.offsets[d] + d_off[d] + ln[d])
                for d in range(2)
            )
            seen[box] += 1
        for q in probs:
            if r in q.ranks:
                assert want.contains(q.region)
                seen[q.region.slices()] += 1
        inside = np.zeros(shape, dtype=bool)
        inside[want.slices()] = True
        assert (seen[~inside] == 0).all()
        if disjoint:  # reads and holes tile the request exactly
            assert (seen[inside] == 1).all()
        else:  # every element is read or reported, holes never overlap reads
            assert (seen[inside] >= 1).all()
            for q in probs:
                if r in q.ranks:
                    assert (seen[q.region.slices()] == 1).all()
