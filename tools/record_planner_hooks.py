"""Record, per torch version, the planner hooks the checked planners rely on, read from that
version's own wheel (never installed): ``tests/data/planner_hooks.json``.

Not part of ``make test``: run it when a new torch appears::

    pip download --no-deps torch==2.14.1 -d /tmp/torch-wheels     # outside the repository
    .venv/bin/python tools/record_planner_hooks.py /tmp/torch-wheels/*.whl /opt/wheels/torch-2.13*

For each wheel, the sources of ``torch/distributed/checkpoint/{planner, default_planner,
state_dict_loader, state_dict_saver}.py`` are parsed (``ast``) and these facts recorded:

- the methods ``LoadPlanner`` / ``SavePlanner`` / ``DefaultLoadPlanner`` /
  ``DefaultSavePlanner`` define, with their positional and keyword argument names;
- the fields of the ``LoadPlan`` / ``SavePlan`` dataclasses (``planner_data`` is where every
  rank's entries travel);
- the ``self.<name>`` attributes each default planner assigns (``state_dict``, ``metadata``,
  ``allow_partial_load``, ``dedup_save_to_lowest_rank`` are read by the checked planners);
- how ``_load_state_dict`` / ``_save_state_dict`` drive a planner: which planner methods are
  called in the function given to ``reduce_scatter`` as the local and as the global step, and
  whether ``finish_plan`` is called afterwards; whether ``load`` sorts the state dict's keys.

``tests/test_planner_hooks.py`` checks the record of the installed torch against its live classes
(``inspect``) and every supported version's record against what the checked planners use.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "planner_hooks.json"
PKG = "torch/distributed/checkpoint"
CLASSES = ("LoadPlanner", "SavePlanner", "DefaultLoadPlanner", "DefaultSavePlanner")
PLANS = ("LoadPlan", "SavePlan")


def _args(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    names += [x.arg for x in a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    return names


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _methods(cls: ast.ClassDef) -> dict[str, list[str]]:
    return {n.name: _args(n) for n in cls.body if isinstance(n, ast.FunctionDef)}


def _self_attributes(cls: ast.ClassDef) -> list[str]:
    out = set()
    for node in ast.walk(cls):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for t in targets:
            for sub in ast.walk(t):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id == "self"
                ):
                    out.add(sub.attr)
    return sorted(out)


def _fields(cls: ast.ClassDef) -> list[str]:
    return [
        n.target.id
        for n in cls.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    ]


def _planner_calls(fn: ast.AST) -> list[str]:
    """``planner.<method>`` calls inside ``fn``, in source order."""
    calls = []
    for node in ast.walk(fn):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "planner"
        ):
            calls.append((node.lineno, node.col_offset, node.func.attr))
    return [name for *_, name in sorted(calls)]


def _flow(tree: ast.Module, fn_name: str) -> dict:
    """How ``fn_name`` drives the planner: the local and global step's planner calls (the
    functions handed to ``reduce_scatter``), the calls after it, and the collective used."""
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == fn_name)
    inner = {n.name: n for n in ast.walk(fn) if isinstance(n, ast.FunctionDef) and n is not fn}
    out = {"reduce_scatter": False, "local_step": [], "global_step": [], "after": []}
    for node in ast.walk(fn):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "reduce_scatter"
        ):
            out["reduce_scatter"] = True
            names = [a.id for a in node.args if isinstance(a, ast.Name)]
            if len(names) >= 2:
                out["local_step"] = _planner_calls(inner[names[0]])
                out["global_step"] = _planner_calls(inner[names[1]])
    stepped = set(out["local_step"]) | set(out["global_step"])
    out["after"] = [c for c in _planner_calls(fn) if c not in stepped]
    return out


def record_wheel(path: Path) -> tuple[str, dict]:
    version = re.match(r"torch-(\d+\.\d+)", path.name)[1]
    with zipfile.ZipFile(path) as z:
        src = {
            m: z.read(f"{PKG}/{m}.py").decode()
            for m in ("planner", "default_planner", "state_dict_loader", "state_dict_saver")
        }
    trees = {m: ast.parse(s) for m, s in src.items()}
    classes = {**_classes(trees["planner"]), **_classes(trees["default_planner"])}
    rec = {
        "wheel": path.name,
        "methods": {c: _methods(classes[c]) for c in CLASSES},
        "attributes": {c: _self_attributes(classes[c]) for c in CLASSES[2:]},
        "plan_fields": {c: _fields(classes[c]) for c in PLANS},
        "load_flow": _flow(trees["state_dict_loader"], "_load_state_dict"),
        "save_flow": _flow(trees["state_dict_saver"], "_save_state_dict"),
        "load_sorts_keys": "sorted(state_dict.keys())" in src["state_dict_loader"],
    }
    return version, rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheels", nargs="+", type=Path)
    args = ap.parse_args(argv)
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    for w in args.wheels:
        version, rec = record_wheel(w)
        data[version] = rec
        print(f"{version}: {w.name}", file=sys.stderr)
    ordered = dict(sorted(data.items(), key=lambda kv: tuple(map(int, kv[0].split(".")))))
    OUT.write_text(json.dumps(ordered, indent=1, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
