"""The module contracts of docs/ARCHITECTURE.md, checked by tools: import-linter's layer and
forbidden-import contracts (pyproject.toml), no private names across modules, lazy imports only
where a comment says why, and what importing a view really loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workbench"
BIN = Path(sys.executable).parent


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path, path.read_text()


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_import_linter_contracts_hold():
    out = subprocess.run(
        [str(BIN / "lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "broken" not in out.stdout.split("Contracts:")[-1].split("\n")[0].replace("0 broken", "")


def test_no_module_imports_another_modules_private_names():
    found = []
    for name, path, text in _modules():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(name, node, path.name == "__init__.py")
                if not target.startswith("workbench") or target == name:
                    continue
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: {a.name} from {target}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not found, "\n".join(found)


def _commented(lines: list[str], i: int) -> bool:
    """Whether the import on line ``i`` or one of the imports right above it carries a comment,
    or the line above that block is a comment."""
    while True:
        if "#" in lines[i]:
            return True
        above = lines[i - 1].strip()
        if above.startswith("#"):
            return True
        if not above.startswith(("import ", "from ")):
            return False
        i -= 1


def test_lazy_imports_say_why():
    """An import inside a function has a comment on its line or the line before, or its module's
    docstring states the module's lazy-import rule (``Lazy imports: ...``)."""
    found = []
    for _name, path, text in _modules():
        tree = ast.parse(text)
        if "Lazy imports:" in " ".join((ast.get_docstring(tree) or "").split()):
            continue
        lines = text.split("\n")
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not _commented(
                    lines, node.lineno - 1
                ):
                    found.append(
                        f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1]}"
                    )
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("workbench", ("torch", "pandas", "matplotlib", "ipywidgets")),
        ("workbench.plots", ("pandas", "torch", "workbench.tables", "workbench.torch_bridge")),
        ("workbench.picture_data", ("pandas", "matplotlib", "torch")),
        ("workbench.tables", ("matplotlib", "torch", "workbench.plots")),
        ("workbench.planning", ("torch", "pandas", "matplotlib", "ipywidgets")),
        ("workbench.diagnosis", ("torch", "pandas", "matplotlib", "ipywidgets")),
        ("workbench.explanations", ("torch", "pandas", "matplotlib", "ipywidgets")),
        ("workbench.sources", ("torch", "pandas", "matplotlib", "workbench.torch_bridge.convert")),
    ],
)
def test_importing_a_module_loads_only_what_it_may(module, absent):
    code = f"import sys, {module}\nprint(sorted(m for m in {list(absent)!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"import {module} loaded {out.stdout.strip()}"
