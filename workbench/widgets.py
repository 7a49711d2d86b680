"""Widgets: ipywidgets explorers, thin shells over plain functions.

Each explorer is controls + one plain function + the last result (``.result``, a frozen record
holding the plans, tables, problems and the picture's data), as in ipywidgets' ``interaction.py``:

- `ReshardExplorer` over `explore_reshard` (one tensor saved on one mesh, loaded on another);
- `CheckpointExplorer` over `plan_checkpoint` (once) and `explore_checkpoint` (per control
  change): a real checkpoint directory or a whole-model save plan, loaded into a target;
- `ReadOrderStepper` over `step_read_order`: DCP's read items of one rank, one at a time.

The functions need no widget and no kernel, so tests call them directly or set a control's
``.value`` and read ``.result``. Outputs are written explicitly (``out.outputs = (...)``: one sync
message, no flicker) rather than with ``with out:``, which captures nothing outside a kernel.
Pictures are drawn on matplotlib's object API (no pyplot, nothing left open). Bad input shows the
`WorkbenchError` message in the message panel (CSS class ``wb-message``) and keeps the last good
result; it never shows a traceback. Every part carries a ``wb-*`` CSS class for browser tests.

The only module of the package that imports ipywidgets and IPython's display machinery. Lazy
imports: planning, tables and pictures are imported inside the functions that use them, so that
opening one explorer loads only what it shows.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Any

import ipywidgets as W
from IPython.core.interactiveshell import InteractiveShell
from IPython.display import HTML, Image

from .colors import HIGHLIGHT_COLOR
from .errors import LayoutError, MetadataError, PlacementError, PlanError, WorkbenchError
from .records import DTYPE_SIZES, Metadata, TensorStorageMetadata, canonical_dtype
from .sharding import (
    Layout,
    Placement,
    check_load_rank,
    dtensor_layout,
    format_placements,
    parse_placements,
)
from .versions import SUPPORTED_TORCH_VERSIONS, default_torch_version, resolve_torch_version

__all__ = [
    "CLASSIC_RESHARDS",
    "DEFAULT_CLASSIC",
    "ReshardSpec",
    "ReshardResult",
    "CheckpointPlan",
    "CheckpointResult",
    "StepResult",
    "parse_ints",
    "explore_reshard",
    "plan_checkpoint",
    "explore_checkpoint",
    "step_read_order",
    "ReshardExplorer",
    "CheckpointExplorer",
    "ReadOrderStepper",
]

FQN = "weight"  # the one tensor of the reshard explorer's state dict
DTYPES = ("float32", "bfloat16", "float16", "float64", "int64", "int32", "int8", "uint8")
# Small pictures at screen resolution, fixed margins (legend right, notes below): a layout
# engine would draw every picture twice, and drawing + PNG encoding are most of a redraw's cost.
FIGSIZE, DPI, MARGINS = (6.4, 4.2), 90, dict(left=0.1, right=0.7, top=0.92, bottom=0.27)
READ_COLUMNS = [
    "order",
    "dest_region",
    "storage_region",
    "dest_offsets",
    "storage_offsets",
    "lengths",
    "bytes",
    "source_chunk",
    "source_file",
    "writer",
]
PROBLEM_COLUMNS = ["fqn", "kind", "severity", "rank_list", "region", "message"]
# Every rank is planned on each spec change: beyond this a typo (a mesh of "1000000") would
# freeze the kernel for minutes instead of answering.
MAX_RANKS = 16384


# ----------------------------------------------------------------------------- parsing
def parse_ints(text, what: str, *, error=LayoutError, example: str = "16, 12") -> tuple[int, ...]:
    """``"16, 12"`` (or ``"16 12"``, ``"(16, 12)"``, a sequence of ints) -> ``(16, 12)``.

    ``error`` is the `WorkbenchError` subclass raised on bad text (by what the user fixes)."""
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    body = text.strip().strip("()[]").strip()
    parts = [p for p in re.split(r"[,\s]+", body) if p] if body else []
    if not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise error(
            None,
            f"{what} {text!r} is not a list of integers",
            f"comma-separated integers like {example!r}",
            f"Write the {what} as e.g. {example!r}.",
            text=text,
        )
    return tuple(int(p) for p in parts)


# ----------------------------------------------------------------------------- shared helpers
def _mime(obj) -> dict:
    """An output record for ``Output.outputs`` from any displayable object (no kernel needed)."""
    data, md = InteractiveShell.instance().display_formatter.format(obj)
    return {"output_type": "display_data", "data": data, "metadata": md}


def _note(text: str) -> dict:
    """An output record of a short italic note (instead of a table with no rows)."""
    return _mime(HTML(f"<i>{html.escape(text)}</i>"))


def _draw(picture) -> tuple[Any, bytes]:
    """(Figure, PNG bytes) of a `picture_data.Picture`, drawn on a fresh object-API Figure (dense tiles
    rasterised, fast PNG compression: the widget's redraw budget is 100 ms at 4096 chunks)."""
    from .plots import picture_png

    return picture_png(picture, figsize=FIGSIZE, dpi=DPI, margins=MARGINS)


def _styled(df, columns, highlight_row: int | None = None):
    """The shown columns of a table, rank columns in the ranks' colours, one row lit."""
    from .tables import style_by_rank

    styler = style_by_rank(df[[c for c in columns if c in df.columns]].reset_index(drop=True))
    if highlight_row is not None:
        styler = styler.apply(
            lambda row: [
                f"background-color: {HIGHLIGHT_COLOR}" if row.name == highlight_row else ""
                for _ in row
            ],
            axis=1,
        )
    return styler.hide(axis="index").set_properties(**{"text-align": "left"})


# ----------------------------------------------------------------------------- reshard
@dataclass(frozen=True, slots=True)
class ReshardSpec:
    """One tensor saved as a DTensor on one mesh and loaded as a DTensor on another."""

    shape: tuple[int, ...]
    save_mesh: tuple[int, ...]
    save_placements: tuple[Placement, ...]
    load_mesh: tuple[int, ...]
    load_placements: tuple[Placement, ...]
    dtype: str = "float32"
    torch_version: str = "2.13"  # whose DCP semantics plan it

    def describe(self) -> str:
        return (
            f"{FQN} {self.shape} {self.dtype}: mesh {self.save_mesh} "
            f"[{format_placements(self.save_placements)}] -> mesh {self.load_mesh} "
            f"[{format_placements(self.load_placements)}]"
        )


# label -> control texts: the reshards people ask about
CLASSIC_RESHARDS: dict[str, dict[str, str]] = {
    "FSDP 8 -> 4": dict(
        shape="16, 12", save_mesh="8", save_placements="S(0)", load_mesh="4", load_placements="S(0)"
    ),
    "FSDP -> FSDP+TP": dict(
        shape="16, 12",
        save_mesh="8",
        save_placements="S(0)",
        load_mesh="4, 2",
        load_placements="S(0), S(1)",
    ),
    "uneven rows (13 on 4 -> 3)": dict(
        shape="13, 8", save_mesh="4", save_placements="S(0)", load_mesh="3", load_placements="S(0)"
    ),
    # 3 rows on 4 ranks: rank 3's shard is empty, recorded at offset 3 (the dim's end)
    "empty shard (3 rows on 4)": dict(
        shape="3, 8", save_mesh="4", save_placements="S(0)", load_mesh="2", load_placements="S(0)"
    ),
    # FSDP2 + TP's placement: the boxes DCP records name other rows than the ranks hold
    "_StridedShard destination": dict(
        shape="8, 4",
        save_mesh="2",
        save_placements="S(0)",
        load_mesh="2",
        load_placements="SS(0,2)",
    ),
}
DEFAULT_CLASSIC = "FSDP -> FSDP+TP"


def _classic(label: str) -> dict[str, str]:
    """The control texts of a classic reshard; a `LayoutError` for an unknown label."""
    if label not in CLASSIC_RESHARDS:
        raise LayoutError(
            None,
            f"classic reshard {label!r} is not known",
            f"one of {list(CLASSIC_RESHARDS)}",
            "Pick a listed classic.",
        )
    return CLASSIC_RESHARDS[label]


@dataclass(frozen=True, eq=False)
class ReshardResult:
    """What `explore_reshard` computed: the plans, the rank's read items, the problems and the
    overlay (``picture``: `picture_data.Picture` data; ``figure`` / ``png``: it drawn)."""

    spec: ReshardSpec
    rank: int
    dims: tuple[int, ...]
    save: Any  # planning.SavePlanResult
    load: Any  # planning.LoadPlanResult
    reads: Any  # DataFrame, tables.read_items_table for the rank
    problems: tuple  # diagnosis.Problem records, save side then load side
    problems_table: Any  # DataFrame, tables.problems_table
    picture: Any = field(repr=False)
    figure: Any = field(repr=False)
    png: bytes = field(repr=False)


@lru_cache(maxsize=32)
def _reshard_plans(spec: ReshardSpec):
    """(save, load, problems) of a spec, cached: a rank or dims change re-plans nothing."""
    from .diagnosis import find_save_problems
    from .planning import plan_load, plan_save

    save = plan_save(
        {
            FQN: dtensor_layout(
                spec.shape, spec.save_mesh, spec.save_placements, spec.dtype, fqn=FQN
            )
        },
        torch_version=spec.torch_version,
    )
    load = plan_load(
        save.metadata,
        {
            FQN: dtensor_layout(
                spec.shape, spec.load_mesh, spec.load_placements, spec.dtype, fqn=FQN
            )
        },
        torch_version=spec.torch_version,
    )
    return save, load, tuple(find_save_problems(save)) + tuple(load.problems)


def explore_reshard(
    shape,
    save_mesh,
    save_placements,
    load_mesh,
    load_placements,
    *,
    dtype: str = "float32",
    rank: int = 0,
    dims="0, 1",
    torch_version: str | None = None,
) -> ReshardResult:
    """Plan a one-tensor reshard (``plan_save`` then ``plan_load``, every rank) and show it from
    load rank ``rank``: the `ReshardExplorer`'s function.

    Text arguments are parsed as the controls type them (``"16, 12"``, ``"S(0), R"``); bad input
    raises a `WorkbenchError` subclass in the house form. ``torch_version``: whose DCP semantics
    plan it (default `versions.default_torch_version`).
    """
    from .picture_data import reshard_data
    from .tables import problems_table, read_items_table

    spec = ReshardSpec(
        shape=parse_ints(shape, "shape"),
        save_mesh=parse_ints(save_mesh, "save mesh", error=PlacementError, example="4, 2"),
        save_placements=parse_placements(save_placements),
        load_mesh=parse_ints(load_mesh, "load mesh", error=PlacementError, example="4, 2"),
        load_placements=parse_placements(load_placements),
        dtype=canonical_dtype(dtype, FQN),
        torch_version=resolve_torch_version(torch_version),
    )
    dims = parse_ints(dims, "dims to draw", example="0, 1")
    for what, mesh in (("save", spec.save_mesh), ("load", spec.load_mesh)):
        n = math.prod(mesh)
        if n > MAX_RANKS:
            raise PlacementError(
                FQN,
                f"{what} mesh {mesh} has {n} ranks",
                f"at most {MAX_RANKS} in the explorer",
                "Plan larger worlds with workbench.planning.plan_save / plan_load.",
                mesh_shape=mesh,
            )
    nbytes = math.prod(spec.shape) * DTYPE_SIZES[spec.dtype]
    if nbytes >= 2**63:  # byte counts are int64 in plans and tables
        raise LayoutError(
            FQN,
            f"shape {spec.shape} holds {nbytes} bytes of {spec.dtype}",
            "below 2**63 bytes",
            "Use a real tensor size.",
            shape=spec.shape,
        )
    save, load, problems = _reshard_plans(spec)
    reads = read_items_table(load, FQN, rank=int(rank))  # raises for a rank outside the world
    picture = reshard_data(save, load, FQN, int(rank), dims=dims)
    figure, png = _draw(picture)
    return ReshardResult(
        spec,
        int(rank),
        dims,
        save,
        load,
        reads,
        problems,
        problems_table(problems),
        picture,
        figure,
        png,
    )


# ----------------------------------------------------------------------------- widget plumbing
def _message(panel: W.HTML, err: Exception | str | None) -> None:
    panel.value = (
        ""
        if err is None
        else (f"<div style='color:#b00020;white-space:pre-wrap'>{html.escape(str(err))}</div>")
    )


def _css(widget: W.Widget, name: str) -> W.Widget:
    widget.add_class(name)
    return widget


def _text(value: str, description: str, css: str) -> W.Text:
    # continuous_update=False: a redraw on Enter / blur, not on every keystroke
    return _css(
        W.Text(
            value=value,
            description=description,
            continuous_update=False,
            layout=W.Layout(width="17em"),
            style={"description_width": "8.5em"},
        ),
        css,
    )


def _dropdown(options, value, description: str, css: str, width: str = "17em") -> W.Dropdown:
    return _css(
        W.Dropdown(
            options=options,
            value=value,
            description=description,
            layout=W.Layout(width=width),
            style={"description_width": "8.5em"},
        ),
        css,
    )


class _Explorer:
    """What every explorer shares: the message panel, a mute flag so that filling several
    controls redraws once, and the guarded refresh (a `WorkbenchError` goes to the panel and the
    last result stays)."""

    result: Any = None
    widget: W.Widget

    def __init__(self):
        self.message = _css(W.HTML(value=""), "wb-message")
        self._muted = False

    @contextmanager
    def _quiet(self):
        """Set several controls without a redraw per control (the caller refreshes once)."""
        self._muted = True
        try:
            yield
        finally:
            self._muted = False

    def _observe(self, *controls: W.Widget) -> None:
        for c in controls:
            c.observe(self._on_change, names="value")

    def _on_change(self, change=None) -> None:
        if not self._muted:
            self.refresh()

    def refresh(self):
        """Recompute from the controls and show the result, or the error in the message panel
        (the outputs and ``.result`` keep the last good result). Returns ``.result``."""
        try:
            result = self._compute()
        except WorkbenchError as err:
            _message(self.message, err)
            return self.result
        except Exception as err:
            # a bug, not bad input: say so where the user looks (a browser shows callback
            # exceptions only in the log console), then let it propagate to the log and to tests
            _message(self.message, f"internal error, please report: {type(err).__name__}: {err}")
            raise
        _message(self.message, None)
        self.result = result
        self._show(result)
        return result

    def _compute(self):
        raise NotImplementedError

    def _show(self, result) -> None:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)


def _set_options(dropdown: W.Dropdown, options: list, value) -> None:
    """New options for a dropdown, keeping ``value`` when it is still offered."""
    if list(dropdown.options) != options:
        dropdown.options = options
    dropdown.value = value if value in options else options[0]


class ReshardExplorer(_Explorer):
    """Explore one tensor's reshard: shape, dtype, save mesh + placements, load mesh +
    placements (typed like ``S(0), R``), the load rank and the dims to draw, and a dropdown of
    classic reshards to start from.

    A ``torch`` dropdown picks whose DCP semantics plan it (2.4 ... 2.14; read order and
    checks follow the version). Shows the overlay of saved and wanted chunks with the rank's read items lit
    (``picture_data.reshard_data``), the rank's read-item table and the problems table.
    ``ReshardExplorer()`` opens on a classic reshard; ``.result`` is the last `ReshardResult`.
    """

    def __init__(self, classic: str = DEFAULT_CLASSIC, *, rank: int = 0, dims: str = "0, 1"):
        super().__init__()
        _classic(classic)
        self.classic = _dropdown(
            list(CLASSIC_RESHARDS), classic, "start from", "wb-classic", width="24em"
        )
        self.shape = _text("", "shape", "wb-shape")
        self.dtype = _dropdown(DTYPES, "float32", "dtype", "wb-dtype")
        self.torch_version = _dropdown(
            list(SUPPORTED_TORCH_VERSIONS), default_torch_version(), "torch", "wb-torch"
        )
        self.save_mesh = _text("", "save mesh", "wb-save-mesh")
        self.save_placements = _text("", "save placements", "wb-save-placements")
        self.load_mesh = _text("", "load mesh", "wb-load-mesh")
        self.load_placements = _text("", "load placements", "wb-load-placements")
        self.rank = _dropdown([0], 0, "load rank", "wb-rank")
        self.dims = _text(dims, "dims to draw", "wb-dims")
        self.picture = _css(W.Output(), "wb-picture")
        self.reads = _css(W.Output(), "wb-reads")
        self.problems = _css(W.Output(), "wb-problems")
        controls = W.VBox(
            [
                self.classic,
                self.torch_version,
                self.shape,
                self.dtype,
                self.save_mesh,
                self.save_placements,
                self.load_mesh,
                self.load_placements,
                self.rank,
                self.dims,
            ]
        )
        self.widget = _css(
            W.VBox(
                [
                    W.HBox([controls, self.picture]),
                    self.message,
                    W.HTML("<b>read items of the load rank, in DCP's order</b>"),
                    self.reads,
                    W.HTML("<b>problems</b>"),
                    self.problems,
                ]
            ),
            "wb-reshard",
        )
        self.classic.observe(lambda ch: self._apply_classic(ch["new"], 0), names="value")
        self._observe(
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
        self._apply_classic(classic, rank)
        check_load_rank(rank, len(self.rank.options), what="load rank")

    def _apply_classic(self, label: str, rank: int) -> None:
        """Fill every control from a classic reshard, then redraw once."""
        with self._quiet():
            for name, value in _classic(label).items():
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
            _set_options(self.rank, list(range(world)), rank)

    def _on_change(self, change=None) -> None:
        if change is not None and change["owner"] is self.load_mesh and not self._muted:
            with self._quiet():
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

    def _show(self, r: ReshardResult) -> None:
        self.picture.outputs = (_mime(Image(data=r.png, format="png")),)
        self.reads.outputs = (_mime(_styled(r.reads, READ_COLUMNS)),)
        self.problems.outputs = (
            (_mime(_styled(r.problems_table, PROBLEM_COLUMNS)),)
            if r.problems
            else (_note("no problems found"),)
        )


# ----------------------------------------------------------------------------- checkpoint
@dataclass(frozen=True, eq=False)
class CheckpointPlan:
    """A checkpoint loaded into a target, planned once for every rank: the metadata, the target
    layouts, the load plan (None without a target), its problems and its per-rank I/O table."""

    metadata: Metadata
    source: str
    layouts: dict | None
    load: Any  # planning.LoadPlanResult | None
    problems: tuple
    io: Any  # DataFrame, tables.io_table (None without a target)
    format: str = "dcp"  # of a checkpoint directory: "dcp", "megatron" or "hf"
    facts: dict | None = None  # what the format records of itself (Checkpoint.facts)

    @cached_property
    def problem_counts(self) -> Counter:
        """Problems per fqn (the tensor list's labels and its filter)."""
        return Counter(p.fqn for p in self.problems)


def _target_layouts(target) -> dict[str, Layout]:
    if isinstance(target, Mapping):
        return dict(target)
    if isinstance(target, tuple) and len(target) == 3:
        from .models import apply_recipe, model_state_dict

        preset, recipe, mesh = target
        return apply_recipe(model_state_dict(preset), recipe, mesh)
    raise PlanError(
        "<target>",
        f"target {target!r} is not understood",
        "a dict {fqn: Layout} or a tuple (preset, recipe, mesh_shape)",
        "Pass e.g. ('llama', 'fsdp2+tp', (2, 2)).",
        target=target,
    )


def plan_checkpoint(source, target=None) -> CheckpointPlan:
    """Plan loading ``source`` into ``target`` on every rank: the `CheckpointExplorer`'s one
    expensive step.

    ``source``: a checkpoint directory of any format (`checkpoint.open_checkpoint`: the
    allow-list and safetensors-header readers, no code run), a `Metadata`, or a save result
    (``planning.plan_save``). ``target``: ``{fqn: Layout}``, ``(preset, recipe, mesh_shape)``
    (``models.apply_recipe(models.model_state_dict(preset), recipe, mesh_shape)``), or None: a
    save result is then loaded back into its own layouts, a directory is only listed.
    """
    from .diagnosis import find_save_problems
    from .planning import plan_load
    from .sources import as_metadata
    from .tables import io_table

    save_problems: tuple = ()
    layouts = None
    fmt, facts = "dcp", None
    if hasattr(source, "metadata") and hasattr(source, "local_plans"):  # a SavePlanResult
        metadata, name, layouts = source.metadata, "save plan", source.layouts
        save_problems = tuple(find_save_problems(source))
    elif isinstance(source, (str, os.PathLike)):  # any format's reader, no code run
        from .checkpoint import open_checkpoint

        ckpt = open_checkpoint(source)
        # model shapes: Megatron's flattened_range tensors drawn as the boxes of the model tensor
        metadata, name, fmt, facts = ckpt.model_metadata, str(source), ckpt.format, ckpt.facts()
    else:
        try:
            metadata, name = as_metadata(source), "metadata"  # torch's or our Metadata
        except MetadataError:
            raise PlanError(
                "<checkpoint>",
                f"source is a {type(source).__name__}",
                "a checkpoint directory, a Metadata or plan_save(...)'s result",
                "Pass the directory dcp.save wrote.",
            ) from None
    if target is not None:
        layouts = _target_layouts(target)
    if layouts is None:  # no target: the saved chunks' own holes and overlaps
        from .diagnosis import find_checkpoint_problems

        return CheckpointPlan(
            metadata,
            name,
            None,
            None,
            save_problems + tuple(find_checkpoint_problems(metadata)),
            None,
            fmt,
            facts,
        )
    load = plan_load(metadata, layouts)
    return CheckpointPlan(
        metadata,
        name,
        layouts,
        load,
        save_problems + tuple(load.problems),
        io_table(load),
        fmt,
        facts,
    )


@dataclass(frozen=True, eq=False)
class CheckpointResult:
    """What `explore_checkpoint` shows: the listed fqns (after the filter), the selected one, its
    saved chunks, its read items on ``rank``, the problems and the picture."""

    plan: CheckpointPlan
    fqns: tuple[str, ...]
    fqn: str | None
    rank: int
    chunks: Any  # DataFrame, tables.checkpoint_chunks_table of fqn (None: not saved)
    reads: Any  # DataFrame, tables.read_items_table of fqn on rank (None: no target for it)
    problems_table: Any  # DataFrame of fqn's problems
    picture: Any = field(repr=False)
    figure: Any = field(repr=False)
    png: bytes = field(repr=False)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _all_fqns(plan: CheckpointPlan) -> list[str]:
    """Checkpoint keys, then the target's keys the checkpoint lacks (missing keys)."""
    keys = list(plan.metadata.state_dict_metadata)
    return keys + [k for k in (plan.layouts or {}) if k not in plan.metadata.state_dict_metadata]


def explore_checkpoint(
    plan: CheckpointPlan,
    *,
    pattern: str = "",
    only_problems: bool = False,
    fqn: str | None = None,
    rank: int = 0,
    dims="0, 1",
) -> CheckpointResult:
    """Filter a planned checkpoint's keys (``pattern``: a case-insensitive substring, or a regex)
    and show one of them (``fqn``, else the first listed) from load ``rank``."""
    from .picture_data import layout_data, reshard_data
    from .tables import checkpoint_chunks_table, problems_table, read_items_table

    try:
        rx = re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        raise PlanError(
            None,
            f"filter {pattern!r} is not a valid pattern ({e})",
            "a substring or a regular expression",
            "Fix or clear the filter.",
        ) from None
    counts = plan.problem_counts
    fqns = tuple(
        k for k in _all_fqns(plan) if rx.search(k) and (counts.get(k) or not only_problems)
    )
    if fqn is None or fqn not in fqns:
        fqn = fqns[0] if fqns else None
    rank = int(rank)
    dims = parse_ints(dims, "dims to draw", example="0, 1")
    sdm = plan.metadata.state_dict_metadata
    saved = fqn in sdm  # False for a missing key (and for an empty list)
    chunks = checkpoint_chunks_table(plan.metadata, fqn) if saved else None
    reads = (
        read_items_table(plan.load, fqn, rank=rank)
        if plan.load is not None and fqn in plan.layouts
        else None
    )
    picture = None
    if saved and isinstance(sdm[fqn], TensorStorageMetadata):
        lay = (plan.layouts or {}).get(fqn)
        picture = (
            reshard_data(plan.metadata, plan.load, fqn, rank, dims=dims)
            if reads is not None
            and lay is not None
            and lay.kind != "bytes"
            and lay.shape == tuple(sdm[fqn].size)
            else layout_data(plan.metadata, dims, fqn=fqn)
        )
    figure, png = _draw(picture) if picture is not None else (None, b"")
    return CheckpointResult(
        plan,
        fqns,
        fqn,
        rank,
        chunks,
        reads,
        problems_table([p for p in plan.problems if p.fqn == fqn]),
        picture,
        figure,
        png,
    )


class CheckpointExplorer(_Explorer):
    """Explore a real checkpoint directory (or a whole-model save plan) loaded into a target:
    a filterable list of tensors with their problem counts, the selected tensor's overlay, saved
    chunks, read items and problems, and the I/O summary per rank. See `plan_checkpoint` for
    ``source`` and ``target``; ``.result`` is the last `CheckpointResult`."""

    def __init__(self, source, target=None, *, rank: int = 0, only_problems: bool = False):
        super().__init__()
        self._source = source
        # a captured target (workbench.capture) names the build() it came from
        self._target_name = getattr(target, "build", None) if isinstance(target, Mapping) else None
        self.plan = plan_checkpoint(source, target)
        world = self.plan.load.world_size if self.plan.load is not None else 1
        # A (preset, recipe, mesh) target can be changed in place: another recipe or mesh re-plans
        # the whole checkpoint (the expensive step) and redraws.
        from .models import RECIPES

        preset, recipe, mesh = (
            target if isinstance(target, tuple) and len(target) == 3 else ("", "fsdp", (1,))
        )
        self.preset = _text(str(preset), "target preset", "wb-target-preset")
        self.recipe = _dropdown(
            list(RECIPES),
            recipe if recipe in RECIPES else "fsdp",
            "target recipe",
            "wb-target-recipe",
        )
        self.mesh = _text(
            ", ".join(str(m) for m in (mesh if isinstance(mesh, tuple) else (mesh,))),
            "target mesh",
            "wb-target-mesh",
        )
        self._header = W.HTML()
        self.filter = _text("", "filter", "wb-filter")
        self.only_problems = _css(
            W.Checkbox(value=only_problems, description="only with problems", indent=False),
            "wb-only-problems",
        )
        self.tensor = _css(
            W.Select(
                options=[],
                rows=12,
                description="tensor",
                layout=W.Layout(width="30em"),
                style={"description_width": "4em"},
            ),
            "wb-tensor",
        )
        self.rank = _dropdown(
            list(range(world)),
            check_load_rank(rank, world, what="load rank"),
            "load rank",
            "wb-rank",
        )
        self.dims = _text("0, 1", "dims to draw", "wb-dims")
        self.picture = _css(W.Output(), "wb-picture")
        self.chunks = _css(W.Output(), "wb-chunks")
        self.reads = _css(W.Output(), "wb-reads")
        self.problems = _css(W.Output(), "wb-problems")
        self.io = _css(W.Output(), "wb-io")
        self.widget = _css(
            W.VBox(
                [
                    self._header,
                    W.HBox([self.preset, self.recipe, self.mesh]),
                    W.HBox(
                        [
                            W.VBox(
                                [self.filter, self.only_problems, self.tensor, self.rank, self.dims]
                            ),
                            self.picture,
                        ]
                    ),
                    self.message,
                    W.HTML("<b>problems of the tensor</b>"),
                    self.problems,
                    W.HTML("<b>saved chunks</b>"),
                    self.chunks,
                    W.HTML("<b>read items of the load rank</b>"),
                    self.reads,
                    W.HTML("<b>I/O per load rank</b>"),
                    self.io,
                ]
            ),
            "wb-checkpoint",
        )
        self._show_plan()
        self._observe(self.filter, self.only_problems, self.tensor, self.rank, self.dims)
        for c in (self.preset, self.recipe, self.mesh):
            c.observe(self._on_target, names="value")
        self.refresh()

    def _show_plan(self) -> None:
        """The parts that change only with the plan: header, I/O table."""
        fmt = (self.plan.facts or {}).get("format")
        self._header.value = (
            f"<b>{html.escape(self.plan.source)}</b>"
            + (f" ({html.escape(str(fmt))})" if fmt else "")
            + f": {_count(len(self.plan.metadata.state_dict_metadata), 'saved key')}, "
            f"{_count(len(self.plan.problems), 'problem')}"
            + (
                f" (target captured from <code>{html.escape(self._target_name)}</code>)"
                if self._target_name
                else ""
            )
        )
        if self.plan.io is not None:
            self.io.outputs = (_mime(_styled(self.plan.io, self.plan.io.columns)),)
        else:
            self.io.outputs = (_note("no target: nothing is loaded"),)

    def set_target(self, preset: str, recipe: str, mesh) -> None:
        """Re-plan the checkpoint into ``(preset, recipe, mesh)``; a bad target goes to the message
        panel and the last plan stays."""
        try:
            plan = plan_checkpoint(
                self._source, (preset, recipe, parse_ints(mesh, "target mesh", example="2, 2"))
            )
        except WorkbenchError as err:
            _message(self.message, err)
            return
        self.plan = plan
        self._target_name = None
        world, rank = plan.load.world_size, self.rank.value
        with self._quiet():
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
            (f"{k}  ({_count(counts[k], 'problem')})" if counts.get(k) else k, k) for k in r.fqns
        ]
        with self._quiet():
            if list(self.tensor.options) != options:
                self.tensor.options = options
            self.tensor.value = r.fqn
        self.picture.outputs = (
            (_mime(Image(data=r.png, format="png")),)
            if r.png
            else (_note("nothing to draw (not a saved tensor)"),)
        )
        self.chunks.outputs = (
            (_mime(_styled(r.chunks, r.chunks.columns)),)
            if r.chunks is not None
            else (_note("not in the checkpoint"),)
        )
        self.reads.outputs = (
            (_mime(_styled(r.reads, READ_COLUMNS)),)
            if r.reads is not None
            else (_note("no target for this key"),)
        )
        self.problems.outputs = (
            (_mime(_styled(r.problems_table, PROBLEM_COLUMNS)),)
            if len(r.problems_table)
            else (_note("no problems found"),)
        )


# ----------------------------------------------------------------------------- read order
@dataclass(frozen=True, eq=False)
class StepResult:
    """One step of `step_read_order`: item ``step`` (0-based) of ``n`` read items of ``fqn`` on
    ``rank``, its `ReadItem`, the rank's read-item table and the picture with the item lit."""

    fqn: str
    rank: int
    step: int
    n: int
    item: Any  # records.ReadItem (None when the rank reads nothing)
    reads: Any  # DataFrame
    caption: str
    picture: Any = field(repr=False)
    figure: Any = field(repr=False)
    png: bytes = field(repr=False)


def _light_up(picture, items, step: int):
    """The picture with read item ``step`` lit and the other read items faded. Read tiles come in
    DCP's order, one per item with a non-empty box inside the drawn slab; when some item has no
    tile (an N-D slab misses it) no tile is lit rather than the wrong one."""
    reads = [i for i, t in enumerate(picture.tiles) if t.kind == "read"]
    drawn = [k for k, it in enumerate(items) if not it.dest_chunk.is_empty]
    if len(reads) != len(drawn) or step not in drawn:
        return picture
    lit = reads[drawn.index(step)]
    tiles = tuple(
        replace(t, face=HIGHLIGHT_COLOR, alpha=1.0, linewidth=2.5)
        if i == lit
        else replace(t, alpha=0.25)
        if t.kind == "read"
        else t
        for i, t in enumerate(picture.tiles)
    )
    return replace(picture, tiles=tiles, title=f"{picture.title}: item {step + 1} of {len(items)}")


def step_read_order(load, fqn: str, rank: int = 0, step: int = 0, *, dims="0, 1") -> StepResult:
    """Read item ``step`` of ``fqn`` on load ``rank``, in DCP's order (``LoadPlan.items``):
    the `ReadOrderStepper`'s function. ``load`` is ``plan_load``'s result (or a `ReshardResult`)."""
    from .picture_data import reshard_data
    from .tables import read_items_table

    load = getattr(load, "load", load)
    rank = int(rank)
    reads = read_items_table(load, fqn, rank=rank)
    items = [it for it in load.plans[rank].items if it.dest_index.fqn == fqn]
    if items and not 0 <= step < len(items):
        raise PlanError(
            fqn,
            f"step {step} is not one of rank {rank}'s {len(items)} read items",
            f"0 <= step < {len(items)}",
            "Step within the list.",
            step=step,
        )
    picture = reshard_data(load.metadata, load, fqn, rank, dims=parse_ints(dims, "dims to draw"))
    if items:
        item, row = items[step], reads.iloc[step]
        caption = (
            f"item {step + 1} of {len(items)}: rank {rank} copies {row['dest_region']} from "
            f"saved chunk #{row['source_chunk']} {row['storage_region']}"
            + (f" in {row['source_file']}" if isinstance(row["source_file"], str) else "")
            + f" (dest_offsets {tuple(item.dest_offsets)}, storage_offsets "
            f"{tuple(item.storage_offsets)}, lengths {tuple(item.lengths)})"
        )
        picture = _light_up(picture, items, step)
    else:
        item, caption = None, f"rank {rank} reads nothing of {fqn}"
    figure, png = _draw(picture)
    return StepResult(fqn, rank, step, len(items), item, reads, caption, picture, figure, png)


class ReadOrderStepper(_Explorer):
    """Walk DCP's read items of one rank one at a time (prev / next buttons, a slider), the
    current item lit in the picture and in the table, for teaching.

    ``source``: a classic reshard label (`CLASSIC_RESHARDS`), a `ReshardResult` or
    ``plan_load``'s result; ``fqn`` defaults to the first planned key."""

    def __init__(
        self, source=DEFAULT_CLASSIC, fqn: str | None = None, *, rank: int = 0, dims: str = "0, 1"
    ):
        super().__init__()
        if isinstance(source, str):
            source = explore_reshard(**_classic(source))
        self.load = getattr(source, "load", source)
        self.fqn = fqn if fqn is not None else next(iter(self.load.layouts))
        self._dims = dims
        self.rank = _dropdown(
            list(range(self.load.world_size)),
            check_load_rank(rank, self.load.world_size, what="load rank"),
            "load rank",
            "wb-rank",
        )
        self.step = _css(
            W.IntSlider(value=0, min=0, max=0, description="item", continuous_update=False),
            "wb-step",
        )
        self.prev = _css(W.Button(description="prev", icon="arrow-left"), "wb-prev")
        self.next = _css(W.Button(description="next", icon="arrow-right"), "wb-next")
        self.caption = _css(W.HTML(), "wb-caption")
        self.picture = _css(W.Output(), "wb-picture")
        self.reads = _css(W.Output(), "wb-reads")
        self.widget = _css(
            W.VBox(
                [
                    W.HBox([self.rank, self.prev, self.step, self.next]),
                    self.caption,
                    self.message,
                    self.picture,
                    self.reads,
                ]
            ),
            "wb-stepper",
        )
        self.prev.on_click(lambda _: self._move(-1))
        self.next.on_click(lambda _: self._move(+1))
        self.rank.observe(self._on_rank, names="value")
        self._observe(self.step)
        self._on_rank()

    def _n_items(self) -> int:
        return sum(
            1 for it in self.load.plans[self.rank.value].items if it.dest_index.fqn == self.fqn
        )

    def _on_rank(self, _change=None) -> None:
        """A new rank: its items, starting at the first."""
        with self._quiet():
            self.step.value = 0
            self.step.max = max(self._n_items() - 1, 0)
        self.refresh()

    def _move(self, delta: int) -> None:
        self.step.value = min(max(self.step.value + delta, 0), self.step.max)

    def _compute(self) -> StepResult:
        return step_read_order(
            self.load, self.fqn, self.rank.value, self.step.value, dims=self._dims
        )

    def _show(self, r: StepResult) -> None:
        self.caption.value = html.escape(r.caption)
        self.picture.outputs = (_mime(Image(data=r.png, format="png")),)
        self.reads.outputs = (_mime(_styled(r.reads, READ_COLUMNS, r.step if r.n else None)),)
