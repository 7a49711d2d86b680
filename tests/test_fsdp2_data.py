"""FSDP2 + TP's real data layout (dcp-semantics 3, last bullet): ``fully_shard`` torch.chunks the
TP-local rows over dp (``_fsdp_param._init_sharded_param``, right to left), while DCP plans from
the placements ``[_StridedShard(0, tp), Shard(0)]`` (left to right). Checked against real
``fully_shard`` modules under the fake process group and against torch's own functions."""

import math

import pytest

import workbench as wb
from workbench.diagnosis import find_problems, find_save_problems
from workbench.models import apply_recipe, model_state_dict
from workbench.sharding import fsdp2_tp_layout, tensor_layout


def test_13_rows_dp3_tp2_worked_example():
    # TP chunks 13 rows into [0:7] | [7:13]; FSDP2 chunks each TP-local part over dp=3:
    #   [0:7] -> [0:3] [3:6] [6:7],  [7:13] -> [7:9] [9:11] [11:13]
    # DCP's boxes ([SS(0,2), S(0)], left to right): (2,0) -> [6:8], (2,1) -> [12:13].
    lay = fsdp2_tp_layout((13, 4), (3, 2))
    assert [str(p) for p in lay.placements] == ["SS(0,2)", "S(0)"]
    assert [lay.held_indices(r)[0] for r in range(6)] == [
        [0, 1, 2],
        [7, 8],
        [3, 4, 5],
        [9, 10],
        [6],
        [11, 12],
    ]
    assert [str(lay.chunks(r)[0]) for r in range(6)] == [
        "[0:3, 0:4]",
        "[7:9, 0:4]",
        "[3:6, 0:4]",
        "[9:11, 0:4]",
        "[6:8, 0:4]",
        "[12:13, 0:4]",
    ]
    assert lay.misdescribed_ranks == (4, 5)
    # planning is unchanged: DCP plans from the placements, not the data
    plain = wb.dtensor_layout((13, 4), (3, 2), "SS(0,2), S(0)")
    assert lay.rank_chunks == plain.rank_chunks and plain.misdescribed_ranks == (4,)
    assert wb.plan_save({"w": lay}).plans == wb.plan_save({"w": plain}).plans
    md = wb.plan_save({"w": wb.tensor_layout((13, 4), 6)}).metadata
    assert wb.plan_load(md, {"w": lay}).plans == wb.plan_load(md, {"w": plain}).plans


def test_even_sizes_and_hsdp():
    # 12 rows on (3, 2): TP [0:6] | [6:12], FSDP2 pieces of 2: every box is the data
    even = fsdp2_tp_layout((12,), (3, 2))
    assert even.misdescribed_ranks == () and even.held_indices(4) == {0: [4, 5]}
    # HSDP + TP: a leading Replicate(), the same rows on both replicas (ranks 4, 5 and 10, 11)
    h = fsdp2_tp_layout((13,), (2, 3, 2))
    assert [str(p) for p in h.placements] == ["R", "SS(0,2)", "S(0)"]
    assert h.misdescribed_ranks == (4, 5, 10, 11) and h.held_indices(10) == {0: [6]}
    # tp = 1: FSDP2 keeps Shard(0) for the dp dim (split_factor 1), and the data is the box
    one = fsdp2_tp_layout((13,), (3, 1))
    assert [str(p) for p in one.placements] == ["S(0)", "S(0)"] and one.misdescribed_ranks == ()
    with pytest.raises(wb.LayoutError, match=r"w: mesh shape \(6,\) has 1 dims"):
        fsdp2_tp_layout((13,), (6,), fqn="w")


def _fsdp2_rows(rank, rows, mesh_shape):
    """The rows a real ``fully_shard`` (after TP's Shard(0)) leaves on ``rank``: weight row i
    holds the value i; ``src_data_rank=None`` splits locally, so the fake group moves nothing."""
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.testing._internal.distributed.fake_pg import FakeStore

    names = ("rep", "dp", "tp")[-len(mesh_shape) :]
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=math.prod(mesh_shape))
    try:
        mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=names)
        m = nn.Linear(2, rows, bias=False)
        full = torch.arange(rows, dtype=torch.float32)[:, None].expand(rows, 2).contiguous()
        m.weight = nn.Parameter(distribute_tensor(full, mesh["tp"], [Shard(0)], src_data_rank=None))
        fully_shard(m, mesh=mesh[names[:-1]] if len(names) == 3 else mesh["dp"])
        w = m.weight
        return [int(v) for v in w.to_local()[:, 0]], [repr(p) for p in w.placements]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "rows,mesh_shape", [(13, (3, 2)), (7, (3, 2)), (11, (3, 3)), (13, (2, 3, 2))]
)
def test_rows_match_a_real_fully_shard_module(rows, mesh_shape):
    lay = fsdp2_tp_layout((rows, 2), mesh_shape)
    for r in range(math.prod(mesh_shape)):
        got, placements = _fsdp2_rows(r, rows, mesh_shape)
        assert lay.held_indices(r) == {0: got}, r
        assert [str(p) for p in lay.placements] == [str(wb.parse_placement(p)) for p in placements]


def test_brute_force_against_torch_chunk_and_torch_boxes():
    """dp, tp in 1..8, rows < 40: FSDP2's rows rebuilt as _init_sharded_param does
    (``_chunk_with_empty(param._local_tensor, shard_world_size)`` of TP's torch.chunk) against
    torch's ``_compute_local_shape_and_global_offset`` box, rank by rank."""
    import torch
    from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
    from torch.distributed.tensor.placement_types import Shard, _StridedShard

    fsdp2, strided = set(), set()
    for dp in range(1, 9):
        for tp in range(1, 9):
            pl = [_StridedShard(0, split_factor=tp) if tp > 1 else Shard(0), Shard(0)]
            for rows in range(40):
                g = torch.arange(rows)
                # rank (i, j) holds piece i of torch.chunk over dp of TP-local piece j
                held = [
                    [p.tolist() for p in list(torch.chunk(t, dp)) + [g[:0]] * dp]
                    for t in list(torch.chunk(g, tp)) + [g[:0]] * tp
                ]
                bad = []
                for r in range(dp * tp):
                    i, j = divmod(r, tp)
                    size, off = _compute_local_shape_and_global_offset(
                        (rows,), (dp, tp), [i, j], pl
                    )
                    if held[j][i] != list(range(off[0], off[0] + size[0])):
                        bad.append(r)
                assert fsdp2_tp_layout((rows,), (dp, tp)).misdescribed_ranks == tuple(bad)
                if bad:
                    fsdp2.add((dp, tp, rows))
                if wb.dtensor_layout(
                    (rows,), (dp, tp), [wb.parse_placement(repr(p)) for p in pl]
                ).misdescribed_ranks:
                    strided.add((dp, tp, rows))
    # dcp-semantics 3: 20 combinations where [SS(0,tp), S(0)] itself is non-contiguous; FSDP2's
    # real rows differ from DCP's boxes in 105, those 20 included; the smallest is 7 rows on (3, 2)
    assert len(strided) == 20 and strided < fsdp2 and len(fsdp2) == 105
    assert min(fsdp2, key=lambda c: c[2]) == (3, 2, 7)


def test_recipe_gives_fsdp2_rows_to_tp_dim0_params():
    sd = model_state_dict("llama", "tiny", vocab=13, optimizer=True)
    lay = apply_recipe(sd, "fsdp2+tp", (3, 2))
    mis = {k: v.misdescribed_ranks for k, v in lay.items() if v.misdescribed_ranks}
    # embed_tokens (rowwise embedding: Shard(0)) and lm_head (colwise: Shard(0)) have 13 rows,
    # the parameters and their AdamW moments; every other dim-0 TP size of the tiny llama is even
    assert mis == {
        f"{pre}{name}{suf}": (4, 5)
        for name in ("embed_tokens.weight", "lm_head.weight")
        for pre, suf in (
            ("model.", ""),
            ("optim.state.", ".exp_avg"),
            ("optim.state.", ".exp_avg_sq"),
        )
    }
    assert lay["model.lm_head.weight"].held_indices(5) == {0: [11, 12]}
    q = lay["model.layers.0.self_attn.q_proj.weight"]  # colwise, 16 rows: FSDP2's rows are the box
    assert q.data_held is not None and q.held_indices(1) == {0: [8, 9, 10]}
    assert str(q.chunks(1)[0]) == "[8:11, 0:16]"
    o = lay["model.layers.0.self_attn.o_proj.weight"]  # rowwise Shard(1): placements describe it
    assert o.data_held is None
    h = apply_recipe(sd, "hsdp+tp", (2, 3, 2))
    assert h["model.embed_tokens.weight"].misdescribed_ranks == (4, 5, 10, 11)


def test_diagnosis_says_fsdp2_rows_against_dcp_box():
    lay = apply_recipe(
        model_state_dict("llama", "tiny", vocab=13, dtype="float32"), "fsdp2+tp", (3, 2)
    )
    # load from an FSDP (dp=6) save: embed_tokens' chunks are [0:3] [3:6] [6:9] [9:12] [12:13];
    # rank 4 holds 1 row but its box [6:8] reads 2 from chunk [6:9] (the reader's size assert);
    # rank 5 holds 2 rows and its box [12:13] reads 1 into position 0 (row 12 where 11 belongs)
    md = wb.plan_save(
        apply_recipe(model_state_dict("llama", "tiny", vocab=13, dtype="float32"), "fsdp", 6)
    ).metadata
    probs = [p for p in find_problems(wb.plan_load(md, lay)) if p.fqn == "embed_tokens.weight"]
    assert [(p.kind, p.ranks, str(p.region), p.severity) for p in probs] == [
        ("strided_misdescribed", (4,), "[6:8, 0:16]", "error"),
        ("strided_misdescribed", (5,), "[12:13, 0:16]", "silent"),
    ]
    assert (
        "FSDP2 really holds rows (torch.chunk of its TP-local rows over dp) [6] (1) but DCP's "
        "box [6:8, 0:16] names [6, 7] (2)"
    ) in probs[0].message
    assert "'mismatch sizes'" in probs[0].message
    assert "[11, 12] (2) but DCP's box [12:13, 0:16] names [12] (1)" in probs[1].message
    # save side: 13 rows on (3, 2) fail validation (dcp-semantics 3); 7 rows tile, so the
    # checkpoint would silently record 1-row boxes over 0- and 1-row data
    save = find_save_problems(wb.plan_save(lay))
    assert [(p.fqn, p.ranks, p.severity) for p in save if p.kind == "strided_misdescribed"] == [
        (f, (r,), "error") for f in ("embed_tokens.weight", "lm_head.weight") for r in (4, 5)
    ]
    (p, q) = find_save_problems(wb.plan_save({"w": fsdp2_tp_layout((7,), (3, 2))}))
    # (7,) on (3, 2): TP [0:4] | [4:7]; FSDP2 (2,0) holds [], box [6:7]; (2,1) holds [6], box [7:7]
    assert (p.ranks, p.severity, q.ranks, q.severity) == ((4,), "silent", (5,), "silent")
    assert "[] (0) but DCP's box [6:7] names [6] (1)" in p.message
    assert "record boxes that are not the saved data" in p.message


@pytest.mark.real
def test_real_load_into_fsdp2_rows_raises_where_the_diagnosis_says(tmp_path):
    # (13, 4) saved whole by 6 gloo ranks (one writer, chunk [0:13, 0:4]); loaded into FSDP2+TP on
    # (3, 2): rank 4 really holds row [6] (1 row) but DCP's box is [6:8] (2 rows), so the reader
    # narrows the saved chunk to 2 rows and asserts against the 1-row local tensor
    from workbench.explanations import explain
    from workbench.torch_bridge import runs

    ck, target = str(tmp_path / "ck"), {"w": fsdp2_tp_layout((13, 4), (3, 2))}
    save, load = runs.run_steps(  # one launch: the save, then the load
        [runs.SaveStep(ck, {"w": tensor_layout((13, 4), 6)}), runs.LoadStep(ck, target)], 6
    )
    assert save.ok, save.errors
    problems = wb.plan_load(wb.load_metadata(ck), target).problems
    assert [(p.kind, p.severity, p.ranks) for p in problems] == [
        ("strided_misdescribed", "error", (4,)),
        ("strided_misdescribed", "silent", (5,)),
    ]
    assert not load.ok
    text = (
        "req MetadataIndex(fqn='w', offset=torch.Size([0, 0]), index=0) mismatch sizes "
        "torch.Size([1, 4]) vs torch.Size([2, 4])"
    )
    assert all(text in str(e) for e in load.errors.values() if e), load.errors
    assert explain(text).pattern == "read_size_mismatch"
