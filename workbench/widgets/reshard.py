"""`ReshardExplorer`: one tensor saved on one mesh and loaded on another, on the chunk canvas.

Controls (a classic reshard to start from, torch version, shape, dtype, save / load meshes and
placements, load rank, dims to draw) over `explore.explore_reshard`; the canvas shows the saved
chunks, the other ranks' wanted chunks and the load rank's read items with their table; a click
on another rank's region selects that load rank. Imports ipywidgets (through `controls`) and the
canvas.
"""

from __future__ import annotations

import math

import ipywidgets as W

from ..errors import PlacementError, WorkbenchError
from ..sharding import check_load_rank
from ..targets import parse_ints
from ..versions import SUPPORTED_TORCH_VERSIONS, default_torch_version
from .canvas import ChunkCanvas
from .controls import (
    Explorer,
    dropdown,
    mime,
    note,
    set_options,
    styled,
    text_box,
    with_class,
)
from .explore import (
    CLASSIC_RESHARDS,
    DEFAULT_CLASSIC,
    DTYPES,
    FQN,
    MAX_RANKS,
    PROBLEM_COLUMNS,
    ReshardResult,
    classic_controls,
    explore_reshard,
)
from .scenes import chunk_scene

__all__ = ["ReshardExplorer"]


class ReshardExplorer(Explorer):
    """Explore one tensor's reshard: shape, dtype, save mesh + placements, load mesh +
    placements (typed like ``S(0), R``), the load rank and the dims to draw, and a dropdown of
    classic reshards to start from.

    A ``torch`` dropdown picks whose DCP semantics plan it (2.4 ... 2.15; read order and
    checks follow the version). Shows the overlay of saved and wanted chunks with the rank's read items lit
    (``picture_data.reshard_data``), the rank's read-item table and the problems table.
    ``ReshardExplorer()`` opens on a classic reshard; ``.result`` is the last `ReshardResult`.
    """

    def __init__(self, classic: str = DEFAULT_CLASSIC, *, rank: int = 0, dims: str = "0, 1"):
        super().__init__()
        self._shown = None  # (spec, dims) on the canvas: a rank change keeps the zoom
        self._problems_shown = None  # the problems table shown (the same for every rank)
        classic_controls(classic)
        self.classic = dropdown(
            list(CLASSIC_RESHARDS), classic, "start from", "wb-classic", width="24em"
        )
        self.shape = text_box("", "shape", "wb-shape")
        self.dtype = dropdown(DTYPES, "float32", "dtype", "wb-dtype")
        self.torch_version = dropdown(
            list(SUPPORTED_TORCH_VERSIONS), default_torch_version(), "torch", "wb-torch"
        )
        self.save_mesh = text_box("", "save mesh", "wb-save-mesh")
        self.save_placements = text_box("", "save placements", "wb-save-placements")
        self.load_mesh = text_box("", "load mesh", "wb-load-mesh")
        self.load_placements = text_box("", "load placements", "wb-load-placements")
        self.rank = dropdown([0], 0, "load rank", "wb-rank")
        self.dims = text_box(dims, "dims to draw", "wb-dims")
        self.canvas = with_class(ChunkCanvas(height=440), "wb-picture")
        self.problems = with_class(W.Output(), "wb-problems")
        inputs = (
            self.torch_version,
            self.shape,
            self.dtype,
            self.save_mesh,
            self.save_placements,
            self.load_mesh,
            self.load_placements,
            self.rank,
            self.dims,
        )
        # the column keeps its width ("start from" is wider than the boxes) and the canvas
        # takes the rest, instead of the canvas sliding over the dropdown
        controls = W.VBox([self.classic, *inputs], layout=W.Layout(flex="0 0 auto"))
        self.widget = with_class(
            W.VBox(
                [
                    W.HBox([controls, self.canvas], layout=W.Layout(width="100%")),
                    self.message,
                    W.HTML("<b>problems</b>"),
                    self.problems,
                ]
            ),
            "wb-reshard",
        )
        self.classic.observe(lambda ch: self._apply_classic(ch["new"], 0), names="value")
        self.watch(*inputs)
        self.canvas.observe(self._on_canvas_rank, names="selected_rank")
        self._apply_classic(classic, rank)
        check_load_rank(rank, len(self.rank.options), what="load rank")

    def _apply_classic(self, label: str, rank: int) -> None:
        """Fill every control from a classic reshard, then redraw once."""
        with self.quiet():
            for name, value in classic_controls(label).items():
                getattr(self, name).value = value
            self._fit_rank_options(rank)
        self.refresh()

    def _fit_rank_options(self, rank: int) -> None:
        """Offer the load mesh's ranks (unchanged when the mesh is bad: refresh says why)."""
        try:
            mesh = parse_ints(self.load_mesh.value, "load mesh", error=PlacementError)
        except WorkbenchError:
            return
        world = math.prod(mesh)
        if 1 <= world <= MAX_RANKS and min(mesh, default=1) >= 1:
            set_options(self.rank, list(range(world)), rank)

    def _on_change(self, change=None) -> None:
        if change is not None and change["owner"] is self.load_mesh and not self.muted:
            with self.quiet():
                self._fit_rank_options(self.rank.value)
        super()._on_change(change)

    def _compute(self) -> ReshardResult:
        return explore_reshard(
            self.shape.value,
            self.save_mesh.value,
            self.save_placements.value,
            self.load_mesh.value,
            self.load_placements.value,
            dtype=self.dtype.value,
            rank=self.rank.value,
            dims=self.dims.value,
            torch_version=self.torch_version.value,
        )

    def _on_canvas_rank(self, change) -> None:
        """A click on the canvas selected a rank: it becomes the load rank (when it is one)."""
        if change["new"] in self.rank.options and change["new"] != self.rank.value:
            self.rank.value = change["new"]

    def _show(self, r: ReshardResult) -> None:
        shown = (r.spec, r.dims)
        self.canvas.set_scene(
            chunk_scene(
                r.load.metadata,
                FQN,
                r.load,
                r.rank,
                dims=r.dims,
                picture=r.picture,
                reads=r.reads,
                problems=r.problems,
            ),
            keep_view=shown == self._shown,
            selected_rank=r.rank,
        )
        self._shown = shown
        if r.problems_table is self._problems_shown:
            return  # a rank change: same plans, same problems, nothing to re-render
        self._problems_shown = r.problems_table
        self.problems.outputs = (
            (mime(styled(r.problems_table, PROBLEM_COLUMNS)),)
            if r.problems
            else (note("no problems found"),)
        )
