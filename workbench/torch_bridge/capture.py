"""Capture a user's own training program as a target: `capture(build, world_size)` runs the user's
``build()`` (model + parallelize, optionally an optimizer) as rank r of a ``world_size``-rank job
under torch's ``fake`` process group and reads exactly what ``dcp.save`` / ``dcp.load`` would
see on that rank, then turns it into ``{fqn: Layout}`` for every rank of the world.

What a rank sees is taken from torch itself: the state dict goes through ``dcp.save``'s own steps
(``_stateful_to_state_dict``, then ``DefaultSavePlanner.set_up_planner``'s flattening), and
``create_local_plan`` gives the chunks DCP records for the rank (``__create_chunk_list__`` of its
DTensors, the whole box of plain tensors, BYTE_IO items). A DTensor's layout on every rank
follows from one rank's placements and mesh (its global ranks: a pipeline stage's submesh stays
a submesh), so only a few ranks are run: rank 0, then the lowest rank that no run rank's meshes
cover (the next pipeline stage), and per group one witness rank (the group's highest) whose view
must equal the one derived for it; if it differs (per-rank keys, a rank-dependent program) every
rank of the group is run. Every run rank's torch local save plan and real local tensor shapes
are checked against the derived layouts.

Data as held: ``fully_shard`` on a DTensor (FSDP2 + TP / EP) keeps placements
``[_StridedShard(d, k), ...]`` whose left-to-right meaning is not its data; the parameters it
manages are read from FSDP2's own state (``FSDPParam``: its mesh, its shard dim) and their layout
carries FSDP2's real rows (`sharding.with_fsdp2_rows`), where they differ from the placements.

Each rank runs in a forked child process in its own session: a ``build`` that hangs is killed
with everything it started at ``time_limit``, and a ``build`` that raises, needs a GPU or needs
data gives one `CaptureError` naming the function and the rank. Harness layer of
``torch_bridge``: torch is imported inside functions only.

Lazy imports: torch (and the torch-bridge modules that need it) inside functions, so that
importing the package needs no torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import importlib
import os
import pickle
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import CaptureError, WorkbenchError
from ..records import WriteItemType, canonical_dtype
from ..sharding import (
    Layout,
    Placement,
    bytes_layout,
    dtensor_layout,
    tensor_layout,
    with_fsdp2_rows,
)

__all__ = [
    "capture",
    "CapturedTarget",
    "RankEntry",
    "RankView",
    "FsdpParam",
    "run_rank",
    "state_dict_of",
    "build_name",
    "fresh_dtensor_caches",
    "check_view",
    "preload_torch",
]

_DIGEST_LIMIT = 1 << 26  # tensors up to 64 MiB are hashed to tell per-rank values apart


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class RankEntry:
    """One flattened state-dict entry as one rank holds it. ``kind``: ``dtensor`` / ``tensor`` /
    ``sharded`` / ``bytes``; DTensor: global ``shape``, ``mesh_shape``, ``mesh_ranks`` (global,
    row-major), ``placements``, ``local_shape`` (the real local tensor's); ``digest``: a hash of
    the values (plain tensors off the meta device, bytes entries) to tell per-rank values apart;
    ``layout``: a ShardedTensor's global layout; ``slices``: every slice of the DTensor mesh's
    root mesh along the same dims (``mesh["dp"]`` of a ``(dp, ep)`` mesh: one per ep index),
    the ranks of each in row-major order."""

    fqn: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    mesh_shape: tuple[int, ...] | None = None
    mesh_ranks: tuple[int, ...] | None = None
    placements: tuple[Placement, ...] | None = None
    local_shape: tuple[int, ...] | None = None
    digest: str | None = None
    layout: Layout | None = None
    slices: tuple[tuple[int, ...], ...] | None = None

    def spec(self) -> tuple:
        """What must be equal on every rank holding the entry (not the values, the local part,
        or which slice of the root mesh the rank's DTensor mesh is)."""
        if self.kind == "sharded":
            return (self.kind, self.shape, self.dtype, self.layout.rank_chunks)
        return (self.kind, self.shape, self.dtype, self.mesh_shape, self.placements)


@dataclass(frozen=True, slots=True)
class FsdpParam:
    """A parameter ``fully_shard`` manages as a DTensor of other placements (TP, EP): its sharded
    DTensor's spec, the mesh dim FSDP2 shards over and the tensor dim it shards."""

    shape: tuple[int, ...]
    mesh_shape: tuple[int, ...]
    mesh_ranks: tuple[int, ...]
    placements: tuple[Placement, ...]
    dp_mesh_dim: int
    shard_dim: int

    def key(self) -> tuple:
        return (self.shape, self.mesh_shape, self.placements)


@dataclass(frozen=True)
class RankView:
    """What ``dcp.save`` sees on one rank: the entries in state-dict order, FSDP2's parameters,
    torch's own local save plan items (``DefaultSavePlanner.create_local_plan``) and the
    seconds ``build()`` took."""

    rank: int
    entries: tuple[RankEntry, ...]
    fsdp: tuple[FsdpParam, ...]
    items: tuple
    seconds: float

    def keys(self) -> list[str]:
        return [e.fqn for e in self.entries]

    def group(self) -> set[int]:
        """Ranks this view stands for: the rank and every rank of its DTensors' meshes and its
        ShardedTensors' holders."""
        out = {self.rank}
        for e in self.entries:
            if e.kind == "dtensor":
                out.update(e.mesh_ranks)
            elif e.kind == "sharded":
                out.update(e.layout.holders())
        return out


class CapturedTarget(dict):
    """``{fqn: Layout}`` captured from a ``build()``, plus how: ``build`` (its name),
    ``world_size``, ``ranks_run`` (the ranks really run under the fake group), ``represented_by``
    (per world rank, the run rank whose view stands for it) and ``seconds``."""

    def __init__(self, layouts, *, build, world_size, ranks_run, represented_by, seconds):
        super().__init__(layouts)
        self.build = build
        self.world_size = world_size
        self.ranks_run = tuple(ranks_run)
        self.represented_by = tuple(represented_by)
        self.seconds = seconds

    def describe(self) -> str:
        kinds = {}
        for lay in self.values():
            kinds[lay.kind] = kinds.get(lay.kind, 0) + 1
        what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return (
            f"{self.build} on {self.world_size} ranks: {len(self)} entries ({what}); "
            f"ran ranks {list(self.ranks_run)} in {self.seconds:.1f} s"
        )

    def __repr__(self) -> str:
        return f"CapturedTarget({self.describe()})"


# ----------------------------------------------------------------------------- one rank (child)
def build_name(build) -> str:
    """How errors name ``build``: ``module.qualname``, or the ``module:function`` text."""
    if isinstance(build, str):
        return build
    if isinstance(build, functools.partial):
        return build_name(build.func)
    mod = getattr(build, "__module__", None) or "?"
    return f"{mod}.{getattr(build, '__qualname__', type(build).__name__)}"


def _resolve(build) -> Callable:
    """The callable for ``build`` (a callable, or ``"module:function"`` imported here, in the
    child, so an import that hangs is under the time limit too)."""
    if callable(build):
        return build
    mod, _, attr = str(build).partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` would: the user's module beside them
        sys.path.insert(0, os.getcwd())
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{build} is a {type(obj).__name__}, not a function")
    return obj


def _dtype(dt) -> str:
    return canonical_dtype(str(dt))


def _digest_tensor(t) -> str | None:
    import torch

    if t.is_meta or t.numel() * t.element_size() > _DIGEST_LIMIT:
        return None
    raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha1(raw).hexdigest()


def _digest_object(v) -> str:
    import io

    if isinstance(v, io.BytesIO):
        raw = v.getvalue()
    else:
        try:
            raw = pickle.dumps(v)
        except Exception:  # an unpicklable object: torch.save would fail too; compare reprs
            raw = repr(v).encode()
    return hashlib.sha1(raw).hexdigest()


def _entry(fqn: str, v, slices: dict | None = None) -> RankEntry:
    import torch
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    from ..sharding import as_placement
    from .convert import layout_from_torch

    if isinstance(v, DTensor):
        mesh = v.device_mesh
        return RankEntry(
            fqn,
            "dtensor",
            tuple(v.shape),
            _dtype(v.dtype),
            mesh_shape=tuple(mesh.shape),
            mesh_ranks=_ranks(mesh) if slices is None else _memo(slices, ("r", mesh), _ranks),
            placements=tuple(as_placement(p) for p in v.placements),
            local_shape=tuple(v._local_tensor.shape),
            slices=_slices(mesh) if slices is None else _memo(slices, mesh, _slices),
        )
    if isinstance(v, ShardedTensor):
        lay = layout_from_torch(v)
        return RankEntry(fqn, "sharded", lay.shape, lay.dtype, layout=lay)
    if isinstance(v, torch.Tensor):
        return RankEntry(fqn, "tensor", tuple(v.shape), _dtype(v.dtype), digest=_digest_tensor(v))
    return RankEntry(fqn, "bytes", (), "uint8", digest=_digest_object(v))


def _memo(cache: dict, obj, fn):
    """``fn(mesh)`` once per mesh object (``obj``: a mesh, or ``(tag, mesh)``)."""
    mesh = obj[1] if isinstance(obj, tuple) else obj
    key = (obj[0], id(mesh)) if isinstance(obj, tuple) else id(mesh)
    if key not in cache:
        cache[key] = (mesh, fn(mesh))  # the mesh kept alive so its id is not reused
    return cache[key][1]


def _ranks(mesh) -> tuple[int, ...]:
    return tuple(int(r) for r in mesh.mesh.flatten().tolist())


def _slices(mesh) -> tuple[tuple[int, ...], ...]:
    """Every slice of ``mesh``'s root mesh along ``mesh``'s dims (by name), ``mesh`` among them;
    just ``mesh`` when it is the root or not a plain slice of it (flattened dims)."""
    own = tuple(int(r) for r in mesh.mesh.flatten().tolist())
    get_root = getattr(mesh, "_get_root_mesh", None)
    root = get_root() if callable(get_root) else None
    names = mesh.mesh_dim_names
    root_names = getattr(root, "mesh_dim_names", None)
    if root is None or root is mesh or not names or not root_names:
        return (own,)
    if any(n not in root_names for n in names):
        return (own,)
    dims = [root_names.index(n) for n in names]
    rest = [d for d in range(root.mesh.ndim) if d not in dims]
    arr = root.mesh.permute(*rest, *dims).reshape(-1, *[root.mesh.shape[d] for d in dims])
    out = tuple(tuple(int(r) for r in a.flatten().tolist()) for a in arr)
    return out if own in out else (own,)


def _entries(flat) -> tuple[RankEntry, ...]:
    slices: dict[int, tuple] = {}  # per mesh object: many tensors share a few meshes
    return tuple(_entry(k, v, slices) for k, v in flat.items())


def _fsdp_param(fp, cache: dict) -> FsdpParam | None:
    """What FSDP2 did to one parameter, from its ``FSDPParam`` (torch 2.13's
    ``_fsdp_param.py``): only DTensor parameters (TP / EP before FSDP) sharded over one mesh
    dim; plain parameters' data is what their placements say."""
    from ..sharding import as_placement

    info = fp.mesh_info
    if not getattr(fp, "is_dtensor", False) or not hasattr(info, "shard_mesh_size"):
        return None
    spmd = tuple(fp._spmd_placements)
    if getattr(info, "is_spmd_mesh", False):
        names = info.dp_mesh_dims.shard_names
        if len(names) != 1:  # several dp dims flattened into one: not modelled
            return None
        dp = tuple(fp._spmd_mesh.mesh_dim_names).index(names[0])
    else:  # (replicate,) + (fsdp, *tp_placements), see _init_sharding_spec_tp
        dp = len(spmd) - len(fp._unsharded_dtensor_spec.placements) - 1
    p = fp.sharded_param
    return FsdpParam(
        tuple(p.shape),
        tuple(p.device_mesh.shape),
        _memo(cache, ("r", p.device_mesh), _ranks),
        tuple(as_placement(x) for x in p.placements),
        dp,
        int(fp.fsdp_placement.dim),
    )


def _fsdp_params(modules) -> tuple[FsdpParam, ...]:
    out, seen, cache = [], set(), {}
    for root in modules:
        for m in root.modules():
            get = getattr(m, "_get_fsdp_state", None)
            group = getattr(get(), "_fsdp_param_group", None) if callable(get) else None
            for fp in getattr(group, "fsdp_params", ()) or ():
                p = fp.sharded_param  # one spec per (shape, mesh, placements), read once
                key = (tuple(p.shape), id(p.device_mesh), tuple(p.placements))
                if key in seen:
                    continue
                seen.add(key)
                spec = _fsdp_param(fp, cache)
                if spec is not None:
                    out.append(spec)
    return tuple(out)


def state_dict_of(out, name: str, rank: int):
    """(the state dict given to ``dcp.save``, the modules in it) for what ``build()`` returned."""
    from torch import nn
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict
    from torch.optim import Optimizer

    if isinstance(out, nn.Module):
        return get_model_state_dict(out), [out]
    if (
        isinstance(out, (tuple, list))
        and len(out) == 2
        and isinstance(out[0], nn.Module)
        and isinstance(out[1], Optimizer)
    ):
        model_sd, optim_sd = get_state_dict(out[0], out[1])
        return {"model": model_sd, "optim": optim_sd}, [out[0]]
    if isinstance(out, (tuple, list)) and out and all(isinstance(m, nn.Module) for m in out):
        sd = {}
        for m in out:  # this rank's pipeline stages, as torchtitan's ModelWrapper merges them
            sd.update(get_model_state_dict(m))
        return sd, list(out)
    if isinstance(out, Mapping):
        return dict(out), [v for v in out.values() if isinstance(v, nn.Module)]
    raise CaptureError(
        name,
        f"returned a {type(out).__name__} on rank {rank}",
        "an nn.Module, (model, optimizer), a list of pipeline-stage modules, or the state dict "
        "it gives dcp.save",
        "Return the parallelised model (and its optimizer).",
        rank=rank,
    )


def fresh_dtensor_caches() -> None:
    """Clear torch.distributed's memo caches. DTensor's sharding propagation caches key on specs
    whose DeviceMesh compares equal whatever the current rank, so a process that was another
    rank before (the parent's own fake-group work, an earlier `run_rank`) hands back meshes of
    that rank: a parameter of rank 2 then reports rank 0's coordinate (seen with torch 2.13)."""
    from torch.distributed.tensor import _redistribute
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache

    _clear_sharding_prop_cache()  # the Python lru_caches and the C++ fast path's
    _redistribute._gen_transform_infos.cache_clear()
    _redistribute.clear_redistribute_planner_cache()


@contextlib.contextmanager
def _memoized_chunks():
    """torch's ``create_local_plan`` as it is, with its ``compute_local_shape_and_global_offset``
    (a pure function of the global shape, the mesh and the placements on this rank) computed
    once per distinct triple: a Llama-70B has 723 DTensors but about ten distinct triples, and
    each costs milliseconds at 1024 ranks."""
    from torch.distributed.checkpoint import planner_helpers

    original = planner_helpers.compute_local_shape_and_global_offset
    memo: dict = {}

    def memoized(shape, mesh, placements, *a, **kw):
        if a or kw:
            return original(shape, mesh, placements, *a, **kw)
        key = (tuple(shape), id(mesh), tuple(placements))
        if key not in memo:
            memo[key] = (mesh, original(shape, mesh, placements))  # mesh kept: ids not reused
        return memo[key][1]

    planner_helpers.compute_local_shape_and_global_offset = memoized
    try:
        yield
    finally:
        planner_helpers.compute_local_shape_and_global_offset = original


def run_rank(build, rank: int, world_size: int) -> RankView:
    """Run ``build()`` as ``rank`` of ``world_size`` under torch's ``fake`` process group in
    this process and read what ``dcp.save`` would see (used by `capture` in a child process;
    callable directly, e.g. under a debugger)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.state_dict_saver import _stateful_to_state_dict
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from .convert import from_torch

    name = build_name(build)
    if dist.is_initialized():
        raise CaptureError(
            name,
            "a process group is already initialised in this process",
            "no default process group",
            "Capture outside a distributed job.",
        )
    fn = _Phase("importing the build function", _resolve)(build)
    fresh_dtensor_caches()
    hook = sys.excepthook  # init_process_group wraps it for good ("[rank0]: ..." tracebacks)
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fake group's and FSDP's meta-device warnings
            t0 = time.perf_counter()
            out = _Phase("build()", fn)()
            seconds = time.perf_counter() - t0
            sd, modules = _Phase("reading its state dict", state_dict_of)(out, name, rank)
            planner = DefaultSavePlanner()
            _Phase("dcp.save's set-up", planner.set_up_planner)(
                _stateful_to_state_dict(sd), is_coordinator=rank == 0
            )
            with _memoized_chunks():
                plan = _Phase("dcp.save's local plan", planner.create_local_plan)()
            entries = _Phase("reading its state dict", _entries)(planner.state_dict)
            return RankView(
                rank, entries, _fsdp_params(modules), tuple(from_torch(plan.items)), seconds
            )
    finally:
        dist.destroy_process_group()
        sys.excepthook = hook


class _Phase:
    """Call ``fn`` and tag an exception with the phase it came from (for the error message)."""

    def __init__(self, phase: str, fn):
        self.phase, self.fn = phase, fn

    def __call__(self, *a, **kw):
        try:
            return self.fn(*a, **kw)
        except CaptureError:
            raise
        except BaseException as e:
            e._wb_phase = self.phase
            raise


def _where(e: BaseException) -> str:
    """The innermost frame of the user's code (not torch's, not ours) in the traceback."""
    frames = traceback.extract_tb(e.__traceback__)
    here = os.path.dirname(os.path.dirname(__file__))
    user = [
        f
        for f in frames
        if not f.filename.startswith(here)
        and f"{os.sep}torch{os.sep}" not in f.filename
        and f"{os.sep}multiprocessing{os.sep}" not in f.filename
    ]
    f = (user or frames or [None])[-1]
    return "" if f is None else f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}"


def _child(build, rank, world_size, conn) -> None:
    os.setsid()  # its own process group: killed whole (with anything build started) on timeout
    try:
        import torch

        torch.set_num_threads(1)  # ranks run side by side on few cores
        try:
            msg = ("ok", run_rank(build, rank, world_size))
        except CaptureError as e:
            msg = ("capture", e.fqn, e.what, e.expectation, e.fix)
        except BaseException as e:  # SystemExit, KeyboardInterrupt too: reported, not hung on
            text = f"{type(e).__name__}: {e}".strip()
            msg = ("error", text[:600], getattr(e, "_wb_phase", "build()"), _where(e))
        conn.send(msg)
    except BaseException:  # the pipe is gone: the parent has given up on this rank
        pass
    finally:
        conn.close()


# ----------------------------------------------------------------------------- parent
def _fix(text: str) -> str:
    low = text.lower()
    if "cuda" in low or "nccl" in low or "gpu" in low:
        return (
            "capture runs without GPUs, under torch's fake process group: create the mesh with "
            "init_device_mesh('cpu', ...) and the model under torch.device('meta') (e.g. take "
            "the device type from an environment variable)."
        )
    if "meta" in low or "item()" in low or "filenotfound" in low:
        return (
            "build() must not need real data: build the model under torch.device('meta') and "
            "parallelise it without loading weights, reading files or inspecting values."
        )
    return (
        "Fix build() so it runs on a CPU-only machine under torch's fake process group; "
        "workbench.torch_bridge.capture.run_rank(build, rank, world_size) reproduces it here "
        "with the full traceback."
    )


def _error(name: str, rank: int, world_size: int, msg) -> CaptureError:
    kind = msg[0]
    if kind == "capture":
        return CaptureError(*msg[1:], rank=rank)
    if kind == "timeout":
        return CaptureError(
            name,
            f"did not return on rank {rank} of {world_size} within {msg[1]:g} s and was killed "
            "with every process it started",
            "a build that needs no data, no network and no real collectives",
            "Look for a wait on input, a file or a network peer; raise time_limit= if the model "
            "is only large.",
            rank=rank,
        )
    if kind == "died":
        return CaptureError(
            name,
            f"exited with status {msg[1]} on rank {rank} of {world_size} without reporting",
            "a build that returns",
            "Do not call sys.exit / os._exit in build(); a crash of the interpreter shows in "
            "the output above.",
            rank=rank,
        )
    _, text, phase, where = msg
    at = f" at {where}" if where else ""
    return CaptureError(
        name,
        f"{phase} raised on rank {rank} of {world_size}{at}: {text}",
        "a build that runs on the CPU or the meta device under torch's fake process group",
        _fix(text),
        rank=rank,
        error=text,
    )


_WARM = []  # set once this process has run the warm-up build


def preload_torch() -> None:
    """Import and warm up in the parent what builds use, so every forked rank has it already:
    torch's first ``fully_shard`` / ``parallelize_module`` / DCP planning in a process costs
    about 1.5 s of lazy imports and registrations, a fork a few milliseconds. The warm-up is a
    two-layer model on a 2 x 2 fake mesh; the children clear the DTensor caches it leaves
    (`fresh_dtensor_caches`)."""
    if _WARM:
        return
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    from . import convert, fake_pg  # noqa: F401

    if dist.is_initialized():  # inside a job: only the imports
        return

    def warm():
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        with torch.device("meta"):
            model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 4))
        parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "1": RowwiseParallel()})
        fully_shard(model, mesh=mesh["dp"])
        return model, torch.optim.AdamW(model.parameters())

    run_rank(warm, 0, 4)
    fresh_dtensor_caches()
    _WARM.append(True)


def _kill(proc) -> None:
    if proc.is_alive():
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and whatever build started
        except (ProcessLookupError, PermissionError):
            proc.kill()  # killed before its setsid: only itself exists
    proc.join()


def _run_ranks(build, name, ranks, world_size, time_limit, workers, progress) -> dict:
    """Run ``ranks`` in forked children, ``workers`` at a time; {rank: RankView}. The first
    failure (lowest rank) raises `CaptureError` after every child is killed and reaped."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("fork")
    queue = sorted(ranks)
    running: dict = {}  # conn -> (rank, proc, deadline)
    done, failed = {}, {}
    bar = None
    if progress or (progress is None and len(queue) > 4):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(queue), desc=f"capture {name}", unit="rank")
    try:
        while queue or running:
            while queue and len(running) < workers and not failed:
                r = queue.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_child, args=(build, r, world_size, child), daemon=True)
                p.start()
                child.close()
                running[parent] = (r, p, time.monotonic() + time_limit)
            if not running:
                break
            now = time.monotonic()
            timeout = max(0.0, min(d for _, _, d in running.values()) - now)
            for conn in wait(list(running), timeout):
                r, p, _ = running.pop(conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    p.join(5)
                    msg = ("died", p.exitcode)
                conn.close()
                _kill(p)
                if msg[0] == "ok":
                    done[r] = msg[1]
                else:
                    failed[r] = msg
                if bar is not None:
                    bar.update()
            now = time.monotonic()
            for conn, (r, p, deadline) in list(running.items()):
                if now >= deadline:
                    running.pop(conn)
                    _kill(p)
                    conn.close()
                    failed[r] = ("timeout", time_limit)
            if failed:
                queue.clear()
                for conn, (_, p, _) in list(running.items()):
                    _kill(p)
                    conn.close()
                running.clear()
    finally:
        for conn, (_, p, _) in running.items():
            _kill(p)
            conn.close()
        if bar is not None:
            bar.close()
    if failed:
        r = min(failed)
        raise _error(name, r, world_size, failed[r])
    return done


def _representatives(views: Mapping[int, RankView], world_size: int) -> dict[int, int]:
    """world rank -> the run rank standing for it: itself when run, else the lowest run rank
    whose meshes hold it; ranks in no run rank's meshes are left out (they must be run)."""
    rep = {q: q for q in views}
    for q in sorted(views):
        for r in views[q].group():
            if 0 <= r < world_size:
                rep.setdefault(r, q)
    return rep


def _agrees(witness: RankView, leader: RankView) -> bool:
    """Whether ``witness`` holds what was derived for it from ``leader``: the same keys in the
    same order, each with the same global spec (values may differ: per-rank values)."""
    a, b = witness.entries, leader.entries
    return len(a) == len(b) and all(x.fqn == y.fqn and x.spec() == y.spec() for x, y in zip(a, b))


def _plan_ranks(build, name, world_size, ranks, time_limit, workers, progress):
    """Run as few ranks as the program needs (see the module docstring); {rank: RankView} and
    the representative of every world rank."""
    views: dict[int, RankView] = {}
    pending = {0} | set(ranks)
    witnessed: dict[int, int] = {}  # leader -> its witness
    exhaustive: set[int] = set()
    while pending:
        views.update(_run_ranks(build, name, pending, world_size, time_limit, workers, progress))
        rep = _representatives(views, world_size)
        pending = set()
        for leader, w in witnessed.items():
            if w in views and leader not in exhaustive and not _agrees(views[w], views[leader]):
                # the program differs per rank: run every rank the leader stood for
                exhaustive.add(leader)
                pending |= {r for r, q in rep.items() if q == leader and r not in views}
        uncovered = [r for r in range(world_size) if r not in rep]
        if uncovered:
            pending.add(uncovered[0])
        for q in sorted(views):
            members = [r for r, s in rep.items() if s == q]
            if q not in witnessed and len(members) > 1:
                witnessed[q] = max(members)
                if witnessed[q] not in views:
                    pending.add(witnessed[q])
        pending -= set(views)
    return views, _representatives(views, world_size)


def _merged_keys(views: Sequence[RankView]) -> list[str]:
    """Every fqn once, in an order that keeps each view's own order (a topological order of
    the views' consecutive keys, ties by first appearance), so every rank's entries come in
    its state-dict order, as torch plans them. Views that order two keys differently cannot
    all be kept; their keys follow by first appearance (and the plan check reports it)."""
    first: dict[str, int] = {}
    after: dict[str, set[str]] = {}
    needs: dict[str, int] = {}
    for v in views:
        keys = v.keys()
        for k in keys:
            if k not in first:
                first[k] = len(first)
                after[k], needs[k] = set(), 0
        for a, b in zip(keys, keys[1:]):
            if b not in after[a]:
                after[a].add(b)
                needs[b] += 1
    ready = [(first[k], k) for k in first if needs[k] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(k)
        for b in after[k]:
            needs[b] -= 1
            if needs[b] == 0:
                heapq.heappush(ready, (first[b], b))
    placed = set(order)
    return order + [k for k in first if k not in placed]


def _layout(fqn, entries, holders, world_size, fsdp) -> Layout:
    first = entries[0]
    specs = {e.spec() for e in entries}
    if len(specs) > 1:
        raise CaptureError(
            fqn,
            f"entry differs between ranks: {sorted(map(str, specs))[:2]}",
            "one global shape, dtype, mesh and placements on every rank holding it",
            "Check that every rank builds the same model part for this key.",
        )
    if first.kind == "dtensor":
        lay, extra = _dtensor(fqn, entries, holders, world_size)
        spec = fsdp.get((first.shape, first.mesh_shape, first.placements))
        if spec is not None:
            return _with_rows_if_other(lay, spec.dp_mesh_dim + extra, spec.shard_dim)
        return lay
    if first.kind == "sharded":
        return first.layout
    per_rank = len({e.digest for e in entries if e.digest is not None}) > 1
    if first.kind == "tensor":
        return tensor_layout(
            first.shape, world_size, first.dtype, ranks=holders, per_rank_values=per_rank, fqn=fqn
        )
    return bytes_layout(world_size, ranks=holders, per_rank_values=per_rank)


@functools.lru_cache(maxsize=4096)
def _with_rows_if_other(lay: Layout, dp_mesh_dim: int, shard_dim: int) -> Layout:
    """``lay`` with FSDP2's real rows where they are not what its placements say (layouts are
    cached per spec and hash by identity: one comparison per spec, not per tensor)."""
    rows = with_fsdp2_rows(lay, dp_mesh_dim, shard_dim)
    if any(rows.held_indices(r) != lay.held_indices(r) for r in lay.holders()):
        return rows
    return lay


def _dtensor(fqn, entries, holders, world_size) -> tuple[Layout, int]:
    """The layout of a DTensor every holder has with one spec, on the slices of the root mesh
    that its holders are in: one slice is the DTensor's own mesh (a pipeline stage's submesh
    stays one); several (FSDP over ``mesh["dp"]`` of a ``(dp, ep)`` mesh: each ep index has its
    own dp group holding the whole tensor) become one mesh ``(copies, *mesh)`` with a leading
    ``Replicate()``, whose chunks are exactly each slice's. Returns (layout, mesh dims added)."""
    first = entries[0]
    slices = {e.mesh_ranks for e in entries}
    for e in entries:
        slices.update(e.slices or ())
    held = set(holders)
    used = sorted(s for s in slices if held.intersection(s))
    stray = sorted(held.difference(r for s in used for r in s))
    short = sorted(set(r for s in used for r in s) - held)
    if stray or short:
        raise CaptureError(
            fqn,
            f"DTensor on meshes {used} is held by ranks {sorted(held)}",
            "every rank of each mesh holding it, and only those",
            "Pass ranks='all' to run every rank.",
        )
    if len(used) == 1:
        mesh, placements, ranks, extra = first.mesh_shape, first.placements, used[0], 0
    else:
        from ..sharding import Replicate

        mesh = (len(used), *first.mesh_shape)
        placements = (Replicate(), *first.placements)
        ranks, extra = tuple(r for s in used for r in s), 1
    lay = dtensor_layout(
        first.shape, mesh, placements, first.dtype, world_size, mesh_ranks=ranks, fqn=fqn
    )
    return lay, extra


def _expected_items(layouts, view: RankView) -> list[tuple]:
    out = []
    for fqn in view.keys():
        lay = layouts[fqn]
        if lay.kind == "bytes":
            out.append((fqn, WriteItemType.BYTE_IO, None))
        else:
            kind = WriteItemType.TENSOR if lay.kind == "tensor" else WriteItemType.SHARD
            out += [(fqn, kind, c) for c in lay.chunks(view.rank)]
    return out


def _torch_items(view: RankView) -> list[tuple]:
    return [
        (i.index.fqn, i.type, None if i.tensor_data is None else i.tensor_data.chunk)
        for i in view.items
    ]


def check_view(name, layouts, view: RankView, world_size) -> None:
    """The derived layouts against what torch planned on a run rank, and the data it holds
    against its real local tensors' shapes."""
    want, got = _expected_items(layouts, view), _torch_items(view)
    if want != got:
        pairs = zip(want + [None] * len(got), got + [None] * len(want))
        bad = next((w, g) for w, g in pairs if w != g)
        raise CaptureError(
            name,
            f"rank {view.rank}'s derived write item {bad[0]} differs from torch's {bad[1]}",
            "the layouts derived from the ranks run equal torch's local save plan",
            "Pass ranks='all' to run every rank; please report the program.",
            rank=view.rank,
        )
    for e in view.entries:
        lay = layouts[e.fqn]
        if e.kind != "dtensor" or lay.coordinate(view.rank) is None:
            continue
        held = lay.held_indices(view.rank)
        counts = tuple(len(held[d]) if d in held else n for d, n in enumerate(e.shape))
        if counts != e.local_shape:
            raise CaptureError(
                e.fqn,
                f"rank {view.rank} derived {counts} held elements per dim, but its real local "
                f"tensor has shape {e.local_shape}",
                "the data derived for a rank is the data it holds",
                "Please report the program.",
                rank=view.rank,
            )


def _check_world(world_size, name) -> int:
    try:
        ws = int(world_size)
        ok = ws == world_size and ws >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CaptureError(
            name,
            f"world size {world_size!r}",
            "an int >= 1",
            "Pass the number of ranks of the job, e.g. 64.",
        )
    return ws


def _check_ranks(ranks, ws, name) -> set[int]:
    if ranks is None:
        return set()
    if isinstance(ranks, str):
        if ranks != "all":
            raise CaptureError(
                name, f"ranks {ranks!r}", "None, 'all' or a list of ranks", "Pass e.g. [0, 5]."
            )
        return set(range(ws))
    try:
        out = {int(r) for r in ranks}
    except (TypeError, ValueError):
        raise CaptureError(
            name, f"ranks {ranks!r} are not ints", "a list of ranks", "Pass e.g. [0, 5]."
        ) from None
    bad = sorted(r for r in out if not 0 <= r < ws)
    if bad:
        raise CaptureError(
            name,
            f"ranks {bad} are not in a world of {ws}",
            f"0 <= rank < {ws}",
            "Name ranks of the world.",
        )
    return out


def capture(
    build: Callable | str,
    world_size: int,
    *,
    ranks: Sequence[int] | str | None = None,
    time_limit: float = 120.0,
    workers: int | None = None,
    progress: bool | None = None,
) -> CapturedTarget:
    """The target a training program asks of a checkpoint, on ``world_size`` ranks, from the
    program itself: ``{fqn: Layout}`` (a `CapturedTarget`).

    ``build``: a function of no arguments (or ``"module:function"``) that creates its mesh with
    ``init_device_mesh("cpu", ...)``, builds the model (on ``torch.device("meta")`` where it
    can) and parallelises it, and returns the model, ``(model, optimizer)`` (saved as torch's
    ``get_state_dict`` gives them: ``{"model": ..., "optim": ...}``), a list of this rank's
    pipeline-stage modules, or the very state dict it gives ``dcp.save``. It runs as rank r under
    torch's fake process group in a forked child (``time_limit`` seconds per rank; ``workers``
    at once, default the CPU count up to 2). ``ranks``: more ranks to run and check besides the
    ones needed (rank 0, one per pipeline stage, one witness per group), or ``"all"``.
    Raises `CaptureError` naming ``build`` and the rank when it raises, hangs or cannot be
    saved."""
    name = build_name(build)
    if not callable(build) and not (isinstance(build, str) and ":" in build):
        raise CaptureError(
            name,
            f"build {build!r} is neither a function nor 'module:function'",
            "a function of no arguments",
            "Pass the function, or its import path like 'train:build'.",
        )
    ws = _check_world(world_size, name)
    extra = _check_ranks(ranks, ws, name)
    if not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise CaptureError(name, f"time limit {time_limit!r}", "seconds > 0", "Pass e.g. 120.")
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    preload_torch()
    views, rep = _plan_ranks(build, name, ws, extra, float(time_limit), workers, progress)
    layouts = _merge(name, views, rep, ws)
    for v in views.values():
        check_view(name, layouts, v, ws)
    return CapturedTarget(
        layouts,
        build=name,
        world_size=ws,
        ranks_run=sorted(views),
        represented_by=[rep[r] for r in range(ws)],
        seconds=time.perf_counter() - t0,
    )


def _merge(name, views: Mapping[int, RankView], rep: Mapping[int, int], ws: int) -> dict:
    members: dict[int, list[int]] = {}
    for r, q in sorted(rep.items()):
        members.setdefault(q, []).append(r)
    run = [views[q] for q in sorted(views)]
    fsdp = {f.key(): f for v in run for f in v.fsdp}
    by_fqn: dict[str, list[tuple[int, RankEntry]]] = {}
    for v in run:
        for e in v.entries:
            by_fqn.setdefault(e.fqn, []).append((v.rank, e))
    out = {}
    try:
        for fqn in _merged_keys(run):
            held = by_fqn[fqn]
            holders = sorted(r for q, _ in held for r in members.get(q, ()))
            out[fqn] = _layout(fqn, [e for _, e in held], holders, ws, fsdp)
    except WorkbenchError as e:
        if isinstance(e, CaptureError):
            raise
        raise CaptureError(name, f"gave an entry the workbench cannot describe: {e}") from None
    return out
