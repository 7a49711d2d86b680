import subprocess
import sys


def test_import_workbench_does_not_import_heavy_libraries():
    code = (
        "import sys, workbench; "
        "bad = [m for m in ('torch', 'matplotlib', 'ipywidgets', 'pandas') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
