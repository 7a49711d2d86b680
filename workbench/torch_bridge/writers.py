"""Real writers and readers of the other DCP-shaped formats, run on every rank of a real gloo
run (`runs.CallStep`): Megatron-Core's ``dist_checkpointing.save`` / ``load`` (torch_dist
backend) built from workbench `Layout`s. torch's ``HuggingFaceStorageWriter`` / ``Reader`` need
no code here: `runs.SaveStep` / `runs.LoadStep` take ``storage="hf"``.

Megatron-Core runs on CPU over gloo once two CUDA calls are replaced in the calling process
(``torch.cuda.synchronize`` by a no-op, ``torch.cuda.current_device`` by a function returning
"cpu"); checkpoint-formats.md. A layout becomes Megatron's sharded state dict as a Megatron user
writes it: a DTensor layout sharded along one dim -> ``ShardedTensor.from_rank_offsets(key,
local, (dim, rank, n))``; a plain tensor held by every rank -> a replicated ShardedTensor
(``replica_id=rank``, rank 0 the main replica); a per-rank bytes layout -> a ``ShardedObject``
``(key, value, (world,), (rank,))`` (stored as ``key/shard_<rank>_<world>``). Values encode
their global index (`runs.global_values`), so loads are checked element by element.

Lazy imports: torch and megatron-core inside functions only (they run in the spawned ranks).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LayoutError, PlanError
from ..sharding import (
    Layout,
    Replicate,
    Shard,
    bytes_layout,
    dtensor_layout,
    sharded_layout,
    tensor_layout,
)
from .materialize import global_values
from .runs import CallStep, SaveStep, run_steps

__all__ = [
    "megatron_save",
    "megatron_load",
    "run_megatron_save",
    "run_megatron_load",
    "patch_cuda_for_cpu",
    "FormatCheckpoint",
    "FORMAT_CHECKPOINTS",
    "make_format_checkpoint",
]


def patch_cuda_for_cpu() -> None:
    """Megatron-Core calls ``torch.cuda.synchronize()`` and ``torch.cuda.current_device()`` on
    save; on a CPU-only machine they are replaced in this process (and only this one)."""
    import torch

    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"


def _shard_dim(fqn: str, layout: Layout) -> int | None:
    """The one tensor dim a 1-D-mesh DTensor layout shards (None when replicated)."""
    pls = layout.placements or ()
    if layout.mesh_shape is None or len(layout.mesh_shape) != 1 or len(pls) != 1:
        raise LayoutError(
            fqn,
            f"layout on mesh {layout.mesh_shape} with placements {pls}",
            "a 1-D mesh with one placement for a Megatron ShardedTensor",
            "Use dtensor_layout(shape, (world,), 'S(d)').",
        )
    (p,) = pls
    if isinstance(p, Replicate):
        return None
    if type(p) is not Shard:
        raise LayoutError(
            fqn, f"placement {p}", "Shard or Replicate", "Megatron shards evenly along one dim."
        )
    return p.dim


def _megatron_state_dict(
    layouts: Mapping[str, Layout], rank: int, world_size: int, empty: bool, flat=None
):
    import torch
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

    sd = {}
    for fqn, (start, stop) in (flat or {}).items():
        # a distributed-optimizer style piece: rank r holds elements [start, stop) of the
        # flattened whole tensor (releases before 0.14 only)
        lay = layouts[fqn]
        data = global_values(lay).reshape(-1)[start:stop].clone()
        sd[fqn] = ShardedTensor.from_rank_offsets_flat(
            fqn, data, lay.shape, flattened_range=slice(start, stop), replica_id=0
        )
    for fqn, lay in layouts.items():
        if fqn in sd:
            continue
        if lay.kind == "bytes":
            if lay.chunks(rank):
                value = None if empty else f"{fqn}@rank{rank}"
                sd[fqn] = ShardedObject(fqn, value, (world_size,), (rank,))
            continue
        (chunk,) = lay.chunks(rank)
        local = global_values(lay)
        for d, (o, s) in enumerate(zip(chunk.offsets, chunk.sizes)):
            local = local.narrow(d, o, s)
        local = torch.full_like(local, -1) if empty else local.contiguous().clone()
        if lay.kind == "tensor":  # held whole by every rank: replicas, rank 0 the main one
            sd[fqn] = ShardedTensor.from_rank_offsets(fqn, local, replica_id=rank)
            continue
        d = _shard_dim(fqn, lay)
        if d is None:
            sd[fqn] = ShardedTensor.from_rank_offsets(fqn, local, replica_id=rank)
        else:
            sd[fqn] = ShardedTensor.from_rank_offsets(fqn, local, (d, rank, lay.mesh_shape[0]))
    return sd


def megatron_save(
    rank: int,
    world_size: int,
    path: str,
    layouts: Mapping[str, Layout],
    common: Mapping | None = None,
    flat: Mapping | None = None,
) -> None:
    """On one rank: ``dist_checkpointing.save`` of ``layouts`` (plus the non-sharded ``common``
    entries, which Megatron writes to ``common.pt``) to ``path`` with the torch_dist backend.
    (Its ``keep_only_main_replica=False`` option fails in 0.16.1 with "Cannot run decentralized
    plan with dedup_replicated_tensors=True", so replicas are always Megatron's to drop.)
    ``flat``: ``{fqn: per-rank (start, stop)}`` saves those plain-tensor layouts with
    ``flattened_range`` (megatron-core before 0.14; 0.16 refuses it)."""
    patch_cuda_for_cpu()
    warnings.filterwarnings("ignore")
    import numpy

    if not hasattr(numpy, "product"):  # megatron-core 0.13 calls numpy.product (gone in numpy 2)
        numpy.product = numpy.prod
    from megatron.core import dist_checkpointing

    flat = {k: v[rank] for k, v in (flat or {}).items()}
    sd = _megatron_state_dict(layouts, rank, world_size, empty=False, flat=flat)
    sd.update(common or {})
    dist_checkpointing.save(sd, path)


def megatron_load(rank: int, world_size: int, path: str, layouts: Mapping[str, Layout]) -> dict:
    """On one rank: ``dist_checkpointing.load`` into ``layouts`` (every element first -1);
    returns ``{fqn: (loaded, expected)}`` float64 numpy arrays of this rank's chunk (the object
    itself for bytes entries), plus the common entries under their own keys."""
    patch_cuda_for_cpu()
    warnings.filterwarnings("ignore")
    import torch
    from megatron.core import dist_checkpointing

    sd = _megatron_state_dict(layouts, rank, world_size, empty=True)
    got = dist_checkpointing.load(sd, path)
    out = {}
    for fqn, lay in layouts.items():
        if fqn not in got:
            continue
        if lay.kind == "bytes":
            out[fqn] = (got[fqn], f"{fqn}@rank{rank}")
            continue
        (chunk,) = lay.chunks(rank)
        want = global_values(lay)
        for d, (o, s) in enumerate(zip(chunk.offsets, chunk.sizes)):
            want = want.narrow(d, o, s)
        out[fqn] = (got[fqn].to(torch.float64).numpy(), want.to(torch.float64).numpy())
    for k, v in got.items():
        if k not in layouts:
            out[k] = v
    return out


def run_megatron_save(path, layouts: Mapping[str, Layout], *, time_limit=120.0, **kwargs) -> None:
    """A real Megatron-Core ``dist_checkpointing.save`` of ``layouts`` by as many gloo
    processes as the layouts' world size (see `megatron_save` for ``kwargs``)."""
    ws = next(iter(layouts.values())).world_size
    step = CallStep(str(path), megatron_save, dict(kwargs, layouts=dict(layouts)))
    run_steps([step], ws, time_limit=time_limit)


def run_megatron_load(path, layouts: Mapping[str, Layout]) -> tuple[dict, ...]:
    """A real ``dist_checkpointing.load`` on every rank; per rank the `megatron_load` dict."""
    ws = next(iter(layouts.values())).world_size
    return run_steps([CallStep(str(path), megatron_load, {"layouts": dict(layouts)})], ws)[0]


# ----------------------------------------------------------------------------- named checkpoints
@dataclass(frozen=True)
class FormatCheckpoint:
    """A small checkpoint of another format, written by its real writer: ``writer`` is
    "megatron" or a `runs.STORAGES` / "hf_index" storage; ``layouts`` what was saved."""

    name: str
    writer: str
    layouts: dict
    effect: str
    options: dict = field(default_factory=dict)
    megatron_version: str = "0.16.1"  # the megatron-core release that writes it

    @property
    def world_size(self) -> int:
        return next(iter(self.layouts.values())).world_size


def _model(ws: int = 2) -> dict:
    """The small model every format saves: a row-sharded and a column-sharded weight, a
    replicated norm and per-rank bytes."""
    return {
        "decoder.w": dtensor_layout((8, 6), (ws,), "S(0)", world_size=ws),
        "decoder.v": dtensor_layout((4, 6), (ws,), "S(1)", "bfloat16", world_size=ws),
        "decoder.norm": tensor_layout((6,), ws),
    }


def _format_checkpoints() -> dict[str, FormatCheckpoint]:
    two_per_rank = sharded_layout(
        (8, 6),
        {0: [((0, 0), (2, 6)), ((4, 0), (2, 6))], 1: [((2, 0), (2, 6)), ((6, 0), (2, 6))]},
    )
    rng = {"rng_state": bytes_layout(2, per_rank_values=True)}
    # an optimizer state of a (4, 6) parameter saved as flat pieces [0:10) and [10:24)
    flat_layouts = {
        "decoder.w": dtensor_layout((4, 12), (2,), "S(0)"),
        "optimizer.state.exp_avg.decoder.fc": tensor_layout((4, 6), 2),
        **rng,
    }
    flat_options = {
        "common": {"iteration": 7},
        "flat": {"optimizer.state.exp_avg.decoder.fc": [(0, 10), (10, 24)]},
    }
    out = [
        FormatCheckpoint(
            name="megatron",
            writer="megatron",
            layouts={**_model(), **rng},
            effect="Megatron-Core torch_dist: replicas dropped by Megatron (main replica = rank 0), "
            "per-rank ShardedObjects as rng_state/shard_<r>_2, common.pt holds 'iteration'",
            options={"common": {"iteration": 7}},
        ),
        FormatCheckpoint(
            name="megatron_flat",
            writer="megatron",
            layouts=flat_layouts,
            effect="Megatron-Core 0.13.1 (flattened_range still supported): exp_avg of a (4, 6) "
            "parameter saved as flat pieces [0:10) on rank 0 and [10:24) on rank 1, stored as a "
            "[1, 1, 24] tensor with mcore_data's nd_reformulated_orig_global_shape (4, 6); the "
            "local plans are MCoreSavePlan records",
            options=flat_options,
            megatron_version="0.13.1",
        ),
        FormatCheckpoint(
            name="megatron_015",
            writer="megatron",
            layouts=flat_layouts,
            effect="the same with Megatron-Core 0.15.3 (flattened_range deprecated): the "
            "metadata is its MCoreMetadata subclass of torch's Metadata",
            options=flat_options,
            megatron_version="0.15.3",
        ),
        FormatCheckpoint(
            name="hf",
            writer="hf",
            layouts=_model(),
            effect="HuggingFaceStorageWriter(save_distributed=True): one shard-<rank>-model-... file "
            "per writing rank, sharding in the headers",
        ),
        FormatCheckpoint(
            name="hf_consolidated",
            writer="hf_consolidated",
            layouts=_model(),
            effect="the same with enable_consolidation=True: sharded/ plus model-00001-of-00001 and "
            "model.safetensors.index.json",
        ),
        FormatCheckpoint(
            name="hf_plain",
            writer="hf_index",
            layouts=_model(1),
            effect="a plain HF directory: model-00001-of-00002 / model-00002-of-00002 and the index, "
            "written by one process (save_distributed=False)",
        ),
        FormatCheckpoint(
            name="hf_lost_chunk",
            writer="hf",
            layouts={"w": two_per_rank},
            effect="a ShardedTensor with two local shards per rank: the HF writer keeps only each "
            "rank's last chunk of w; rows 0:2 and 2:4 are lost",
        ),
    ]
    return {c.name: c for c in out}


FORMAT_CHECKPOINTS = _format_checkpoints()


def make_format_checkpoint(name: str, path, **kw) -> FormatCheckpoint:
    """Write the named checkpoint (see `FORMAT_CHECKPOINTS`) at ``path`` with its real writer."""
    if name not in FORMAT_CHECKPOINTS:
        raise PlanError(
            None,
            f"unknown format checkpoint {name!r}",
            "one of " + ", ".join(FORMAT_CHECKPOINTS),
            "Pick a name from FORMAT_CHECKPOINTS.",
        )
    fc = FORMAT_CHECKPOINTS[name]
    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    if fc.writer == "megatron":
        from megatron.core.package_info import __version__

        if __version__ != fc.megatron_version:
            raise PlanError(
                name,
                f"megatron-core {__version__} is installed",
                f"megatron-core {fc.megatron_version} writes this checkpoint",
                f"pip install --no-deps --target /tmp/mcore megatron-core=={fc.megatron_version}"
                " and run with PYTHONPATH=/tmp/mcore (no other torch is needed).",
            )
        run_megatron_save(path, fc.layouts, **fc.options, **kw)
        return fc
    (run,) = run_steps([SaveStep(str(path), fc.layouts, fc.writer)], fc.world_size, **kw)
    if not run.ok:
        raise RuntimeError(f"saving the {name!r} checkpoint failed: {run.errors}")
    return fc
