"""Mutation fuzzing of the workbench's readers of untrusted files, with fixed seeds.

Readers: the allow-list ``.metadata`` unpickler (`workbench.formats.dcp.read_metadata_bytes`),
JSON targets (`workbench.targets.json_target`) and safetensors headers
(`workbench.formats.limits.read_length_prefixed_json`). Seeds: real files in a corpus directory
(``*.metadata`` pickles from real gloo ``dcp.save`` runs, ``*.safetensors`` written by the
``safetensors`` package, ``*.json`` targets); each case mutates one seed (byte flips, interesting
bytes, pickle opcodes with huge arguments, inserted / deleted / duplicated ranges, truncation).

Every case must end in a parsed result or a ``WorkbenchError``. Bounds, enforced per case:
``RLIMIT_AS`` is set to the process's address space at start + 256 MB (``--mem-mb``), so a case
that allocates more fails with MemoryError (a failure, reported); each case's CPU time is
measured. The known bombs (``BOMBS``) run first as regression cases.

Run: ``.venv/bin/python benchmarks/fuzz_readers.py --cases 100000`` (makes a corpus with real gloo
saves unless ``--corpus DIR`` is given; ``--engine hypothesis`` draws the mutations with
hypothesis instead of ``random.Random(seed)``). Prints a JSON summary (``--json``) or a report.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.errors import WorkbenchError  # noqa: E402


# ----------------------------------------------------------------------------- readers
def _read_metadata(data: bytes):
    from workbench.formats.dcp import read_metadata_bytes

    return read_metadata_bytes(data, "<fuzz>")


def _read_target(data: bytes):
    from workbench.targets import json_target

    return json_target(data, "<fuzz>")


def _read_header(data: bytes):
    from workbench.formats.limits import read_length_prefixed_json

    return read_length_prefixed_json(data, "<fuzz>")


READERS = {"metadata": _read_metadata, "json": _read_target, "safetensors": _read_header}
SUFFIX = {".metadata": "metadata", ".json": "json", ".safetensors": "safetensors"}


# ----------------------------------------------------------------------------- known bombs
def _first_op(data: bytes, name: str) -> int:
    import pickletools

    return next(pos for op, _, pos in pickletools.genops(data) if op.name == name)


def bombs(seeds: dict[str, list[bytes]]) -> list[tuple[str, str, bytes]]:
    """``(name, reader, bytes)``: inputs that took the readers down before they were bounded."""
    md = seeds["metadata"][0]
    out = []
    p = _first_op(md, "SETITEMS")
    for idx in (0x7FFFFFFF, 0x30000000):  # the memo array of the C unpickler: > 4 GB
        b = bytearray(md)
        b[p : p + 5] = b"r" + struct.pack("<I", idx)
        out.append((f"LONG_BINPUT {idx:#x}", "metadata", bytes(b)))
    # 300,000 nested TUPLE1 used as a dict key: tuple hashing recursed in C (segfault)
    out.append(("deep tuple key", "metadata", b"\x80\x02}N" + b"\x85" * 300_000 + b"Ns."))
    # 40,000 int keys sharing one hash: SETITEMS went quadratic (14 s for 600 KB)
    m = (1 << 61) - 1
    keys = b"".join(
        b"\x8a\x0c" + (k * m).to_bytes(12, "little", signed=True) + b"N" for k in range(1, 40_001)
    )
    out.append(("colliding int keys", "metadata", b"\x80\x02}(" + keys + b"u."))
    # BINBYTES8 declaring 2**40 bytes (the C unpickler allocates before reading)
    out.append(
        ("BINBYTES8 2**40", "metadata", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"x.")
    )
    # builtins.bytes(2**34) through an allow-listed REDUCE
    out.append(("bytes(2**34)", "metadata", b"\x80\x02cbuiltins\nbytes\nJ\x00\x00\x00\x04\x85R."))
    # list(L) of one 100,000-element list, 100,000 times: quadratic copies
    lst = b"](" + b"K\x01" * 100_000 + b"eq\x00"
    rep = b"cbuiltins\nlist\nq\x01" + b"(" + b"h\x01h\x00\x85R" * 100_000 + b"l."
    out.append(("repeated list() copies", "metadata", b"\x80\x02" + lst + b"0" + rep))
    # JSON: deep nesting and a million-digit number
    out.append(("JSON 10**6 deep", "json", b"[" * 1_000_000 + b"]" * 1_000_000))
    out.append(("JSON 10**6 digits", "json", b'{"w": {"shape": [' + b"9" * 1_000_000 + b"]}}"))
    out.append(
        ("JSON world 10**12", "json", b'{"w": {"bytes": true, "world_size": 1000000000000}}')
    )
    out.append(
        (
            "JSON mesh product",
            "json",
            b'{"w": {"shape": [4], "mesh": [' + b"65536," * 1000 + b'1], "placements": "R"}}',
        )
    )
    # safetensors header declaring 2**60 bytes
    out.append(("header 2**60", "safetensors", struct.pack("<Q", 1 << 60) + b"{}"))
    return out


# ----------------------------------------------------------------------------- mutations
_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 40, (1 << 63) - 1]
_PICKLE_SNIPPETS = [
    b"r\xff\xff\xff\x7f",  # LONG_BINPUT huge
    b"j\xff\xff\xff\x7f",  # LONG_BINGET huge
    b"\x8e" + struct.pack("<Q", 1 << 40),  # BINBYTES8 huge
    b"\x95" + struct.pack("<Q", 1 << 50),  # FRAME huge
    b"\x8d" + struct.pack("<Q", 1 << 33),  # BINUNICODE8 huge
    b"\x85" * 64,  # TUPLE1 x64
    b"(" * 64,  # MARK x64
    b"2" * 64,  # DUP x64
    b"cbuiltins\nbytes\n",
    b"cos\nsystem\n",
    b"\x8b\xff\xff\xff\x7f",  # LONG4 huge
]
_JSON_SNIPPETS = [b"[" * 80, b"{" * 80, b"9" * 200, b"1e999", b'"\\ud800"', b"-0", b"null", b"[]"]


def mutate(rng: random.Random, data: bytes, kind: str) -> bytes:
    b = bytearray(data)
    # one mutation half of the time: more cases stay parseable and reach the converters
    for _ in range(1 if rng.random() < 0.5 else rng.randint(2, 4)):
        op = rng.randrange(9)
        n = len(b)
        pos = rng.randrange(n + 1) if n else 0
        if op == 0 and n:  # flip bits of one byte
            b[pos % n] ^= rng.randint(1, 255)
        elif op == 1 and n:  # an interesting byte
            b[pos % n] = rng.choice((0, 0x7F, 0x80, 0xFF, ord("["), ord("\n")))
        elif op == 2:  # an interesting little-endian number
            v = rng.choice(_INTERESTING)
            w = rng.choice((1, 2, 4, 8))
            b[pos : pos + w] = (v & ((1 << (8 * w)) - 1)).to_bytes(w, "little")
        elif op == 3:  # a snippet for this format
            b[pos:pos] = rng.choice(_PICKLE_SNIPPETS if kind == "metadata" else _JSON_SNIPPETS)
        elif op == 4 and n:  # delete a range
            del b[pos : pos + rng.randint(1, 16)]
        elif op == 5 and n:  # duplicate a range somewhere else
            a = rng.randrange(n)
            chunk = bytes(b[a : a + rng.randint(1, 64)])
            b[pos:pos] = chunk * rng.randint(1, 4)
        elif op == 6 and n:  # truncate
            del b[pos:]
        elif op == 7:  # random bytes
            b[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 8 and n:  # overwrite one byte
            b[pos % n] = rng.randrange(256)
    return bytes(b)


# ----------------------------------------------------------------------------- running
class Stats:
    def __init__(self):
        self.cases = 0
        self.parsed = 0
        self.refused = 0
        self.failures: list[dict] = []
        self.max_cpu = 0.0
        self.max_case = None
        self.by_reader: dict[str, int] = {}

    def run(self, kind: str, data: bytes, label) -> str:
        self.cases += 1
        self.by_reader[kind] = self.by_reader.get(kind, 0) + 1
        t = time.process_time()
        # a case still running after 10 s prints where it is (and the fuzzer goes on)
        faulthandler.dump_traceback_later(10)
        try:
            READERS[kind](data)
            self.parsed += 1
            outcome = "parsed"
        except WorkbenchError:
            self.refused += 1
            outcome = "refused"
        except BaseException as e:  # noqa: BLE001 - every other outcome is a finding
            if isinstance(e, KeyboardInterrupt):
                raise
            self.failures.append(
                {
                    "case": label,
                    "reader": kind,
                    "error": f"{type(e).__name__}: {str(e)[:200]}",
                    "where": traceback.format_exc(limit=-3)[-600:],
                    "input_hex": data[:200].hex(),
                }
            )
            outcome = f"failed: {type(e).__name__}"
        faulthandler.cancel_dump_traceback_later()
        dt = time.process_time() - t
        if dt > self.max_cpu:
            self.max_cpu, self.max_case = dt, label
        return outcome

    def summary(self, wall: float, vm_start: int, mem_mb: int) -> dict:
        return {
            "cases": self.cases,
            "parsed": self.parsed,
            "refused": self.refused,
            "failures": self.failures[:20],
            "n_failures": len(self.failures),
            "by_reader": self.by_reader,
            "max_case_cpu_s": round(self.max_cpu, 4),
            "slowest_case": self.max_case,
            "wall_s": round(wall, 2),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "address_space_limit_mb": (vm_start >> 20) + mem_mb,
        }


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def load_corpus(root) -> dict[str, list[bytes]]:
    seeds: dict[str, list[bytes]] = {k: [] for k in READERS}
    for p in sorted(Path(root).rglob("*")):
        kind = SUFFIX.get(p.suffix) or ("metadata" if p.name == ".metadata" else None)
        if kind and p.is_file():
            seeds[kind].append(p.read_bytes())
    missing = [k for k, v in seeds.items() if not v]
    if missing:
        raise SystemExit(f"corpus {root} has no seed files for {missing}")
    return seeds


def make_corpus(root) -> Path:
    """Seed files: .metadata of three real 2-rank gloo saves, safetensors files written by the
    safetensors package (DCP's sharding header), JSON targets."""
    import numpy as np
    import safetensors.numpy as stn

    import workbench as wb
    from workbench.torch_bridge.runs import SaveStep, run_steps

    root = Path(root)
    shapes = {
        "a": {
            "model.w": wb.dtensor_layout((5, 3), (2,), "S(0)"),
            "model.b": wb.dtensor_layout((3,), (2,), "R", "bfloat16"),
            "opt.step": wb.bytes_layout(2),
            "scalar": wb.tensor_layout((), 2, "int64"),
        },
        "b": {
            "w": wb.dtensor_layout((8, 6), (2,), "S(1)"),
            "st": wb.sharded_layout(
                (4, 2), [[((0, 0), (1, 2)), ((3, 0), (1, 2))], [((1, 0), (2, 2))]], "float64"
            ),
        },
        "c": {
            "emb": wb.dtensor_layout((16, 4), (2,), "S(0)", "float16"),
            "t": wb.tensor_layout((4,), 2, per_rank_values=True),
            "dl.dp_rank_0": wb.bytes_layout(2, ranks=[0]),
        },
    }
    runs = run_steps([SaveStep(str(root / k), v) for k, v in shapes.items()], 2)
    assert all(r.ok for r in runs), [r.errors for r in runs]
    for i, (shape, offsets) in enumerate((((4, 6), [0, 0]), ((2, 3), [2, 0]))):
        info = json.dumps({"w": {"saved_offsets": offsets}})
        meta = {"DCP_SHARDING_INFO": info, "DCP_VERSION": "1.0", "format": "pt"}
        arrays = {"w": np.zeros(shape, np.float32), "b": np.ones(3, np.float16)}
        (root / f"shard-{i + 1:05}-model-00001-of-00001.safetensors").write_bytes(
            stn.save(arrays, metadata=meta)
        )
    targets = [
        {"w": {"shape": [8, 6], "mesh": [2], "placements": "S(0)"}, "step": {"bytes": True}},
        {"w": {"shape": [8, 6], "dtype": "bfloat16", "mesh": [2, 2], "placements": "S(0), S(1)"}},
        {
            "t": {"shape": [4], "ranks": [0, 1], "per_rank_values": True, "world_size": 4},
            "sub": {"shape": [6], "mesh": [2], "placements": "SS(0,2)", "mesh_ranks": [2, 3]},
        },
    ]
    for i, t in enumerate(targets):
        (root / f"target{i}.json").write_text(json.dumps(t))
    return root


def fuzz(seeds, cases: int, seed: int, engine: str, stats: Stats, progress=False) -> None:
    kinds = list(seeds)
    if engine == "random":
        rng = random.Random(seed)
        for i in range(cases):
            kind = kinds[i % len(kinds)]
            src = rng.choice(seeds[kind])
            stats.run(kind, mutate(rng, src, kind), f"random seed={seed} case={i}")
            if progress and i % 10_000 == 0:
                print(f"{i} cases, {time.process_time():.0f} s CPU", file=sys.stderr, flush=True)
        return
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    @settings(
        max_examples=cases,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(st.sampled_from(kinds), st.integers(0, 2**32 - 1), st.data())
    def one(kind, mseed, data):
        src = data.draw(st.sampled_from(seeds[kind]))
        stats.run(kind, mutate(random.Random(mseed), src, kind), f"hypothesis mseed={mseed}")

    one()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="directory of seed files (default: make one with real saves)")
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=("random", "hypothesis"), default="random")
    ap.add_argument("--mem-mb", type=int, default=256, help="address space allowed per case")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = ap.parse_args(argv)
    faulthandler.enable()  # a crash of the interpreter itself prints where it happened
    if args.corpus:
        seeds = load_corpus(args.corpus)
    else:
        with tempfile.TemporaryDirectory(prefix="wb_fuzz_") as d:
            seeds = load_corpus(make_corpus(d))
    # warm up imports and caches before the address-space limit is set
    for kind, datas in seeds.items():
        READERS[kind](datas[0])
    vm = _address_space()
    limit = vm + (args.mem_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    stats = Stats()
    t = time.perf_counter()
    bomb_outcomes = {}
    for name, kind, data in bombs(seeds):
        t0 = time.process_time()
        bomb_outcomes[name] = (stats.run(kind, data, f"bomb: {name}"), time.process_time() - t0)
    fuzz(seeds, args.cases, args.seed, args.engine, stats, progress=args.cases >= 20_000)
    out = stats.summary(time.perf_counter() - t, vm, args.mem_mb)
    out["bombs"] = {k: [o, round(s, 4)] for k, (o, s) in bomb_outcomes.items()}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return out


if __name__ == "__main__":
    main()
