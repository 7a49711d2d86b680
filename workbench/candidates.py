"""Candidate targets compared: plan the load of one checkpoint into several layouts and rank
them by what they cost (`compare_targets`, `TargetCost`). Imports planning; no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import PlanError
from .planning import LoadPlanResult, plan_load
from .records import Metadata
from .sharding import Layout
from .sources import held_layouts

__all__ = ["compare_targets", "TargetCost"]


@dataclass(frozen=True)
class TargetCost:
    """What loading one checkpoint into one candidate target costs (see `compare_targets`).

    Totals over load ranks (``reads``, ``bytes_needed``, ``bytes_read``), the busiest rank
    (``max_rank_bytes_read``, ``max_rank_reads``, ``max_rank_files``: the rank that finishes last
    sets the load time), ``amplification`` (total bytes read / bytes needed) and ``failures``
    (entries torch would raise on). ``result`` is the full `LoadPlanResult`."""

    name: str
    world_size: int
    reads: int
    bytes_needed: int
    bytes_read: int
    amplification: float
    max_rank_bytes_read: int
    max_rank_reads: int
    max_rank_files: int
    failures: int
    result: LoadPlanResult = field(repr=False)


def compare_targets(
    metadata: Metadata,
    targets: Mapping[str, Mapping[str, Layout]],
    *,
    allow_partial_load: bool = False,
    progress: bool | None = None,
    world_size: int | None = None,
) -> list[TargetCost]:
    """Plan the load of ``metadata`` into every candidate target (``{name: {fqn: Layout}}``, or
    ``{name: what a user holds}``: a state dict, a module, ``(model, optimizer)``, see
    `sources.held_layouts`, whose ``world_size`` this passes) and return their I/O costs in the
    order given, so the cheaper layout can be picked.

    ``progress``: a tqdm bar over the candidates (``tqdm.auto``: a widget in a notebook, text in a
    terminal); None shows it when the work is large (over 100k tensor-ranks in all)."""
    if not isinstance(targets, Mapping) or not targets:
        raise PlanError(
            None,
            f"targets is {type(targets).__name__} {targets!r:.60}",
            "a non-empty dict {name: {fqn: Layout}}",
            "Name each candidate layout, e.g. {'fsdp64': ..., 'fsdp8+tp8': ...}.",
        )
    items = [
        (name, held_layouts(t, world_size=world_size, for_load=True)) for name, t in targets.items()
    ]
    if progress is None:
        progress = sum(len(t) * ws for _, (t, ws) in items) > 100_000
    if progress:
        from tqdm.auto import tqdm  # only when a bar is shown: tqdm.auto loads ipywidgets

        items = tqdm(items, desc="planning targets", unit="target")
    out = []
    for name, (layouts, _) in items:
        res = plan_load(metadata, layouts, allow_partial_load=allow_partial_load)
        io = res.io
        needed, read = int(io.bytes_needed.sum()), int(io.bytes_read.sum())
        out.append(
            TargetCost(
                name=str(name),
                world_size=res.world_size,
                reads=int(io.reads.sum()),
                bytes_needed=needed,
                bytes_read=read,
                amplification=read / needed if needed else float("nan"),
                max_rank_bytes_read=int(io.bytes_read.max(initial=0)),
                max_rank_reads=int(io.reads.max(initial=0)),
                max_rank_files=int(io.files_opened.max(initial=0)),
                failures=len(res.failures),
                result=res,
            )
        )
    return out
