"""Real multi-process ``dcp.save`` / ``dcp.load`` runs over gloo on 127.0.0.1, and makers of the
(broken) checkpoints the tests, notebooks and demos use.

A run starts ``world_size`` processes (``multiprocessing`` forkserver, whose server has imported
torch once: see `_context`; spawn where there is no forkserver), each builds its state dict from
workbench `Layout`s and executes a list of steps (`SaveStep`, `LoadStep`). Every element of every
tensor encodes its global index (``value = flat index``, plus 0.25 for floating dtypes so a cast
to an integer dtype shows, plus ``rank * numel`` for ``per_rank_values``), so a load is checked
element by element against what the checkpoint holds at the indices the rank really holds
(``held_indices``: the real data of a ``_StridedShard`` rank, not DCP's box).

The process rules of dcp-semantics section 8 are followed: the parent binds the store's socket to
``("127.0.0.1", port)`` and hands it to rank 0 (``TCPStore(master_listen_fd=...)``, which would
otherwise listen on every interface), ``GLOO_SOCKET_IFNAME=lo``, ``OMP_NUM_THREADS=1``,
collectives have a timeout, the launcher a time limit after which stragglers are killed, and every
rank destroys its process group before it exits. Lazy imports: torch is imported inside functions only.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import tempfile
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PlanError
from ..sharding import Layout, bytes_layout, dtensor_layout, tensor_layout
from ..versions import require_torch
from .materialize import (
    Meshes,
    bytes_value,
    exception_text,
    global_values,
    local_values,
    torch_state_dict,
)

__all__ = [
    "SaveStep",
    "LoadStep",
    "CallStep",
    "STORAGES",
    "SaveRun",
    "LoadRun",
    "RankLoad",
    "Scenario",
    "run_steps",
    "run_save",
    "run_load",
    "make_checkpoint",
    "make_checkpoints",
    "load_scenarios",
    "SCENARIO_KINDS",
    "MAX_WORLD_SIZE",
]

MAX_WORLD_SIZE = 8


# ----------------------------------------------------------------------------- steps and results
@dataclass(frozen=True)
class SaveStep:
    """``dcp.save`` of the state dict the layouts describe (rank r holds the entries whose layout
    has chunks on r) to ``path``."""

    path: str
    layouts: Mapping[str, Layout]
    storage: str = "fs"  # see STORAGES: which storage writer dcp.save is given
    # a picklable planner factory (a class, a functools.partial); None: torch's default
    planner: Any = None


@dataclass(frozen=True)
class LoadStep:
    """``dcp.load`` from ``path`` into a state dict built from ``layouts``, every destination
    element first set to ``fill`` (so stale elements show)."""

    path: str
    layouts: Mapping[str, Layout]
    allow_partial_load: bool = False
    fill: float = -1.0
    storage: str = "fs"  # "fs" (FileSystemReader) or "hf" (HuggingFaceStorageReader)
    # a picklable planner factory taking allow_partial_load=; None: DefaultLoadPlanner
    planner: Any = None


@dataclass(frozen=True)
class CallStep:
    """Any other real writer or reader: ``fn(rank, world_size, path, **kwargs)`` runs on every
    rank inside the initialised gloo group (``fn`` must be importable by the rank processes);
    its return value (picklable) is the step's result on that rank."""

    path: str
    fn: Any
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    layouts: Mapping[str, Layout] = field(default_factory=dict)

    def run_on(self, rank: int):
        # runs inside a rank of run_steps, whose process group is initialised
        import torch.distributed as dist

        return self.fn(rank, dist.get_world_size(), self.path, **self.kwargs)


# Storage writers a SaveStep can use: torch's FileSystemWriter; its
# HuggingFaceStorageWriter(save_distributed=True) without / with consolidation; and the
# single-writer HuggingFaceStorageWriter with an fqn -> file mapping (a plain HF directory).
STORAGES = ("fs", "hf", "hf_consolidated", "hf_index")


@dataclass(frozen=True)
class SaveRun:
    """A real save: ``errors[r]`` is rank r's exception text (None when it succeeded)."""

    path: str
    world_size: int
    errors: tuple[str | None, ...]

    @property
    def ok(self) -> bool:
        return all(e is None for e in self.errors)


@dataclass(frozen=True)
class RankLoad:
    """One rank's load: per fqn the loaded local values and the expected ones (float64 arrays in
    local order; the object itself for bytes entries), or the exception text."""

    rank: int
    values: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    warnings: tuple[str, ...] = ()  # the checked planner's CheckedPlanWarning texts


@dataclass(frozen=True)
class LoadRun:
    """A real load over every rank."""

    path: str
    world_size: int
    ranks: tuple[RankLoad, ...]
    fill: float = -1.0

    @property
    def errors(self) -> dict[int, str]:
        return {r.rank: r.error for r in self.ranks if r.error is not None}

    @property
    def ok(self) -> bool:
        """No rank raised and every loaded element equals the expected one."""
        return not self.errors and not self.mismatches()

    def mismatches(self) -> list[tuple[int, str, int, int]]:
        """``(rank, fqn, wrong elements, stale elements)`` for every rank and entry whose loaded
        values differ from what the checkpoint holds (stale = still the fill value)."""
        out = []
        for r in self.ranks:
            for fqn, got in r.values.items():
                want = r.expected[fqn]
                if isinstance(got, str) or not isinstance(got, (np.ndarray, list)):
                    if got != want:
                        out.append((r.rank, fqn, 1, 0))
                    continue
                if isinstance(got, list):  # a ShardedTensor's local shards
                    got, want = (
                        np.concatenate([a.ravel() for a in x] or [np.zeros(0)]) for x in (got, want)
                    )
                bad = got != want
                if bad.any():
                    out.append((r.rank, fqn, int(bad.sum()), int((got[bad] == self.fill).sum())))
        return out


def _saved_dtypes(path) -> dict[str, str]:
    from ..formats import load_metadata

    md = load_metadata(path)
    return {
        k: v.properties.dtype for k, v in md.state_dict_metadata.items() if hasattr(v, "properties")
    }


def _loaded(fqn, layout, rank, value, saved_dtype):
    """(loaded, expected) for one entry: expected = what the checkpoint holds (the saved dtype's
    encoding) at the indices this rank really holds, as float64."""
    import torch
    from torch.distributed.tensor import DTensor

    if layout.kind == "bytes":
        return value, bytes_value(fqn, layout, rank)
    if layout.kind == "dtensor" and not layout.chunks(rank):  # outside the mesh: nothing loaded
        nothing = torch.empty(0, dtype=torch.float64).numpy()
        return nothing, nothing
    want = local_values(layout, rank, global_values(layout, rank, saved_dtype or layout.dtype))
    if layout.kind == "sharded":
        got = [s.tensor for s in value.local_shards()]
        return (
            [t.to(torch.float64).numpy() for t in got],
            [t.to(torch.float64).numpy() for t in want],
        )
    if isinstance(value, DTensor):
        value = value.to_local()
    return value.to(torch.float64).numpy().copy(), want.to(torch.float64).numpy()


def _storage_writer(storage: str, path: str, layouts):
    """The storage writer of a `SaveStep` (None: dcp.save's default FileSystemWriter)."""
    import torch.distributed.checkpoint as dcp

    if storage == "fs":
        return None
    if storage in ("hf", "hf_consolidated"):
        return dcp.HuggingFaceStorageWriter(
            path, save_distributed=True, enable_consolidation=storage == "hf_consolidated"
        )
    if storage == "hf_index":  # one writer, two model-*.safetensors files and the index
        return dcp.HuggingFaceStorageWriter(
            path, fqn_to_index_mapping={fqn: i % 2 + 1 for i, fqn in enumerate(layouts)}
        )
    raise PlanError(
        None,
        f"unknown storage {storage!r} for a real save",
        "one of " + ", ".join(STORAGES),
        "Pick a storage from STORAGES.",
    )


def _run_step(step, rank, meshes):
    if hasattr(step, "run_on"):  # a step that brings its own program (program_runs.ProgramStep)
        return step.run_on(rank)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    failed = (Exception, CheckpointException)  # CheckpointException is a BaseException
    if isinstance(step, SaveStep):
        try:
            dcp.save(
                torch_state_dict(step.layouts, rank, meshes),
                planner=step.planner() if step.planner is not None else None,
                # as users call it: a checkpoint_id would reset the HF writer's path and put
                # a consolidating writer's shards beside the consolidated files, not in sharded/
                checkpoint_id=step.path if step.storage == "fs" else None,
                storage_writer=_storage_writer(step.storage, step.path, step.layouts),
            )
            return None
        except failed as e:
            return exception_text(e)
    sd = torch_state_dict(step.layouts, rank, meshes, step.fill)
    make = step.planner if step.planner is not None else dcp.DefaultLoadPlanner
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # kept, and only the checked planner's reported
            dcp.load(
                sd,
                checkpoint_id=step.path,
                planner=make(allow_partial_load=step.allow_partial_load),
                storage_reader=(
                    dcp.HuggingFaceStorageReader(step.path) if step.storage == "hf" else None
                ),
            )
    except failed as e:
        return RankLoad(rank, error=exception_text(e))
    said = tuple(str(w.message) for w in caught if w.category.__name__ == "CheckedPlanWarning")
    saved = _saved_dtypes(step.path)
    vals, exp = {}, {}
    for fqn, lay in step.layouts.items():
        if fqn in sd:
            vals[fqn], exp[fqn] = _loaded(fqn, lay, rank, sd[fqn], saved.get(fqn))
    return RankLoad(rank, vals, exp, warnings=said)


def _worker(rank, world_size, port, sock, steps, out_dir, timeout, environ):
    # the launcher's environment as it is now (a forkserver's children inherit the server's,
    # taken when it started), then the process rules'
    os.environ.clear()
    os.environ.update(environ)
    os.environ.update(
        GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1"
    )
    out = Path(out_dir) / f"rank{rank}.pkl"
    results: list = []
    try:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        warnings.filterwarnings("ignore")
        torch.set_num_threads(1)
        td = timedelta(seconds=timeout)
        store = dist.TCPStore(
            "127.0.0.1",
            port,
            world_size,
            is_master=rank == 0,
            timeout=td,
            master_listen_fd=sock.fileno() if rank == 0 else None,
            # torch's own switch (USE_LIBUV=0): before 2.6 the libuv store cannot take a
            # listen fd, and TCPStore itself does not read the variable
            **({"use_libuv": False} if os.environ.get("USE_LIBUV") == "0" else {}),
        )
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=td)
        try:
            meshes = Meshes()
            for step in steps:
                results.append(_run_step(step, rank, meshes))
                out.write_bytes(pickle.dumps(("ok", results)))
            dist.barrier()  # an ordered shutdown: nobody leaves while others still talk
        finally:
            dist.destroy_process_group()
    except BaseException:  # report, never hang the launcher
        out.write_bytes(pickle.dumps(("crash", traceback.format_exc())))


# What every rank imports, imported once by the forkserver: each rank of every later run starts
# as a fork of it, in milliseconds, instead of a fresh interpreter importing torch (seconds of
# CPU per rank, the bulk of a small run's time on a 2-core machine).
_PRELOAD = [
    "torch",
    "torch.distributed",
    "torch.distributed.checkpoint",
    "torch.distributed.tensor",
    "numpy",
    "workbench.torch_bridge.runs",
    "workbench.torch_bridge.materialize",
]


def _context():
    """The multiprocessing context of the ranks: forkserver preloaded with `_PRELOAD` (the server
    is a fresh interpreter, so no thread or lock of this process is forked), spawn where the
    platform has no forkserver. Both give every rank a clean process."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # used when this process starts its server, once
    return ctx


def run_steps(
    steps: Sequence[SaveStep | LoadStep | CallStep],
    world_size: int,
    *,
    time_limit: float = 90.0,
    timeout: float = 30.0,
) -> list:
    """Run ``steps`` in order on ``world_size`` fresh processes over gloo; returns one result per
    step (`SaveRun` / `LoadRun`; a step with a ``run_on(rank)`` method, e.g.
    `program_runs.ProgramStep` or a `CallStep`, gives the tuple of its ranks' results). Raises RuntimeError when a rank crashes or the launch exceeds
    ``time_limit`` seconds (stragglers are killed first: no process outlives the call)."""
    require_torch("real dcp.save / dcp.load runs (workbench.torch_bridge.runs)")

    if not 1 <= world_size <= MAX_WORLD_SIZE:
        raise PlanError(
            None,
            f"world size {world_size} for a real run",
            f"1 <= world_size <= {MAX_WORLD_SIZE}",
            "Real runs are small by design; plan larger worlds with plan_save.",
        )
    for s in steps:
        for fqn, lay in getattr(s, "layouts", {}).items():
            if lay.world_size != world_size:
                raise PlanError(
                    fqn,
                    f"layout for world size {lay.world_size} in a run of {world_size} processes",
                    "one world size per run",
                    "Build the layouts with world_size equal to the run's.",
                )
    steps = [
        replace(s, path=str(Path(s.path).resolve())) if isinstance(s, (SaveStep, LoadStep)) else s
        for s in steps
    ]
    ctx = _context()
    out_dir = tempfile.mkdtemp(prefix="wb_run_")
    # Megatron-Core's writer starts worker processes of its own, which a daemonic process may
    # not: CallStep runs use ordinary processes (the finally below still kills stragglers).
    daemon = not any(isinstance(s, CallStep) for s in steps)
    procs = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen(world_size * 4)
            port = sock.getsockname()[1]
            for r in range(world_size):
                p = ctx.Process(
                    target=_worker,
                    args=(
                        r,
                        world_size,
                        port,
                        sock if r == 0 else None,
                        steps,
                        out_dir,
                        timeout,
                        dict(os.environ),
                    ),
                    daemon=daemon,
                )
                p.start()
                procs.append(p)
        deadline = time.monotonic() + time_limit
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        late = [r for r, p in enumerate(procs) if p.is_alive()]
        reports = []
        for r in range(world_size):
            f = Path(out_dir) / f"rank{r}.pkl"
            reports.append(pickle.loads(f.read_bytes()) if f.exists() else ("missing", None))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        shutil.rmtree(out_dir, ignore_errors=True)
    for r, (status, payload) in enumerate(reports):
        if status == "crash":
            raise RuntimeError(f"rank {r} of the real run crashed:\n{payload}")
    if late:
        raise RuntimeError(
            f"real run of {world_size} processes exceeded {time_limit} s; ranks {late} were killed"
        )
    per_rank = [payload for _, payload in reports]
    if any(p is None or len(p) != len(steps) for p in per_rank):
        raise RuntimeError("a rank of the real run exited without reporting every step")
    out = []
    for i, s in enumerate(steps):
        got = [per_rank[r][i] for r in range(world_size)]
        if isinstance(s, SaveStep):
            out.append(SaveRun(s.path, world_size, tuple(got)))
        elif isinstance(s, LoadStep):
            out.append(LoadRun(s.path, world_size, tuple(got), s.fill))
        else:  # a step with its own program: its per-rank results as they are
            out.append(tuple(got))
    return out


def run_save(path, layouts: Mapping[str, Layout], world_size: int | None = None, **kw) -> SaveRun:
    """A real ``dcp.save`` of ``layouts`` by ``world_size`` processes (default: the layouts')."""
    ws = world_size or next(iter(layouts.values())).world_size
    return run_steps([SaveStep(str(path), dict(layouts))], ws, **kw)[0]


def run_load(
    path,
    layouts: Mapping[str, Layout],
    world_size: int | None = None,
    *,
    allow_partial_load: bool = False,
    **kw,
) -> LoadRun:
    """A real ``dcp.load`` into ``layouts``; returns every rank's loaded and expected values or
    its exception text (`LoadRun.mismatches`, `LoadRun.errors`)."""
    ws = world_size or next(iter(layouts.values())).world_size
    return run_steps([LoadStep(str(path), dict(layouts), allow_partial_load)], ws, **kw)[0]


# ----------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Scenario:
    """A checkpoint made for a demo: what was saved, what to load it into, what goes wrong."""

    kind: str
    path: str
    save_layouts: dict
    load_layouts: dict
    effect: str

    @property
    def save_world_size(self) -> int:
        return next(iter(self.save_layouts.values())).world_size

    @property
    def load_world_size(self) -> int:
        return next(iter(self.load_layouts.values())).world_size


def _fsdp(ws=2):
    return {
        "w": dtensor_layout((8, 6), (ws,), "S(0)", world_size=ws),
        "b": dtensor_layout((6,), (ws,), "S(0)", world_size=ws),
        "step": bytes_layout(ws),
    }


def _specs():
    def w(pl, dtype="float32", shape=(8, 6)):
        return dtensor_layout(shape, (2,), pl, dtype)

    per_rank = {
        f"dataloader.dp_rank_{r}": bytes_layout(2, ranks=[r], per_rank_values=True)
        for r in range(2)
    }
    return {
        "fsdp": (
            _fsdp(),
            {"w": w("S(1)"), "b": dtensor_layout((6,), (2,), "R"), "step": bytes_layout(2)},
            "a clean FSDP-style checkpoint; resharded to S(1) / R it loads exactly",
        ),
        "hole": (
            _fsdp(),
            _fsdp(),
            "metadata edited to drop w's chunk [4:8, 0:6]: rank 1 keeps its stale values, no error",
        ),
        "strided": (
            {"w": w("S(0)")},
            {"w": w("SS(0,2)")},
            "a _StridedShard destination reads the rows of its box, not the rows it "
            "holds: wrong values, no error",
        ),
        "dtype": (
            {"w": w("S(0)")},
            {"w": w("S(0)", "int32")},
            "float32 saved, int32 loaded: silently cast (x.25 -> x)",
        ),
        "size": (
            {"w": w("S(0)")},
            {"w": w("S(0)", shape=(8, 4))},
            "Size mismatch between saved torch.Size([8, 6]) and current: torch.Size([8, 4]) for w",
        ),
        "dedup": (
            {"t": tensor_layout((4,), 2, per_rank_values=True)},
            {"t": tensor_layout((4,), 2, per_rank_values=True)},
            "each rank saved its own plain tensor under one key; dedup kept one copy and "
            "the other rank loads it",
        ),
        "missing_key": (
            {"w": w("S(0)")},
            {"w": w("S(0)"), "extra": w("S(0)")},
            "Missing key in checkpoint state_dict: extra.",
        ),
        "bytes_world": (
            per_rank,
            {
                f"dataloader.dp_rank_{r}": bytes_layout(4, ranks=[r], per_rank_values=True)
                for r in range(4)
            },
            "per-rank bytes saved by 2 ranks, loaded by 4: Missing key in checkpoint "
            "state_dict: dataloader.dp_rank_2. (rank 2; rank 3: dp_rank_3)",
        ),
    }


SCENARIO_KINDS = tuple(_specs())


def _drop_chunk(path, fqn, position):
    """Rewrite ``.metadata`` without chunk ``position`` of ``fqn`` (and its storage entry), with
    torch's own pickle, as a hand-edited checkpoint would be."""
    import torch.distributed.checkpoint as dcp

    md = dcp.FileSystemReader(path).read_metadata()  # our own file: trusted
    chunk = md.state_dict_metadata[fqn].chunks.pop(position)
    md.storage_data = {
        k: v
        for k, v in md.storage_data.items()
        if not (k.fqn == fqn and tuple(k.offset) == tuple(chunk.offsets))
    }
    md.storage_meta.load_id = None
    with open(Path(path) / ".metadata", "wb") as f:
        pickle.dump(md, f)


def _by_world_size(scenarios: Mapping[str, Scenario], side: str) -> dict[int, list[Scenario]]:
    """Scenarios grouped by their ``side`` ("save" / "load") world size: one launch each."""
    groups: dict[int, list[Scenario]] = {}
    for sc in scenarios.values():
        groups.setdefault(getattr(sc, f"{side}_world_size"), []).append(sc)
    return groups


def _make(scenarios: Mapping[str, Scenario], **kw) -> dict[str, Scenario]:
    for ws, scs in _by_world_size(scenarios, "save").items():
        runs = run_steps([SaveStep(sc.path, sc.save_layouts) for sc in scs], ws, **kw)
        for sc, run in zip(scs, runs):
            if not run.ok:
                raise RuntimeError(f"saving the {sc.kind!r} checkpoint failed: {run.errors}")
    if "hole" in scenarios:
        _drop_chunk(scenarios["hole"].path, "w", 1)
    return dict(scenarios)


def _scenario(kind: str, path) -> Scenario:
    specs = _specs()
    if kind not in specs:
        raise PlanError(
            None,
            f"unknown checkpoint kind {kind!r}",
            "one of " + ", ".join(SCENARIO_KINDS),
            "Pick a kind from SCENARIO_KINDS.",
        )
    return Scenario(kind, str(Path(path).resolve()), *specs[kind])


def make_checkpoints(kinds: Sequence[str], root, **kw) -> dict[str, Scenario]:
    """Make one checkpoint per kind under ``root/<kind>`` with real saves (one launch per save
    world size) and return the `Scenario`s. Kinds: see `SCENARIO_KINDS`."""
    return _make({k: _scenario(k, Path(root) / k) for k in kinds}, **kw)


def make_checkpoint(kind: str, path, **kw) -> Scenario:
    """Make one checkpoint of ``kind`` at ``path`` (see `SCENARIO_KINDS`)."""
    return _make({kind: _scenario(kind, path)}, **kw)[kind]


def load_scenarios(scenarios: Mapping[str, Scenario], **kw) -> dict[str, LoadRun]:
    """Load every scenario into its ``load_layouts`` (one launch per load world size)."""
    out = {}
    for ws, scs in _by_world_size(scenarios, "load").items():
        for sc, run in zip(
            scs, run_steps([LoadStep(sc.path, sc.load_layouts) for sc in scs], ws, **kw)
        ):
            out[sc.kind] = run
    return out
