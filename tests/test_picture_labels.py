"""Static pictures at the sizes people debug: the 70B reference's ``o_proj`` seen from load rank 9
(FSDP ``Shard(0)`` on 64 ranks -> ``[Shard(0), Shard(1)]`` on 8x8, notebook 04) and a tensor of
4096 chunks. Label boxes are computed from the picture data (`place_labels`) and checked for
overlaps and fit, then the same on the Axes matplotlib draws (Agg, the renderer's own text
extents); axes and titles in human units."""

import itertools

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from support import tsm

from workbench.colors import MAX_CATEGORICAL_RANKS, rank_scale_color
from workbench.geometry import boxes_overlap
from workbench.picture_data import (
    LabelBox,
    Picture,
    label_size,
    layout_data,
    place_labels,
    reshard_data,
)
from workbench.planning import plan_load, plan_save
from workbench.plots import plot_bytes_per_rank, plot_layout, plot_reshard, plot_traffic
from workbench.records import Metadata, MetadataIndex, StorageInfo
from workbench.sharding import dtensor_layout

O_PROJ = "model.layers.0.self_attn.o_proj.weight"


@pytest.fixture(scope="module")
def o_proj():
    """The 70B reference's o_proj alone: 8192 x 8192 bf16, S(0) on 64 -> [S(0), S(1)] on 8x8."""
    save = plan_save({O_PROJ: dtensor_layout((8192, 8192), (64,), "S(0)", "bfloat16")})
    load = plan_load(
        save.metadata, {O_PROJ: dtensor_layout((8192, 8192), (8, 8), "S(0), S(1)", "bfloat16")}
    )
    return save, load


def assert_placed_well(pic: Picture, boxes: tuple[LabelBox, ...], width, height, window=None):
    """No two boxes overlap, each lies inside the visible part of its tile, each text is the
    tile's label or its first line."""
    x0, y0, x1, y1 = window or pic.window or (0, 0, pic.width, pic.height)
    sx, sy = width / (x1 - x0), height / (y1 - y0)
    for a, b in itertools.combinations(boxes, 2):
        assert not boxes_overlap((a.x, a.y), (a.w, a.h), (b.x, b.y), (b.w, b.h)), (a, b)
    for b in boxes:
        t = pic.tiles[b.tile]
        assert b.text in (t.label, t.label.split("\n")[0])
        assert (max(t.x, x0) - x0) * sx <= b.x and b.x + b.w <= (min(t.x + t.w, x1) - x0) * sx
        assert (max(t.y, y0) - y0) * sy <= b.y and b.y + b.h <= (min(t.y + t.h, y1) - y0) * sy


def test_label_boxes_of_o_proj_rank_9_never_overlap_full_view_and_zoomed(o_proj):
    save, load = o_proj
    pic = reshard_data(save.metadata, load, O_PROJ, rank=9)
    # rank 9 = mesh (1, 1) wants rows 1024:2048, cols 1024:2048: saved chunks #8..#15 (128 rows
    # each), read whole rows 1024:2048 narrowed to its columns, in DCP's order
    reads = pic.of_kind("read")
    assert [t.label.split("\n")[0] for t in reads] == [f"{k}\u2190#{8 + k}" for k in range(8)]
    # full view (a 400 px square for 8192 x 8192): a read is 128 rows = 6 px high, no label fits;
    # the rank's own box (47 px) gets its name
    full = place_labels(pic, 400, 400)
    assert_placed_well(pic, full, 400, 400)
    assert [pic.tiles[b.tile].kind for b in full] == ["target"] and full[0].text == "r9"
    # zoomed on rank 9's region (its box and half its size around): all 8 reads labelled
    zoomed = reshard_data(save.metadata, load, O_PROJ, rank=9, zoom=True)
    assert zoomed.window == (512, 512, 2560, 2560)
    boxes = place_labels(zoomed, 400, 400)
    assert_placed_well(zoomed, boxes, 400, 400)
    shown = [zoomed.tiles[b.tile] for b in boxes]
    assert sum(t.kind == "read" for t in shown) == 8
    assert "r9" not in [b.text for b in boxes]  # its centre is taken by read labels
    # any window: a view zoomed further onto two reads (the labels' window argument)
    window = (1024, 1024, 1536, 1280)
    boxes = place_labels(pic, 500, 250, window=window)
    assert_placed_well(pic, boxes, 500, 250, window)
    assert [b.text for b in boxes if pic.tiles[b.tile].kind == "read"] == [
        "0\u2190#8\n__8_0.distcp",
        "1\u2190#9\n__9_0.distcp",
    ]


def test_label_boxes_of_a_4096_chunk_tensor_never_overlap():
    layout = dtensor_layout((4096, 4096), (64, 64), "S(0), S(1)")
    pic = layout_data(layout, max_labels=4096)
    assert len(pic.tiles) == 4096 and all(t.label for t in pic.tiles)
    full = place_labels(pic, 600, 600)  # tiles of 9 px: no label fits
    assert full == ()
    for window, px in (((0, 0, 512, 512), 600), ((1000, 3000, 1400, 3400), 480)):
        boxes = place_labels(pic, px, px, window=window)
        assert_placed_well(pic, boxes, px, px, window)
        assert len(boxes) >= 36  # 8 x 8 (or 6 x 6 whole and clipped) tiles, most labelled
    # a hostile density: every tile labelled with long text at a large font, still no overlap
    boxes = place_labels(pic, 3000, 3000, font_px=30)
    assert_placed_well(pic, boxes, 3000, 3000)


def test_label_size_bounds_what_matplotlib_draws():
    # the estimate keeps labels apart only if it is not smaller than the drawn text
    from matplotlib.figure import Figure

    fig = Figure(dpi=100)
    renderer = FigureCanvasAgg(fig).get_renderer()
    labels = ("0\u2190#8\n__8_0.distcp", "#15 r15", "r0-3,8\n[1024:2048, 0:8192]", "WWW", "Mm%@")
    for text in labels + ("ABCDEFGHIJKLNOPQRSTUVXYZ",):
        t = fig.text(0, 0, text, fontsize=8)
        bb = t.get_window_extent(renderer)
        w, h = label_size(text, 8 * 100 / 72)
        assert w >= bb.width * 0.98 and h >= bb.height * 0.98, (text, w, h, bb)


def drawn_label_extents(ax):
    """``(text, window extent)`` of the tile labels matplotlib drew (visible clipped texts: the
    notes under the Axes are not clipped)."""
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    return [
        (t.get_text(), t.get_window_extent(renderer))
        for t in ax.texts
        if t.get_visible() and t.get_clip_on()
    ]


@pytest.mark.parametrize("zoom", [False, True])
def test_drawn_o_proj_rank_9_has_no_overlapping_text(o_proj, zoom):
    save, load = o_proj
    ax = plot_reshard(save.metadata, load, O_PROJ, rank=9, zoom=zoom)
    FigureCanvasAgg(ax.figure)
    labels = drawn_label_extents(ax)
    for (ta, a), (tb, b) in itertools.combinations(labels, 2):
        assert not a.overlaps(b), (ta, tb)
    texts = [t for t, _ in labels]
    if zoom:  # all 8 reads labelled, in DCP's order
        reads = [t.split("\n")[0] for t in texts if "\u2190" in t]
        assert reads == [f"{k}\u2190#{8 + k}" for k in range(8)]
    else:
        assert "r9" in texts
    # 64 writers: a continuous rank scale with a colour bar that says so, no 64-swatch legend
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any(t.startswith("writer r") for t in legend)
    assert "rank 9's read k\u2190#i (DCP order)" in legend
    (bar,) = ax.child_axes
    assert bar.get_ylabel() == "writer rank\n(continuous scale, 64 ranks)"
    # a label zoomed by hand (set_xlim / set_ylim) is placed again at the next draw
    if not zoom:
        ax.set_xlim(1024, 2048)
        ax.set_ylim(1280, 1024)
        texts = [t for t, _ in drawn_label_extents(ax)]
        assert "0\u2190#8\n__8_0.distcp" in texts and "1\u2190#9\n__9_0.distcp" in texts


def test_up_to_18_ranks_get_a_legend_more_a_rank_scale():
    few = layout_data(dtensor_layout((36, 4), (MAX_CATEGORICAL_RANKS,), "S(0)"))
    assert few.scale is None and len(few.legend) == MAX_CATEGORICAL_RANKS
    many = layout_data(dtensor_layout((38, 4), (19,), "S(0)"))
    assert many.scale is not None and many.scale.n == 19 and many.legend == ()
    assert [t.face for t in many.tiles] == [rank_scale_color(r, 19) for r in range(19)]
    assert many.scale.label == "rank (continuous scale, 19 ranks)"
    assert rank_scale_color(0, 19) == "#440154" and rank_scale_color(18, 19) == "#fde725"
    ax = plot_layout(dtensor_layout((38, 4), (19,), "S(0)"))
    assert ax.get_legend() is None and ax.child_axes[0].get_ylabel().startswith("rank\n")


def test_overlapping_saved_chunks_stay_visible():
    # #0 rows 0:3 and #1 rows 2:4 share row 2; #2 rows 4:6 touches #1 without sharing
    md = Metadata(
        {"w": tsm((6, 4), [((0, 0), (3, 4)), ((2, 0), (2, 4)), ((4, 0), (2, 4))])},
        storage_data={
            MetadataIndex("w", (r, 0)): StorageInfo(f"__{i}_0.distcp", 0, 1)
            for i, r in enumerate((0, 2, 4))
        },
    )
    pic = layout_data(md, fqn="w")
    assert [t.alpha for t in pic.tiles] == [0.45, 0.45, 1.0]
    assert [t.edge for t in pic.tiles][:2] == [t.face for t in pic.tiles][:2]
    assert pic.notes[-1].startswith("2 chunks share elements with another")


def tick_texts(axis) -> list[str]:
    """The tick labels a draw would write (the formatter on the located ticks, offset included),
    without drawing."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = [t for t in axis.get_major_locator()() if lo <= t <= hi]
    return axis.get_major_formatter().format_ticks(ticks)


def test_bytes_and_traffic_axes_speak_human_units(o_proj):
    save, load = o_proj
    for result in (load, save):
        ax = plot_bytes_per_rank(result)
        ticks = tick_texts(ax.yaxis)
        assert ticks and not any("e" in t for t in ticks), ticks
        assert ax.yaxis.get_major_formatter().get_offset() == ""
        assert ax.get_ylabel().endswith("(MiB)")
        assert not any(ch.isdigit() and len(w) > 6 for w in ax.get_title().split() for ch in w)
    # each rank loads 8 saved chunks of 2 MiB whole and keeps 1/8 of each: 16 MiB for 2 MiB
    assert ax.get_title().startswith("save: 128 MiB written by 64 ranks")
    ax = plot_bytes_per_rank(load)
    assert ax.get_title() == "load: 1 GiB loaded, 128 MiB needed, 8.0x what is needed"
    assert np.allclose([p.get_paths()[0].vertices[:, 1].max() for p in ax.collections], [16, 2])
    ax = plot_traffic(load)
    (bar,) = [a for a in ax.figure.axes if a is not ax]
    assert bar.get_ylabel() == "MiB loaded"
    assert bar.yaxis.get_major_formatter().get_offset() == ""
    assert tick_texts(bar.yaxis)[-1] == "2.00" and not any("e" in t for t in tick_texts(bar.yaxis))
    assert ax.get_title() == "rank-to-file traffic: 64 ranks, 64 files, 1 GiB loaded"
