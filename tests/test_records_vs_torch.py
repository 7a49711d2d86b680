"""The records (workbench.records) take torch's field names and torch's values (``torch.Size``,
torch dtypes), their enums match torch's, and a write item's storage size equals torch's.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.checkpoint import planner as TP
from torch.distributed.checkpoint import planner_helpers as TH

import workbench as wb
from workbench.torch_bridge.convert import from_torch


def test_records_take_torch_field_names_and_torch_values():
    c = wb.Chunk(offsets=torch.Size([4, 0]), sizes=[4, 6])
    assert c == wb.Chunk((4, 0), (4, 6)) and str(c) == "[4:8, 0:6]"
    assert wb.ChunkStorageMetadata is wb.Chunk
    i = wb.MetadataIndex("w", offset=torch.Size([4, 0]), index=3)
    assert i == wb.MetadataIndex("w", (4, 0)) and hash(i) == hash(wb.MetadataIndex("w", [4, 0]))
    assert wb.MetadataIndex("w").offset is None and wb.MetadataIndex("w").index is None
    for dtype in ("float32", torch.float32, "torch.float32"):
        assert wb.TensorProperties(dtype).dtype == "float32"
    assert wb.TensorProperties(dtype=torch.bfloat16).dtype == "bfloat16"
    tsm = wb.TensorStorageMetadata(
        properties=wb.TensorProperties("float16"), size=torch.Size([8, 6]), chunks=[c]
    )
    assert tsm.size == (8, 6) and type(tsm.size) is tuple and tsm.chunks == [c]
    md = wb.Metadata(state_dict_metadata={"w": tsm})
    assert md.state_dict_metadata["w"] is tsm
    assert [e.name for e in wb.LoadItemType] == [e.name for e in TP.LoadItemType]
    assert [e.value for e in wb.WriteItemType] == [e.value for e in TP.WriteItemType]
    ri = wb.ReadItem(
        type=wb.LoadItemType.TENSOR,
        dest_index=i,
        dest_offsets=torch.Size([0, 0]),
        storage_index=wb.MetadataIndex("w", (0, 0)),
        storage_offsets=[4, 0],
        lengths=(4, 6),
    )
    assert ri.lengths == (4, 6) and ri.dest_offsets == (0, 0)
    assert wb.SavePlan(items=[]).usable is True
    assert wb.LoadPlan(items=[ri]).items == [ri]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "float64"])
def test_write_item_tensor_storage_size_equals_torch(dtype):
    t = torch.zeros(5, 7, dtype=getattr(torch, dtype))
    theirs = TH._create_write_item_for_tensor("w", t)
    ours = wb.create_write_items("w", t)[0]
    assert ours.tensor_storage_size() == theirs.tensor_storage_size() == 35 * t.element_size()
    assert ours == from_torch(theirs)
    assert wb.create_write_items("s", 7)[0].tensor_storage_size() is None
