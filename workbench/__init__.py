"""DCP Reshard Workbench: recompute, draw and diagnose how torch.distributed.checkpoint reshards a
checkpoint, for every rank at once, without a process group and without the tensors.

The top level is the user's vocabulary: plans, layouts and placements, readers, capture,
diagnosis and the errors. The rest lives in submodules, each with its own ``__all__``:
``workbench.dcp`` (torch's records and planner helpers under torch's names), ``workbench.targets``,
``workbench.models`` (presets and recipes), ``workbench.versions``, ``workbench.tables``,
``workbench.plots``, ``workbench.widgets``, ``workbench.report``, ``workbench.torch_bridge``.

``import workbench`` imports neither torch, pandas, matplotlib nor ipywidgets: every name is
resolved on first use (PEP 562), from the module whose ``__all__`` lists it
(tests/test_public_api.py checks both).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The top level: name -> the submodule whose __all__ lists it (resolved on first access).
_EXPORTS: dict[str, str] = {
    # plans
    "plan_save": "planning",
    "plan_load": "planning",
    "compare_targets": "candidates",
    "compare_versions": "version_compare",
    # layouts and placements
    "Chunk": "geometry",
    "Shard": "sharding",
    "Replicate": "sharding",
    "StridedShard": "sharding",
    "Partial": "sharding",
    "parse_placement": "sharding",
    "local_shape_and_offset": "sharding",
    "held_indices": "sharding",
    "dtensor_layout": "sharding",
    "fsdp2_tp_layout": "sharding",
    "tensor_layout": "sharding",
    "sharded_layout": "sharding",
    "bytes_layout": "sharding",
    # readers
    "load_metadata": "formats",
    "open_checkpoint": "checkpoint",
    # the user's own code as the target, and a checked dcp.load / dcp.save inside the job
    "capture": "torch_bridge.capture",
    "CheckedLoadPlanner": "torch_bridge.checked_planner",
    "CheckedSavePlanner": "torch_bridge.checked_planner",
    # diagnosis
    "Problem": "diagnosis",
    "find_problems": "diagnosis",
    "find_save_problems": "diagnosis",
    "find_checkpoint_problems": "diagnosis",
    "find_file_problems": "checkpoint",
    "explain": "explanations",
    # errors
    "WorkbenchError": "errors",
    "PlanError": "errors",
    "LayoutError": "errors",
    "PlacementError": "errors",
    "ChunkError": "errors",
    "DtypeError": "errors",
    "MetadataError": "errors",
    "UnsafeCheckpointError": "errors",
    "CaptureError": "errors",
}

__all__ = list(_EXPORTS)

# Names that were at the top level before it was cut to the vocabulary above. They still resolve
# (DESIGN.md's acceptance interface calls e.g. ``workbench.create_read_items_for_chunk_list``), but
# are not in ``__all__`` or ``dir()``: new code imports them from their module. Every name of
# ``workbench.dcp.__all__`` resolves the same way (looked up there on first access).
_MOVED: dict[str, str] = {
    **{
        n: "sharding"
        for n in (
            "Layout",
            "RankValue",
            "Placement",
            "parse_placements",
            "mesh_coordinate",
            "box_matches_data",
            "chunk_holders",
        )
    },
    **{
        n: "geometry"
        for n in ("boxes_overlap", "covered_volume", "intersect", "uncovered", "volume")
    },
    **{n: "planning" for n in ("SavePlanResult", "LoadPlanResult", "ReadBlock")},
    **{n: "io_cost" for n in ("LoadIO", "load_io")},
    "TargetCost": "candidates",
    "VersionComparison": "version_compare",
    **{n: "formats.dcp_files" for n in ("file_name", "writer_of_file")},
    **{n: "diagnosis" for n in ("KINDS", "SEVERITIES", "BLOCKING")},
    "Explanation": "explanations",
    **{
        n: "versions"
        for n in (
            "SUPPORTED_TORCH_VERSIONS",
            "default_torch_version",
            "resolve_torch_version",
            "semantics",
            "TorchSemantics",
        )
    },
    "infer_writer_versions": "formats.dcp",
    **{
        n: "models"
        for n in (
            "model_state_dict",
            "apply_recipe",
            "state_dict_from_module",
            "PRESETS",
            "RECIPES",
            "SIZES",
            "TP_PLANS",
            "MESH_DIMS",
        )
    },
    **{n: "checkpoint" for n in ("Checkpoint", "SavedChunk")},
    "detect_format": "formats",
    "verify_with_torch": "torch_bridge",
    "CapturedTarget": "torch_bridge.capture",
}

_SUBMODULES = frozenset(
    {
        "candidates",
        "checkpoint",
        "cli",
        "colors",
        "dcp",
        "diagnosis",
        "errors",
        "explanations",
        "formats",
        "formatting",
        "geometry",
        "hf_plans",
        "io_cost",
        "models",
        "picture_data",
        "planner_helpers",
        "planning",
        "plots",
        "records",
        "report",
        "sharding",
        "sources",
        "tables",
        "targets",
        "torch_bridge",
        "version_compare",
        "versions",
        "widgets",
    }
)


def __getattr__(name: str):
    if name in _SUBMODULES:  # `workbench.plots` works after a plain `import workbench`
        return importlib.import_module(f".{name}", __name__)
    mod = _EXPORTS.get(name) or _MOVED.get(name)
    if mod is None and name in importlib.import_module(".dcp", __name__).__all__:
        mod = "dcp"
    if mod is None:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    if name in _EXPORTS:  # cached: the face; a moved name stays out of globals() and dir()
        globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
