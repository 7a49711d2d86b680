"""Picture data: what every picture shows, computed as plain records before anything is drawn.

A ``*_data`` function returns a `Picture` of `Tile` rectangles (colours, hatches, labels, notes)
or a small record for the I/O charts (`TrafficData`, `BarsData`); tests assert on these, and
`workbench.plots` draws them. `reshard_data` reuses the tiles that do not depend on the load rank
(saved chunks, other ranks' chunks) while the rank changes. Chunk facts are the ones the tables
list (`records.chunk_storage`, `sharding.chunk_holders`) and colours come from
`workbench.colors` (a rank has the same colour everywhere).

Coordinates: a picture shows two tensor dims ``dims = (row_dim, col_dim)``; x runs along the
column dim, y along the row dim, row 0 at the top, everything in element units, so chunks are in
proportion. A 1-D tensor is a strip (height 1), a 0-D tensor one cell. Other dims of an N-D tensor
are fixed at ``at`` (one index per other dim): `layout_panels` gives one picture per slab of them
(small multiples). Imports the core, colours and `sources`; no matplotlib, pandas or torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from .colors import (
    HIGHLIGHT_COLOR,
    MAX_CATEGORICAL_RANKS,
    UNKNOWN_COLOR,
    rank_color,
    rank_scale_color,
)
from .errors import LayoutError, MetadataError, PlanError
from .formats.dcp_files import writer_of_file
from .formatting import format_bytes, format_held, format_ranks, index_runs
from .geometry import Chunk, boxes_overlap, limited_candidate_pairs, overlap_mask, uncovered
from .planner_helpers import create_read_items_for_chunk_list
from .records import (
    BytesStorageMetadata,
    TensorStorageMetadata,
    chunk_storage,
    metadata_of,
    storage_data_of,
    tensor_entries,
)
from .sharding import Layout, check_load_rank, chunk_holders, mesh_coordinate
from .sources import as_record

__all__ = [
    "Tile",
    "box_fields",
    "Picture",
    "RankScale",
    "LabelBox",
    "place_labels",
    "label_size",
    "BarsData",
    "TrafficData",
    "LayoutPanels",
    "layout_data",
    "layout_panels",
    "layout_slabs",
    "reshard_data",
    "mesh_data",
    "traffic_data",
    "bytes_per_rank_data",
    "MAX_PANELS",
    "MAX_LABELS",
]

MAX_PANELS = 16  # small multiples beyond this are left out (and said so in a note)
# Tiles given a label text, per layer; `place_labels` then draws only those that fit, so this
# bounds the cost of the text objects, not the clutter (64: an 8 x 8 mesh's chunks)
MAX_LABELS = 64
MAX_NOTE_ITEMS = 8  # chunks / regions named in one note line before "... (+n more)"
UNCOVERED_COLOR = "#d62728"
HELD_COLOR = "#2ca02c"
WANTED_COLOR = "#555555"
# Label boxes in pixels: DejaVu Sans (matplotlib's default) advances digits by 1303/2048 em, the
# widest glyphs most labels hold, and a line of text takes 1.2 em; padding keeps a label off
# its tile's edge.
CHAR_EM = 0.64
WIDE_EM = 0.87  # "\u2190", "#", "w" and capitals (DejaVu Sans: 1716/2048 em and less)
FULL_EM = 1.0  # "W", "M", "m", "%", "@" and anything past Latin (CJK keys, emoji)
LINE_EM = 1.2
DESCENT_EM = 0.15
LABEL_PAD_PX = 2.0
# Which labels are placed first (greedy, by priority): the load rank's reads, then its own
# boxes, then the chunks of the picture, the saved chunks last.
LABEL_PRIORITY = {"read": 0, "target": 1, "chunk": 2, "cell": 3, "saved": 4}
# Chunk tiles get outlines up to this many: past it, seams would hide the tiles (and strokes
# double Agg's cost); neighbouring ranks' hues differ anyway.
MAX_OUTLINED = 256


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
class RankScale:
    """Tiles coloured on the continuous rank scale of ranks ``0..n-1``
    (`colors.rank_scale_color`), to be drawn as a colour bar titled ``label``: the picture has
    more than `colors.MAX_CATEGORICAL_RANKS` ranks, too many for one legend swatch each."""

    label: str
    n: int


@dataclass(frozen=True, slots=True)
class Picture:
    """A drawable picture: tiles in drawing order (later on top), the drawn extent, titles, side
    notes (facts that have no area, e.g. empty shards), legend entries
    ``(label, face, edge, hatch)`` and, past `colors.MAX_CATEGORICAL_RANKS` ranks, the
    continuous rank ``scale`` the tiles are coloured on (None: categorical rank colours)."""

    tiles: tuple[Tile, ...]
    width: int
    height: int
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    notes: tuple[str, ...] = ()
    legend: tuple[tuple[str, str | None, str, str | None], ...] = ()
    window: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) shown; None: everything
    scale: RankScale | None = None

    def of_kind(self, kind: str) -> list[Tile]:
        return [t for t in self.tiles if t.kind == kind]


# ----------------------------------------------------------------------------- labels
@dataclass(frozen=True, slots=True)
class LabelBox:
    """A label placed on a picture: the ``tile`` (index into ``Picture.tiles``) it names, the
    ``text`` shown (the tile's label, or its first line when only that fits) and its box in
    pixels from the view's top left corner (``x``, ``y`` its top left, ``w``, ``h``)."""

    tile: int
    text: str
    x: float
    y: float
    w: float
    h: float


def _advance(c: str) -> float:
    """An upper bound of a glyph's advance in DejaVu Sans, in em."""
    if c == "\u2190" or c == "#" or c == "w" or "A" <= c <= "Z" and c not in "MW":
        return WIDE_EM
    if c in "WMm%@" or c > "\u024f":
        return FULL_EM
    return CHAR_EM


def label_size(text: str, font_px: float) -> tuple[float, float]:
    """``(width, height)`` in pixels a label of ``text`` takes at ``font_px``, an upper bound
    from DejaVu Sans's advances (`CHAR_EM`, `WIDE_EM`, `FULL_EM`); the drawing measures with
    the renderer's own metrics instead (`place_labels`' ``measure``)."""
    lines = text.split("\n")
    widest = max(sum(map(_advance, line)) for line in lines)
    # matplotlib adds the last line's descent below the lines' spacing
    return widest * font_px, (len(lines) * LINE_EM + DESCENT_EM) * font_px


def place_labels(
    picture: Picture,
    width_px: float,
    height_px: float,
    *,
    font_px: float = 8.0,
    window: tuple[float, float, float, float] | None = None,
    measure=None,
) -> tuple[LabelBox, ...]:
    """Which labels of ``picture`` are drawn, and where, on a view of ``width_px`` x
    ``height_px`` pixels showing ``window`` (``(x0, y0, x1, y1)`` in element units; default the
    picture's window, else all of it).

    Greedy by priority (`LABEL_PRIORITY`: the load rank's reads first, the saved chunks last;
    drawing order within a kind): a label goes at its tile's visible centre (a ``corner`` label
    at its top left), padded by `LABEL_PAD_PX`; when the whole text does not fit inside the
    visible part of its tile, its first line is tried; a label that still does not fit, whose
    box overlaps one already placed, or that lies on a tile of another kind already labelled
    (the rank's box under its lit reads), is left out. So no two drawn labels overlap and none spills
    out of its tile, at any size and zoom. ``measure(text)`` gives a label's ``(width,
    height)`` in pixels (default `label_size` at ``font_px``; a renderer's metrics when drawing).
    """
    measure = measure or (lambda text: label_size(text, font_px))
    x0, y0, x1, y1 = window or picture.window or (0, 0, picture.width, picture.height)
    sx = width_px / max(x1 - x0, 1e-12)
    sy = height_px / max(y1 - y0, 1e-12)
    order = sorted(
        (i for i, t in enumerate(picture.tiles) if t.label),
        key=lambda i: (LABEL_PRIORITY.get(picture.tiles[i].kind, len(LABEL_PRIORITY)), i),
    )
    pad = LABEL_PAD_PX
    placed: list[LabelBox] = []
    # what a new label must not overlap: the labels placed (kind None: any label) and the tiles
    # they name (their kind: labels of other kinds, e.g. the rank's box behind its lit reads),
    # in a uniform grid of 64 px cells, so each box is tested against its neighbours only
    cell = 64.0
    grid: dict[tuple[int, int], list[tuple[float, float, float, float, str | None]]] = {}

    def cells(x, y, w, h):
        return [
            (cx, cy)
            for cx in range(int(x // cell), int((x + w) // cell) + 1)
            for cy in range(int(y // cell), int((y + h) // cell) + 1)
        ]

    for i in order:
        t = picture.tiles[i]
        # the tile's visible part, in pixels from the view's top left
        left, right = (max(t.x, x0) - x0) * sx, (min(t.x + t.w, x1) - x0) * sx
        top, bottom = (max(t.y, y0) - y0) * sy, (min(t.y + t.h, y1) - y0) * sy
        if right - left <= 2 * pad or bottom - top <= 2 * pad:
            continue
        first = t.label.split("\n", 1)[0]
        for text in dict.fromkeys((t.label, first)):
            w, h = measure(text)
            if w > right - left - 2 * pad or h > bottom - top - 2 * pad:
                continue
            if t.label_at == "corner":
                bx, by = left + pad, top + pad
            else:
                bx, by = (left + right - w) / 2, (top + bottom - h) / 2
            near = {id(o): o for c in cells(bx, by, w, h) for o in grid.get(c, ())}.values()
            if any(
                (kind is None or kind != t.kind)
                and boxes_overlap((bx, by), (w, h), (ox, oy), (ow, oh))
                for ox, oy, ow, oh, kind in near
            ):
                continue
            placed.append(LabelBox(tile=i, text=text, x=bx, y=by, w=w, h=h))
            for box in ((bx, by, w, h, None), (left, top, right - left, bottom - top, t.kind)):
                for c in cells(*box[:4]):
                    grid.setdefault(c, []).append(box)
            break
    return tuple(placed)


# ----------------------------------------------------------------------------- rank colours
def _painter(ranks, what: str):
    """``(colour of a rank, RankScale or None)`` for a picture of tiles of ``ranks`` (tuples;
    the first rank colours a tile): categorical rank colours up to `MAX_CATEGORICAL_RANKS`
    distinct ranks, else the continuous scale over ``0..max rank``."""
    distinct = {r[0] for r in ranks if r}
    if len(distinct) <= MAX_CATEGORICAL_RANKS:
        return rank_color, None
    n = max(distinct) + 1
    scale = RankScale(label=f"{what} (continuous scale, {len(distinct)} ranks)", n=n)
    return (lambda r: rank_scale_color(r, n)), scale


def _overlapping(rects: Sequence[tuple[int, int, int, int]]) -> set[int]:
    """Indices of the rectangles ``(x, y, w, h)`` that share area with another one (saved
    chunks of a damaged checkpoint, explicit layouts)."""
    if len(rects) < 2:
        return set()
    a = np.array(rects, dtype=np.int64).reshape(-1, 4)
    off, size = a[:, :2], a[:, 2:]
    i, j, _ = limited_candidate_pairs(off, size, off, size, limit=1_000_000)
    keep = (i != j) & overlap_mask(off[i], size[i], off[j], size[j])
    return set(i[keep].tolist())


def box_fields(rect: tuple[int, int, int, int]) -> dict[str, int]:
    """A view rectangle ``(x, y, w, h)`` as `Tile` fields."""
    x, y, w, h = rect
    return {"x": x, "y": y, "w": w, "h": h}


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
    """One swatch per rank colouring a tile, up to `MAX_CATEGORICAL_RANKS` (beyond, the picture
    has a colour bar instead: `RankScale`)."""
    distinct = sorted({r for rs in ranks for r in rs[:1]})
    if not distinct or len(distinct) > MAX_CATEGORICAL_RANKS:
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
    paint, scale = _painter([r for _, _, r, _, _ in rects], "writer rank" if writers else "rank")
    # a chunk sharing area with another is drawn translucent and outlined in its own colour, so
    # the one drawn later does not hide it
    overlapping = _overlapping([rect for rect, *_ in rects])
    tiles = []
    for k, ((x, y, w, h), c, ranks, lab, mis) in enumerate(rects):
        color = paint(ranks[0]) if ranks else UNKNOWN_COLOR
        text = (f"{lab}\n{c}" if long else lab) if label else None
        over = k in overlapping
        tiles.append(
            Tile(
                x=x,
                y=y,
                w=w,
                h=h,
                kind="chunk",
                face=color,
                edge=color if over else "#ffffff",
                alpha=0.45 if over else 1.0,
                hatch="//" if mis else None,
                linestyle="solid",
                linewidth=1.6 if over else width,
                label=text,
                ranks=tuple(ranks),
            )
        )
    slab = view.slab_name()
    legend = () if scale else _rank_legend(b.ranks, "writer r" if writers else "r")
    if writers and any(not r for r in b.ranks):
        legend += (("writer unknown", UNKNOWN_COLOR, UNKNOWN_COLOR, None),)
    notes = b.notes
    if overlapping:
        notes += (
            f"{len(overlapping)} chunks share elements with another: drawn translucent, "
            "outlined in their colour",
        )
    return Picture(
        tiles=tuple(tiles),
        width=view.width,
        height=view.height,
        title=b.title + (f" ({slab})" if slab else ""),
        xlabel=view.xlabel,
        ylabel=view.ylabel,
        notes=notes,
        legend=legend,
        scale=scale,
    )


def layout_data(
    source,
    dims=(0, 1),
    *,
    at: dict[int, int] | None = None,
    fqn: str | None = None,
    max_labels: int = MAX_LABELS,
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


@dataclass(frozen=True, slots=True)
class LayoutPanels:
    """A layout drawn whole (``single``: a 1-D or 2-D tensor, or one slab chosen with ``at``) or
    as small multiples of an N-D tensor (``ndim`` dims): one `Picture` per slab of the dims not
    drawn (at most ``max_panels``, ``slabs`` naming each), the figure's ``title`` and ``notes``."""

    pictures: tuple[Picture, ...]
    slabs: tuple[str, ...]
    title: str
    notes: tuple[str, ...]
    single: bool
    ndim: int


def layout_panels(
    source,
    dims=(0, 1),
    *,
    fqn: str | None = None,
    at=None,
    max_labels: int = MAX_LABELS,
    max_panels: int = MAX_PANELS,
) -> LayoutPanels:
    """`layout_data` as panels: one picture when the tensor has no other dims or ``at`` fixes
    them, else one per slab of the other dims (`layout_slabs`)."""
    b = _boxes(source, fqn)
    writers = not isinstance(source, Layout)
    view = _View(b.shape, dims, at, fqn)
    if not view.others or at is not None:
        pic = _layout_picture(b, view, max_labels, writers)
        return LayoutPanels(
            pictures=(pic,),
            slabs=("",),
            title=pic.title,
            notes=pic.notes,
            single=True,
            ndim=len(b.shape),
        )
    slabs = _slabs(b, view)
    shown = slabs[:max_panels]
    pictures = tuple(
        _layout_picture(b, _View(b.shape, dims, slab, fqn), max_labels, writers) for slab in shown
    )
    notes = list(b.notes)
    if len(slabs) > len(shown):
        notes.append(f"showing {len(shown)} of {len(slabs)} slabs; pass at= for another")
    return LayoutPanels(
        pictures=pictures,
        slabs=tuple(_slab_name(s) for s in shown),
        title=b.title,
        notes=tuple(notes),
        single=False,
        ndim=len(b.shape),
    )


# ----------------------------------------------------------------------------- reshard
def _wanted(target, fqn: str, tsm: TensorStorageMetadata, rank: int):
    """(Layout, the rank's read items for fqn in DCP's order, notes of what torch raises) of a
    load result or a Layout (read items then computed with `create_read_items_for_chunk_list`)."""
    if isinstance(target, Layout):
        layout = target
        check_load_rank(rank, layout.world_size, fqn)
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
    check_load_rank(rank, len(target.plans), fqn)
    items = [it for it in target.plans[rank].items if it.dest_index.fqn == fqn]
    # what torch raises on this entry (the picture shows holes and misdescription itself)
    notes = tuple(
        f"torch raises: {msg}"
        for name, ranks, msg in getattr(target, "failures", ())
        if name == fqn and rank in ranks
    )
    return layout, items, notes


_LAYERS: dict = {}  # key -> (the objects whose ids are in the key, value); see _layer
_LAYERS_KEPT = 12


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


def _holes(tsm: TensorStorageMetadata, box: Chunk) -> list[Chunk]:
    """`geometry.uncovered` of ``box`` by the saved chunks, given only the chunks that share
    elements with it (found with numpy over the saved boxes, kept per chunk list): the same
    pieces, without a Python intersection per saved chunk for every rank drawn."""
    chunks = tsm.chunks
    off, end = _layer(tuple(chunks), ("saved boxes",), lambda: _box_arrays(chunks, len(tsm.size)))
    if box.ndim == 0 or not len(off):
        return uncovered(box, chunks)
    lo = np.maximum(off, np.asarray(box.offsets, np.int64))
    hi = np.minimum(end, np.asarray(box.ends, np.int64))
    meets = np.flatnonzero((hi > lo).all(axis=1))
    return uncovered(box, [chunks[i] for i in meets])


def _box_arrays(chunks, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, ends) of saved chunks as int64 (n, ndim) arrays."""
    off = np.array([c.offsets for c in chunks], np.int64).reshape(len(chunks), ndim)
    return off, off + np.array([c.sizes for c in chunks], np.int64).reshape(len(chunks), ndim)


def _saved_layer(
    tsm: TensorStorageMetadata, md, fqn: str, view: _View, max_labels: int
) -> tuple[_Boxes, tuple[Tile, ...], RankScale | None]:
    """The saved chunks' `_Boxes`, their ``saved`` tiles (see `reshard_data`) and the writers'
    colour scale (None: categorical writer colours)."""
    saved = _checkpoint_boxes(tsm, md, fqn)
    paint, scale = _painter(saved.ranks, "writer rank")
    shown = [(view.rect(c), w, lab) for c, w, lab in zip(saved.chunks, saved.ranks, saved.labels)]
    shown = [s for s in shown if s[0]]
    label = len(shown) <= max_labels
    edge = 1.0 if len(shown) <= MAX_OUTLINED else 0.0
    tiles = []
    for rect, w, lab in shown:
        color = paint(w[0]) if w else UNKNOWN_COLOR
        tiles.append(
            Tile(
                **box_fields(rect),
                kind="saved",
                face=color,
                edge=color,
                alpha=0.22,
                hatch=None,
                linestyle="solid",
                linewidth=edge,
                label=lab if label else None,
                ranks=w,
                label_at="corner",
            )
        )
    return saved, tuple(tiles), scale


def _wanted_layer(layout: Layout, view: _View) -> tuple[tuple[Tile, ...], ...]:
    """Each rank's ``wanted`` tiles (grey outlines of its destination chunks)."""
    # solid hairlines: dashes cost Agg several times more for thousands of boxes
    return tuple(
        tuple(
            Tile(
                **box_fields(rect),
                kind="wanted",
                face=None,
                edge=WANTED_COLOR,
                alpha=1.0,
                hatch=None,
                linestyle="solid",
                linewidth=0.5,
                label=None,
                ranks=(r,),
            )
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
    max_labels: int = MAX_LABELS,
) -> Picture:
    """Picture data of a reshard of ``fqn`` seen from load rank ``rank``.

    ``source``: the checkpoint (a `Metadata`, a save result or a `TensorStorageMetadata`);
    ``target``: a load result (``plan_load``) or the destination `Layout` (read items are then
    computed with `create_read_items_for_chunk_list`, torch's order).

    Tiles in drawing order: ``saved`` (every saved chunk, pale, in its writer's colour, labelled
    ``#i`` and writer), ``wanted`` (other ranks' destination chunks, grey outlines), ``read``
    (the rank's read items in their source writer's colour, labelled ``k<-#i`` in DCP's order,
    0-based like the read-item table, with the file when known), ``uncovered`` (parts of the rank's chunks no saved chunk
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
    view = _reshard_view(tsm, layout, mine, same_rank, dims, at, zoom, fqn)
    # the saved chunks and the other ranks' chunks do not depend on the rank: computed once for
    # a widget stepping through the ranks of one checkpoint and layout
    seen = (view.shape, view.row, view.col, tuple(view.at.items()), view.window)
    storage = getattr(md, "storage_data", None)
    saved, saved_tiles, scale = _layer(
        (tsm, md, storage, *tsm.chunks),
        ("saved", fqn, len(storage or ()), seen, max_labels),
        lambda: _saved_layer(tsm, md, fqn, view, max_labels),
    )
    tiles = list(saved_tiles)
    if same_rank:
        for r, ts in enumerate(
            _layer((layout,), ("wanted", seen), lambda: _wanted_layer(layout, view))
        ):
            if r != rank:
                tiles.extend(ts)
    read_tiles, sources = _read_tiles(items, saved, view, rank, max_labels, scale)
    tiles += read_tiles
    drawn = mine if same_rank else []
    # holes matter only for a load that happens: where torch raises, nothing is loaded at all
    loads = not problem_notes and layout.shape == tuple(tsm.size)
    holes = [h for c in drawn if loads and not c.is_empty for h in _holes(tsm, c)]
    tiles += [
        _outline(rect, "uncovered", UNCOVERED_COLOR, rank, hatch="xx", linewidth=1.2)
        for rect in map(view.rect, holes)
        if rect
    ]
    misdescribed = same_rank and rank in layout.misdescribed_ranks
    held = layout.held_indices(rank) if misdescribed else None
    if misdescribed:
        tiles += _held_tiles(held, mine[0], view, rank)
    tiles += [
        _outline(
            rect,
            "target",
            "#000000",
            rank,
            linestyle="dashed" if misdescribed else "solid",
            linewidth=2.2,
            # placed after the reads' labels: shown where they have no room (a full view)
            label=f"r{rank}",
        )
        for rect in map(view.rect, drawn)
        if rect
    ]
    notes = [
        f"rank {rank} wants " + (", ".join(str(c) for c in mine) or "nothing"),
        f"{len(items)} read items from {len(sources)} saved chunks"
        + (
            f" in {len({saved.files[s] for s in sources})} files"
            if sources and all(saved.files[s] for s in sources)
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
            f"DCP reads the box {mine[0]} but rank {rank} holds {format_held(held)}: "
            "wrong values, no error"
        )
    notes += problem_notes
    slab = view.slab_name()
    return Picture(
        tiles=tuple(tiles),
        width=view.width,
        height=view.height,
        title=f"{fqn}: rank {rank}'s reads" + (f" ({slab})" if slab else ""),
        xlabel=view.xlabel,
        ylabel=view.ylabel,
        notes=tuple(notes),
        legend=_reshard_legend(saved.ranks, rank, bool(holes), misdescribed, scale),
        window=view.window,
        scale=scale,
    )


def _reshard_view(tsm, layout, mine, same_rank: bool, dims, at, zoom: bool, fqn) -> _View:
    """The grid of a reshard picture: the larger of the saved and wanted shapes, the other dims
    fixed at ``at`` (default: the rank's first chunk's first index), zoomed on the rank's chunks."""
    shape = tuple(max(a, b) for a, b in zip(tsm.size, layout.shape)) if same_rank else tsm.size
    if at is None and len(shape) > 2:
        first = next((c for c in mine if not c.is_empty), None) if same_rank else None
        at = {d: (first.offsets[d] if first else 0) for d in range(len(shape))}
    view = _View(shape, dims, None, fqn)
    if at is not None:
        view = _View(shape, dims, {d: at[d] for d in view.others if d in at}, fqn)
    if zoom and same_rank:
        view.zoom_to(mine)
    return view


def _outline(rect, kind: str, edge: str, rank: int, **style) -> Tile:
    """An unfilled tile of the load rank (holes, held rows, its own boxes)."""
    return Tile(**box_fields(rect), kind=kind, face=None, edge=edge, ranks=(rank,), **style)


def _read_tiles(
    items, saved, view: _View, rank: int, max_labels: int, scale: RankScale | None
) -> tuple[list, set]:
    """The rank's read items in their source writer's colour, numbered in DCP's order (0-based
    like the read-item table's rows, ``k<-#i`` and the file when there are few), and the saved
    chunks they read from."""
    label_reads = len(items) <= max_labels
    with_file = len(items) <= 16
    tiles, sources = [], set()
    for k, item in enumerate(items):
        si = item.storage_index.index
        sources.add(si)
        w = saved.ranks[si]
        rect = view.rect(item.dest_chunk)
        if not rect:
            continue
        text = f"{k}\u2190#{si}"
        if with_file and saved.files[si]:
            text += f"\n{saved.files[si]}"
        tiles.append(
            Tile(
                **box_fields(rect),
                kind="read",
                face=(rank_scale_color(w[0], scale.n) if scale else rank_color(w[0]))
                if w
                else HIGHLIGHT_COLOR,
                edge="#000000",
                alpha=0.85,
                linewidth=1.0,
                label=text if label_reads else None,
                ranks=(rank,),
            )
        )
    return tiles, sources


def _held_tiles(held: dict, box: Chunk, view: _View, rank: int) -> list[Tile]:
    """The rows (and columns) a misdescribed rank really holds, one tile per run."""
    per_dim = []
    for d in (view.row, view.col):
        if d is None:
            per_dim.append([(0, 1)])  # a strip's one row
        else:
            per_dim.append(index_runs(held[d]) if d in held else [(box.offsets[d], box.ends[d])])
    return [
        _outline((x0, y0, x1 - x0, y1 - y0), "held", HELD_COLOR, rank, hatch="//", linewidth=1.5)
        for (y0, y1), (x0, x1) in product(*per_dim)
    ]


def _reshard_legend(
    writer_ranks, rank: int, holes: bool, misdescribed: bool, scale: RankScale | None
) -> tuple:
    legend = (
        (() if scale else _rank_legend(writer_ranks, "writer r"))
        + (
            ("saved chunk #i (pale)", "#e4e4e4", "#bdbdbd", None),
            (f"rank {rank}'s read k\u2190#i (DCP order)", "#8c8c8c", "#000000", None),
        )
        + (
            (("saved, writer unknown", UNKNOWN_COLOR, UNKNOWN_COLOR, None),)
            if any(not w for w in writer_ranks)
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
    return legend


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
                x=x,
                y=y,
                w=1,
                h=1,
                kind="cell",
                face=color,
                edge=color if is_empty else "#ffffff",
                alpha=0.3 if is_empty else 1.0,
                hatch=hatch,
                linestyle="solid",
                linewidth=1.0,
                label=label,
                ranks=(r,),
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
        tiles=tuple(tiles),
        width=cols,
        height=rows,
        title=title,
        xlabel=f"mesh dim {max(len(mesh) - 1, 0)}",
        ylabel=ylabel,
        notes=tuple(notes),
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
        ranks=tuple(range(io.traffic.shape[0])),
        files=tuple(io.files),
        writers=tuple(None if w < 0 else w for w in io.file_writers.tolist()),
        matrix=io.traffic,
    )


LOADED_COLOR = "#9ecae1"  # bytes a rank loads: light, the larger quantity behind
NEEDED_COLOR = "#08519c"  # bytes it needs: dark, in front
WRITTEN_COLOR = "#3182bd"


@dataclass(frozen=True)
class BarsData:
    """Bytes per rank: ``values`` (one bar per rank, ``label`` in the legend, ``color``) and an
    optional second quantity per rank, ``reference`` (bytes needed, ``reference_label``, drawn
    as a narrower dark bar in front of the first)."""

    ranks: tuple[int, ...]
    values: np.ndarray
    color: str
    label: str
    reference: np.ndarray | None
    reference_color: str | None
    reference_label: str | None
    ylabel: str
    title: str


def bytes_per_rank_data(result) -> BarsData:
    """Bytes per rank of a save result (``bytes_written`` after dedup) or of a load result (bytes
    loaded, and the bytes needed as the second quantity; from ``load_result.io``). Titles write
    bytes with `formatting.format_bytes`."""
    if hasattr(result, "bytes_written"):
        values = np.asarray(result.bytes_written, dtype=np.float64)
        total = values.sum()
        return BarsData(
            ranks=tuple(range(len(values))),
            values=values,
            color=WRITTEN_COLOR,
            label="bytes written",
            reference=None,
            reference_color=None,
            reference_label=None,
            ylabel="bytes written",
            title=f"save: {format_bytes(total)} written by {len(values)} ranks "
            f"(at most {format_bytes(values.max(initial=0))} per rank)",
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
    needed = io.bytes_needed.astype(np.float64)
    loaded, want = values.sum(), needed.sum()
    ratio = f", {loaded / want:.1f}x what is needed" if want else ""
    return BarsData(
        ranks=tuple(range(len(values))),
        values=values,
        color=LOADED_COLOR,
        label="loaded (whole saved chunks)",
        reference=needed,
        reference_color=NEEDED_COLOR,
        reference_label="needed (what the rank keeps)",
        ylabel="bytes per rank",
        title=f"load: {format_bytes(loaded)} loaded, {format_bytes(want)} needed{ratio}",
    )
