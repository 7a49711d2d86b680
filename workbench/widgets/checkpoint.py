"""`CheckpointExplorer`: a real checkpoint directory (or a whole-model save plan) loaded into a
target, one tensor at a time on the chunk canvas.

Controls (target preset / recipe / mesh, a filter, the tensor list with problem counts, load
rank, dims) over `explore.plan_checkpoint` (once per target) and `explore.explore_checkpoint`
(per control change); the canvas shows the tensor's saved chunks and the load rank's reads with
their table, then the tensor's problems, its saved chunks and the I/O per load rank as tables
(HTML-escaped: the keys and file names are a stranger's). Imports ipywidgets and the canvas.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

import ipywidgets as W

from ..errors import WorkbenchError
from ..models import RECIPES
from ..sharding import check_load_rank
from .canvas import ChunkCanvas
from .controls import (
    Explorer,
    counted,
    dropdown,
    mime,
    note,
    show_message,
    styled,
    text_box,
    with_class,
)
from .explore import (
    PROBLEM_COLUMNS,
    CheckpointResult,
    explore_checkpoint,
    parse_ints,
    plan_checkpoint,
)
from .scenes import chunk_scene

__all__ = ["CheckpointExplorer"]


class CheckpointExplorer(Explorer):
    """Explore a real checkpoint directory (or a whole-model save plan) loaded into a target:
    a filterable list of tensors with their problem counts, the selected tensor's overlay, saved
    chunks, read items and problems, and the I/O summary per rank. See `plan_checkpoint` for
    ``source`` and ``target``; ``.result`` is the last `CheckpointResult`."""

    def __init__(self, source, target=None, *, rank: int = 0, only_problems: bool = False):
        super().__init__()
        self._source = source
        self._shown = None  # (fqn, dims) on the canvas: a rank change keeps the zoom
        # a captured target (workbench.capture) names the build() it came from
        self._target_name = getattr(target, "build", None) if isinstance(target, Mapping) else None
        self.plan = plan_checkpoint(source, target)
        world = self.plan.load.world_size if self.plan.load is not None else 1
        # A (preset, recipe, mesh) target can be changed in place: another recipe or mesh re-plans
        # the whole checkpoint (the expensive step) and redraws.

        preset, recipe, mesh = (
            target if isinstance(target, tuple) and len(target) == 3 else ("", "fsdp", (1,))
        )
        self.preset = text_box(str(preset), "target preset", "wb-target-preset")
        self.recipe = dropdown(
            list(RECIPES),
            recipe if recipe in RECIPES else "fsdp",
            "target recipe",
            "wb-target-recipe",
        )
        self.mesh = text_box(
            ", ".join(str(m) for m in (mesh if isinstance(mesh, tuple) else (mesh,))),
            "target mesh",
            "wb-target-mesh",
        )
        self._header = W.HTML()
        self.filter = text_box("", "filter", "wb-filter")
        self.only_problems = with_class(
            W.Checkbox(value=only_problems, description="only with problems", indent=False),
            "wb-only-problems",
        )
        self.tensor = with_class(
            W.Select(
                options=[],
                rows=12,
                description="tensor",
                layout=W.Layout(width="30em"),
                style={"description_width": "4em"},
            ),
            "wb-tensor",
        )
        self.rank = dropdown(
            list(range(world)),
            check_load_rank(rank, world, what="load rank"),
            "load rank",
            "wb-rank",
        )
        self.dims = text_box("0, 1", "dims to draw", "wb-dims")
        self.canvas = with_class(ChunkCanvas(height=460), "wb-picture")
        self.chunks = with_class(W.Output(), "wb-chunks")
        self.problems = with_class(W.Output(), "wb-problems")
        self.io = with_class(W.Output(), "wb-io")
        self.widget = with_class(
            W.VBox(
                [
                    self._header,
                    W.HBox([self.preset, self.recipe, self.mesh]),
                    W.HBox(
                        [
                            W.VBox(
                                [self.filter, self.only_problems, self.tensor, self.rank, self.dims]
                            ),
                            self.canvas,
                        ]
                    ),
                    self.message,
                    W.HTML("<b>problems of the tensor</b>"),
                    self.problems,
                    W.HTML("<b>saved chunks</b>"),
                    self.chunks,
                    W.HTML("<b>I/O per load rank</b>"),
                    self.io,
                ]
            ),
            "wb-checkpoint",
        )
        self._show_plan()
        self.watch(self.filter, self.only_problems, self.tensor, self.rank, self.dims)
        for c in (self.preset, self.recipe, self.mesh):
            c.observe(self._on_target, names="value")
        self.canvas.observe(self._on_canvas_rank, names="selected_rank")
        self.refresh()

    def _on_canvas_rank(self, change) -> None:
        """A click on the canvas selected a rank: it becomes the load rank (when it is one)."""
        if change["new"] in self.rank.options and change["new"] != self.rank.value:
            self.rank.value = change["new"]

    def _show_plan(self) -> None:
        """The parts that change only with the plan: header, I/O table."""
        fmt = (self.plan.facts or {}).get("format")
        self._header.value = (
            f"<b>{html.escape(self.plan.source)}</b>"
            + (f" ({html.escape(str(fmt))})" if fmt else "")
            + f": {counted(len(self.plan.metadata.state_dict_metadata), 'saved key')}, "
            f"{counted(len(self.plan.problems), 'problem')}"
            + (
                f" (target captured from <code>{html.escape(self._target_name)}</code>)"
                if self._target_name
                else ""
            )
        )
        if self.plan.io is not None:
            self.io.outputs = (mime(styled(self.plan.io, self.plan.io.columns)),)
        else:
            self.io.outputs = (note("no target: nothing is loaded"),)

    def set_target(self, preset: str, recipe: str, mesh) -> None:
        """Re-plan the checkpoint into ``(preset, recipe, mesh)``; a bad target goes to the message
        panel and the last plan stays."""
        try:
            plan = plan_checkpoint(
                self._source, (preset, recipe, parse_ints(mesh, "target mesh", example="2, 2"))
            )
        except WorkbenchError as err:
            show_message(self.message, err)
            return
        self.plan = plan
        self._target_name = None
        world, rank = plan.load.world_size, self.rank.value
        with self.quiet():
            self.rank.options = list(range(world))  # resets the value to the first option
            self.rank.value = min(rank, world - 1)
        self._show_plan()
        self.refresh()

    def _on_target(self, change=None) -> None:
        self.set_target(self.preset.value.strip(), self.recipe.value, self.mesh.value)

    def _compute(self) -> CheckpointResult:
        return explore_checkpoint(
            self.plan,
            pattern=self.filter.value,
            only_problems=self.only_problems.value,
            fqn=self.tensor.value,
            rank=self.rank.value,
            dims=self.dims.value,
        )

    def _show(self, r: CheckpointResult) -> None:
        counts = self.plan.problem_counts
        options = [
            (f"{k}  ({counted(counts[k], 'problem')})" if counts.get(k) else k, k) for k in r.fqns
        ]
        with self.quiet():
            if list(self.tensor.options) != options:
                self.tensor.options = options
            self.tensor.value = r.fqn
        if r.picture is None:
            self.canvas.clear("nothing to draw (not a saved tensor)")
        else:
            self.canvas.set_scene(
                chunk_scene(
                    self.plan.metadata,
                    r.fqn,
                    self.plan.load if r.reshard else None,
                    r.rank,
                    dims=parse_ints(self.dims.value, "dims to draw"),
                    picture=r.picture,
                    reads=r.reads if r.reshard else None,
                    problems=[p for p in self.plan.problems if p.fqn == r.fqn],
                ),
                keep_view=(r.fqn, self.dims.value) == self._shown,
                selected_rank=r.rank,
            )
        self._shown = (r.fqn, self.dims.value)
        self.chunks.outputs = (
            (mime(styled(r.chunks, r.chunks.columns)),)
            if r.chunks is not None
            else (note("not in the checkpoint"),)
        )
        self.problems.outputs = (
            (mime(styled(r.problems_table, PROBLEM_COLUMNS)),)
            if len(r.problems_table)
            else (note("no problems found"),)
        )
