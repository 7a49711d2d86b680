"""The allow-list ``.metadata`` reader: hostile pickles are refused before anything runs, damaged
files give a MetadataError naming the path, and real checkpoints (written by real gloo runs) read
exactly as torch's ``FileSystemReader.read_metadata`` reads them."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench import (
    BytesStorageMetadata,
    Chunk,
    MetadataError,
    TensorStorageMetadata,
    UnsafeCheckpointError,
    bytes_layout,
    dtensor_layout,
    sharded_layout,
    tensor_layout,
)
from workbench.formats.dcp import ALLOWED_GLOBALS, load_metadata, read_metadata_bytes

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def real_checkpoints(tmp_path_factory):
    """Two checkpoints written by a real 2-process gloo save (one launch): every kind of entry."""
    from workbench.torch_bridge.runs import SaveStep, run_steps

    root = tmp_path_factory.mktemp("real_md")
    a = {
        "model.w": dtensor_layout((5, 3), (2,), "S(0)"),  # uneven: 3 + 2 rows
        "model.b": dtensor_layout((3,), (2,), "R", "bfloat16"),
        "model.e": dtensor_layout((1, 4), (2,), "S(0)"),  # rank 1 holds an empty shard
        "scalar": tensor_layout((), 2, "int64"),
        "opt.step": bytes_layout(2),
        "st": sharded_layout(
            (4, 2), [[((0, 0), (1, 2)), ((3, 0), (1, 2))], [((1, 0), (2, 2))]], "float64"
        ),
    }
    b = {"w": dtensor_layout((8, 6), (2,), "SS(0,2)")}  # misdescribed: save must fail
    runs = run_steps([SaveStep(str(root / "a"), a), SaveStep(str(root / "b"), b)], 2)
    assert runs[0].ok, runs[0].errors
    assert all("overlapping chunks" in e for e in runs[1].errors), runs[1].errors
    return root / "a"


@pytest.fixture(scope="module")
def local_checkpoint(tmp_path_factory):
    """A single-process dcp.save (no process group) of a few entries, made in this process."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    path = tmp_path_factory.mktemp("local_md") / "ck"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(
            {
                "w": torch.arange(12.0).reshape(3, 4),
                "h": torch.zeros(2, dtype=torch.float16),
                "cfg": {"lr": 0.1},
            },
            checkpoint_id=str(path),
        )
    return path


def _torch_metadata(path, rank=None):
    import torch.distributed.checkpoint as dcp

    from workbench.torch_bridge.convert import from_torch

    return from_torch(dcp.FileSystemReader(str(path)).read_metadata(rank=rank))


def _assert_same_as_torch(ours, theirs):
    assert list(ours.state_dict_metadata) == list(theirs.state_dict_metadata)
    for fqn, md in theirs.state_dict_metadata.items():
        assert ours.state_dict_metadata[fqn] == md, fqn
    assert list(ours.storage_data) == list(theirs.storage_data)
    assert [k.index for k in ours.storage_data] == [k.index for k in theirs.storage_data]
    assert list(ours.storage_data.values()) == list(theirs.storage_data.values())
    assert ours.planner_data == theirs.planner_data
    assert ours.version == theirs.version == "1.0.0"
    sm, tm = ours.storage_meta, theirs.storage_meta
    assert (sm.checkpoint_id, sm.save_id, sm.modules) == (tm.checkpoint_id, tm.save_id, tm.modules)
    assert sm.load_id is None and tm.load_id is not None  # torch stamps a fresh load id


# ----------------------------------------------------------------------------- hostile pickles
class _Payload:
    """Pickles as a call of ``fn(*args)``: what a hostile .metadata carries."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _write(tmp_path, data: bytes) -> Path:
    d = tmp_path / "ck"
    d.mkdir(exist_ok=True)
    (d / ".metadata").write_bytes(data)
    return d


@pytest.mark.parametrize(
    "fn, args, refused",
    [
        (os.system, "touch {marker}", "posix.system"),
        (eval, "open({marker!r}, 'w').close()", "builtins.eval"),
        (exec, "open({marker!r}, 'w').close()", "builtins.exec"),
        (subprocess.call, ["touch", "{marker}"], "subprocess.call"),
    ],
)
def test_hostile_reduce_is_refused_and_never_runs(tmp_path, fn, args, refused):
    marker = tmp_path / "pwned"
    arg = (
        [a.format(marker=str(marker)) for a in args]
        if isinstance(args, list)
        else args.format(marker=str(marker))
    )
    path = _write(tmp_path, pickle.dumps(_Payload(fn, arg), protocol=4))
    with pytest.raises(UnsafeCheckpointError, match=refused.replace(".", r"\.")) as ei:
        load_metadata(path)
    assert ei.value.global_name == refused
    assert str(path / ".metadata") in str(ei.value)
    assert not marker.exists()
    # the same file under torch's own reader really does run the payload: the test is not vacuous
    import torch.distributed.checkpoint as dcp

    # (torch then fails on the payload's return value: ``'int' object has no attribute ...``)
    with pytest.raises(AttributeError, match="storage_meta"):
        dcp.FileSystemReader(str(path)).read_metadata()
    assert marker.exists()


def test_payload_nested_inside_a_genuine_metadata_is_refused(tmp_path, local_checkpoint):
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "pwned"
    md = dcp.FileSystemReader(str(local_checkpoint)).read_metadata()
    md.planner_data["w"] = _Payload(os.system, f"touch {marker}")
    path = _write(tmp_path, pickle.dumps(md, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        load_metadata(path)
    assert not marker.exists()


class Unknown:  # a class no .metadata contains
    pass


@pytest.mark.parametrize(
    "obj, name",
    [
        (Unknown(), f"{__name__}.Unknown"),
        (__import__("collections").Counter("ab"), "collections.Counter"),
        (__import__("datetime").date(2020, 1, 2), "datetime.date"),
    ],
)
def test_unknown_class_is_refused(tmp_path, obj, name):
    path = _write(tmp_path, pickle.dumps(obj, protocol=4))
    with pytest.raises(UnsafeCheckpointError) as ei:
        load_metadata(path)
    assert ei.value.global_name == name
    assert f"global {name}" in str(ei.value)


@pytest.mark.parametrize(
    "data, refused",
    [
        # torch's own classes and dtypes are allowed as globals but never called by a real .metadata
        (
            b"ctorch.distributed.checkpoint.metadata\nMetadata\n(tR.",
            "torch.distributed.checkpoint.metadata.Metadata",
        ),
        (b"ctorch\nfloat32\n(tR.", "torch.float32"),
        # other torch callables are not even looked up
        (b"ctorch\nload\n(S'/etc/passwd'\ntR.", "torch.load"),
        (b"ctorch.serialization\nload\n(tR.", "torch.serialization.load"),
        (b"cbuiltins\ngetattr\n(tR.", "builtins.getattr"),
    ],
)
def test_reduce_on_a_non_allowed_callable_is_refused(tmp_path, data, refused):
    with pytest.raises(UnsafeCheckpointError) as ei:
        load_metadata(_write(tmp_path, data))
    assert ei.value.global_name == refused


def test_a_pickle_cannot_alter_the_stand_ins(tmp_path, local_checkpoint):
    # BUILD with a slot state on a shared allow-listed object would be a setattr on shared state
    data = b"ctorch\nfloat32\n(N}S'name'\nS'int8'\nstb."
    with pytest.raises(UnsafeCheckpointError, match="sets attribute 'name' of torch.float32"):
        load_metadata(_write(tmp_path, data))
    data = b"ctorch\nSize\n(N}S'fn'\nS'x'\nstb."
    with pytest.raises(UnsafeCheckpointError, match="sets attribute 'fn' of torch.Size"):
        load_metadata(_write(tmp_path, data))
    # on a stand-in class, BUILD calls the unbound __setstate__ and fails
    data = b"ctorch.distributed.checkpoint.metadata\nMetadata\n(N}S'torch_name'\nS'x'\nstb."
    with pytest.raises(MetadataError, match="not a valid pickle"):
        load_metadata(_write(tmp_path, data))
    md = load_metadata(local_checkpoint)  # unchanged afterwards
    assert md.state_dict_metadata["w"].properties.dtype == "float32"
    assert (
        ALLOWED_GLOBALS[("torch.distributed.checkpoint.metadata", "Metadata")].torch_name
        == "torch.distributed.checkpoint.metadata.Metadata"
    )


def test_allow_list_holds_no_callable_that_touches_the_system():
    names = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}
    for bad in (
        "posix.system",
        "os.system",
        "builtins.eval",
        "builtins.exec",
        "builtins.open",
        "builtins.getattr",
        "builtins.__import__",
        "torch.load",
        "subprocess.Popen",
        "torch._utils._rebuild_tensor_v2",
        "copyreg._reconstructor",
    ):
        assert bad not in names


# ----------------------------------------------------------------------------- damaged files
def test_every_truncation_of_a_real_metadata_is_a_clear_error(tmp_path, local_checkpoint):
    data = (local_checkpoint / ".metadata").read_bytes()
    for cut in range(len(data) - 1):
        with pytest.raises(MetadataError) as ei:
            read_metadata_bytes(data[:cut], "ck/.metadata")
        assert not isinstance(ei.value, UnsafeCheckpointError), cut
        assert str(ei.value).startswith("ck/.metadata: "), cut
    assert "truncated" in str(ei.value)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "empty"),
        (b"hello, this is not a pickle\n", "not a valid pickle"),
        (bytes(range(256)) * 4, "not a valid pickle"),
        (b"\x80\x04\x95", "truncated"),
        (pickle.dumps({"state_dict_metadata": {}}), "not a DCP Metadata"),
        (pickle.dumps([1, 2, 3]), "not a DCP Metadata"),
    ],
)
def test_garbage_files_are_clear_errors(tmp_path, content, words):
    path = _write(tmp_path, content)
    with pytest.raises(MetadataError, match=words) as ei:
        load_metadata(path)
    assert not isinstance(ei.value, UnsafeCheckpointError)
    assert str(path / ".metadata") in str(ei.value)


def test_a_torch_save_file_is_not_a_metadata(tmp_path):
    import torch

    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(MetadataError, match="model.pt"):
        load_metadata(tmp_path / "model.pt")


def test_missing_metadata_names_the_path(tmp_path):
    with pytest.raises(MetadataError, match="no such metadata file") as ei:
        load_metadata(tmp_path)
    assert str(tmp_path / ".metadata") in str(ei.value)
    with pytest.raises(MetadataError, match="__3.metadata"):
        load_metadata(tmp_path, rank=3)


def test_corrupt_records_are_metadata_errors(tmp_path, local_checkpoint):
    import torch
    import torch.distributed.checkpoint as dcp

    md = dcp.FileSystemReader(str(local_checkpoint)).read_metadata()
    md.state_dict_metadata["w"].chunks[0].sizes = torch.Size([3, 4, 5])  # 3 dims for a 2-d tensor
    with pytest.raises(MetadataError, match=r"w: chunk #0 offsets \[0, 0\] sizes \[3, 4, 5\]"):
        load_metadata(_write(tmp_path, pickle.dumps(md)))
    md = dcp.FileSystemReader(str(local_checkpoint)).read_metadata()
    md.state_dict_metadata["w"] = "a string"
    with pytest.raises(MetadataError, match="w: entry 'a string' is neither"):
        load_metadata(_write(tmp_path, pickle.dumps(md)))


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4)
)
def test_damaged_bytes_load_or_fail_cleanly(local_checkpoint, flips):
    data = bytearray((local_checkpoint / ".metadata").read_bytes())
    for pos, x in flips:
        data[pos % len(data)] ^= x
    try:
        md = read_metadata_bytes(bytes(data))
    except MetadataError:  # includes UnsafeCheckpointError (a renamed global)
        return
    assert isinstance(md.state_dict_metadata, dict)


# ----------------------------------------------------------------------------- real checkpoints
def test_single_process_checkpoint_reads_as_torch_reads_it(local_checkpoint):
    ours = load_metadata(local_checkpoint)
    _assert_same_as_torch(ours, _torch_metadata(local_checkpoint))
    assert ours.state_dict_metadata["h"].properties.dtype == "float16"
    assert ours.state_dict_metadata["cfg.lr"] == BytesStorageMetadata()
    assert ours.planner_data["cfg.lr"] == ("cfg", "lr")


@pytest.mark.real
def test_gloo_checkpoint_reads_as_torch_reads_it(real_checkpoints):
    ours = load_metadata(real_checkpoints)
    _assert_same_as_torch(ours, _torch_metadata(real_checkpoints))
    sdm = ours.state_dict_metadata
    # worked example: (5, 3) on 2 ranks -> rows [0:3] and [3:5]
    assert sdm["model.w"] == TensorStorageMetadata(
        "float32", (5, 3), [Chunk((0, 0), (3, 3)), Chunk((3, 0), (2, 3))]
    )
    # replicated bf16: one chunk after dedup
    assert sdm["model.b"].properties.dtype == "bfloat16" and len(sdm["model.b"].chunks) == 1
    # (1, 4) on 2 ranks: rank 1's empty shard sits at offset 1 == the dim's size
    assert sdm["model.e"].chunks == [Chunk((0, 0), (1, 4)), Chunk((1, 0), (0, 4))]
    assert sdm["scalar"] == TensorStorageMetadata("int64", (), [Chunk((), ())])
    assert sdm["st"].chunks == [Chunk((0, 0), (1, 2)), Chunk((3, 0), (1, 2)), Chunk((1, 0), (2, 2))]
    assert {v.relative_path for v in ours.storage_data.values()} == {"__0_0.distcp", "__1_0.distcp"}


@pytest.mark.real
def test_rank_metadata_file_and_file_path(real_checkpoints, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(real_checkpoints, d)
    (d / ".metadata").rename(d / "__0.metadata")  # the no-collectives layout
    ours = load_metadata(d, rank=0)
    _assert_same_as_torch(ours, _torch_metadata(d, rank=0))
    assert load_metadata(d / "__0.metadata").state_dict_metadata == ours.state_dict_metadata


@pytest.mark.real
def test_reading_needs_no_torch(real_checkpoints):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "from workbench.formats import load_metadata\n"
        f"md = load_metadata({str(real_checkpoints)!r})\n"
        "print(sorted(md.state_dict_metadata), md.state_dict_metadata['model.w'].size)\n"
        "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "['model.b', 'model.e', 'model.w', 'opt.step', 'scalar', 'st'] (5, 3)" in out.stdout


def test_shared_and_cyclic_plain_data_stay_small(tmp_path, local_checkpoint):
    """A memoised list referenced many times is rebuilt once (no blow-up); cycles survive."""
    import torch.distributed.checkpoint as dcp

    md = dcp.FileSystemReader(str(local_checkpoint)).read_metadata()
    big = list(range(10_000))
    cyc = []
    cyc.append(cyc)
    md.planner_data = {f"k{i}": big for i in range(10_000)}
    md.planner_data["cycle"] = cyc
    ours = load_metadata(_write(tmp_path, pickle.dumps(md)))
    assert ours.planner_data["k0"] is ours.planner_data["k9999"]
    assert ours.planner_data["k5"] == big
    assert ours.planner_data["cycle"][0] is ours.planner_data["cycle"]


def test_deep_nesting_is_a_clear_error(local_checkpoint):
    import torch.distributed.checkpoint as dcp

    md = dcp.FileSystemReader(str(local_checkpoint)).read_metadata()
    md.planner_data = "SENTINEL"
    data = pickle.dumps(md, protocol=2)  # no frames: the payload can be spliced in
    string = b"X\x08\x00\x00\x00SENTINEL"
    assert data.count(string) == 1
    # None wrapped in 100,000 one-tuples (TUPLE1): cheap to unpickle, too deep to convert
    data = data.replace(string, b"N" + b"\x85" * 100_000)
    with pytest.raises(MetadataError, match="the metadata is corrupt"):
        read_metadata_bytes(data)


# ----------------------------------------------------------------------------- bounded reading
def _with_op(data: bytes, name: str, replacement: bytes) -> bytes:
    import pickletools

    pos = next(p for op, _, p in pickletools.genops(data) if op.name == name)
    out = bytearray(data)
    out[pos : pos + len(replacement)] = replacement
    return bytes(out)


@pytest.mark.parametrize("index", [0x7FFFFFFF, 0x30000000])
def test_memo_index_bomb_is_refused_with_flat_memory(local_checkpoint, index):
    """The issue's file: a real .metadata with one SETITEMS turned into LONG_BINPUT <huge>. The C
    unpickler allocated and zeroed a memo array of gigabytes (> 4 GB RSS for 0x30000000)."""
    import struct
    import tracemalloc

    data = _with_op(
        (local_checkpoint / ".metadata").read_bytes(), "SETITEMS", b"r" + struct.pack("<I", index)
    )
    tracemalloc.start()
    try:
        with pytest.raises(MetadataError, match=f"memo index {index} beyond the"):
            read_metadata_bytes(data, "ck/.metadata")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20  # a few hundred KB: nothing sized by the index


def test_deep_tuple_key_is_refused_not_a_crash():
    # 300,000 nested 1-tuples as a dict key: the C unpickler's tuple hash recursed until SIGSEGV
    data = b"\x80\x02}N" + b"\x85" * 300_000 + b"Ns."
    with pytest.raises(MetadataError, match="dict key or set element of type tuple"):
        read_metadata_bytes(data)


def test_colliding_int_keys_are_refused():
    # ints that share a hash (k * (2**61 - 1)) made SETITEMS quadratic: 14 s for 600 KB
    m = (1 << 61) - 1
    keys = b"".join(
        b"\x8a\x0c" + (k * m).to_bytes(12, "little", signed=True) + b"N" for k in range(1, 2000)
    )
    with pytest.raises(MetadataError, match="type int"):
        read_metadata_bytes(b"\x80\x02}(" + keys + b"u.")


@pytest.mark.parametrize(
    "data, words",
    [
        (b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"x.", "BINBYTES8 declares"),
        (b"\x80\x04\x95" + (1 << 50).to_bytes(8, "little") + b"N.", "FRAME declares"),
        (b"\x80\x02cbuiltins\nbytes\nJ\x00\x00\x00\x04\x85R.", "builtins.bytes is called"),
        (b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00\x04\x85R.", "builtins.bytearray"),
        (b"\x80\x02cbuiltins\nstr\n]\x85R.", "builtins.str is called"),
    ],
)
def test_declared_sizes_and_allocating_calls_are_refused(data, words):
    with pytest.raises(MetadataError, match=words):
        read_metadata_bytes(data)


def test_repeated_copies_of_one_big_object_exhaust_the_budget():
    # list(L) of one memoised 100,000-element list, 100,000 times: 10**10 copies unbounded
    lst = b"](" + b"K\x01" * 100_000 + b"eq\x00"
    rep = b"cbuiltins\nlist\nq\x01(" + b"h\x01h\x00\x85R" * 100_000 + b"l."
    with pytest.raises(MetadataError, match="units of work"):
        read_metadata_bytes(b"\x80\x02" + lst + b"0" + rep)


def test_shared_huge_size_tuple_costs_once(local_checkpoint):
    """A real metadata whose chunks all share one memoised torch.Size is converted in linear
    time (each distinct tuple is checked once)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    md = dcp.FileSystemReader(str(local_checkpoint)).read_metadata()
    tsm = md.state_dict_metadata["w"]
    zero, size = torch.Size([0, 0]), torch.Size([3, 4])
    tsm.chunks = [ChunkStorageMetadata(zero, size)] * 20_000  # one object, 20,000 references
    ours = read_metadata_bytes(pickle.dumps(md))
    assert len(ours.state_dict_metadata["w"].chunks) == 20_000


def test_sizes_beyond_int64_are_refused(local_checkpoint):
    import torch.distributed.checkpoint as dcp

    md = dcp.FileSystemReader(str(local_checkpoint)).read_metadata()
    md.state_dict_metadata["w"].size = (3, 1 << 64)  # a tuple: torch.Size would refuse it
    with pytest.raises(MetadataError, match="w: size .* int64"):
        read_metadata_bytes(pickle.dumps(md))
