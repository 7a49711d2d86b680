"""``torch.distributed.checkpoint.planner_helpers`` (and the two helpers of ``resharding.py`` it
calls), mirrored: same names minus the underscore, same arguments, same results in the same
order. The code is in ``workbench.planner_helpers``."""

from __future__ import annotations

from ..planner_helpers import (
    check_shard_metadata_pair_overlap,
    chunk_for_shard,
    compare_save_plans,
    contains_usable_plan,
    create_chunk_from_dtensor,
    create_chunk_from_tensor,
    create_chunk_list,
    create_default_metadata_only_plan,
    create_read_item_for_byteio,
    create_read_item_for_tensor,
    create_read_items,
    create_read_items_for_chunk_list,
    create_write_item_for_bytesio,
    create_write_item_for_shard,
    create_write_item_for_tensor,
    create_write_items,
    create_write_items_for_dtensor,
    init_state_dict,
    iterate_state_dict,
    merge_delta_local_plans,
    sharded_tensor_metadata,
    shards_get_overlap_region_wrt_saved_tensor,
)

__all__ = [
    "compare_save_plans",
    "contains_usable_plan",
    "merge_delta_local_plans",
    "create_chunk_from_tensor",
    "chunk_for_shard",
    "sharded_tensor_metadata",
    "create_chunk_from_dtensor",
    "create_write_items_for_dtensor",
    "create_write_item_for_shard",
    "create_write_item_for_tensor",
    "create_write_item_for_bytesio",
    "create_read_item_for_byteio",
    "create_read_item_for_tensor",
    "create_read_items_for_chunk_list",
    "create_default_metadata_only_plan",
    "create_write_items",
    "create_chunk_list",
    "create_read_items",
    "init_state_dict",
    "iterate_state_dict",
    # resharding.py
    "check_shard_metadata_pair_overlap",
    "shards_get_overlap_region_wrt_saved_tensor",
]
