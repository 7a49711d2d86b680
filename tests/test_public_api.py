"""The public face: the top level is the user's vocabulary (about thirty names), each one a
re-export of a submodule whose ``__all__`` lists it; every module's ``__all__`` is complete and
exact; ``workbench.dcp`` mirrors torch's own module names; no test reaches a private name."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import workbench as wb

ROOT = Path(__file__).resolve().parents[1]


def _modules():
    for info in pkgutil.walk_packages(wb.__path__, "workbench."):
        yield info.name, info.ispkg, importlib.import_module(info.name)


MODULES = list(_modules())


def test_the_top_level_is_about_thirty_names():
    assert 25 <= len(wb.__all__) <= 40, len(wb.__all__)
    assert len(set(wb.__all__)) == len(wb.__all__)
    # the vocabulary of DESIGN.md's acceptance interface is there
    for name in ("Shard", "Replicate", "StridedShard", "Partial", "parse_placement"):
        assert name in wb.__all__
    for name in ("local_shape_and_offset", "held_indices", "plan_save", "plan_load", "Chunk"):
        assert name in wb.__all__


@pytest.mark.parametrize("name", wb.__all__)
def test_each_top_level_name_is_listed_by_the_module_that_defines_it(name):
    value = getattr(wb, name)
    homes = [
        mod_name
        for mod_name, _, mod in MODULES
        if name in getattr(mod, "__all__", ()) and getattr(mod, name) is value
    ]
    assert homes, f"workbench.{name} is in no submodule's __all__"
    defined_in = getattr(value, "__module__", None)
    assert defined_in in homes, (name, defined_in, homes)


@pytest.mark.parametrize("mod_name", [n for n, _, _ in MODULES])
def test_every_module_all_is_complete_and_exact(mod_name):
    mod = importlib.import_module(mod_name)
    listed = getattr(mod, "__all__", None)
    assert listed is not None, f"{mod_name} has no __all__"
    assert len(set(listed)) == len(listed), f"{mod_name}.__all__ repeats a name"
    missing = [n for n in listed if not hasattr(mod, n)]
    assert not missing, f"{mod_name}.__all__ names what it does not have: {missing}"
    defined = [
        n
        for n, v in vars(mod).items()
        if not n.startswith("_")
        and (inspect.isfunction(v) or inspect.isclass(v))
        and v.__module__ == mod_name
    ]
    unlisted = [n for n in defined if n not in listed]
    assert not unlisted, f"{mod_name} defines public {unlisted} but its __all__ omits them"


@pytest.mark.parametrize(
    "mod_name", [n for n, is_pkg, _ in MODULES if not is_pkg and not n.startswith("workbench.dcp.")]
)
def test_a_module_all_lists_its_own_definitions_not_another_modules(mod_name):
    """Re-exports are the business of packages (and of workbench.dcp's map of torch's modules);
    an alias under another name (``ChunkStorageMetadata = Chunk``) is a definition of its own."""
    mod = importlib.import_module(mod_name)
    foreign = []
    for n in mod.__all__:
        v = getattr(mod, n)
        if (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ != mod_name:
            if v.__name__ == n:
                foreign.append(f"{n} (from {v.__module__})")
    assert not foreign, f"{mod_name}.__all__ re-exports {foreign}"


def test_moved_names_still_resolve_but_are_not_the_face():
    """torch's records and helpers left the top level for workbench.dcp; the old spelling keeps
    working for DESIGN.md's acceptance interface, and dir() shows only the face."""
    from workbench import dcp

    for name in ("ReadItem", "create_read_items_for_chunk_list", "dedup_save_plans", "Metadata"):
        assert name not in wb.__all__ and name not in dir(wb)
        assert getattr(wb, name) is getattr(dcp, name)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        wb.nonexistent  # noqa: B018


# workbench.dcp's modules and the torch modules whose names they carry
TORCH_MODULES = {
    "metadata": ["metadata", "filesystem"],
    "planner": ["planner"],
    "planner_helpers": ["planner_helpers", "resharding"],
    "default_planner": ["default_planner", "_dedup_save_plans", "_nested_dict"],
}


@pytest.mark.parametrize("ours", sorted(TORCH_MODULES))
def test_workbench_dcp_mirrors_torchs_module_names(ours):
    """Each name of workbench.dcp.<module> exists in the torch module of the same name (or one
    it draws from), under the same name or with torch's leading underscore."""
    import torch.distributed.checkpoint  # noqa: F401

    mod = importlib.import_module(f"workbench.dcp.{ours}")
    theirs = [
        importlib.import_module(f"torch.distributed.checkpoint.{m}") for m in TORCH_MODULES[ours]
    ]
    for name in mod.__all__:
        assert any(hasattr(t, name) or hasattr(t, "_" + name) for t in theirs), (ours, name)
    assert set(importlib.import_module("workbench.dcp").__all__) >= set(mod.__all__)


def _private_uses(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workbench"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield f"{path.name}:{node.lineno}: {alias.name} from {node.module}"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if node.attr.startswith("__") or node.attr.startswith("_repr"):
                continue
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in {"wb", "workbench"}:
                yield f"{path.name}:{node.lineno}: {ast.unparse(node)}"


def test_no_test_reaches_a_private_name():
    found = [u for p in sorted((ROOT / "tests").glob("*.py")) for u in _private_uses(p)]
    assert not found, "\n".join(found)
