"""compare_targets: the I/O of candidate target layouts, checked against the read items."""

import math

import pytest

import workbench as wb


def _brute(metadata, layouts):
    """Totals recomputed from the materialised ReadItems (torch's FileSystemReader reads the
    whole stored item for every read item)."""
    res = wb.plan_load(metadata, layouts)
    per_rank = []
    for plan in res.plans:
        needed = read = 0
        files = set()
        for it in plan.items:
            md = metadata.state_dict_metadata[it.dest_index.fqn]
            es = md.properties.element_size
            needed += math.prod(it.lengths) * es
            saved = md.chunks[it.storage_index.index]
            read += saved.volume * es
            files.add(metadata.storage_data[it.storage_index].relative_path)
        per_rank.append((needed, read, len(plan.items), len(files)))
    return per_rank


def test_costs_match_the_read_items():
    save = wb.plan_save(
        {
            "w": wb.dtensor_layout((16, 12), (8,), "S(0)"),
            "b": wb.dtensor_layout((12,), (8,), "S(0)"),
        }
    )
    targets = {
        "fsdp4": {
            "w": wb.dtensor_layout((16, 12), (4,), "S(0)"),
            "b": wb.dtensor_layout((12,), (4,), "S(0)"),
        },
        "tp 2x2": {
            "w": wb.dtensor_layout((16, 12), (2, 2), "S(0), S(1)"),
            "b": wb.dtensor_layout((12,), (2, 2), "R, S(0)"),
        },
        "cols": {
            "w": wb.dtensor_layout((16, 12), (4,), "S(1)"),
            "b": wb.dtensor_layout((12,), (4,), "R"),
        },
    }
    costs = wb.compare_targets(save.metadata, targets, progress=False)
    assert [c.name for c in costs] == list(targets)
    for cost, layouts in zip(costs, targets.values()):
        brute = _brute(save.metadata, layouts)
        assert cost.bytes_needed == sum(b[0] for b in brute)
        assert cost.bytes_read == sum(b[1] for b in brute)
        assert cost.reads == sum(b[2] for b in brute)
        assert cost.max_rank_bytes_read == max(b[1] for b in brute)
        assert cost.max_rank_reads == max(b[2] for b in brute)
        assert cost.max_rank_files == max(b[3] for b in brute)
        assert cost.failures == 0
    # a stored item is read whole: row halves of 2-row chunks read 2x, column quarters 4x (on w)
    by = {c.name: c for c in costs}
    assert by["cols"].amplification > by["tp 2x2"].amplification > by["fsdp4"].amplification


def test_failures_are_counted_and_bad_targets_refused():
    save = wb.plan_save({"w": wb.dtensor_layout((8, 4), (2,), "S(0)")})
    costs = wb.compare_targets(
        save.metadata, {"wrong": {"w": wb.dtensor_layout((8, 5), (2,), "S(0)")}}
    )
    assert costs[0].failures == 1 and costs[0].reads == 0
    with pytest.raises(wb.WorkbenchError, match="targets"):
        wb.compare_targets(save.metadata, {})


def test_targets_table_lists_the_costs_in_order():
    import pandas as pd

    from workbench.tables import targets_table

    save = wb.plan_save({"w": wb.dtensor_layout((8, 4), (4,), "S(0)")})
    costs = wb.compare_targets(
        save.metadata,
        {
            "rows": {"w": wb.dtensor_layout((8, 4), (2,), "S(0)")},
            "cols": {"w": wb.dtensor_layout((8, 4), (2,), "S(1)")},
        },
    )
    # rows: each rank reads 2 whole 2x4 chunks (64 B needed = read); cols: each rank needs 8x2
    # (64 B) but reads all 4 chunks whole (128 B)
    expected = pd.DataFrame(
        {
            "target": pd.Series(["rows", "cols"], dtype="str"),
            "world_size": pd.Series([2, 2], dtype="int64"),
            "reads": pd.Series([4, 8], dtype="int64"),
            "bytes_needed": pd.Series([128, 128], dtype="int64"),
            "bytes_read": pd.Series([128, 256], dtype="int64"),
            "amplification": pd.Series([1.0, 2.0], dtype="float64"),
            "max_rank_bytes_read": pd.Series([64, 128], dtype="int64"),
            "max_rank_reads": pd.Series([2, 4], dtype="int64"),
            "max_rank_files": pd.Series([2, 4], dtype="int64"),
            "failures": pd.Series([0, 0], dtype="int64"),
        }
    )
    pd.testing.assert_frame_equal(targets_table(costs), expected)
