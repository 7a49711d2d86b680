"""`ModelExplorer`: a whole checkpoint loaded into a target, at model scale, as canvases.

Three views of one `explore.plan_checkpoint` plan, in tabs: the model map (every tensor, area by
bytes, grouped by layer, coloured by worst problem or read amplification; a click opens the
tensor's chunk canvas below), the rank x file traffic matrix (a click lists that rank's reads
from that file) and bytes per load rank (loaded vs needed). The numbers come from
`scenes.model_map_data` and the plan's ``load.io``. Imports ipywidgets and the canvas; pandas
through `controls.styled` only. Lazy imports: tables and pandas inside `_show_cell`.
"""

from __future__ import annotations

import html

import ipywidgets as W
from IPython.display import HTML

from ..sharding import check_load_rank
from .canvas import ChunkCanvas
from .controls import Explorer, dropdown, mime, note, styled, with_class
from .explore import (
    READ_COLUMNS,
    CheckpointPlan,
    explore_checkpoint,
    plan_checkpoint,
)
from .scenes import (
    bytes_scene,
    checkpoint_scene,
    model_map_data,
    model_scene,
    traffic_scene,
)

__all__ = ["ModelExplorer", "COLOR_BY"]

COLOR_BY = {"worst problem": "problem", "read amplification": "amplification"}


class ModelExplorer(Explorer):
    """The whole model at a glance (see the module docstring). ``source`` / ``target`` as
    `plan_checkpoint` takes them, or a `CheckpointPlan`; ``.plan`` the plan, ``.result`` the
    fqn opened last (None before a click), ``open(fqn)`` opens one from Python."""

    def __init__(self, source, target=None, *, rank: int = 0, color_by: str = "worst problem"):
        super().__init__()
        self._fqn = None
        self.plan = (
            source if isinstance(source, CheckpointPlan) else plan_checkpoint(source, target)
        )
        load = self.plan.load
        world = load.world_size if load is not None else 1
        self.data = model_map_data(self.plan.metadata, load, self.plan.problems)
        self.color_by = dropdown(list(COLOR_BY), color_by, "colour by", "wb-color-by")
        self.rank = dropdown(
            list(range(world)),
            check_load_rank(rank, world, what="load rank"),
            "load rank",
            "wb-rank",
        )
        self.map = with_class(ChunkCanvas(model_scene(self.data), height=520), "wb-model-map")
        views = [self.map]
        titles = ["model map"]
        if load is not None:
            self.traffic = with_class(ChunkCanvas(traffic_scene(load), height=480), "wb-traffic")
            self.bytes = with_class(ChunkCanvas(bytes_scene(load), height=360), "wb-bytes")
            views += [self.traffic, self.bytes]
            titles += ["rank x file traffic", "bytes per rank"]
            self.traffic.observe(self._show_cell, names="picked")
            self.bytes.observe(self._on_bytes_rank, names="selected_rank")
        self.tabs = with_class(W.Tab(children=views), "wb-model-tabs")
        for k, t in enumerate(titles):
            self.tabs.set_title(k, t)
        self.header = W.HTML(
            f"<b>{html.escape(self.plan.source)}</b>: {len(self.data.fqns)} entries, "
            f"{len(self.plan.problems)} problems"
        )
        self.cell = with_class(W.Output(), "wb-cell-reads")
        self.tensor = with_class(ChunkCanvas(height=440), "wb-tensor-canvas")
        self.tensor.layout.display = "none"
        self.widget = with_class(
            W.VBox(
                [
                    self.header,
                    W.HBox([self.color_by, self.rank]),
                    self.message,
                    self.tabs,
                    self.cell,
                    self.tensor,
                ]
            ),
            "wb-model",
        )
        self.color_by.observe(self._on_color, names="value")
        self.map.observe(self._on_pick, names="picked")
        self.rank.observe(lambda _: self.refresh() if self.result else None, names="value")
        self.tensor.observe(self._on_tensor_rank, names="selected_rank")

    def _on_color(self, change) -> None:
        self.map.set_scene(model_scene(self.data, color_by=COLOR_BY[change["new"]]))

    def _on_pick(self, change) -> None:
        index = change["new"].get("index", -1)
        if 0 <= index < len(self.data.fqns):
            self.open(self.data.fqns[index])

    def _on_bytes_rank(self, change) -> None:
        if change["new"] in self.rank.options:
            self.rank.value = change["new"]

    def _on_tensor_rank(self, change) -> None:
        if change["new"] in self.rank.options and change["new"] != self.rank.value:
            self.rank.value = change["new"]

    def open(self, fqn: str):
        """Open ``fqn``'s chunk canvas (the load rank's reads when it has a target)."""
        self._fqn = fqn
        return self.refresh()

    def _compute(self):
        return explore_checkpoint(
            self.plan, pattern="", fqn=self._fqn, rank=self.rank.value, dims="0, 1"
        )

    def _show(self, r) -> None:
        if r.picture is None:
            self.tensor.clear(f"{r.fqn}: nothing to draw (not a saved tensor)")
        else:
            self.tensor.set_scene(
                checkpoint_scene(self.plan, r),
                selected_rank=r.rank,
            )
        self.tensor.layout.display = ""

    def _show_cell(self, change) -> None:
        """A traffic cell clicked: that rank's read items from that file."""
        from ..tables import read_items_table  # pandas only when a cell is clicked

        index = change["new"].get("index", -1)
        cells = self.traffic.meta.get("cells", [])
        if not 0 <= index < len(cells):
            return
        rank, fidx = cells[index]
        name = self.plan.load.io.files[fidx]
        frames = []
        for fqn in self.plan.load.blocks:
            t = read_items_table(self.plan.load, fqn, rank=rank)
            t = t[t["source_file"] == name] if "source_file" in t.columns else t.iloc[0:0]
            if len(t):
                frames.append(t.assign(fqn=fqn))
        if not frames:
            self.cell.outputs = (note(f"load rank {rank} reads nothing from {name}"),)
            return
        import pandas as pd  # already loaded by tables

        df = pd.concat(frames, ignore_index=True)
        self.cell.outputs = (
            mime(HTML(f"<b>load rank {rank}'s reads from {html.escape(name)}</b>")),
            mime(styled(df, ["fqn", *READ_COLUMNS])),
        )
