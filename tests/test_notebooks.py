"""Every notebook in notebooks/ executes top to bottom (nbclient, kernel "python3"); the asserts
inside the cells are the checks. Outputs must be committed cleared. The course notebooks state
their goal and prerequisites, link the glossary, end with asserted 'predict, then run' cells, and
call the explore_* functions by keyword."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


# The notebooks written in the course format (goal, prerequisites, glossary link, checks of
# understanding): every notebook but the glossary.
COURSE_NAMES = {
    "00_tour.ipynb",
    "01_chunks_and_placements.ipynb",
    "02_read_items.ipynb",
    "03_dedup_and_files.ipynb",
    "04_whole_model.ipynb",
    "05_debug_failing_reshard.ipynb",
    "06_strided_shard_hazard.ipynb",
    "07_checkpoint_formats.ipynb",
    "08_your_model.ipynb",
    "09_reported_failures.ipynb",
    "10_checked_load.ipynb",
    "11_worked_example.ipynb",
    "12_your_job.ipynb",
}
COURSE = [p for p in NOTEBOOKS if p.name in COURSE_NAMES]


def test_every_expected_notebook_exists():
    names = {p.name for p in NOTEBOOKS}
    expected = COURSE_NAMES | {
        "00_glossary.ipynb",
    }
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert dirty == [], f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # The kernel runs in a scratch directory, so nothing a notebook writes lands in the repo; it
    # inherits MPLBACKEND=Agg from conftest. execute() raises CellExecutionError on the first
    # failing cell (a failed assert included).
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert errors == []


def _code(nb) -> str:
    # cell magics and line magics are not Python
    return "\n".join(
        "\n".join(ln for ln in c.source.splitlines() if not ln.lstrip().startswith(("%", "!")))
        for c in nb.cells
        if c.cell_type == "code"
    )


@pytest.mark.parametrize("path", COURSE, ids=[p.stem for p in COURSE])
def test_notebook_teaches_in_order(path):
    """Each notebook opens with its goal and prerequisites, links the glossary, and ends with
    'predict, then run' cells (their asserts run in test_notebook_executes)."""
    nb = nbformat.read(path, as_version=4)
    opening = nb.cells[0].source
    assert nb.cells[0].cell_type == "markdown"
    assert "**You will be able to:**" in opening and "**Assumes:**" in opening, path.name
    assert "(00_glossary.ipynb)" in opening, path.name
    starts = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "markdown" and "predict, then run" in c.source.lower()
    ]
    assert starts, f"{path.name}: no 'predict, then run' section"
    asserts_after = sum(
        c.cell_type == "code" and "assert " in c.source for c in nb.cells[starts[0] :]
    )
    assert asserts_after >= 2, f"{path.name}: the checks of understanding assert nothing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_calls_explorers_by_keyword(path):
    """explore_* functions take shapes, meshes and placements as strings: positional calls read
    as unlabelled strings, so the notebooks name them."""
    import ast

    tree = ast.parse(_code(nbformat.read(path, as_version=4)))
    positional = [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and getattr(n.func, "id", getattr(n.func, "attr", "")).startswith("explore_")
        and n.args
    ]
    assert positional == [], f"{path.name}: explore_* called with positional arguments"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_imports_no_private_workbench_name(path):
    import ast

    tree = ast.parse(_code(nbformat.read(path, as_version=4)))
    private = [
        (n.module, a.name)
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("workbench")
        for a in n.names
        if a.name.startswith("_")
    ]
    assert private == []
