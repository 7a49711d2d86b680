"""Widgets without a browser and without a kernel: set a control's ``.value`` (the same code path a
browser change takes), then assert on ``.result``, on the tables, on the picture's data and on
the message panel. Expected read items are worked out by hand below (intervals in comments) from
torch.chunk's split rule, not taken from the code under test."""

from __future__ import annotations

import html
import math
import subprocess
import sys

import pytest

import workbench as wb
from workbench import LayoutError, PlacementError, WorkbenchError
from workbench.colors import HIGHLIGHT_COLOR
from workbench.geometry import Chunk
from workbench.targets import parse_ints
from workbench.widgets import (
    CLASSIC_RESHARDS,
    DEFAULT_CLASSIC,
    CheckpointExplorer,
    ReadOrderStepper,
    ReshardExplorer,
    explore_reshard,
    plan_checkpoint,
    step_read_order,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _regions(reads):
    return list(zip(reads["dest_region"], reads["storage_region"], reads["source_chunk"]))


def _html(out):
    """The HTML (or plain text) an Output widget shows."""
    (rec,) = out.outputs
    return rec["data"].get("text/html", rec["data"]["text/plain"])


def _canvas_reads(canvas):
    """The read-item rows the canvas's table shows, as {column: value} dicts."""
    cols = canvas.meta["read_columns"]
    return [dict(zip(cols, row)) for row in canvas.meta["reads"]]


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "text, expected",
    [("16, 12", (16, 12)), ("16 12", (16, 12)), ("(4, 2)", (4, 2)), (" 8 ", (8,)), ("", ())],
)
def test_parse_ints(text, expected):
    assert parse_ints(text, "shape") == expected


def test_parse_ints_bad_text_is_a_house_form_error():
    with pytest.raises(LayoutError) as e:
        parse_ints("16, x", "shape")
    assert str(e.value) == (
        "<input>: shape '16, x' is not a list of integers (comma-separated "
        "integers like '16, 12'). Write the shape as e.g. '16, 12'."
    )
    with pytest.raises(PlacementError):
        parse_ints("4x2", "load mesh", error=PlacementError)


# ----------------------------------------------------------------------------- ReshardExplorer
def test_default_explorer_shows_a_classic_reshard():
    ex = ReshardExplorer()
    r = ex.result
    assert ex.classic.value == DEFAULT_CLASSIC
    assert (
        r.spec.describe() == "weight (16, 12) float32: mesh (8,) [S(0)] -> mesh (4, 2) [S(0), S(1)]"
    )
    assert r.png.startswith(PNG) and r.figure.axes
    assert list(ex.rank.options) == list(range(8))
    assert ex.message.value == ""
    # the canvas got the scene: 8 saved chunks, rank 0's reads, its table rows
    scene = ex.canvas.scene
    assert len(scene.of_kind("saved")) == 8 and ex.canvas.scene_id >= 1
    assert [r["dest_region"] for r in _canvas_reads(ex.canvas)] == ["[0:2, 0:6]", "[2:4, 0:6]"]
    assert len(ex.canvas.boxes) == 8 * 4 * len(scene)  # float64 x, y, w, h per tile, binary
    assert "no problems found" in _html(ex.problems)
    assert r.problems == ()


def test_fsdp_to_fsdp_tp_read_items_worked_by_hand():
    # 16 rows saved S(0) on 8 ranks: saved chunk #i = rows [2i, 2i+2), all 12 cols.
    # Load mesh (4, 2) [S(0), S(1)]: rank 3 = coordinate (1, 1) wants rows [4:8], cols [6:12],
    # which meets saved #2 [4:6] and #3 [6:8]: two items, dest offsets (0,0) and (2,0),
    # storage offsets (0,6) in both saved chunks.
    ex = ReshardExplorer("FSDP -> FSDP+TP")
    ex.rank.value = 3
    r = ex.result
    assert r.rank == 3
    assert _regions(r.reads) == [
        ("[4:6, 6:12]", "[4:6, 6:12]", 2),
        ("[6:8, 6:12]", "[6:8, 6:12]", 3),
    ]
    assert list(r.reads["dest_offsets"]) == [(0, 0), (2, 0)]
    assert list(r.reads["storage_offsets"]) == [(0, 6), (0, 6)]
    assert list(r.reads["source_file"]) == ["__2_0.distcp", "__3_0.distcp"]
    # the picture lights exactly those two boxes, and draws rank 3's own chunk as the target
    lit = [(t.x, t.y, t.w, t.h) for t in r.picture.of_kind("read")]
    assert lit == [(6, 4, 6, 2), (6, 6, 6, 2)]
    assert [(t.x, t.y, t.w, t.h) for t in r.picture.of_kind("target")] == [(6, 4, 6, 4)]
    assert len(r.picture.of_kind("saved")) == 8


def test_rank_change_redraws_picture_and_table_without_replanning():
    ex = ReshardExplorer("FSDP 8 -> 4")
    first = ex.result
    boxes, reads_before = ex.canvas.boxes, _canvas_reads(ex.canvas)
    ex.rank.value = 2
    second = ex.result
    assert second is not first and second.rank == 2
    # rows 16 on 4 ranks: rank 2 wants [8:12] = saved #4 [8:10] + #5 [10:12]
    assert _regions(second.reads) == [
        ("[8:10, 0:12]", "[8:10, 0:12]", 4),
        ("[10:12, 0:12]", "[10:12, 0:12]", 5),
    ]
    assert ex.canvas.boxes != boxes and _canvas_reads(ex.canvas) != reads_before
    assert [r["dest_region"] for r in _canvas_reads(ex.canvas)] == ["[8:10, 0:12]", "[10:12, 0:12]"]
    assert second.save is first.save and second.load is first.load  # plans are cached per spec


@pytest.mark.parametrize("label", list(CLASSIC_RESHARDS))
def test_every_classic_fills_the_controls_and_draws(label):
    ex = ReshardExplorer(
        "_StridedShard destination" if label == DEFAULT_CLASSIC else DEFAULT_CLASSIC
    )
    ex.rank.value = 1
    ex.classic.value = label  # a change, through the dropdown
    texts = CLASSIC_RESHARDS[label]
    for name, value in texts.items():
        assert getattr(ex, name).value == value
    r = ex.result
    assert r.spec == explore_reshard(**texts).spec
    world = math.prod(parse_ints(texts["load_mesh"], "load mesh"))
    assert list(ex.rank.options) == list(range(world)) and ex.rank.value == 0 == r.rank
    assert ex.message.value == "" and r.png.startswith(PNG)


def test_uneven_rows():
    # 13 rows: saved on 4 ranks as torch.chunk gives [0:4] [4:8] [8:12] [12:13]; loaded on 3 as
    # [0:5] [5:10] [10:13]. Rank 1 wants [5:10]: from #1 rows 5:8 (storage offset 1), from #2
    # rows 8:10 (dest offset 3).
    r = explore_reshard("13, 8", "4", "S(0)", "3", "S(0)", rank=1)
    assert _regions(r.reads) == [("[5:8, 0:8]", "[5:8, 0:8]", 1), ("[8:10, 0:8]", "[8:10, 0:8]", 2)]
    assert list(r.reads["storage_offsets"]) == [(1, 0), (0, 0)]
    assert list(r.reads["dest_offsets"]) == [(0, 0), (3, 0)]


def test_empty_shard_is_saved_at_the_dim_end_and_never_read():
    # 3 rows on 4 ranks: chunks of 1 row for ranks 0..2; rank 3's shard is empty, recorded at
    # offset 3 (the dim size). Loaded on 2 ranks ([0:2], [2:3]): rank 1 reads only #2.
    r = explore_reshard("3, 8", "4", "S(0)", "2", "S(0)", rank=1)
    chunks = r.save.metadata.state_dict_metadata["weight"].chunks
    assert chunks[3] == Chunk((3, 0), (0, 8))
    assert _regions(r.reads) == [("[2:3, 0:8]", "[2:3, 0:8]", 2)]


def test_strided_destination_reports_the_silent_problem():
    ex = ReshardExplorer("_StridedShard destination")
    r = ex.result
    # 8 rows as SS(0,2) on 2 ranks: rank 0 holds rows 0,1,4,5 but DCP's box is [0:4]
    assert {p.kind for p in r.problems} == {"strided_misdescribed"}
    assert {p.severity for p in r.problems} == {"silent"}
    assert list(r.problems_table["kind"]) == ["strided_misdescribed"] * 2
    assert "strided_misdescribed" in _html(ex.problems)
    held = r.picture.of_kind("held")
    assert sorted((t.y, t.h) for t in held) == [(0, 2), (4, 2)]


BAD_INPUTS = [
    ("shape", "16, x", "shape '16, x' is not a list of integers"),
    ("load_placements", "S(5), R", "placement S(5) shards dim 5 of a 2-d tensor"),
    ("load_placements", "S(0", "placement spec 'S(0' is not understood"),
    ("load_placements", "S(0)", "placements [S(0)] have 1 entries for a mesh of shape (4, 2)"),
    ("save_mesh", "0", "mesh shape (0,) has a dim below 1"),
    ("dims", "0, 7", "dims to draw (0, 7) do not fit a 2-d tensor"),
    ("load_mesh", "1000, 1000", "load mesh (1000, 1000) has 1000000 ranks (at most 16384"),
    ("shape", "10**12, 10**12", "shape '10**12, 10**12' is not a list of integers"),
    ("shape", "1000000000000, 1000000000000", "holds 4000000000000000000000000 bytes"),
    ("dtype", "int8", None),  # valid: no message
]


@pytest.mark.parametrize(
    "control, value, expected", BAD_INPUTS, ids=[f"{c}={v}" for c, v, _ in BAD_INPUTS]
)
def test_bad_input_goes_to_the_message_panel_and_keeps_the_last_result(control, value, expected):
    ex = ReshardExplorer("FSDP -> FSDP+TP")
    good, outputs = ex.result, (ex.canvas.scene_id, ex.problems.outputs)
    getattr(ex, control).value = value
    if expected is None:
        assert ex.message.value == "" and ex.result is not good
        return
    assert expected in html.unescape(ex.message.value)
    assert "Traceback" not in ex.message.value
    assert ex.result is good
    assert (ex.canvas.scene_id, ex.problems.outputs) == outputs
    # the panel shows exactly the WorkbenchError the plain function raises
    kw = dict(
        shape=ex.shape.value,
        save_mesh=ex.save_mesh.value,
        save_placements=ex.save_placements.value,
        load_mesh=ex.load_mesh.value,
        load_placements=ex.load_placements.value,
        dims=ex.dims.value,
        rank=ex.rank.value,
    )
    with pytest.raises(WorkbenchError) as e:
        explore_reshard(**kw)
    assert html.escape(str(e.value)) in ex.message.value
    # fixing the input clears the panel
    getattr(ex, control).value = CLASSIC_RESHARDS["FSDP -> FSDP+TP"].get(control, "0, 1")
    assert ex.message.value == "" and ex.result is not good


def test_a_bug_is_reported_in_the_panel_and_raised(monkeypatch):
    ex = ReshardExplorer("FSDP 8 -> 4")
    good = ex.result

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr("workbench.widgets.reshard.explore_reshard", broken)
    with pytest.raises(KeyError):
        ex.rank.value = 1
    assert "internal error, please report: KeyError: &#x27;boom&#x27;" in ex.message.value
    assert ex.result is good


def test_load_mesh_change_refits_the_rank_options():
    ex = ReshardExplorer("FSDP 8 -> 4")  # load mesh (4,) [S(0)]
    ex.rank.value = 3
    ex.load_mesh.value = "2, 2"  # placements still one: the panel says so, the ranks follow
    assert "have 1 entries for a mesh of shape (2, 2)" in html.unescape(ex.message.value)
    assert list(ex.rank.options) == [0, 1, 2, 3] and ex.rank.value == 3
    ex.load_placements.value = "S(0), R"
    assert ex.message.value == ""
    assert ex.result.spec.load_mesh == (2, 2) and ex.result.rank == 3
    ex.load_mesh.value = "2, 1"  # rank 3 left the world: back to rank 0
    assert list(ex.rank.options) == [0, 1] and ex.rank.value == 0 and ex.result.rank == 0


def test_bad_constructor_arguments_raise_house_form_errors(llama_save):
    with pytest.raises(LayoutError, match="classic reshard 'nope' is not known"):
        ReshardExplorer("nope")
    with pytest.raises(WorkbenchError, match=r"load rank 8 is not in the load world of 8 ranks"):
        ReshardExplorer("FSDP -> FSDP+TP", rank=8)
    with pytest.raises(WorkbenchError, match=r"load rank 4 is not in the load world of 4 ranks"):
        CheckpointExplorer(llama_save, rank=4)
    with pytest.raises(WorkbenchError, match=r"load rank 9 is not in the load world of 4 ranks"):
        ReadOrderStepper("FSDP 8 -> 4", rank=9)


# ----------------------------------------------------------------------------- CheckpointExplorer
@pytest.fixture(scope="module")
def llama_save():
    from workbench.models import apply_recipe, model_state_dict
    from workbench.planning import plan_save

    return plan_save(apply_recipe(model_state_dict("llama"), "fsdp", 4))


@pytest.fixture(scope="module")
def padded_target():
    """llama-tiny with the vocabulary padded 40 -> 48 (nanoGPT style) on FSDP2 + TP (2, 2)."""
    from workbench.models import apply_recipe, model_state_dict

    return apply_recipe(model_state_dict("llama", vocab=48), "fsdp2+tp", (2, 2))


def test_checkpoint_explorer_lists_filters_and_shows_problems(llama_save, padded_target):
    ex = CheckpointExplorer(llama_save, padded_target)
    r = ex.result
    keys = list(llama_save.metadata.state_dict_metadata)
    assert r.fqns == tuple(keys) and r.fqn == keys[0] == "embed_tokens.weight"
    assert [v for _, v in ex.tensor.options] == keys
    labels = dict((v, k) for k, v in ex.tensor.options)
    assert labels["embed_tokens.weight"] == "embed_tokens.weight  (1 problem)"
    assert labels["norm.weight"] == "norm.weight"
    # embed (40, 16) saved, (48, 16) wanted: torch raises the size mismatch, no read items
    assert list(r.problems_table["kind"]) == ["shape_mismatch"]
    assert r.reads is not None and len(r.reads) == 0
    ex.only_problems.value = True
    assert ex.result.fqns == ("embed_tokens.weight", "lm_head.weight")
    ex.filter.value = "LM_"
    assert ex.result.fqns == ("lm_head.weight",) and ex.result.fqn == "lm_head.weight"
    ex.filter.value = "no such key"
    assert ex.result.fqns == () and ex.result.fqn is None and ex.tensor.options == ()
    assert ex.message.value == ""
    assert "<table" in _html(ex.io) and ex.plan.io.shape[0] == 4


def test_checkpoint_explorer_tensor_and_rank(llama_save, padded_target):
    ex = CheckpointExplorer(llama_save, padded_target)
    ex.tensor.value = "layers.0.mlp.down_proj.weight"
    r = ex.result
    assert r.fqn == "layers.0.mlp.down_proj.weight" and len(r.chunks) == 4
    before = r.png
    ex.rank.value = 3
    r = ex.result
    assert r.rank == 3 and set(r.reads["dest_region"]) and r.png != before
    items = [it for it in r.plan.load.plans[3].items if it.dest_index.fqn == r.fqn]
    assert list(r.reads["dest_region"]) == [str(it.dest_chunk) for it in items]
    ex.filter.value = "["
    assert "is not a valid pattern" in html.unescape(ex.message.value)
    assert ex.result is r


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_checkpoint_explorer_reads_a_real_checkpoint_directory(tmp_path):
    # a real dcp.save (one process, no process group) of two tensors
    import torch
    import torch.distributed.checkpoint as dcp

    dcp.save(
        {"w": torch.arange(24.0).reshape(6, 4), "b": torch.zeros(4)}, checkpoint_id=str(tmp_path)
    )
    from workbench import dtensor_layout, tensor_layout

    target = {"w": dtensor_layout((6, 4), (2,), "S(0)"), "b": tensor_layout((4,), 2)}
    ex = CheckpointExplorer(str(tmp_path), target)
    r = ex.result
    assert set(r.fqns) == {"w", "b"} and r.plan.problems == ()
    ex.tensor.value = "w"
    ex.rank.value = 1
    # rank 1 wants rows [3:6] of the one saved chunk [0:6]
    assert _regions(ex.result.reads) == [("[3:6, 0:4]", "[3:6, 0:4]", 0)]
    assert list(ex.result.reads["source_file"]) == ["__0_0.distcp"]
    # without a target: the checkpoint is listed and drawn, nothing is planned
    bare = CheckpointExplorer(str(tmp_path))
    assert bare.plan.load is None and bare.result.reads is None and bare.result.png.startswith(PNG)
    assert "no target: nothing is loaded" in _html(bare.io)


@pytest.mark.real
def test_checkpoint_explorer_on_a_real_checkpoint_with_a_hole(tmp_path):
    # two gloo ranks save w (8, 6) as S(0); the metadata is then edited to drop w's chunk
    # [4:8, 0:6] (runs.make_checkpoint("hole")): rank 1's chunk is not covered at all
    from workbench.torch_bridge.runs import make_checkpoint

    sc = make_checkpoint("hole", tmp_path / "hole")
    ex = CheckpointExplorer(sc.path, sc.load_layouts, only_problems=True)
    assert ex.result.fqns == ("w",)
    (p,) = ex.plan.problems
    assert (p.kind, p.severity, p.ranks, p.region) == (
        "uncovered",
        "silent",
        (1,),
        Chunk((4, 0), (4, 6)),
    )
    ex.rank.value = 1
    r = ex.result
    assert len(r.reads) == 0 and len(r.chunks) == 1
    (hole,) = r.picture.of_kind("uncovered")
    assert (hole.x, hole.y, hole.w, hole.h) == (0, 4, 6, 4)
    assert "uncovered" in _html(ex.problems)
    # without a target the explorer still lists the checkpoint's own hole
    bare = CheckpointExplorer(sc.path, only_problems=True)
    (p,) = bare.plan.problems
    assert (bare.result.fqns, p.kind, p.ranks, p.region) == (
        ("w",),
        "uncovered",
        (),
        Chunk((4, 0), (4, 6)),
    )


def test_plan_checkpoint_targets(llama_save):
    from workbench.models import apply_recipe, model_state_dict

    by_name = plan_checkpoint(llama_save, ("llama", "fsdp2+tp", (2, 2)))
    layouts = apply_recipe(model_state_dict("llama"), "fsdp2+tp", (2, 2))
    assert list(by_name.layouts) == list(layouts)
    assert all(by_name.layouts[k].rank_chunks == v.rank_chunks for k, v in layouts.items())
    assert by_name.problems == () and by_name.load.world_size == 4
    with pytest.raises(WorkbenchError, match="source is a int"):
        plan_checkpoint(3)
    with pytest.raises(WorkbenchError, match=r"target is a list"):
        plan_checkpoint(llama_save, ["llama"])
    # the CLI's spec strings work too, parsed by workbench.targets
    by_spec = plan_checkpoint(llama_save, "llama-tiny:fsdp2+tp:dp=2,tp=2")
    assert by_spec.load.world_size == 4 and list(by_spec.layouts) == list(layouts)


# ----------------------------------------------------------------------------- ReadOrderStepper
def test_stepper_walks_dcp_order_and_lights_one_item():
    st = ReadOrderStepper("FSDP -> FSDP+TP", rank=3)
    load = st.load
    items = [it for it in load.plans[3].items if it.dest_index.fqn == "weight"]
    assert st.step.max == len(items) - 1 == 1
    seen = []
    for _ in range(3):  # the third click stays on the last item
        r = st.result
        seen.append((r.step, r.item))
        lit = [t for t in r.picture.of_kind("read") if t.face == HIGHLIGHT_COLOR]
        c = r.item.dest_chunk
        assert [(t.x, t.y, t.w, t.h) for t in lit] == [
            (c.offsets[1], c.offsets[0], c.sizes[1], c.sizes[0])
        ]
        assert r.caption.startswith(f"item {r.step + 1} of 2: rank 3 copies {c}")
        st.next.click()
    assert seen == [(0, items[0]), (1, items[1]), (1, items[1])]
    st.prev.click()
    assert st.result.step == 0 and st.step.value == 0
    st.step.value = 1
    assert st.result.item == items[1]
    # the canvas lights that read: its number is the item's place in the rank's LoadPlan
    assert st.canvas.highlight == int(st.result.reads["order"].iloc[1])
    st.rank.value = 0  # a new rank starts at its first item
    assert st.result.rank == 0 and st.result.step == 0


def test_stepper_on_a_load_result_and_bad_step():
    r = explore_reshard("13, 8", "4", "S(0)", "3", "S(0)")
    st = ReadOrderStepper(r, rank=2)
    # rank 2 wants [10:13]: #2 [8:12] gives rows 10:12, #3 [12:13] gives row 12
    assert st.result.n == 2 and str(st.result.item.dest_chunk) == "[10:12, 0:8]"
    with pytest.raises(WorkbenchError, match="step 5 is not one of rank 2's 2 read items"):
        step_read_order(r.load, "weight", 2, 5)


def test_widgets_never_touch_pyplot():
    # OO Figures only: nothing registers with pyplot, so nothing is left open in a kernel
    code = (
        "import sys; from workbench.widgets import ReshardExplorer, ReadOrderStepper; "
        "ReshardExplorer(); ReadOrderStepper(); "
        "sys.exit(1 if 'matplotlib.pyplot' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_checkpoint_explorer_target_controls_replan():
    # llama-tiny saved FSDP on 4 ranks, loaded FSDP2+TP on (2, 2), then on (4, 2) and as FSDP on 2
    from workbench.models import apply_recipe, model_state_dict

    sd = model_state_dict("llama", "tiny")
    save = wb.plan_save(apply_recipe(sd, "fsdp", (4,)))
    ex = CheckpointExplorer(save, ("llama", "fsdp2+tp", (2, 2)))
    assert (ex.preset.value, ex.recipe.value, ex.mesh.value) == ("llama", "fsdp2+tp", "2, 2")
    ex.rank.value = 3
    ex.mesh.value = "4, 2"
    expected = wb.plan_load(save.metadata, apply_recipe(sd, "fsdp2+tp", (4, 2)))
    assert ex.plan.load.world_size == 8 and list(ex.rank.options) == list(range(8))
    assert ex.result.rank == 3 and ex.message.value == ""
    fqn = ex.result.fqn
    sl = expected.reads(fqn).of_rank(3)
    assert len(ex.result.reads) == sl.stop - sl.start > 0
    ex.mesh.value = "4, x"  # bad text: the message, and the last plan stays
    assert "target mesh '4, x' is not a list of integers" in html.unescape(ex.message.value)
    assert ex.plan.load.world_size == 8
    ex.mesh.value = "2"  # fsdp2+tp needs a 2-d mesh
    assert "target mesh (2,) has 1 dims (fsdp2+tp's 2: dp, tp)" in html.unescape(ex.message.value)
    ex.recipe.value = "fsdp"
    assert ex.message.value == "" and ex.plan.load.world_size == 2 and ex.rank.value == 1


def test_checkpoint_explorer_target_boxes_show_the_target_planned():
    from workbench.models import apply_recipe, model_state_dict

    sd = model_state_dict("llama", "tiny")
    save = wb.plan_save(apply_recipe(sd, "fsdp", (4,)))
    # a dict target: the recipe and mesh boxes claim nothing
    ex = CheckpointExplorer(save, apply_recipe(sd, "fsdp2+tp", (2, 2)))
    assert (ex.preset.value, ex.recipe.value, ex.mesh.value) == ("", None, "")
    assert ex.plan.load.world_size == 4
    # a whole spec typed into the preset box, as the CLI takes it: planned, and split into boxes
    ex.preset.value = "llama-tiny:fsdp2+tp:dp=4,tp=2"
    assert ex.message.value == "" and ex.plan.load.world_size == 8
    assert (ex.preset.value, ex.recipe.value, ex.mesh.value) == ("llama-tiny", "fsdp2+tp", "4, 2")
    assert "llama-tiny:fsdp2+tp:dp=4,tp=2" in ex.header.value
    # a spec given to the constructor
    ex2 = CheckpointExplorer(save, "llama-tiny:hsdp:replicate=2,dp=2")
    assert (ex2.preset.value, ex2.recipe.value, ex2.mesh.value) == ("llama-tiny", "hsdp", "2, 2")
    ex2.preset.value = "llama-tiny:fsdp:dp=x"
    assert "mesh dim 'dp=x'" in html.unescape(ex2.message.value) and ex2.plan.load.world_size == 4


def test_a_long_table_shows_its_first_rows_and_says_where_the_rest_are():
    import pandas as pd

    from workbench.widgets.controls import table_outputs

    df = pd.DataFrame({"rank": range(5), "file": [f"<f{i}>" for i in range(5)]})
    head, rest = table_outputs(df, ["rank", "file"], "explorer.plan.io", limit=2)
    shown = head["data"]["text/html"]
    assert "&lt;f1&gt;" in shown and "&lt;f2&gt;" not in shown  # escaped, cut after 2 rows
    assert "the first 2 of 5 rows; explorer.plan.io holds them all" in rest["data"]["text/html"]
    (whole,) = table_outputs(df, ["rank", "file"], "explorer.plan.io", limit=5)
    assert "&lt;f4&gt;" in whole["data"]["text/html"]


def test_in_a_kernel_the_io_table_follows_the_first_scene():
    # the cell that builds the explorer ends with the I/O panel saying it is being costed; the
    # table arrives from the kernel's event loop before the next cell runs
    from jupyter_client.manager import start_new_kernel

    out: list[str] = []

    def collect(msg) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"].strip())

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        first = (
            "from workbench.models import apply_recipe, model_state_dict\n"
            "from workbench.planning import plan_save\n"
            "from workbench.widgets import CheckpointExplorer\n"
            "ex = CheckpointExplorer(plan_save(apply_recipe(model_state_dict('llama'), 'fsdp', 4)),"
            " 'llama-tiny:fsdp2+tp:dp=2,tp=2')\n"
            "shown = ex.io.outputs[0]['data']['text/html']\n"
            "costed = ex.plan.io_costed\n"
        )
        second = "print(costed, repr(shown), ex.plan.io_costed, '<table' in ex.io.outputs[0]['data']['text/html'])"
        for code in (first, second):
            reply = kc.execute_interactive(code, timeout=120, output_hook=collect)
            assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert out == ["False '<i>costing the reads of 4 ranks</i>' True True"]
