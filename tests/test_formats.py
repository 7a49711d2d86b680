"""Megatron-Core torch_dist and DCP's HuggingFace safetensors checkpoints, read through the same
entry points as plain DCP, checked against the real writers' files (tests/data/checkpoints,
written by tools/make_format_fixtures.py: megatron-core's dist_checkpointing.save and torch's
HuggingFaceStorageWriter over 2 gloo processes) and the real readers (torch's FileSystemReader /
HuggingFaceStorageReader); the real-run tests write and load fresh ones."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import workbench as wb
from workbench.checkpoint import find_file_problems, open_checkpoint
from workbench.errors import MetadataError, UnsafeCheckpointError
from workbench.formats import detect_format, load_metadata
from workbench.formats.hf_safetensors import read_header
from workbench.formats.megatron import flat_range_boxes, model_metadata
from workbench.torch_bridge.writers import FORMAT_CHECKPOINTS

DATA = Path(__file__).resolve().parent / "data" / "checkpoints"
HF = ["hf", "hf_consolidated", "hf_plain", "hf_lost_chunk"]
MEGATRON = ["megatron", "megatron_flat", "megatron_015"]


def _copy(name, tmp_path) -> Path:
    dst = tmp_path / name
    shutil.copytree(DATA / name, dst)
    return dst


def _torch_md(path):
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemReader(str(path)).read_metadata()


def _chunks(entry):
    return [(tuple(c.offsets), tuple(c.sizes)) for c in entry.chunks]


# ----------------------------------------------------------------------------- detection
@pytest.mark.parametrize("name", MEGATRON + HF)
def test_every_fixture_is_recognised(name):
    fmt = "megatron" if name.startswith("megatron") else "hf"
    assert detect_format(DATA / name) == fmt
    ck = open_checkpoint(DATA / name)
    assert ck.format == fmt and ck.facts()["format"].startswith(
        "megatron" if fmt == "megatron" else "huggingface"
    )
    assert find_file_problems(ck) == [] or name == "hf_lost_chunk"


# ----------------------------------------------------------------------------- Megatron
@pytest.mark.parametrize("name", MEGATRON)
def test_megatron_metadata_reads_as_torch_reads_it(name):
    from workbench.torch_bridge.convert import from_torch

    theirs = _torch_md(DATA / name)
    ours = load_metadata(DATA / name)
    assert list(ours.state_dict_metadata) == list(theirs.state_dict_metadata)
    for fqn, md in theirs.state_dict_metadata.items():
        assert ours.state_dict_metadata[fqn] == from_torch(md), fqn
    assert [(k.fqn, k.offset) for k in ours.storage_data] == [
        (k.fqn, None if k.offset is None else tuple(k.offset)) for k in theirs.storage_data
    ]
    assert list(ours.storage_data.values()) == [from_torch(v) for v in theirs.storage_data.values()]


@pytest.mark.parametrize("name", MEGATRON)
def test_megatron_local_plans_are_the_pickled_ones(name):
    theirs = _torch_md(DATA / name).all_local_plans
    plans = open_checkpoint(DATA / name).format_info.local_plans
    assert len(plans) == len(theirs) == 2

    def item_key(it):
        td = it.tensor_data
        off = it.index.offset
        return (
            it.index.fqn,
            None if off is None else tuple(off),
            it.type.name,
            None
            if td is None
            else (
                tuple(td.chunk.offsets),
                tuple(td.chunk.sizes),
                tuple(td.size),
                str(td.properties.dtype).replace("torch.", ""),
            ),
        )

    for ours, p in zip(plans, theirs):
        assert [item_key(i) for i in ours.items] == [item_key(i) for i in p.items]


def test_megatron_facts_objects_and_holders():
    ck = open_checkpoint(DATA / "megatron")
    info = ck.format_info
    assert info.metadata_json == {
        "sharded_backend": "torch_dist",
        "sharded_backend_version": 1,
        "common_backend": "torch",
        "common_backend_version": 1,
    }
    assert info.common == {"iteration": 7} and info.common_error is None
    assert [o.fqn for o in info.objects["rng_state"]] == [
        "rng_state/shard_0_2",
        "rng_state/shard_1_2",
    ]
    assert [o.offsets for o in info.objects["rng_state"]] == [(0,), (1,)]
    # Megatron drops non-main replicas before torch plans: the replicated norm is held (planned)
    # by rank 0 only, and written by it
    assert info.held("decoder.norm") == {(0,): (0,)}
    assert ck.writers("decoder.norm") == [0]
    assert info.held("decoder.w") == {(0, 0): (0,), (4, 0): (1,)}
    assert ck.writers("decoder.w") == [0, 1]
    assert ck.facts()["common.pt keys"] == "iteration"


def test_megatron_015_metadata_is_its_mcore_metadata_subclass():
    info = open_checkpoint(DATA / "megatron_015").format_info
    assert info.subclass == "MCoreMetadata"
    assert info.mcore_data["optimizer.state.exp_avg.decoder.fc"] == {
        "nd_reformulated_orig_global_shape": (4, 6)
    }
    assert open_checkpoint(DATA / "megatron_flat").format_info.subclass is None
    assert open_checkpoint(DATA / "megatron_015").facts()["metadata class"] == "MCoreMetadata"


def test_flattened_tensor_maps_back_to_the_model_shape():
    ck = open_checkpoint(DATA / "megatron_flat")
    ft = ck.format_info.flattened["optimizer.state.exp_avg.decoder.fc"]
    assert ft.stored_size == (1, 1, 24) and ft.shape == (4, 6)
    assert [(p.start, p.stop) for p in ft.pieces] == [(0, 10), (10, 24)]
    assert [str(b) for b in ft.pieces[0].boxes] == ["[0:1, 0:6]", "[1:2, 0:4]"]
    assert [str(b) for b in ft.pieces[1].boxes] == ["[1:2, 4:6]", "[2:4, 0:6]"]
    restored = model_metadata(ck.metadata, ck.format_info)
    entry = restored.state_dict_metadata["optimizer.state.exp_avg.decoder.fc"]
    assert entry.size == (4, 6) and wb.find_checkpoint_problems(restored) == []


@pytest.mark.parametrize("name", ["megatron_flat", "megatron_015"])
def test_flattened_pieces_hold_exactly_the_model_elements_of_their_boxes(name):
    """The real writer's bytes prove the mapping: megatron-core 0.13.1 / 0.15.3 saved pieces of a
    (4, 6) tensor whose element i is i + 0.25; each stored piece's elements, in order, are the
    model tensor's elements in the piece's boxes, in order."""
    import torch

    ck = open_checkpoint(DATA / name)
    fqn = "optimizer.state.exp_avg.decoder.fc"
    ft = ck.format_info.flattened[fqn]
    model = np.arange(24, dtype=np.float64).reshape(4, 6) + 0.25
    for piece, saved in zip(ft.pieces, ck.chunks_of(fqn)):
        blob = (DATA / name / saved.file).read_bytes()
        blob = blob[saved.storage.offset : saved.storage.offset + saved.storage.length]
        stored = torch.load(io.BytesIO(blob), weights_only=True).double().numpy().ravel()
        want = np.concatenate(
            [
                model[tuple(slice(o, o + s) for o, s in zip(b.offsets, b.sizes))].ravel()
                for b in piece.boxes
            ]
        )
        np.testing.assert_array_equal(stored, want)


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    data=st.data(),
)
def test_flat_range_boxes_tile_the_range_in_order(shape, data):
    n = int(np.prod(shape))
    start = data.draw(st.integers(0, n))
    stop = data.draw(st.integers(start, n))
    flat = np.arange(n).reshape(shape)
    boxes = flat_range_boxes(shape, start, stop)
    got = [flat[tuple(slice(o, o + s) for o, s in zip(b.offsets, b.sizes))].ravel() for b in boxes]
    np.testing.assert_array_equal(np.concatenate(got or [np.zeros(0, int)]), np.arange(start, stop))
    assert len(boxes) <= max(2 * len(shape) - 1, 1)


# ----------------------------------------------------------------------------- HF safetensors
@pytest.mark.parametrize("name", HF)
def test_hf_reads_as_torch_hf_reader_reads_it(name):
    import torch.distributed.checkpoint as dcp

    from workbench.torch_bridge.convert import from_torch

    theirs = dcp.HuggingFaceStorageReader(str(DATA / name)).read_metadata()
    ours = load_metadata(DATA / name)
    assert list(ours.state_dict_metadata) == list(theirs.state_dict_metadata)
    for fqn, md in theirs.state_dict_metadata.items():
        assert ours.state_dict_metadata[fqn] == from_torch(md), fqn
    assert [(k.fqn, k.offset) for k in ours.storage_data] == [
        (k.fqn, tuple(k.offset)) for k in theirs.storage_data
    ]
    assert [v.relative_path for v in ours.storage_data.values()] == [
        Path(v.relative_path).name for v in theirs.storage_data.values()
    ]


def test_hf_byte_ranges_are_the_tensors_bytes():
    """safetensors' own reader gives the same bytes as our byte ranges."""
    from safetensors import safe_open

    ck = open_checkpoint(DATA / "hf")
    for c in ck.chunks:
        with safe_open(str(DATA / "hf" / c.file), framework="pt") as f:
            want = f.get_tensor(c.fqn).contiguous().view(-1).view(dtype=__import__("torch").uint8)
        blob = (DATA / "hf" / c.file).read_bytes()[
            c.storage.offset : c.storage.offset + c.storage.length
        ]
        assert bytes(want.numpy()) == blob, c.fqn


def test_hf_facts_and_writers():
    ck = open_checkpoint(DATA / "hf_plain")
    assert ck.format_info.layout == "plain"
    assert ck.format_info.weight_map == {
        "decoder.w": "model-00001-of-00002.safetensors",
        "decoder.norm": "model-00001-of-00002.safetensors",
        "decoder.v": "model-00002-of-00002.safetensors",
    }
    assert ck.metadata.state_dict_metadata["decoder.v"].properties.dtype == "bfloat16"
    assert {c.writer_rank for c in ck.chunks} == {0}
    dist = open_checkpoint(DATA / "hf")
    assert dist.format_info.layout == "distributed"
    assert dist.writers("decoder.w") == [
        int(c.file.split("-")[1]) - 1 for c in dist.chunks_of("decoder.w")
    ]
    assert open_checkpoint(DATA / "hf_consolidated").format_info.layout == "consolidated"


def _forge(tmp_path, header: bytes, length: int | None = None, tail: bytes = b"") -> Path:
    d = tmp_path / "forged"
    d.mkdir(exist_ok=True)
    n = len(header) if length is None else length
    (d / "model.safetensors").write_bytes(struct.pack("<Q", n) + header + tail)
    return d


@pytest.mark.parametrize(
    "header, length, words",
    [
        (b"{}", 1 << 62, "header length is 4611686018427387904 bytes in a file of 10 bytes"),
        (b"[1, 2]", None, "not a JSON object"),
        (b"{not json", None, "not valid JSON"),
        (
            b'{"w": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}',
            None,
            "dtype code 'F99'",
        ),
        (b'{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}', None, "shape"),
        (b'{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', None, "span 8 bytes"),
        (
            b'{"__metadata__": {"DCP_SHARDING_INFO": "{\\"w\\": {\\"saved_offsets\\": [1, 2]}}"},'
            b' "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
            None,
            "saved_offsets [1, 2]",
        ),
    ],
)
def test_damaged_safetensors_are_clear_errors(tmp_path, header, length, words):
    d = _forge(tmp_path, header, length, tail=b"\0" * 8 if length is None else b"")
    with pytest.raises(MetadataError, match=None) as ei:
        load_metadata(d)
    assert words in str(ei.value) and "model.safetensors" in str(ei.value)


def test_header_length_is_checked_before_reading(tmp_path, monkeypatch):
    d = _forge(tmp_path, b"{}", 1 << 40)
    reads = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            reads.append(n)
            return self.f.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda p, m="r", *a, **k: Spy(real_open(p, m, *a, **k)))
    with pytest.raises(MetadataError):
        read_header(d / "model.safetensors")
    assert reads == [8]


# ----------------------------------------------------------------------------- HF save side
def test_lost_chunk_is_predicted_on_the_save_side_and_found_in_the_files():
    fc = FORMAT_CHECKPOINTS["hf_lost_chunk"]
    save = wb.plan_save(fc.layouts, storage="hf")
    written = load_metadata(DATA / "hf_lost_chunk")
    predicted = save.metadata.state_dict_metadata["w"]
    real = written.state_dict_metadata["w"]
    assert predicted.size == real.size and sorted(_chunks(predicted)) == sorted(_chunks(real))
    lost = [(lc.rank, str(lc.chunk)) for lc in save.lost]
    assert lost == [(0, "[0:2, 0:6]"), (1, "[2:4, 0:6]")]
    kinds = [(p.kind, p.ranks) for p in wb.find_save_problems(save)]
    assert ("hf_lost_chunk", (0,)) in kinds and ("hf_lost_chunk", (1,)) in kinds
    # the files already written: a hole exactly where the lost chunks were
    holes = [p for p in wb.find_checkpoint_problems(written) if p.kind == "uncovered"]
    assert [str(p.region) for p in holes] == ["[0:4, 0:6]"]
    (hole,) = find_file_problems(DATA / "hf_lost_chunk")
    assert hole.kind == "uncovered" and "keeps only its last one" in hole.fix
    # the FileSystemWriter loses nothing
    assert wb.plan_save(fc.layouts).lost == ()


def test_plan_save_refuses_an_unknown_storage():
    with pytest.raises(wb.PlanError, match="storage 'zarr'"):
        wb.plan_save({"w": wb.tensor_layout((2,), 1)}, storage="zarr")


# ----------------------------------------------------------------------------- files all there
def test_check_finds_a_missing_file(tmp_path):
    d = _copy("megatron", tmp_path)
    (d / "__1_0.distcp").unlink()
    probs = find_file_problems(d)
    assert [(p.kind, p.fqn, p.ranks, p.severity) for p in probs] == [
        ("missing_file", "__1_0.distcp", (1,), "error")
    ]
    assert "decoder.w" in probs[0].message and "rng_state/shard_1_2" in probs[0].message


def test_check_finds_a_short_file(tmp_path):
    d = _copy("megatron", tmp_path)
    f = d / "__0_1.distcp"
    f.write_bytes(f.read_bytes()[:-100])
    (p,) = find_file_problems(d)
    assert (p.kind, p.fqn, p.ranks) == ("truncated_file", "__0_1.distcp", (0,))
    assert f"of __0_1.distcp ({f.stat().st_size} bytes on disk)" in p.message


def test_check_finds_a_missing_metadata(tmp_path):
    d = _copy("megatron", tmp_path)
    (d / ".metadata").unlink()
    (p,) = find_file_problems(d)
    assert p.kind == "no_metadata" and ".metadata" in p.message
    # plain DCP data files without .metadata: an interrupted or asynchronous save
    (d / "metadata.json").unlink()
    (d / "common.pt").unlink()
    (p,) = find_file_problems(d)
    assert p.kind == "no_metadata" and "4 data files" in p.message and "interrupted" in p.fix
    with pytest.raises(MetadataError, match="but no .metadata"):
        load_metadata(d)


def test_check_finds_megatron_metadata_json_missing_and_stray_files(tmp_path):
    d = _copy("megatron", tmp_path)
    (d / "metadata.json").unlink()
    (d / "__7_0.distcp").write_bytes(b"x" * 10)
    (d / ".metadata.tmp").write_bytes(b"y")
    shutil.copy(d / ".metadata", d / "__0.metadata")  # read_metadata(rank=0)'s file: expected
    kinds = [(p.kind, p.fqn, p.severity) for p in find_file_problems(d)]
    assert kinds == [
        ("no_metadata", "metadata.json", "error"),
        ("stray_file", ".metadata.tmp", "warning"),
        ("stray_file", "__7_0.distcp", "warning"),
    ]


def test_check_finds_a_missing_hf_shard_and_index_file(tmp_path):
    d = _copy("hf", tmp_path)
    (d / "shard-00001-model-00001-of-00001.safetensors").unlink()
    probs = find_file_problems(d)
    assert ("missing_file", "shard-00001-*", (0,)) in [(p.kind, p.fqn, p.ranks) for p in probs]
    p = _copy("hf_plain", tmp_path)
    (p / "model-00002-of-00002.safetensors").unlink()
    (prob,) = find_file_problems(p)
    assert (prob.kind, prob.fqn) == ("missing_file", "model-00002-of-00002.safetensors")
    assert "decoder.v" in prob.message


def test_check_lists_duplicate_chunks(tmp_path):
    d = _copy("hf", tmp_path)
    src = d / "shard-00002-model-00001-of-00001.safetensors"
    shutil.copy(src, d / "shard-00003-model-00001-of-00001.safetensors")
    kinds = {(p.kind, p.fqn) for p in find_file_problems(d)}
    assert ("duplicate_chunk", "decoder.w") in kinds and ("overlap", "decoder.w") in kinds


def test_check_lists_duplicate_chunks_of_a_dcp_metadata_read_as_columns(tmp_path):
    """The columnar reader's chunk arrays are checked for repeated offsets at once (a 2-d and a
    0-d tensor repeat one; a tensor of distinct offsets does not), with the stray file listed."""
    import torch
    from torch.distributed.checkpoint import metadata as tm
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    def tsm(*boxes):
        chunks = [tm.ChunkStorageMetadata(torch.Size(o), torch.Size(z)) for o, z in boxes]
        return tm.TensorStorageMetadata(tm.TensorProperties(dtype=torch.float32), size, chunks)

    size = torch.Size([4, 4])
    sdm = {
        "dup": tsm(((0, 0), (2, 4)), ((2, 0), (2, 4)), ((0, 0), (2, 4))),
        "ok": tsm(((0, 0), (2, 4)), ((2, 0), (2, 4))),
    }
    size = torch.Size([])
    sdm["scalar"] = tsm(((), ()), ((), ()))
    storage = {
        tm.MetadataIndex(fqn, c.offsets): _StorageInfo("__0_0.distcp", 0, 4)
        for fqn, md in sdm.items()
        for c in md.chunks
    }
    (tmp_path / ".metadata").write_bytes(pickle.dumps(tm.Metadata(sdm, storage_data=storage)))
    (tmp_path / "__0_0.distcp").write_bytes(bytes(8))
    (tmp_path / "stray.bin").write_bytes(b"x")
    md = open_checkpoint(tmp_path).metadata
    assert md.state_dict_metadata["dup"].chunks.box_arrays is not None  # the columns' path
    kinds = sorted((p.kind, p.fqn) for p in find_file_problems(tmp_path))
    assert kinds == [
        ("duplicate_chunk", "dup"),
        ("duplicate_chunk", "scalar"),
        ("overlap", "dup"),
        ("stray_file", "stray.bin"),
    ], kinds


def test_deep_check_finds_a_flipped_byte_torch_loads_silently(tmp_path):
    """One byte of a chunk's elements flipped: sizes still fit, torch's own torch.load of the
    item returns wrong values without an error; the deep check reads every chunk and the
    archive's CRC names it."""
    import struct
    import zipfile

    import torch

    d = _copy("megatron", tmp_path)
    assert find_file_problems(d, deep=True) == []
    c = open_checkpoint(d).chunks_of("decoder.w")[1]
    f = d / c.file
    data = bytearray(f.read_bytes())
    item = bytes(data[c.storage.offset : c.storage.offset + c.storage.length])
    entry = next(
        i for i in zipfile.ZipFile(io.BytesIO(item)).infolist() if i.filename.endswith("data/0")
    )
    n, extra = struct.unpack("<HH", item[entry.header_offset + 26 : entry.header_offset + 30])
    pos = c.storage.offset + entry.header_offset + 30 + n + extra + 5  # inside the elements
    data[pos] ^= 0xFF
    f.write_bytes(bytes(data))
    bad = bytes(data[c.storage.offset : c.storage.offset + c.storage.length])
    assert not torch.equal(
        torch.load(io.BytesIO(bad), weights_only=True),
        torch.load(io.BytesIO(item), weights_only=True),
    )
    assert find_file_problems(d) == []  # sizes alone cannot tell
    (p,) = find_file_problems(d, deep=True)
    assert (p.kind, p.fqn, p.ranks, str(p.region)) == ("bad_item", "decoder.w", (1,), "[4:8, 0:6]")
    assert "CRC" in p.message


# ----------------------------------------------------------------------------- hostile files
class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_hostile_megatron_plans_are_refused_and_never_run(tmp_path):
    d = _copy("megatron", tmp_path)
    marker = tmp_path / "pwned"
    md = _torch_md(d)
    md.all_local_plans[0].items.append(_Payload(os.system, f"touch {marker}"))
    (d / ".metadata").write_bytes(pickle.dumps(md, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        open_checkpoint(d)
    with pytest.raises(UnsafeCheckpointError):
        find_file_problems(d)
    assert not marker.exists()
    import torch.distributed.checkpoint as dcp

    dcp.FileSystemReader(str(d)).read_metadata()  # torch's own reader runs it: not vacuous
    assert marker.exists()


def test_hostile_common_pt_is_reported_and_never_runs(tmp_path):
    import torch

    d = _copy("megatron", tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"iteration": _Payload(os.system, f"touch {marker}")}, d / "common.pt")
    ck = open_checkpoint(d)
    assert ck.format_info.common is None and "posix.system" in ck.format_info.common_error
    assert [(p.kind, p.fqn) for p in find_file_problems(ck)] == [("unread_file", "common.pt")]
    assert not marker.exists()
    torch.load(d / "common.pt", weights_only=False)  # torch's own load runs it: not vacuous
    assert marker.exists()


def test_reading_other_formats_needs_no_torch():
    code = (
        "import sys\n"
        "from workbench.checkpoint import open_checkpoint, find_file_problems\n"
        f"for n in {MEGATRON + HF!r}:\n"
        f"    ck = open_checkpoint({str(DATA)!r} + '/' + n)\n"
        "    find_file_problems(ck, deep=True)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


# ----------------------------------------------------------------------------- real writers now
def _same_records(a, b):
    """Two metadata of the same save: same entries, sizes, dtypes and chunks (as sets: the HF
    reader's chunk order follows the directory listing)."""
    assert list(a.state_dict_metadata) == list(b.state_dict_metadata) or set(
        a.state_dict_metadata
    ) == set(b.state_dict_metadata)
    for fqn, x in a.state_dict_metadata.items():
        y = b.state_dict_metadata[fqn]
        if isinstance(x, wb.TensorStorageMetadata):
            assert (x.size, x.properties.dtype) == (y.size, y.properties.dtype), fqn
            assert sorted(_chunks(x)) == sorted(_chunks(y)), fqn


@pytest.mark.real
def test_hf_writer_and_reader_real(tmp_path):
    """Fresh HF saves match the committed fixtures; the lost chunk and a missing shard are
    proved by real loads (HuggingFaceStorageReader), element by element, where the workbench
    predicts them."""
    from workbench.torch_bridge.runs import LoadStep, SaveStep, run_steps

    lost = FORMAT_CHECKPOINTS["hf_lost_chunk"].layouts
    model = FORMAT_CHECKPOINTS["hf"].layouts
    p_lost, p_model = tmp_path / "lost", tmp_path / "model"
    runs = run_steps([SaveStep(str(p_lost), lost, "hf"), SaveStep(str(p_model), model, "hf")], 2)
    assert all(r.ok for r in runs)
    _same_records(load_metadata(p_lost), load_metadata(DATA / "hf_lost_chunk"))
    _same_records(load_metadata(p_model), load_metadata(DATA / "hf"))
    _same_records(wb.plan_save(lost, storage="hf").metadata, load_metadata(p_lost))
    _same_records(wb.plan_save(model, storage="hf").metadata, load_metadata(p_model))

    # rank 0's file gone: its chunks become holes (the tensors keep their size: rank 1's chunks
    # reach the end); the workbench's plan says where, the real load leaves exactly those stale
    hole = tmp_path / "hole"
    shutil.copytree(p_model, hole)
    (hole / "shard-00001-model-00001-of-00001.safetensors").unlink()
    md = load_metadata(hole)
    plan = wb.plan_load(md, model)
    uncovered = {(p.fqn, str(p.region)) for p in plan.problems if p.kind == "uncovered"}
    assert uncovered == {("decoder.w", "[0:4, 0:6]"), ("decoder.v", "[0:4, 0:3]")}
    assert all(p.severity == "silent" for p in plan.problems)

    # rank 1's (the last) file gone: tensors shrink, norm (written by rank 1) disappears
    shrunk = tmp_path / "shrunk"
    shutil.copytree(p_model, shrunk)
    (shrunk / "shard-00002-model-00001-of-00001.safetensors").unlink()
    smd = load_metadata(shrunk)
    assert smd.state_dict_metadata["decoder.w"].size == (4, 6)
    assert smd.state_dict_metadata["decoder.v"].size == (4, 3)
    splan = wb.plan_load(smd, model)
    assert {(p.fqn, p.kind) for p in splan.problems} == {
        ("decoder.w", "shape_mismatch"),
        ("decoder.v", "shape_mismatch"),
        ("decoder.norm", "missing_key"),
    }

    loads = run_steps(
        [
            LoadStep(str(p_lost), lost, storage="hf"),
            LoadStep(str(hole), model, storage="hf"),
            LoadStep(str(shrunk), model, storage="hf"),
        ],
        2,
    )
    # lost chunk: each rank's first local shard keeps the fill value, its second is right
    for r in loads[0].ranks:
        first, second = r.values["w"]
        assert (first == -1).all(), r.rank
        np.testing.assert_array_equal(second, r.expected["w"][1])
    assert sorted(m[:3] for m in loads[0].mismatches()) == [(0, "w", 12), (1, "w", 12)]
    # missing middle file: stale exactly on the predicted holes, right everywhere else
    stale = {}
    for r in loads[1].ranks:
        for fqn, got in r.values.items():
            bad = got != r.expected[fqn]
            assert (got[bad] == -1).all()
            stale[(r.rank, fqn)] = int(bad.sum())
    assert stale == {
        (0, "decoder.w"): 24,  # rank 0 wants rows 0:4 = the hole
        (1, "decoder.w"): 0,
        (0, "decoder.v"): 12,  # rank 0 wants cols 0:3 = the hole
        (1, "decoder.v"): 0,
        (0, "decoder.norm"): 0,
        (1, "decoder.norm"): 0,
    }
    # missing last file: the load raises, as the plan's error-severity problems say
    assert set(loads[2].errors) == {0, 1}
    assert all(p.severity == "error" for p in splan.problems)
    text = " ".join(loads[2].errors.values())
    (missing,) = [p for p in splan.problems if p.kind == "missing_key"]
    assert "Missing key in checkpoint state_dict: decoder.norm." in missing.message
    assert "Missing key in checkpoint state_dict: decoder.norm." in text


@pytest.mark.real
def test_megatron_writer_and_loader_real(tmp_path):
    """A fresh Megatron-Core save matches the committed fixture (chunks, files, byte lengths);
    Megatron's own load of the fixture gives every element the workbench says it holds."""
    from workbench.torch_bridge.runs import CallStep, run_steps
    from workbench.torch_bridge.writers import megatron_load, megatron_save

    fc = FORMAT_CHECKPOINTS["megatron"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _, loaded = run_steps(
        [
            CallStep(str(fresh), megatron_save, {"layouts": fc.layouts, **fc.options}),
            CallStep(str(DATA / "megatron"), megatron_load, {"layouts": fc.layouts}),
        ],
        2,
        time_limit=120,
    )
    a, b = open_checkpoint(fresh), open_checkpoint(DATA / "megatron")
    _same_records(a.metadata, b.metadata)
    assert [(c.fqn, c.file, c.storage.length) for c in a.chunks] == [
        (c.fqn, c.file, c.storage.length) for c in b.chunks
    ]
    assert a.format_info.metadata_json == b.format_info.metadata_json
    assert a.format_info.common == b.format_info.common == {"iteration": 7}
    for rank, values in enumerate(loaded):
        for fqn in ("decoder.w", "decoder.v", "decoder.norm"):
            got, want = values[fqn]
            np.testing.assert_array_equal(got, want, err_msg=f"rank {rank} {fqn}")
        got, want = values["rng_state"]
        assert got == want == f"rng_state@rank{rank}"
        assert values["iteration"] == 7


# ----------------------------------------------------------------------------- CLI, report, widget
@pytest.mark.parametrize("name", ["megatron_flat", "hf_plain", "hf_lost_chunk"])
def test_cli_inspect_shows_the_format(name, capsys):
    import json

    from workbench.cli import main

    assert main(["inspect", str(DATA / name), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == ("megatron" if name.startswith("megatron") else "hf")
    assert doc["facts"] == open_checkpoint(DATA / name).facts()
    assert [e["fqn"] for e in doc["entries"]] == list(
        load_metadata(DATA / name).state_dict_metadata
    )
    assert main(["inspect", str(DATA / name)]) == 0
    out = capsys.readouterr().out
    assert "format: " + doc["facts"]["format"] in out
    if name == "megatron_flat":
        rec = doc["format_records"]
        assert rec["held"]["decoder.w"] == {"0,0": [0], "2,0": [1]}
        fc = rec["flattened"]["optimizer.state.exp_avg.decoder.fc"]
        assert fc["shape"] == [4, 6] and fc["pieces"][1]["boxes"] == ["[1:2, 4:6]", "[2:4, 0:6]"]
        assert rec["objects"] == {"rng_state": ["rng_state/shard_0_2", "rng_state/shard_1_2"]}
        assert "held by" in out and "written by" in out and "model boxes" in out


def test_cli_check_exit_status_and_json(tmp_path, capsys):
    import json

    from workbench.cli import main

    assert main(["check", str(DATA / "hf"), "--deep"]) == 0
    assert "every file is there" in capsys.readouterr().out
    d = _copy("megatron", tmp_path)
    (d / "__0_1.distcp").write_bytes(b"")
    assert main(["check", str(d), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and [p["kind"] for p in doc["problems"]] == ["truncated_file"]
    assert main(["check", str(tmp_path / "nowhere")]) == 2
    assert "no such metadata file" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["megatron", "hf_lost_chunk"])
def test_cli_plan_and_report_on_other_formats(name, tmp_path, capsys):
    from workbench.cli import main

    target = tmp_path / "t.json"
    fc = FORMAT_CHECKPOINTS[name]
    lay = next(v for v in fc.layouts.values() if not v.is_bytes)
    fqn = next(k for k, v in fc.layouts.items() if v is lay)
    import json

    target.write_text(json.dumps({fqn: {"shape": list(lay.shape), "dtype": lay.dtype}}))
    rc = main(["plan", str(DATA / name), "--target", str(target), "--allow-partial-load"])
    assert rc == (1 if name == "hf_lost_chunk" else 0)
    out = tmp_path / "r.html"
    assert main(["report", str(DATA / name), "-o", str(out)]) == 0
    html = out.read_text()
    assert "Are the files all there" in html
    assert open_checkpoint(DATA / name).facts()["format"] in html
    assert ("who held (all_local_plans) and who wrote" in html) == (name == "megatron")


@pytest.mark.parametrize("name", ["megatron_flat", "hf"])
def test_checkpoint_explorer_opens_other_formats(name):
    from workbench.widgets import CheckpointExplorer

    ex = CheckpointExplorer(str(DATA / name))
    assert ex.plan.format == ("megatron" if name.startswith("megatron") else "hf")
    assert ex.plan.facts["format"] in ex.header.value
    assert ex.result.fqn == next(iter(load_metadata(DATA / name).state_dict_metadata))
    assert ex.result.chunks is not None and len(ex.result.chunks) >= 1


def test_deep_check_of_safetensors_finds_bytes_nobody_claims(tmp_path):
    d = _copy("hf", tmp_path)
    assert find_file_problems(d, deep=True) == []
    f = d / "shard-00002-model-00001-of-00001.safetensors"
    f.write_bytes(f.read_bytes() + b"\0" * 16)  # a longer file: sizes alone still fit
    assert find_file_problems(d) == []
    (p,) = find_file_problems(d, deep=True)
    assert (p.kind, p.fqn, p.ranks) == ("bad_item", f.name, (1,)) and "unclaimed" in p.message


def test_explorer_draws_flattened_tensors_in_their_model_shape():
    from workbench.widgets import CheckpointExplorer

    fqn = "optimizer.state.exp_avg.decoder.fc"
    ex = CheckpointExplorer(str(DATA / "megatron_flat"))
    assert ex.plan.metadata.state_dict_metadata[fqn].size == (4, 6)
    ex.tensor.value = fqn
    assert sorted(ex.result.chunks["region"]) == sorted(
        ["[0:1, 0:6]", "[1:2, 0:4]", "[1:2, 4:6]", "[2:4, 0:6]"]
    )
    assert ex.plan.problems == ()  # the four boxes tile the model tensor
    plain = open_checkpoint(DATA / "megatron")
    assert plain.model_metadata is plain.metadata  # nothing flattened: as stored


def test_deep_check_never_runs_a_hostile_chunk_archive(tmp_path):
    """A .distcp item that is a torch.save of a payload: the deep check reads its data.pkl with
    the tensor allow-list, refuses the global and reports the chunk; nothing runs."""
    import torch

    d = _copy("megatron", tmp_path)
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(_Payload(os.system, f"touch {marker}"), buf)
    (d / "__9_0.distcp").write_bytes(buf.getvalue())
    md = _torch_md(d)
    key = next(k for k in md.storage_data if k.fqn == "decoder.norm")
    info = md.storage_data[key]
    md.storage_data[key] = type(info)("__9_0.distcp", 0, len(buf.getvalue()))
    (d / ".metadata").write_bytes(pickle.dumps(md, protocol=4))
    (p,) = find_file_problems(d, deep=True)
    assert (p.kind, p.fqn) == ("bad_item", "decoder.norm") and "posix.system" in p.message
    assert not marker.exists()
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)  # torch's load runs it
    assert marker.exists()


# ----------------------------------------------------------------------------- damaged files
@given(data=st.data())
def test_any_damage_to_a_safetensors_file_is_a_clear_error_or_a_valid_read(tmp_path_factory, data):
    src = (DATA / "hf" / "shard-00002-model-00001-of-00001.safetensors").read_bytes()
    blob = bytearray(src)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    d = tmp_path_factory.mktemp("st")
    (d / "x.safetensors").write_bytes(bytes(blob[:cut]))
    try:
        md = load_metadata(d)
    except MetadataError as e:
        assert "x.safetensors" in str(e)
    else:
        assert all(isinstance(f, str) for f in md.state_dict_metadata)


def test_every_truncation_of_a_megatron_metadata_is_a_clear_error(tmp_path):
    d = _copy("megatron_015", tmp_path)
    data = (d / ".metadata").read_bytes()
    for cut in range(0, len(data), 37):
        (d / ".metadata").write_bytes(data[:cut])
        with pytest.raises(MetadataError):
            open_checkpoint(d)


def test_format_tables_of_megatron_and_none_for_hf():
    import pandas as pd

    from workbench.tables import format_tables

    tabs = format_tables(open_checkpoint(DATA / "megatron"))
    held = tabs["who held (all_local_plans) and who wrote"]
    want = pd.DataFrame(
        {
            "fqn": ["decoder.w", "decoder.w", "decoder.v", "decoder.v", "decoder.norm"],
            "chunk": ["[0:4, 0:6]", "[4:8, 0:6]", "[0:4, 0:3]", "[0:4, 3:6]", "[0:6]"],
            "held by": ["r0", "r1", "r0", "r1", "r0"],
            "written by": [0, 1, 0, 1, 0],
        }
    )
    pd.testing.assert_frame_equal(held.head(5), want)
    assert list(tabs["sharded objects (bytes entries key/shard_<offsets>_<shape>)"]["key"]) == [
        "rng_state"
    ]
    assert format_tables(open_checkpoint(DATA / "hf")) == {}


# ----------------------------------------------------------------------------- damage on columns
def _one_by_one(ck):
    """Each saved chunk's storage entry, looked up key by key as torch's reader does."""
    out = []
    for fqn, entry in ck.metadata.state_dict_metadata.items():
        offsets = [None] if entry.__class__.__name__ == "BytesStorageMetadata" else None
        offsets = offsets or [c.offsets for c in entry.chunks]
        out += [ck.metadata.storage_data.get(wb.dcp.MetadataIndex(fqn, o)) for o in offsets]
    return out


@pytest.mark.parametrize("name", ["megatron", "megatron_015", "megatron_flat"])
def test_chunk_rows_match_the_lookups_torch_does(name):
    ck = open_checkpoint(DATA / name)
    st_ = ck.metadata.storage_data
    rows = st_.chunk_rows(ck.metadata.state_dict_metadata)
    got = [(st_.paths[st_.path_id[r]], int(st_.offset[r]), int(st_.length[r])) for r in rows]
    want = [(i.relative_path, i.offset, i.length) for i in _one_by_one(ck)]
    assert got == want and ck.damaged_chunks == [] and len(ck.problems()) == 0


def test_a_chunk_without_storage_entry_is_found_on_the_columns(tmp_path):
    import torch.distributed.checkpoint  # noqa: F401 - the pickle's classes

    d = _copy("megatron", tmp_path)
    md = pickle.loads((d / ".metadata").read_bytes())
    key = next(k for k in md.storage_data if k.offset is not None)
    del md.storage_data[key]
    (d / ".metadata").write_bytes(pickle.dumps(md))
    ck = open_checkpoint(d)
    assert type(ck.metadata.storage_data).__name__ == "StorageColumns"
    assert ck.metadata.storage_data.chunk_rows(ck.metadata.state_dict_metadata).min() == -1
    assert [(c.fqn, c.chunk.offsets) for c in ck.unlisted_chunks] == [(key.fqn, tuple(key.offset))]
    assert [p.kind for p in ck.problems()] == ["unlisted_chunk"]
