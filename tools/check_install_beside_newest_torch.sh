#!/usr/bin/env bash
# Installing the workbench must never change the user's torch: install the newest torch the
# registry serves into a throw-away venv, then `pip install -e "<this repository>[torch]"` (the
# extra that names torch as a requirement: the base install does not need torch), and check that
# torch's version is unchanged and that the workbench plans with it (a torch newer than the newest
# recorded version gets the newest recorded semantics and one warning naming it).
#
# Not part of `make test`: it downloads torch (about 1 GB, several GB with its CUDA libraries).
#
#   tools/check_install_beside_newest_torch.sh            # a new venv under /tmp
#   tools/check_install_beside_newest_torch.sh VENV_DIR   # reuse VENV_DIR (torch kept if present)
#
# On a machine whose pip configuration caps torch (a constraints file), lift it for this command
# (e.g. PIP_CONFIG_FILE=/dev/null), or the "newest" torch is the cap.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$(mktemp -d /tmp/wb-newest-torch.XXXXXX)}"
case "$venv" in "$repo"/*) echo "refusing a venv inside the repository: $venv" >&2; exit 2 ;; esac

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
version() { "$py" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true; }

if [ -z "$(version)" ]; then
    "$py" -m pip install -q torch
fi
before="$(version)"
newest="$("$py" -m pip index versions torch 2>/dev/null | sed -n 's/^torch (\(.*\))$/\1/p')"
echo "torch before: $before (newest the registry serves: ${newest:-unknown})"

"$py" -m pip install -q -e "$repo[torch]"
after="$(version)"
echo "torch after pip install -e .[torch]: $after"
if [ "$before" != "$after" ]; then
    echo "FAIL: installing the workbench changed torch $before -> $after" >&2
    exit 1
fi

"$py" - <<'PY'
import warnings

from workbench.planning import plan_save
from workbench.sharding import dtensor_layout
from workbench.versions import NEWEST_TORCH_VERSION, assumed_version_note, installed_torch_version

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    res = plan_save({"w": dtensor_layout((8, 4), (2,), "S(0)")})
print(f"installed torch {installed_torch_version()}: planned with torch {res.torch_version}'s "
      f"semantics (newest recorded: {NEWEST_TORCH_VERSION})")
note = assumed_version_note()
if note:
    print("note:", note)
    assert [str(w.message) for w in caught] == [note], caught
PY
echo "OK: torch $after kept"
