"""Targets: what a checkpoint will be loaded into, parsed, checked and built in one place.

Every face (the CLI's ``--target``, the explorers' target boxes, the report, capture's JSON
output) and every entry point that takes "a target" goes through `as_target`, so a spec means the
same layouts everywhere. The forms:

- a preset spec ``PRESET[-SIZE][+optim]:RECIPE:DIM=N,...`` (`PresetTarget`: a `workbench.models`
  preset parallelised by a recipe on a named mesh);
- a JSON file or document (`json_target`, the syntax of `TARGET_HELP`; `target_json` writes it);
- ``{fqn: Layout}`` (as is) and ``(preset, recipe, mesh_shape)``;
- what users hold (``model.state_dict()``, the nested dict given to ``dcp.load``, a module,
  ``(model, optimizer)``, a captured target), through `sources.held_layouts`.

JSON targets come from strangers: they are read within `formats.limits.read_json`'s bounds and
describe at most `MAX_TARGET_WORLD` ranks before anything is sized by them.

Imports the core (models, sharding, sources, formats.limits); no torch, pandas or widgets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import models
from .errors import LayoutError, PlanError, WorkbenchError
from .formats.limits import brief, read_json
from .formatting import index_runs
from .sharding import (
    MAX_STRIDED_POSITIONS,
    Layout,
    bytes_layout,
    dtensor_layout,
    format_placements,
    sharded_layout,
    tensor_layout,
    with_data_held,
)
from .sources import held_layouts

__all__ = [
    "TARGET_HELP",
    "MAX_TARGET_WORLD",
    "PresetTarget",
    "as_target",
    "parse_target",
    "parse_ints",
    "json_target",
    "read_json_target",
    "target_json",
    "preset_listing",
]

TARGET_HELP = """\
A target is what the checkpoint will be loaded into, in one of two forms:

  PRESET[-SIZE][+optim]:RECIPE:DIM=N[,DIM=N...]
      a model preset (workbench.models; SIZE defaults to tiny) parallelised by a recipe on a
      mesh, e.g.
        llama-tiny:fsdp:dp=8
        llama-tiny:fsdp2+tp:dp=2,tp=2
        llama-70b:hsdp:replicate=2,dp=32
        gpt2-small+optim:tp:tp=4          (+optim: with AdamW state, as get_state_dict saves it)
      recipes and their mesh dims, in mesh order: fsdp:dp  hsdp:replicate,dp  tp:tp
      fsdp2+tp:dp,tp  hsdp+tp:replicate,dp,tp  replicate:world
      (`workbench plan --list-presets` prints every preset and recipe)

  PATH.json
      a JSON object {fqn: entry}; an entry is one of
        {"shape": [64, 32], "dtype": "bfloat16", "mesh": [2, 2], "placements": "S(0), S(1)"}
            a DTensor on a row-major mesh of ranks 0..prod(mesh)-1 (placements: S(d), R,
            SS(d,k) for _StridedShard, P for Partial); add "mesh_ranks": [4, 5, 6, 7] for a
            submesh (e.g. a pipeline stage): the mesh's global ranks in row-major mesh order,
            as DeviceMesh("cpu", torch.tensor(mesh_ranks).reshape(mesh)) names them;
            {"start": 2048, "stop": 4096, "step": 1} says range(2048, 4096) in fewer bytes
            (also for "ranks"; `workbench capture` writes long runs so)
        {"shape": [64], "dtype": "float32"}
            a plain tensor held whole by every rank
        {"bytes": true}
            a non-tensor entry (an int, a dict, a BytesIO...)
      Plain tensors and bytes may add "ranks": [0, 2] (held by those ranks only) and
      "per_rank_values": true (each rank holds its own values, e.g. an RNG state).
      A DTensor may add "data_held": {"4": {"0": [[6, 7]]}}: per rank, per dim, the global
      indices it really holds as [start, stop) runs when they are not what its placements say
      (FSDP2 + TP's rows; `workbench capture` writes it). {"shape": ..., "chunks": {"0":
      [[[0, 0], [4, 8]]], ...}} is a ShardedTensor: per rank, its [offsets, sizes] chunks.
      The world size is the largest mesh (or an entry's "world_size", or its largest rank or
      mesh rank + 1)."""

_TARGET_SPEC = re.compile(
    r"^(?P<preset>[\w.\-]+?)(?P<optim>\+optim)?:(?P<recipe>[\w.+\-]+)"
    r"(?::(?P<dims>.*))?$"
)
_ENTRY_KEYS = {
    "shape",
    "dtype",
    "mesh",
    "placements",
    "mesh_ranks",
    "world_size",
    "bytes",
    "ranks",
    "per_rank_values",
    "data_held",
    "chunks",
}


# ----------------------------------------------------------------------------- preset specs
@dataclass(frozen=True, slots=True)
class PresetTarget:
    """A preset spec, ``PRESET[-SIZE][+optim]:RECIPE:DIM=N,...``, parsed: a `workbench.models`
    preset of one size (AdamW state added with ``optimizer``) parallelised by ``recipe`` on a
    mesh whose dims ``mesh`` names in the recipe's order (``models.MESH_DIMS``)."""

    preset: str
    size: str
    recipe: str
    mesh: tuple[tuple[str, int], ...]
    optimizer: bool = False

    @classmethod
    def parse(cls, spec: str) -> PresetTarget:
        """The spec's parts, checked: a `PlanError` naming the bad part otherwise."""
        m = _TARGET_SPEC.match(spec.strip()) if isinstance(spec, str) else None
        if m is None:
            raise PlanError(
                "<target>",
                f"target spec {spec!r} is neither PRESET:RECIPE:DIM=N,... nor a JSON file",
                "e.g. llama-tiny:fsdp2+tp:dp=2,tp=2 or layout.json",
                "Run `workbench plan --help` for the target syntax.",
                spec=spec,
            )
        preset, _, size = m["preset"].partition("-")
        unknown = (
            f"unknown model preset {preset!r}"
            if preset not in models.PRESETS
            else f"unknown size {size!r} of preset {preset!r}"
            if size and size not in models.SIZES[preset]
            else None
        )
        if unknown:
            known = ", ".join(f"{p}-{s}" for p in models.PRESETS for s in models.SIZES[p])
            raise PlanError(
                "<target>",
                f"{unknown} in {spec!r}",
                f"one of {known}",
                "Run `workbench plan --list-presets`.",
                spec=spec,
            )
        recipe = m["recipe"].lower()
        if recipe not in models.MESH_DIMS:
            raise PlanError(
                "<target>",
                f"recipe {m['recipe']!r} in {spec!r} is unknown",
                "one of " + ", ".join(models.MESH_DIMS),
                "Run `workbench plan --list-presets`.",
                spec=spec,
            )
        dims: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in (m["dims"] or "").split(","))):
            name, eq, value = (x.strip() for x in part.partition("="))
            if not eq or not value.isdigit() or int(value) < 1 or name in dims:
                raise PlanError(
                    "<target>",
                    f"mesh dim {part!r} in {spec!r} is not NAME=N",
                    "e.g. dp=2,tp=2",
                    "Write each mesh dim once, as name=positive integer.",
                    spec=spec,
                )
            dims[name] = int(value)
        want = models.MESH_DIMS[recipe]
        if sorted(dims) != sorted(want):
            raise PlanError(
                "<target>",
                f"recipe {m['recipe']} got mesh dims {sorted(dims)} in {spec!r}",
                f"exactly {', '.join(want)}",
                f"Write e.g. {m['recipe']}:" + ",".join(f"{d}=2" for d in want) + ".",
                spec=spec,
            )
        return cls(
            preset=preset,
            size=size or "tiny",
            recipe=recipe,
            mesh=tuple((d, dims[d]) for d in want),
            optimizer=bool(m["optim"]),
        )

    @property
    def mesh_shape(self) -> tuple[int, ...]:
        return tuple(n for _, n in self.mesh)

    def layouts(self) -> dict[str, Layout]:
        """``{fqn: Layout}``: the preset's state dict under the recipe (`models.apply_recipe`)."""
        sd = models.model_state_dict(self.preset, self.size, optimizer=self.optimizer)
        return models.apply_recipe(sd, self.recipe, self.mesh_shape)

    def __str__(self) -> str:
        optim = "+optim" if self.optimizer else ""
        dims = ",".join(f"{d}={n}" for d, n in self.mesh)
        return f"{self.preset}-{self.size}{optim}:{self.recipe}:{dims}"


def preset_listing() -> str:
    """Every preset and recipe, as ``workbench plan --list-presets`` prints them."""
    lines = ["presets (PRESET-SIZE):"]
    lines += [f"  {p}-{size}" for p in models.PRESETS for size in models.SIZES[p]]
    lines += [
        "  (append +optim for AdamW state as saved by get_state_dict)",
        "recipes (mesh dims):",
    ]
    lines += [
        f"  {r}:{','.join(d + '=N' for d in dims)}  {models.RECIPES[r]}"
        for r, dims in models.MESH_DIMS.items()
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- every form
def parse_target(spec: str | os.PathLike) -> dict[str, Layout]:
    """``{fqn: Layout}`` for a target spec: a preset spec (`PresetTarget`) or a JSON file
    (`TARGET_HELP`)."""
    text = os.fspath(spec)
    if text.endswith(".json") or Path(text).is_file():
        return read_json_target(text)
    return PresetTarget.parse(text).layouts()


def as_target(target, *, world_size: int | None = None) -> dict[str, Layout]:
    """``{fqn: Layout}`` for any target form: a spec string or path (`parse_target`), a
    `PresetTarget`, ``(preset, recipe, mesh_shape)``, or what a user holds: ``{fqn: Layout}``,
    ``model.state_dict()``, the nested dict given to ``dcp.load``, a module, ``(model,
    optimizer)`` (`sources.held_layouts`, as ``dcp.load`` sees it; ``world_size`` for plain
    tensors when no DTensor or process group says)."""
    if isinstance(target, (str, os.PathLike)):
        return parse_target(target)
    if isinstance(target, PresetTarget):
        return target.layouts()
    if isinstance(target, tuple) and len(target) == 3 and isinstance(target[0], str):
        preset, recipe, mesh = target
        return models.apply_recipe(models.model_state_dict(preset), recipe, tuple(mesh))
    return held_layouts(target, world_size=world_size, for_load=True)[0]


def parse_ints(text, what: str, *, error=LayoutError, example: str = "16, 12") -> tuple[int, ...]:
    """``"16, 12"`` (or ``"16 12"``, ``"(16, 12)"``, a sequence of ints) -> ``(16, 12)``: shapes,
    meshes, dims and rank lists typed into a box or on the command line.

    ``error`` is the `WorkbenchError` subclass raised on bad text (by what the user fixes)."""
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    body = text.strip().strip("()[]").strip()
    parts = [p for p in re.split(r"[,\s]+", body) if p] if body else []
    if not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise error(
            None,
            f"{what} {text!r} is not a list of integers",
            f"comma-separated integers like {example!r}",
            f"Write the {what} as e.g. {example!r}.",
            text=text,
        )
    return tuple(int(p) for p in parts)


# ----------------------------------------------------------------------------- JSON targets
# Largest world a JSON target may describe: a 30-byte file must not make the planner allocate
# per-rank tables of billions of ranks (DESIGN: hundreds to thousands of ranks).
MAX_TARGET_WORLD = 1 << 16


def _from_runs(runs) -> list[int]:
    bounds = [(int(start), int(stop)) for start, stop in runs]
    # a JSON target's runs are counted before they are expanded (no [0, 10**100) lists)
    if sum(max(stop - start, 0) for start, stop in bounds) > MAX_STRIDED_POSITIONS:
        raise ValueError(f"data_held runs hold more than {MAX_STRIDED_POSITIONS:,} indices")
    return [i for start, stop in bounds for i in range(start, stop)]


def target_json(layouts: Mapping[str, Layout]) -> dict:
    """``{fqn: Layout}`` (e.g. `workbench.capture`'s) as the JSON ``workbench plan --target``
    reads back into equal layouts (`TARGET_HELP`)."""
    out = {}
    for fqn, lay in layouts.items():
        if lay.kind == "bytes":
            e: dict = {"bytes": True}
        else:
            e = {"shape": list(lay.shape), "dtype": lay.dtype}
        if lay.kind == "dtensor":
            e["mesh"] = list(lay.mesh_shape)
            e["placements"] = format_placements(lay.placements)
            if lay.mesh_ranks is not None:
                e["mesh_ranks"] = _ranks_json(lay.mesh_ranks)
            if lay.data_held is not None:
                e["data_held"] = {
                    str(r): {
                        str(d): [list(run) for run in index_runs(idx)]
                        for d, idx in sorted(dims.items())
                    }
                    for r, dims in enumerate(lay.data_held)
                    if dims is not None
                }
        elif lay.kind == "sharded":
            e["chunks"] = {
                str(r): [[list(c.offsets), list(c.sizes)] for c in cs]
                for r, cs in enumerate(lay.rank_chunks)
                if cs
            }
        else:
            holders = lay.holders()
            if len(holders) != lay.world_size:
                e["ranks"] = _ranks_json(holders)
            if lay.per_rank_values:
                e["per_rank_values"] = True
        e["world_size"] = lay.world_size
        out[fqn] = e
    return out


# A rank list this long or longer that steps evenly is written as a run: a 16,384-rank job's
# stages name 2048 mesh ranks per entry, 13 MB of JSON (0.5 s to read) as lists, 0.2 MB as runs.
_RUN_MIN = 8
_RUN_KEYS = frozenset(("start", "stop", "step"))


def _ranks_json(ranks) -> list[int] | dict:
    """Ranks as the JSON of a target: ``{"start", "stop", "step"}`` for an even run of at least
    `_RUN_MIN`, else the list."""
    ranks = list(ranks)
    step = ranks[1] - ranks[0] if len(ranks) > 1 else 0
    if len(ranks) >= _RUN_MIN and step > 0 and ranks == list(range(ranks[0], ranks[-1] + 1, step)):
        return {"start": ranks[0], "stop": ranks[-1] + 1, "step": step}
    return ranks


def _ranks_value(fqn: str, key: str, v, path: str):
    """A target entry's ``ranks`` / ``mesh_ranks``: a run ``{"start", "stop"[, "step"]}`` as
    the `range` it names (bounded by `MAX_TARGET_WORLD`), anything else as given."""
    if not isinstance(v, dict):
        return v
    bounds = {k: v.get(k, 1) for k in ("start", "stop", "step")}
    if not (
        v.keys() <= _RUN_KEYS
        and {"start", "stop"} <= v.keys()
        and all(type(b) is int for b in bounds.values())
        and 0 <= bounds["start"] < bounds["stop"] <= MAX_TARGET_WORLD + 1
        and bounds["step"] >= 1
    ):
        raise PlanError(
            fqn,
            f"target entry's {key} {brief(v, 60)} is not a run of ranks",
            f'a list of ints or {{"start": a, "stop": b, "step": c}} with 0 <= a < b <= '
            f"{MAX_TARGET_WORLD + 1:,} and c >= 1",
            "See `workbench plan --help`.",
            path=path,
        )
    return range(bounds["start"], bounds["stop"], bounds["step"])


def read_json_target(path: str | os.PathLike) -> dict[str, Layout]:
    """The layouts of a JSON target file (`json_target` on its bytes)."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(
            "<target>",
            f"target file {str(path)!r} does not exist",
            "a readable JSON file",
            "Check the path.",
            path=str(path),
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PlanError(
            "<target>",
            f"target file {str(path)!r} cannot be read ({e})",
            "a readable JSON file",
            "Check the path and its permissions.",
            path=str(path),
        ) from None
    return json_target(data, str(path))


def _bounded_prod(dims) -> int:
    """The product of mesh dims, stopping once past `MAX_TARGET_WORLD` (no huge products)."""
    out = 1
    for d in dims if isinstance(dims, list) else [dims]:
        if type(d) is not int:
            raise TypeError(f"mesh dim {brief(d, 20)} is not an int")
        out *= d
        if out > MAX_TARGET_WORLD:
            return out
    return out


def json_target(data, path: str = "<target>") -> dict[str, Layout]:
    """The layouts ``{fqn: Layout}`` of a JSON target document (bytes or str; the syntax of
    `workbench plan --help`), read within `formats.limits.read_json`'s bounds and
    `MAX_TARGET_WORLD` ranks: a `WorkbenchError` for anything else."""
    try:
        doc = read_json(data, path, error=PlanError)
    except PlanError as e:
        raise PlanError(
            "<target>",
            f"target file {path!r} is not valid JSON ({e.what})",
            "a JSON object {fqn: entry}",
            "Fix the file.",
            path=path,
        ) from None
    if not isinstance(doc, dict) or not doc:
        raise PlanError(
            "<target>",
            f"target file {path!r} holds {type(doc).__name__} {brief(doc, 40)}",
            "a non-empty JSON object {fqn: entry}",
            "See `workbench plan --help`.",
            path=path,
        )
    for fqn, e in doc.items():
        _check_entry(fqn, e, path)
        for key in ("ranks", "mesh_ranks"):
            if key in e:
                e[key] = _ranks_value(fqn, key, e[key], path)
    try:
        world = _target_world(doc, path)
        # equal entries (every layer's weights of a stage) are built once and share a Layout
        built: dict[tuple, Layout] = {}
        out = {}
        for fqn, e in doc.items():
            key = _entry_key(e)
            lay = built.get(key) if key is not None else None
            if lay is None:
                lay = _entry_layout(fqn, e, world)
                if key is not None:
                    built[key] = lay
            out[fqn] = lay
        return out
    except WorkbenchError:
        raise
    except (TypeError, ValueError, AttributeError, OverflowError) as e:  # "4" or 1e999 for an int
        raise PlanError(
            "<target>",
            f"target file {path!r} has a malformed value ({brief(str(e), 120)})",
            "shape, mesh, ranks, mesh_ranks: lists of ints; world_size: an int",
            "See `workbench plan --help`.",
            path=path,
        ) from None


def _check_entry(fqn: str, e, path: str) -> None:
    """One entry's keys make sense together (values are checked where they are used)."""
    bad = sorted(set(e) - _ENTRY_KEYS) if isinstance(e, dict) else None
    if bad is None or bad or not (e.get("bytes") or "shape" in e):
        raise PlanError(
            fqn,
            f"target entry {brief(e, 80)} is not understood"
            + (f" (unknown keys {bad})" if bad else ""),
            "{shape, dtype, mesh, placements} or {bytes: true}",
            "See `workbench plan --help`.",
            path=path,
        )
    if ("mesh" in e) != ("placements" in e):
        raise PlanError(
            fqn,
            "target entry gives one of mesh and placements",
            "both or neither",
            "Add the missing one.",
            path=path,
        )
    if ("data_held" in e and "mesh" not in e) or ("chunks" in e and "mesh" in e):
        raise PlanError(
            fqn,
            "target entry gives data_held without a mesh, or chunks with one",
            "data_held on a DTensor entry, chunks on a ShardedTensor entry",
            "See `workbench plan --help`.",
            path=path,
        )
    if "mesh_ranks" in e and "mesh" not in e:
        raise PlanError(
            fqn,
            "target entry gives mesh_ranks without a mesh",
            "mesh_ranks only on a DTensor entry",
            "Add mesh and placements, or drop mesh_ranks.",
            path=path,
        )


def _target_world(doc: dict, path: str) -> int:
    """The world size a target describes: the largest mesh, ``world_size``, rank or mesh rank + 1
    of its entries; every rank-sized number is bounded before anything is sized by it."""
    for fqn, e in doc.items():
        # rank-sized numbers are bounded before anything is multiplied or allocated by them
        for key in ("mesh", "ranks", "mesh_ranks", "world_size"):
            v = e.get(key)
            if type(v) is range:  # a run, bounded when it was read
                continue
            vals = v if isinstance(v, list) else [] if v is None else [v]
            # set / min / max run in C: a 16,384-rank target holds millions of mesh ranks
            if not set(map(type, vals)) <= {int}:
                raise TypeError(f"{key} {brief(v, 40)} is not an int or a list of ints")
            if len(vals) > MAX_TARGET_WORLD or (
                vals and not 0 <= min(vals) <= max(vals) <= MAX_TARGET_WORLD
            ):
                raise PlanError(
                    fqn,
                    f"target entry's {key} {brief(v, 60)} is out of range",
                    f"ints from 0 to {MAX_TARGET_WORLD:,} (ranks of one world)",
                    "See `workbench plan --help`.",
                    path=path,
                )
    world = max(
        max(
            _bounded_prod(e.get("mesh", [1])),
            int(e.get("world_size", 1)),
            _last(e.get("ranks")) + 1,
            _last(e.get("mesh_ranks")) + 1,
            max((int(r) for r in e.get("chunks") or {}), default=0) + 1,
        )
        for e in doc.values()
    )
    if not 1 <= world <= MAX_TARGET_WORLD:
        raise PlanError(
            "<target>",
            f"target file {path!r} describes a world of {world:,} ranks",
            f"1 to {MAX_TARGET_WORLD:,} ranks",
            "Check mesh, world_size, ranks and mesh_ranks.",
            path=path,
        )
    return world


def _last(ranks) -> int:
    """The highest of ``ranks`` (a list or a run), 0 for none."""
    if type(ranks) is range:
        return ranks[-1]
    return max(ranks or [0])


_PLAIN_KEYS = frozenset(("shape", "dtype", "mesh", "placements", "mesh_ranks", "world_size"))


def _entry_key(e: dict) -> tuple | None:
    """A key equal for entries that build equal layouts: a plain tensor or DTensor entry whose
    values are ints, lists of ints and strings (exactly: ``true`` is not ``1`` here); None for
    any other entry, built on its own."""
    if not e.keys() <= _PLAIN_KEYS:
        return None
    key = []
    for k in sorted(e):
        v = e[k]
        if type(v) is list:
            if not set(map(type, v)) <= {int}:
                return None
            v = tuple(v)
        elif type(v) not in (int, str, range):  # a run compares and hashes by its ranks
            return None
        key.append((k, v))
    return tuple(key)


def _entry_layout(fqn: str, e: dict, world: int) -> Layout:
    """One checked entry as the `Layout` it describes, on ``world`` ranks."""

    holders = dict(ranks=e.get("ranks"), per_rank_values=bool(e.get("per_rank_values")))
    dtype = e.get("dtype", "float32")
    if e.get("bytes"):
        return bytes_layout(world, **holders)
    if "chunks" in e:
        chunks = {int(r): [(tuple(o), tuple(z)) for o, z in cs] for r, cs in e["chunks"].items()}
        return sharded_layout(e["shape"], chunks, dtype, world, fqn=fqn)
    if "mesh" not in e:
        return tensor_layout(e["shape"], world, dtype, fqn=fqn, **holders)
    layout = dtensor_layout(
        e["shape"],
        e["mesh"],
        e["placements"],
        dtype,
        world,
        mesh_ranks=e.get("mesh_ranks"),
        fqn=fqn,
    )
    if "data_held" not in e:
        return layout
    held = {
        int(r): {int(d): _from_runs(v) for d, v in dims.items()}
        for r, dims in e["data_held"].items()
    }
    return with_data_held(layout, held, fqn=fqn)
