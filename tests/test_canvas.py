"""The canvas's data without a browser: scenes (tile columns, read order, facts, colours,
legends), the model map / traffic / bytes numbers against the load's own I/O, the binary traits,
the HTML escaping of the explorers' tables. The page itself is tested in test_browser.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import workbench.widgets as widgets_pkg
from workbench.formatting import format_bytes
from workbench.geometry import Chunk
from workbench.models import apply_recipe, model_state_dict
from workbench.planning import plan_load, plan_save
from workbench.sharding import dtensor_layout
from workbench.tables import read_items_table
from workbench.widgets.scenes import (
    CATEGORICAL_RANKS,
    bytes_scene,
    chunk_scene,
    model_map_data,
    model_scene,
    rgba,
    traffic_scene,
)


@pytest.fixture(scope="module")
def fsdp_to_tp():
    # (16, 12) saved S(0) on 8 ranks (#i = rows [2i, 2i+2)), loaded [S(0), S(1)] on (4, 2)
    save = plan_save({"w": dtensor_layout((16, 12), (8,), "S(0)")})
    load = plan_load(save.metadata, {"w": dtensor_layout((16, 12), (4, 2), "S(0), S(1)")})
    return save, load


def test_chunk_scene_of_a_worked_reshard(fsdp_to_tp):
    save, load = fsdp_to_tp
    reads = read_items_table(load, "w", rank=3)
    s = chunk_scene(save.metadata, "w", load, 3, reads=reads)
    saved, read, target = s.of_kind("saved"), s.of_kind("read"), s.of_kind("target")
    # saved #i at x 0, y 2i, 12 wide, 2 tall; writer i; file __i_0.distcp
    assert s.boxes[saved].tolist() == [[0, 2 * i, 12, 2] for i in range(8)]
    assert s.ranks[saved].tolist() == list(range(8)) and s.items[saved].tolist() == list(range(8))
    assert [s.meta["files"][int(f)] for f in s.facts[saved, 0]] == [
        f"__{i}_0.distcp" for i in range(8)
    ]
    # rank 3 = coordinate (1, 1) wants rows [4:8], cols [6:12]: saved #2 then #3, numbered by
    # their place in rank 3's LoadPlan, as the table's order column
    assert s.boxes[read].tolist() == [[6, 4, 6, 2], [6, 6, 6, 2]]
    assert s.items[read].tolist() == list(reads["order"])
    assert s.boxes[target].tolist() == [[6, 4, 6, 4]]
    # the other 7 ranks' chunks are where a click selects them
    assert sorted(set(s.ranks[s.of_kind("wanted")].tolist())) == [0, 1, 2, 4, 5, 6, 7]
    # full boxes (offsets then sizes) for the tooltips
    assert s.extents[read].tolist() == [[4, 6, 2, 6], [6, 6, 2, 6]]
    labels = {t: text for t, text, _ in s.meta["labels"]}
    assert [labels[int(i)] for i in read] == [
        f"{o}\u2190#{c}" for o, c in zip(reads["order"], (2, 3))
    ]
    assert [r[1] for r in s.meta["reads"]] == ["[4:6, 6:12]", "[6:8, 6:12]"]
    # binary traits: float64 boxes, uint32 fills, one row per tile
    b = s.buffers()
    assert len(b["boxes"]) == 32 * len(s) and len(b["fills"]) == 4 * len(s)
    assert np.frombuffer(b["boxes"], np.float64).reshape(-1, 4).tolist() == s.boxes.tolist()


def test_n_d_tensor_draws_the_slab_of_the_ranks_chunk():
    # (4, 6, 8) S(0) on 2 -> S(2) on 2: rank 1 wants [0:4, 0:6, 4:8]; drawn dims (1, 2) at dim 0
    save = plan_save({"t": dtensor_layout((4, 6, 8), (2,), "S(0)")})
    load = plan_load(save.metadata, {"t": dtensor_layout((4, 6, 8), (2,), "S(2)")})
    s = chunk_scene(save.metadata, "t", load, 1, dims=(1, 2))
    # at dim 0 = 0 (rank 1's chunk starts there): only saved #0 [0:2] is in the slab
    assert s.items[s.of_kind("saved")].tolist() == [0]
    assert s.boxes[s.of_kind("target")].tolist() == [[4, 0, 4, 6]]
    assert s.meta["width"] == 8 and s.meta["height"] == 6 and s.meta["ndim"] == 3


def test_rank_colours_categorical_up_to_the_palette_then_a_scale():
    def scene(world):
        save = plan_save({"w": dtensor_layout((world * 2, 4), (world,), "S(0)")})
        return chunk_scene(save.metadata, "w")

    few, many = scene(CATEGORICAL_RANKS), scene(CATEGORICAL_RANKS + 1)
    assert len(few.meta["legend"]["entries"]) == CATEGORICAL_RANKS
    assert few.meta["legend"]["scale"] is None
    assert many.meta["legend"]["entries"] == []
    assert (
        f"continuous scale, {CATEGORICAL_RANKS + 1} ranks" in many.meta["legend"]["scale"]["label"]
    )
    assert len(set(many.fills.tolist())) == CATEGORICAL_RANKS + 1  # still one colour each


def test_model_map_numbers_are_the_loads_own():
    model = model_state_dict("llama")
    save = plan_save(apply_recipe(model, "fsdp", 4))
    load = plan_load(save.metadata, apply_recipe(model, "fsdp2+tp", (2, 2)))
    d = model_map_data(save.metadata, load, load.problems)
    assert d.fqns == tuple(save.metadata.state_dict_metadata)
    # summed over tensors: what the I/O model counts per rank
    assert d.needed.sum() == load.io.bytes_needed.sum()
    assert d.loaded.sum() == load.io.bytes_read.sum()
    assert "layers.0" in d.groups and d.groups[d.fqns.index("norm.weight")] == "norm"
    s = model_scene(d, color_by="amplification")
    assert len(s) == len(d.fqns) and s.meta["click"] == "pick"
    # inside a layer every tensor's area is in proportion to its bytes
    area = s.boxes[:, 2] * s.boxes[:, 3]
    layer0 = [i for i, g in enumerate(d.groups) if g == "layers.0"]
    ratio = area[layer0] / d.nbytes[layer0]
    assert len(layer0) > 4 and np.allclose(ratio, ratio[0], rtol=1e-6)


def test_traffic_and_bytes_scenes_in_human_units():
    model = model_state_dict("llama")
    save = plan_save(apply_recipe(model, "fsdp", 4))
    load = plan_load(save.metadata, apply_recipe(model, "fsdp2+tp", (2, 2)))
    t = traffic_scene(load)
    assert len(t) == len(load.io.pair_bytes)
    assert sum(1 for _ in t.meta["cells"]) == len(t)
    assert all("B" in line[0] for line in t.meta["tips"])  # "... reads 12.5 KiB from ..."
    b = bytes_scene(load)
    assert len(b.of_kind("bar")) == len(b.of_kind("need")) == 4
    assert b.boxes[b.of_kind("bar"), 3].tolist() == load.io.bytes_read.tolist()
    assert b.boxes[b.of_kind("need"), 3].tolist() == load.io.bytes_needed.tolist()
    assert b.meta["yformat"] == "bytes" and "loaded" in b.meta["title"]
    assert "e+" not in b.meta["title"] and "1e" not in b.meta["title"]


BYTE_CASES = [0, 1023, 1024, 1536, 10 * 2**20 - 1, 1023.99 * 1024, 2**30, 1128840839168, 3 * 2**50]


def test_the_canvas_writes_bytes_as_format_bytes_does():
    """The page's humanBytes is formatting.format_bytes written in JS: the shipped module's own
    function, run by node, gives the same text for every case."""
    js = (Path(widgets_pkg.__file__).parent / "static" / "canvas.js").read_text()
    start = js.index("function humanBytes(n) {")
    fn = js[start : js.index("\n}\n", start) + 3]
    script = fn + f"console.log(JSON.stringify({BYTE_CASES!r}.map(humanBytes)));"
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [format_bytes(n) for n in BYTE_CASES]
    assert format_bytes(1128840839168) == "1.03 TiB" and format_bytes(1023) == "1023 B"


def test_rgba_packs_colour_and_alpha():
    assert rgba("#1f77b4", 1.0) == 0x1F77B4FF and rgba(None) == 0 and rgba("#000000", 0.5) == 0x80


def test_plain_functions_and_scenes_load_no_widget_library():
    code = (
        "import sys; import workbench.widgets.explore, workbench.widgets.scenes; "
        "from workbench.widgets import explore_reshard; explore_reshard('8, 4', '2', 'S(0)', '2', 'R'); "
        "bad = [m for m in ('ipywidgets', 'anywidget', 'IPython') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_untrusted_keys_are_escaped_in_the_checkpoint_explorers_tables():
    from workbench.widgets import CheckpointExplorer

    key = "<img src=x onerror=alert(1)>"
    save = plan_save({key: dtensor_layout((4, 4), (2,), "S(0)")})
    ex = CheckpointExplorer(save)
    html = ex.problems.outputs[0]["data"]["text/html"] + ex.chunks.outputs[0]["data"]["text/html"]
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert ex.canvas.meta["fqn"] == key  # the page sets it as text
    assert Chunk((0, 0), (2, 4)) in save.metadata.state_dict_metadata[key].chunks


def test_explorer_tables_write_sizes_in_human_units_with_the_exact_count_on_hover():
    """Every size in an explorer's tables reads like the pictures (format_bytes), with the exact
    byte count in the cell's title; offsets stay exact."""
    import re

    from workbench.widgets import CheckpointExplorer

    save = plan_save({"w": dtensor_layout((1024, 512), (4,), "S(0)")})
    load = plan_load(save.metadata, {"w": dtensor_layout((1024, 512), (2,), "S(1)")})
    ex = CheckpointExplorer(save, load.layouts)
    html = ex.chunks.outputs[0]["data"]["text/html"] + ex.io.outputs[0]["data"]["text/html"]
    shown = re.findall(r'<span title="(\d+) bytes">([^<]*)</span>', html)
    assert shown and all(text == format_bytes(int(n)) for n, text in shown)
    assert ("524288", "512 KiB") in shown  # one saved chunk: 256 x 512 float32
    assert ">524288<" not in html


def test_model_explorer_clicks_open_a_tensor_list_a_cell_and_select_a_rank():
    from workbench.widgets import ModelExplorer

    model = model_state_dict("llama")
    save = plan_save(apply_recipe(model, "fsdp", 4))
    ex = ModelExplorer(save, "llama-tiny:fsdp2+tp:dp=2,tp=2", rank=1)
    assert ex.result is None and ex.tensor.layout.display == "none"
    k = ex.data.fqns.index("layers.0.self_attn.o_proj.weight")
    ex.map.picked = {"index": k, "count": 1}  # what a click on the map sends
    r = ex.result
    assert r.fqn == "layers.0.self_attn.o_proj.weight" and r.rank == 1
    assert ex.tensor.meta["title"].startswith(f"{r.fqn}: rank 1's reads")
    assert len(ex.tensor.scene.of_kind("read")) == len(r.reads) > 0
    ex.bytes.selected_rank = 3  # a click on rank 3's bars
    assert ex.rank.value == 3 and ex.result.rank == 3
    # a traffic cell: that rank's reads from that file, every one of them
    cell = 0
    rank, fidx = ex.traffic.meta["cells"][cell]
    ex.traffic.picked = {"index": cell, "count": 1}
    shown = ex.cell.outputs[1]["data"]["text/html"]
    name = ex.plan.load.io.files[fidx]
    assert f"load rank {rank}" in ex.cell.outputs[0]["data"]["text/html"]
    assert shown.count(name) == int(ex.plan.load.io.pair_reads[cell])
    ex.color_by.value = "read amplification"
    assert "amplification" in ex.map.meta["title"]
