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
import heapq
import importlib
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import CaptureError, WorkbenchError
from ..records import WriteItemType
from .held import FsdpParam, RankEntry, fsdp_params, layout_of_entries, rank_entries

__all__ = [
    "capture",
    "CapturedTarget",
    "RankView",
    "run_rank",
    "state_dict_of",
    "build_name",
    "fresh_dtensor_caches",
    "check_view",
    "preload_torch",
]


# ----------------------------------------------------------------------------- records


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

    def _repr_html_(self) -> str:
        # the HTML layer sits above the torch bridge; loaded only when a notebook shows a target
        from ..reprs import captured_target_html

        return captured_target_html(self)


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


def state_dict_of(out, name: str, rank: int):
    """(the state dict given to ``dcp.save``, the modules in it) for what ``build()`` returned."""
    from .held import state_dict_of as held_state_dict

    got = held_state_dict(out)
    if got is None:
        raise CaptureError(
            name,
            f"returned a {type(out).__name__} on rank {rank}",
            "an nn.Module, (model, optimizer), a list of pipeline-stage modules, or the state "
            "dict it gives dcp.save",
            "Return the parallelised model (and its optimizer).",
            rank=rank,
        )
    sd, modules = got
    return dict(sd), modules


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
            entries = _Phase("reading its state dict", rank_entries)(planner.state_dict)
            return RankView(
                rank, entries, fsdp_params(modules), tuple(from_torch(plan.items)), seconds
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
            out[fqn] = layout_of_entries(fqn, [e for _, e in held], holders, ws, fsdp)
    except WorkbenchError as e:
        if isinstance(e, CaptureError):
            raise
        raise CaptureError(name, f"gave an entry the workbench cannot describe: {e}") from None
    return out
