"""`ReadOrderStepper`: DCP's read items of one rank, one at a time or played as an animation.

Prev / next buttons, a slider and a play button (play, pause, speed) walk `explore.step_read_order`;
the canvas keeps one scene per rank and only moves its lit read (``highlight``), so playing
costs no redraw of the scene. A click on a read tile or a table row moves the step there.
Imports ipywidgets and the canvas.
"""

from __future__ import annotations

import html
from dataclasses import replace

import ipywidgets as W

from ..sharding import check_load_rank
from ..targets import parse_ints
from .canvas import ChunkCanvas
from .controls import Explorer, dropdown, with_class
from .explore import (
    DEFAULT_CLASSIC,
    StepResult,
    classic_controls,
    explore_reshard,
    step_read_order,
)
from .scenes import chunk_scene

__all__ = ["ReadOrderStepper", "SPEEDS"]

# label -> milliseconds per read item while playing
SPEEDS = {"slow": 1600, "normal": 800, "fast": 300, "fastest": 120}


class ReadOrderStepper(Explorer):
    """Walk DCP's read items of one rank one at a time (prev / next, a slider, play / pause at a
    chosen speed), the current item lit on the canvas and in its table, for teaching.

    ``source``: a classic reshard label (`CLASSIC_RESHARDS`), a `ReshardResult` or
    ``plan_load``'s result; ``fqn`` defaults to the first planned key."""

    def __init__(
        self, source=DEFAULT_CLASSIC, fqn: str | None = None, *, rank: int = 0, dims: str = "0, 1"
    ):
        super().__init__()
        if isinstance(source, str):
            source = explore_reshard(**classic_controls(source))
        self.load = getattr(source, "load", source)
        self.fqn = fqn if fqn is not None else next(iter(self.load.layouts))
        self._dims = dims
        self.rank = dropdown(
            list(range(self.load.world_size)),
            check_load_rank(rank, self.load.world_size, what="load rank"),
            "load rank",
            "wb-rank",
        )
        self.step = with_class(
            W.IntSlider(value=0, min=0, max=0, description="item", continuous_update=False),
            "wb-step",
        )
        self.prev = with_class(W.Button(description="prev", icon="arrow-left"), "wb-prev")
        self.next = with_class(W.Button(description="next", icon="arrow-right"), "wb-next")
        # the Play widget ticks in the browser; jslink moves the slider there, the slider's
        # change reaches Python like a drag would
        self.play = with_class(
            W.Play(value=0, min=0, max=0, interval=SPEEDS["normal"], show_repeat=False),
            "wb-play",
        )
        W.jslink((self.play, "value"), (self.step, "value"))
        # room for the longest speed ("fastest") beside the 8.5em description
        self.speed = dropdown(list(SPEEDS), "normal", "speed", "wb-speed", width="16em")
        self.caption = with_class(W.HTML(), "wb-caption")
        self.canvas = with_class(ChunkCanvas(height=400), "wb-picture")
        self.widget = with_class(
            W.VBox(
                [
                    W.HBox([self.rank, self.prev, self.step, self.next]),
                    W.HBox([self.play, self.speed]),
                    self.caption,
                    self.message,
                    self.canvas,
                ]
            ),
            "wb-stepper",
        )
        self.prev.on_click(lambda _: self._move(-1))
        self.next.on_click(lambda _: self._move(+1))
        self.speed.observe(self._on_speed, names="value")
        self.rank.observe(self._on_rank, names="value")
        self.canvas.observe(self._on_canvas_highlight, names="highlight")
        self.canvas.observe(self._on_canvas_rank, names="selected_rank")
        self.watch(self.step)
        self._scene_rank = None
        self._on_rank()

    def _n_items(self) -> int:
        return sum(
            1 for it in self.load.plans[self.rank.value].items if it.dest_index.fqn == self.fqn
        )

    def _on_rank(self, _change=None) -> None:
        """A new rank: its items, starting at the first."""
        with self.quiet():
            self.step.value = 0
            self.play.value = 0
            n = max(self._n_items() - 1, 0)
            self.step.max = n
            self.play.max = n
        self.refresh()

    def _on_speed(self, change) -> None:
        self.play.interval = SPEEDS[change["new"]]

    def _on_canvas_highlight(self, change) -> None:
        """A read tile or a table row clicked in the page: the step follows."""
        orders = getattr(self, "_orders", [])
        if change["new"] in orders and orders.index(change["new"]) != self.step.value:
            self.step.value = orders.index(change["new"])

    def _on_canvas_rank(self, change) -> None:
        if change["new"] in self.rank.options and change["new"] != self.rank.value:
            self.rank.value = change["new"]

    def _move(self, delta: int) -> None:
        self.step.value = min(max(self.step.value + delta, 0), self.step.max)

    def _compute(self) -> StepResult:
        return step_read_order(
            self.load, self.fqn, self.rank.value, self.step.value, dims=self._dims
        )

    def _show(self, r: StepResult) -> None:
        self.caption.value = html.escape(r.caption)
        if self._scene_rank != r.rank:
            self.canvas.set_scene(
                chunk_scene(
                    self.load.metadata,
                    self.fqn,
                    self.load,
                    r.rank,
                    dims=parse_ints(self._dims, "dims to draw"),
                    # holes and held rows from the picture; the title without the step
                    picture=replace(r.picture, title=f"{self.fqn}: rank {r.rank}'s reads"),
                    reads=r.reads,
                    problems=[p for p in self.load.problems if p.fqn == self.fqn],
                ),
                selected_rank=r.rank,
            )
            self._scene_rank = r.rank
        # the canvas numbers reads by their place in the rank's LoadPlan (the table's order)
        self._orders = [int(o) for o in r.reads["order"]] if r.n else []
        self.canvas.highlight = self._orders[r.step] if r.n else -1
