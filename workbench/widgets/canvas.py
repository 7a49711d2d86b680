"""The chunk canvas: an anywidget whose ES module and CSS ship in ``static/`` (no build, no CDN).

`ChunkCanvas` draws a `scenes.Scene` in the browser: pan and zoom (wheel, drag, double-click to
fit, keys ``+ - 0``, arrows / WASD, ``r`` zoom to the rank's region), a minimap while zoomed,
true tensor-index axes at every zoom, a hover tooltip per tile, level-of-detail labels (greedy by
priority, never overlapping), and for a chunk scene the load rank's read-item table.
Selection lives here, two-way: ``selected_rank`` (a click on a tile), ``highlight`` (the lit read
item, DCP order, 0-based: a click on a read tile or on a table row, or set from Python) and
``picked`` (a click in a model map / traffic scene). ``view`` is the shown data rectangle
(x0, y0, x1, y1), reported by the page after pan / zoom and settable from Python. ``drawn``
echoes ``scene_id`` once the page has drawn a new scene (round-trip measurements).

Tile columns travel as binary buffers (`traitlets.Bytes`), the rest as JSON. Imports anywidget
and traitlets only; the scenes come from `workbench.widgets.scenes`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import missing_extra
from .scenes import Scene, empty_scene

try:
    import anywidget
    import traitlets as T
except ImportError as e:  # the canvas needs the lab extra; its scenes do not
    raise missing_extra(e, "lab", "workbench.widgets.ChunkCanvas") from None

__all__ = ["ChunkCanvas", "STATIC"]

STATIC = Path(__file__).parent / "static"


class ChunkCanvas(anywidget.AnyWidget):
    """The interactive picture of a `Scene` (see the module docstring); ``set_scene`` replaces it."""

    _esm = STATIC / "canvas.js"
    _css = STATIC / "canvas.css"

    boxes = T.Bytes(b"").tag(sync=True)
    fills = T.Bytes(b"").tag(sync=True)
    kinds = T.Bytes(b"").tag(sync=True)
    ranks = T.Bytes(b"").tag(sync=True)
    items = T.Bytes(b"").tag(sync=True)
    facts = T.Bytes(b"").tag(sync=True)
    extents = T.Bytes(b"").tag(sync=True)
    # the scene's JSON part as one string: ipywidgets walks dicts and lists item by item looking
    # for buffers, which costs more than the drawing for thousands of labels
    meta_json = T.Unicode("{}").tag(sync=True)
    scene_id = T.Int(0).tag(sync=True)
    keep_view = T.Bool(False).tag(sync=True)
    height = T.Int(480).tag(sync=True)
    selected_rank = T.Int(-1).tag(sync=True)
    highlight = T.Int(-1).tag(sync=True)
    picked = T.Dict().tag(sync=True)
    view = T.List([]).tag(sync=True)
    drawn = T.Int(-1).tag(sync=True)
    error = T.Unicode("").tag(sync=True)

    def __init__(self, scene: Scene | None = None, *, height: int = 480, **kw):
        super().__init__(height=height, **kw)
        self.scene: Scene | None = None
        self.add_class("wb-canvas-widget")
        if scene is not None:
            self.set_scene(scene)

    def set_scene(self, scene: Scene, *, keep_view: bool = False, selected_rank=None) -> None:
        """Show ``scene`` (one sync message for every column). ``keep_view``: keep the zoom (a
        new rank of the same tensor), else fit the new picture."""
        self.scene = scene
        with self.hold_sync():
            for name, data in scene.buffers().items():
                setattr(self, name, data)
            self.meta_json = json.dumps(scene.meta, separators=(",", ":"))
            self.keep_view = keep_view
            if selected_rank is not None:
                self.selected_rank = int(selected_rank)
            self.highlight = -1
            self.error = ""
            self.scene_id += 1

    @property
    def meta(self) -> dict:
        """The shown scene's JSON part (``{}`` before the first scene)."""
        return self.scene.meta if self.scene is not None else {}

    def clear(self, message: str) -> None:
        """Show no tiles and ``message`` (escaped: the page sets it as text)."""
        self.set_scene(empty_scene())
        self.error = message

    def zoom_to_rank(self, rank: int | None = None) -> tuple[float, float, float, float] | None:
        """Zoom to ``rank``'s region (its own chunks; default the scene's load rank), returning
        the view set, or None when the rank has no tile here."""
        s = self.scene
        if s is None or not len(s):
            return None
        rank = s.meta.get("rank", self.selected_rank) if rank is None else rank
        rows = s.of_kind("target") if s.meta.get("mode") == "chunks" else range(len(s))
        mine = [i for i in rows if int(s.ranks[i]) == int(rank)]
        if not mine:
            return None
        b = s.boxes[mine]
        x0, y0 = float(b[:, 0].min()), float(b[:, 1].min())
        x1, y1 = float((b[:, 0] + b[:, 2]).max()), float((b[:, 1] + b[:, 3]).max())
        px, py = (x1 - x0) * 0.05, (y1 - y0) * 0.05
        self.view = [x0 - px, y0 - py, x1 + px, y1 + py]
        return tuple(self.view)
