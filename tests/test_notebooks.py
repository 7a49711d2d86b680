"""Every notebook in notebooks/ executes top to bottom (nbclient, kernel "python3"); the asserts
inside the cells are the checks. Outputs must be committed cleared."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_every_expected_notebook_exists():
    names = {p.name for p in NOTEBOOKS}
    expected = {
        "00_tour.ipynb",
        "01_chunks_and_placements.ipynb",
        "02_read_items.ipynb",
        "03_dedup_and_files.ipynb",
        "04_whole_model.ipynb",
        "05_debug_failing_reshard.ipynb",
        "06_strided_shard_hazard.ipynb",
        "07_checkpoint_formats.ipynb",
        "08_your_model.ipynb",
        "10_checked_load.ipynb",
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
