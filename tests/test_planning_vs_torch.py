"""plan_save / plan_load against torch 2.13's own planners, item by item and in order.

Every rank is run for real under torch's ``fake`` process group: a state dict of meta-device
DTensors (``DTensor.from_local`` on a ``DeviceMesh("cpu", ...)``), meta plain tensors, BytesIO
values and ShardedTensor stand-ins (objects with torch's ``__create_write_items__`` /
``__create_chunk_list__`` protocol producing exactly what ``ShardedTensor`` produces: one SHARD
item / chunk per local shard), then torch's ``create_default_local_save_plan``,
``dedup_save_plans``, ``create_default_global_save_plan``, ``_validate_global_plan`` and, on the
metadata torch itself produced, ``create_default_local_load_plan`` per rank of the load world.
Helper level: ``create_read_items_for_chunk_list`` on random explicit chunk lists.
The torch state dicts are built here, independently of workbench.torch_bridge.
"""

from __future__ import annotations

import io
from contextlib import contextmanager

import pytest
import torch  # installed in .venv; the package itself never needs it
import torch.distributed as dist  # noqa: E402
from hypothesis import event, given
from hypothesis import strategies as st
from test_planning import (
    boxes_in,
    crowded_state_dicts,
    expected_per_rank,
    metadata_key,
    read_key,
    save_and_load,
    shapes,  # noqa: E402
    state_dicts,
    write_key,
)
from torch.distributed.checkpoint import metadata as tmeta  # noqa: E402
from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans  # noqa: E402
from torch.distributed.checkpoint.default_planner import (  # noqa: E402
    _validate_global_plan,
    create_default_global_save_plan,
    create_default_local_load_plan,
    create_default_local_save_plan,
)
from torch.distributed.checkpoint.planner import WriteItem, WriteItemType  # noqa: E402
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list  # noqa: E402
from torch.distributed.device_mesh import DeviceMesh  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset  # noqa: E402
from torch.distributed.tensor.placement_types import (
    Partial as TPartial,  # noqa: E402
)
from torch.distributed.tensor.placement_types import (
    Replicate as TReplicate,
)
from torch.distributed.tensor.placement_types import (
    Shard as TShard,
)
from torch.distributed.tensor.placement_types import (
    _StridedShard,
)
from torch.testing._internal.distributed.fake_pg import FakeStore  # noqa: E402

from workbench import planner_helpers as ph  # noqa: E402
from workbench.planning import plan_load, plan_save  # noqa: E402
from workbench.records import Metadata, TensorStorageMetadata  # noqa: E402
from workbench.sharding import (
    Partial,
    Replicate,
    Shard,
    bytes_layout,
    dtensor_layout,  # noqa: E402
    sharded_layout,
    tensor_layout,
)


# ----------------------------------------------------------------------------- torch side
@contextmanager
def fake_rank(rank, world):
    dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def torch_placement(p):
    if isinstance(p, Shard):
        return TShard(p.dim)
    if isinstance(p, Replicate):
        return TReplicate()
    if isinstance(p, Partial):
        return TPartial()
    return _StridedShard(p.dim, split_factor=p.split_factor)


class ShardedStandIn:
    """What a ShardedTensor gives DCP: SHARD write items and chunks for its local shards
    (torch's ``_create_write_item_for_shard`` / ``_chunk_for_shard``) and the global ``size()``."""

    def __init__(self, shape, chunks, dtype):
        self._shape, self._chunks = torch.Size(shape), chunks
        self._props = tmeta.TensorProperties(dtype=dtype)

    def size(self):
        return self._shape

    def __create_chunk_list__(self):
        return [
            tmeta.ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes))
            for c in self._chunks
        ]

    def __create_write_items__(self, fqn, obj):
        from torch.distributed.checkpoint.planner import TensorWriteData

        return [
            WriteItem(
                index=tmeta.MetadataIndex(fqn, torch.Size(c.offsets)),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(chunk=c, properties=self._props, size=self._shape),
            )
            for c in self.__create_chunk_list__()
        ]


def torch_value(lay, rank, meshes):
    """Rank ``rank``'s value for a layout, or None when the key is absent from its state dict."""
    dtype = getattr(torch, lay.dtype)
    if lay.kind == "bytes":
        return io.BytesIO(b"value") if lay.rank_chunks[rank] else None
    if lay.kind == "tensor":
        return torch.empty(lay.shape, dtype=dtype, device="meta") if lay.rank_chunks[rank] else None
    if lay.kind == "sharded":
        return ShardedStandIn(lay.shape, lay.rank_chunks[rank], dtype)
    mesh = meshes.get(lay.mesh_shape)
    if mesh is None:
        n = 1
        for m in lay.mesh_shape:
            n *= m
        mesh = meshes[lay.mesh_shape] = DeviceMesh("cpu", torch.arange(n).reshape(lay.mesh_shape))
    pl = [torch_placement(p) for p in lay.placements]
    # from_local treats an empty shape as "not given" and infers it from the local tensor, so a
    # 0-d DTensor needs a 0-d local tensor even on a rank outside the mesh
    local = (0,) if lay.shape else ()
    if mesh.get_coordinate() is not None:
        local, _ = compute_local_shape_and_global_offset(lay.shape, mesh, pl)
    stride = [1] * len(lay.shape)
    for d in range(len(lay.shape) - 2, -1, -1):
        stride[d] = stride[d + 1] * max(lay.shape[d + 1], 1)
    return DTensor.from_local(
        torch.empty(local, dtype=dtype, device="meta"),
        mesh,
        pl,
        run_check=False,
        shape=torch.Size(lay.shape),
        stride=tuple(stride),
    )


def torch_state_dict(layouts, rank):
    meshes = {}
    sd = {}
    for fqn, lay in layouts.items():
        v = torch_value(lay, rank, meshes)
        if v is not None:
            sd[fqn] = v
    return sd


def torch_save(layouts, lowest):
    world = next(iter(layouts.values())).world_size
    local = []
    for r in range(world):
        with fake_rank(r, world):
            local.append(create_default_local_save_plan(torch_state_dict(layouts, r), r == 0))
    plans, md = create_default_global_save_plan(dedup_save_plans(local, lowest))
    return local, plans, md, _validate_global_plan(plans, md)


def torch_load(md, layouts, strict):
    """Per rank: torch's read items as plain data, or the text of what it raised."""
    world = next(iter(layouts.values())).world_size
    out = []
    for r in range(world):
        with fake_rank(r, world):
            try:
                plan = create_default_local_load_plan(torch_state_dict(layouts, r), md, strict)
                out.append([read_key(i) for i in plan.items])
            except (RuntimeError, ValueError) as e:
                out.append(str(e))
    return out


# what each torch rank reports (its items or its first failure), as test_planning computes it
ours_load = expected_per_rank


def check_save(layouts, lowest):
    res = plan_save(layouts, save_to_lowest_rank=lowest)
    local, plans, md, errors = torch_save(layouts, lowest)
    for r in range(res.world_size):
        assert [write_key(i) for i in res.local_plans[r].items] == [
            write_key(i) for i in local[r].items
        ]
        assert [write_key(i) for i in res.plans[r].items] == [write_key(i) for i in plans[r].items]
    assert metadata_key(res.metadata) == metadata_key(md)
    assert res.errors == errors
    return res, md


# ----------------------------------------------------------------------------- worked examples
def test_dedup_tie_break_matches_torch():
    check_save({"w": dtensor_layout((16,), (2, 8), "R, S(0)")}, lowest=False)
    check_save({"w": dtensor_layout((16,), (2, 8), "R, S(0)")}, lowest=True)


def test_bytes_value_goes_to_rank_one_as_in_torch():
    res, _ = check_save({"tensor": tensor_layout((10,), 4), "value": bytes_layout(4)}, False)
    assert res.writers == {"tensor": [0], "value": [1]}


def test_fsdp_tp_and_uneven_layouts_match_torch():
    layouts = {
        "embed": dtensor_layout((13, 4), (3, 2), "SS(0,2), S(0)"),
        "q": dtensor_layout((9, 6), (3, 2), "S(0), S(1)"),
        "norm": dtensor_layout((6,), (3, 2), "R, R"),
        "empty": dtensor_layout((2, 0, 3), (3, 2), "S(0), S(2)"),
        "step": tensor_layout((), 6, "int64"),
        "cfg": bytes_layout(6),
    }
    res, md = check_save(layouts, False)
    load = {
        "embed": dtensor_layout((13, 4), (4,), "S(1)"),
        "q": dtensor_layout((9, 6), (2, 2), "S(1), S(0)"),
        "norm": dtensor_layout((6,), (4,), "S(0)"),
        "empty": dtensor_layout((2, 0, 3), (2, 2), "R, S(0)"),
        "step": tensor_layout((), 4, "int64"),
        "cfg": bytes_layout(4),
    }
    expected = torch_load(md, load, True)
    assert ours_load(plan_load(res.metadata, load)) == expected
    # torch's own Metadata object is accepted too (converted by torch_bridge)
    assert ours_load(plan_load(md, load)) == expected


def test_partial_load_message_matches_torch():
    res, md = check_save({"w": dtensor_layout((4, 2), (2,), "S(0)")}, False)
    load = {"w": dtensor_layout((4, 2), (2,), "P", world_size=3)}
    assert ours_load(plan_load(res.metadata, load)) == torch_load(md, load, True)


def test_partial_save_message_matches_torch():
    lay = {"w": dtensor_layout((4,), (2,), "P")}
    with fake_rank(0, 2), pytest.raises(ValueError) as e:
        create_default_local_save_plan(torch_state_dict(lay, 0), True)
    assert plan_save(lay).failures == [("w", (0, 1), str(e.value))]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_storage_data_matches_a_real_save(tmp_path):
    # a real single-process dcp.save (FileSystemWriter defaults): same metadata, same files
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    dcp.save(
        {"a": torch.zeros(4, 3), "step": torch.tensor(7), "cfg": io.BytesIO(b"x")},
        checkpoint_id=str(tmp_path),
    )
    real = FileSystemReader(str(tmp_path)).read_metadata()
    res = plan_save(
        {
            "a": tensor_layout((4, 3), 1),
            "step": tensor_layout((), 1, "int64"),
            "cfg": bytes_layout(1),
        }
    )
    assert metadata_key(res.metadata) == metadata_key(real)

    def files(sd):
        return {
            (k.fqn, None if k.offset is None else tuple(k.offset), k.index): v.relative_path
            for k, v in sd.items()
        }

    assert files(res.metadata.storage_data) == files(real.storage_data)


# ----------------------------------------------------------------------------- random layouts
@given(state_dicts(max_world=16), st.booleans())
def test_save_matches_torch(layouts, lowest):
    res, _ = check_save(layouts, lowest)
    event(f"world > 8: {res.world_size > 8}")
    event(f"validation errors: {bool(res.errors)}")
    event(
        f"dedup dropped items: {sum(len(p.items) for p in res.local_plans) > sum(len(p.items) for p in res.plans)}"
    )


@given(crowded_state_dicts(), st.booleans())
def test_crowded_dedup_matches_torch(layouts, lowest):
    # many shared keys between one-holder keys: the load-balanced writer choice, set order
    check_save(layouts, lowest)


@given(save_and_load(max_world=12))
def test_load_matches_torch(case):
    saved, load, strict, lowest = case
    res, md = check_save(saved, lowest)
    ours = plan_load(res.metadata, load, allow_partial_load=not strict)
    assert ours_load(ours) == torch_load(md, load, strict)
    event(f"failures: {bool(ours.failures)}")
    n = sum(len(p.items) for p in ours.plans)
    event(f"read items: {'0' if n == 0 else '1-9' if n < 10 else '10+'}")


@st.composite
def chunk_lists(draw):
    shape = draw(shapes)
    saved = draw(boxes_in(shape, max_n=6, outside=True))
    local = draw(boxes_in(shape, max_n=4, outside=True))
    return shape, saved, local


@given(chunk_lists())
def test_read_items_for_chunk_lists_match_torch(case):
    # explicit (ShardedTensor-like) chunks, overlapping, zero-size, out of bounds, several local
    shape, saved, local = case
    md = Metadata({"w": TensorStorageMetadata("float32", shape, saved)})
    res = plan_load(md, {"w": sharded_layout(shape, [local])})
    ours = [read_key(i) for i in res.plans[0].items]
    tmd = tmeta.TensorStorageMetadata(
        tmeta.TensorProperties(dtype=torch.float32),
        torch.Size(shape),
        [tmeta.ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)) for c in saved],
    )
    tlocal = [tmeta.ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)) for c in local]
    assert ours == [read_key(i) for i in create_read_items_for_chunk_list("w", tmd, tlocal)]
    assert ours == [
        read_key(i)
        for i in ph.create_read_items_for_chunk_list("w", md.state_dict_metadata["w"], local)
    ]
