"""The ``.metadata`` reader's fast path and columns, and the parsed-metadata cache.

Every file here is built from torch 2.13's own records and pickled as ``FileSystemWriter`` does;
what we read is compared with ``from_torch(pickle.loads(...))`` (torch's reader), entry by entry
and in order, including the index hints. Hypothesis draws the ints (every pickle int width,
negative offsets, LONG1), the dims, the strings (new or memoised) and the sharing of objects.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.errors import MetadataError
from workbench.formats import dcp, metadata_cache
from workbench.formats.columns import ChunkList, StorageColumns, tuple_hashes
from workbench.formats.dcp_fast import ChunkRun, StorageRun
from workbench.geometry import Chunk
from workbench.records import MetadataIndex, StorageInfo
from workbench.torch_bridge.convert import from_torch

torch = pytest.importorskip("torch")
from torch.distributed.checkpoint import metadata as tm  # noqa: E402
from torch.distributed.checkpoint.filesystem import _StorageInfo  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def torch_md(tensors, *, fresh_fqn=True, share_size=False, order="rank"):
    """A torch Metadata of ``tensors`` ({fqn: (size, [(offsets, sizes, writer rank)])}) with
    storage entries rank by rank (``order="rank"``, as a real save) or fqn by fqn."""
    sdm, entries = {}, []
    for fqn, (size, chunks) in tensors.items():
        cs = []
        for i, (off, siz, rank) in enumerate(chunks):
            c = tm.ChunkStorageMetadata(torch.Size(off), torch.Size(siz))
            cs.append(c)
            entries.append((rank, fqn, i, c))
        sdm[fqn] = tm.TensorStorageMetadata(
            tm.TensorProperties(dtype=torch.float32), torch.Size(size), cs
        )
    if order == "rank":
        entries.sort(key=lambda e: e[0])
    storage, own, offsets = {}, {}, {}
    for rank, fqn, i, c in entries:
        name = fqn
        if fresh_fqn:  # each rank's results arrive unpickled: its own key strings
            name = own.setdefault((rank, fqn), fqn.encode().decode())
        off = c.offsets if share_size else torch.Size(list(c.offsets))
        at = offsets.get(rank, 0)
        n = max(1, int(np.prod(c.sizes)) * 4)
        storage[tm.MetadataIndex(name, off, i)] = _StorageInfo(f"__{rank}_0.distcp", at, n)
        offsets[rank] = at + n
    return tm.Metadata(sdm, planner_data={f: (f,) for f in sdm}, storage_data=storage)


def assert_same(data: bytes):
    ours = dcp.read_metadata_bytes(data)
    ref = from_torch(pickle.loads(data))
    assert ours.state_dict_metadata == ref.state_dict_metadata
    assert [(k.fqn, k.offset, k.index, v) for k, v in ours.storage_data.items()] == [
        (k.fqn, k.offset, k.index, v) for k, v in ref.storage_data.items()
    ]
    assert ours.planner_data == ref.planner_data
    assert ours.version == ref.version
    return ours


def runs_of(data: bytes) -> tuple[int, int]:
    """How many chunk records and storage entries the fast path decoded."""
    un = dcp.AllowListUnpickler(data)
    un.use_fast_paths()
    raw = un.load()
    chunks = sum(
        c.count
        for e in raw.field("state_dict_metadata").values()
        for c in (e.field("chunks") or [])
        if isinstance(c, ChunkRun)
    )
    storage = sum(k.count for k in raw.field("storage_data") if isinstance(k, StorageRun))
    return chunks, storage


def sharded(size, ranks, dim=0):
    """Chunks of ``size`` split along ``dim`` over ``ranks`` (torch's Shard(dim) split)."""
    n = size[dim]
    per = -(-n // ranks)
    out = []
    for r in range(ranks):
        start = min(n, per * r)
        length = max(0, min(n, start + per) - start)
        off = [0] * len(size)
        siz = list(size)
        off[dim], siz[dim] = (start if length else n), length
        out.append((off, siz, r))
    return out


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("fresh_fqn", [True, False])
@pytest.mark.parametrize("order", ["rank", "fqn"])
def test_a_real_save_shape_reads_as_torch_reads_it_and_takes_the_fast_path(fresh_fqn, order):
    tensors = {f"layers.{i}.w": ((70_000 + i, 3), sharded((70_000 + i, 3), 300)) for i in range(4)}
    tensors["norm"] = ((8,), sharded((8,), 300))  # 1-d, mostly empty shards (offset 8)
    tensors["cube"] = ((6, 4, 2), sharded((6, 4, 2), 3, dim=1))
    data = pickle.dumps(torch_md(tensors, fresh_fqn=fresh_fqn, order=order))
    md = assert_same(data)
    chunks, storage = runs_of(data)
    n = sum(len(c) for _, c in tensors.values())
    # every record but each list's first and one per 64 KB frame goes through the fast path
    # (the storage dict holds fewer entries: the empty shards of "norm" share one key)
    assert chunks > 0.9 * n and storage > 0.9 * len(md.storage_data)
    assert isinstance(md.state_dict_metadata["norm"].chunks, ChunkList)
    assert isinstance(md.storage_data, StorageColumns)


def test_references_of_the_benchmark_read_as_torch_reads_them():
    import references as R

    assert_same(R.torch_metadata_bytes(R.flat(8)))
    assert_same(R.torch_metadata_bytes(R.realistic(2, 4, 2)))


def test_a_record_referred_back_to_is_built_as_the_opcode_loop_builds_it():
    # torch's own writer shares the chunk's offsets Size with the storage key on the
    # coordinator: the key's offset is a GET into a chunk record the fast path decoded
    tensors = {"w": ((64, 4), sharded((64, 4), 16))}
    md = torch_md(tensors, share_size=True)
    data = pickle.dumps(md)
    assert data.count(b"ChunkStorageMetadata") == 1
    assert_same(data)


_ints = st.one_of(
    st.integers(0, 255),
    st.integers(256, 65535),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1),
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 3),  # dims
            st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=12),
            st.data(),
        ),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
    st.booleans(),
)
def test_random_metadata_reads_as_torch_reads_it(spec, fresh_fqn, share_size):
    tensors = {}
    for t, (nd, ranks, data) in enumerate(spec):
        chunks = []
        for rank, _ in ranks:
            off = [data.draw(_ints) for _ in range(nd)]
            siz = [data.draw(st.integers(0, 2**20)) for _ in range(nd)]
            chunks.append((off, siz, rank))
        tensors[f"t{t}" + "x" * data.draw(st.integers(0, 300))] = ([2**20] * nd, chunks)
    data = pickle.dumps(torch_md(tensors, fresh_fqn=fresh_fqn, share_size=share_size))
    assert_same(data)


def test_tuple_hashes_are_pythons():
    rng = np.random.default_rng(0)
    m = (1 << 61) - 1
    special = np.array([0, 1, -1, -2, m, m - 1, -m, 2**63 - 1, -(2**63), 3 * m], np.int64)
    for nd in (1, 2, 3, 5):
        rows = rng.integers(-(2**63), 2**63 - 1, size=(200, nd), dtype=np.int64)
        rows[:10] = special[:, None]
        got = tuple_hashes(rows).tolist()
        assert got == [hash(tuple(r)) for r in rows.tolist()]
        sizes = np.abs(rows[:, ::-1] // 2)
        nested = tuple_hashes(
            tuple_hashes(rows).view(np.uint64), tuple_hashes(sizes).view(np.uint64)
        )
        assert nested.tolist() == [
            hash(Chunk(tuple(o), tuple(s))) for o, s in zip(rows.tolist(), sizes.tolist())
        ]


def test_chunks_crafted_to_share_a_hash_are_refused():
    # (i*m, j*m, k*m) for 512 (i, j, k): distinct offsets, one tuple hash (m = 2**61 - 1)
    m = (1 << 61) - 1
    ks = range(-4, 4)
    chunks = [([i * m, j * m, k * m], [1, 1, 1], 0) for i in ks for j in ks for k in ks]
    data = pickle.dumps(torch_md({"w": ([2**20] * 3, chunks)}))
    with pytest.raises(MetadataError, match="share one hash value"):
        dcp.read_metadata_bytes(data)


# ----------------------------------------------------------------------------- columns
def test_chunk_list_reads_like_a_list_and_becomes_one_when_edited():
    cl = ChunkList(np.array([[0, 0], [4, 0]]), np.array([[4, 8], [4, 8]]))
    assert cl == [Chunk((0, 0), (4, 8)), Chunk((4, 0), (4, 8))] == list(cl)
    assert cl[1] == Chunk((4, 0), (4, 8)) and cl[-1] == cl[1] and cl[:1] == [cl[0]]
    assert cl.box_arrays is not None
    cl.pop(0)
    assert cl == [Chunk((4, 0), (4, 8))] and cl.box_arrays is None
    cl.append(Chunk((0, 0), (1, 1)))
    assert len(cl) == 2 and pickle.loads(pickle.dumps(cl)) == list(cl)


def test_storage_columns_keep_dict_semantics():
    # a repeated key keeps its first position and its last value, as torch's dict does
    sc = StorageColumns(
        fqns=["a", "b"],
        paths=["p0", "p1"],
        fqn_id=[0, 1, 0, 1],
        off_start=[0, 1, 1, 2, 2],
        offsets=[5, 5],
        has_offset=[True, False, True, False],
        hint=[0, 0, 2, 0],
        has_hint=[True, False, True, False],
        path_id=[0, 1, 1, 0],
        offset=[0, 1, 2, 3],
        length=[10, 11, 12, 13],
    )
    assert list(sc) == [MetadataIndex("a", (5,)), MetadataIndex("b")]
    assert [k.index for k in sc] == [0, None]
    assert sc[MetadataIndex("a", [5])] == StorageInfo("p1", 2, 12)
    assert sc[MetadataIndex("b")] == StorageInfo("p0", 3, 13)
    assert MetadataIndex("a", (6,)) not in sc and len(sc) == 2
    assert sc == {
        MetadataIndex("a", (5,)): StorageInfo("p1", 2, 12),
        MetadataIndex("b"): StorageInfo("p0", 3, 13),
    }
    assert sc.rows_of("a", np.array([[5], [6]])).tolist() == [2, -1]
    sc[MetadataIndex("c")] = StorageInfo("p2", 0, 1)
    assert len(sc) == 3 and sc.box_rows is None


_KEY = st.tuples(
    st.sampled_from(["a", "b", "c"]),
    st.one_of(st.none(), st.lists(st.integers(-3, 3), min_size=0, max_size=2).map(tuple)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_KEY, max_size=12), st.lists(_KEY, max_size=8))
def test_rows_of_and_chunk_rows_are_the_dict_lookups(stored, asked):
    # the vectorised lookups give the row of exactly the value a dict lookup gives, -1 for none
    # (repeated keys: last value; offsets of another length or fqn: no match)
    n = len(stored)
    off = [o for _, o in stored if o]
    sc = StorageColumns(
        fqns=["a", "b", "c"],
        paths=["p"],
        fqn_id=[["a", "b", "c"].index(f) for f, _ in stored],
        off_start=np.cumsum([0] + [len(o or ()) for _, o in stored]),
        offsets=[x for o in off for x in o],
        has_offset=[o is not None for _, o in stored],
        hint=[0] * n,
        has_hint=[False] * n,
        path_id=[0] * n,
        offset=list(range(n)),
        length=[1] * n,
    )
    truth = {MetadataIndex(f, o): StorageInfo("p", i, 1) for i, (f, o) in enumerate(stored)}

    def row_of(f, o):
        info = truth.get(MetadataIndex(f, o))
        return -1 if info is None else info.offset

    for fqn in "abc":
        for nd in (0, 1, 2):
            want = [o for f, o in asked if o is not None and len(o) == nd]
            got = sc.rows_of(fqn, np.array(want, np.int64).reshape(len(want), nd))
            assert got.tolist() == [row_of(fqn, o) for o in want]
    # chunk_rows: every chunk of state_dict_metadata-like entries, in order
    entries = {}
    for f, o in asked:
        if o is not None and len(o) == 1:
            entries.setdefault(f, []).append(o)
    metadata = {
        f: type("E", (), {"chunks": ChunkList(np.array(os_), np.ones((len(os_), 1)))})()
        for f, os_ in entries.items()
    }
    rows = sc.chunk_rows(metadata)
    if rows is not None:
        assert rows.tolist() == [row_of(f, o) for f, os_ in entries.items() for o in os_]


# ----------------------------------------------------------------------------- cache
@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("WORKBENCH_NO_CACHE", raising=False)
    return tmp_path / "cache" / "dcp-reshard-workbench"


@pytest.fixture
def ckpt(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    tensors = {"w": ((600, 4), sharded((600, 4), 100)), "b": ((4,), sharded((4,), 100))}
    (d / ".metadata").write_bytes(pickle.dumps(torch_md(tensors)))
    return d


def test_second_open_comes_from_the_cache(ckpt, cache_home, monkeypatch):
    first = dcp.load_metadata(ckpt)
    assert len(list(cache_home.glob("metadata-*.wbmd"))) == 1

    def no_parse(*a, **k):
        raise AssertionError("parsed again")

    monkeypatch.setattr(dcp, "read_metadata_bytes", no_parse)
    again = dcp.load_metadata(ckpt)
    assert again == first
    assert [(k.index, v) for k, v in again.storage_data.items()] == [
        (k.index, v) for k, v in first.storage_data.items()
    ]
    assert again.planner_data == first.planner_data and again.storage_meta == first.storage_meta


def test_a_cached_open_answers_chunk_rows_without_a_lookup(ckpt, cache_home, monkeypatch):
    cold = dcp.load_metadata(ckpt, cache=False)
    want = cold.storage_data.chunk_rows(cold.state_dict_metadata)
    dcp.load_metadata(ckpt)  # stores the entry with each chunk's row
    warm = dcp.load_metadata(ckpt)

    def no_lookup(*a, **k):
        raise AssertionError("looked up again")

    monkeypatch.setattr(StorageColumns, "_rows_of", no_lookup)
    assert warm.storage_data.chunk_rows(warm.state_dict_metadata).tolist() == want.tolist()
    assert (want >= 0).all()


def test_the_cache_is_ignored_when_the_file_changes_or_is_turned_off(ckpt, cache_home, monkeypatch):
    dcp.load_metadata(ckpt)
    path = ckpt / ".metadata"
    tensors = {"w": ((600, 4), sharded((600, 4), 50))}
    path.write_bytes(pickle.dumps(torch_md(tensors)))  # new content, size and mtime
    md = dcp.load_metadata(ckpt)
    assert len(md.state_dict_metadata["w"].chunks) == 50 and "b" not in md.state_dict_metadata
    # same bytes, another mtime: a new key, never the old entry's
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert dcp.load_metadata(ckpt) == md
    n = len(list(cache_home.glob("*.wbmd")))
    monkeypatch.setenv("WORKBENCH_NO_CACHE", "1")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert dcp.load_metadata(ckpt) == md
    monkeypatch.delenv("WORKBENCH_NO_CACHE")
    assert dcp.load_metadata(ckpt, cache=False) == md
    assert len(list(cache_home.glob("*.wbmd"))) == n


def test_a_damaged_cache_entry_is_a_miss(ckpt, cache_home):
    md = dcp.load_metadata(ckpt)
    (entry,) = cache_home.glob("*.wbmd")
    entry.write_bytes(b"not an entry")
    assert dcp.load_metadata(ckpt) == md
    # an entry whose key does not match the file is never used
    key = metadata_cache.content_key((ckpt / ".metadata").read_bytes(), 1, 2)
    assert metadata_cache.load_cached(key) is None


def test_a_cache_entry_keeps_strides(cache_home):
    # torch 2.15+ pickles TensorProperties.strides: the entry keeps them
    import dataclasses

    md = dcp.read_metadata_bytes(pickle.dumps(torch_md({"w": ((8, 4), sharded((8, 4), 2))})))
    w = md.state_dict_metadata["w"]
    w.properties = dataclasses.replace(w.properties, strides=(4, 1))
    key = metadata_cache.content_key(b"x", 1, 2)
    assert metadata_cache.store(key, md, 1000)
    back = metadata_cache.load_cached(key)
    assert back == md and back.state_dict_metadata["w"].properties.strides == (4, 1)


def test_a_cold_open_records_the_writer_versions_for_later(ckpt, cache_home, monkeypatch):
    want = dcp.infer_writer_versions((ckpt / ".metadata").read_bytes())
    assert want.low == "2.9" and want.evidence  # torch 2.13 pickled it
    dcp.load_metadata(ckpt)  # the cold open keeps them beside the columns

    def no_parse(*a, **k):
        raise AssertionError("parsed again")

    monkeypatch.setattr(dcp, "infer_writer_versions", no_parse)
    assert dcp.load_writer_versions(ckpt) == want
    # an edited file is a new key: never the recorded answer
    st = (ckpt / ".metadata").stat()
    os.utime(ckpt / ".metadata", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="parsed again"):
        dcp.load_writer_versions(ckpt)


def test_the_summary_of_a_checkpoint_is_its_description_counted(tmp_path):
    from workbench.checkpoint import describe_checkpoint, summarize_checkpoint

    tensors = {
        "w": ((600, 4), sharded((600, 4), 7)),
        "b": ((4,), [((0,), (4,), 3)]),
        "e": ((5, 5), sharded((5, 5), 8, dim=1)),  # some ranks hold empty pieces
    }
    md = dcp.read_metadata_bytes(pickle.dumps(torch_md(tensors)))
    assert isinstance(md.storage_data, StorageColumns)

    def counted(info):
        return {
            "version": info["version"],
            "files": info["files"],
            "entries": [
                {
                    **{k: v for k, v in e.items() if k != "chunks"},
                    "n_chunks": len(e["chunks"]),
                    "writers": tuple(sorted({c["writer"] for c in e["chunks"]})),
                }
                for e in info["entries"]
            ],
        }

    want = counted(describe_checkpoint(md))
    assert summarize_checkpoint(md) == want
    assert want["entries"][0]["writers"] == tuple(range(7))
    # an edited storage mapping is summarised chunk by chunk, to the same answer
    md.storage_data[MetadataIndex("b", (0,))] = StorageInfo("__3_0.distcp", 0, 16)
    assert summarize_checkpoint(md) == counted(describe_checkpoint(md))
