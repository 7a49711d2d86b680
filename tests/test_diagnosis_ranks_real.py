"""Every problem's ``ranks`` equals the ranks that really raise or really load wrong values, in
real 4-process gloo runs (two launches: one save, then every load).

Observed truth per load: the ranks torch lists in its ``CheckpointException`` (``ranks:dict_keys
([...])``, the ranks whose local planning raised; every rank re-raises it), or, when nothing
raises, the ranks whose loaded elements differ from what the checkpoint holds (`LoadRun.
mismatches`; every element encodes its global index and, for per-rank values, the saving rank).
"""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import pytest

import workbench as wb
from workbench.diagnosis import find_problems

FILL = -1.0
WS = 4


def _w(pl="S(0)", shape=(8, 6), dtype="float32"):
    return wb.dtensor_layout(shape, (WS,), pl, dtype)


def _sub(pl="S(0)", shape=(4,)):
    # a DTensor on the submesh of ranks 2, 3 (ranks 0, 1 hold the key with no local data)
    return wb.dtensor_layout(shape, (2,), pl, world_size=WS, mesh_ranks=(2, 3))


SAVE = {
    "t": wb.tensor_layout((4,), WS, per_rank_values=True),  # each rank its own plain tensor
    "w": _w(),  # rows [0:2] [2:4] [4:6] [6:8]
    "z": _w(shape=(3, 6)),  # rows [0:1] [1:2] [2:3] and rank 3's empty shard at row 3
    "sub": _sub(),
}
LOADS = {  # name -> (checkpoint, target layouts)
    "dedup": ("base", {"t": SAVE["t"]}),
    "dtype": ("base", {"w": _w(dtype="int32"), "z": _w(shape=(3, 6), dtype="int32")}),
    "size": ("base", {"sub": _sub(shape=(6,))}),
    "partial": ("base", {"sub": _sub("P")}),
    "missing": ("base", {"w": _w(), "extra": wb.tensor_layout((2,), WS, ranks=[1, 2])}),
    "strided": ("base", {"w": _w("SS(0,2)")}),
    "hole": ("hole", {"w": _w()}),  # rank 2's rows [4:6] dropped from the metadata
    "overlap": ("overlap", {"w": _w()}),  # rank 3's chunk moved from [6:8] to [5:7]
}


def _edit(path, fqn, old_offset, new_offsets):
    """Rewrite ``.metadata`` with torch's own pickle (a hand edit): the chunk at ``old_offset``
    moved to ``new_offsets`` (None: dropped), its storage key following it."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    md = dcp.FileSystemReader(str(path)).read_metadata()  # our own file: trusted
    tsm = md.state_dict_metadata[fqn]
    chunks = []
    for c in tsm.chunks:
        if tuple(c.offsets) != old_offset:
            chunks.append(c)
        elif new_offsets is not None:
            chunks.append(ChunkStorageMetadata(torch.Size(new_offsets), c.sizes))
    tsm.chunks = chunks
    data = {}
    for k, v in md.storage_data.items():
        if k.fqn == fqn and tuple(k.offset) == old_offset:
            if new_offsets is None:
                continue
            k = MetadataIndex(fqn, torch.Size(new_offsets), k.index)
        data[k] = v
    md.storage_data = data
    md.storage_meta.load_id = None
    with open(Path(path) / ".metadata", "wb") as f:
        pickle.dump(md, f)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from workbench.torch_bridge.runs import LoadStep, run_save, run_steps

    root = tmp_path_factory.mktemp("ranks_real")
    p = {k: str(root / k) for k in ("base", "hole", "overlap")}
    save = run_save(p["base"], SAVE)
    assert save.ok, save.errors
    shutil.copytree(p["base"], p["hole"])
    _edit(p["hole"], "w", (4, 0), None)
    shutil.copytree(p["base"], p["overlap"])
    _edit(p["overlap"], "w", (6, 0), (5, 0))
    loads = run_steps([LoadStep(p[ck], lay, fill=FILL) for ck, lay in LOADS.values()], WS)
    return p, dict(zip(LOADS, loads))


def _raised(run) -> tuple[int, ...]:
    """The ranks torch's CheckpointException names (the same text on every rank)."""
    texts = set(run.errors.values())
    assert len(texts) == 1 and len(run.errors) == WS, run.errors
    m = re.search(r"ranks:dict_keys\(\[([\d, ]*)\]\)", texts.pop())
    return tuple(int(x) for x in m[1].split(",")) if m[1] else ()


def _wrong(run, fqn) -> tuple[int, ...]:
    assert not run.errors, run.errors
    return tuple(sorted({r for r, f, _, _ in run.mismatches() if f == fqn}))


def _problems(p, name):
    ck, layouts = LOADS[name]
    probs = find_problems(wb.plan_load(wb.load_metadata(p[ck]), layouts))
    return [q for q in probs if q.kind != "unexpected_key"]


@pytest.mark.real
def test_dedup_loss_names_every_rank_but_the_writer(real):
    p, runs = real
    (q,) = _problems(p, "dedup")
    writer = wb.load_metadata(p["base"]).storage_data[wb.MetadataIndex("t", (0,))]
    w = int(re.match(r"__(\d+)_0\.distcp", writer.relative_path)[1])
    assert q.kind == "dedup_loss"
    assert q.ranks == _wrong(runs["dedup"], "t") == tuple(r for r in range(WS) if r != w)
    assert f"rank {w} gets its own value back" in q.message


@pytest.mark.real
def test_dtype_mismatch_names_the_ranks_that_receive_elements(real):
    p, runs = real
    probs = {q.fqn: q for q in _problems(p, "dtype")}
    assert {q.kind for q in probs.values()} == {"dtype_mismatch"}
    assert probs["w"].ranks == _wrong(runs["dtype"], "w") == (0, 1, 2, 3)
    # rank 3's shard of z is empty: nothing to cast
    assert probs["z"].ranks == _wrong(runs["dtype"], "z") == (0, 1, 2)


@pytest.mark.real
def test_size_mismatch_raises_on_every_rank_holding_the_key(real):
    p, runs = real
    (q,) = _problems(p, "size")
    assert q.kind == "shape_mismatch" and q.severity == "error"
    # ranks 0, 1 are outside the submesh but the size check comes first
    assert q.ranks == _raised(runs["size"]) == (0, 1, 2, 3)


@pytest.mark.real
def test_partial_raises_only_inside_the_mesh(real):
    p, runs = real
    (q,) = _problems(p, "partial")
    assert q.kind == "partial"
    assert q.ranks == _raised(runs["partial"]) == (2, 3)


@pytest.mark.real
def test_missing_key_raises_on_its_holders(real):
    p, runs = real
    (q,) = _problems(p, "missing")
    assert (q.fqn, q.kind) == ("extra", "missing_key")
    assert q.ranks == _raised(runs["missing"]) == (1, 2)


@pytest.mark.real
def test_strided_misdescribed_ranks_load_wrong_rows(real):
    p, runs = real
    probs = _problems(p, "strided")
    assert {q.kind for q in probs} == {"strided_misdescribed"}
    ranks = tuple(sorted(r for q in probs for r in q.ranks))
    assert ranks == _wrong(runs["strided"], "w") == LOADS["strided"][1]["w"].misdescribed_ranks


@pytest.mark.real
def test_uncovered_ranks_keep_stale_values(real):
    p, runs = real
    (q,) = _problems(p, "hole")
    assert (q.kind, str(q.region)) == ("uncovered", "[4:6, 0:6]")
    assert q.ranks == _wrong(runs["hole"], "w") == (2,)
    (stale,) = [m for m in runs["hole"].mismatches() if m[1] == "w"]
    assert stale == (2, "w", 12, 12)  # every wrong element still holds the fill value


@pytest.mark.real
def test_overlap_and_hole_ranks(real):
    p, runs = real
    probs = _problems(p, "overlap")
    got = {(q.kind, str(q.region)): q.ranks for q in probs}
    assert got == {("uncovered", "[7:8, 0:6]"): (3,), ("overlap", "[5:6, 0:6]"): (2,)}
    # rank 2 reads row 5 from its own chunk and then from the moved one (later file): wrong;
    # rank 3 reads rows 6 from the moved chunk (another row's data) and keeps row 7 stale
    assert _wrong(runs["overlap"], "w") == (2, 3)
