"""explain() on torch 2.13's own error strings: each string is produced here by calling the torch
function that raises it (or formatted from torch's own objects exactly as torch formats it), then
explained with and without metadata / target layouts."""

import pytest
import torch
from support import house_form

import workbench as wb
from workbench.explanations import Explanation, explain
from workbench.torch_bridge.convert import to_torch


def _raised(fn, *args):
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - we want torch's text whatever the type
        return f"{type(e).__name__}: {e}"
    raise AssertionError("torch did not raise")


def _torch_md(**tensors):
    import torch
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        TensorProperties,
        TensorStorageMetadata,
    )

    return Metadata(
        {
            k: TensorStorageMetadata(
                TensorProperties(torch.float32),
                torch.Size(size),
                [ChunkStorageMetadata(torch.Size([0] * len(size)), torch.Size(size))],
            )
            for k, size in tensors.items()
        }
    )


def _load_error(state_dict, md):
    from torch.distributed.checkpoint.default_planner import create_default_local_load_plan

    return _raised(create_default_local_load_plan, state_dict, md, True)


def test_missing_key_from_torch_with_prefix_and_per_rank_hints():
    import torch

    text = _load_error({"w": torch.zeros(2)}, _torch_md(**{"model.w": (2,)}))
    assert text == "RuntimeError: Missing key in checkpoint state_dict: w."
    e = explain(text, wb.Metadata({"model.w": wb.TensorStorageMetadata("float32", (2,), [])}))
    assert (e.pattern, e.fqn) == ("missing_key", "w")
    assert any("'model.w'" in c and "prefix" in c for c in e.what_to_check)
    md = wb.Metadata({f"dataloader.dp_rank_{r}": wb.BytesStorageMetadata() for r in range(2)})
    e = explain("RuntimeError: Missing key in checkpoint state_dict: dataloader.dp_rank_2.", md)
    assert e.fqn == "dataloader.dp_rank_2" and e.numbers["saved_ranks"] == [0, 1]
    assert "saved by 2 ranks" in e.what_to_check[0]
    assert "allow_partial_load=True" in str(e)


@pytest.mark.parametrize(
    "saved,current,needle,numbers",
    [
        ((8, 6), (4, 6), "divided by 2 = the world size 2 on dim 0: a local shard", {"ratio": 2}),
        (
            (8, 6),
            (24,),
            "1-d with numel 24 = 48 / 2 = the world size 2: a flattened local shard",
            {"ratio": 2},
        ),
        ((768, 2304), (2304, 768), "transposed", {}),
        (
            (50257, 768),
            (50304, 768),
            "differs by 47 (50257 saved vs 50304 current)",
            {"dim": 0, "difference": 47},
        ),
        ((8, 6), (8, 7), "Only dim 1 differs", {"dim": 1}),
        ((4, 6), (6, 4, 1), "Same number of elements (24)", {}),
    ],
)
def test_size_mismatch_from_torch_points_at_the_numbers(saved, current, needle, numbers):
    import torch

    text = _load_error({"w": torch.zeros(current)}, _torch_md(w=saved))
    assert text.startswith(
        f"ValueError: Size mismatch between saved torch.Size({list(saved)}) and "
        f"current: torch.Size({list(current)}) for w"
    )
    target = {"w": wb.dtensor_layout(current, (2,), "R")}
    e = explain(text, target=target)
    assert (e.pattern, e.fqn, e.numbers["saved"], e.numbers["current"]) == (
        "size_mismatch",
        "w",
        saved,
        current,
    )
    assert any(needle in c for c in e.what_to_check), e.what_to_check
    assert numbers.items() <= e.numbers.items()


def test_validation_failure_from_torch_including_truncation():
    import torch
    from torch.distributed.checkpoint.default_planner import _validate_global_plan
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        TensorProperties,
        TensorStorageMetadata,
    )
    from torch.distributed.checkpoint.planner import SavePlan

    def chunk(o, s):
        return ChunkStorageMetadata(torch.Size([o]), torch.Size([s]))

    md = Metadata(
        {
            "w": TensorStorageMetadata(
                TensorProperties(torch.float32), torch.Size([8]), [chunk(0, 4), chunk(2, 4)]
            ),
            "v": TensorStorageMetadata(
                TensorProperties(torch.float32), torch.Size([8]), [chunk(0, 4)]
            ),
        }
    )
    errors = _validate_global_plan([SavePlan([]), SavePlan([])], md)
    text = "ValueError: Failed to validate global plan: " + "; ".join(errors)
    e = explain(text, target={"w": wb.dtensor_layout((8,), (2,), "SS(0,2)", world_size=2)})
    assert e.pattern == "validate_global_plan"
    assert e.numbers["errors"] == [("w", "overlapping chunks"), ("v", "invalid fill")]
    assert any("_StridedShard whose ranks [0, 1]" in c for c in e.what_to_check)
    assert not e.numbers["truncated"]
    cut = text[:80] + "... (truncated)"
    e = explain(cut)
    assert e.numbers["truncated"] and e.fqn == "w"
    assert any("truncated at 500" in c for c in e.what_to_check)


def test_partial_unsupported_invalid_metadata_from_torch():
    import torch
    from torch.distributed.checkpoint.planner_helpers import _create_chunk_list, _create_read_items

    from workbench.planner_helpers import PARTIAL_MESSAGE

    e = explain(
        f"ValueError: {PARTIAL_MESSAGE}",
        target={"g": wb.dtensor_layout((4,), (2,), "P"), "w": wb.tensor_layout((4,), 2)},
    )
    assert (e.pattern, e.fqn) == ("partial", "g")

    text = _raised(_create_chunk_list, 5)
    assert text == (
        "ValueError: Unsupported Type, expecting one of [Tensor, DTensor, ShardedTensor] "
        ",but got <class 'int'>"
    )
    e = explain(text)
    assert e.pattern == "unsupported_type" and e.numbers["type"] == "<class 'int'>"

    md = _torch_md(w=(4,))
    text = _raised(_create_read_items, "w", md.state_dict_metadata["w"], None)
    assert text.startswith(
        "ValueError: Invalid checkpoint metadata for w, expected "
        "BytesStorageMetadata but found <class 'torch.distributed.checkpoint."
        "metadata.TensorStorageMetadata'>"
    )
    e = explain(text, target={"w": wb.dtensor_layout((4,), (2,), "P")})
    assert (e.pattern, e.fqn) == ("invalid_metadata", "w")
    assert "Partial placement" in e.what_to_check[0]
    assert any("None" in c for c in explain(text).what_to_check)
    del torch


def test_reader_size_assertion_and_missing_storage_key():
    import torch
    from torch.distributed.checkpoint.metadata import MetadataIndex

    idx = MetadataIndex("w", torch.Size([4, 0]), 1)
    text = (
        f"AssertionError: req {idx} mismatch sizes {torch.Size([1, 6])} vs "
        f"{torch.Size([2, 6])}"
    )  # filesystem.py's f-string with torch's own reprs
    e = explain(text, target={"w": wb.dtensor_layout((13, 6), (3, 2), "SS(0,2), S(0)")})
    assert (e.pattern, e.fqn, e.numbers) == (
        "read_size_mismatch",
        "w",
        {"dst": (1, 6), "src": (2, 6), "offset": (4, 0)},
    )
    assert "misdescribed" in e.what_to_check[0]

    text = f"KeyError: {KeyError(idx)}"
    md = wb.Metadata(
        {"w": wb.TensorStorageMetadata("float32", (8, 6), [])},
        storage_data={wb.MetadataIndex("w", (0, 0)): wb.StorageInfo("__0_0.distcp", 0, 9)},
    )
    e = explain(text, md)
    assert (e.pattern, e.fqn, e.numbers["offset"]) == ("missing_storage", "w", (4, 0))
    assert "storage_data holds 1 entries for w, at offsets [[0, 0]]" in e.what_to_check[1]


def test_checkpoint_exception_dump_from_torch():
    import torch
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    md = _torch_md(w=(8, 6))
    fails = {}
    for r in (0, 1):
        try:
            from torch.distributed.checkpoint.default_planner import create_default_local_load_plan

            create_default_local_load_plan({"w": torch.zeros(4, 6)}, md, True)
        except ValueError as ex:
            fails[r] = _wrap_exception(ex)
    text = str(CheckpointException("load failed", fails))
    assert text.startswith("CheckpointException ranks:dict_keys([0, 1])\nTraceback")
    e = explain(text, target={"w": wb.dtensor_layout((4, 6), (2,), "R")})
    assert (e.pattern, e.ranks, e.fqn) == ("checkpoint_exception", (0, 1), "w")
    assert len(e.inner) == 1 and e.inner[0].pattern == "size_mismatch"
    assert "ranks 0, 1: size_mismatch (w)" in e.cause
    assert "BaseException" in e.cause
    assert "divided by 2" in str(e)


def test_unknown_text():
    e = explain("RuntimeError: CUDA out of memory")
    assert isinstance(e, Explanation) and e.pattern == "unknown" and e.fqn is None


def test_missing_storage_key_as_repr_or_bare_key():
    import torch
    from torch.distributed.checkpoint.metadata import MetadataIndex

    idx = MetadataIndex("w", torch.Size([4, 0]), 1)
    for text in (repr(KeyError(idx)), str(KeyError(idx))):
        e = explain(text)
        assert (e.pattern, e.fqn, e.numbers["offset"]) == ("missing_storage", "w", (4, 0)), text


# ----------------------------------------------------------------------------- torch inputs
def test_explain_and_verify_with_torch():
    md = wb.plan_save({"w": wb.dtensor_layout((8, 6), (2,), "S(0)")}).metadata
    text = "Size mismatch between saved torch.Size([8, 6]) and current: torch.Size([8, 4]) for w"
    ex = wb.explain(text)
    assert isinstance(ex, wb.Explanation) and str(ex)
    ex2 = wb.explain(text, metadata=md, target={"w": wb.dtensor_layout((8, 4), (2,), "S(0)")})
    assert "w" in str(ex2)
    v = wb.verify_with_torch({"w": wb.dtensor_layout((8, 6), (2,), "S(0)")})
    assert v.equal, str(v)


def test_explain_takes_torch_metadata_and_a_real_state_dict():
    md = wb.plan_save({"w": wb.dtensor_layout((8, 6), (2,), "S(0)")}).metadata
    text = "Size mismatch between saved torch.Size([8, 6]) and current: torch.Size([8, 4]) for w"
    want = wb.explain(text, md, {"w": wb.tensor_layout((8, 4), 1), "step": wb.bytes_layout(1)})
    got = wb.explain(text, to_torch(md), {"w": torch.empty(8, 4, device="meta"), "step": 3})
    assert got == want and got.fqn == "w"
    with pytest.raises(wb.MetadataError) as e:
        wb.explain(text, metadata="/some/checkpoint")
    assert "load_metadata" in house_form(e.value)
    with pytest.raises(wb.PlanError) as e:
        wb.explain(text, md, target=5)
    house_form(e.value)
