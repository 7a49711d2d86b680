"""The package installed WITHOUT its extras (no torch, pandas, matplotlib, ipywidgets, Jupyter),
as on a login node: ``import workbench``, the planning core, the readers and the CLI's inspect /
plan / check / explain work with numpy and the small libraries of ``dependencies``; a face that
needs an extra says which, in one line.

The wheel is built from this tree by the test venv's own setuptools (no build isolation, no
download); the bare venv then installs it with its base dependencies from the registry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "tests" / "data" / "torch-2.9" / "ckpt"  # w 4x3 float32, b (2,) int64, step bytes
HEAVY = (
    "torch",
    "pandas",
    "matplotlib",
    "ipywidgets",
    "jupyterlab",
    "IPython",
    "anywidget",
    "distributed",
)


def _run(cmd, **kw):
    # run outside the source tree, so `python -m workbench.cli` imports the installed wheel
    kw.setdefault("cwd", "/")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    return out.returncode, out.stdout + out.stderr


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bare")
    code, log = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w"]
        + [str(tmp / "wheel"), str(ROOT)]
    )
    assert code == 0, log
    (wheel,) = (tmp / "wheel").glob("*.whl")
    # no ensurepip in the bare venv: this venv's pip installs into it (pip --python)
    venv.create(tmp / "venv", with_pip=False)
    py = tmp / "venv" / "bin" / "python"
    code, log = _run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", str(wheel)]
    )
    assert code == 0, log
    return py


def test_the_bare_install_has_none_of_the_heavy_libraries(bare):
    code, out = _run(
        [
            str(bare),
            "-c",
            f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])",
        ]
    )
    assert code == 0 and out.strip() == "[]", out


def test_planning_and_reading_work_without_the_extras(bare):
    script = f"""
import sys, workbench as wb
md = wb.load_metadata({str(CKPT)!r})
target = {{"w": wb.dtensor_layout((4, 3), (2,), "S(0)"), "b": wb.tensor_layout((2,), 2, "int64"),
          "step": wb.bytes_layout(2)}}
load = wb.plan_load(md, target)
print(len(load.plans[1].items), len(wb.find_problems(load)))
save = wb.plan_save({{"w": wb.dtensor_layout((8, 6), (2, 2), "S(0), S(1)")}})
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    code, out = _run([str(bare), "-c", script])
    assert code == 0, out
    assert out.split("\n")[:2] == ["3 0", "[]"], out  # rank 1: w rows 2:4, b, step


def test_the_cli_inspects_plans_checks_and_explains_without_the_extras(bare, tmp_path):
    cli = [str(bare), "-m", "workbench.cli"]
    code, out = _run(cli + ["inspect", str(CKPT)])
    assert code == 0 and "written by torch 2.9 to 2.14" in out, out
    code, out = _run(cli + ["check", str(CKPT)])
    assert code == 0, out
    code, out = _run(cli + ["check", str(CKPT), "--deep", "--dask", "tcp://127.0.0.1:8786"])
    assert code == 2 and "pip install 'dcp-reshard-workbench[cluster]'" in out, out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out, out
    target = tmp_path / "target.json"
    target.write_text(
        json.dumps(
            {
                "w": {"shape": [4, 3], "dtype": "float32", "mesh": [2], "placements": "S(1)"},
                "b": {"shape": [2], "dtype": "int64", "world_size": 2},
                "step": {"bytes": True},
            }
        )
    )
    code, out = _run(cli + ["plan", str(CKPT), "--target", str(target)])
    assert code == 0, out
    code, out = _run(cli + ["plan", str(CKPT), "--target", "llama-tiny:fsdp:dp=2"])
    assert code == 1 and "missing_key" in out, out  # a real finding, from the preset's keys
    code, out = _run(
        cli
        + [
            "explain",
            "Size mismatch between saved torch.Size([8, 6]) and current: torch.Size([8, 4]) for w",
        ]
    )
    assert code == 0 and "size_mismatch" in out, out


@pytest.mark.parametrize(
    ("module", "library", "extra"),
    [
        ("workbench.tables", "pandas", "lab"),
        ("workbench.plots", "matplotlib", "lab"),
        ("workbench.widgets.controls", "ipywidgets", "lab"),
        ("workbench.widgets.canvas", "anywidget", "lab"),
        ("workbench.torch_bridge.checked_planner", "torch", "torch"),
    ],
)
def test_a_face_without_its_extra_says_which_to_install_in_one_line(bare, module, library, extra):
    code, out = _run([str(bare), "-c", f"import {module}"])
    assert code != 0
    last = out.strip().splitlines()[-1]
    assert f"needs {library}, which is not installed" in last, out
    assert f"pip install 'dcp-reshard-workbench[{extra}]'" in last, out
