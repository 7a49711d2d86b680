"""The one way in: whatever a user hands over becomes the workbench's records, here and once.

A checkpoint directory, torch's own ``Metadata`` / plans / items, a save result
(``plan_save(...)``), a `Checkpoint`, real Tensors / DTensors / ShardedTensors or a torch state
dict: the public entry points and the faces (widgets, CLI, report) pass them through these
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
from .sharding import Layout

__all__ = [
    "is_torch_object",
    "as_record",
    "torch_tensor_kind",
    "as_value",
    "as_metadata",
    "as_layout",
    "as_layouts",
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


def as_layouts(source) -> dict[str, Layout]:
    """``{fqn: Layout}`` from a dict of layouts (returned as is) or a torch state dict of real
    Tensors / DTensors / ShardedTensors (each described for every rank)."""
    if not isinstance(source, Mapping):
        raise PlanError(
            "<target>",
            f"target is a {type(source).__name__}",
            "a dict {fqn: Layout} or a state dict of real tensors",
            "Build layouts with dtensor_layout / tensor_layout, or pass model.state_dict().",
        )
    return {fqn: as_layout(value, fqn) for fqn, value in source.items()}
