"""Record what each supported torch's OWN DCP planner code computes, for the version tests.

Not part of ``make test``: run it when a new torch appears (README, "Torch versions")::

    pip download --no-deps torch==2.10.0 -d /tmp/torch-wheels     # outside the repository
    .venv/bin/python tools/record_torch_versions.py /tmp/torch-wheels/*.whl /opt/wheels/torch-2.13*

How a version's code is run. Each wheel is read as a zip (never installed). The DCP planner
modules of that version -- ``torch/distributed/checkpoint/{resharding, planner_helpers,
_dedup_save_plans, default_planner}.py`` (plus ``protocol.py`` from 2.14) -- are pure Python:
they are executed from the wheel's text as the modules ``torch.distributed.checkpoint.<name>`` on
top of the installed torch 2.13 runtime (the entries in ``sys.modules`` are swapped in while the
version's files execute, so their imports of each other bind the version's own functions, and
restored afterwards). The DCP *records* (``ChunkStorageMetadata``, ``MetadataIndex``,
``WriteItem``, ``SavePlan`` ...) are the installed 2.13 classes: plain dataclasses whose fields
did not change from 2.4 to 2.14 (checked by diffing ``metadata.py`` / ``planner.py``: only type
hints, docstrings, ``StorageMeta.modules``, ``Metadata.version``, ``transform_descriptors`` moved,
none of which these functions touch). 2.4's ``planner_helpers`` imports ``_Checkpointable`` from
``planner``, gone in 2.13: a placeholder class is put there while 2.4 runs (no input is one).
Soundness check, run every time: the 2.13 wheel's sources loaded this way must reproduce the live
2.13 functions' outputs on every case (the tool stops otherwise).

Behaviours measured by diffing the versions' sources (2.4.1, 2.5.1, 2.6.0, 2.7.1, 2.8.0, 2.9.1,
2.10.0, 2.11.0, 2.12.1, 2.13.0, 2.14.1) and confirmed by the recordings:

- ``create_read_items_for_chunk_list``: nested loop (locals, then saved, list order) through
  2.10; sweep line from 2.11 (PR #169115).
- ``_validate_global_plan``: nested pairwise overlap check (chunk i against later j) through 2.9,
  sweep line from 2.10; the fill (volume) check is skipped for a single plan from 2.9; it returns
  a bool and *logs* its findings (multi-line texts for bounds and fill) through 2.11, returns the
  list of error strings (one-line texts) from 2.12; the raised ValueError is "Failed to validate
  global plan" through 2.11 and carries the joined strings (cut at 500) from 2.12.
- ``create_default_local_load_plan``: "Missing key" raised in every supported version; the
  "Size mismatch between saved ..." ValueError from 2.6 (2.4/2.5 plan read items against the
  wrong shape without a word).
- ``dedup_save_plans``: rewritten in 2.8 (no longer mutates its argument); same results
  (recorded). ``save_to_lowest_rank`` and bytes entries planned on every rank: all of 2.4+.
- ``_compare_save_plans`` / ``_merge_delta_local_plans`` from 2.7, ``_contains_usable_plan``
  from 2.8 (plan caching); unchanged since.
- ``_init_state_dict``: 2.4 leaves non-tensor leaves alone (``tree_map_only_``); 2.5+ replaces
  unknown leaf types by None (``_iterate_state_dict``).
- 2.14: ``CheckpointableTensor`` protocol (``protocol.py``); the size check uses its
  ``global_shape``.
- DTensor's ``compute_local_shape_and_global_offset`` changed in 2.5, 2.6, 2.7, 2.8, 2.10, 2.11
  and 2.12 (``_StridedShard`` support, empty-shard offsets); the workbench keeps 2.13's maths, and
  the ``--venv`` fake-PG recordings check it against older torch on the whole-model cases.

Real checkpoints: ``--venv PYTHON`` (repeatable) names the python of a throw-away venv outside the
repository where one torch version is installed (``python3 -m venv /tmp/venv-torch-2.4.1 &&
/tmp/venv-torch-2.4.1/bin/pip install torch==2.4.1``); that version's real ``dcp.save`` (one
process, no process group) writes a tiny checkpoint to ``tests/data/torch-<X.Y>/ckpt/``, and
(2.5+) its own ``DefaultSavePlanner`` / ``DefaultLoadPlanner`` on real meta DTensors under its
``fake`` process group plan the whole-model cases (``tests/data/torch-<X.Y>/fake_pg.json``): that
version's DTensor maths and planners end to end, in its own runtime.

Outputs: ``tests/data/torch-cases.json`` (the inputs, the same for every version) and
``tests/data/torch-<X.Y>/planner.json`` (what that version computed, case by case, in order).
Exceptions are recorded as ``{"raise": [type name, message]}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import random
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
PKG = "torch.distributed.checkpoint"
MODULES = ("protocol", "resharding", "planner_helpers", "_dedup_save_plans", "default_planner")


# ----------------------------------------------------------------------------- loading a version
def version_key(v: str) -> tuple[int, int]:
    return tuple(int(x) for x in v.split(".")[:2])


def version_of(wheel: Path) -> str:
    m = re.match(r"torch-(\d+)\.(\d+)\.", wheel.name)
    if not m:
        raise SystemExit(f"{wheel}: not a torch wheel name")
    return f"{m[1]}.{m[2]}"


def load_version(wheel: Path) -> dict:
    """The version's DCP planner modules, executed from the wheel on the installed runtime."""
    import torch.distributed.checkpoint.planner as live_planner

    z = zipfile.ZipFile(wheel)
    names = set(z.namelist())
    saved = {m: sys.modules.get(f"{PKG}.{m}") for m in MODULES}
    placeholder = not hasattr(live_planner, "_Checkpointable")
    if placeholder:
        live_planner._Checkpointable = type("_Checkpointable", (), {})
    mods = {}
    try:
        for m in MODULES:
            path = f"torch/distributed/checkpoint/{m}.py"
            if path not in names:
                continue
            spec = importlib.util.spec_from_loader(f"{PKG}.{m}", loader=None)
            mod = importlib.util.module_from_spec(spec)
            mod.__package__ = PKG
            mod.__file__ = f"{wheel.name}!{path}"
            sys.modules[f"{PKG}.{m}"] = mod
            exec(compile(z.read(path).decode(), mod.__file__, "exec"), mod.__dict__)
            mods[m] = mod
    finally:
        for m, old in saved.items():
            if old is None:
                sys.modules.pop(f"{PKG}.{m}", None)
            else:
                sys.modules[f"{PKG}.{m}"] = old
        if placeholder:
            del live_planner._Checkpointable
    return mods


def live_modules() -> dict:
    import importlib

    return {m: importlib.import_module(f"{PKG}.{m}") for m in MODULES if m != "protocol"}


# ----------------------------------------------------------------------------- DTensor maths
# A version's DTensor offset maths: its ``_utils.py`` (``compute_local_shape_and_global_offset``)
# and ``placement_types.py`` (``Shard`` / ``_StridedShard`` size and offset rules), executed from
# the wheel as the modules ``torch.distributed.tensor.<name>`` (``torch.distributed._tensor`` in
# 2.4) on the installed runtime. Their other imports (collectives, DTensor's API) are bound to the
# installed torch where it has the name, and to inert stand-ins where it does not: the maths
# never calls them (an inert stand-in that were called would raise, and the case would record
# the exception).
DT_MODULES = ("placement_types", "_utils")


class _Inert:
    """What a name the installed torch lacks is bound to while an older version's DTensor
    module executes (a type annotation, a collective the maths never reaches)."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Inert(f"{self._name}.{attr}")

    def __call__(self, *a, **k):
        raise RuntimeError(f"{self._name} is not available to the recorded maths")

    def __getitem__(self, item):
        return self

    def __or__(self, other):
        return self

    __ror__ = __or__

    def __mro_entries__(self, bases):
        return (object,)


class _Lenient(type(sys)):
    def __init__(self, mod):
        super().__init__(mod.__name__)
        self._mod = mod

    def __getattr__(self, attr):
        try:
            return getattr(self._mod, attr)
        except AttributeError:
            return _Inert(f"{self._mod.__name__}.{attr}")


class _QuietRegistry(type(sys)):
    """The opaque-type registry with every ``register*`` function a no-op."""

    def __init__(self, mod):
        super().__init__(mod.__name__)
        self._mod = mod

    def __getattr__(self, attr):
        if attr.startswith("register"):
            return lambda *a, **k: a[0] if a else None
        try:
            return getattr(self._mod, attr)
        except AttributeError:
            return _Inert(f"{self._mod.__name__}.{attr}")


def _lenient_import(real):
    def imp(name, globals=None, locals=None, fromlist=(), level=0):
        try:
            mod = real(name, globals, locals, fromlist, level)
        except ImportError:
            return _Lenient(type(sys)(name)) if fromlist else _Inert(name)
        if fromlist and any(f != "*" and not hasattr(mod, f) for f in fromlist):
            return _Lenient(mod)
        return mod

    return imp


def load_dtensor_version(wheel: Path) -> dict:
    """The version's ``placement_types`` and ``_utils`` modules, executed from the wheel."""
    import builtins

    z = zipfile.ZipFile(wheel)
    names = set(z.namelist())
    pkg = (
        "torch.distributed.tensor"
        if "torch/distributed/tensor/_utils.py" in names
        else "torch.distributed._tensor"
    )
    importlib.import_module(pkg)
    saved = {m: sys.modules.get(f"{pkg}.{m}") for m in DT_MODULES}
    # 2.10+ register their placement classes as torch.compile "opaque types" at import (once per
    # process and name; 2.15 also through register_custom_class): a registry the maths never
    # consults, so the copies see a module whose register* functions do nothing
    registry = "torch._library.opaque_object"
    live_registry = sys.modules.get(registry)
    if live_registry is not None:
        quiet = _QuietRegistry(live_registry)
        sys.modules[registry] = quiet
        sys.modules["torch._library"].opaque_object = quiet
    bi = dict(vars(builtins))
    bi["__import__"] = _lenient_import(builtins.__import__)
    mods = {}
    try:
        for m in DT_MODULES:
            path = f"{pkg.replace('.', '/')}/{m}.py"
            spec = importlib.util.spec_from_loader(f"{pkg}.{m}", loader=None)
            mod = importlib.util.module_from_spec(spec)
            mod.__package__ = pkg
            mod.__file__ = f"{wheel.name}!{path}"
            mod.__dict__["__builtins__"] = bi
            sys.modules[f"{pkg}.{m}"] = mod
            exec(compile(z.read(path).decode(), mod.__file__, "exec"), mod.__dict__)
            mods[m] = mod
    finally:
        for m, old in saved.items():
            if old is None:
                sys.modules.pop(f"{pkg}.{m}", None)
            else:
                sys.modules[f"{pkg}.{m}"] = old
        if live_registry is not None:
            sys.modules[registry] = live_registry
            sys.modules["torch._library"].opaque_object = live_registry
    return mods


def live_dtensor_modules() -> dict:
    return {m: importlib.import_module(f"torch.distributed.tensor.{m}") for m in DT_MODULES}


class _FakeMesh:
    """What ``compute_local_shape_and_global_offset`` asks of a DeviceMesh, for one coordinate
    (every version: ``get_coordinate``, ``size``, ``ndim``, ``shape``; 2.8+:
    ``_is_current_rank_part_of_mesh``, ``_sym_get_coordinate``)."""

    def __init__(self, shape, coord):
        self.shape = tuple(shape)
        self.ndim = len(shape)
        self._coord = list(coord)
        self.mesh = _Inert("mesh.mesh")

    def get_coordinate(self):
        return list(self._coord)

    def size(self, mesh_dim=None):
        import math

        return math.prod(self.shape) if mesh_dim is None else self.shape[mesh_dim]

    def _is_current_rank_part_of_mesh(self):
        return True

    def _sym_get_coordinate(self, dim):
        return self._coord[dim]

    @property
    def device_type(self):
        return "cpu"


def _placements(mods, spec):
    """``[["S", d], ["SS", d, k], ["R"], ["P"]]`` as the version's own placement objects (None
    when the version has no ``_StridedShard``)."""
    pt = mods["placement_types"]
    out = []
    for p in spec:
        if p[0] == "S":
            out.append(pt.Shard(p[1]))
        elif p[0] == "SS":
            if not hasattr(pt, "_StridedShard"):
                return None
            out.append(pt._StridedShard(p[1], split_factor=p[2]))
        elif p[0] == "R":
            out.append(pt.Replicate())
        else:
            out.append(pt.Partial())
    return out


def dtensor_cases(rng) -> list:
    """Global shapes, meshes (1-3 dims) and placements: uneven and empty shards, nested shards on
    one dim, _StridedShard (FSDP2 + TP's and others); every coordinate of the mesh is run."""
    fixed = [
        ([6], [2, 4], [["S", 0], ["S", 0]]),  # empty shards at another rank's offset (<= 2.7)
        ([13, 2], [4, 2], [["S", 0], ["S", 0]]),
        ([2], [2, 4], [["S", 0], ["S", 0]]),  # the docstring's 8-rank example
        ([8, 4], [2, 4], [["S", 0], ["S", 0]]),
        ([2, 5], [2, 2], [["S", 1], ["S", 1]]),
        ([8], [2], [["SS", 0, 2]]),
        ([18, 2], [4, 2], [["S", 0], ["SS", 0, 2]]),
        ([13], [3, 2], [["SS", 0, 2], ["S", 0]]),  # FSDP2 + TP, uneven
        ([16, 4], [2, 2], [["SS", 0, 2], ["S", 0]]),  # FSDP2 + TP, even
        ([12, 8], [2, 2, 2], [["R"], ["SS", 0, 2], ["S", 0]]),  # HSDP + TP
        ([7, 3], [3], [["S", 0]]),
        ([4096, 2], [30], [["S", 0]]),
        ([5, 0], [2, 2], [["S", 0], ["S", 1]]),
        ([10], [2, 2, 2], [["S", 0], ["S", 0], ["S", 0]]),
        ([3, 4], [2], [["P"]]),
    ]
    cases = [{"shape": s, "mesh": m, "placements": p} for s, m, p in fixed]
    for i in range(220):
        nd = rng.choice([1, 1, 2, 2, 3])
        shape = [rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 16]) for _ in range(nd)]
        if i % 9 == 0:
            shape[0] = 0 if rng.random() < 0.3 else shape[0]
        else:
            shape = [max(1, x) for x in shape]
        mnd = rng.choice([1, 2, 2, 3])
        mesh = [rng.randint(1, 4) for _ in range(mnd)]
        pl = []
        nested = i % 3 == 0
        for _ in range(mnd):
            r = rng.random()
            d = 0 if nested else rng.randrange(nd)
            if r < 0.15:
                pl.append(["R"])
            elif r < 0.7 or i % 2:
                pl.append(["S", d])
            else:
                pl.append(["SS", d, rng.randint(1, 4)])
        cases.append({"shape": shape, "mesh": mesh, "placements": pl})
    return cases


def _coords(mesh):
    import itertools

    return [list(c) for c in itertools.product(*(range(n) for n in mesh))]


def run_dtensor(mods: dict, cases: list) -> list:
    """Per case, per coordinate (row-major): ``[local_shape, global_offset]`` or the raise."""
    fn = mods["_utils"].compute_local_shape_and_global_offset
    out = []
    for c in cases:
        pl = _placements(mods, c["placements"])
        if pl is None:
            out.append("no _StridedShard")
            continue
        per = []
        for coord in _coords(c["mesh"]):
            try:
                shape, off = fn(c["shape"], _FakeMesh(c["mesh"], coord), pl)
                per.append([[int(x) for x in shape], [int(x) for x in off]])
            except Exception as e:  # noqa: BLE001 (recorded)
                per.append(_raise(e))
        out.append(per)
    return out


# ----------------------------------------------------------------------------- the cases
def _chunk(rng, shape, zero_ok=True):
    offs, sizes = [], []
    for n in shape:
        a = rng.randint(0, n)
        b = rng.randint(a, n) if zero_ok else rng.randint(min(a + 1, n), n)
        offs.append(a)
        sizes.append(b - a)
    return [offs, sizes]


def _tiling(rng, shape, cuts):
    """A grid tiling of ``shape`` (random cuts per dim), chunks in random order."""
    edges = []
    for n in shape:
        inner = sorted(rng.sample(range(1, n), min(cuts, n - 1))) if n > 1 else []
        edges.append([0, *inner, n])
    boxes = [[[], []]]
    for e in edges:
        boxes = [
            [b[0] + [e[i]], b[1] + [e[i + 1] - e[i]]] for b in boxes for i in range(len(e) - 1)
        ]
    rng.shuffle(boxes)
    return boxes


def read_item_cases(rng) -> list:
    cases = [
        # dcp-semantics 5.3 worked examples and PyTorch's test_planner read-item cases
        {
            "shape": [4, 8],
            "saved": [[[0, 4], [4, 4]], [[0, 0], [4, 4]]],
            "local": [[[0, 0], [4, 8]]],
        },
        {
            "shape": [4, 8],
            "saved": [[[0, 0], [2, 8]], [[2, 0], [2, 8]]],
            "local": [[[0, 4], [4, 4]], [[0, 0], [4, 4]]],
        },
        {"shape": [10], "saved": [[[0], [10]], [[5], [0]]], "local": [[[0], [10]]]},
        {"shape": [10], "saved": [[[0], [10]], [[10], [0]]], "local": [[[0], [10]]]},
        {"shape": [], "saved": [[[], []]], "local": [[[], []]]},
        {"shape": [], "saved": [[[], []], [[], []]], "local": [[[], []], [[], []]]},
        {"shape": [8], "saved": [], "local": [[[0], [8]]]},
        {"shape": [8], "saved": [[[0], [8]]], "local": []},
        # test_planner.test_create_read_item_from_chunks
        {
            "shape": [7],
            "saved": [[[0], [3]], [[3], [4]]],
            "local": [[[0], [4]], [[4], [3]]],
        },
    ]
    for i in range(240):
        nd = rng.choice([1, 1, 2, 2, 2, 3])
        shape = [rng.randint(1, 12) for _ in range(nd)]
        if i % 3 == 0:  # random boxes: holes, overlaps, zero-size chunks
            saved = [_chunk(rng, shape) for _ in range(rng.randint(1, 6))]
            local = [_chunk(rng, shape) for _ in range(rng.randint(1, 4))]
        else:  # two tilings (a reshard), sometimes with a chunk dropped or duplicated
            saved = _tiling(rng, shape, rng.randint(0, 4))
            local = _tiling(rng, shape, rng.randint(0, 3))
            if i % 5 == 0 and len(saved) > 1:
                saved.pop()
            if i % 7 == 0:
                saved.append(saved[0])
        cases.append({"shape": shape, "saved": saved, "local": local})
    return cases


def _save_plans(rng, nranks):
    """Random local save plans: shared plain tensors (every rank), bytes entries (every rank),
    sharded tensors whose chunks repeat on some ranks (replication), per-rank entries."""
    fqns = []
    for k in range(rng.randint(2, 6)):
        kind = rng.choice(["tensor", "bytes", "sharded", "sharded", "rank_bytes"])
        shape = [rng.randint(1, 9) for _ in range(rng.randint(1, 2))]
        fqns.append((f"k{k}", kind, shape, rng.choice([1, 2, 4, 8])))
    plans = [[] for _ in range(nranks)]
    for fqn, kind, shape, esize in fqns:
        if kind == "tensor":
            for p in plans:
                p.append(
                    {
                        "fqn": fqn,
                        "type": "TENSOR",
                        "offset": [0] * len(shape),
                        "chunk": [[0] * len(shape), shape],
                        "size": shape,
                        "esize": esize,
                    }
                )
        elif kind == "bytes":
            for p in plans:
                p.append({"fqn": fqn, "type": "BYTE_IO"})
        elif kind == "rank_bytes":
            for r in rng.sample(range(nranks), rng.randint(1, nranks)):
                plans[r].append({"fqn": f"{fqn}.r{r}", "type": "BYTE_IO"})
        else:
            tiles = _tiling(rng, shape, rng.randint(0, 3))
            for t in tiles:
                for r in rng.sample(range(nranks), rng.randint(1, nranks)):
                    plans[r].append(
                        {
                            "fqn": fqn,
                            "type": "SHARD",
                            "offset": t[0],
                            "chunk": t,
                            "size": shape,
                            "esize": esize,
                        }
                    )
    for p in plans:
        p.sort(key=lambda it: it["fqn"])  # state-dict order on each rank
    return plans


def save_cases(rng) -> list:
    # test_dedup_tensors.py: tensor_0 [0:4] saved as a SHARD by both ranks + each rank's own
    # r<rank> [0:10]
    def own(r):
        return {
            "fqn": f"r{r}",
            "type": "TENSOR",
            "offset": [0],
            "chunk": [[0], [10]],
            "size": [10],
            "esize": 4,
        }

    t0 = {
        "fqn": "tensor_0",
        "type": "SHARD",
        "offset": [0],
        "chunk": [[0], [4]],
        "size": [4],
        "esize": 4,
    }
    cases = [{"plans": [[t0, own(0)], [t0, own(1)]], "lowest": False}]
    for i in range(60):
        nranks = rng.choice([1, 2, 3, 4, 9, 12])
        cases.append({"plans": _save_plans(rng, nranks), "lowest": i % 4 == 0})
    return cases


def validate_cases(rng) -> list:
    # test_planner.py TestValidateGlobalPlan: four [i:i+1] chunks of 4; [0:2] and [1:3] of 4
    cases = [
        {"md": {"param": {"size": [4], "chunks": [[[i], [1]] for i in range(4)]}}, "nplans": 1},
        {"md": {"param": {"size": [4], "chunks": [[[0], [2]], [[1], [2]]]}}, "nplans": 1},
    ]
    for i in range(60):
        md = {}
        for k in range(rng.randint(1, 3)):
            nd = rng.choice([0, 1, 2, 2, 3]) if i % 11 == 0 else rng.choice([1, 2, 2, 3])
            shape = [rng.randint(1, 9) for _ in range(nd)]
            if rng.random() < 0.15:
                md[f"b{k}"] = "bytes"
                continue
            chunks = _tiling(rng, shape, rng.randint(0, 3)) if nd else [[[], []]]
            if rng.random() < 0.4 and len(chunks) > 1:
                chunks.pop(rng.randrange(len(chunks)))
            if rng.random() < 0.4:
                chunks.append(_chunk(rng, shape))
            if rng.random() < 0.2 and nd:  # out of bounds
                c = _chunk(rng, shape, zero_ok=False)
                c[0][0] += shape[0]
                chunks.append(c)
            md[f"t{k}"] = {"size": shape, "chunks": chunks}
        cases.append({"md": md, "nplans": rng.choice([1, 1, 2, 4])})
    return cases


def load_cases(rng) -> list:
    base = {
        "a": {"size": [4, 6], "chunks": [[[0, 0], [2, 6]], [[2, 0], [2, 6]]]},
        "b": "bytes",
        "c": {"size": [5], "chunks": [[[0], [3]], [[3], [2]]]},
    }
    cases = [
        {"md": base, "sd": {"a": [4, 6], "b": "bytes", "c": [5]}, "strict": True},
        {"md": base, "sd": {"a": [4, 6], "z": [3]}, "strict": True},  # missing key
        {"md": base, "sd": {"a": [4, 6], "z": [3]}, "strict": False},
        {"md": base, "sd": {"a": [4, 7], "c": [5]}, "strict": True},  # size mismatch
        {"md": base, "sd": {"c": [4]}, "strict": True},  # size mismatch, smaller
        {"md": base, "sd": {"c": [9]}, "strict": True},  # size mismatch, larger
        {"md": base, "sd": {"a": [6, 4]}, "strict": True},  # transposed
        {"md": base, "sd": {"a": [24]}, "strict": True},  # rank mismatch
        {"md": base, "sd": {"b": [3]}, "strict": True},  # tensor into bytes
        {"md": base, "sd": {"a": "bytes"}, "strict": True},  # bytes into tensor metadata
        {"md": {"s": {"size": [], "chunks": [[[], []]]}}, "sd": {"s": [1]}, "strict": True},
    ]
    for _ in range(10):
        md = {}
        sd = {}
        for k in range(rng.randint(1, 4)):
            shape = [rng.randint(1, 8) for _ in range(rng.randint(1, 2))]
            md[f"t{k}"] = {"size": shape, "chunks": _tiling(rng, shape, 2)}
            want = list(shape)
            if rng.random() < 0.3:
                want[0] += rng.choice([-1, 1]) if want[0] > 1 else 1
            sd[f"t{k}"] = want
        cases.append({"md": md, "sd": sd, "strict": rng.random() < 0.7})
    return cases


def whole_cases() -> list:
    """Whole-model save + load plans: layouts named by workbench constructors (the chunks each
    rank holds are stored with them and are what torch's functions are given)."""
    return [
        {
            "save": {
                "w": ["dtensor", [16, 12], [8], "S(0)"],
                "b": ["tensor", [12]],
                "step": ["bytes"],
            },
            "load": {
                "w": ["dtensor", [16, 12], [2, 4], "S(0), S(1)"],
                "b": ["tensor", [12]],
                "step": ["bytes"],
            },
        },
        {
            "save": {
                "w": ["dtensor", [13, 10], [2, 3], "S(1), S(0)"],
                "e": ["dtensor", [7], [6], "S(0)"],
            },
            "load": {
                "w": ["dtensor", [13, 10], [6], "S(0)"],
                "e": ["dtensor", [7], [3, 2], "S(0), S(0)"],
            },
        },
        {
            "save": {
                "x": ["dtensor", [9, 9, 4], [2, 2], "S(0), S(1)"],
                "y": ["dtensor", [10, 4], [4], "R"],
            },
            "load": {
                "x": ["dtensor", [9, 9, 4], [4], "S(2)"],
                "y": ["dtensor", [10, 4], [2, 2], "S(1), S(0)"],
            },
        },
        {
            # (6,) on (2, 4) [S(0), S(0)]: through 2.7 the empty shards of ranks 3 and 7 sit at
            # offset 3, where rank 4's real [3:4] starts, and dedup keeps one of the three
            "save": {"w": ["dtensor", [6], [2, 4], "S(0), S(0)"]},
            "load": {"w": ["dtensor", [6], [8], "R"]},
        },
        {
            "save": {
                "l.0.w": ["dtensor", [24, 8], [3, 2], "R, S(0)"],
                "l.1.w": ["dtensor", [24, 8], [3, 2], "R, S(0)"],
                "t": ["tensor", [3, 3]],
            },
            "load": {
                "l.0.w": ["dtensor", [24, 8], [6], "S(1)"],
                "l.1.w": ["dtensor", [24, 8], [6], "S(0)"],
                "t": ["tensor", [3, 3]],
            },
        },
    ]


def _layout(spec, world_size):
    from workbench.sharding import bytes_layout, dtensor_layout, tensor_layout

    kind = spec[0]
    if kind == "dtensor":
        return dtensor_layout(tuple(spec[1]), tuple(spec[2]), spec[3], world_size=world_size)
    if kind == "tensor":
        return tensor_layout(tuple(spec[1]), world_size)
    return bytes_layout(world_size)


def _spec_placements(text: str) -> list:
    from workbench.sharding import Partial, Shard, StridedShard, parse_placements

    out = []
    for p in parse_placements(text):
        if isinstance(p, Shard):
            out.append(["S", p.dim])
        elif isinstance(p, StridedShard):
            out.append(["SS", p.dim, p.split_factor])
        else:
            out.append(["P"] if isinstance(p, Partial) else ["R"])
    return out


def whole_layout_chunks(case, dt_mods=None) -> tuple[int, dict, dict]:
    """World size and ``{side: {fqn: [kind, size, per-rank chunk lists]}}`` of a whole case; the
    DTensor chunks from ``dt_mods`` (a version's own DTensor maths) when given, else from the
    workbench's layouts (the installed version's)."""
    import math

    ws = max(
        math.prod(s[2])
        for side in ("save", "load")
        for s in case[side].values()
        if s[0] == "dtensor"
    )
    out = {}
    for side in ("save", "load"):
        out[side] = {}
        for fqn, spec in case[side].items():
            lay = _layout(spec, ws)
            if dt_mods is not None and spec[0] == "dtensor":
                got = run_dtensor(
                    dt_mods,
                    [{"shape": spec[1], "mesh": spec[2], "placements": _spec_placements(spec[3])}],
                )[0]
                per = [[[off, shape]] for shape, off in got] + [[]] * (ws - len(got))
                out[side][fqn] = [lay.kind, list(lay.shape), per]
                continue
            out[side][fqn] = [
                lay.kind,
                list(lay.shape) if lay.kind != "bytes" else None,
                [[[list(c.offsets), list(c.sizes)] for c in cs] for cs in lay.rank_chunks],
            ]
    return ws, out["save"], out["load"]


def make_cases() -> dict:
    rng = random.Random(20261203)
    cases = {
        "read_items": read_item_cases(rng),
        "save": save_cases(rng),
        "validate": validate_cases(rng),
        "load": load_cases(rng),
        "whole": whole_cases(),
    }
    for c in cases["whole"]:
        ws, save, load = whole_layout_chunks(c)
        c["world_size"], c["save_chunks"], c["load_chunks"] = ws, save, load
    return cases


# ----------------------------------------------------------------------------- running a version
def _raise(e: BaseException) -> dict:
    return {"raise": [type(e).__name__, str(e)]}


def _csm(c):
    import torch
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    return ChunkStorageMetadata(offsets=torch.Size(c[0]), sizes=torch.Size(c[1]))


def _tsm(entry):
    import torch
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        TensorProperties,
        TensorStorageMetadata,
    )

    if entry == "bytes":
        return BytesStorageMetadata()
    return TensorStorageMetadata(
        properties=TensorProperties(dtype=torch.float32),
        size=torch.Size(entry["size"]),
        chunks=[_csm(c) for c in entry["chunks"]],
    )


def _metadata(md):
    from torch.distributed.checkpoint.metadata import Metadata

    return Metadata(state_dict_metadata={k: _tsm(v) for k, v in md.items()})


def _read_items(items) -> list:
    out = []
    for it in items:
        row = [
            it.type.name[0],
            it.dest_index.fqn,
            it.dest_index.index,
            it.storage_index.index,
            list(it.dest_offsets),
            list(it.storage_offsets),
            list(it.lengths),
        ]
        out.append(row)
    return out


_DTYPES = {1: "uint8", 2: "float16", 4: "float32", 8: "float64"}


def _write_item(d):
    import torch
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorProperties
    from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

    if d["type"] == "BYTE_IO":
        return WriteItem(index=MetadataIndex(d["fqn"]), type=WriteItemType.BYTE_IO)
    return WriteItem(
        index=MetadataIndex(d["fqn"], torch.Size(d["offset"])),
        type=WriteItemType[d["type"]],
        tensor_data=TensorWriteData(
            chunk=_csm(d["chunk"]),
            properties=TensorProperties(dtype=getattr(torch, _DTYPES[d["esize"]])),
            size=torch.Size(d["size"]),
        ),
    )


def _plan_items(plan) -> list:
    return [
        [it.index.fqn, None if it.index.offset is None else list(it.index.offset), it.index.index]
        for it in plan.items
    ]


def _md_out(md) -> dict:
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    return {
        k: "bytes"
        if isinstance(v, BytesStorageMetadata)
        else {"size": list(v.size), "chunks": [[list(c.offsets), list(c.sizes)] for c in v.chunks]}
        for k, v in md.state_dict_metadata.items()
    }


class _Logs(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _validate(dp, plans, md) -> dict:
    handler = _Logs()
    lg = logging.getLogger(PKG + ".default_planner")
    lg.addHandler(handler)
    old, lg.propagate = lg.propagate, False
    try:
        ret = dp._validate_global_plan(plans, md)
    finally:
        lg.removeHandler(handler)
        lg.propagate = old
    return {"returned": ret, "logged": handler.messages}


def _value(spec):
    import torch

    if spec == "bytes":
        return [1, 2]
    return torch.zeros(spec, device="meta")


def run(mods: dict, cases: dict, dt_mods: dict | None = None) -> dict:
    """The version's planner code on every case; the whole cases' DTensor chunks are the
    version's own (``dt_mods``), stored with them (``save_chunks`` / ``load_chunks``)."""
    import torch
    from torch.distributed.checkpoint.planner import SavePlan

    ph, dd, dp = mods["planner_helpers"], mods["_dedup_save_plans"], mods["default_planner"]
    out: dict = {"read_items": [], "save": [], "validate": [], "load": [], "whole": []}
    cases = dict(cases)
    if dt_mods is not None:
        whole = []
        for c in cases["whole"]:
            _, save, load = whole_layout_chunks(c, dt_mods)
            whole.append({**c, "save_chunks": save, "load_chunks": load})
        cases["whole"] = whole
    for c in cases["read_items"]:
        md = _tsm({"size": c["shape"], "chunks": c["saved"]})
        try:
            res = _read_items(
                ph.create_read_items_for_chunk_list("t", md, [_csm(x) for x in c["local"]])
            )
        except Exception as e:  # noqa: BLE001 (recorded)
            res = _raise(e)
        out["read_items"].append(res)
    for c in cases["save"]:
        plans = [SavePlan([_write_item(d) for d in p]) for p in c["plans"]]
        rec = {}
        try:
            deduped = dd.dedup_save_plans(list(plans), c["lowest"])
            rec["dedup"] = [_plan_items(p) for p in deduped]
            final, md = dp.create_default_global_save_plan(deduped)
            rec["plans"] = [_plan_items(p) for p in final]
            rec["md"] = _md_out(md)
            rec["validate"] = _validate(dp, final, md)
        except Exception as e:  # noqa: BLE001
            rec["error"] = _raise(e)
        out["save"].append(rec)
    for c in cases["validate"]:
        md = _metadata(c["md"])
        out["validate"].append(_validate(dp, [SavePlan([])] * c["nplans"], md))
    for c in cases["load"]:
        md = _metadata(c["md"])
        sd = {k: _value(v) for k, v in c["sd"].items()}
        try:
            res = _read_items(dp.create_default_local_load_plan(sd, md, c["strict"]).items)
        except Exception as e:  # noqa: BLE001
            res = _raise(e)
        out["load"].append(res)
    for c in cases["whole"]:
        ws = c["world_size"]
        plans = []
        for r in range(ws):
            items = []
            for fqn, (kind, size, per_rank) in c["save_chunks"].items():
                for ch in per_rank[r]:
                    if kind == "bytes":
                        items.append(_write_item({"fqn": fqn, "type": "BYTE_IO"}))
                    else:
                        items.append(
                            _write_item(
                                {
                                    "fqn": fqn,
                                    "type": "TENSOR" if kind == "tensor" else "SHARD",
                                    "offset": ch[0],
                                    "chunk": ch,
                                    "size": size,
                                    "esize": 4,
                                }
                            )
                        )
            plans.append(SavePlan(items))
        deduped = dd.dedup_save_plans(plans, False)
        final, md = dp.create_default_global_save_plan(deduped)
        rec = {
            "save_chunks": c["save_chunks"],
            "load_chunks": c["load_chunks"],
            "plans": [_plan_items(p) for p in final],
            "md": _md_out(md),
            "validate": _validate(dp, final, md),
            "loads": [],
        }
        for r in range(ws):
            items = []
            for fqn, (kind, _size, per_rank) in c["load_chunks"].items():
                if not per_rank[r]:
                    continue
                entry = md.state_dict_metadata[fqn]
                if kind == "bytes":
                    items += ph._create_read_items(fqn, entry, b"")
                else:
                    items += ph.create_read_items_for_chunk_list(
                        fqn, entry, [_csm(x) for x in per_rank[r]]
                    )
            rec["loads"].append(_read_items(items))
        out["whole"].append(rec)
    del torch
    return out


def _dump(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")) + "\n")


# Run by the venv's own python: that torch's real dcp.save, one process, relative checkpoint id.
_SAVE_SCRIPT = """
import json, sys, warnings
import torch
import torch.distributed.checkpoint as dcp
warnings.simplefilter("ignore")
sd = {
    "w": torch.arange(12, dtype=torch.float32).reshape(4, 3),
    "b": torch.tensor([5, 6], dtype=torch.int64),
    "step": 7,
}
dcp.save(sd, checkpoint_id="ckpt")
print(json.dumps({"torch": torch.__version__}))
"""


# Run by the venv's own python with this repository on PYTHONPATH: that torch's DefaultSavePlanner
# and DefaultLoadPlanner on real (meta) DTensors under its fake process group
# (workbench.torch_bridge.fake_pg), for the whole-model cases: its own DTensor maths included.
_FAKE_PG_SCRIPT = """
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
from workbench.sharding import bytes_layout, dtensor_layout, tensor_layout
from workbench.torch_bridge.fake_pg import torch_load_plans, torch_save_plans

def layout(spec, ws):
    if spec[0] == "dtensor":
        return dtensor_layout(tuple(spec[1]), tuple(spec[2]), spec[3], world_size=ws)
    if spec[0] == "tensor":
        return tensor_layout(tuple(spec[1]), ws)
    return bytes_layout(ws)

def rows(plan):
    return [[it.index.fqn, None if it.index.offset is None else list(it.index.offset),
             it.index.index] for it in plan.items]

def reads(plan):
    return [[it.type.name[0], it.dest_index.fqn, it.dest_index.index, it.storage_index.index,
             list(it.dest_offsets), list(it.storage_offsets), list(it.lengths)]
            for it in plan.items]

out = []
for case in json.load(open(sys.argv[1]))["whole"]:
    ws = case["world_size"]
    save = {f: layout(s, ws) for f, s in case["save"].items()}
    load = {f: layout(s, ws) for f, s in case["load"].items()}
    t = torch_save_plans(save, progress=False)
    lp = torch_load_plans(t.metadata, load, progress=False)
    out.append({
        "plans": [rows(p) for p in t.plans],
        "chunks": {k: [[list(c.offsets), list(c.sizes)] for c in v.chunks]
                   for k, v in t.metadata.state_dict_metadata.items() if hasattr(v, "chunks")},
        "strides": {k: (None if getattr(v.properties, "strides", None) is None
                        else list(v.properties.strides))
                    for k, v in t.metadata.state_dict_metadata.items() if hasattr(v, "chunks")},
        "errors": list(t.errors),
        "loads": [reads(p) for p in lp.plans],
    })
print(json.dumps({"torch": torch.__version__, "whole": out}))
"""


def record_fake_pg(python: Path) -> str:
    """The venv torch's own planners on real DTensors (fake process group) for the whole cases,
    into tests/data/torch-<X.Y>/fake_pg.json (torch 2.5+: the bridge needs DTensor's package)."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [str(python), "-c", _FAKE_PG_SCRIPT, str(DATA / "torch-cases.json")],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
        env=env,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    v = ".".join(got["torch"].split("+")[0].split(".")[:2])
    _dump(got, DATA / f"torch-{v}" / "fake_pg.json")
    print(f"{v}: fake-PG plans of torch {got['torch']} recorded")
    return v


def write_checkpoint(python: Path) -> str:
    """A tiny real checkpoint written by the venv's torch into tests/data/torch-<X.Y>/ckpt/."""
    import shutil
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [str(python), "-c", _SAVE_SCRIPT],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        version = json.loads(out.stdout.strip().splitlines()[-1])["torch"]
        v = ".".join(version.split("+")[0].split(".")[:2])
        dest = DATA / f"torch-{v}" / "ckpt"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(Path(tmp) / "ckpt", dest)
    print(f"{v}: real checkpoint written by torch {version} to {dest}")
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheels", nargs="*", type=Path, help="torch wheels (read as zips)")
    ap.add_argument(
        "--venv", action="append", default=[], type=Path, help="python of a venv with a torch"
    )
    ap.add_argument(
        "--fake-pg-only",
        action="store_true",
        help="with --venv: record the fake-PG plans only (no checkpoint written)",
    )
    args = ap.parse_args(argv)
    for python in args.venv:
        if args.fake_pg_only:
            record_fake_pg(python)
            continue
        v = write_checkpoint(python)
        if version_key(v) >= (2, 5):
            record_fake_pg(python)
    if not args.wheels:
        return 0
    import torch

    cases = make_cases()
    cases["dtensor"] = dtensor_cases(random.Random(20261207))
    _dump(cases, DATA / "torch-cases.json")
    live_dt = live_dtensor_modules()
    live = run(live_modules(), cases, live_dt)
    live_maths = run_dtensor(live_dt, cases["dtensor"])
    installed = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    for wheel in args.wheels:
        v = version_of(wheel)
        dt = load_dtensor_version(wheel)
        got = run(load_version(wheel), cases, dt)
        maths = run_dtensor(dt, cases["dtensor"])
        if v == installed:
            # soundness: the installed version's sources, loaded this way, are the live code
            if json.loads(json.dumps(got)) != json.loads(json.dumps(live)):
                raise SystemExit(f"{wheel}: sources loaded from the wheel differ from live torch")
            if json.loads(json.dumps(maths)) != json.loads(json.dumps(live_maths)):
                raise SystemExit(f"{wheel}: DTensor maths from the wheel differ from live torch")
            print(f"{v}: wheel sources reproduce the live {torch.__version__} outputs")
        _dump({"torch": wheel.name, "cases": got}, DATA / f"torch-{v}" / "planner.json")
        _dump({"torch": wheel.name, "cases": maths}, DATA / f"torch-{v}" / "dtensor.json")
        print(f"{v}: recorded from {wheel.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
