"""Pictures: layouts, checkpoints, reshards, meshes and I/O, drawn with matplotlib.

Every picture is first computed as plain data by `workbench.picture_data` (a `Picture` of `Tile`
rectangles, or a small record for the I/O charts); the ``plot_*`` functions here draw it in a
short loop with one ``PolyCollection`` per run of tiles sharing a hatch, so a tensor with 4096
chunks draws in a few tens of milliseconds (``benchmarks/bench_plots.py``). Widgets call
`picture_png`, which paints dense runs of tiles as one image each on the output's pixel grid (the
same pixels up to the outlines' anti-aliasing, at about half the cost).

Uses matplotlib's object API only (``matplotlib.figure.Figure``): no pyplot state, no
``plt.show()``. ``plot_*`` functions take ``ax=None`` and return the Axes (a Figure for
multi-panel pictures). Never imported by ``workbench``'s ``__init__``; imports no torch, pandas
or torch bridge.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from functools import lru_cache
from itertools import repeat
from operator import attrgetter, ne

import numpy as np

from .errors import missing_extra

try:
    import matplotlib  # noqa: F401 - the pictures' one optional library, checked once here
except ImportError as e:
    raise missing_extra(e, "lab", "workbench.plots") from None
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PolyCollection
from matplotlib.colors import LinearSegmentedColormap, Normalize, to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from .colors import RANK_SCALE, text_color
from .errors import LayoutError
from .formatting import byte_unit, format_bytes
from .picture_data import (
    MAX_LABELS,
    MAX_PANELS,
    Picture,
    bytes_per_rank_data,
    layout_panels,
    mesh_data,
    place_labels,
    reshard_data,
    traffic_data,
)

__all__ = [
    "draw_picture",
    "picture_png",
    "plot_layout",
    "plot_reshard",
    "plot_mesh",
    "plot_traffic",
    "plot_bytes_per_rank",
]

RASTER_MIN = 256  # draw_picture(raster=True) paints longer runs of tiles as one image


def plot_layout(
    source,
    ax=None,
    dims=(0, 1),
    *,
    fqn: str | None = None,
    at=None,
    max_labels: int = MAX_LABELS,
    max_panels: int = MAX_PANELS,
):
    """Draw every rank's chunk of a `Layout` (or a checkpoint entry, see `layout_data`).

    1-D and 2-D tensors (and N-D with ``at`` given) draw into one Axes, which is returned. For an
    N-D tensor without ``at``, each slab of the other dims (`layout_slabs`) gets a panel of a new
    Figure (``ax`` must be None), which is returned; at most ``max_panels`` panels are drawn and a
    note says when more exist.
    """
    panels = layout_panels(
        source, dims, fqn=fqn, at=at, max_labels=max_labels, max_panels=max_panels
    )
    if panels.single:
        return draw_picture(panels.pictures[0], ax)
    if ax is not None:
        raise LayoutError(
            fqn,
            f"a {panels.ndim}-d tensor draws as small multiples, one panel per "
            "slab, which need a Figure, but an Axes was given",
            "ax=None, or at={dim: index} for one slab",
            "Pass at= to draw one slab.",
        )
    ncols = min(4, len(panels.pictures))
    nrows = math.ceil(len(panels.pictures) / ncols)
    fig = Figure(figsize=(3.2 * ncols + 1.6, 2.8 * nrows + 0.6), layout="constrained")
    for i, (pic, name) in enumerate(zip(panels.pictures, panels.slabs)):
        ax_i = fig.add_subplot(nrows, ncols, i + 1)
        draw_picture(pic, ax_i, notes=False, legend=False)
        ax_i.set_title(name, fontsize=9)
    notes = panels.notes
    fig.suptitle(panels.title + ("\n" + "\n".join(notes) if notes else ""), fontsize=9)
    return fig


def plot_reshard(
    metadata_or_save_result,
    load_result_or_layout,
    fqn: str,
    rank: int = 0,
    ax=None,
    *,
    dims=(0, 1),
    at=None,
    zoom: bool = False,
    max_labels: int = MAX_LABELS,
):
    """Draw the saved chunks and the destination chunks of ``fqn`` on one grid, ``rank``'s read
    items lit and numbered in DCP's order (see `reshard_data`); returns the Axes."""
    return draw_picture(
        reshard_data(
            metadata_or_save_result,
            load_result_or_layout,
            fqn,
            rank,
            dims=dims,
            at=at,
            zoom=zoom,
            max_labels=max_labels,
        ),
        ax,
    )


def plot_mesh(source, ax=None, *, max_labels: int = 256):
    """Draw `mesh_data` (a mesh shape or a `Layout`); returns the Axes."""
    return draw_picture(
        mesh_data(source, max_labels=max_labels), ax, aspect="equal", edge_ticks=False
    )


# cells a side of the traffic heatmap before blocks of ranks / files are summed
_TRAFFIC_CELLS = 2048


def plot_traffic(load_result, ax=None, *, cells: int = _TRAFFIC_CELLS):
    """Heatmap of `traffic_data`: load ranks down, files across, colour = bytes loaded on a
    sequential scale from 0 (light to dark blue, in the binary unit of the largest cell; blank
    where a rank reads nothing from a file; past ``cells`` ranks or files a cell sums a block of
    them); returns the Axes. A static picture (the report) passes about its pixel count: more
    cells than pixels are subsampled when drawn, and a sparse diagonal loses dots."""
    io = load_result.io
    n_ranks, n_files = len(io.reads), len(io.files)
    # past `cells` a side, cells sum blocks of ranks x files, from the (rank, file) pairs: the
    # dense matrix of 16,384 ranks x 16,384 files is 2 GB and imshow's copies of it 20 GB
    kr, kf = max(1, -(-n_ranks // cells)), max(1, -(-n_files // cells))
    if kr == 1 and kf == 1:
        data = traffic_data(load_result)
        matrix, files = data.matrix, data.files
    else:
        matrix = np.zeros((-(-n_ranks // kr), -(-n_files // kf)), np.int64)
        np.add.at(matrix, (io.pair_rank // kr, io.pair_file // kf), io.pair_bytes)
        files = io.files
    ax = _new_axes(ax)
    factor, unit = byte_unit(matrix.max(initial=0))
    shown = np.ma.masked_equal(matrix, 0) / factor
    im = ax.imshow(
        shown,
        aspect="auto",
        interpolation="nearest",
        # Blues from its 15% shade: the smallest traffic stays visible against the blank cells
        cmap=LinearSegmentedColormap.from_list(
            "traffic", colormaps["Blues"](np.linspace(0.15, 1.0, 256))
        ),
        # from 0, so equal cells are not stretched over the whole scale
        norm=Normalize(0, max(float(shown.max()) if shown.count() else 0.0, 1e-12)),
        extent=(-0.5, n_files - 0.5, n_ranks - 0.5, -0.5),
    )
    bar = ax.figure.colorbar(im, ax=ax, label=f"{unit} loaded")
    bar.formatter.set_useOffset(False)
    if n_files <= 32:
        ax.set_xticks(range(n_files), files, rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("file")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("file (index in LoadPlanResult.io.files: by writer rank, then name)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("load rank")
    binned = f" (a cell sums {kr} ranks x {kf} files)" if kr > 1 or kf > 1 else ""
    ax.set_title(
        f"rank-to-file traffic: {n_ranks} ranks, {n_files} files, "
        f"{format_bytes(matrix.sum())} loaded{binned}",
        fontsize=9,
    )
    return ax


# past this many ranks the bars of `plot_bytes_per_rank` are drawn as one stepped outline a series
_BAR_RANKS = 1024


def plot_bytes_per_rank(result, ax=None):
    """Bar chart of `bytes_per_rank_data`: for a load, bytes loaded (light) and bytes needed
    (dark, narrower, in front) per rank, two quantities in one legend; for a save, bytes
    written. The axis is in the binary unit of the largest bar (no offset, no exponent). One
    PolyCollection per quantity (past 1024 ranks one stepped outline each, bars being narrower
    than a pixel), fast for thousands of ranks; returns the Axes."""
    data = bytes_per_rank_data(result)
    ax = _new_axes(ax)
    x = np.asarray(data.ranks, dtype=np.float64)
    top = max(
        float(data.values.max(initial=0)),
        float(data.reference.max(initial=0)) if data.reference is not None else 0.0,
    )
    factor, unit = byte_unit(top)
    series = [(data.values, 0.4, data.color, data.label)]
    if data.reference is not None:
        series.append((data.reference, 0.22, data.reference_color, data.reference_label))
    for v, half, color, label in series:
        v = v / factor
        if len(x) > _BAR_RANKS:
            # bars narrower than a pixel: each series as one stepped outline (the same picture,
            # a 16,384-rank chart draws in a tenth of the time of 32,768 rectangles)
            edges = np.append(x - 0.5, x[-1] + 0.5)
            step = np.column_stack([np.repeat(edges, 2)[1:-1], np.repeat(v, 2)])
            outline = np.vstack([[edges[0], 0.0], step, [edges[-1], 0.0]])
            ax.add_collection(
                PolyCollection([outline], facecolors=color, edgecolors="none", label=label)
            )
            continue
        verts = np.stack(
            [
                np.column_stack([x - half, np.zeros_like(v)]),
                np.column_stack([x - half, v]),
                np.column_stack([x + half, v]),
                np.column_stack([x + half, np.zeros_like(v)]),
            ],
            axis=1,
        )
        ax.add_collection(PolyCollection(verts, facecolors=color, edgecolors="none", label=label))
    ax.set_xlim(-0.6, len(x) - 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # headroom for the legend above the bars, which are often all of one height
    ax.set_ylim(0, max(top / factor, 1.0) * (1.25 if data.reference is not None else 1.05))
    ax.yaxis.get_major_formatter().set_useOffset(False)
    ax.set_xlabel("rank")
    ax.set_ylabel(f"{data.ylabel} ({unit})")
    ax.set_title(data.title, fontsize=9)
    if data.reference is not None:
        ax.legend(loc="upper center", ncols=2, fontsize=7, frameon=False)
    return ax


# ----------------------------------------------------------------------------- drawing
@lru_cache(maxsize=32768)
def _rgba(color: str | None, alpha: float) -> tuple[float, float, float, float]:
    """RGBA of a hex colour with ``alpha``; transparent for None. Cached: thousands of tiles
    share a few colours (a picture of 4096 writers has some 8192 colour-alpha pairs)."""
    if not color:
        return (0.0, 0.0, 0.0, 0.0)
    if len(color) == 7 and color[0] == "#":  # our hex colours: 10x faster than to_rgba
        v = int(color[1:], 16)
        return ((v >> 16) / 255, ((v >> 8) & 255) / 255, (v & 255) / 255, alpha)
    return to_rgba(color, alpha)


def _new_axes(ax):
    if ax is not None:
        return ax
    return Figure(figsize=(7.5, 5.0), layout="constrained").add_subplot()


class _TileRaster(Artist):
    """Many tiles drawn as one image on the output's own pixel grid, painted at draw time (so it
    follows the final layout and dpi): a tile covers the pixels its edges round to (at least
    one), later tiles on top; an outline is the one pixel where a tile meets another tile or the
    blank, in the colour of the later of the two. What Agg draws of thousands of few-pixel tiles,
    at a fraction of the cost of their paths; dashes and line widths are not drawn."""

    def __init__(
        self, boxes: np.ndarray, faces: np.ndarray, edges: np.ndarray | None, zorder: float
    ):
        super().__init__()
        self.boxes = boxes  # (n, 4) x0, y0, x1, y1 in data units
        blank = np.zeros((1, 4))
        self._faces = np.rint(np.vstack([blank, faces]) * 255).astype(np.uint8)
        self._edges = (
            None if edges is None else np.rint(np.vstack([blank, edges]) * 255).astype(np.uint8)
        )
        self.set_zorder(zorder)

    def draw(self, renderer):
        ax, b = self.axes, self.boxes
        x0, y0 = round(ax.bbox.x0), round(ax.bbox.y0)
        w, h = round(ax.bbox.x1) - x0, round(ax.bbox.y1) - y0
        if not self.get_visible() or w <= 0 or h <= 0 or not len(b):
            return
        lo, hi = ax.transData.transform(b[:, :2]), ax.transData.transform(b[:, 2:])
        # pixel columns from the left, rows from the top; y may run either way
        cols = np.sort(np.column_stack([lo[:, 0], hi[:, 0]]) - x0, axis=1)
        rows = np.sort(y0 + h - np.column_stack([lo[:, 1], hi[:, 1]]), axis=1)
        span = []
        for px, n in ((rows, h), (cols, w)):
            px = np.rint(np.clip(px, -1, n + 1)).astype(np.int64)
            px[:, 1] = np.maximum(px[:, 1], px[:, 0] + 1)  # a sub-pixel tile still shows
            span.append(np.clip(px, 0, n))
        idx = np.zeros((h, w), dtype=np.int32)  # 1 + the topmost tile at each pixel, 0: blank
        for i, r0, r1, c0, c1 in zip(
            range(1, len(b) + 1), *span[0].T.tolist(), *span[1].T.tolist()
        ):
            idx[r0:r1, c0:c1] = i
        img = self._faces[idx]
        if self._edges is not None:
            edge = np.zeros_like(idx)
            edge[1:] = np.where(idx[1:] != idx[:-1], np.maximum(idx[1:], idx[:-1]), 0)
            edge[:, 1:] = np.maximum(
                edge[:, 1:],
                np.where(idx[:, 1:] != idx[:, :-1], np.maximum(idx[:, 1:], idx[:, :-1]), 0),
            )
            lines = self._edges[edge]
            drawn = lines[..., 3] > 0
            img[drawn] = lines[drawn]
        gc = renderer.new_gc()
        gc.set_clip_rectangle(ax.bbox)
        renderer.draw_image(gc, x0, y0, img[::-1])  # Agg wants the bottom row first
        gc.restore()


def draw_picture(
    picture: Picture,
    ax=None,
    *,
    notes: bool = True,
    legend: bool = True,
    aspect: str | None = None,
    edge_ticks: bool = True,
    raster: bool = False,
):
    """Draw a `Picture` into ``ax`` (a new Figure's Axes when None) and return the Axes: one
    ``PolyCollection`` per run of consecutive tiles with the same hatch and line (drawing order
    kept), one text per labelled tile, the legend beside the Axes and the notes under it.

    ``raster``: a run of more than `RASTER_MIN` unhatched tiles is drawn as one image painted on
    the output's pixel grid instead (`picture_png`, for widgets: several times faster for
    thousands of tiles, the same pixels up to outline widths; vector output keeps paths)."""
    ax = _new_axes(ax)
    box = _draw_tiles(ax, picture.tiles, raster)
    _set_frame(ax, picture, box, aspect, edge_ticks)
    _draw_labels(ax, picture)
    if legend and picture.legend:
        _draw_legend(ax, picture.legend)
    if legend and picture.scale:
        _draw_scale(ax, picture.scale)
    if notes and picture.notes:  # under the x label, where a legend never sits
        ax.annotate(
            "\n".join(picture.notes),
            (0.0, 0.0),
            xycoords="axes fraction",
            xytext=(0, -34),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize=7,
        )
    return ax


def _draw_tiles(ax, tiles, raster: bool) -> np.ndarray:
    """The tiles as collections (or raster images) in drawing order; returns their boxes as an
    (n, 4) array of ``x0, y0, x1, y1``."""
    # the tiles as columns in C-level passes (thousands of tiles: per-tile Python is the cost)
    fields = ("x", "y", "w", "h", "face", "alpha", "edge", "hatch", "linewidth", "linestyle")
    x, y, w, h, face, alpha, edge, *line = (
        zip(*map(attrgetter(*fields), tiles)) if tiles else ((),) * len(fields)
    )
    box = np.array([x, y, x, y], dtype=np.float64).T.reshape(-1, 4)
    box[:, 2:] += np.array([w, h], dtype=np.float64).T.reshape(-1, 2)
    faces = np.array(list(map(_rgba, face, alpha)), dtype=np.float64).reshape(-1, 4)
    edges = np.array(list(map(_rgba, edge, repeat(1.0))), dtype=np.float64).reshape(-1, 4)
    # one collection per run of tiles sharing hatch, line width and style: per-element widths
    # or styles make matplotlib rescale dashes per tile (slow for thousands)
    keys = list(zip(*line))
    starts = np.flatnonzero([True, *map(ne, keys[1:], keys)]).tolist() if keys else []
    for start, end in zip(starts, starts[1:] + [len(keys)]):
        hatch, width, style = keys[start]
        zorder = 1 + start / max(len(tiles), 1)
        run = slice(start, end)
        if raster and end - start > RASTER_MIN and hatch is None:
            ax.add_artist(
                _TileRaster(box[run], faces[run], edges[run] if width > 0 else None, zorder)
            )
        else:
            verts = box[run][:, [[0, 1], [2, 1], [2, 3], [0, 3]]]  # each tile's 4 corners
            ax.add_collection(
                PolyCollection(
                    verts,
                    facecolors=faces[run],
                    edgecolors=edges[run],
                    linewidths=width,
                    linestyles=style,
                    hatch=hatch,
                    zorder=zorder,
                ),
                autolim=False,
            )  # the limits are the tensor's, set by _set_frame
    return box


class _LabelPlacer(Artist):
    """Places a picture's labels when the Axes is drawn, with `picture_data.place_labels` on the
    Axes' real pixel size, limits (a later ``set_xlim`` zoom included) and the renderer's text
    metrics: it shows, moves or hides one `Text` per labelled tile (drawn after it, zorder 3), so
    no two drawn labels overlap and none spills out of its tile. Draws nothing itself."""

    def __init__(self, picture: Picture, texts: dict, fontsize: float):
        super().__init__()
        self.picture, self.texts, self.fontsize = picture, texts, fontsize
        self.set_zorder(2.99)

    def place(self, renderer=None) -> None:
        ax = self.axes
        (xa, xb), (ya, yb) = ax.get_xlim(), ax.get_ylim()
        window = (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))
        width, height = ax.bbox.width, ax.bbox.height
        if renderer is None:  # before any draw: the estimate at the figure's dpi
            font_px, measure = self.fontsize * ax.figure.dpi / 72, None
        else:
            font_px = renderer.points_to_pixels(self.fontsize)
            probe = Text(0, 0, "", fontsize=self.fontsize, figure=ax.figure)
            sizes: dict[str, tuple[float, float]] = {}

            def measure(text):
                if text not in sizes:
                    probe.set_text(text)
                    bb = probe.get_window_extent(renderer)
                    sizes[text] = (bb.width, bb.height)
                return sizes[text]

        boxes = place_labels(
            self.picture, width, height, font_px=font_px, window=window, measure=measure
        )
        for t in self.texts.values():
            t.set_visible(False)
        sx = width / max(window[2] - window[0], 1e-12)
        sy = height / max(window[3] - window[1], 1e-12)
        for b in boxes:  # box centres back to data units (row 0 at the top)
            t = self.texts[b.tile]
            t.set_text(b.text)
            t.set_position((window[0] + (b.x + b.w / 2) / sx, window[1] + (b.y + b.h / 2) / sy))
            t.set_visible(True)

    def draw(self, renderer):
        if self.get_visible():
            self.place(renderer)


def _draw_labels(ax, picture: Picture) -> None:
    """One text per labelled tile, in black or white by its background, placed (shown or
    hidden) by a `_LabelPlacer` at every draw; placed once now on the Axes' current size, so the
    Axes' texts say what a draw at this size shows."""
    texts = {}
    n = sum(1 for t in picture.tiles if t.label)
    size = 8 if n <= 16 else 6
    for i, t in enumerate(picture.tiles):
        if not t.label:
            continue
        color = text_color(t.face if t.face and t.alpha >= 0.5 else "#ffffff")
        texts[i] = ax.text(
            t.x + t.w / 2,
            t.y + t.h / 2,
            t.label,
            ha="center",
            va="center",
            fontsize=size,
            color=color,
            clip_on=True,
            zorder=3,
        )
    if texts:
        placer = _LabelPlacer(picture, texts, size)
        ax.add_artist(placer)
        placer.place()


def _set_frame(ax, picture: Picture, box: np.ndarray, aspect, edge_ticks: bool) -> None:
    """Limits (the tensor's, row 0 at the top), aspect, ticks, labels and title."""
    x0, y0, x1, y1 = picture.window or (0, 0, picture.width, picture.height)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)  # a zero-size dim still gets a (blank) frame
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ratio = (x1 - x0) / (y1 - y0)
    ax.set_aspect(aspect or ("equal" if 1 / 8 <= ratio <= 8 else "auto"))
    if edge_ticks:  # ticks at the chunk edges when there are few (set_ticks widens the limits)
        for axis, ends, (a, b) in (
            (ax.xaxis, box[:, ::2], (x0, x1)),
            (ax.yaxis, box[:, 1::2], (y0, y1)),
        ):
            ticks = np.unique(ends)
            ticks = ticks[(a <= ticks) & (ticks <= b)]
            if 0 < len(ticks) <= 12:
                axis.set_ticks([int(e) for e in ticks])
            else:  # a few round ticks: each tick is several artists, laid out on every draw
                axis.set_major_locator(MaxNLocator(5, integer=True))
    else:  # cells: integer ticks at their centres (left edges on big meshes: fewer labels)
        for axis, n in ((ax.xaxis, picture.width), (ax.yaxis, picture.height)):
            if n <= 32:
                axis.set_ticks(np.arange(n) + 0.5, [str(i) for i in range(n)])
            else:
                axis.set_major_locator(MaxNLocator(integer=True))
    if not picture.ylabel:
        ax.set_yticks([])
    ax.set_xlabel(picture.xlabel)
    ax.set_ylabel(picture.ylabel)
    # y given: matplotlib then skips placing the title above top ticks (there are none), which
    # costs a tick layout of its own on every draw
    ax.set_title(picture.title, fontsize=9, y=1.0)


def _draw_legend(ax, legend) -> None:
    """The legend beside the Axes: ``(label, face, edge, hatch)`` entries as patches."""
    handles = [
        Patch(
            facecolor=to_rgba(face, 0.6) if face else "none",
            edgecolor=edge,
            hatch=hatch,
            label=label,
        )
        for label, face, edge, hatch in legend
    ]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=7,
        frameon=False,
        borderaxespad=0.0,
    )


def _draw_scale(ax, scale) -> None:
    """The continuous rank scale (`picture_data.RankScale`) as a colour bar right of the Axes,
    under the legend, titled with what it shows."""
    cax = ax.inset_axes([1.04, 0.0, 0.035, 0.5])
    mappable = ScalarMappable(
        norm=Normalize(0, max(scale.n - 1, 1)),
        cmap=LinearSegmentedColormap.from_list("rank scale", RANK_SCALE),
    )
    bar = ax.figure.colorbar(mappable, cax=cax)
    bar.ax.yaxis.set_major_locator(MaxNLocator(5, integer=True))
    bar.ax.tick_params(labelsize=7)
    label, _, rest = scale.label.partition(" (")
    bar.set_label(label + ("\n(" + rest if rest else ""), fontsize=7)


def picture_png(
    picture: Picture,
    *,
    figsize: tuple[float, float] = (6.4, 4.2),
    dpi: int = 90,
    margins: Mapping[str, float] | None = None,
) -> tuple[Figure, bytes]:
    """(Figure, PNG bytes) of a `Picture`, fast enough for a widget redraw: a fresh Figure with
    fixed ``margins`` (``Figure.subplots_adjust`` keywords; the default leaves room for the
    legend on the right and the notes below: a layout engine would draw twice), dense runs of
    tiles painted as images (``draw_picture(raster=True)``) and the PNG compressed at zlib level
    1 (a few milliseconds less than the default level 6, for a file some 15% larger).

    For a widget redraw of a 4096 + 4096-chunk reshard this takes about half the time of the same
    picture drawn with paths and saved with ``savefig``'s defaults (``benchmarks/bench_plots.py``);
    ``reshard_data`` for the next rank of the same plans reuses the rank-independent tiles."""
    fig = Figure(figsize=figsize, dpi=dpi)
    fig.subplots_adjust(**(margins or dict(left=0.1, right=0.7, top=0.92, bottom=0.27)))
    draw_picture(picture, fig.add_subplot(), raster=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
    return fig, buf.getvalue()
