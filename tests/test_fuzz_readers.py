"""Mutation fuzzing of the readers of untrusted files (``benchmarks/fuzz_readers.py``, fixed
seeds) on real files: ``.metadata`` pickles of three real 2-rank gloo saves of different shapes,
safetensors files written by the ``safetensors`` package, JSON targets.

The fuzzer runs in a fresh process whose address space is capped at its start + 256 MB
(``RLIMIT_AS``): a case that allocates more raises MemoryError and is reported as a failure, so
"no case grows memory by more than 256 MB" is enforced per case, not sampled. Each case's CPU
time is measured by the fuzzer; the known bombs run first and must be refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fuzz_readers.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from fuzz_readers import make_corpus
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return make_corpus(tmp_path_factory.mktemp("fuzz_corpus"))


def _fuzz(corpus, *args) -> dict:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--corpus", str(corpus), "--json", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.real
def test_5000_mutations_end_parsed_or_refused_within_bounds(corpus):
    res = _fuzz(corpus, "--cases", "5000", "--seed", "12")
    assert res["n_failures"] == 0, json.dumps(res["failures"], indent=1)
    assert res["cases"] >= 5000
    assert set(res["by_reader"]) == {"metadata", "json", "safetensors"}
    assert min(res["by_reader"].values()) >= 1600
    # some mutants still parse (the converters are exercised, not only the decoder)
    assert res["parsed"] >= 100 and res["refused"] >= 1000
    # the per-case bound of the issue: none slower than 1 s (measured in CPU seconds)
    assert res["max_case_cpu_s"] < 1.0, res["slowest_case"]
    assert res["address_space_limit_mb"] > 0


@pytest.mark.real
def test_known_bombs_are_refused(corpus):
    res = _fuzz(corpus, "--cases", "0")
    bombs = res["bombs"]
    assert {
        "LONG_BINPUT 0x7fffffff",
        "LONG_BINPUT 0x30000000",
        "deep tuple key",
        "colliding int keys",
        "BINBYTES8 2**40",
        "bytes(2**34)",
        "repeated list() copies",
        "JSON 10**6 deep",
        "JSON 10**6 digits",
        "JSON world 10**12",
        "JSON mesh product",
        "header 2**60",
    } <= set(bombs)
    for name, (outcome, cpu) in bombs.items():
        assert outcome == "refused", (name, outcome)
        assert cpu < 1.0, (name, cpu)
