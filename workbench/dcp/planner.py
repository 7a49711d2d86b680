"""``torch.distributed.checkpoint.planner``'s records: write / read items and the per-rank
plans. The code is in ``workbench.records``; the planners themselves are the whole-plan
functions ``workbench.plan_save`` / ``plan_load`` (every rank at once)."""

from __future__ import annotations

from ..records import (
    BytesIOWriteData,
    LoadItemType,
    LoadPlan,
    ReadItem,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)

__all__ = [
    "WriteItemType",
    "LoadItemType",
    "BytesIOWriteData",
    "TensorWriteData",
    "WriteItem",
    "ReadItem",
    "SavePlan",
    "LoadPlan",
]
