"""Upgrade questions: what changes for each rank when the same checkpoint is loaded into the same
target by another torch version (read order, problems appearing or vanishing, files opened).

`compare_versions(metadata, target, ["2.10", "2.13"])` plans the load once per version with
`planning.plan_load(..., torch_version=v)` and compares every later version with the first.

Imports planning, diagnosis, sharding, versions; never torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .diagnosis import find_save_problems
from .errors import PlanError
from .planning import LoadPlanResult, plan_load, plan_save
from .sharding import Layout
from .sources import held_layouts
from .versions import resolve_torch_version

__all__ = ["RankVersionChange", "VersionComparison", "compare_versions"]


@dataclass(frozen=True, slots=True)
class RankVersionChange:
    """One rank, ``version`` against ``baseline``.

    ``reordered``: fqns whose read items on this rank are the same set in another order;
    ``changed``: fqns whose read items differ as a set; ``appearing`` / ``vanishing``: problems
    (``"severity kind fqn"``) of this rank present only in ``version`` / only in ``baseline``;
    ``files_before`` / ``files_after``: the data files the rank opens, in order of first read
    (torch's reader groups reads by file in that order)."""

    rank: int
    baseline: str
    version: str
    reordered: tuple[str, ...]
    changed: tuple[str, ...]
    appearing: tuple[str, ...]
    vanishing: tuple[str, ...]
    files_before: tuple[str, ...]
    files_after: tuple[str, ...]

    def row(self) -> tuple:
        """The change as one table row, the same in the CLI and the HTML summary: version, rank,
        reordered and changed fqns, problems appearing and vanishing."""
        return (
            self.version,
            self.rank,
            ", ".join(self.reordered),
            ", ".join(self.changed),
            "; ".join(self.appearing),
            "; ".join(self.vanishing),
        )

    @property
    def unchanged(self) -> bool:
        return not (
            self.reordered
            or self.changed
            or self.appearing
            or self.vanishing
            or self.files_before != self.files_after
        )


@dataclass(frozen=True)
class VersionComparison:
    """``results[v]``: the `LoadPlanResult` of each version; ``changes``: one
    `RankVersionChange` per (later version, rank), versions in the order given."""

    versions: tuple[str, ...]
    results: dict = field(repr=False)
    changes: list

    def of_rank(self, rank: int) -> list[RankVersionChange]:
        return [c for c in self.changes if c.rank == rank]

    def changed(self) -> list[RankVersionChange]:
        """The (version, rank) records where something differs."""
        return [c for c in self.changes if not c.unchanged]

    def __repr__(self) -> str:
        # one record per (version, rank): the plain text counts the ones that change
        return (
            f"VersionComparison(versions={self.versions}, changed={len(self.changed())} of "
            f"{len(self.changes)} (version, rank) pairs)"
        )

    def _repr_html_(self) -> str:
        # the HTML layer sits above this module; loaded only when a notebook shows a comparison
        from .reprs import version_comparison_html

        return version_comparison_html(self)


def _rank_reads(res: LoadPlanResult, fqn: str, r: int) -> list[tuple]:
    block = res.reads(fqn)
    sl = block.of_rank(r)
    cols = (block.local_idx, block.saved_idx, block.dest_offsets, block.storage_offsets)
    return list(
        zip(
            *(c[sl].tolist() for c in cols),
            block.lengths[sl].tolist(),
        )
    )


def _files(res: LoadPlanResult, r: int) -> tuple[str, ...]:
    storage = res.metadata.storage_data
    if storage is None:
        return ()
    seen: dict[str, None] = {}
    for it in res.plans[r].items:
        info = storage.get(it.storage_index) if hasattr(storage, "get") else None
        if info is not None:
            seen.setdefault(str(info.relative_path), None)
    return tuple(seen)


def _problems(res: LoadPlanResult, r: int) -> set[str]:
    # a problem without ranks concerns the checkpoint as a whole: every rank sees it
    return {f"{p.severity} {p.kind} {p.fqn}" for p in res.problems if not p.ranks or r in p.ranks}


def _save_problems(save, r: int) -> set[str]:
    return {
        f"{p.severity} {p.kind} {p.fqn}"
        for p in find_save_problems(save)
        if not p.ranks or r in p.ranks
    }


def compare_versions(
    metadata,
    target: Mapping,
    versions: Sequence[str],
    *,
    allow_partial_load: bool = False,
    world_size: int | None = None,
) -> VersionComparison:
    """Plan loading ``metadata`` into ``target`` (``{fqn: Layout}``, or what a user holds: a state
    dict, a module, ``(model, optimizer)``; see `sources.held_layouts`) with each torch version in
    ``versions`` (at least two, e.g. ``["2.10", "2.13"]``) and compare each later version with
    the first, rank by rank.

    ``metadata`` may also be the SAVED state dict's layouts (``{fqn: Layout}``): each version
    then plans the save too (its own DTensor boxes, dedup and validation) and its save problems
    count among the rank's problems (``results[v].save`` holds that save)."""
    vs = tuple(resolve_torch_version(v) for v in versions)
    if len(vs) < 2 or len(set(vs)) != len(vs):
        raise PlanError(
            None,
            f"versions {list(versions)} name {len(set(vs))} distinct torch version(s)",
            "at least two distinct versions",
            "Give e.g. ['2.10', '2.13'].",
        )
    target, _ = held_layouts(target, world_size=world_size, for_load=True)
    from_layouts = isinstance(metadata, Mapping) and all(
        isinstance(x, Layout) for x in metadata.values()
    )
    results, saves = {}, {}
    for v in vs:
        md = metadata
        if from_layouts:
            saves[v] = plan_save(metadata, torch_version=v)
            md = saves[v].metadata
        results[v] = plan_load(md, target, allow_partial_load=allow_partial_load, torch_version=v)
    base = results[vs[0]]
    fqns = list(base.layouts)
    changes = []
    for v in vs[1:]:
        res = results[v]
        for r in range(base.world_size):
            reordered, changed = [], []
            for fqn in fqns:
                a, b = _rank_reads(base, fqn, r), _rank_reads(res, fqn, r)
                if a == b:
                    continue
                (reordered if sorted(a) == sorted(b) else changed).append(fqn)
            pa, pb = _problems(base, r), _problems(res, r)
            if from_layouts:
                pa |= _save_problems(saves[vs[0]], r)
                pb |= _save_problems(saves[v], r)
            changes.append(
                RankVersionChange(
                    rank=r,
                    baseline=vs[0],
                    version=v,
                    reordered=tuple(reordered),
                    changed=tuple(changed),
                    appearing=tuple(sorted(pb - pa)),
                    vanishing=tuple(sorted(pa - pb)),
                    files_before=_files(base, r),
                    files_after=_files(res, r),
                )
            )
    return VersionComparison(vs, results, changes)
