"""torch's own ``DefaultSavePlanner`` / ``DefaultLoadPlanner`` run for every rank in one process,
under torch's ``fake`` process group, on meta-device DTensors built from workbench layouts; and
`verify_with_torch`, which compares `plan_save` / `plan_load` with them item by item.

The fake process group (``torch.testing._internal.distributed.fake_pg``) lets each rank be
simulated in turn: rank r is initialised with ``FakeStore``, its state dict is built (DTensors
with ``DTensor.from_local`` on the meta device, so no tensor memory is used for planning saves),
its planner makes its local plan, and the group is destroyed. The global save step (dedup,
``create_default_global_save_plan``, ``_validate_global_plan``) then runs on all local plans as
the coordinator would. Lazy imports: torch is imported inside functions only.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import PlanError
from ..records import Metadata
from ..sharding import Layout
from ..versions import default_torch_version, require_torch
from .materialize import Meshes, exception_text, torch_state_dict

__all__ = [
    "TorchSavePlans",
    "TorchLoadPlans",
    "Verification",
    "torch_save_plans",
    "torch_load_plans",
    "verify_with_torch",
]


@dataclass(frozen=True)
class TorchSavePlans:
    """torch's save planning for every rank, as workbench records: ``local_plans[r]`` (None where
    rank r raised, ``rank_errors[r]`` holds the text), ``plans`` after dedup and the global plan
    (index hints rewritten), ``metadata``, ``errors`` (``_validate_global_plan`` strings)."""

    local_plans: list
    plans: list
    metadata: Metadata | None
    errors: list[str]
    rank_errors: list[str | None]


@dataclass(frozen=True)
class TorchLoadPlans:
    """torch's ``LoadPlan`` of every rank (None where it raised; ``rank_errors[r]`` the text)."""

    plans: list
    rank_errors: list[str | None]


@dataclass(frozen=True)
class Verification:
    """Outcome of `verify_with_torch`: ``equal``, what was compared, the first difference."""

    equal: bool
    checked: list[str] = field(default_factory=list)
    difference: str | None = None

    def __bool__(self) -> bool:
        return self.equal

    def __str__(self) -> str:
        head = "equal to torch" if self.equal else f"differs from torch: {self.difference}"
        return f"{head} ({'; '.join(self.checked)})"


@contextmanager
def _fake_rank(rank: int, world_size: int):
    """Be rank ``rank`` of a ``fake`` process group of ``world_size`` for the duration."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise PlanError(
            None,
            "a process group is already initialised in this process",
            "no default process group",
            "Run torch's planners under the fake group "
            "outside a distributed job (or destroy the group first).",
        )
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        with _quiet():
            yield
    finally:
        dist.destroy_process_group()


@contextmanager
def _logged():
    """The messages ``default_planner``'s logger emits inside the block (even when quieted)."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    planner_log = logging.getLogger("torch.distributed.checkpoint.default_planner")
    handler = Keep(level=logging.WARNING)
    level, propagate = planner_log.level, planner_log.propagate
    # kept here, printed nowhere
    planner_log.setLevel(logging.WARNING)
    planner_log.propagate = False
    planner_log.addHandler(handler)
    try:
        yield messages
    finally:
        planner_log.removeHandler(handler)
        planner_log.setLevel(level)
        planner_log.propagate = propagate


@contextmanager
def _quiet():
    """torch warns about the fake group's device and logs validation failures; both expected."""
    planner_log = logging.getLogger("torch.distributed.checkpoint.default_planner")
    level = planner_log.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            planner_log.setLevel(logging.ERROR)
            yield
    finally:
        planner_log.setLevel(level)


def _world_of(layouts: Mapping[str, Layout]) -> int:
    sizes = {lay.world_size for lay in layouts.values()}
    if len(sizes) != 1:
        raise PlanError(
            None,
            f"layouts have world sizes {sorted(sizes)}",
            "one world size",
            "Build every layout with the same world_size.",
        )
    return sizes.pop()


def _ranks(ws: int, n_entries: int, desc: str, progress: bool | None):
    """range(ws), behind a tqdm bar (widget in a notebook, text in a terminal) when asked, or by
    default when torch's per-rank planning will take more than a few seconds."""
    if progress is None:
        progress = ws * n_entries > 2_000
    if not progress:
        return range(ws)
    from tqdm.auto import tqdm

    return tqdm(range(ws), desc=desc, unit="rank")


def _rank_state_dict(layouts, rank, device):

    return torch_state_dict(layouts, rank, Meshes(), empty=device)


def torch_save_plans(
    layouts: Mapping[str, Layout],
    save_to_lowest_rank: bool = False,
    *,
    progress: bool | None = None,
) -> TorchSavePlans:
    """Every rank's ``DefaultSavePlanner.create_local_plan`` under the fake process group, then
    torch's global step (``dedup_save_plans``, ``create_default_global_save_plan``, merged
    planner data, ``_validate_global_plan``) on the coordinator, as workbench records."""
    from collections import ChainMap

    require_torch("torch_save_plans (torch's planners under the fake process group)")

    from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans
    from torch.distributed.checkpoint.default_planner import (
        DefaultSavePlanner,
        _validate_global_plan,
        create_default_global_save_plan,
    )

    from .convert import from_torch

    ws = _world_of(layouts)
    local, rank_errors = [], []
    for r in _ranks(ws, len(layouts), "torch save plans", progress):
        with _fake_rank(r, ws):
            planner = DefaultSavePlanner(dedup_save_to_lowest_rank=save_to_lowest_rank)
            try:
                planner.set_up_planner(_rank_state_dict(layouts, r, "meta"), is_coordinator=r == 0)
                local.append(planner.create_local_plan())
                rank_errors.append(None)
            except Exception as e:  # e.g. the Partial ValueError of this rank
                local.append(None)
                rank_errors.append(exception_text(e))
    if any(rank_errors):
        return TorchSavePlans([from_torch(p) for p in local], [], None, [], rank_errors)
    # DefaultSavePlanner._create_global_plan, step by step so the validation strings are kept
    # a copy: torch 2.4 - 2.7's dedup_save_plans replaces the plans inside the list it is given
    global_plan, md = create_default_global_save_plan(
        dedup_save_plans(list(local), save_to_lowest_rank)
    )
    merged = dict(ChainMap(*[p.planner_data for p in global_plan]))
    md = dataclasses.replace(md, planner_data=merged)
    with _quiet(), _logged() as logged:
        errors = _validate_global_plan(global_plan, md)
    if isinstance(errors, bool):  # torch 2.4 - 2.11 return a bool and log their findings
        errors = list(logged)
    return TorchSavePlans(
        from_torch(local), from_torch(global_plan), from_torch(md), errors, rank_errors
    )


def torch_load_plans(
    metadata,
    layouts: Mapping[str, Layout],
    *,
    allow_partial_load: bool = False,
    progress: bool | None = None,
) -> TorchLoadPlans:
    """Every rank's ``DefaultLoadPlanner.create_local_plan`` against ``metadata`` (a workbench or
    torch ``Metadata``) under the fake process group, as workbench ``LoadPlan``s."""
    require_torch("torch_load_plans (torch's planners under the fake process group)")
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    from .convert import from_torch, to_torch

    ws = _world_of(layouts)
    tmd = to_torch(metadata) if isinstance(metadata, Metadata) else metadata
    plans, errors = [], []
    for r in _ranks(ws, len(layouts), "torch load plans", progress):
        with _fake_rank(r, ws):
            planner = DefaultLoadPlanner(allow_partial_load=allow_partial_load)
            try:
                # local shards on the CPU, uninitialised: set_up_planner would materialise meta
                # tensors anyway and refuses meta ShardedTensors
                planner.set_up_planner(
                    _rank_state_dict(layouts, r, "cpu"), tmd, is_coordinator=r == 0
                )
                plans.append(from_torch(planner.create_local_plan()))
                errors.append(None)
            except Exception as e:
                plans.append(None)
                errors.append(exception_text(e))
    return TorchLoadPlans(plans, errors)


# ----------------------------------------------------------------------------- comparison
def _item_key(item):
    """Everything torch's records hold, index hints included (``==`` ignores them)."""
    if hasattr(item, "dest_index"):
        return (
            item.type,
            item.dest_index,
            item.dest_index.index,
            item.dest_offsets,
            item.storage_index,
            item.storage_index.index,
            item.storage_offsets,
            item.lengths,
        )
    return (item.type, item.index, item.index.index, item.tensor_data)


def _first_item_difference(what, ours, theirs, ranks=None) -> str | None:
    """The first rank / item where two lists of per-rank plans differ (``ranks`` names them)."""
    for r, a, b in zip(ranks if ranks is not None else range(len(ours)), ours, theirs):
        for i, (x, y) in enumerate(zip(a.items, b.items)):
            if _item_key(x) != _item_key(y):
                return f"{what} rank {r} item #{i}: ours {x} vs torch {y}"
        if len(a.items) != len(b.items):
            return f"{what} rank {r}: {len(a.items)} items vs torch's {len(b.items)}"
    return None


def _tensor_md_key(md):
    return (
        type(md).__name__,
        getattr(md, "size", None),
        getattr(getattr(md, "properties", None), "dtype", None),
        tuple(getattr(md, "chunks", ())),
    )


def _first_failure(failures, fqns, rank):
    """The message torch raises on ``rank``: the first failing entry in state-dict order."""
    hits = {fqn: msg for fqn, ranks, msg in failures if rank in ranks}
    return next((hits[f] for f in fqns if f in hits), None)


def _first_error_difference(what, failures, fqns, rank_errors) -> str | None:
    """The first rank where torch raised and the workbench's ``failures`` predict otherwise
    (no error, or a message torch's text does not contain)."""
    for r, err in enumerate(rank_errors):
        want = _first_failure(failures, fqns, r)
        if (err is None) != (want is None) or (err is not None and want not in err):
            return f"{what} rank {r}: torch raised {err!r}, ours {want!r}"
    return None


def _compare_save(ours, layouts, save_to_lowest_rank, progress=None) -> str | None:
    """The first difference between ``ours`` (``plan_save(layouts, ...)``) and torch's."""
    theirs = torch_save_plans(layouts, save_to_lowest_rank, progress=progress)
    diff = _first_error_difference("save", ours.failures, list(layouts), theirs.rank_errors)
    if diff or any(theirs.rank_errors):
        return diff
    diff = _first_item_difference("local save plan", ours.local_plans, theirs.local_plans)
    diff = diff or _first_item_difference("final save plan", ours.plans, theirs.plans)
    if diff:
        return diff
    a, b = ours.metadata.state_dict_metadata, theirs.metadata.state_dict_metadata
    if list(a) != list(b):
        return f"metadata keys {list(a)} vs torch {list(b)}"
    for fqn in a:
        if _tensor_md_key(a[fqn]) != _tensor_md_key(b[fqn]):
            return f"metadata of {fqn}: ours {a[fqn]} vs torch {b[fqn]}"
    if list(ours.errors) != list(theirs.errors):
        return f"validation errors {ours.errors} vs torch {theirs.errors}"
    return None


def _compare_load(metadata, layouts, allow_partial_load, progress=None) -> str | None:
    from ..planning import plan_load

    ours = plan_load(
        metadata,
        layouts,
        allow_partial_load=allow_partial_load,
        torch_version=default_torch_version(),
    )
    theirs = torch_load_plans(
        metadata, layouts, allow_partial_load=allow_partial_load, progress=progress
    )
    diff = _first_error_difference("load", ours.failures, list(layouts), theirs.rank_errors)
    if diff:
        return diff
    ok = [r for r, e in enumerate(theirs.rank_errors) if e is None]
    return _first_item_difference(
        "load plan", [ours.plans[r] for r in ok], [theirs.plans[r] for r in ok], ok
    )


def verify_with_torch(
    layouts: Mapping[str, Layout],
    metadata=None,
    *,
    load_layouts: Mapping[str, Layout] | None = None,
    save_to_lowest_rank: bool = False,
    allow_partial_load: bool = False,
    progress: bool | None = None,
) -> Verification:
    """Compare the workbench's plans with torch's own planners under the fake process group.

    Without ``metadata``: `plan_save(layouts)` against torch's local plans, final plans, metadata
    and validation errors, then `plan_load` of ``load_layouts`` (default: ``layouts``) from the
    planned metadata. With ``metadata`` (workbench or torch `Metadata`, e.g. from
    `load_metadata`): `plan_load(metadata, layouts)` only. Items are compared with their index
    hints; torch's per-rank exceptions against the workbench's ``failures``. Known gap: a
    ShardedTensor rank without local shards cannot be built under the fake group (torch asks CUDA
    for its device), so such ranks are planned without the key on torch's side. ``progress``: tqdm
    bars over torch's per-rank planning (None: shown when it is long)."""
    from ..planning import plan_save

    checked = []
    if metadata is None:
        res = plan_save(layouts, save_to_lowest_rank, torch_version=default_torch_version())
        diff = _compare_save(res, layouts, save_to_lowest_rank, progress)
        checked.append(f"save plans of {len(layouts)} entries on {_world_of(layouts)} ranks")
        if diff:
            return Verification(False, checked, diff)
        if res.failures or res.errors:
            return Verification(True, checked)  # torch's save stops there: nothing to load
        metadata = res.metadata
        layouts = load_layouts or layouts
    diff = _compare_load(metadata, layouts, allow_partial_load, progress)
    checked.append(f"load plans of {len(layouts)} entries on {_world_of(layouts)} ranks")
    return Verification(diff is None, checked, diff)
