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
import os
from collections.abc import Mapping

import ipywidgets as W

from ..errors import PlanError, WorkbenchError
from ..models import MESH_DIMS, RECIPES
from ..sharding import check_load_rank
from ..targets import PresetTarget, parse_ints
from .canvas import ChunkCanvas
from .controls import (
    Explorer,
    after_display,
    counted,
    dropdown,
    note,
    show_bug,
    show_message,
    table_outputs,
    text_box,
    with_class,
)
from .explore import (
    PROBLEM_COLUMNS,
    CheckpointResult,
    explore_checkpoint,
    plan_checkpoint,
)
from .scenes import checkpoint_scene

__all__ = ["CheckpointExplorer", "target_boxes", "spec_of_boxes"]


def target_boxes(target) -> tuple[str, str | None, str]:
    """What the target boxes (preset, recipe, mesh) show for ``target``: its parts for a preset
    spec or a ``(preset, recipe, mesh)`` tuple, the path of a JSON file, nothing for a target
    given as data (the boxes never claim a recipe or mesh that is not planned)."""
    if isinstance(target, str) and ":" in target and not target.endswith(".json"):
        target = PresetTarget.parse(target)
    if isinstance(target, PresetTarget):
        optim = "+optim" if target.optimizer else ""
        mesh = ", ".join(str(n) for n in target.mesh_shape)
        return f"{target.preset}-{target.size}{optim}", target.recipe, mesh
    if isinstance(target, tuple) and len(target) == 3 and isinstance(target[0], str):
        preset, recipe, mesh = target
        mesh = mesh if isinstance(mesh, (tuple, list)) else (mesh,)
        return preset, recipe, ", ".join(str(m) for m in mesh)
    if isinstance(target, (str, os.PathLike)):
        return os.fspath(target), None, ""
    return "", None, ""


def spec_of_boxes(preset: str, recipe: str | None, mesh: str) -> str:
    """The target spec the boxes say: the preset box's text when it is a whole spec or a JSON
    file, else ``PRESET:RECIPE:DIM=N,...`` with the recipe's mesh dims (`models.MESH_DIMS`)."""
    preset = preset.strip()
    if ":" in preset or preset.endswith(".json"):
        return preset
    if not preset or recipe is None:
        raise PlanError(
            "<target>",
            f"target preset {preset!r} with recipe {recipe!r}",
            "a preset (e.g. llama-tiny) and a recipe, or a whole spec in the preset box",
            "Type e.g. llama-tiny and pick a recipe, or llama-70b:fsdp2+tp:dp=8,tp=8.",
        )
    shape = parse_ints(mesh, "target mesh", error=PlanError, example="2, 2")
    dims = MESH_DIMS[recipe]
    if len(shape) != len(dims):
        raise PlanError(
            "<target>",
            f"target mesh {shape} has {len(shape)} dims",
            f"{recipe}'s {len(dims)}: {', '.join(dims)}",
            "Type one size per mesh dim, e.g. " + ", ".join("2" for _ in dims) + ".",
        )
    return f"{preset}:{recipe}:" + ",".join(f"{d}={n}" for d, n in zip(dims, shape))


class CheckpointExplorer(Explorer):
    """Explore a real checkpoint directory (or a whole-model save plan) loaded into a target:
    a filterable list of tensors with their problem counts, the selected tensor's overlay, saved
    chunks, read items and problems, and the I/O summary per rank. See `plan_checkpoint` for
    ``source`` and ``target`` (a checkpoint by fsspec URL is opened with ``storage_options``);
    ``.result`` is the last `CheckpointResult`."""

    def __init__(
        self,
        source,
        target=None,
        *,
        rank: int = 0,
        only_problems: bool = False,
        storage_options: dict | None = None,
    ):
        super().__init__()
        self._source = source
        self._storage_options = storage_options
        self._shown = None  # (fqn, dims) on the canvas: a rank change keeps the zoom
        # a captured target (workbench.capture) names the build() it came from
        self._target_name = getattr(target, "build", None) if isinstance(target, Mapping) else None
        self.plan = plan_checkpoint(source, target, storage_options=storage_options)
        world = self.plan.load.world_size if self.plan.load is not None else 1
        # The target boxes show the target really planned, and a change re-plans the whole
        # checkpoint (the expensive step): the preset box takes a preset (with the recipe and
        # mesh boxes) or a whole spec as the CLI takes it (llama-70b:fsdp2+tp:dp=8,tp=8) or a
        # JSON file; a target given as data leaves the recipe and mesh boxes empty.
        preset, recipe, mesh = target_boxes(target)
        self.preset = text_box(preset, "target preset", "wb-target-preset")
        self.preset.placeholder = "llama-tiny, or a spec / JSON file"
        self.recipe = dropdown([None, *RECIPES], recipe, "target recipe", "wb-target-recipe")
        self.mesh = text_box(mesh, "target mesh", "wb-target-mesh")
        self.mesh.placeholder = "e.g. 2, 2"
        self._target_text = str(target) if isinstance(target, (str, PresetTarget)) else None
        self.header = W.HTML()
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
                    self.header,
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
        self.header.value = (
            f"<b>{html.escape(self.plan.source)}</b>"
            + (f" ({html.escape(str(fmt))})" if fmt else "")
            + f": {counted(len(self.plan.metadata.state_dict_metadata), 'saved key')}, "
            f"{counted(len(self.plan.problems), 'problem')}"
            + (
                f" (target captured from <code>{html.escape(self._target_name)}</code>)"
                if self._target_name
                else f"; target <code>{html.escape(self._target_text)}</code>"
                if self._target_text
                else ""
            )
        )
        if self.plan.load is None:
            self.io.outputs = (note("no target: nothing is loaded"),)
        elif self.plan.io_costed:
            self._show_io(self.plan)
        else:
            # the first scene first: the I/O of every rank is costed once the cell has shown it
            self.io.outputs = (note(f"costing the reads of {self.plan.load.world_size:,} ranks"),)
            after_display(self._show_io, self.plan)

    def _show_io(self, plan) -> None:
        if plan is not self.plan:  # re-planned meanwhile: that plan's table is coming
            return
        try:
            self.io.outputs = table_outputs(plan.io, plan.io.columns, "explorer.plan.io")
        except Exception as err:  # noqa: BLE001 - from the event loop it would reach a log only
            show_bug(self.message, err)

    def set_target(self, target) -> None:
        """Re-plan the checkpoint into ``target`` (any form `targets.as_target` takes, e.g.
        ``"llama-70b:fsdp2+tp:dp=8,tp=8"``); the target boxes then show it. A bad target goes to
        the message panel and the last plan stays."""
        try:
            boxes = target_boxes(target)
            plan = plan_checkpoint(self._source, target, storage_options=self._storage_options)
        except WorkbenchError as err:
            show_message(self.message, err)
            return
        self.plan = plan
        self._target_name = None
        self._target_text = str(target) if isinstance(target, (str, PresetTarget)) else None
        world, rank = plan.load.world_size, self.rank.value
        with self.quiet():
            self.preset.value, self.recipe.value, self.mesh.value = boxes
            self.rank.options = list(range(world))  # resets the value to the first option
            self.rank.value = min(rank, world - 1)
        self._show_plan()
        self.refresh()

    def _on_target(self, change=None) -> None:
        if self.muted:
            return
        try:
            target = spec_of_boxes(self.preset.value, self.recipe.value, self.mesh.value)
        except WorkbenchError as err:
            show_message(self.message, err)
            return
        self.set_target(target)

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
                checkpoint_scene(self.plan, r, parse_ints(self.dims.value, "dims to draw")),
                keep_view=(r.fqn, self.dims.value) == self._shown,
                selected_rank=r.rank,
            )
        self._shown = (r.fqn, self.dims.value)
        self.chunks.outputs = (
            table_outputs(r.chunks, r.chunks.columns, "explorer.result.chunks")
            if r.chunks is not None
            else (note("not in the checkpoint"),)
        )
        self.problems.outputs = (
            table_outputs(r.problems_table, PROBLEM_COLUMNS, "explorer.result.problems_table")
            if len(r.problems_table)
            else (note("no problems found"),)
        )
