"""Pictures: layouts, checkpoints, reshards, meshes and I/O, drawn with matplotlib.

Every picture is first computed as plain data by a ``*_data`` function (a `Picture` of `Tile`
rectangles with colours, hatches and labels, or a small record for the I/O charts) that tests
assert on; the ``plot_*`` function then draws it in a short loop with one ``PolyCollection`` per
run of tiles sharing a hatch, so a tensor with 4096 chunks draws in a few tens of milliseconds
(``benchmarks/bench_plots.py``). Widgets call `picture_png`, which paints dense runs of tiles as
one image each on the output's pixel grid (the same pixels up to the outlines' anti-aliasing, at
about half the cost), and `reshard_data` reuses the tiles that do not depend on the load rank
(saved chunks, other ranks' chunks) while the rank changes. Chunk facts come from
`workbench.tables` (the picture shows what the table lists) and colours from `workbench.colors`
(a rank has the same colour everywhere).

Coordinates: a picture shows two tensor dims ``dims = (row_dim, col_dim)``; x runs along the
column dim, y along the row dim, row 0 at the top, everything in element units, so chunks are in
proportion. A 1-D tensor is a strip (height 1), a 0-D tensor one cell. Other dims of an N-D tensor
are fixed at ``at`` (one index per other dim): `plot_layout` draws one panel per slab of them
(small multiples, a Figure), `plot_reshard` one slab.

Uses matplotlib's object API only (``matplotlib.figure.Figure``): no pyplot state, no
``plt.show()``. ``plot_*`` functions take ``ax=None`` and return the Axes (a Figure for
multi-panel pictures). Never imported by ``workbench``'s ``__init__``; imports no torch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import product, repeat
from operator import attrgetter, ne

import numpy as np
from matplotlib.artist import Artist
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .colors import HIGHLIGHT_COLOR, UNKNOWN_COLOR, rank_color, text_color
from .errors import LayoutError, MetadataError, PlanError
from .formats.dcp_files import writer_of_file
from .formatting import format_held, format_ranks, index_runs
from .geometry import Chunk, uncovered
from .records import (
    BytesStorageMetadata,
    TensorStorageMetadata,
    chunk_storage,
    metadata_of,
    storage_data_of,
    tensor_entries,
)
from .sharding import Layout, chunk_holders, mesh_coordinate
from .sources import as_record

__all__ = [
    "Tile",
    "Picture",
    "BarsData",
    "TrafficData",
    "layout_data",
    "layout_slabs",
    "reshard_data",
    "mesh_data",
    "traffic_data",
    "bytes_per_rank_data",
    "draw_picture",
    "picture_png",
    "plot_layout",
    "plot_reshard",
    "plot_mesh",
    "plot_traffic",
    "plot_bytes_per_rank",
]

MAX_PANELS = 16  # small multiples beyond this are left out (and said so in a note)
MAX_NOTE_ITEMS = 8  # chunks / regions named in one note line before "... (+n more)"
RASTER_MIN = 256  # draw_picture(raster=True) paints longer runs of tiles as one image
# Chunk tiles get outlines up to this many: past it, seams would hide the tiles (and strokes
# double Agg's cost); neighbouring ranks' hues differ anyway.
MAX_OUTLINED = 256
UNCOVERED_COLOR = "#d62728"
HELD_COLOR = "#2ca02c"
WANTED_COLOR = "#555555"


# ----------------------------------------------------------------------------- picture data
@dataclass(frozen=True, slots=True)
class Tile:
    """One rectangle of a picture, in element units: ``x``/``w`` along the column dim, ``y``/``h``
    along the row dim. ``kind`` says what it shows (``chunk``, ``saved``, ``wanted``, ``read``,
    ``uncovered``, ``held``, ``target``, ``cell``); ``face`` None draws the outline only."""

    x: int
    y: int
    w: int
    h: int
    kind: str
    face: str | None
    edge: str
    alpha: float = 1.0
    hatch: str | None = None
    linestyle: str = "solid"
    linewidth: float = 0.8
    label: str | None = None
    ranks: tuple[int, ...] = ()
    label_at: str = "center"  # or "corner" (top left), so two labelled layers do not collide


@dataclass(frozen=True, slots=True)
class Picture:
    """A drawable picture: tiles in drawing order (later on top), the drawn extent, titles, side
    notes (facts that have no area, e.g. empty shards) and legend entries
    ``(label, face, edge, hatch)``."""

    tiles: tuple[Tile, ...]
    width: int
    height: int
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    notes: tuple[str, ...] = ()
    legend: tuple[tuple[str, str | None, str, str | None], ...] = ()
    window: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) shown; None: everything

    def of_kind(self, kind: str) -> list[Tile]:
        return [t for t in self.tiles if t.kind == kind]


def _listing(what: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_NOTE_ITEMS])
    more = f" ... (+{len(items) - MAX_NOTE_ITEMS} more)" if len(items) > MAX_NOTE_ITEMS else ""
    return f"{what}: {shown}{more}"


class _View:
    """Which tensor dims are drawn (row, column) and where the other dims are fixed."""

    def __init__(self, shape: Sequence[int], dims, at, fqn: str | None):
        shape = tuple(shape)
        nd = len(shape)
        dims = tuple(int(d) for d in ((dims,) if isinstance(dims, int) else dims))
        if nd < 2 and dims == (0, 1):  # the default, on a strip or a cell
            dims = (0,) if nd == 1 else ()
        if nd == 0:
            dims = ()
        norm = tuple(d % nd if nd and -nd <= d < nd else None for d in dims)
        if nd and (not 1 <= len(dims) <= 2 or None in norm or len(set(norm)) != len(norm)):
            raise LayoutError(
                fqn,
                f"dims to draw {dims} do not fit a {nd}-d tensor of shape {shape}",
                f"one or two different dims in [0, {nd})",
                "Draw e.g. dims=(0, 1).",
                dims=dims,
            )
        self.shape = shape
        self.row = norm[0] if len(norm) == 2 else None
        self.col = norm[-1] if norm else None
        self.others = tuple(d for d in range(nd) if d not in norm)
        at = dict(at or {})
        self.at = {d: int(at.get(d, 0)) for d in self.others}
        for d, i in self.at.items():
            if shape[d] and not 0 <= i < shape[d]:
                raise LayoutError(
                    fqn,
                    f"slab index {i} of dim {d} is outside the tensor of shape {shape}",
                    f"0 <= index < {shape[d]}",
                    "Pick an index inside.",
                    at=at,
                )
        self.width = shape[self.col] if self.col is not None else 1
        self.height = shape[self.row] if self.row is not None else 1
        self.window: tuple[int, int, int, int] | None = None  # rects outside it are dropped

    def rect(self, c: Chunk) -> tuple[int, int, int, int] | None:
        """The chunk's rectangle, or None when it is empty (no area to draw) or misses the slab
        or the window."""
        if c.is_empty:
            return None
        if c.ndim:
            for d, i in self.at.items():
                if not c.offsets[d] <= i < c.offsets[d] + c.sizes[d]:
                    return None
        x, w = (c.offsets[self.col], c.sizes[self.col]) if self.col is not None else (0, 1)
        y, h = (c.offsets[self.row], c.sizes[self.row]) if self.row is not None else (0, 1)
        if self.window is not None:  # the visible part only, so labels sit where they are seen
            x0, y0, x1, y1 = self.window
            if x >= x1 or x + w <= x0 or y >= y1 or y + h <= y0:
                return None
            cx, cy = max(x, x0), max(y, y0)
            return cx, cy, min(x + w, x1) - cx, min(y + h, y1) - cy
        return x, y, w, h

    def zoom_to(self, chunks: Sequence[Chunk]) -> None:
        """Show only the neighbourhood of ``chunks``: their bounding rectangle grown by half its
        size on every side, inside the tensor."""
        rs = [r for r in map(self.rect, chunks) if r]
        if not rs:
            return
        x0, y0 = min(r[0] for r in rs), min(r[1] for r in rs)
        x1, y1 = max(r[0] + r[2] for r in rs), max(r[1] + r[3] for r in rs)
        px, py = max((x1 - x0) // 2, 1), max((y1 - y0) // 2, 1)
        self.window = (
            max(x0 - px, 0),
            max(y0 - py, 0),
            min(x1 + px, self.width),
            min(y1 + py, self.height),
        )

    @property
    def xlabel(self) -> str:
        return f"dim {self.col}" if self.col is not None else ""

    @property
    def ylabel(self) -> str:
        return f"dim {self.row}" if self.row is not None else ""

    def slab_name(self) -> str:
        return _slab_name(self.at)


def _slab_name(at: dict[int, int]) -> str:
    return ", ".join(f"dim {d} = {i}" for d, i in at.items())


# ----------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class _Boxes:
    """Distinct boxes of one tensor with who holds / wrote them (from `workbench.tables`)."""

    shape: tuple[int, ...]
    chunks: list[Chunk]
    ranks: list[tuple[int, ...]]  # holders (layout) or (writer,) / () (checkpoint)
    labels: list[str]
    misdescribed: list[bool]
    notes: tuple[str, ...]
    title: str
    files: list[str | None] | None = None  # checkpoint: each chunk's data file when known


def _layout_boxes(layout: Layout, fqn: str | None) -> _Boxes:
    if layout.is_bytes:
        raise LayoutError(
            fqn,
            "is a bytes entry (pickled object), it has no chunks to draw",
            "a tensor layout",
            "Pick a tensor entry.",
        )
    holders = chunk_holders(layout)  # what layout_chunks_table's replicas column lists
    chunks, ranks = list(holders), list(holders.values())
    notes = []
    empty = [f"{format_ranks(r)} {c}" for c, r in zip(chunks, ranks) if c.is_empty]
    if empty:
        notes.append(_listing("empty shards", empty))
    idle = [r for r, cs in enumerate(layout.rank_chunks) if not cs]
    if idle:
        notes.append(f"no chunk: {format_ranks(idle)}")
    mis = set(layout.misdescribed_ranks)
    if mis:
        notes.append(f"{format_ranks(mis)}: DCP's box is not the data held (_StridedShard)")
    name = f"{fqn}: " if fqn else ""
    return _Boxes(
        layout.shape,
        chunks,
        ranks,
        [format_ranks(r) for r in ranks],
        [bool(mis.intersection(r)) for r in ranks],
        tuple(notes),
        name + layout.describe(),
    )


def _saved_entry(source, fqn: str | None):
    """(TensorStorageMetadata, Metadata or None) of ``fqn`` from a Metadata, a save result
    (``.metadata``) or a TensorStorageMetadata; torch's own records are converted first."""
    md = as_record(metadata_of(source))
    entries = tensor_entries(md, fqn)  # raises for what is not metadata and for unknown keys
    if isinstance(md, TensorStorageMetadata):
        return md, None
    if fqn is None:
        raise MetadataError(
            None,
            f"no key given to pick one of the checkpoint's {len(entries)} entries",
            "fqn= one of metadata.state_dict_metadata's keys",
            "Pass fqn=... naming the tensor to draw.",
            keys=tuple(entries),
        )
    entry = entries[fqn]
    if isinstance(entry, BytesStorageMetadata):
        raise MetadataError(
            fqn,
            "is a bytes entry (pickled object), it has no chunks to draw",
            "a tensor entry",
            "Pick a tensor key.",
        )
    return entry, md


def _checkpoint_boxes(tsm: TensorStorageMetadata, md, fqn: str | None) -> _Boxes:
    # the facts of checkpoint_chunks_table's file / writer columns, without its text columns
    chunks = tsm.chunks
    files = [
        getattr(i, "relative_path", None) for i in chunk_storage(storage_data_of(md), fqn, tsm)
    ]
    writers = [() if w is None else (w,) for w in map(writer_of_file, files)]
    labels = [f"#{i}" + (f" r{w[0]}" if w else "") for i, w in enumerate(writers)]
    empty = [f"#{i} {c}" for i, c in enumerate(chunks) if c.is_empty]
    notes = (_listing("empty chunks", empty),) if empty else ()
    title = f"{fqn or 'checkpoint'}: {len(chunks)} saved chunks {tsm.size} {tsm.properties.dtype}"
    return _Boxes(tsm.size, chunks, writers, labels, [False] * len(chunks), notes, title, files)


def _boxes(source, fqn: str | None) -> _Boxes:
    if isinstance(source, Layout):
        return _layout_boxes(source, fqn)
    tsm, md = _saved_entry(source, fqn)
    return _checkpoint_boxes(tsm, md, fqn)


def _rank_legend(ranks, prefix: str = "r") -> tuple:
    distinct = sorted({r for rs in ranks for r in rs[:1]})
    if not distinct or len(distinct) > 16:
        return ()
    return tuple((f"{prefix}{r}", rank_color(r), rank_color(r), None) for r in distinct)


# ----------------------------------------------------------------------------- layouts
def _slabs(b: _Boxes, view: _View) -> list[dict[int, int]]:
    starts = []
    for d in view.others:
        edges = {0}
        for c in b.chunks:
            edges.update((c.offsets[d], c.offsets[d] + c.sizes[d]))
        starts.append(sorted(e for e in edges if 0 <= e < b.shape[d]))
    return [dict(zip(view.others, s)) for s in product(*starts)]


def layout_slabs(source, dims=(0, 1), *, fqn: str | None = None) -> list[dict[int, int]]:
    """The slabs (one ``at`` dict each) of the dims not drawn: one per interval between chunk
    edges along every other dim, so every slab's picture differs; ``[{}]`` for 1-D / 2-D."""
    b = _boxes(source, fqn)
    return _slabs(b, _View(b.shape, dims, None, fqn))


def _layout_picture(b: _Boxes, view: _View, max_labels: int, writers: bool) -> Picture:
    rects = [
        (view.rect(c), c, r, lab, m)
        for c, r, lab, m in zip(b.chunks, b.ranks, b.labels, b.misdescribed)
    ]
    rects = [x for x in rects if x[0] is not None]
    label = len(rects) <= max_labels
    long = len(rects) <= 16
    width = 0.8 if len(rects) <= MAX_OUTLINED else 0.0
    tiles = []
    for (x, y, w, h), c, ranks, lab, mis in rects:
        color = rank_color(ranks[0]) if ranks else UNKNOWN_COLOR
        text = (f"{lab}\n{c}" if long else lab) if label else None
        tiles.append(
            Tile(
                x,
                y,
                w,
                h,
                "chunk",
                color,
                "#ffffff",
                1.0,
                "//" if mis else None,
                "solid",
                width,
                text,
                tuple(ranks),
            )
        )
    slab = view.slab_name()
    legend = _rank_legend(b.ranks, "writer r" if writers else "r")
    if writers and any(not r for r in b.ranks):
        legend += (("writer unknown", UNKNOWN_COLOR, UNKNOWN_COLOR, None),)
    return Picture(
        tuple(tiles),
        view.width,
        view.height,
        b.title + (f" ({slab})" if slab else ""),
        view.xlabel,
        view.ylabel,
        b.notes,
        legend,
    )


def layout_data(
    source,
    dims=(0, 1),
    *,
    at: dict[int, int] | None = None,
    fqn: str | None = None,
    max_labels: int = 32,
) -> Picture:
    """Picture data of one tensor's chunks: a `Layout` (coloured by the lowest rank holding each
    box, replicas as one tile listing all their ranks) or a checkpoint entry (a `Metadata` with
    ``fqn``, a save result, or a `TensorStorageMetadata`; coloured by writer rank when the files
    tell it, grey otherwise).

    Tiles are of kind ``chunk``; ranks whose box misdescribes their data (``_StridedShard``) are
    hatched ``//``. Empty shards and ranks without a chunk have no area: they are named in the
    notes. Labels (rank list, plus the region when at most 16 tiles) are given to at most
    ``max_labels`` tiles. ``at`` fixes the dims not drawn (default index 0).
    """
    b = _boxes(source, fqn)
    return _layout_picture(
        b, _View(b.shape, dims, at, fqn), max_labels, not isinstance(source, Layout)
    )


def plot_layout(
    source,
    ax=None,
    dims=(0, 1),
    *,
    fqn: str | None = None,
    at=None,
    max_labels: int = 32,
    max_panels: int = MAX_PANELS,
):
    """Draw every rank's chunk of a `Layout` (or a checkpoint entry, see `layout_data`).

    1-D and 2-D tensors (and N-D with ``at`` given) draw into one Axes, which is returned. For an
    N-D tensor without ``at``, each slab of the other dims (`layout_slabs`) gets a panel of a new
    Figure (``ax`` must be None), which is returned; at most ``max_panels`` panels are drawn and a
    note says when more exist.
    """
    b = _boxes(source, fqn)
    writers = not isinstance(source, Layout)
    view = _View(b.shape, dims, at, fqn)
    if not view.others or at is not None:
        return draw_picture(_layout_picture(b, view, max_labels, writers), ax)
    if ax is not None:
        raise LayoutError(
            fqn,
            f"a {len(b.shape)}-d tensor draws as small multiples, one panel per "
            "slab, which need a Figure, but an Axes was given",
            "ax=None, or at={dim: index} for one slab",
            "Pass at= to draw one slab.",
        )
    slabs = _slabs(b, view)
    shown = slabs[:max_panels]
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = Figure(figsize=(3.2 * ncols + 1.6, 2.8 * nrows + 0.6), layout="constrained")
    for i, slab in enumerate(shown):
        pic = _layout_picture(b, _View(b.shape, dims, slab, fqn), max_labels, writers)
        ax_i = fig.add_subplot(nrows, ncols, i + 1)
        draw_picture(pic, ax_i, notes=False, legend=False)
        ax_i.set_title(_slab_name(slab), fontsize=9)
    notes = list(b.notes)
    if len(slabs) > len(shown):
        notes.append(f"showing {len(shown)} of {len(slabs)} slabs; pass at= for another")
    fig.suptitle(b.title + ("\n" + "\n".join(notes) if notes else ""), fontsize=9)
    return fig


# ----------------------------------------------------------------------------- reshard
def _wanted(target, fqn: str, tsm: TensorStorageMetadata, rank: int):
    """(Layout, the rank's read items for fqn in DCP's order, notes of what torch raises) of a
    load result or a Layout (read items then computed with `create_read_items_for_chunk_list`)."""
    if isinstance(target, Layout):
        from .planner_helpers import create_read_items_for_chunk_list

        layout = target
        _check_rank(rank, layout.world_size, fqn)
        return layout, create_read_items_for_chunk_list(fqn, tsm, layout.chunks(rank)), ()
    layouts = getattr(target, "layouts", None)
    if not isinstance(layouts, Mapping) or fqn not in layouts:
        raise PlanError(
            fqn,
            f"the load target has no layout for {fqn!r}",
            "a Layout or a load result planned for this key",
            "Pass plan_load(...)'s result or the key's Layout.",
        )
    layout = layouts[fqn]
    _check_rank(rank, len(target.plans), fqn)
    items = [it for it in target.plans[rank].items if it.dest_index.fqn == fqn]
    # what torch raises on this entry (the picture shows holes and misdescription itself)
    notes = tuple(
        f"torch raises: {msg}"
        for name, ranks, msg in getattr(target, "failures", ())
        if name == fqn and rank in ranks
    )
    return layout, items, notes


def _check_rank(rank: int, world: int, fqn: str) -> None:
    if not 0 <= rank < world:
        raise PlanError(
            fqn,
            f"rank {rank} is not in the load world of {world} ranks",
            f"0 <= rank < {world}",
            "Pick a rank of the load world.",
            rank=rank,
        )


_LAYERS: dict = {}  # key -> (the objects whose ids are in the key, value); see _layer
_LAYERS_KEPT = 8


def _layer(objs: tuple, params: tuple, make):
    """``make()``, cached on the identity of ``objs`` and the hashable ``params``. Each entry
    keeps its ``objs`` alive, so their ids cannot be reused while it is cached; records are not
    modified once made (a metadata's chunk list is passed chunk by chunk, and its storage map's
    size is in ``params``). The last `_LAYERS_KEPT` entries are kept."""
    key = (tuple(map(id, objs)), params)
    hit = _LAYERS.get(key)
    if hit is None:
        if len(_LAYERS) >= _LAYERS_KEPT:
            del _LAYERS[next(iter(_LAYERS))]
        hit = _LAYERS[key] = (objs, make())
    return hit[1]


def _saved_layer(
    tsm: TensorStorageMetadata, md, fqn: str, view: _View, max_labels: int
) -> tuple[_Boxes, tuple[Tile, ...]]:
    """The saved chunks' `_Boxes` and their ``saved`` tiles (see `reshard_data`)."""
    saved = _checkpoint_boxes(tsm, md, fqn)
    shown = [(view.rect(c), w, lab) for c, w, lab in zip(saved.chunks, saved.ranks, saved.labels)]
    shown = [s for s in shown if s[0]]
    label = len(shown) <= max_labels
    edge = 1.0 if len(shown) <= MAX_OUTLINED else 0.0
    tiles = []
    for rect, w, lab in shown:
        color = rank_color(w[0]) if w else UNKNOWN_COLOR
        tiles.append(
            Tile(
                *rect,
                "saved",
                color,
                color,
                0.22,
                None,
                "solid",
                edge,
                lab if label else None,
                w,
                "corner",
            )
        )
    return saved, tuple(tiles)


def _wanted_layer(layout: Layout, view: _View) -> tuple[tuple[Tile, ...], ...]:
    """Each rank's ``wanted`` tiles (grey outlines of its destination chunks)."""
    # solid hairlines: dashes cost Agg several times more for thousands of boxes
    return tuple(
        tuple(
            Tile(*rect, "wanted", None, WANTED_COLOR, 1.0, None, "solid", 0.5, None, (r,))
            for rect in map(view.rect, cs)
            if rect
        )
        for r, cs in enumerate(layout.rank_chunks)
    )


def reshard_data(
    source,
    target,
    fqn: str,
    rank: int = 0,
    *,
    dims=(0, 1),
    at: dict[int, int] | None = None,
    zoom: bool = False,
    max_labels: int = 32,
) -> Picture:
    """Picture data of a reshard of ``fqn`` seen from load rank ``rank``.

    ``source``: the checkpoint (a `Metadata`, a save result or a `TensorStorageMetadata`);
    ``target``: a load result (``plan_load``) or the destination `Layout` (read items are then
    computed with `create_read_items_for_chunk_list`, torch's order).

    Tiles in drawing order: ``saved`` (every saved chunk, pale, in its writer's colour, labelled
    ``#i`` and writer), ``wanted`` (other ranks' destination chunks, grey outlines), ``read``
    (the rank's read items in their source writer's colour, labelled ``k<-#i`` in DCP's order,
    1-based, with the file when known), ``uncovered`` (parts of the rank's chunks no saved chunk
    covers, hatched ``xx``: they keep stale values on load), ``held`` (for a ``_StridedShard``
    destination whose box misdescribes its data, the rows it really holds, hatched ``//``) and
    ``target`` (the rank's own chunk boxes, thick outline: for a misdescribed rank, DCP's box).
    ``at`` fixes the dims not drawn; it defaults to the rank's chunk's first index. ``zoom``
    shows only the rank's chunks and their surroundings (half their extent on every side), with
    the tiles outside left out: on a tensor of thousands of chunks, the rank's reads get room
    and labels.
    """
    tsm, md = _saved_entry(source, fqn)
    layout, items, problem_notes = _wanted(target, fqn, tsm, rank)
    mine = list(layout.chunks(rank))
    # a destination of another rank cannot share the grid; torch raises on it anyway
    same_rank = layout.ndim == len(tsm.size)
    shape = tuple(max(a, b) for a, b in zip(tsm.size, layout.shape)) if same_rank else tsm.size
    if at is None and len(shape) > 2:
        first = next((c for c in mine if not c.is_empty), None) if same_rank else None
        at = {d: (first.offsets[d] if first else 0) for d in range(len(shape))}
    view = _View(shape, dims, None, fqn)
    if at is not None:
        view = _View(shape, dims, {d: at[d] for d in view.others if d in at}, fqn)
    if zoom and same_rank:
        view.zoom_to(mine)
    # the saved chunks and the other ranks' chunks do not depend on the rank: computed once for
    # a widget stepping through the ranks of one checkpoint and layout
    seen = (view.shape, view.row, view.col, tuple(view.at.items()), view.window)
    storage = getattr(md, "storage_data", None)
    saved, saved_tiles = _layer(
        (tsm, md, storage, *tsm.chunks),
        ("saved", fqn, len(storage or ()), seen, max_labels),
        lambda: _saved_layer(tsm, md, fqn, view, max_labels),
    )
    files = saved.files
    tiles = list(saved_tiles)
    if same_rank:
        for r, ts in enumerate(
            _layer((layout,), ("wanted", seen), lambda: _wanted_layer(layout, view))
        ):
            if r != rank:
                tiles.extend(ts)
    label_reads = len(items) <= max_labels
    with_file = len(items) <= 16
    sources = set()
    for k, item in enumerate(items, 1):
        si = item.storage_index.index
        sources.add(si)
        w = saved.ranks[si]
        color = rank_color(w[0]) if w else HIGHLIGHT_COLOR
        rect = view.rect(item.dest_chunk)
        if rect:
            text = f"{k}\u2190#{si}"
            if with_file and files[si]:
                text += f"\n{files[si]}"
            tiles.append(
                Tile(
                    *rect,
                    "read",
                    color,
                    "#000000",
                    0.85,
                    None,
                    "solid",
                    1.0,
                    text if label_reads else None,
                    (rank,),
                )
            )
    drawn = mine if same_rank else []
    # holes matter only for a load that happens: where torch raises, nothing is loaded at all
    loads = not problem_notes and layout.shape == tuple(tsm.size)
    holes = [h for c in drawn if loads and not c.is_empty for h in uncovered(c, tsm.chunks)]
    for h in holes:
        rect = view.rect(h)
        if rect:
            tiles.append(
                Tile(
                    *rect,
                    "uncovered",
                    None,
                    UNCOVERED_COLOR,
                    1.0,
                    "xx",
                    "solid",
                    1.2,
                    None,
                    (rank,),
                )
            )
    misdescribed = same_rank and rank in layout.misdescribed_ranks
    held_text = ""
    if misdescribed:
        held = layout.held_indices(rank)
        box = mine[0]
        per_dim = []
        for d in (view.row, view.col):
            if d is None:
                per_dim.append([(0, 1)])  # a strip's one row
            else:
                per_dim.append(
                    index_runs(held[d]) if d in held else [(box.offsets[d], box.ends[d])]
                )
        for (y0, y1), (x0, x1) in product(*per_dim):
            tiles.append(
                Tile(
                    x0,
                    y0,
                    x1 - x0,
                    y1 - y0,
                    "held",
                    None,
                    HELD_COLOR,
                    1.0,
                    "//",
                    "solid",
                    1.5,
                    None,
                    (rank,),
                )
            )
        held_text = format_held(held)
    for c in drawn:
        rect = view.rect(c)
        if rect:
            tiles.append(
                Tile(
                    *rect,
                    "target",
                    None,
                    "#000000",
                    1.0,
                    None,
                    "dashed" if misdescribed else "solid",
                    2.2,
                    None,
                    (rank,),
                )
            )
    notes = [
        f"rank {rank} wants " + (", ".join(str(c) for c in mine) or "nothing"),
        f"{len(items)} read items from {len(sources)} saved chunks"
        + (
            f" in {len({files[s] for s in sources})} files"
            if sources and all(files[s] for s in sources)
            else ""
        ),
    ]
    notes += [f"empty: {c}" for c in drawn if c.is_empty]
    if not same_rank:
        notes.append(
            f"destination shape {layout.shape} has another rank than the saved "
            f"{tsm.size}: only the saved chunks are drawn"
        )
    if holes:
        notes.append(_listing("uncovered, stale after load", [str(h) for h in holes]))
    if misdescribed:
        notes.append(
            f"DCP reads the box {mine[0]} but rank {rank} holds {held_text}: wrong values, no error"
        )
    notes += problem_notes
    legend = (
        _rank_legend(saved.ranks, "writer r")
        + (
            (("saved, writer unknown", UNKNOWN_COLOR, UNKNOWN_COLOR, None),)
            if any(not w for w in saved.ranks)
            else ()
        )
        + (
            ("wanted by other ranks", None, WANTED_COLOR, None),
            (f"rank {rank}'s chunk", None, "#000000", None),
        )
    )
    if holes:
        legend += (("uncovered", None, UNCOVERED_COLOR, "xx"),)
    if misdescribed:
        legend += (("data really held", None, HELD_COLOR, "//"),)
    slab = view.slab_name()
    title = f"{fqn}: rank {rank}'s reads" + (f" ({slab})" if slab else "")
    return Picture(
        tuple(tiles),
        view.width,
        view.height,
        title,
        view.xlabel,
        view.ylabel,
        tuple(notes),
        legend,
        view.window,
    )


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
    max_labels: int = 32,
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


# ----------------------------------------------------------------------------- mesh
def mesh_data(source, *, max_labels: int = 256) -> Picture:
    """Picture data of which rank sits at which mesh coordinate: one ``cell`` tile per rank,
    coloured like every other picture. ``source`` is a mesh shape or a `Layout` (a layout
    without a mesh is a 1-D mesh of its world). The last mesh dim runs along x, the others are
    flattened row-major along y. With a layout, cells of empty shards are hatched ``..``,
    misdescribed ranks ``//``, and the chunk region is added to the labels of small meshes. Each
    cell shows the global rank at that coordinate (a submesh's ``mesh_ranks``)."""
    layout = source if isinstance(source, Layout) else None
    if layout is not None:
        mesh = layout.mesh_shape if layout.mesh_shape is not None else (layout.world_size,)
    else:
        mesh = tuple(int(m) for m in source)
        if any(m < 1 for m in mesh):
            raise LayoutError(
                None,
                f"mesh shape {mesh} has a dim below 1",
                "every mesh dim >= 1",
                "Give a mesh shape such as (2, 4).",
                mesh_shape=mesh,
            )
    cols = mesh[-1] if mesh else 1
    n = math.prod(mesh)
    rows = n // cols
    mis = set(layout.misdescribed_ranks) if layout else set()
    at = (
        layout.mesh_ranks_or_default if layout and layout.mesh_shape is not None else range(n)
    )  # the global rank at each row-major mesh position
    tiles = []
    empty = []
    for i, r in enumerate(at):
        y, x = divmod(i, cols)
        coord = mesh_coordinate(i, mesh)
        chunks = layout.chunks(r) if layout else ()
        is_empty = any(c.is_empty for c in chunks) and not layout.is_bytes
        if is_empty:
            empty.append(r)
        label = None
        if n <= max_labels:
            label = f"r{r}\n{coord}"
            if layout and n <= 36 and chunks and not layout.is_bytes:
                label += "\n" + ", ".join(str(c) for c in chunks)
        color = rank_color(r)
        # an empty shard's cell is pale and dotted in its colour: the rank exists, holds nothing
        hatch = ".." if is_empty else "//" if r in mis else None
        tiles.append(
            Tile(
                x,
                y,
                1,
                1,
                "cell",
                color,
                color if is_empty else "#ffffff",
                0.3 if is_empty else 1.0,
                hatch,
                "solid",
                1.0,
                label,
                (r,),
            )
        )
    notes = []
    if empty:
        notes.append(f"empty shards: {format_ranks(empty)}")
    if mis:
        notes.append(f"box misdescribes data: {format_ranks(mis)}")
    if layout and layout.world_size > n:
        outside = sorted(set(range(layout.world_size)) - set(at))
        notes.append(f"outside the mesh (no chunk): {format_ranks(outside)}")
    title = f"mesh {mesh}" + (f": {layout.describe()}" if layout else "")
    ylabel = (
        "mesh dim 0"
        if len(mesh) == 2
        else f"mesh dims 0..{len(mesh) - 2} (row-major)"
        if len(mesh) > 2
        else ""
    )
    return Picture(
        tuple(tiles), cols, rows, title, f"mesh dim {max(len(mesh) - 1, 0)}", ylabel, tuple(notes)
    )


def plot_mesh(source, ax=None, *, max_labels: int = 256):
    """Draw `mesh_data` (a mesh shape or a `Layout`); returns the Axes."""
    return draw_picture(
        mesh_data(source, max_labels=max_labels), ax, aspect="equal", edge_ticks=False
    )


# ----------------------------------------------------------------------------- I/O charts
@dataclass(frozen=True)
class TrafficData:
    """Bytes each load rank loads from each file (``matrix[rank, file]``, whole saved chunks per
    read item as torch's reader does); ``files`` sorted by writer rank then name as in
    ``LoadPlanResult.io`` (unread files included), ``writers`` their writer rank (None when the
    name tells none)."""

    ranks: tuple[int, ...]
    files: tuple[str, ...]
    writers: tuple[int | None, ...]
    matrix: np.ndarray


def traffic_data(load_result) -> TrafficData:
    """The rank-by-file byte matrix of a load result, from ``load_result.io`` (its ``traffic``)."""
    io = load_result.io
    return TrafficData(
        tuple(range(io.traffic.shape[0])),
        tuple(io.files),
        tuple(None if w < 0 else w for w in io.file_writers.tolist()),
        io.traffic,
    )


def plot_traffic(load_result, ax=None):
    """Heatmap of `traffic_data`: load ranks down, files across, colour = bytes loaded (blank
    where a rank reads nothing from a file); returns the Axes."""
    data = traffic_data(load_result)
    ax = _new_axes(ax)
    shown = np.ma.masked_equal(data.matrix, 0)
    im = ax.imshow(
        shown,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(-0.5, len(data.files) - 0.5, len(data.ranks) - 0.5, -0.5),
    )
    ax.figure.colorbar(im, ax=ax, label="bytes loaded")
    if len(data.files) <= 32:
        ax.set_xticks(range(len(data.files)), data.files, rotation=60, ha="right", fontsize=7)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("file")
    ax.set_ylabel("load rank")
    ax.set_title(f"rank-to-file traffic ({len(data.ranks)} ranks, {len(data.files)} files)")
    return ax


@dataclass(frozen=True)
class BarsData:
    """One bar per rank (``values``, coloured per rank) and an optional reference per rank
    (``reference``: bytes needed, drawn as a black tick)."""

    ranks: tuple[int, ...]
    values: np.ndarray
    colors: tuple[str, ...]
    reference: np.ndarray | None
    ylabel: str
    title: str


def bytes_per_rank_data(result) -> BarsData:
    """Bytes per rank of a save result (``bytes_written`` after dedup) or of a load result (bytes
    loaded, with the bytes needed as the reference; from ``load_result.io``)."""
    if hasattr(result, "bytes_written"):
        values = np.asarray(result.bytes_written, dtype=np.float64)
        ranks = tuple(range(len(values)))
        return BarsData(
            ranks,
            values,
            tuple(rank_color(r) for r in ranks),
            None,
            "bytes written",
            f"save: bytes written per rank ({values.sum():.0f} total)",
        )
    if not hasattr(result, "io"):
        raise PlanError(
            None,
            f"{type(result).__name__} is neither a save nor a load result",
            "plan_save(...) or plan_load(...)'s result",
            "Pass what plan_save or plan_load returned.",
            value_type=type(result),
        )
    io = result.io
    values = io.bytes_read.astype(np.float64)
    ranks = tuple(range(len(values)))
    return BarsData(
        ranks,
        values,
        tuple(rank_color(r) for r in ranks),
        io.bytes_needed.astype(np.float64),
        "bytes",
        f"load: bytes loaded per rank (tick: bytes needed), {values.sum():.0f} total",
    )


def plot_bytes_per_rank(result, ax=None):
    """Bar chart of `bytes_per_rank_data` (one PolyCollection of bars, fast for thousands of
    ranks); returns the Axes."""
    data = bytes_per_rank_data(result)
    ax = _new_axes(ax)
    x = np.asarray(data.ranks, dtype=np.float64)
    v = data.values
    verts = np.stack(
        [
            np.column_stack([x - 0.4, np.zeros_like(v)]),
            np.column_stack([x - 0.4, v]),
            np.column_stack([x + 0.4, v]),
            np.column_stack([x + 0.4, np.zeros_like(v)]),
        ],
        axis=1,
    )
    ax.add_collection(PolyCollection(verts, facecolors=data.colors, edgecolors="none"))
    if data.reference is not None:
        ax.hlines(
            data.reference,
            x - 0.45,
            x + 0.45,
            colors="#000000",
            linewidths=1.5,
            label="bytes needed",
        )
    ax.set_xlim(-0.6, len(x) - 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(
        0,
        max(
            float(v.max(initial=0)),
            float(data.reference.max(initial=0)) if data.reference is not None else 0,
            1.0,
        )
        * 1.05,
    )
    ax.set_xlabel("rank")
    ax.set_ylabel(data.ylabel)
    ax.set_title(data.title, fontsize=9)
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
    tiles = picture.tiles
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
            )  # the limits are the tensor's, set below
    labelled = [t for t in tiles if t.label]
    size = 8 if len(labelled) <= 16 else 6
    for t in labelled:
        bg = t.face if t.face and t.alpha >= 0.5 else "#ffffff"
        if t.label_at == "corner":
            ax.annotate(
                t.label,
                (t.x, t.y),
                xytext=(2, -2),
                textcoords="offset points",
                ha="left",
                va="top",
                fontsize=size,
                color=text_color(bg),
                annotation_clip=True,
                clip_on=True,
                zorder=3,
            )
        else:
            ax.text(
                t.x + t.w / 2,
                t.y + t.h / 2,
                t.label,
                ha="center",
                va="center",
                fontsize=size,
                color=text_color(bg),
                clip_on=True,
                zorder=3,
            )
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
    if legend and picture.legend:
        handles = [
            Patch(
                facecolor=to_rgba(face, 0.6) if face else "none",
                edgecolor=edge,
                hatch=hatch,
                label=label,
            )
            for label, face, edge, hatch in picture.legend
        ]
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize=7,
            frameon=False,
            borderaxespad=0.0,
        )
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
