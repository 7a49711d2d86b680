"""torch.distributed.checkpoint, mirrored: its records and planner helpers under torch's own
names (minus the leading underscore), split into modules as torch splits them.

=========================== ======================================================
``workbench.dcp.metadata``   ``torch.distributed.checkpoint.metadata`` (+ ``_StorageInfo``)
``workbench.dcp.planner``    ``torch.distributed.checkpoint.planner``'s records
``workbench.dcp.planner_helpers`` ``planner_helpers.py`` and ``resharding.py``
``workbench.dcp.default_planner`` ``default_planner.py``, ``_dedup_save_plans.py``,
                             ``_nested_dict.py``
=========================== ======================================================

Everything here takes the workbench's records and, where torch's would, torch's own objects, and
gives torch 2.13's results in torch's order (other versions through ``torch_version=`` on the
whole-plan functions of ``workbench.plan_save`` / ``plan_load``). The code lives in
``workbench.records`` and ``workbench.planner_helpers``; these modules are the map a reader of
torch's sources navigates by. No torch import.
"""

from __future__ import annotations

from . import default_planner, metadata, planner, planner_helpers
from .default_planner import *  # noqa: F403
from .metadata import *  # noqa: F403
from .planner import *  # noqa: F403
from .planner_helpers import *  # noqa: F403

__all__ = [
    *metadata.__all__,
    *planner.__all__,
    *planner_helpers.__all__,
    *default_planner.__all__,
]
