"""``torch.distributed.checkpoint.default_planner``'s plan-level functions, with the two
modules it calls for them: ``_dedup_save_plans.dedup_save_plans`` and
``_nested_dict.flatten_state_dict``. Same names minus the underscore, torch 2.13's results and
message strings. The code is in ``workbench.planner_helpers`` (``flatten_state_dict``: in
``workbench.sources``, which takes state dicts in)."""

from __future__ import annotations

from ..planner_helpers import (
    check_box_bounds,
    check_box_overlap,
    create_default_global_load_plan,
    create_default_global_save_plan,
    create_default_local_load_plan,
    create_default_local_metadata,
    create_default_local_save_plan,
    dedup_save_plans,
    validate_global_plan,
)
from ..sources import flatten_state_dict

__all__ = [
    "create_default_local_load_plan",
    "create_default_global_load_plan",
    "create_default_local_save_plan",
    "create_default_global_save_plan",
    "create_default_local_metadata",
    "check_box_overlap",
    "check_box_bounds",
    "validate_global_plan",
    # _dedup_save_plans.py
    "dedup_save_plans",
    # _nested_dict.py
    "flatten_state_dict",
]
