"""Planners that check a reshard inside the training job, before any data is read or written.

``dcp.load(sd, checkpoint_id=path, planner=CheckedLoadPlanner())`` is ``DefaultLoadPlanner``
plus one step: every rank sends what it holds (its flattened state dict as `held.RankEntry`
records: kind, global shape, dtype, mesh, placements) to the coordinator in its local plan's
``planner_data`` -- the gather DCP makes anyway, no extra collective -- and the coordinator,
before the global plan is scattered, describes the whole job (`held.layout_of_entries`), plans
the load with the workbench (`planning.plan_load`) and runs its diagnosis
(`diagnosis.find_problems`). Problems of severity ``error`` (torch would raise on some ranks)
raise one `CheckedLoadError` with the workbench's message (which ranks, which keys, why, the fix);
``silent`` ones (stale values, casts, one rank's copy for all) raise too with
``on_silent="raise"`` or are warned about on every rank with ``on_silent="warn"``. A rank whose
own ``create_local_plan`` raises (missing key, size mismatch) does not fail alone: its error
travels in its plan to the coordinator, which reports it with the others.

DCP wraps whatever the coordinator raises in its ``CheckpointException`` (a ``BaseException``)
on every rank; its ``failures`` then hold exactly one entry, the `CheckedLoadError`
(`checked_error` takes it back out).

`CheckedSavePlanner` does the same for ``dcp.save``: before the global plan is validated and
anything written, the coordinator plans the save with the workbench (`planning.plan_save`, the
storage writer's losses included: ``storage="hf"``) and raises (or warns) on what the save would
lose or make unreadable (per-rank plain tensors deduplicated to one copy, the HF writer's lost
chunks, Partial placements).

The hooks used -- ``create_local_plan``, ``create_global_plan``, ``finish_plan`` of
``DefaultLoadPlanner`` / ``DefaultSavePlanner`` and the plans' ``planner_data`` field -- exist
with these signatures in every supported torch (2.4 - 2.15; recorded from the wheels by
``tools/record_planner_hooks.py`` into ``tests/data/planner_hooks.json``).

Imports torch at the top (noted exception of the torch bridge: these classes derive from
torch's planners, and whoever uses them runs ``dcp.load``), the core's planning and the bridge's
`held` / `convert`.
"""

from __future__ import annotations

import dataclasses
import warnings

from ..diagnosis import find_save_problems
from ..errors import WorkbenchError, missing_extra

try:  # these planners ARE torch's planners, subclassed: the module needs torch at import
    import torch.distributed as dist
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
    from torch.distributed.checkpoint.planner import LoadPlan, SavePlan
except ImportError as e:
    raise missing_extra(e, "torch", "workbench.CheckedLoadPlanner") from None
from ..formatting import ranks_text
from ..planning import plan_load, plan_save
from .convert import from_torch
from .held import layout_of_entries, rank_entries

__all__ = [
    "CheckedLoadPlanner",
    "CheckedSavePlanner",
    "CheckedLoadError",
    "CheckedSaveError",
    "CheckedPlanWarning",
    "checked_error",
]

_KEY = "workbench.checked"  # our entry in planner_data (a dict, so others' entries survive)
_ON_SILENT = ("raise", "warn")


class _CheckedError(WorkbenchError):
    """The house message, then one line per problem (``details``). DCP pickles it to every rank
    (scatter_object): `WorkbenchError` rebuilds itself from its parts."""

    def __str__(self) -> str:
        details = self.facts.get("details")
        return super().__str__() + (f"\n{details}" if details else "")


class CheckedLoadError(_CheckedError):
    """``dcp.load`` would fail or load wrong values; found before any data was read.
    ``problems``: the workbench's `Problem` records; ``ranks`` / ``fqns``: every rank and key
    concerned."""


class CheckedSaveError(_CheckedError):
    """``dcp.save`` would lose data or write a checkpoint that cannot be loaded as saved; found
    before anything was written. ``problems`` / ``ranks`` / ``fqns`` as `CheckedLoadError`."""


class CheckedPlanWarning(UserWarning):
    """A ``silent`` problem found by a checked planner with ``on_silent="warn"``."""


def checked_error(exc: BaseException) -> WorkbenchError | None:
    """The `CheckedLoadError` / `CheckedSaveError` inside DCP's ``CheckpointException`` (or
    ``exc`` itself), else None."""
    if isinstance(exc, (CheckedLoadError, CheckedSaveError)):
        return exc
    for failure in (getattr(exc, "failures", None) or {}).values():
        inner = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(inner, (CheckedLoadError, CheckedSaveError)):
            return inner
    return None


def _check_on_silent(on_silent: str) -> str:
    if on_silent not in _ON_SILENT:
        raise WorkbenchError(
            None,
            f"on_silent {on_silent!r}",
            "'raise' or 'warn'",
            "Pass on_silent='raise' to stop on silent problems, 'warn' to be told and go on.",
        )
    return on_silent


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _with_data(plan, data):
    """``plan`` with our entry added to its ``planner_data``: into a copy of the dict that is
    there (``DefaultSavePlanner``'s flatten mappings stay visible to anyone reading them), or into
    a new dict beside None or any other value, which `_take_data` puts back exactly."""
    old = plan.planner_data
    merged = dict(old) if isinstance(old, dict) else {}
    was_dict = isinstance(old, dict)
    merged[_KEY] = (data, was_dict, None if was_dict else old)
    return dataclasses.replace(plan, planner_data=merged)


def _take_data(plan):
    """(our entry or None, ``plan`` with the ``planner_data`` it had before `_with_data`)."""
    new = plan.planner_data
    if not isinstance(new, dict) or _KEY not in new:
        return None, plan
    data, was_dict, old = new[_KEY]
    restored = {k: v for k, v in new.items() if k != _KEY} if was_dict else old
    return data, dataclasses.replace(plan, planner_data=restored)


def _world_layouts(views: dict, world_size: int) -> dict:
    """``{fqn: Layout}`` of the whole job from every rank's entries (keys in rank order)."""
    by_fqn: dict[str, list] = {}
    for rank in sorted(views):
        for e in views[rank]:
            by_fqn.setdefault(e.fqn, []).append((rank, e))
    out = {}
    for fqn, held in by_fqn.items():
        entries = [e for _, e in held]
        ranks = [r for r, _ in held]
        if entries[0].kind == "dtensor":
            in_mesh = set()
            for e in entries:
                in_mesh.update(e.mesh_ranks)
            ranks = [r for r in ranks if r in in_mesh]  # outside its mesh a rank plans nothing
        out[fqn] = layout_of_entries(fqn, entries, ranks, world_size, {})
    return out


def _problem_lines(problems) -> str:
    return "\n".join(
        f"  [{p.severity}] {p.kind} {p.fqn} on {ranks_text(p.ranks)}: {p.message} {p.fix}"
        for p in problems
    )


def _raise(cls, problems, what: str, expectation: str, fix: str):
    ranks = sorted({r for p in problems for r in p.ranks})
    fqns = list(dict.fromkeys(p.fqn for p in problems))
    raise cls(
        fqns[0] if fqns else None,
        f"{what}: {len(problems)} problem(s) on {ranks_text(ranks)} in "
        f"{len(fqns)} key(s) ({', '.join(fqns[:4])}{', ...' if len(fqns) > 4 else ''})",
        expectation,
        fix,
        details=_problem_lines(problems),
        problems=tuple(problems),
        ranks=tuple(ranks),
        fqns=tuple(fqns),
    )


def _check_unexplained(cls, side: str, data_by_rank) -> None:
    """Raise once when a rank's torch local plan raised and the workbench found no error."""
    torch_errors = {r: d["error"] for r, d in data_by_rank.items() if d.get("error")}
    if torch_errors:
        rank = min(torch_errors)
        raise cls(
            None,
            f"torch's local {side} plan raised on {ranks_text(torch_errors)} "
            f"(first, rank {rank}: {torch_errors[rank]})",
            "the workbench's diagnosis explains every torch error",
            "Please report this checkpoint and state dict to the workbench.",
            ranks=tuple(sorted(torch_errors)),
        )


def _warn_text(problems, what: str) -> str:
    return f"{what}: {len(problems)} silent problem(s)\n{_problem_lines(problems)}"


def _finish_warnings(data) -> None:
    if isinstance(data, dict) and data.get("warn"):
        warnings.warn(data["warn"], CheckedPlanWarning, stacklevel=3)


def _local_plan(planner, make_plan, empty, digests: bool):
    """``make_plan()`` (torch's local plan) with this rank's entries in its ``planner_data``; when
    torch raises, an empty plan carrying the error, for the coordinator to report with the rest."""
    rank, _ = _rank_and_world()
    try:
        plan, error = make_plan(), None
    except Exception as e:  # reported by the coordinator with every rank's problems
        plan, error = empty, f"{type(e).__name__}: {e}"
    entries = rank_entries(planner.state_dict, digests=digests)
    return _with_data(plan, {"rank": rank, "entries": entries, "error": error})


def _the_job(cls, plans):
    """(every rank's data, the plans as torch made them, ``{fqn: Layout}`` of the whole job)."""
    datas, plans = zip(*(_take_data(p) for p in plans))
    data_by_rank = {d["rank"]: d for d in datas if d is not None}
    _, ws = _rank_and_world()
    ws = max(ws, len(plans), max(data_by_rank, default=-1) + 1)
    try:
        layouts = _world_layouts({r: d["entries"] for r, d in data_by_rank.items()}, ws)
    except WorkbenchError as e:  # ranks disagree on an entry's shape, dtype or mesh
        raise cls(
            e.fqn,
            f"the ranks' state dicts do not describe one job: {e.what}",
            e.expectation,
            e.fix,
        ) from None
    return data_by_rank, list(plans), layouts


def _judge(cls, problems, on_silent: str, side: str, what: str, expectation: str) -> str | None:
    """Raise `cls` on errors (and silent problems with ``on_silent="raise"``); the warning text
    for silent problems otherwise (None when there are none)."""
    errors = [p for p in problems if p.severity == "error"]
    silent = [p for p in problems if p.severity == "silent"]
    if errors or (silent and on_silent == "raise"):
        _raise(
            cls,
            errors + (silent if on_silent == "raise" else []),
            what,
            expectation,
            f"Fix the {side}'s state dict or checkpoint as each line says; on_silent='warn' goes "
            "on despite silent problems.",
        )
    return _warn_text(silent, what) if silent else None


class CheckedLoadPlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` that checks the whole job's load before any data is read:
    ``dcp.load(sd, checkpoint_id=path, planner=CheckedLoadPlanner())``. Arguments: those of
    ``DefaultLoadPlanner`` (``allow_partial_load``, ...) and ``on_silent``: ``"raise"``
    (default) or ``"warn"`` for problems torch does not raise on. Raises `CheckedLoadError`
    (inside DCP's ``CheckpointException``: `checked_error`)."""

    def __init__(self, *args, on_silent: str = "raise", **kwargs):
        super().__init__(*args, **kwargs)
        self.on_silent = _check_on_silent(on_silent)

    def create_local_plan(self):
        return _local_plan(self, super().create_local_plan, LoadPlan([]), digests=False)

    def create_global_plan(self, global_plan):
        data_by_rank, plans, layouts = _the_job(CheckedLoadError, global_plan)
        warn = None
        if layouts:
            res = plan_load(
                from_torch(self.metadata), layouts, allow_partial_load=self.allow_partial_load
            )
            warn = _judge(
                CheckedLoadError,
                res.problems,
                self.on_silent,
                "load",
                "dcp.load would fail or load wrong values (checked before reading)",
                "a load torch completes with the saved values in every element",
            )
        _check_unexplained(CheckedLoadError, "load", data_by_rank)
        plans = super().create_global_plan(plans)
        return [_with_data(p, {"warn": warn}) if warn else p for p in plans]

    def finish_plan(self, new_plan):
        data, plan = _take_data(new_plan)
        _finish_warnings(data)
        return super().finish_plan(plan)


class CheckedSavePlanner(DefaultSavePlanner):
    """``DefaultSavePlanner`` that checks the whole job's save before anything is written:
    ``dcp.save(sd, checkpoint_id=path, planner=CheckedSavePlanner())``. Arguments: those of
    ``DefaultSavePlanner``, ``on_silent`` (``"raise"`` / ``"warn"``) and ``storage`` (``"fs"``,
    or ``"hf"`` with ``HuggingFaceStorageWriter``). Raises `CheckedSaveError`."""

    def __init__(self, *args, on_silent: str = "raise", storage: str = "fs", **kwargs):
        super().__init__(*args, **kwargs)
        self.on_silent = _check_on_silent(on_silent)
        self.storage = storage

    def create_local_plan(self):
        # digests: per-rank values of plain tensors and bytes entries are what dedup loses
        return _local_plan(self, super().create_local_plan, SavePlan([]), digests=True)

    def create_global_plan(self, all_plans):
        data_by_rank, plans, layouts = _the_job(CheckedSaveError, all_plans)
        warn = None
        if layouts:
            res = plan_save(layouts, self.dedup_save_to_lowest_rank, storage=self.storage)
            warn = _judge(
                CheckedSaveError,
                find_save_problems(res),
                self.on_silent,
                "save",
                "dcp.save would fail, lose data or write what cannot be loaded as saved "
                "(checked before writing)",
                "every rank's data saved once and readable",
            )
        _check_unexplained(CheckedSaveError, "save", data_by_rank)
        out = super().create_global_plan(plans)
        if warn:
            plans_out, md = out
            return [_with_data(p, {"warn": warn}) for p in plans_out], md
        return out

    def finish_plan(self, new_plan):
        data, plan = _take_data(new_plan)
        _finish_warnings(data)
        return super().finish_plan(plan)
