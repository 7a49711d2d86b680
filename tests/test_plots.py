"""Pictures: assert on the picture data first, then on the Axes' artists (Agg backend; the
conftest fails any test that leaves pyplot figures open; the plots never touch pyplot). The fast
widget path (`picture_png`: dense runs painted as images) is checked pixel by pixel against the
paths Agg draws for the same picture."""

import io
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage, imread
from support import tsm

import workbench as wb
from workbench import picture_data, plots
from workbench.colors import (
    BASE_PALETTE,
    UNKNOWN_COLOR,
    rank_color,
    rank_colors,
    text_color,
)
from workbench.errors import LayoutError, MetadataError, PlanError
from workbench.formatting import format_ranks
from workbench.geometry import Chunk
from workbench.picture_data import (
    Picture,
    bytes_per_rank_data,
    layout_data,
    layout_slabs,
    mesh_data,
    reshard_data,
    traffic_data,
)
from workbench.planning import plan_load, plan_save
from workbench.plots import (
    RASTER_MIN,
    draw_picture,
    picture_png,
    plot_bytes_per_rank,
    plot_layout,
    plot_mesh,
    plot_reshard,
    plot_traffic,
)
from workbench.records import (
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageInfo,
)


def rects(tiles):
    return [(t.x, t.y, t.w, t.h) for t in tiles]


def drawn_paths(ax) -> int:
    return sum(len(c.get_paths()) for c in ax.collections if isinstance(c, PolyCollection))


# ----------------------------------------------------------------------------- colours
def test_rank_colours_are_deterministic_distinct_and_hex():
    first = rank_colors(4096)
    assert first == rank_colors(4096)
    assert first[:9] == list(BASE_PALETTE[:9]) and first[0] == "#1f77b4"  # tab10 blue
    assert len(set(first)) == 4096
    assert all(len(c) == 7 and c.startswith("#") and int(c[1:], 16) >= 0 for c in first)
    # neighbours never share a base hue (they differ by more than a lightness step)
    assert all(first[r] != first[r + 1] for r in range(4095))
    assert UNKNOWN_COLOR not in first
    assert rank_color(None) == rank_color(-1) == UNKNOWN_COLOR


def test_text_colour_and_rank_ranges():
    assert text_color("#000000") == "#ffffff" and text_color("#ffffff") == "#000000"
    assert text_color("#1f77b4") == "#ffffff" and text_color("#ffbb78") == "#000000"
    assert format_ranks([8, 0, 1, 2, 3]) == "r0-3,8"
    assert format_ranks([3, 5, 4, 9]) == "r3-5,9"
    assert format_ranks(()) == ""


# ----------------------------------------------------------------------------- layouts
def test_layout_picture_of_an_uneven_dtensor_lists_the_empty_shard():
    # (13,2), mesh (4,2), [S(0),S(0)]: rows 2,2,2,2,2,2,1,0 (dcp-semantics s.2: rank 7 is empty
    # at offset 13)
    pic = layout_data(wb.dtensor_layout((13, 2), (4, 2), "S(0), S(0)"))
    assert rects(pic.tiles) == [
        (0, 0, 2, 2),
        (0, 2, 2, 2),
        (0, 4, 2, 2),
        (0, 6, 2, 2),
        (0, 8, 2, 2),
        (0, 10, 2, 2),
        (0, 12, 2, 1),
    ]
    assert [t.face for t in pic.tiles] == rank_colors(7)
    assert pic.tiles[6].label == "r6\n[12:13, 0:2]"
    assert pic.notes == ("empty shards: r7 [13:13, 0:2]",)
    assert (pic.width, pic.height, pic.xlabel, pic.ylabel) == (2, 13, "dim 1", "dim 0")
    ax = plot_layout(wb.dtensor_layout((13, 2), (4, 2), "S(0), S(0)"))
    assert drawn_paths(ax) == 7
    assert [t.get_text() for t in ax.texts][:1] == ["r0\n[0:2, 0:2]"]
    assert "empty shards: r7 [13:13, 0:2]" in [t.get_text() for t in ax.texts]
    assert ax.get_ylim() == (13, 0)  # row 0 at the top
    assert len(ax.get_legend().get_texts()) == 8  # every rank, the empty one included


def test_replicas_are_one_tile_listing_their_ranks_and_idle_ranks_are_noted():
    pic = layout_data(wb.dtensor_layout((8, 4), (2, 2), "R, S(1)", world_size=6))
    assert rects(pic.tiles) == [(0, 0, 2, 8), (2, 0, 2, 8)]
    assert [t.ranks for t in pic.tiles] == [(0, 2), (1, 3)]
    assert [t.label for t in pic.tiles] == ["r0,2\n[0:8, 0:2]", "r1,3\n[0:8, 2:4]"]
    assert pic.notes == ("no chunk: r4-5",)


def test_strip_cell_and_labels_limit():
    pic = layout_data(wb.dtensor_layout((10,), (4,), "S(0)"))  # 3,3,3,1
    assert rects(pic.tiles) == [(0, 0, 3, 1), (3, 0, 3, 1), (6, 0, 3, 1), (9, 0, 1, 1)]
    assert (pic.height, pic.ylabel) == (1, "")
    cell = layout_data(wb.dtensor_layout((), (4,), "R"))
    assert rects(cell.tiles) == [(0, 0, 1, 1)] and cell.tiles[0].label == "r0-3\n[]"
    many = layout_data(wb.dtensor_layout((64, 64), (8, 8), "S(0), S(1)"), max_labels=10)
    assert len(many.tiles) == 64 and all(t.label is None for t in many.tiles)


def test_strided_shard_tiles_are_hatched_and_explained():
    pic = layout_data(wb.dtensor_layout((8,), (2,), "SS(0,2)"))
    assert [t.hatch for t in pic.tiles] == ["//", "//"]
    assert "r0-1: DCP's box is not the data held (_StridedShard)" in pic.notes
    ax = plot_layout(wb.dtensor_layout((8,), (2,), "SS(0,2)"))
    assert [c.get_hatch() for c in ax.collections] == ["//"]


def test_n_d_layout_draws_small_multiples_per_slab():
    layout = wb.dtensor_layout((8, 6, 4), (2, 2), "S(0), S(2)")
    assert layout_slabs(layout) == [{2: 0}, {2: 2}]
    fig = plot_layout(layout)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [drawn_paths(a) for a in fig.axes] == [2, 2]
    assert [a.get_title() for a in fig.axes] == ["dim 2 = 0", "dim 2 = 2"]
    one = layout_data(layout, at={2: 3})
    assert [t.ranks for t in one.tiles] == [(1,), (3,)]
    # dims (2, 1) with dim 0 fixed: x runs along dim 1, y along dim 2
    side = layout_data(layout, dims=(2, 1), at={0: 5})
    assert rects(side.tiles) == [(0, 0, 6, 2), (0, 2, 6, 2)] and side.xlabel == "dim 1"
    assert len(plot_layout(wb.dtensor_layout((2, 2, 40), (40,), "S(2)"), max_panels=4).axes) == 4


def test_checkpoint_entry_is_coloured_by_writer():
    md = Metadata(
        {"w": tsm((4, 4), [((0, 0), (2, 4)), ((2, 0), (2, 4))])},
        storage_data={
            MetadataIndex("w", (0, 0)): StorageInfo("__3_0.distcp", 0, 1),
            MetadataIndex("w", (2, 0)): StorageInfo("odd.bin", 0, 1),
        },
    )
    pic = layout_data(md, fqn="w")
    assert [t.face for t in pic.tiles] == [rank_color(3), UNKNOWN_COLOR]
    assert [t.label for t in pic.tiles] == ["#0 r3\n[0:2, 0:4]", "#1\n[2:4, 0:4]"]
    assert [e[0] for e in pic.legend] == ["writer r3", "writer unknown"]
    pic = layout_data(tsm((4,), [((0,), (4,))]))
    assert pic.tiles[0].face == UNKNOWN_COLOR


def test_layout_bad_input_is_refused_in_house_form():
    layout = wb.dtensor_layout((8, 6, 4), (2, 2), "S(0), S(2)")
    with pytest.raises(LayoutError, match=r"^<input>: dims to draw \(0, 3\) do not fit a 3-d"):
        layout_data(layout, dims=(0, 3))
    with pytest.raises(LayoutError, match="dims to draw \\(1, 1\\)"):
        layout_data(layout, dims=(1, 1))
    with pytest.raises(LayoutError, match="slab index 9 of dim 2"):
        layout_data(layout, at={2: 9})
    with pytest.raises(LayoutError, match="small multiples"):
        plot_layout(layout, ax=Figure().add_subplot())
    md = Metadata({"b": BytesStorageMetadata()})
    with pytest.raises(MetadataError, match="^b: is a bytes entry"):
        layout_data(md, fqn="b")
    with pytest.raises(MetadataError, match="^x: key 'x' is not in the checkpoint"):
        layout_data(md, fqn="x")


# ----------------------------------------------------------------------------- reshard
def _reshard():
    save = plan_save({"w": wb.dtensor_layout((8, 6), (4,), "S(0)")})
    load = plan_load(save.metadata, {"w": wb.dtensor_layout((8, 6), (2, 2), "S(1), S(0)")})
    return save, load


def test_reshard_picture_lights_the_ranks_reads_in_dcp_order():
    save, load = _reshard()
    # rank 1 = mesh (0, 1): cols 0:3, rows 4:8 <- saved #2 (rows 4:6, rank 2) and #3 (rank 3)
    pic = reshard_data(save, load, "w", rank=1)
    reads = pic.of_kind("read")
    assert rects(reads) == [(0, 4, 3, 2), (0, 6, 3, 2)]
    # numbered 0-based in DCP order, like the read-item table's rows
    assert [t.label for t in reads] == ["0\u2190#2\n__2_0.distcp", "1\u2190#3\n__3_0.distcp"]
    assert [t.face for t in reads] == [rank_color(2), rank_color(3)]
    assert rects(pic.of_kind("saved")) == [(0, 2 * i, 6, 2) for i in range(4)]
    assert [t.label for t in pic.of_kind("saved")] == [f"#{i} r{i}" for i in range(4)]
    assert rects(pic.of_kind("target")) == [(0, 4, 3, 4)]
    assert sorted(rects(pic.of_kind("wanted"))) == [(0, 0, 3, 4), (3, 0, 3, 4), (3, 4, 3, 4)]
    assert pic.of_kind("uncovered") == [] and pic.of_kind("held") == []
    assert pic.notes == ("rank 1 wants [4:8, 0:3]", "2 read items from 2 saved chunks in 2 files")
    ax = plot_reshard(save, load, "w", rank=1)
    assert drawn_paths(ax) == len(pic.tiles) == 4 + 3 + 2 + 1
    assert ax.get_title() == "w: rank 1's reads"
    # the same reads when the destination is given as a Layout (read items computed directly)
    again = reshard_data(save.metadata, load.layouts["w"], "w", rank=1)
    assert again.tiles == pic.tiles


def test_reshard_picture_hatches_uncovered_regions():
    # dcp-semantics s.5.4: t (10 elements) saved as one chunk [0,5): loading leaves 5..9 stale
    md = Metadata({"t": tsm((10,), [((0,), (5,))])})
    load = plan_load(md, {"t": wb.dtensor_layout((10,), (2,), "S(0)")})
    pic = reshard_data(md, load, "t", rank=1)  # rank 1 wants [5:10]: nothing covers it
    assert rects(pic.of_kind("uncovered")) == [(5, 0, 5, 1)]
    assert pic.of_kind("read") == []
    assert "uncovered, stale after load: [5:10]" in pic.notes
    ax = plot_reshard(md, load, "t", rank=1)
    assert "xx" in [c.get_hatch() for c in ax.collections]
    rank0 = reshard_data(md, load, "t", rank=0)
    assert rank0.of_kind("uncovered") == [] and len(rank0.of_kind("read")) == 1
    # the uncovered region matches the diagnosis
    assert [p.region for p in load.problems if p.kind == "uncovered"] == [Chunk((5,), (5,))]


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    dropped=st.sets(st.integers(0, 35), max_size=12),
    extra=st.lists(
        st.tuples(st.integers(0, 11), st.integers(0, 11), st.integers(1, 6)), max_size=3
    ),
    mesh=st.sampled_from([(2,), (4,), (2, 2)]),
    rank=st.integers(0, 3),
)
def test_reshard_picture_holes_are_geometrys_uncovered_regions(
    rows, cols, dropped, extra, mesh, rank
):
    """The holes drawn for a rank (found from the saved chunks that meet its box) are exactly
    `geometry.uncovered` of each of its chunks by every saved chunk, whatever is missing or
    overlapping."""
    from workbench.geometry import uncovered

    shape = (12, 12)
    hs, ws = -(-12 // rows), -(-12 // cols)
    chunks = [
        ((r * hs, c * ws), (min(hs, 12 - r * hs), min(ws, 12 - c * ws)))
        for r in range(rows)
        for c in range(cols)
        if r * cols + c not in dropped and r * hs < 12 and c * ws < 12
    ]
    chunks += [((y, x), (min(n, 12 - y), min(n, 12 - x))) for y, x, n in extra]
    md = Metadata({"t": tsm(shape, chunks or [((0, 0), (1, 1))])})
    layout = wb.dtensor_layout(shape, mesh, ", ".join(["S(0)", "S(1)"][: len(mesh)]))
    rank %= math.prod(mesh)
    load = plan_load(md, {"t": layout})
    pic = reshard_data(md, load, "t", rank=rank)
    saved = md.state_dict_metadata["t"].chunks
    want = [
        h for c in load.layouts["t"].chunks(rank) if not c.is_empty for h in uncovered(c, saved)
    ]
    assert rects(pic.of_kind("uncovered")) == [
        (h.offsets[1], h.offsets[0], h.sizes[1], h.sizes[0]) for h in want
    ]


def test_reshard_picture_shows_a_strided_destinations_real_rows():
    # dcp-semantics s.3 [run]: arange(8) saved plain, loaded into SS(0,2) on mesh 2: rank 0 should
    # hold [0,1,4,5] but DCP reads its box [0:4].
    save = plan_save({"x": wb.tensor_layout((8,), 1)})
    load = plan_load(save.metadata, {"x": wb.dtensor_layout((8,), (2,), "SS(0,2)")})
    pic = reshard_data(save, load, "x", rank=0)
    assert rects(pic.of_kind("target")) == [(0, 0, 4, 1)]
    assert pic.of_kind("target")[0].linestyle == "dashed"
    assert rects(pic.of_kind("held")) == [(0, 0, 2, 1), (4, 0, 2, 1)]
    assert rects(pic.of_kind("read")) == [(0, 0, 4, 1)]
    assert any(
        n.startswith("DCP reads the box [0:4] but rank 0 holds dim 0: 0:2, 4:6") for n in pic.notes
    )
    ax = plot_reshard(save, load, "x", rank=0)
    assert [c.get_hatch() for c in ax.collections].count("//") == 1


def test_reshard_of_a_3d_tensor_draws_the_ranks_slab_and_notes_torch_errors():
    save = plan_save({"w": wb.dtensor_layout((4, 4, 6), (3,), "S(2)")})
    load = plan_load(save.metadata, {"w": wb.dtensor_layout((4, 4, 6), (2,), "S(2)")})
    pic = reshard_data(save, load, "w", rank=1)  # rank 1 wants dim 2 in 3:6 -> slab dim 2 = 3
    assert pic.title == "w: rank 1's reads (dim 2 = 3)"
    assert rects(pic.of_kind("read")) == [(0, 0, 4, 4)]  # only saved #1 ([2:4] of dim 2) holds 3
    bad = plan_load(save.metadata, {"w": wb.dtensor_layout((4, 4, 8), (2,), "S(2)")})
    pic = reshard_data(save, bad, "w", rank=0)
    assert pic.of_kind("read") == []
    assert (
        "torch raises: Size mismatch between saved torch.Size([4, 4, 6]) and current: "
        "torch.Size([4, 4, 8]) for w" in pic.notes
    )


def test_reshard_bad_input():
    save, load = _reshard()
    with pytest.raises(PlanError, match=r"^w: rank 4 is not in the load world of 4 ranks"):
        reshard_data(save, load, "w", rank=4)
    with pytest.raises(MetadataError, match="^v: key 'v' is not in the checkpoint"):
        reshard_data(save, load, "v")
    with pytest.raises(MetadataError, match="is not checkpoint metadata"):
        reshard_data(object(), load, "w")


# ----------------------------------------------------------------------------- mesh
def test_mesh_picture_places_ranks_row_major():
    pic = mesh_data((2, 4))
    assert rects(pic.tiles)[5] == (1, 1, 1, 1)
    assert [t.label for t in pic.tiles][5] == "r5\n(1, 1)"
    assert [t.face for t in pic.tiles] == rank_colors(8)
    three = mesh_data((2, 2, 3))
    assert (three.width, three.height) == (3, 4) and three.tiles[7].label == "r7\n(1, 0, 1)"
    layout = wb.dtensor_layout((8, 6), (2, 4), "S(0), S(1)", world_size=10)  # cols 2,2,2,0
    pic = mesh_data(layout)
    assert [t.hatch for t in pic.tiles] == [None, None, None, ".."] * 2
    assert pic.tiles[1].label == "r1\n(0, 1)\n[0:4, 2:4]"
    assert pic.notes == ("empty shards: r3,7", "outside the mesh (no chunk): r8-9")
    ax = plot_mesh(layout)
    assert drawn_paths(ax) == 8 and [c.get_hatch() for c in ax.collections] == [
        None,
        "..",
        None,
        "..",
    ]
    with pytest.raises(LayoutError, match=r"mesh shape \(2, 0\) has a dim below 1"):
        mesh_data((2, 0))


# ----------------------------------------------------------------------------- I/O charts
def test_traffic_and_bytes_per_rank_come_from_the_plans_io():
    save, load = _reshard()
    data = traffic_data(load)
    # rank (a, b) reads rows 4b:4b+4 -> saved chunks 2b, 2b+1, whole chunks of 48 bytes
    want = np.array([[48, 48, 0, 0], [0, 0, 48, 48], [48, 48, 0, 0], [0, 0, 48, 48]])
    np.testing.assert_array_equal(data.matrix, want)
    assert data.files == tuple(f"__{i}_0.distcp" for i in range(4)) and data.writers == (0, 1, 2, 3)
    ax = plot_traffic(load)
    images = [a for a in ax.get_images() if isinstance(a, AxesImage)]
    assert len(images) == 1 and images[0].get_array().mask.sum() == 8  # blank where nothing read
    assert len(ax.figure.axes) == 2  # the heatmap and its colour bar

    bars = bytes_per_rank_data(load)
    np.testing.assert_array_equal(bars.values, [96, 96, 96, 96])
    np.testing.assert_array_equal(bars.reference, [48, 48, 48, 48])
    ax = plot_bytes_per_rank(load)
    # loaded and needed are two bar series (the needed bytes were a dashed tick before)
    assert drawn_paths(ax) == 8
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "loaded (whole saved chunks)",
        "needed (what the rank keeps)",
    ]
    assert ax.get_title() == "load: 384 B loaded, 192 B needed, 2.0x what is needed"
    bars = bytes_per_rank_data(save)
    np.testing.assert_array_equal(bars.values, save.bytes_written)
    assert (
        bars.reference is None
        and bars.title == "save: 192 B written by 4 ranks (at most 48 B per rank)"
    )
    with pytest.raises(PlanError, match="neither a save nor a load result"):
        bytes_per_rank_data(object())


# ----------------------------------------------------------------------------- hygiene
def test_plots_never_import_pyplot():
    code = (
        "import sys, workbench.plots as p, workbench as wb; "
        "import io; p.plot_layout(wb.dtensor_layout((4, 4), (2,), 'S(0)')).figure.savefig("
        "io.BytesIO(), format='png'); "
        "sys.exit('matplotlib.pyplot' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_4096_chunks_draw_as_a_few_collections():
    layout = wb.dtensor_layout((4096, 4096), (64, 64), "S(0), S(1)")
    ax = plot_layout(layout)
    assert drawn_paths(ax) == 4096 and len(ax.collections) == 1 and len(ax.texts) == 0
    FigureCanvasAgg(ax.figure).draw()  # really rendered (a bare Figure's canvas draws nothing)
    pixels = np.asarray(ax.figure.canvas.buffer_rgba())
    assert len(np.unique(pixels.reshape(-1, 4), axis=0)) > 1000  # thousands of rank colours


def test_zero_size_tensors_and_bytes_entries():
    pic = layout_data(wb.dtensor_layout((0, 4), (2,), "S(1)"))
    assert pic.tiles == () and pic.notes == ("empty shards: r0 [0:0, 0:2], r1 [0:0, 2:4]",)
    ax = plot_layout(wb.dtensor_layout((0, 4), (2,), "S(1)"))
    assert ax.get_ylim() == (1, 0) and drawn_paths(ax) == 0
    with pytest.raises(LayoutError, match="^<input>: is a bytes entry"):
        layout_data(wb.bytes_layout(2))


def test_reshard_that_torch_refuses_draws_no_holes():
    # saved (4,4) but wanted (4,6): torch raises Size mismatch, so nothing is read and no region
    # is "stale": the picture notes the error instead of hatching the whole chunk
    save = plan_save({"w": wb.tensor_layout((4, 4), 1)})
    load = plan_load(save.metadata, {"w": wb.tensor_layout((4, 6), 1)})
    pic = reshard_data(save, load, "w")
    assert pic.of_kind("uncovered") == [] and pic.of_kind("read") == []
    assert rects(pic.of_kind("target")) == [(0, 0, 6, 4)] and pic.width == 6
    assert pic.notes[-1].startswith("torch raises: Size mismatch between saved torch.Size([4, 4])")


def test_zoom_keeps_the_ranks_neighbourhood_only():
    save, load = _reshard()
    # rank 1 wants rows 4:8, cols 0:3 -> window grown by half: cols 0:4 (clipped at 0), rows 2:8
    pic = reshard_data(save, load, "w", rank=1, zoom=True)
    assert pic.window == (0, 2, 4, 8)
    assert [t.label for t in pic.of_kind("saved")] == ["#1 r1", "#2 r2", "#3 r3"]
    assert rects(pic.of_kind("read")) == [(0, 4, 3, 2), (0, 6, 3, 2)]
    # tiles are clipped to the window (their visible part): labels sit where they are seen
    assert rects(pic.of_kind("saved")) == [(0, 2, 4, 2), (0, 4, 4, 2), (0, 6, 4, 2)]
    assert sorted(rects(pic.of_kind("wanted"))) == [(0, 2, 3, 2), (3, 2, 1, 2), (3, 4, 1, 4)]
    ax = plot_reshard(save, load, "w", rank=1, zoom=True, ax=Figure().add_subplot())
    assert ax.get_xlim() == (0, 4) and ax.get_ylim() == (8, 2)
    # 4096 saved chunks and 4096 destination chunks: the zoomed picture keeps ~1/32 of them
    big_save = plan_save({"w": wb.dtensor_layout((4096, 4096), (4096,), "S(0)")})
    big_load = plan_load(
        big_save.metadata, {"w": wb.dtensor_layout((4096, 4096), (64, 64), "S(0), S(1)")}
    )
    pic = reshard_data(big_save, big_load, "w", rank=65, zoom=True)
    assert pic.window == (32, 32, 160, 160)
    assert len(pic.of_kind("saved")) == 128 and len(pic.of_kind("read")) == 64
    assert len(pic.of_kind("wanted")) == 3 * 3 - 1  # the 64-wide cells meeting [32:160)^2


@settings(max_examples=50)
@given(
    st.lists(st.integers(1, 12), min_size=2, max_size=2),
    st.lists(st.integers(1, 4), min_size=1, max_size=2),
    st.data(),
)
def test_layout_tiles_cover_the_tensor_once(shape, mesh, data):
    placements = [data.draw(st.sampled_from(["R", "S(0)", "S(1)"])) for _ in mesh]
    layout = wb.dtensor_layout(shape, mesh, placements)
    pic = layout_data(layout)
    grid = np.zeros(shape, dtype=int)
    for t in pic.tiles:
        grid[t.y : t.y + t.h, t.x : t.x + t.w] += 1
    assert (grid == 1).all()  # replicas are one tile; every element in exactly one tile
    holders = sorted(r for t in pic.tiles for r in t.ranks)
    empties = [r for r in range(layout.world_size) if layout.chunks(r)[0].is_empty]
    assert sorted(holders + empties) == list(range(layout.world_size))


# ----------------------------------------------------------------------------- fast widget path
WIDGET = dict(figsize=(6.4, 4.2), dpi=90, margins=dict(left=0.1, right=0.7, top=0.92, bottom=0.27))


def _pixels(picture, raster: bool):
    """(Axes, RGB pixels) of ``picture`` drawn as the widget draws it, paths or rasters."""
    fig = Figure(figsize=WIDGET["figsize"], dpi=WIDGET["dpi"])
    fig.subplots_adjust(**WIDGET["margins"])
    ax = draw_picture(picture, fig.add_subplot(), raster=raster)
    FigureCanvasAgg(fig).draw()
    return ax, np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def _big_reshard():
    save = plan_save({"w": wb.dtensor_layout((4096, 4096), (4096,), "S(0)")})
    load = plan_load(save.metadata, {"w": wb.dtensor_layout((4096, 4096), (64, 64), "S(0), S(1)")})
    return save, load


def _rastered(ax) -> int:
    return sum(len(a.boxes) for a in ax.artists if isinstance(a, plots._TileRaster))


def test_raster_paints_the_pixels_the_paths_paint():
    save, load = _big_reshard()
    uneven = plan_save({"w": wb.dtensor_layout((1000, 3000), (32, 16), "S(1), S(0)")})
    cases = [  # (picture, share of identical pixels at least)
        # 4096 distinct rank colours, no outlines: a flipped or shifted raster would not match
        (layout_data(wb.dtensor_layout((4096, 4096), (64, 64), "S(0), S(1)")), 0.999),
        # 600 tiles of several pixels each
        (layout_data(wb.dtensor_layout((40, 60), (20, 30), "S(0), S(1)")), 0.999),
        # pale saved rows under 4095 hairline outlines, the rank's reads and chunk as paths:
        # only the outlines' anti-aliasing differs
        (reshard_data(save, load, "w", rank=70), 0.85),
        (
            reshard_data(
                uneven,
                plan_load(
                    uneven.metadata, {"w": wb.dtensor_layout((1000, 3000), (24, 24), "S(0), S(1)")}
                ),
                "w",
                rank=30,
            ),
            0.9,
        ),
    ]
    for pic, share in cases:
        vector_ax, vector = _pixels(pic, raster=False)
        raster_ax, raster = _pixels(pic, raster=True)
        assert drawn_paths(vector_ax) == len(pic.tiles) and _rastered(vector_ax) == 0
        dense = sum(len(t) for t in _runs(pic.tiles) if len(t) > RASTER_MIN)
        assert dense > 0 and _rastered(raster_ax) == dense
        assert drawn_paths(raster_ax) == len(pic.tiles) - dense
        diff = np.abs(vector - raster).max(axis=2)
        assert (diff <= 8).mean() >= share
        assert (diff <= 64).mean() >= 0.995  # the rest: faint hairline shades
        # more than 12 chunk edges per axis: a few round integer ticks, not one per edge
        for axis, (lo, hi) in (
            (raster_ax.xaxis, raster_ax.get_xlim()),
            (raster_ax.yaxis, sorted(raster_ax.get_ylim())),
        ):
            ticks = [t for t in axis.get_ticklocs() if lo <= t <= hi]
            assert 3 <= len(ticks) <= 6 and all(float(t).is_integer() for t in ticks)
    ax = draw_picture(cases[0][0], Figure().add_subplot())
    assert [t for t in ax.get_xticks() if t <= 4096] == [0, 1000, 2000, 3000, 4000]


def _runs(tiles):
    runs, key = [], None
    for t in tiles:
        if (t.hatch, t.linewidth, t.linestyle) != key:
            runs.append([])
            key = (t.hatch, t.linewidth, t.linestyle)
        runs[-1].append(t)
    return runs


def test_picture_png_gives_the_widget_its_figure_and_png():
    save, load = _big_reshard()
    pic = reshard_data(save, load, "w", rank=4095)
    fig, png = picture_png(pic, **WIDGET)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and fig.axes[0].get_title() == pic.title
    shown = (imread(io.BytesIO(png))[..., :3] * 255).round().astype(int)
    assert shown.shape == (378, 576, 3)  # 6.4 x 4.2 inches at 90 dpi
    _, vector = _pixels(pic, raster=False)
    assert (np.abs(shown - vector).max(axis=2) <= 8).mean() >= 0.85
    # rank 4095's chunk is the bottom right cell: the top of its thick black outline is there,
    # where rank 0's picture has only a grey hairline
    (x0, y0), (x1, _) = fig.axes[0].transData.transform([(4032, 4032), (4096, 4096)])
    edge = np.s_[378 - round(y0) - 1 : 378 - round(y0) + 2, round(x0) + 1 : round(x1) - 1]
    other = (
        (
            imread(io.BytesIO(picture_png(reshard_data(save, load, "w", rank=0), **WIDGET)[1]))[
                ..., :3
            ]
            * 255
        )
        .round()
        .astype(int)
    )
    assert (shown[edge].sum(axis=2) < 100).mean() > 0.5
    assert (other[edge].sum(axis=2) < 100).mean() == 0
    # a small picture has no dense run: paths only, still a PNG
    small = reshard_data(*_reshard(), "w", rank=1)
    fig, png = picture_png(small)
    assert png.startswith(b"\x89PNG") and drawn_paths(fig.axes[0]) == len(small.tiles)
    assert _rastered(fig.axes[0]) == 0
    empty = picture_png(Picture((), 4, 0))[1]
    assert empty.startswith(b"\x89PNG")


def test_reshard_layers_are_computed_once_and_never_stale():
    save, load = _big_reshard()
    picture_data._LAYERS.clear()
    five = reshard_data(save, load, "w", rank=5)
    six = reshard_data(save, load, "w", rank=6)
    # the saved tiles are the very same objects: computed once for every rank
    assert all(a is b for a, b in zip(five.of_kind("saved"), six.of_kind("saved")))
    # each rank's own chunk is its target, not among the wanted outlines
    assert len(six.of_kind("wanted")) == 4095 and rects(six.of_kind("target")) == [(384, 0, 64, 64)]
    assert (384, 0, 64, 64) in rects(five.of_kind("wanted"))
    assert (384, 0, 64, 64) not in rects(six.of_kind("wanted"))
    picture_data._LAYERS.clear()
    assert reshard_data(save, load, "w", rank=6) == six  # cold == warm
    assert reshard_data(save, load, "w", rank=5) == five
    # another checkpoint of the same shape (new objects): its own saved tiles
    other = plan_save({"w": wb.dtensor_layout((4096, 4096), (64,), "S(1)")})
    cols = reshard_data(other, load, "w", rank=5).of_kind("saved")
    assert rects(cols) == [(64 * i, 0, 64, 4096) for i in range(64)]
    # other views of the same sources: their own entries, the cache stays bounded
    for dims in [(1, 0), (0, 1)]:
        for zoom in (False, True):
            flipped = reshard_data(save, load, "w", rank=5, dims=dims, zoom=zoom)
            assert flipped.xlabel == f"dim {dims[1]}"
    assert rects(reshard_data(save, load, "w", rank=5, dims=(1, 0)).of_kind("saved"))[:1] == [
        (0, 0, 1, 4096)
    ]
    assert len(picture_data._LAYERS) <= picture_data._LAYERS_KEPT


# ----------------------------------------------------------------------------- torch inputs
def test_pictures_accept_torch_metadata():
    from workbench.torch_bridge import to_torch

    save = wb.plan_save({"w": wb.dtensor_layout((8, 4), (2,), "S(0)")})
    tmd = to_torch(save.metadata)
    ours = picture_data.layout_data(save.metadata, fqn="w")
    theirs = picture_data.layout_data(tmd, fqn="w")
    assert theirs == ours and len([t for t in ours.tiles if t.kind == "chunk"]) == 2
    pic = picture_data.reshard_data(tmd, wb.dtensor_layout((8, 4), (4,), "S(0)"), "w", 1)
    assert pic == picture_data.reshard_data(
        save.metadata, wb.dtensor_layout((8, 4), (4,), "S(0)"), "w", 1
    )
