# The two set-up commands of the README: `make lab` and `make test`.
# Both create .venv in the repository root if missing and install the package with its
# dependencies. torch is pinned to 2.13.0 first: on these machines pip takes the CPU wheel on disk.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.wb-installed
export MPLBACKEND := Agg

.PHONY: lab test venv chromium bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[all,remote,cluster,dev]"
	touch $(STAMP)

# Debian's Chromium for the browser tests (never `playwright install`).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.allow_root=True notebooks/00_tour.ipynb

# ruff (lint + format) first, then the suite on both cores (pytest-xdist; each real run picks
# its own free port; loadgroup keeps a module marked xdist_group, such as the Dask cluster's, on
# one worker, so its cluster starts once; tests/conftest.py marks every module whose tests share a
# module fixture, e.g. a real gloo run, the same way). The layer contracts run inside the suite
# (tests/test_architecture.py). The 15 slowest tests are listed at the end, to keep the suite
# in budget.
test: $(STAMP) chromium
	$(VENV)/bin/ruff check workbench tests benchmarks
	$(VENV)/bin/ruff format --check workbench tests benchmarks
	WB_REQUIRE_BROWSER=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=15

bench: $(STAMP)
	$(PY) benchmarks/bench_plans.py

clean:
	rm -rf $(VENV) .pytest_cache
