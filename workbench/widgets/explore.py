"""The explorers' plain functions: what each explorer computes, with no widget and no kernel.

Each explorer (`workbench.widgets`) is controls + one function of this module + the last result
(``.result``, a frozen record holding the plans, tables, problems and the picture's data), as in
ipywidgets' ``interaction.py``:

- `explore_reshard` (the `ReshardExplorer`): one tensor saved on one mesh, loaded on another;
- `plan_checkpoint` (once) and `explore_checkpoint` (per control change; the
  `CheckpointExplorer`): a real checkpoint directory or a whole-model save plan, loaded into a
  target;
- `step_read_order` (the `ReadOrderStepper`): DCP's read items of one rank, one at a time.

Tests and other front ends call them directly. A result's static picture (``.figure`` /
``.png``, matplotlib's object API, no pyplot) is drawn only when asked for: the explorers show
the canvas instead. Imports no ipywidgets, anywidget or IPython (import-linter contract). Lazy imports:
planning, tables and pictures are imported inside the functions that use them.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Any

from ..colors import HIGHLIGHT_COLOR
from ..errors import LayoutError, MetadataError, PlacementError, PlanError
from ..records import DTYPE_SIZES, Metadata, TensorStorageMetadata, canonical_dtype
from ..sharding import (
    Placement,
    dtensor_layout,
    format_placements,
    parse_placements,
)
from ..targets import as_target, parse_ints
from ..versions import resolve_torch_version

__all__ = [
    "CLASSIC_RESHARDS",
    "DEFAULT_CLASSIC",
    "FQN",
    "ReshardSpec",
    "classic_controls",
    "READ_COLUMNS",
    "PROBLEM_COLUMNS",
    "DTYPES",
    "MAX_RANKS",
    "ReshardResult",
    "CheckpointPlan",
    "CheckpointResult",
    "StepResult",
    "explore_reshard",
    "plan_checkpoint",
    "explore_checkpoint",
    "step_read_order",
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
class _StaticPicture:
    """The static picture of a result, drawn from its ``picture`` data on first use (a fresh
    object-API Figure, dense tiles rasterised, fast PNG compression): ``figure`` and ``png``
    (empty bytes when there is nothing to draw). The explorers draw the canvas, not this."""

    picture: Any

    @cached_property
    def _drawn(self) -> tuple[Any, bytes]:
        if self.picture is None:
            return None, b""
        from ..plots import picture_png

        return picture_png(self.picture, figsize=FIGSIZE, dpi=DPI, margins=MARGINS)

    @property
    def figure(self):
        return self._drawn[0]

    @property
    def png(self) -> bytes:
        return self._drawn[1]


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


def classic_controls(label: str) -> dict[str, str]:
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
class ReshardResult(_StaticPicture):
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


@lru_cache(maxsize=32)
def _reshard_plans(spec: ReshardSpec):
    """(save, load, problems, their table) of a spec, cached: a rank or dims change re-plans
    nothing."""
    from ..diagnosis import find_save_problems
    from ..planning import plan_load, plan_save
    from ..tables import problems_table

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
    problems = tuple(find_save_problems(save)) + tuple(load.problems)
    return save, load, problems, problems_table(problems)


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
    from ..picture_data import reshard_data
    from ..tables import read_items_table

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
    save, load, problems, table = _reshard_plans(spec)
    reads = read_items_table(load, FQN, rank=int(rank))  # raises for a rank outside the world
    picture = reshard_data(save, load, FQN, int(rank), dims=dims)
    return ReshardResult(
        spec,
        int(rank),
        dims,
        save,
        load,
        reads,
        problems,
        table,
        picture,
    )


# ----------------------------------------------------------------------------- checkpoint
@dataclass(frozen=True, eq=False)
class CheckpointPlan:
    """A checkpoint loaded into a target, planned once for every rank: the metadata, the target
    layouts, the load plan (None without a target), its problems and (on first use) its
    per-rank I/O table."""

    metadata: Metadata
    source: str
    layouts: dict | None
    load: Any  # planning.LoadPlanResult | None
    problems: tuple
    format: str = "dcp"  # of a checkpoint directory: "dcp", "megatron" or "hf"
    facts: dict | None = None  # what the format records of itself (Checkpoint.facts)

    @cached_property
    def io(self):
        """The per-rank I/O table (`tables.io_table`; None without a target), costed on first
        use: at 16,384 ranks it is 0.3 s an explorer shows after its first scene."""
        from ..tables import io_table

        return None if self.load is None else io_table(self.load)

    @property
    def io_costed(self) -> bool:
        """Whether `io` was computed already."""
        return "io" in self.__dict__

    @cached_property
    def problem_counts(self) -> Counter:
        """Problems per fqn (the tensor list's labels and its filter)."""
        return Counter(p.fqn for p in self.problems)


def plan_checkpoint(source, target=None, *, storage_options: dict | None = None) -> CheckpointPlan:
    """Plan loading ``source`` into ``target`` on every rank: the `CheckpointExplorer`'s one
    expensive step.

    ``source``: a checkpoint directory of any format (`checkpoint.open_checkpoint`: the
    allow-list and safetensors-header readers, no code run), a `Metadata`, or a save result
    (``planning.plan_save``). ``target``: any form `targets.as_target` takes (a spec such as
    ``"llama-70b:fsdp2+tp:dp=8,tp=8"``, a JSON file, ``{fqn: Layout}``, ``(preset, recipe,
    mesh_shape)``, a state dict), or None: a save result is then loaded back into its own
    layouts, a directory is only listed. A directory may be an fsspec URL (``s3://``,
    ``file://``...), opened with ``storage_options`` as `checkpoint.open_checkpoint` opens it.
    """
    from ..diagnosis import find_save_problems
    from ..planning import plan_load
    from ..sources import as_metadata

    save_problems: tuple = ()
    layouts = None
    fmt, facts = "dcp", None
    if hasattr(source, "metadata") and hasattr(source, "local_plans"):  # a SavePlanResult
        metadata, name, layouts = source.metadata, "save plan", source.layouts
        save_problems = tuple(find_save_problems(source))
    elif isinstance(source, (str, os.PathLike)):  # any format's reader, no code run
        from ..checkpoint import open_checkpoint

        ckpt = open_checkpoint(source, storage_options=storage_options)
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
        layouts = as_target(target)  # every target form, parsed as the CLI parses it
    if layouts is None:  # no target: the saved chunks' own holes and overlaps
        from ..diagnosis import find_checkpoint_problems

        return CheckpointPlan(
            metadata,
            name,
            None,
            None,
            save_problems + tuple(find_checkpoint_problems(metadata)),
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
        fmt,
        facts,
    )


@dataclass(frozen=True, eq=False)
class CheckpointResult(_StaticPicture):
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
    reshard: bool = False  # the picture shows rank's reads (else the saved chunks only)


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
    from ..picture_data import layout_data, reshard_data
    from ..tables import checkpoint_chunks_table, problems_table, read_items_table

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
    picture, reshard = None, False
    if saved and isinstance(sdm[fqn], TensorStorageMetadata):
        lay = (plan.layouts or {}).get(fqn)
        reshard = (
            reads is not None
            and lay is not None
            and lay.kind != "bytes"
            and lay.shape == tuple(sdm[fqn].size)
        )
        picture = (
            reshard_data(plan.metadata, plan.load, fqn, rank, dims=dims)
            if reshard
            else layout_data(plan.metadata, dims, fqn=fqn)
        )
    return CheckpointResult(
        plan,
        fqns,
        fqn,
        rank,
        chunks,
        reads,
        problems_table([p for p in plan.problems if p.fqn == fqn]),
        picture,
        reshard,
    )


# ----------------------------------------------------------------------------- read order
@dataclass(frozen=True, eq=False)
class StepResult(_StaticPicture):
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
    from ..picture_data import reshard_data
    from ..tables import read_items_table

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
    return StepResult(fqn, rank, step, len(items), item, reads, caption, picture)
