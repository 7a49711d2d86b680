"""Canvas scenes: what the interactive canvas draws, as numpy columns and a small JSON dict.

A `Scene` is the canvas's whole input: one row per tile in drawing order (later on top) as
binary columns (``boxes`` x, y, w, h in data units; ``fills`` RGBA; ``kinds``; the rank a click
selects; the tile's row in its kind's facts; ``facts`` file / byte offset / byte length;
``extents`` the full n-d box for tooltips) and ``meta``, the JSON part (styles, labels, axes,
legend, notes, the load rank's read rows, problems, per-tile tooltip lines for small scenes).
Columns travel to the browser as binary buffers (``.tobytes()``), never as JSON lists, so 10^6
tiles cost one copy.

Builders: `chunk_scene` (one tensor's saved chunks, the other ranks' wanted chunks, the load
rank's read items in DCP's order, holes and held rows from `picture_data`), `model_scene` (every
tensor of a checkpoint or plan, sized by bytes, grouped by layer, coloured by worst problem or
read amplification), `traffic_scene` (rank x file bytes) and `bytes_scene` (bytes loaded vs
needed per rank). Also `model_map_data`, the per-tensor numbers behind the model map.

Colour rule: up to `CATEGORICAL_RANKS` distinct ranks get `colors.rank_color` (categorical, with a
legend entry each); more ranks get a continuous colour scale whose legend says so.
Imports the core, `colors` and `picture_data`; no ipywidgets, anywidget, pandas or matplotlib.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..colors import (
    HIGHLIGHT_COLOR,
    MAX_CATEGORICAL_RANKS,
    RANK_SCALE,
    UNKNOWN_COLOR,
    rank_color,
)
from ..formats.dcp_files import writer_of_file
from ..formatting import format_bytes
from ..records import (
    BytesStorageMetadata,
    TensorStorageMetadata,
    chunk_storage,
    storage_data_of,
)

__all__ = [
    "CATEGORICAL_RANKS",
    "STYLES",
    "Scene",
    "ModelMapData",
    "chunk_scene",
    "checkpoint_scene",
    "model_map_data",
    "model_scene",
    "traffic_scene",
    "bytes_scene",
    "synthetic_scene",
    "empty_scene",
    "rgba",
]

# as many ranks as the static pictures colour one by one, so both switch to the scale together
CATEGORICAL_RANKS = MAX_CATEGORICAL_RANKS
# Per-kind drawing styles, in the order the canvas strokes them: edge colour, line width (css
# px), dash, hatch, whether hovering picks the tile before others (higher wins), the smallest
# on-screen size (px) at which the outline is drawn.
STYLES: dict[str, dict] = {
    "saved": dict(edge="#ffffff", width=1.0, hit=2, minpx=4),
    "chunk": dict(edge="#ffffff", width=1.0, hit=2, minpx=4),
    "wanted": dict(edge="#555555", width=0.8, dash=[3, 3], hit=1, minpx=6),
    "read": dict(edge="#000000", width=1.2, hit=5, minpx=2),
    "uncovered": dict(edge="#d62728", width=1.4, hatch="xx", hit=4, minpx=2),
    "held": dict(edge="#2ca02c", width=1.6, hatch="//", hit=3, minpx=2),
    "target": dict(edge="#000000", width=2.4, hit=0, minpx=1),
    "tensor": dict(edge="#ffffff", width=1.0, hit=2, minpx=3),
    "cell": dict(edge="#ffffff", width=0.5, hit=2, minpx=6),
    "bar": dict(edge="#333333", width=0.6, hit=2, minpx=3),
    "need": dict(edge="#000000", width=0.8, hit=3, minpx=2),
}
KIND_CODES = {k: i for i, k in enumerate(STYLES)}
# the continuous scale of ranks (beyond CATEGORICAL_RANKS) and of values: the pictures' one
SCALE = RANK_SCALE
# Sequential light-to-dark blues: traffic matrix (0 bytes stays white)
BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#084594")
SEVERITY_COLORS = {"error": "#d62728", "silent": "#ff7f0e", "warning": "#bcbd22", None: "#9ecae1"}
MAX_READ_ROWS = 5000  # read rows shipped to the canvas's table (a note says when cut)


# ----------------------------------------------------------------------------- colours
def rgba(color: str | None, alpha: float = 1.0) -> int:
    """``"#1f77b4"`` and an alpha -> ``0xRRGGBBAA`` (0 for no fill)."""
    if color is None:
        return 0
    c = color.lstrip("#")
    return (int(c, 16) << 8) | max(0, min(255, round(alpha * 255)))


def _scale_colors(t: np.ndarray, stops: Sequence[str] = SCALE) -> np.ndarray:
    """Values in [0, 1] -> RGB uint32 (``0xRRGGBB``) along ``stops``, linearly."""
    rgb = np.array([[int(s[i : i + 2], 16) for i in (1, 3, 5)] for s in stops], np.float64)
    pos = np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0) * (len(stops) - 1)
    lo = np.minimum(pos.astype(np.int64), len(stops) - 2)
    f = (pos - lo)[:, None]
    c = np.rint(rgb[lo] * (1 - f) + rgb[lo + 1] * f).astype(np.uint32)
    return (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]


def _rank_fills(ranks: np.ndarray, alpha: float, n_ranks: int) -> np.ndarray:
    """RGBA per tile of a rank column (-1: unknown grey): categorical up to CATEGORICAL_RANKS
    distinct ranks in the scene, a continuous scale over [0, n_ranks) beyond."""
    a = np.uint32(max(0, min(255, round(alpha * 255))))
    out = np.empty(len(ranks), np.uint32)
    known = ranks >= 0
    out[~known] = rgba(UNKNOWN_COLOR, alpha)
    if n_ranks <= CATEGORICAL_RANKS:
        lut = np.array([rgba(rank_color(r), alpha) for r in range(max(n_ranks, 1))], np.uint32)
        out[known] = lut[ranks[known]]
    else:
        out[known] = (_scale_colors(ranks[known] / max(n_ranks - 1, 1)) << 8) | a
    return out


def _rank_legend(n_ranks: int, present: Sequence[int], what: str, unknown: bool) -> dict:
    """Legend of a rank colouring: entries when categorical, a scale that says so otherwise."""
    legend: dict = {"entries": [], "scale": None}
    if n_ranks <= CATEGORICAL_RANKS:
        legend["entries"] = [[f"{what} {r}", rank_color(r), None, None] for r in present]
    else:
        legend["scale"] = {
            "label": f"{what} (continuous scale, {n_ranks} ranks)",
            "colors": list(SCALE),
            "min": "0",
            "max": str(n_ranks - 1),
        }
    if unknown:
        legend["entries"].append([f"{what} unknown", UNKNOWN_COLOR, None, None])
    return legend


# ----------------------------------------------------------------------------- scene
@dataclass(frozen=True, eq=False)
class Scene:
    """One canvas picture: tile columns (numpy, one row per tile, drawing order) and ``meta``.

    ``boxes`` float64 (n, 4) x, y, w, h; ``fills`` uint32 RGBA (alpha 0: outline only);
    ``kinds`` uint8 codes of `STYLES`; ``ranks`` int32 the rank a click on the tile selects (-1:
    none); ``items`` int32 the tile's row in its kind's facts (saved chunk #, read order,
    tensor #, ...); ``facts`` float64 (n, 3) file index, byte offset, byte length (nan unknown);
    ``extents`` float64 (n, 2 * ndim) the tile's full box (offsets then sizes) or None."""

    boxes: np.ndarray
    fills: np.ndarray
    kinds: np.ndarray
    ranks: np.ndarray
    items: np.ndarray
    facts: np.ndarray
    extents: np.ndarray | None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.boxes)

    def of_kind(self, kind: str) -> np.ndarray:
        """Row numbers of the tiles of ``kind``."""
        return np.flatnonzero(self.kinds == KIND_CODES[kind])

    def buffers(self) -> dict[str, bytes]:
        """The columns as the canvas's binary traits."""
        ext = self.extents if self.extents is not None else np.zeros((len(self), 0))
        return {
            "boxes": np.ascontiguousarray(self.boxes, np.float64).tobytes(),
            "fills": np.ascontiguousarray(self.fills, np.uint32).tobytes(),
            "kinds": np.ascontiguousarray(self.kinds, np.uint8).tobytes(),
            "ranks": np.ascontiguousarray(self.ranks, np.int32).tobytes(),
            "items": np.ascontiguousarray(self.items, np.int32).tobytes(),
            "facts": np.ascontiguousarray(self.facts, np.float64).tobytes(),
            "extents": np.ascontiguousarray(ext, np.float64).tobytes(),
        }


class _Builder:
    """Tiles appended layer by layer (numpy blocks), then stacked into a `Scene`."""

    def __init__(self, ndim: int):
        self.ndim = ndim
        self.parts: list[dict] = []
        self.labels: list[list] = []
        self.n = 0

    def add(self, kind, boxes, fills, ranks, items, facts=None, extents=None) -> int:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        k = len(boxes)
        full = lambda v, dt: np.broadcast_to(np.asarray(v, dt), (k,)).copy()  # noqa: E731
        self.parts.append(
            dict(
                boxes=boxes,
                fills=full(fills, np.uint32),
                kinds=np.full(k, KIND_CODES[kind], np.uint8),
                ranks=full(ranks, np.int32),
                items=full(items, np.int32),
                facts=np.full((k, 3), np.nan) if facts is None else np.asarray(facts, np.float64),
                extents=(
                    np.zeros((k, 2 * self.ndim))
                    if extents is None
                    else np.asarray(extents, np.float64).reshape(k, 2 * self.ndim)
                ),
            )
        )
        first = self.n
        self.n += k
        return first

    def label(self, tile: int, text: str, priority: int) -> None:
        self.labels.append([int(tile), text, int(priority)])

    def scene(self, meta: dict) -> Scene:
        cols = {}
        for name, dt in (
            ("boxes", np.float64),
            ("fills", np.uint32),
            ("kinds", np.uint8),
            ("ranks", np.int32),
            ("items", np.int32),
            ("facts", np.float64),
            ("extents", np.float64),
        ):
            arrays = [p[name] for p in self.parts]
            if arrays:
                cols[name] = np.concatenate(arrays).astype(dt, copy=False)
            else:
                width = {"boxes": 4, "facts": 3, "extents": 2 * self.ndim}.get(name)
                cols[name] = np.zeros((0, width) if width else 0, dt)
        meta = dict(meta)
        meta.setdefault("styles", [dict(name=k, **v) for k, v in STYLES.items()])
        meta["labels"] = self.labels
        meta["ndim"] = self.ndim
        return Scene(**cols, meta=meta)


# ----------------------------------------------------------------------------- one tensor
def _drawn_dims(ndim: int, dims) -> tuple[int | None, int | None, tuple[int, ...]]:
    """(row dim, col dim, other dims) as picture_data draws them (validated there first)."""
    dims = tuple(int(d) for d in ((dims,) if isinstance(dims, int) else dims))
    if ndim < 2 and dims == (0, 1):
        dims = (0,) if ndim == 1 else ()
    if ndim == 0:
        dims = ()
    norm = tuple(d % ndim for d in dims) if ndim else ()
    row = norm[0] if len(norm) == 2 else None
    col = norm[-1] if norm else None
    return row, col, tuple(d for d in range(ndim) if d not in norm)


def _rects(offs: np.ndarray, sizes: np.ndarray, row, col, at: Mapping[int, int]):
    """(mask of boxes drawn, their x, y, w, h): non-empty boxes that contain the slab ``at``."""
    n = len(offs)
    keep = np.all(sizes > 0, axis=1) if sizes.shape[1] else np.ones(n, bool)
    for d, i in at.items():
        keep &= (offs[:, d] <= i) & (i < offs[:, d] + sizes[:, d])
    one, zero = np.ones(n), np.zeros(n)
    x = offs[:, col] if col is not None else zero
    w = sizes[:, col] if col is not None else one
    y = offs[:, row] if row is not None else zero
    h = sizes[:, row] if row is not None else one
    return keep, np.stack([x, y, w, h], axis=1).astype(np.float64)[keep]


def _boxes_of(chunks, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    if not chunks:
        return np.zeros((0, ndim), np.int64), np.zeros((0, ndim), np.int64)
    return (
        np.array([c.offsets for c in chunks], np.int64).reshape(-1, ndim),
        np.array([c.sizes for c in chunks], np.int64).reshape(-1, ndim),
    )


_LAYER_CACHE: OrderedDict = OrderedDict()


def _cached(objs: tuple, params: tuple, make):
    """``make()``, kept for the last few (``objs`` by identity, ``params``) keys: the parts of a
    chunk scene that do not change with the load rank. Each entry holds its ``objs``, so their
    ids are not reused while it is kept; the records are not modified once made."""
    key = (tuple(map(id, objs)), params)
    hit = _LAYER_CACHE.get(key)
    if hit is not None:
        _LAYER_CACHE.move_to_end(key)
        return hit[1]
    value = make()
    _LAYER_CACHE[key] = (objs, value)
    while len(_LAYER_CACHE) > 16:
        _LAYER_CACHE.popitem(last=False)
    return value


def _saved_facts(metadata, fqn: str, tsm, nd: int):
    """(offsets, sizes, file names, facts (file #, byte offset, byte length), writers) of the
    saved chunks of ``fqn``, cached on the records (a widget stepping through load ranks looks
    the 4096 storage entries up once)."""
    storage = storage_data_of(metadata)
    return _cached((tsm, storage), ("saved facts", fqn), lambda: _read_facts(storage, fqn, tsm, nd))


def _read_facts(storage, fqn: str, tsm, nd: int):
    """`_saved_facts` computed from the storage map."""
    offs, sizes = _boxes_of(tsm.chunks, nd)
    infos = chunk_storage(storage, fqn, tsm)
    files: list[str] = []
    file_ids: dict[str, int] = {}
    facts = np.full((len(infos), 3), np.nan)
    writers = np.full(len(infos), -1, np.int64)
    for i, info in enumerate(infos):
        if info is None:
            continue
        name = str(info.relative_path)
        fid = file_ids.setdefault(name, len(file_ids))
        if fid == len(files):
            files.append(name)
        w = writer_of_file(name)
        writers[i] = -1 if w is None else w
        facts[i] = (
            fid,
            np.nan if info.offset is None else info.offset,
            np.nan if info.length is None else info.length,
        )
    # bytes of a chunk whose storage records no length (a planned save): its elements' bytes
    missing = np.isnan(facts[:, 2])
    if missing.any():
        facts[missing, 2] = np.prod(sizes[missing], axis=1) * tsm.properties.element_size
    return offs, sizes, files, facts, writers


def _saved_layer(offs, sizes, facts, writers, n_writers, row, col, at, alpha) -> dict:
    """`_Builder.add` keywords of the saved chunks drawn in the slab ``at``."""
    keep, rects = _rects(offs, sizes, row, col, at)
    idx = np.flatnonzero(keep)
    return dict(
        boxes=rects,
        fills=_rank_fills(writers[idx], alpha, n_writers),
        ranks=writers[idx],
        items=idx,
        facts=facts[idx],
        extents=np.concatenate([offs, sizes], axis=1)[keep],
    )


def _saved_labels(idx: np.ndarray, writers: np.ndarray) -> list[list]:
    """The saved tiles' labels ``#i rW`` (tile j is saved chunk ``idx[j]``), up to 4096 tiles."""
    if len(idx) > 4096:
        return []
    return [
        [j, f"#{i}" + (f" r{w}" if w >= 0 else ""), 1]
        for j, (i, w) in enumerate(zip(idx.tolist(), writers[idx].tolist()))
    ]


def _wanted(layout, row, col, at) -> dict:
    """`_Builder.add` keywords (boxes, ranks, extents) of every load rank's destination chunks
    drawn in the slab ``at``."""
    nd = layout.ndim
    wr = [r for r, cs in enumerate(layout.rank_chunks) for _ in cs]
    wo, ws = _boxes_of([c for cs in layout.rank_chunks for c in cs], nd)
    keep, rects = _rects(wo, ws, row, col, at)
    return dict(
        boxes=rects,
        ranks=np.array(wr, np.int64).reshape(-1)[keep],
        extents=np.concatenate([wo, ws], axis=1)[keep],
    )


def chunk_scene(
    metadata,
    fqn: str,
    load=None,
    rank: int = 0,
    *,
    dims=(0, 1),
    at: Mapping[int, int] | None = None,
    picture=None,
    reads=None,
    problems: Sequence = (),
) -> Scene:
    """The canvas scene of ``fqn``: saved chunks (pale, writer colour, ``#i rW`` labels), and with
    a load result ``load`` the other load ranks' wanted chunks (dashed outlines), load ``rank``'s
    read items in DCP's order (labelled ``k←#i``, k 0-based as in the tables), its own chunks
    (thick outlines); holes and held rows are taken from ``picture`` (``picture_data``'s
    reshard picture of the same view), as are the title and notes. ``reads``: the rank's
    read-item table (``tables.read_items_table``), shipped as the canvas's clickable table.
    ``at`` fixes the dims not drawn (default: the rank's first chunk's first index, as
    ``picture_data.reshard_data`` does)."""
    tsm = metadata.state_dict_metadata[fqn]
    nd = len(tsm.size)
    row, col, others = _drawn_dims(nd, dims)
    layout = load.layouts.get(fqn) if load is not None else None
    same_rank = layout is not None and layout.ndim == nd
    mine = list(layout.chunks(rank)) if same_rank else []
    if at is None:
        first = next((c for c in mine if not c.is_empty), None)
        at = {d: (first.offsets[d] if first else 0) for d in others}
    at = {d: int(at.get(d, 0)) for d in others}
    shape = tuple(max(a, b) for a, b in zip(tsm.size, layout.shape)) if same_rank else tsm.size
    width = shape[col] if col is not None else 1
    height = shape[row] if row is not None else 1
    b = _Builder(nd)

    # saved chunks: writer colour, file and byte range (the same for every load rank: cached)
    offs, sizes, files, facts, writers = _saved_facts(metadata, fqn, tsm, nd)
    n_writers = int(writers.max()) + 1 if len(writers) and writers.max() >= 0 else 0
    alpha = 0.45 if load is not None else 0.9
    saved = _cached(
        (tsm, writers),
        ("saved", row, col, tuple(at.items()), alpha),
        lambda: _saved_layer(offs, sizes, facts, writers, n_writers, row, col, at, alpha),
    )
    idx = saved["items"]
    b.add("saved", **saved)  # the first layer: its tiles' numbers are its labels' own
    b.labels.extend(_cached((tsm, writers), ("saved labels", row, col, tuple(at.items())),
                            lambda: _saved_labels(idx, writers)))  # fmt: skip

    read_rows: list = []
    if same_rank:
        # the other ranks' destination chunks: where a click selects that load rank (every
        # rank's, cached per layout and slab, then this rank's left out)
        wanted = _cached(
            (layout,),
            ("wanted", row, col, tuple(at.items())),
            lambda: _wanted(layout, row, col, at),
        )
        others = wanted["ranks"] != rank
        if others.any():
            b.add("wanted", **{k: v[others] for k, v in wanted.items()}, fills=0, items=-1)
        # the rank's read items, numbered by their place in the rank's LoadPlan (the tables'
        # ``order``, 0-based)
        pairs = [(k, it) for k, it in enumerate(load.plans[rank].items) if it.dest_index.fqn == fqn]
        if pairs:
            dc = [it.dest_chunk for _, it in pairs]
            do, ds = _boxes_of(dc, nd)
            keep_r, rects_r = _rects(do, ds, row, col, at)
            kept = np.flatnonzero(keep_r)
            order = np.array([pairs[j][0] for j in kept.tolist()], np.int64)
            src = np.array([it.storage_index.index for _, it in pairs], np.int64)[kept]
            first_read = b.add(
                "read",
                rects_r,
                _rank_fills(writers[src], 0.9, n_writers),
                rank,
                order,
                facts[src],
                np.concatenate([do, ds], axis=1)[keep_r],
            )
            for j, (k, s_) in enumerate(zip(order.tolist(), src.tolist())):
                b.label(first_read + j, f"{k}\u2190#{s_}", 3)
    if picture is not None:
        for kind in ("uncovered", "held"):
            ts = picture.of_kind(kind)
            if ts:
                b.add(kind, [(t.x, t.y, t.w, t.h) for t in ts], 0, rank, -1)
    if same_rank and mine:
        mo, ms = _boxes_of(mine, nd)
        keep_t, rects_t = _rects(mo, ms, row, col, at)
        first_target = b.add(
            "target",
            rects_t,
            0,
            rank,
            np.flatnonzero(keep_t),
            None,
            np.concatenate([mo, ms], axis=1)[keep_t],
        )
        # named where its reads' labels do not fit (a full view of a large tensor): placed
        # after them, so zoomed in the reads win the room
        for j in range(int(keep_t.sum())):
            b.label(first_target + j, f"rank {rank}", 2)
    if reads is not None and len(reads):
        cols = [
            c
            for c in ("order", "dest_region", "storage_region", "bytes", "source_chunk")
            + ("source_file", "writer")
            if c in reads.columns
        ]
        for rec in reads[cols].head(MAX_READ_ROWS).itertuples(index=False):
            read_rows.append([None if _isnan(v) else _plain(v) for v in rec])
    else:
        cols = []
    shown_writers = np.unique(writers[idx])
    legend = _rank_legend(
        n_writers, shown_writers[shown_writers >= 0].tolist(), "writer", (writers < 0).any()
    )
    if load is not None:
        legend["entries"] += [
            ["wanted by other ranks (click: that rank)", None, "#555555", None],
            [f"rank {rank}'s chunk", None, "#000000", None],
            [f"rank {rank}'s reads (writer's colour)", None, "#000000", None],
            ["lit read", HIGHLIGHT_COLOR, "#000000", None],
        ]
    notes = list(picture.notes) if picture is not None else []
    if reads is not None and len(reads) > MAX_READ_ROWS:
        notes.append(f"the table lists the first {MAX_READ_ROWS} of {len(reads)} read items")
    slab = ", ".join(f"dim {d} = {i}" for d, i in at.items())
    return b.scene(
        dict(
            title=(picture.title if picture is not None else f"{fqn}: {len(tsm.chunks)} chunks")
            + (f" ({slab})" if slab and picture is None else ""),
            width=width,
            height=height,
            xlabel=f"dim {col}" if col is not None else "",
            ylabel=f"dim {row}" if row is not None else "",
            yflip=False,
            aspect="equal",
            files=files,
            fqn=fqn,
            rank=int(rank),
            shape=list(tsm.size),
            dtype=tsm.properties.dtype,
            element_size=int(tsm.properties.element_size),
            legend=legend,
            notes=notes,
            read_columns=cols,
            reads=read_rows,
            problems=[_problem_json(p) for p in problems],
            click="rank",
            mode="chunks",
        )
    )


def checkpoint_scene(plan, result, dims=(0, 1)) -> Scene:
    """The scene of an `explore.explore_checkpoint` result of ``plan``: the load rank's reads
    when the result shows a reshard, else the saved chunks alone."""
    return chunk_scene(
        plan.metadata,
        result.fqn,
        plan.load if result.reshard else None,
        result.rank,
        dims=dims,
        picture=result.picture,
        reads=result.reads if result.reshard else None,
        problems=[p for p in plan.problems if p.fqn == result.fqn],
    )


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _plain(v):
    """A table cell as JSON: numpy scalars to Python, tuples kept as lists, the rest as text."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (int, float, str)) or v is None:
        return v
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return str(v)


def _problem_json(p) -> dict:
    return {
        "kind": p.kind,
        "severity": p.severity,
        "ranks": list(p.ranks),
        "region": list(p.region.offsets) + list(p.region.sizes) if p.region is not None else None,
        "message": p.message,
    }


# ----------------------------------------------------------------------------- whole model
@dataclass(frozen=True, eq=False)
class ModelMapData:
    """Per tensor of a checkpoint (or plan): ``fqns``, ``groups`` (layer: ``layers.3``, or the
    first name part), saved ``nbytes``, bytes ``needed`` and ``loaded`` by all load ranks (0
    without a target), ``amplification`` (loaded / needed, nan when nothing is needed), the
    ``worst`` problem severity (None: no problem) and ``problems`` count."""

    fqns: tuple[str, ...]
    groups: tuple[str, ...]
    nbytes: np.ndarray
    needed: np.ndarray
    loaded: np.ndarray
    amplification: np.ndarray
    worst: tuple[str | None, ...]
    problems: np.ndarray


_LAYER = re.compile(r"^(.*?\b(?:layers|h|blocks|layer)\.\d+)\.")
_SEVERITY_RANK = {"error": 3, "silent": 2, "warning": 1}


def _group(fqn: str) -> str:
    m = _LAYER.match(fqn)
    if m:
        return m[1]
    return fqn.split(".", 1)[0] if "." in fqn else fqn


def model_map_data(metadata, load=None, problems: Sequence = ()) -> ModelMapData:
    """The numbers of the model map: every saved tensor (and bytes entry), its bytes, and with a
    load result what all ranks need and load of it (DCP loads the whole saved chunk of every
    read item, then narrows)."""
    sdm = metadata.state_dict_metadata
    fqns = tuple(sdm)
    nbytes = np.zeros(len(fqns), np.float64)
    needed = np.zeros(len(fqns), np.float64)
    loaded = np.zeros(len(fqns), np.float64)
    for i, (k, md) in enumerate(sdm.items()):
        if isinstance(md, TensorStorageMetadata):
            es = md.properties.element_size
            nbytes[i] = math.prod(md.size) * es
            if load is not None and k in load.blocks:
                block = load.reads(k)
                if block.kind == "tensor" and len(block):
                    _, sizes = _boxes_of(md.chunks, len(md.size))
                    chunk_bytes = np.prod(sizes, axis=1).astype(np.float64) * es
                    needed[i] = float(np.prod(block.lengths, axis=1).sum()) * es
                    loaded[i] = float(chunk_bytes[block.saved_idx].sum())
        elif isinstance(md, BytesStorageMetadata):
            nbytes[i] = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = np.where(needed > 0, loaded / np.maximum(needed, 1), np.nan)
    worst: dict[str, str] = {}
    count: dict[str, int] = {}
    for p in problems:
        count[p.fqn] = count.get(p.fqn, 0) + 1
        if _SEVERITY_RANK.get(p.severity, 0) > _SEVERITY_RANK.get(worst.get(p.fqn), -1):
            worst[p.fqn] = p.severity
    return ModelMapData(
        fqns=fqns,
        groups=tuple(_group(k) for k in fqns),
        nbytes=nbytes,
        needed=needed,
        loaded=loaded,
        amplification=amp,
        worst=tuple(worst.get(k) for k in fqns),
        problems=np.array([count.get(k, 0) for k in fqns], np.int64),
    )


def _worst(row: Sequence[float], short: float) -> float:
    """The worst aspect ratio of a treemap row of areas laid along a side of length ``short``."""
    s = sum(row)
    return max(max(s * s / (short * short * a), short * short * a / (s * s)) for a in row)


def _squarify(values: Sequence[float], x: float, y: float, w: float, h: float) -> list:
    """Rectangles of area proportional to ``values`` (sorted large first) filling (x, y, w, h),
    by the squarified treemap rule (Bruls et al.): rows whose worst aspect ratio stops improving
    are laid along the shorter side."""
    total = float(sum(values))
    if total <= 0 or not values:
        return [(x, y, 0.0, 0.0)] * len(values)
    scale = w * h / total
    areas = [v * scale for v in values]
    out: list = []
    i = 0
    while i < len(areas):
        short = min(w, h)
        row = [areas[i]]
        j = i + 1
        while (
            j < len(areas) and short > 0 and _worst(row + [areas[j]], short) <= _worst(row, short)
        ):
            row.append(areas[j])
            j += 1
        s = sum(row)
        if w >= h:  # lay the row along the left side
            cw = s / h if h else 0
            cy = y
            for a in row:
                ch = a / cw if cw else 0
                out.append((x, cy, cw, ch))
                cy += ch
            x, w = x + cw, w - cw
        else:
            rh = s / w if w else 0
            cx = x
            for a in row:
                cw2 = a / rh if rh else 0
                out.append((cx, y, cw2, rh))
                cx += cw2
            y, h = y + rh, h - rh
        i = j
    return out


def model_scene(data: ModelMapData, *, color_by: str = "problem") -> Scene:
    """The whole model in one map: a treemap of layers (groups), each a treemap of its tensors,
    area by bytes (bytes entries get a minimum sliver), coloured by the worst problem
    (``color_by="problem"``) or by read amplification (``"amplification"``). A click on a
    tensor picks it (the canvas's ``picked`` trait names its index in ``data.fqns``)."""
    sizes = np.maximum(data.nbytes, max(data.nbytes.max(initial=0) * 1e-4, 1.0))
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(data.groups):
        groups.setdefault(g, []).append(i)
    names = sorted(groups, key=lambda g: -sum(sizes[i] for i in groups[g]))
    W_, H_ = 1600.0, 1000.0
    outer = _squarify([sum(sizes[i] for i in groups[g]) for g in names], 0, 0, W_, H_)
    b = _Builder(0)
    boxes = np.zeros((len(data.fqns), 4))
    for g, (gx, gy, gw, gh) in zip(names, outer):
        members = sorted(groups[g], key=lambda i: -sizes[i])
        pad = min(2.0, gw / 10, gh / 10)
        inner = _squarify(
            [sizes[i] for i in members], gx + pad, gy + pad, gw - 2 * pad, gh - 2 * pad
        )
        for i, r in zip(members, inner):
            boxes[i] = r
    if color_by == "amplification":
        amp = data.amplification
        top = float(np.nanmax(amp)) if np.isfinite(amp).any() else 1.0
        top = max(top, 1.0 + 1e-9)
        t = (np.nan_to_num(amp, nan=1.0) - 1.0) / (top - 1.0)
        fills = (_scale_colors(t) << 8) | np.uint32(255)
        fills[~np.isfinite(amp)] = rgba(UNKNOWN_COLOR)
        legend = {
            "entries": [["not loaded", UNKNOWN_COLOR, None, None]],
            "scale": {
                "label": "read amplification (bytes loaded / bytes needed)",
                "colors": list(SCALE),
                "min": "1x",
                "max": f"{top:.3g}x",
            },
        }
    else:
        fills = np.array([rgba(SEVERITY_COLORS[w]) for w in data.worst], np.uint32)
        legend = {
            "entries": [
                ["error (torch raises)", SEVERITY_COLORS["error"], None, None],
                ["silent (wrong or stale values)", SEVERITY_COLORS["silent"], None, None],
                ["warning", SEVERITY_COLORS["warning"], None, None],
                ["no problem", SEVERITY_COLORS[None], None, None],
            ],
            "scale": None,
        }
    order = np.arange(len(data.fqns))
    b.add("tensor", boxes, fills, -1, order)
    tips = []
    for i, k in enumerate(data.fqns):
        lines = [k, f"layer group {data.groups[i]}", f"saved {format_bytes(data.nbytes[i])}"]
        if data.needed[i] > 0:
            lines.append(
                f"loaded {format_bytes(data.loaded[i])} for {format_bytes(data.needed[i])} needed"
                f" ({data.amplification[i]:.2f}x)"
            )
        if data.problems[i]:
            lines.append(f"{data.problems[i]} problem(s), worst: {data.worst[i]}")
        lines.append("click: open its chunk canvas")
        tips.append(lines)
        parts = [p for p in k.split(".") if p not in ("weight", "bias")] or [k]
        b.label(i, parts[-1], int(math.log2(sizes[i] + 1)))
    return b.scene(
        dict(
            title=f"the whole model: {len(data.fqns)} entries in {len(names)} groups, "
            f"area by bytes, colour by {'read amplification' if color_by != 'problem' else 'worst problem'}",
            width=W_,
            height=H_,
            xlabel="",
            ylabel="",
            yflip=False,
            aspect="fill",
            axes=False,
            tips=tips,
            groups=[[g, *r] for g, r in zip(names, outer)],
            legend=legend,
            notes=[],
            click="pick",
            mode="map",
            fqns=list(data.fqns),
        )
    )


# ----------------------------------------------------------------------------- I/O
def traffic_scene(load) -> Scene:
    """The rank x file traffic matrix (``load.io``): one cell per (load rank, file) with bytes,
    a sequential colour scale over bytes (0 stays white); a click picks the cell (its rank's
    reads from that file)."""
    io = load.io
    pr, pf, pb = io.pair_rank, io.pair_file, io.pair_bytes.astype(np.float64)
    top = float(pb.max()) if len(pb) else 1.0
    fills = (_scale_colors(np.sqrt(pb / top) if top else pb, BLUES[1:]) << 8) | np.uint32(255)
    b = _Builder(0)
    boxes = np.stack([pf, pr, np.ones(len(pr)), np.ones(len(pr))], axis=1).astype(np.float64)
    b.add("cell", boxes, fills, pr, np.arange(len(pr)))
    tips = [
        [
            f"load rank {r} reads {format_bytes(v)} from {io.files[f]}",
            f"in {int(c)} read item(s)",
            "click: list these reads",
        ]
        for r, f, v, c in zip(pr.tolist(), pf.tolist(), pb.tolist(), io.pair_reads.tolist())
    ]
    nf, nr = len(io.files), int(load.world_size)
    step_x = max(1, nf // 16)
    step_y = max(1, nr // 16)
    return b.scene(
        dict(
            title=f"rank x file traffic: {format_bytes(float(pb.sum()))} loaded from {nf} files",
            width=max(nf, 1),
            height=max(nr, 1),
            xlabel="file (sorted by writer rank)",
            ylabel="load rank",
            yflip=False,
            aspect="fill",
            tips=tips,
            xticks=[[j + 0.5, io.files[j]] for j in range(0, nf, step_x)],
            yticks=[[r + 0.5, str(r)] for r in range(0, nr, step_y)],
            legend={
                "entries": [],
                "scale": {
                    "label": "bytes a rank loads from a file (sqrt scale)",
                    "colors": list(BLUES[1:]),
                    "min": "0 B",
                    "max": format_bytes(top),
                },
            },
            notes=[],
            click="pick",
            mode="traffic",
            cells=[[int(r), int(f)] for r, f in zip(pr.tolist(), pf.tolist())],
            files=list(io.files),
        )
    )


def bytes_scene(load) -> Scene:
    """Bytes per load rank, two quantities side by side: loaded (what ``FileSystemReader`` reads,
    whole saved chunks) and needed (what the rank keeps), in human units on the value axis."""
    io = load.io
    loaded = io.bytes_read.astype(np.float64)
    needed = io.bytes_needed.astype(np.float64)
    n = len(loaded)
    top = float(max(loaded.max(initial=0), needed.max(initial=0), 1))
    ranks = np.arange(n)
    b = _Builder(0)
    b.add(
        "bar",
        np.stack([ranks + 0.08, np.zeros(n), np.full(n, 0.42), loaded], axis=1),
        rgba("#4c78a8"),
        ranks,
        ranks,
    )
    b.add(
        "need",
        np.stack([ranks + 0.5, np.zeros(n), np.full(n, 0.42), needed], axis=1),
        rgba("#f58518"),
        ranks,
        ranks,
    )
    tips = [
        [
            f"load rank {r}: loads {format_bytes(a)}, needs {format_bytes(c)}"
            + (f" ({a / c:.2f}x)" if c else ""),
        ]
        for r, a, c in zip(range(n), loaded.tolist(), needed.tolist())
    ]
    total_l, total_n = float(loaded.sum()), float(needed.sum())
    ratio = f", {total_l / total_n:.2f}x" if total_n else ""
    return b.scene(
        dict(
            title=f"bytes per load rank: {format_bytes(total_l)} loaded, "
            f"{format_bytes(total_n)} needed{ratio} (DCP reads whole saved chunks)",
            width=max(n, 1),
            height=top * 1.05,
            xlabel="load rank",
            ylabel="bytes",
            yflip=True,
            yformat="bytes",
            aspect="fill",
            tips=tips + tips,
            tip_rows=True,
            xticks=[[r + 0.5, str(r)] for r in range(0, n, max(1, n // 16))],
            legend={
                "entries": [
                    ["loaded (whole saved chunks)", "#4c78a8", None, None],
                    ["needed (what the rank keeps)", "#f58518", None, None],
                ],
                "scale": None,
            },
            notes=[],
            click="rank",
            mode="bars",
        )
    )


def empty_scene() -> Scene:
    """A scene with no tiles (the canvas then shows only its message)."""
    return _Builder(0).scene(dict(title="", width=1, height=1, legend={}, notes=[], mode="empty"))


def synthetic_scene(n_rows: int, n_cols: int, *, ranks: int = 64) -> Scene:
    """A grid of ``n_rows * n_cols`` saved chunks of a (n_rows * 8, n_cols * 8) tensor, writer =
    chunk number mod ``ranks``: the benchmark's and the tests' scene at any size."""
    n = n_rows * n_cols
    i = np.arange(n)
    y, x = np.divmod(i, n_cols)
    boxes = np.stack([x * 8, y * 8, np.full(n, 8), np.full(n, 8)], axis=1).astype(np.float64)
    w = i % ranks
    b = _Builder(2)
    facts = np.stack([w, np.zeros(n), np.full(n, 256.0)], axis=1)
    ext = np.stack([y * 8, x * 8, np.full(n, 8), np.full(n, 8)], axis=1)
    first = b.add("saved", boxes, _rank_fills(w, 0.9, ranks), w, i, facts, ext)
    if n <= 4096:
        for j in range(n):
            b.label(first + j, f"#{j} r{w[j]}", 1)
    return b.scene(
        dict(
            title=f"{n} chunks",
            width=n_cols * 8,
            height=n_rows * 8,
            xlabel="dim 1",
            ylabel="dim 0",
            yflip=False,
            aspect="equal",
            files=[f"__{r}_0.distcp" for r in range(ranks)],
            legend=_rank_legend(ranks, range(min(ranks, CATEGORICAL_RANKS)), "writer", False),
            notes=[],
            reads=[],
            read_columns=[],
            problems=[],
            click="rank",
            mode="chunks",
            shape=[n_rows * 8, n_cols * 8],
            element_size=4,
        )
    )
