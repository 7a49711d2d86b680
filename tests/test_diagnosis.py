"""find_problems / find_save_problems on plans built by workbench.planning from hand-made
metadata and layouts. Expected regions are worked out by hand (intervals in the comments) or by
painting boolean grids with numpy; torch's messages are the ones planning records (checked
against torch in test_planning) and the real runs in test_diagnosis_real."""

import numpy as np
import pytest

import workbench as wb
from workbench import diagnosis
from workbench.diagnosis import KINDS, Problem, find_problems, find_save_problems
from workbench.models import apply_recipe, model_state_dict


def _md(**tensors):
    """Metadata from ``name=(size, [(offsets, sizes), ...])`` or ``name=None`` (bytes)."""
    sdm = {}
    for k, v in tensors.items():
        if v is None:
            sdm[k] = wb.BytesStorageMetadata()
        else:
            size, chunks, *dtype = v
            sdm[k] = wb.TensorStorageMetadata(
                dtype[0] if dtype else "float32", size, [wb.Chunk(o, s) for o, s in chunks]
            )
    return wb.Metadata(sdm)


def _kinds(problems):
    return [(p.fqn, p.kind, p.severity) for p in problems]


def test_problem_record_is_checked_and_normalised():
    p = Problem("w", "overlap", [3, 1], wb.Chunk((0,), (2,)), "silent", "m", "f")
    assert p.ranks == (3, 1) and str(p) == "[silent] overlap: m f"
    with pytest.raises(
        wb.WorkbenchError, match="w: problem kind .holes. is unknown .one of missing_key"
    ):
        Problem("w", "holes", (), None, "silent", "m", "f")
    with pytest.raises(wb.WorkbenchError, match="severity .fatal. is unknown"):
        Problem("w", "overlap", (), None, "fatal", "m", "f")
    assert KINDS[:10] == (
        "missing_key",
        "unexpected_key",
        "shape_mismatch",
        "dtype_mismatch",
        "uncovered",
        "overlap",
        "strided_misdescribed",
        "dedup_loss",
        "per_rank_bytes",
        "partial",
    )
    assert {"missing_file", "unlisted_chunk", "truncated_file"} <= set(KINDS)
    assert {"no_metadata", "stray_file", "bad_item", "hf_lost_chunk"} <= set(KINDS)
    assert len(set(KINDS)) == len(KINDS)


def test_clean_reshard_has_no_problems():
    save = wb.plan_save({"w": wb.dtensor_layout((8, 6), (2,), "S(0)"), "step": wb.bytes_layout(2)})
    res = wb.plan_load(
        save.metadata,
        {
            "w": wb.dtensor_layout((8, 6), (2, 2), "S(1), S(0)", world_size=4),
            "step": wb.bytes_layout(4),
        },
    )
    assert find_problems(res) == [] and res.problems == []


def test_missing_unexpected_shape_and_dtype():
    md = _md(
        a=((4,), [((0,), (4,))]),
        b=((2, 2), [((0, 0), (2, 2))]),
        c=((3,), [((0,), (3,))], "float32"),
        old=None,
    )
    lay = {
        "a": wb.tensor_layout((4,), 2),
        "b": wb.tensor_layout((2, 3), 2),
        "c": wb.tensor_layout((3,), 2, "int32"),
        "new": wb.tensor_layout((1,), 2),
    }
    probs = find_problems(wb.plan_load(md, lay))
    assert _kinds(probs) == [
        ("b", "shape_mismatch", "error"),
        ("c", "dtype_mismatch", "silent"),
        ("new", "missing_key", "error"),
        ("old", "unexpected_key", "warning"),
    ]
    b, c, new, old = probs
    assert b.message.endswith(
        "torch raises: Size mismatch between saved torch.Size([2, 2]) and "
        "current: torch.Size([2, 3]) for b"
    )
    assert "float32 -> int32" in c.message and c.ranks == (0, 1)
    assert "torch raises: Missing key in checkpoint state_dict: new." in new.message
    assert new.ranks == (0, 1)
    # allow_partial_load: the missing key is skipped, kept at its value
    partial = find_problems(wb.plan_load(md, lay, allow_partial_load=True))
    assert ("new", "missing_key", "silent") in _kinds(partial)


def test_missing_key_names_the_closest_saved_key():
    md = _md(**{"model.w": ((4,), [((0,), (4,))])})
    (p, q) = find_problems(wb.plan_load(md, {"model.W": wb.tensor_layout((4,), 1)}))
    assert p.kind == "missing_key" and "closest saved key is 'model.w'" in p.fix
    assert q.kind == "unexpected_key"


def test_uncovered_per_rank_with_exact_holes():
    # t (8, 4): saved rows [0:2] and [4:6] only; targets: S(0) on 4 ranks -> rows [0:2], [2:4],
    # [4:6], [6:8]: ranks 1 and 3 get nothing; S(1) on 2 ranks -> both miss rows 2:4 and 6:8.
    md = _md(t=((8, 4), [((0, 0), (2, 4)), ((4, 0), (2, 4))]))
    probs = find_problems(wb.plan_load(md, {"t": wb.dtensor_layout((8, 4), (4,), "S(0)")}))
    assert [(p.kind, p.ranks, str(p.region)) for p in probs] == [
        ("uncovered", (1,), "[2:4, 0:4]"),
        ("uncovered", (3,), "[6:8, 0:4]"),
    ]
    assert "the checkpoint covers 16 of 32" in probs[0].message
    probs = find_problems(wb.plan_load(md, {"t": wb.dtensor_layout((8, 4), (2,), "S(1)")}))
    assert [(p.ranks, str(p.region)) for p in probs] == [
        ((0,), "[2:4, 0:2]"),
        ((0,), "[6:8, 0:2]"),
        ((1,), "[2:4, 2:4]"),
        ((1,), "[6:8, 2:4]"),
    ]
    assert all(p.severity == "silent" for p in probs)


def test_overlap_and_hole_with_equal_volumes_found_geometrically():
    # dcp-semantics 8: rows [0:4] and [2:6] of (8, 3): 12 + 12 = 24 elements = the tensor's 24,
    # yet rows [2:4] are saved twice and rows [6:8] not at all.
    md = _md(t=((8, 3), [((0, 0), (4, 3)), ((2, 0), (4, 3))]))
    probs = find_problems(wb.plan_load(md, {"t": wb.tensor_layout((8, 3), 2)}))
    assert [(p.kind, p.ranks, str(p.region), p.severity) for p in probs] == [
        ("uncovered", (0, 1), "[6:8, 0:3]", "silent"),
        ("overlap", (0, 1), "[2:4, 0:3]", "silent"),
    ]
    assert "saved chunks #0 [0:4, 0:3], #1 [2:6, 0:3] overlap on [2:4, 0:3]" in probs[1].message
    # a target that never reads rows 2:4 is only warned
    probs = find_problems(wb.plan_load(md, {"t": wb.sharded_layout((8, 3), [[((0, 0), (2, 3))]])}))
    assert [(p.kind, p.severity) for p in probs] == [("overlap", "warning")]


def test_zero_size_chunks_are_neither_holes_nor_overlaps():
    # saved [0:10] + a zero-size [5:5] (torch's predicate calls it overlapping; it holds no data)
    md = _md(t=((10,), [((0,), (10,)), ((5,), (0,))]))
    assert find_problems(wb.plan_load(md, {"t": wb.tensor_layout((10,), 1)})) == []
    md = _md(t=((10,), []))
    (p,) = find_problems(wb.plan_load(md, {"t": wb.tensor_layout((10,), 1)}))
    assert (p.kind, str(p.region)) == ("uncovered", "[0:10]")


def test_strided_destination_says_which_rows_land_wrong():
    # dcp-semantics 3: arange(8) loaded into SS(0,2) on 2 ranks: rank 0 holds 0,1,4,5 but its box
    # [0:4] reads 0..3; rank 1 holds 2,3,6,7 but reads 2..5.
    save = wb.plan_save({"w": wb.tensor_layout((8,), 2)})
    probs = find_problems(
        wb.plan_load(save.metadata, {"w": wb.dtensor_layout((8,), (2,), "SS(0,2)")})
    )
    assert [(p.kind, p.ranks, str(p.region), p.severity) for p in probs] == [
        ("strided_misdescribed", (0,), "[0:4]", "silent"),
        ("strided_misdescribed", (1,), "[2:6]", "silent"),
    ]
    assert (
        "holds indices [0, 1, 4, 5] but its box [0:4] names [0, 1, 2, 3], so local positions "
        "[2, 3] get indices [2, 3] instead of [4, 5]"
    ) in probs[0].message
    assert "get indices [4, 5] instead of [6, 7]" in probs[1].message


def test_strided_fsdp2_tp_uneven_rank():
    # (13,) on mesh (3, 2) with [SS(0,2), S(0)]: rank 4 = coordinate (2, 0) holds 6, 11; box [6:8]
    lay = wb.dtensor_layout((13,), (3, 2), "SS(0,2), S(0)")
    save = wb.plan_save({"w": wb.tensor_layout((13,), 6)})
    (p,) = find_problems(wb.plan_load(save.metadata, {"w": lay}))
    assert p.ranks == (4,) and str(p.region) == "[6:8]"
    assert "coordinate (2, 0)" in p.message and "get indices [7] instead of [11]" in p.message


def test_save_side_strided_partial_dedup():
    sv = wb.plan_save(
        {
            "w": wb.dtensor_layout((8,), (2,), "SS(0,2)"),
            "p": wb.tensor_layout((3,), 2, per_rank_values=True),
            "b": wb.bytes_layout(2, per_rank_values=True),
            "q": wb.dtensor_layout((4,), (2,), "P"),
            "ok": wb.dtensor_layout((8,), (2,), "S(0)"),
        }
    )
    probs = find_save_problems(sv)
    assert _kinds(probs) == [
        ("w", "strided_misdescribed", "error"),
        ("w", "strided_misdescribed", "error"),
        ("p", "dedup_loss", "silent"),
        ("b", "dedup_loss", "silent"),
        ("q", "partial", "error"),
    ]
    assert sv.errors[0] in probs[0].message  # torch's validation text, quoted
    kept = sv.writers["p"][0]
    assert probs[2].ranks == (1 - kept,) and f"writes only rank {kept}'s copy" in probs[2].message
    assert (
        "Any checkpointing related operations are not supported for DTensor with partial "
        "placements!"
        in probs[4].message
        and probs[4].ranks == (0, 1)
    )


def test_save_side_holes_and_overlaps_of_explicit_chunks():
    # ShardedTensor-style chunks: rank 0 rows [0:4], rank 1 rows [2:6] of 8 -> validation reports
    # the overlap (and no fill error: 24 = 24); rows [6:8] are a silent hole.
    sv = wb.plan_save({"t": wb.sharded_layout((8, 3), [[((0, 0), (4, 3))], [((2, 0), (4, 3))]])})
    probs = find_save_problems(sv)
    assert [(p.kind, str(p.region), p.severity) for p in probs] == [
        ("uncovered", "[6:8, 0:3]", "silent"),
        ("overlap", "[2:4, 0:3]", "error"),
    ]
    # rank 1 missing rows [4:8] -> invalid fill (an error with more than one rank)
    sv = wb.plan_save({"t": wb.sharded_layout((8, 3), [[((0, 0), (4, 3))], []])})
    (p,) = find_save_problems(sv)
    assert (p.kind, str(p.region), p.severity) == ("uncovered", "[4:8, 0:3]", "error")
    assert "invalid fill tensor-volume: 24 chunks-volume: 12" in p.message


def test_per_rank_bytes_both_directions():
    four = {f"dataloader.dp_rank_{r}": wb.bytes_layout(4, ranks=[r]) for r in range(4)}
    two = {f"dataloader.dp_rank_{r}": wb.bytes_layout(2, ranks=[r]) for r in range(2)}
    # 4 -> 2: ranks 2, 3's state is dropped without a word
    probs = find_problems(wb.plan_load(wb.plan_save(four).metadata, two))
    assert [(p.fqn, p.kind, p.severity) for p in probs] == [
        ("dataloader.dp_rank_2", "per_rank_bytes", "silent"),
        ("dataloader.dp_rank_3", "per_rank_bytes", "silent"),
    ]
    assert "from 4 ranks but the target requests only 2" in probs[0].message
    # 2 -> 4: torch raises Missing key on the new ranks
    res = wb.plan_load(wb.plan_save(two).metadata, four)
    probs = find_problems(res)
    assert [(p.fqn, p.severity, p.ranks) for p in probs] == [
        ("dataloader.dp_rank_2", "error", (2,)),
        ("dataloader.dp_rank_3", "error", (3,)),
    ]
    assert "Missing key in checkpoint state_dict: dataloader.dp_rank_2." in probs[0].message
    # rank-numbered tensors of a model are not per-rank families
    md = _md(**{"layers.0": ((2,), [((0,), (2,))]), "layers.1": ((2,), [((0,), (2,))])})
    probs = find_problems(wb.plan_load(md, {"layers.0": wb.tensor_layout((2,), 1)}))
    assert _kinds(probs) == [("layers.1", "unexpected_key", "warning")]


def test_partial_target_and_non_tensor_target():
    save = wb.plan_save({"w": wb.dtensor_layout((4,), (2,), "S(0)"), "s": wb.bytes_layout(2)})
    probs = find_problems(
        wb.plan_load(
            save.metadata, {"w": wb.dtensor_layout((4,), (2,), "P"), "s": wb.tensor_layout((1,), 2)}
        )
    )
    assert _kinds(probs) == [("w", "partial", "error"), ("s", "shape_mismatch", "silent")]
    assert (
        "Invalid checkpoint metadata for w, expected BytesStorageMetadata but found <class "
        "'torch.distributed.checkpoint.metadata.TensorStorageMetadata'>"
    ) in probs[0].message
    probs = find_problems(wb.plan_load(save.metadata, {"w": wb.bytes_layout(2)}))
    assert _kinds(probs)[0] == ("w", "shape_mismatch", "error")
    assert "expected BytesStorageMetadata" in probs[0].message


def test_order_is_fqn_then_kind():
    md = _md(z=((4,), [((0,), (2,))], "int32"), a=((4,), [((0,), (4,))]))
    lay = {"z": wb.tensor_layout((4,), 1), "a": wb.tensor_layout((4,), 1, "float16")}
    assert _kinds(find_problems(wb.plan_load(md, lay))) == [
        ("z", "dtype_mismatch", "silent"),
        ("z", "uncovered", "silent"),
        ("a", "dtype_mismatch", "silent"),
    ]


def test_reference_model_at_1024_ranks_takes_the_cheap_path(monkeypatch):
    sd = model_state_dict("llama", "70b")
    save = wb.plan_save(apply_recipe(sd, "fsdp", 1024))
    target = {
        k: wb.dtensor_layout(s, (32, 32), "S(0), S(1)" if len(s) == 2 else "S(0), R", d)
        for k, (s, d) in sd.items()
    }
    res = wb.plan_load(save.metadata, target)

    def no_exact(*a, **k):
        raise AssertionError("exact holes computed for a tensor whose chunks tile it")

    monkeypatch.setattr(diagnosis, "uncovered", no_exact)
    # its time is measured by benchmarks/bench_plans.py (find_problems, 1024 -> 1024 ranks)
    assert find_problems(res) == []


def test_cheap_path_agrees_with_painting():
    # grid-aligned chunks that tile, tile with a duplicate cell, or leave a cell out
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows = sorted(set(rng.integers(1, 6, size=2).tolist()) | {0, 6})
        cols = sorted(set(rng.integers(1, 5, size=1).tolist()) | {0, 5})
        cells = [
            ((r0, c0), (r1 - r0, c1 - c0))
            for r0, r1 in zip(rows, rows[1:])
            for c0, c1 in zip(cols, cols[1:])
        ]
        if rng.random() < 0.3:
            cells.pop(int(rng.integers(len(cells))))
        if rng.random() < 0.3:
            cells.append(cells[int(rng.integers(len(cells)))])
        paint = np.zeros((6, 5), int)
        for (o0, o1), (s0, s1) in cells:
            paint[o0 : o0 + s0, o1 : o1 + s1] += 1
        cov = wb.geometry.coverage((6, 5), [wb.Chunk(o, s) for o, s in cells])
        assert cov.tiles == bool((paint == 1).all())
        assert sum(h.volume for h in cov.holes) == int((paint == 0).sum())


def test_copies_of_one_box_make_one_overlap_clipped_to_the_tensor():
    # three copies of [0:4] and an edited chunk [2:6] reaching past the (4,) tensor
    md = _md(t=((4,), [((0,), (4,))] * 3 + [((2,), (4,))]))
    probs = find_problems(wb.plan_load(md, {"t": wb.tensor_layout((4,), 2)}))
    assert [(p.kind, str(p.region), p.ranks) for p in probs] == [
        ("overlap", "[0:4]", (0, 1)),
        ("overlap", "[2:4]", (0, 1)),
    ]
    assert "saved chunks #0 [0:4], #1 [0:4], #2 [0:4] overlap on [0:4]" in probs[0].message
    assert "#3 [2:6] overlap on [2:4]" in probs[1].message


def test_entry_held_by_no_rank_is_not_requested():
    md = _md(s=None)
    lay = {"s": wb.bytes_layout(2, ranks=[]), "t": wb.tensor_layout((2,), 2, ranks=[])}
    res = wb.plan_load(md, lay)
    assert res.failures == []  # torch: nobody's state dict has t, nobody raises
    assert _kinds(find_problems(res)) == [("s", "unexpected_key", "warning")]


def test_save_side_out_of_bounds_chunk():
    # rank 0 saves [0:2], rank 1 claims [2:6] of a (4,) tensor: torch's bounds message, and a
    # fill error (2 + 4 != 4) although the part inside the tensor tiles it
    sv = wb.plan_save({"t": wb.sharded_layout((4,), [[((0,), (2,))], [((2,), (4,))]])})
    assert len(sv.errors) == 2
    p, q = find_save_problems(sv)
    assert (q.kind, q.region, q.severity) == ("uncovered", None, "error")
    assert "key:t invalid fill tensor-volume: 4 chunks-volume: 6" in q.message
    assert (p.kind, p.severity, p.ranks) == ("shape_mismatch", "error", (1,))
    assert "saved chunks [[2:6]] reach past the tensor's size [4]" in p.message
    assert (
        "key:t has out of bounds chunk: tensor-size:torch.Size([4]) chunk: "
        "ChunkStorageMetadata(offsets=torch.Size([2]), sizes=torch.Size([4]))"
    ) in p.message


def test_save_side_zero_size_chunk_inside_another_fails_validation():
    # torch's predicate: [5:5] strictly inside [0:10] "overlaps"; no data overlaps
    sv = wb.plan_save({"t": wb.sharded_layout((10,), [[((0,), (10,))], [((5,), (0,))]])})
    assert len(sv.errors) == 1 and "has overlapping chunks" in sv.errors[0]
    (p,) = find_save_problems(sv)
    assert (p.kind, p.region, p.severity) == ("overlap", None, "error")
    assert sv.errors[0] in p.message and "zero-size chunk strictly inside" in p.message


def test_checkpoint_problems_are_found_geometrically_without_a_target():
    # dcp-semantics 8: rows [0:4] and [2:6] of 8 (width 3) add up to 24 = 24 elements, yet rows
    # [2:4] are saved twice and rows [6:8] not at all
    md = _md(
        w=((8, 3), [((0, 0), (4, 3)), ((2, 0), (4, 3))]),
        ok=((4,), [((0,), (2,)), ((2,), (2,))]),
        empty_inside=((4,), [((0,), (4,)), ((2,), (0,))]),  # a zero-size chunk holds nothing
        b=None,
    )
    probs = wb.find_checkpoint_problems(md)
    assert [(p.fqn, p.kind, str(p.region), p.ranks, p.severity) for p in probs] == [
        ("w", "uncovered", "[6:8, 0:3]", (), "silent"),
        ("w", "overlap", "[2:4, 0:3]", (), "silent"),
    ]
    assert "#0 [0:4, 0:3], #1 [2:6, 0:3] overlap on [2:4, 0:3]" in probs[1].message
    assert wb.find_checkpoint_problems(_md(ok=((4,), [((0,), (4,))]))) == []
    with pytest.raises(wb.MetadataError):
        wb.find_checkpoint_problems({"w": 1})


def test_validation_quotes_are_torchs_text_or_marked_as_elided():
    from workbench.diagnosis import find_save_problems

    # one key with a hole: the quote is exactly what DefaultSavePlanner raises
    one = wb.plan_save({"a": wb.sharded_layout((8,), [[((0,), (4,))], []])})
    (p,) = find_save_problems(one)
    assert p.message.endswith(
        "torch raises: Failed to validate global plan: " + "; ".join(one.errors)
    )
    # two keys with errors: torch's text joins both, so each problem marks its quote as a part
    two = wb.plan_save(
        {
            "a": wb.sharded_layout((8,), [[((0,), (4,))], []]),
            "b": wb.sharded_layout((6,), [[((0,), (2,))], []]),
        }
    )
    assert len(two.errors) == 2
    for p, err in zip(find_save_problems(two), two.errors):
        assert p.message.endswith("Failed to validate global plan: ... with, for this key: " + err)
