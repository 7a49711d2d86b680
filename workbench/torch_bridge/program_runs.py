"""Real multi-process runs of a user's own ``build()`` over gloo on 127.0.0.1: what each rank of
the real program holds and what a real ``dcp.load`` puts there. This is the check that
`capture.capture` is right.

Per rank, `ProgramStep` reports the keys ``dcp.save`` would see, the chunks torch's own
``DefaultSavePlanner`` records for the rank (``__create_chunk_list__`` of its DTensors), the
global indices its local tensors really hold (read from their values: a build that fills every
parameter with its flat index + 0.25 before parallelising keeps those values through the real
scatter of ``distribute_tensor`` and the real chunking of ``fully_shard``), and after a real
``dcp.load`` from a checkpoint the loaded local values. The launcher is `runs.run_steps` (its
process rules, time limit and clean-up). torch is imported inside functions only.

Lazy imports: torch (and the torch-bridge modules that need it) inside functions, so that
importing the package needs no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..geometry import Chunk
from .capture import build_name, state_dict_of

__all__ = ["ProgramStep", "ProgramRank", "run_program", "decode_indices"]


@dataclass(frozen=True)
class ProgramRank:
    """One rank of a real run of a program: ``keys`` (state-dict order), ``chunks[fqn]`` (DCP's
    chunks of the rank's write items; ``()`` for a bytes entry or a DTensor outside its mesh),
    ``held[fqn]`` (per dim the global indices the local tensor holds, read from its values;
    None where the values are not index-encoded), ``local_shapes``, and after a load the
    ``loaded`` local values (float64) or the ``error`` torch raised."""

    rank: int
    keys: tuple[str, ...]
    chunks: dict[str, tuple[Chunk, ...]]
    held: dict[str, dict[int, list[int]] | None]
    local_shapes: dict[str, tuple[int, ...]]
    loaded: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None


def decode_indices(values: np.ndarray, shape) -> dict[int, list[int]] | None:
    """Per dim, the global indices a local array holds when every element is its global flat
    index + 0.25 and the local array is a cartesian product of index lists (DTensor shards
    are); None otherwise (e.g. values changed by an optimizer step)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0 or a.ndim != len(shape) or not np.all(a - np.floor(a) == 0.25):
        return None
    flat = np.floor(a).astype(np.int64)
    if flat.min() < 0 or flat.max() >= math.prod(shape):
        return None
    coords = np.unravel_index(flat, tuple(shape))
    per = [coords[d][(0,) * d + (slice(None),) + (0,) * (a.ndim - d - 1)] for d in range(a.ndim)]
    if not np.array_equal(flat, np.ravel_multi_index(np.ix_(*per), tuple(shape))):
        return None
    return {d: [int(i) for i in per[d]] for d in range(a.ndim)}


def _local(t):
    from torch.distributed.tensor import DTensor

    return t._local_tensor if isinstance(t, DTensor) else t


@dataclass(frozen=True)
class ProgramStep:
    """Run ``build`` on every rank of a real gloo job; with ``load_path``, fill every tensor of
    its state dict with ``fill`` and ``dcp.load`` the checkpoint into it."""

    build: Callable
    load_path: str | None = None
    fill: float = -1.0

    def run_on(self, rank: int) -> ProgramRank:
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
        from torch.distributed.checkpoint.state_dict_saver import _stateful_to_state_dict

        from .convert import from_torch
        from .materialize import exception_text

        sd, _ = state_dict_of(self.build(), build_name(self.build), rank)
        sd = _stateful_to_state_dict(sd)
        planner = DefaultSavePlanner()
        planner.set_up_planner(sd, is_coordinator=rank == 0)
        flat = planner.state_dict  # the same tensor objects as in sd
        chunks: dict[str, list] = {k: [] for k in flat}
        for item in planner.create_local_plan().items:
            if item.tensor_data is not None:
                chunks[item.index.fqn].append(from_torch(item.tensor_data.chunk))
        tensors = {k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}
        held = {
            k: decode_indices(_local(v).detach().to(torch.float64).numpy(), tuple(v.shape))
            for k, v in tensors.items()
        }
        out = dict(
            rank=rank,
            keys=tuple(flat),
            chunks={k: tuple(c) for k, c in chunks.items()},
            held=held,
            local_shapes={k: tuple(_local(v).shape) for k, v in tensors.items()},
        )
        if self.load_path is None:
            return ProgramRank(**out)
        with torch.no_grad():
            for v in tensors.values():
                _local(v).fill_(self.fill)
        try:
            dcp.load(sd, checkpoint_id=self.load_path)
        except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
            return ProgramRank(**out, error=exception_text(e))
        loaded = {
            k: _local(v).detach().to(torch.float64).numpy().copy() for k, v in tensors.items()
        }
        return ProgramRank(**out, loaded=loaded)


def run_program(build, world_size: int, *, load_path=None, fill: float = -1.0, **kw):
    """`ProgramStep` on ``world_size`` real gloo processes (`runs.run_steps`'s keywords: the
    time limit, the collective timeout); one `ProgramRank` per rank."""
    from .runs import run_steps

    return run_steps([ProgramStep(build, load_path and str(load_path), fill)], world_size, **kw)[0]
