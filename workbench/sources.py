"""The one way in: whatever a user hands over becomes the workbench's records, here and once.

A checkpoint directory, torch's own ``Metadata`` / plans / items, a save result
(``plan_save(...)``), a `Checkpoint`, real Tensors / DTensors / ShardedTensors, or what a user
holds -- ``model.state_dict()``, the nested dict given to ``dcp.save`` / ``dcp.load``, a module,
``(model, optimizer)`` (`held_layouts`): the public entry points and the faces (widgets, CLI, report) pass them through these
functions, and everything below works on records only.

Imports the core records and the no-torch readers of ``formats``. The torch bridge's converters
are imported inside functions, and only when the object handed over was made by torch: a caller
holding such an object has imported torch already, so nothing heavy is loaded for anyone else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from .errors import LayoutError, MetadataError, PlanError
from .formats import load_metadata
from .records import Metadata
from .sharding import Layout, RankValue, bytes_layout

__all__ = [
    "is_torch_object",
    "as_record",
    "torch_tensor_kind",
    "as_value",
    "as_metadata",
    "as_layout",
    "flatten_state_dict",
    "held_layouts",
]


def is_torch_object(obj) -> bool:
    """Whether torch made ``obj``; torch cannot have made anything when it is not imported, so this
    never imports it."""
    return "torch" in sys.modules and type(obj).__module__.partition(".")[0] == "torch"


def as_record(obj):
    """A workbench record from a torch record (lists, tuples, dicts element-wise); workbench
    records and plain values pass through."""
    if is_torch_object(obj) or (
        isinstance(obj, (list, tuple, dict)) and "torch" in sys.modules and _holds_torch(obj)
    ):
        from .torch_bridge.convert import from_torch  # torch objects only: torch is loaded

        return from_torch(obj)
    return obj


def _holds_torch(obj) -> bool:
    values = obj.values() if isinstance(obj, dict) else obj
    return any(is_torch_object(v) for v in values)


def torch_tensor_kind(obj) -> str | None:
    """``"dtensor"``, ``"sharded"`` or ``"tensor"`` for a real DTensor, ShardedTensor or plain
    Tensor, else None (a `RankValue` carries its ``kind`` itself)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(obj, torch.Tensor):
        return None
    # a real tensor was handed over: torch is loaded, these imports cost nothing more
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        return "dtensor"
    if isinstance(obj, ShardedTensor):
        return "sharded"
    return "tensor"


def as_value(obj):
    """One rank's state-dict value: a real Tensor / DTensor / ShardedTensor becomes a
    `RankValue`; a bare `Layout` is refused (it is every rank's, not one rank's); anything
    else unchanged."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        from .torch_bridge.convert import local_tensor_from_torch  # a real tensor: torch is loaded

        return local_tensor_from_torch(obj)
    if isinstance(obj, Layout):
        raise PlanError(
            None,
            f"a bare Layout ({obj.describe()}) is not one rank's value",
            "RankValue(layout, rank) in a one-rank state dict",
            "Wrap it: RankValue(layout, rank), or plan every rank with workbench.plan_save.",
        )
    return obj


def as_metadata(source) -> Metadata:
    """The `Metadata` of a checkpoint directory (read by the allow-list reader, no code run), of a
    save result or `Checkpoint` (their ``.metadata``), of torch's own ``Metadata``, or
    ``source`` itself."""
    if isinstance(source, (str, os.PathLike)):
        return load_metadata(source)
    md = as_record(getattr(source, "metadata", source))
    if not isinstance(md, Metadata):
        raise MetadataError(
            None,
            f"{type(source).__name__} is not checkpoint metadata",
            "a checkpoint directory, a Metadata, a save result or a Checkpoint",
            "Read the checkpoint with workbench.load_metadata(path) or plan it with plan_save(...).",
        )
    return md


def as_layout(obj, fqn: str | None = None) -> Layout:
    """A `Layout` as is; a real Tensor / DTensor / ShardedTensor described for every rank."""
    if isinstance(obj, Layout):
        return obj
    if is_torch_object(obj):
        from .torch_bridge.convert import layout_from_torch  # a real tensor: torch is loaded

        return layout_from_torch(obj)
    raise LayoutError(
        fqn,
        f"{type(obj).__name__} is not a layout",
        "a workbench Layout or a torch Tensor / DTensor / ShardedTensor",
        "Build one with dtensor_layout / tensor_layout / sharded_layout / bytes_layout.",
        value_type=type(obj),
    )


def _is_tensor_leaf(value) -> bool:
    # a Layout / RankValue stands where a tensor would be (bytes ones where a value would)
    if isinstance(value, (Layout, RankValue)):
        return value.kind != "bytes"
    return torch_tensor_kind(value) is not None


def flatten_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """torch's ``_nested_dict.flatten_state_dict`` (2.4+ traversal, ``_traverse.py``): nested
    mapping keys joined with ``"."``; a list is entered (positions ``.0``, ``.1`` ...) only when it
    holds a tensor or a non-terminal container, else it is one leaf; tuples are always leaves.
    Returns ``(flattened, mappings)``; a duplicate key raises torch's ``duplicated flatten key``.
    (Here, not in ``planner_helpers``, which re-exports it: taking a state dict in needs it.)"""
    flattened: dict = {}
    mappings: dict = {}

    def is_terminal(value) -> bool:
        if isinstance(value, Mapping):
            return False
        if not isinstance(value, list):
            return True
        for entry in value:
            if isinstance(entry, (Mapping, list)) and not is_terminal(entry):
                return False
            if _is_tensor_leaf(entry):
                return False
        return True

    def visit(path, value):
        if isinstance(value, Mapping):
            for k, v in value.items():
                visit(path + (str(k),), v)
        elif is_terminal(value):
            new_fqn = ".".join(map(str, path))
            if new_fqn in flattened:
                text = f"duplicated flatten key {new_fqn}"
                raise PlanError(
                    new_fqn,
                    text,
                    "unique flattened keys",
                    "Rename one of the entries whose dotted paths collide.",
                    torch_message=text,
                    torch_type="ValueError",
                )
            flattened[new_fqn] = value
            mappings[new_fqn] = path
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(path + (i,), v)

    for key, value in state_dict.items():
        visit((str(key),), value)
    return flattened, mappings


def _is_stateful(value) -> bool:
    """torch's ``isinstance(value, Stateful)``: the runtime-checkable protocol asks for a
    ``state_dict`` and a ``load_state_dict`` attribute, nothing more."""
    return hasattr(value, "state_dict") and hasattr(value, "load_state_dict")


def _held_error(held, what: str) -> PlanError:
    return PlanError(
        "<target>",
        what,
        "a dict {fqn: Layout}, a (nested) state dict, a module, (model, optimizer) or a list of "
        "pipeline-stage modules",
        "Pass model.state_dict(), the dict you give dcp.save / dcp.load, or layouts built with "
        "dtensor_layout / tensor_layout.",
        value_type=type(held),
    )


def held_layouts(
    held, *, world_size: int | None = None, for_load: bool = False
) -> tuple[dict[str, Layout], int]:
    """``({fqn: Layout}, world size)`` for anything a user holds, every rank described:

    - a flat dict ``{fqn: Layout}``: as is (its one world size, checked);
    - ``model.state_dict()`` or the nested dict given to ``dcp.save`` / ``dcp.load`` (real
      Tensors / DTensors / ShardedTensors, non-tensor values, Layouts), seen as DCP sees it:
      top-level ``Stateful`` values replaced by their ``state_dict()``, with ``for_load`` the
      top-level keys sorted (``dcp.load`` sorts them), flattened by `flatten_state_dict`
      (torch's ``_nested_dict.flatten_state_dict``: ``"model.layers.0.w"``,
      ``"optim.param_groups.0.lr"``);
    - a module (``get_model_state_dict``), ``(model, optimizer)`` (``get_state_dict``, as
      ``{"model": ..., "optim": ...}``, the way `capture` reads a build) or a list of
      pipeline-stage modules.

    DTensors give their mesh (and FSDP2's real rows); a plain tensor or a non-tensor value is held
    by every rank of the world. The world size: ``world_size``, else the Layouts', else the
    initialised process group's (a state dict built under the fake group as rank r), else the
    DTensors' meshes; one `PlanError` when a plain tensor or value needs it and nothing says."""
    if world_size is not None and (
        isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1
    ):
        raise PlanError(
            None, f"world_size {world_size!r}", "an int >= 1", "Pass the job's number of ranks."
        )
    if (
        isinstance(held, Mapping)
        and held
        and all(isinstance(k, str) and isinstance(v, Layout) for k, v in held.items())
        and world_size in (None, next(iter(held.values())).world_size)
    ):
        return dict(held), next(iter(held.values())).world_size
    modules: list = []
    if "torch" in sys.modules:
        from .torch_bridge.held import state_dict_of  # torch is loaded: nothing more to load

        got = state_dict_of(held)
        if got is None:
            raise _held_error(held, f"target is a {type(held).__name__}")
        sd, modules = got
    elif isinstance(held, Mapping):
        sd = held
    else:
        raise _held_error(held, f"target is a {type(held).__name__}")
    if not sd:
        raise _held_error(held, "the state dict is empty")
    keys = sorted(sd) if for_load else list(sd)
    sd = {k: sd[k].state_dict() if _is_stateful(sd[k]) else sd[k] for k in keys}
    if "torch" in sys.modules:
        # torch objects only: torch is loaded
        from .torch_bridge.held import flatten_sharded_tensors, rank_layouts

        flat, _ = flatten_state_dict(flatten_sharded_tensors(sd))
        return rank_layouts(flat, modules, world_size)
    flat, _ = flatten_state_dict(sd)
    sizes = {v.world_size for v in flat.values() if isinstance(v, Layout)}
    ws = world_size or (min(sizes) if sizes else None)
    if ws is None or sizes - {ws}:
        raise PlanError(
            None,
            f"{len(flat)} value(s) ({', '.join(list(flat)[:3])}) with layouts of world sizes "
            f"{sorted(sizes)}",
            "one world size, from world_size= or the layouts",
            "Pass world_size=N (the job's number of ranks) and build every layout for it.",
        )
    return {k: v if isinstance(v, Layout) else bytes_layout(ws) for k, v in flat.items()}, ws
