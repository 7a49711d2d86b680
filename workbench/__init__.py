"""DCP Reshard Workbench: recompute, draw and diagnose how torch.distributed.checkpoint (2.4-2.14)
reshards a checkpoint, for every rank at once, without a process group and without the tensors.

``import workbench`` imports neither torch, matplotlib nor ipywidgets. Names of the later layers
are resolved lazily (PEP 562) so that the import stays cheap; pictures, tables and widgets live in
the submodules ``workbench.plots``, ``workbench.tables`` and ``workbench.widgets``.
"""

from __future__ import annotations

import importlib

from .errors import (
    CaptureError,
    ChunkError,
    DtypeError,
    LayoutError,
    MetadataError,
    PlacementError,
    PlanError,
    UnsafeCheckpointError,
    WorkbenchError,
)
from .geometry import Chunk, boxes_overlap, covered_volume, intersect, uncovered, volume
from .records import (
    BytesIOWriteData,
    BytesStorageMetadata,
    ChunkStorageMetadata,
    LoadItemType,
    LoadPlan,
    Metadata,
    MetadataIndex,
    ReadItem,
    SavePlan,
    StorageInfo,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from .sharding import (
    Layout,
    RankValue,
    Partial,
    Placement,
    Replicate,
    Shard,
    StridedShard,
    box_matches_data,
    bytes_layout,
    dtensor_layout,
    fsdp2_tp_layout,
    held_indices,
    local_shape_and_offset,
    mesh_coordinate,
    parse_placement,
    parse_placements,
    sharded_layout,
    tensor_layout,
)

__version__ = "0.1.0"

# name -> submodule, imported on first access
_LAZY = {
    # planner_helpers.py: torch's planner helpers, mirrored
    **{
        n: "planner_helpers"
        for n in (
            "create_read_items_for_chunk_list",
            "create_chunk_list",
            "create_chunk_from_tensor",
            "create_chunk_from_dtensor",
            "chunk_for_shard",
            "create_write_items",
            "create_write_item_for_tensor",
            "create_write_item_for_shard",
            "create_write_item_for_bytesio",
            "create_read_item_for_tensor",
            "create_read_item_for_byteio",
            "create_read_items",
            "create_default_metadata_only_plan",
            "init_state_dict",
            "iterate_state_dict",
            "compare_save_plans",
            "merge_delta_local_plans",
            "contains_usable_plan",
            "dedup_save_plans",
            "create_default_global_save_plan",
            "validate_global_plan",
            "create_default_local_save_plan",
            "create_default_local_load_plan",
            "flatten_state_dict",
            "create_default_global_load_plan",
            "create_default_local_metadata",
        )
    },
    # planning.py: whole state dicts for every rank
    **{
        n: "planning"
        for n in ("plan_save", "plan_load", "SavePlanResult", "LoadPlanResult", "ReadBlock")
    },
    # io_cost.py, candidates.py: what a load costs, candidate targets compared
    **{n: "io_cost" for n in ("LoadIO", "load_io")},
    **{n: "candidates" for n in ("compare_targets", "TargetCost")},
    # formats/dcp_files.py: data file names
    **{n: "formats.dcp_files" for n in ("file_name", "writer_of_file")},
    # diagnosis.py, explanations.py
    **{
        n: "diagnosis"
        for n in (
            "Problem",
            "find_problems",
            "find_save_problems",
            "find_checkpoint_problems",
            "KINDS",
            "SEVERITIES",
            "BLOCKING",
        )
    },
    **{n: "explanations" for n in ("explain", "Explanation")},
    # versions.py, version_compare.py: which torch's DCP semantics, and what an upgrade changes
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
    **{n: "version_compare" for n in ("compare_versions", "VersionComparison")},
    "infer_writer_versions": "formats.dcp",
    "chunk_holders": "sharding",
    # models.py: presets and parallelism recipes
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
    # checkpoint.py: a real checkpoint directory (no torch)
    **{
        n: "checkpoint"
        for n in ("open_checkpoint", "Checkpoint", "SavedChunk", "find_file_problems")
    },
    # formats: every checkpoint format's reader (no torch)
    "load_metadata": "formats",
    "detect_format": "formats",
    # torch_bridge (imports torch inside functions only)
    "verify_with_torch": "torch_bridge",
    "capture": "torch_bridge.capture",
    "CapturedTarget": "torch_bridge.capture",
}

__all__ = [
    "WorkbenchError",
    "CaptureError",
    "ChunkError",
    "DtypeError",
    "LayoutError",
    "MetadataError",
    "PlacementError",
    "PlanError",
    "UnsafeCheckpointError",
    "Chunk",
    "boxes_overlap",
    "covered_volume",
    "intersect",
    "uncovered",
    "volume",
    "BytesIOWriteData",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "LoadItemType",
    "LoadPlan",
    "Metadata",
    "MetadataIndex",
    "ReadItem",
    "SavePlan",
    "StorageInfo",
    "StorageMeta",
    "TensorProperties",
    "TensorStorageMetadata",
    "TensorWriteData",
    "WriteItem",
    "WriteItemType",
    "Layout",
    "RankValue",
    "Partial",
    "Placement",
    "Replicate",
    "Shard",
    "StridedShard",
    "box_matches_data",
    "bytes_layout",
    "dtensor_layout",
    "fsdp2_tp_layout",
    "held_indices",
    "local_shape_and_offset",
    "mesh_coordinate",
    "parse_placement",
    "parse_placements",
    "sharded_layout",
    "tensor_layout",
    *_LAZY,
]


_SUBMODULES = frozenset(
    {
        "plots",
        "tables",
        "widgets",
        "colors",
        "torch_bridge",
        "cli",
        "report",
        "models",
        "planning",
        "planner_helpers",
        "diagnosis",
        "checkpoint",
        "formats",
        "geometry",
        "sources",
        "explanations",
        "io_cost",
        "candidates",
        "formatting",
        "picture_data",
        "hf_plans",
    }
)


def __getattr__(name: str):
    if name in _SUBMODULES:  # `workbench.plots` works after a plain `import workbench`
        return importlib.import_module(f".{name}", __name__)
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
