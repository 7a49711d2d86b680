"""Every supported torch version's DCP planner semantics against what that version's OWN code
computed (``tools/record_torch_versions.py`` ran each wheel's sources on the cases of
``tests/data/torch-cases.json`` and stored the results in ``tests/data/torch-<X.Y>/``): helpers
and whole plans called with ``torch_version=`` equal the recording item by item, in order.
No download here; the live 2.13 differential tests stay in their own files."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from workbench import planner_helpers as H
from workbench.errors import WorkbenchError
from workbench.planning import plan_load, plan_save
from workbench.records import (
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    SavePlan,
    TensorProperties,
    TensorStorageMetadata,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from workbench.sharding import RankValue, bytes_layout, dtensor_layout, tensor_layout
from workbench.versions import SUPPORTED_TORCH_VERSIONS, semantics, version_key

DATA = Path(__file__).parent / "data"
DTYPES = {1: "uint8", 2: "float16", 4: "float32", 8: "float64"}


@cache
def cases() -> dict:
    return json.loads((DATA / "torch-cases.json").read_text())


@cache
def recorded(v: str) -> dict:
    return json.loads((DATA / f"torch-{v}" / "planner.json").read_text())["cases"]


@cache
def recorded_maths(v: str) -> list:
    return json.loads((DATA / f"torch-{v}" / "dtensor.json").read_text())["cases"]


def test_every_supported_version_is_recorded():
    have = sorted(p.name for p in DATA.glob("torch-2.*") if (p / "planner.json").exists())
    assert have == sorted(f"torch-{v}" for v in SUPPORTED_TORCH_VERSIONS)
    planner_cases = {k: len(x) for k, x in cases().items() if k != "dtensor"}
    for v in SUPPORTED_TORCH_VERSIONS:
        rec = recorded(v)
        assert {k: len(x) for k, x in rec.items()} == planner_cases
        assert len(recorded_maths(v)) == len(cases()["dtensor"])


# ----------------------------------------------------------------------------- conversions
def tsm(entry):
    if entry == "bytes":
        return BytesStorageMetadata()
    return TensorStorageMetadata(
        TensorProperties("float32"),
        tuple(entry["size"]),
        [(tuple(o), tuple(s)) for o, s in entry["chunks"]],
    )


def rows(items) -> list:
    return [
        [
            it.type.name[0],
            it.dest_index.fqn,
            it.dest_index.index,
            it.storage_index.index,
            list(it.dest_offsets),
            list(it.storage_offsets),
            list(it.lengths),
        ]
        for it in items
    ]


def write_item(d) -> WriteItem:
    if d["type"] == "BYTE_IO":
        return WriteItem(MetadataIndex(d["fqn"]), WriteItemType.BYTE_IO)
    return WriteItem(
        MetadataIndex(d["fqn"], tuple(d["offset"])),
        WriteItemType[d["type"]],
        tensor_data=TensorWriteData(
            (tuple(d["chunk"][0]), tuple(d["chunk"][1])),
            TensorProperties(DTYPES[d["esize"]]),
            tuple(d["size"]),
        ),
    )


def plan_rows(plan) -> list:
    return [
        [it.index.fqn, None if it.index.offset is None else list(it.index.offset), it.index.index]
        for it in plan.items
    ]


def md_rows(md: Metadata) -> dict:
    return {
        k: "bytes"
        if isinstance(v, BytesStorageMetadata)
        else {"size": list(v.size), "chunks": [[list(c.offsets), list(c.sizes)] for c in v.chunks]}
        for k, v in md.state_dict_metadata.items()
    }


def check_validation(v: str, got: list[str], rec: dict) -> None:
    """Through 2.11 torch returned a bool and logged the findings; from 2.12 it returns them."""
    assert got == rec["logged"]
    if semantics(v).validation_returns_errors:
        assert rec["returned"] == got
    else:
        assert rec["returned"] is (not got)


def raised(e: WorkbenchError) -> dict:
    return {"raise": [e.torch_type, e.torch_message]}


VERSIONS = pytest.mark.parametrize("v", SUPPORTED_TORCH_VERSIONS)


# ----------------------------------------------------------------------------- helpers
@VERSIONS
def test_read_items_for_chunk_list(v):
    for case, rec in zip(cases()["read_items"], recorded(v)["read_items"]):
        md = tsm({"size": case["shape"], "chunks": case["saved"]})
        local = [(tuple(o), tuple(s)) for o, s in case["local"]]
        got = H.create_read_items_for_chunk_list("t", md, local, torch_version=v)
        assert rows(got) == rec, case


@VERSIONS
def test_dedup_global_plan_and_validation(v):
    for case, rec in zip(cases()["save"], recorded(v)["save"]):
        plans = [SavePlan([write_item(d) for d in p]) for p in case["plans"]]
        deduped = H.dedup_save_plans(plans, case["lowest"], torch_version=v)
        assert [plan_rows(p) for p in deduped] == rec["dedup"]
        final, md = H.create_default_global_save_plan(deduped, torch_version=v)
        assert [plan_rows(p) for p in final] == rec["plans"]
        assert md_rows(md) == rec["md"]
        check_validation(v, H.validate_global_plan(final, md, torch_version=v), rec["validate"])


@VERSIONS
def test_validate_global_plan(v):
    for case, rec in zip(cases()["validate"], recorded(v)["validate"]):
        md = Metadata({k: tsm(e) for k, e in case["md"].items()})
        got = H.validate_global_plan([SavePlan([])] * case["nplans"], md, torch_version=v)
        check_validation(v, got, rec)


def sd_value(spec):
    if spec == "bytes":
        return [1, 2]
    return RankValue(tensor_layout(tuple(spec), 1), 0)


@VERSIONS
def test_local_load_plan_checks(v):
    for case, rec in zip(cases()["load"], recorded(v)["load"]):
        md = Metadata({k: tsm(e) for k, e in case["md"].items()})
        sd = {k: sd_value(s) for k, s in case["sd"].items()}
        try:
            got = rows(
                H.create_default_local_load_plan(sd, md, case["strict"], torch_version=v).items
            )
        except WorkbenchError as e:
            got = raised(e)
        assert got == rec, case


# ----------------------------------------------------------------------------- whole plans
def layout(spec, ws):
    if spec[0] == "dtensor":
        return dtensor_layout(tuple(spec[1]), tuple(spec[2]), spec[3], world_size=ws)
    if spec[0] == "tensor":
        return tensor_layout(tuple(spec[1]), ws)
    return bytes_layout(ws)


def layouts(case, side, v=None, chunks=None) -> dict:
    """The case's layouts (built with the installed torch's maths); with ``v``, re-derived for
    that version, whose own DTensor maths gave ``chunks`` (checked equal here)."""
    from workbench.sharding import for_torch_version

    ws = case["world_size"]
    out = {fqn: layout(spec, ws) for fqn, spec in case[side].items()}
    if v is not None:
        out = {fqn: for_torch_version(lay, v) for fqn, lay in out.items()}
    # the chunks torch's functions were given are the ones planned here
    for fqn, lay in out.items():
        stored = (chunks or case[f"{side}_chunks"])[fqn][2]
        assert [[[list(c.offsets), list(c.sizes)] for c in cs] for cs in lay.rank_chunks] == stored
    return out


@VERSIONS
def test_whole_plans(v):
    """Whole plans, DTensor boxes included: the chunks each version's own DTensor maths gave
    (recorded with the case) are the ones plan_save / plan_load derive for that version."""
    for case, rec in zip(cases()["whole"], recorded(v)["whole"], strict=True):
        layouts(case, "save", v, rec["save_chunks"])
        layouts(case, "load", v, rec["load_chunks"])
        save = plan_save(layouts(case, "save"), torch_version=v)
        assert save.torch_version == v
        assert [plan_rows(p) for p in save.plans] == rec["plans"]
        assert md_rows(save.metadata) == rec["md"]
        check_validation(v, save.errors, rec["validate"])
        load = plan_load(save.metadata, layouts(case, "load"), torch_version=v)
        assert load.torch_version == v
        assert [rows(p.items) for p in load.plans] == rec["loads"]


def test_versions_really_differ_in_the_recordings():
    """The recordings carry the differences the semantics flags claim (guards a re-recording
    that silently ran one version's code for all)."""
    r10, r11 = recorded("2.10")["read_items"], recorded("2.11")["read_items"]
    assert sum(a != b for a, b in zip(r10, r11)) > 100
    assert all(a == b for a, b in zip(recorded("2.4")["read_items"], r10))
    size_case = 3  # a [4, 6] checkpoint entry loaded into [4, 7]
    assert "raise" not in recorded("2.5")["load"][size_case]
    assert recorded("2.6")["load"][size_case]["raise"][0] == "ValueError"


# ----------------------------------------------------------------------------- whole-plan users
def test_size_mismatch_severity_follows_the_recorded_behaviour():
    """find_problems calls a size mismatch an error exactly in the versions whose own code raised
    on it (recorded load case 3: a [4, 6] entry loaded into [4, 7])."""
    case = cases()["load"][3]
    md = Metadata({k: tsm(e) for k, e in case["md"].items()})
    target = {"a": tensor_layout((4, 7), 2)}
    for v in SUPPORTED_TORCH_VERSIONS:
        torch_raised = "raise" in recorded(v)["load"][3]
        res = plan_load(md, target, torch_version=v)
        (p,) = [p for p in res.problems if p.kind == "shape_mismatch"]
        assert p.severity == ("error" if torch_raised else "silent"), v
        assert bool(res.failures) is torch_raised
        # where torch plans reads against the wrong shape, so do we, rank by rank
        if not torch_raised:
            one = H.create_default_local_load_plan(
                {"a": RankValue(target["a"], 0)}, md, torch_version=v
            )
            assert rows(res.plans[0].items) == rows(one.items) == recorded(v)["load"][3][:2]


def test_find_problems_replans_for_another_version():
    case = cases()["load"][3]
    md = Metadata({k: tsm(e) for k, e in case["md"].items()})
    res = plan_load(md, {"a": tensor_layout((4, 7), 1)}, torch_version="2.13")
    from workbench.diagnosis import find_problems

    def severities(problems):
        return [p.severity for p in problems if p.kind == "shape_mismatch"]

    assert severities(find_problems(res, torch_version="2.5")) == ["silent"]
    assert severities(find_problems(res)) == ["error"]


def test_explain_names_the_version():
    from workbench.explanations import explain

    text = "Size mismatch between saved torch.Size([4, 6]) and current: torch.Size([4, 7]) for a"
    new, old = explain(text, torch_version="2.13"), explain(text, torch_version="2.5")
    assert (new.pattern, new.torch_version, old.torch_version) == ("size_mismatch", "2.13", "2.5")
    assert "never raises this" in old.what_to_check[0]
    assert not any("never raises" in w for w in new.what_to_check)
    bare = explain("ValueError: Failed to validate global plan", torch_version="2.10")
    assert bare.pattern == "validate_global_plan"
    assert any("logged as warnings" in w for w in bare.what_to_check)


def test_save_problems_quote_the_version_text():
    """A save whose chunks overlap: torch 2.12+ raises the joined strings, earlier versions the
    bare text (the strings go to the log)."""
    from workbench.diagnosis import find_save_problems
    from workbench.sharding import sharded_layout

    lay = sharded_layout((8,), {0: [((0,), (5,))], 1: [((3,), (5,))]}, "float32", 2)
    for v, bare in (("2.11", True), ("2.12", False)):
        save = plan_save({"t": lay}, torch_version=v)
        assert save.errors and save.torch_version == v
        quotes = [p.message for p in find_save_problems(save) if "Failed to validate" in p.message]
        assert quotes, v
        assert all(("logs:" in q) is bare for q in quotes), (v, quotes)


def test_compare_versions_reports_order_and_problem_changes():
    from workbench.version_compare import compare_versions

    # saved on a 2x2 mesh [S(0), S(1)], read whole on every rank: nested order #0 #1 #2 #3,
    # sweep (dim 1 is the longest) by end on dim 1: #0 #2 #1 #3
    save = plan_save({"w": dtensor_layout((8, 12), (2, 2), "S(0), S(1)")}, torch_version="2.13")
    target = {"w": dtensor_layout((8, 12), (4,), "R"), "x": tensor_layout((3,), 4)}
    md = Metadata(
        {**save.metadata.state_dict_metadata, "x": tsm({"size": [2], "chunks": [[[0], [2]]]})},
        storage_data=save.metadata.storage_data,
    )
    cmp = compare_versions(md, target, ["2.5", "2.10", "2.13"])
    assert cmp.versions == ("2.5", "2.10", "2.13")
    for r in range(4):
        old, new = [c for c in cmp.of_rank(r)]
        # 2.5 reads the mis-sized x (silently), 2.10 raises on it: its reads change
        assert (old.version, old.reordered, old.changed) == ("2.10", (), ("x",))
        # every version is compared with the first (2.5)
        assert (new.version, new.reordered, new.changed) == ("2.13", ("w",), ("x",))
        # the size mismatch of x: read silently by 2.5, raised from 2.6
        assert old.vanishing == ("silent shape_mismatch x",)
        assert old.appearing == ("error shape_mismatch x",)
        # the reader opens files in order of first read: the new order opens them differently
        assert old.files_before == old.files_after == tuple(f"__{w}_0.distcp" for w in range(4))
        assert new.files_after == tuple(f"__{w}_0.distcp" for w in (0, 2, 1, 3))
    got = [
        c.storage_index.index for c in cmp.results["2.13"].plans[0].items if c.dest_index.fqn == "w"
    ]
    assert got == [0, 2, 1, 3]
    with pytest.raises(WorkbenchError, match="2.3"):
        compare_versions(md, target, ["2.3", "2.13"])


# ----------------------------------------------------------------------------- versions module
def test_default_and_resolution():
    import importlib.metadata

    from workbench.versions import default_torch_version, resolve_torch_version

    installed = ".".join(importlib.metadata.version("torch").split("+")[0].split(".")[:2])
    assert default_torch_version() == installed == "2.13"
    assert resolve_torch_version("2.10.0+cpu") == "2.10"
    assert resolve_torch_version(None) == "2.13"
    for bad in ("2.3", "banana", "", "3"):
        with pytest.raises(WorkbenchError, match="not supported"):
            resolve_torch_version(bad)
    # an unrecorded newer version named explicitly: an error that says how to get it
    with pytest.raises(WorkbenchError, match=r"'2.16' is newer than every recorded version"):
        resolve_torch_version("2.16")
    assert plan_save({"t": tensor_layout((2,), 1)}).torch_version == "2.13"


def test_bridge_names_the_torch_it_needs(monkeypatch):
    from workbench import versions
    from workbench.torch_bridge.fake_pg import torch_save_plans

    monkeypatch.setattr(versions, "installed_torch_version", lambda: "2.4")
    from workbench.torch_bridge.convert import placement_to_torch

    with pytest.raises(WorkbenchError, match=r"placement_to_torch .* needs torch 2.5 or newer"):
        placement_to_torch("S(0)")
    with pytest.raises(
        WorkbenchError,
        match=r"torch_save_plans .* needs torch 2.5 or newer; the installed torch is 2.4",
    ):
        torch_save_plans({"t": tensor_layout((2,), 1)})


def test_pyproject_never_caps_torch():
    """Every torch requirement (dependencies or an extra) admits every supported version and any
    newer one: installing the package never downgrades a user's torch."""
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((DATA.parent.parent / "pyproject.toml").read_text())["project"]
    reqs = [
        Requirement(d)
        for d in [
            *project.get("dependencies", []),
            *(d for extra in project.get("optional-dependencies", {}).values() for d in extra),
        ]
        if Requirement(d).name == "torch"
    ]
    assert reqs
    for req in reqs:
        for v in SUPPORTED_TORCH_VERSIONS:
            for patch in ("0", "1", "9"):
                assert req.specifier.contains(f"{v}.{patch}"), (req, v)
        for v in ("2.16.0", "2.20.1", "3.0.0"):
            assert req.specifier.contains(v), (req, v)
        assert not req.specifier.contains("2.3.1"), req


# ----------------------------------------------------------------------------- checkpoints
def test_real_old_checkpoints_are_read_and_dated():
    """Tiny checkpoints written by older torch's own dcp.save (tools/record_torch_versions.py
    --venv): read by the allow-list reader, their writer's version range inferred."""
    from workbench.formats.dcp import infer_writer_versions, load_metadata, metadata_path
    from workbench.sharding import dtensor_layout as dl

    expected = {
        "2.4": ("2.4", "2.6"),
        "2.7": ("2.7", "2.8"),
        "2.9": ("2.9", "2.14"),
        "2.15": ("2.15", None),
    }
    found = sorted(DATA.glob("torch-*/ckpt/.metadata"))
    assert sorted(m.parent.parent.name for m in found) == sorted(f"torch-{v}" for v in expected)
    for meta in found:
        v = meta.parent.parent.name.removeprefix("torch-")
        rng = infer_writer_versions(metadata_path(meta.parent).read_bytes())
        assert (rng.low, rng.high) == expected[v], (v, rng)
        lo, hi = rng.low, rng.high or SUPPORTED_TORCH_VERSIONS[-1]
        assert version_key(lo) <= version_key(v) <= version_key(hi), (v, rng)
        md = load_metadata(meta.parent)
        w = md.state_dict_metadata["w"]
        assert (w.size, w.properties.dtype, [c.sizes for c in w.chunks]) == (
            (4, 3),
            "float32",
            [(4, 3)],
        )
        assert md.state_dict_metadata["b"].properties.dtype == "int64"
        # 2.15 pickles the strides of the saved tensors (6-tuples); older versions 5-tuples
        strides = (3, 1) if v == "2.15" else None
        assert (w.properties.strides, md.state_dict_metadata["b"].properties.strides) == (
            strides,
            None if strides is None else (1,),
        )
        assert isinstance(md.state_dict_metadata["step"], BytesStorageMetadata)
        target = {
            "w": dl((4, 3), (2,), "S(1)"),
            "b": tensor_layout((2,), 2, "int64"),
            "step": bytes_layout(2),
        }
        res = plan_load(md, target, torch_version=v)
        assert res.problems == [] and res.torch_version == v
        assert [len(p.items) for p in res.plans] == [3, 3]


def test_inference_bounds_on_synthetic_pickles():
    """Each field moves the bound it should (the pickles are built from the allow-listed stand-in
    names only, as torch of each era writes them)."""
    import pickle

    from workbench.formats.dcp import infer_writer_versions

    meta = (DATA / "torch-2.4" / "ckpt" / ".metadata").read_bytes()
    assert str(infer_writer_versions(meta)) == "torch 2.4 to 2.6"
    # python 3.13 writes pathlib._local.PosixPath: same bytes with the module renamed
    p313 = meta.replace(b"\x8c\x07pathlib\x94", b"\x8c\x0epathlib._local\x94")
    assert p313 != meta
    got = infer_writer_versions(p313)
    assert (got.low, got.high, got.python) == ("2.4", "2.6", "3.13+")
    with pytest.raises(WorkbenchError, match="builtins.eval"):
        infer_writer_versions(pickle.dumps(eval))  # noqa: S307 (the global is refused, not run)


# ----------------------------------------------------------------------------- CLI
def test_cli_inspect_names_the_writer_range(capsys):
    from workbench.cli import main

    ckpt = str(DATA / "torch-2.4" / "ckpt")
    assert main(["inspect", ckpt]) == 0
    assert "written by torch 2.4 to 2.6" in capsys.readouterr().out
    assert main(["inspect", ckpt, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["written_by"]
    assert (got["low"], got["high"]) == ("2.4", "2.6")


def test_cli_plan_torch_flag(capsys, tmp_path):
    from workbench.cli import main

    ckpt = str(DATA / "torch-2.4" / "ckpt")
    target = tmp_path / "t.json"
    # w loaded into the wrong shape: silent before 2.6, an error from 2.6
    target.write_text(json.dumps({"w": {"shape": [4, 4], "mesh": [2], "placements": "S(0)"}}))
    assert main(["plan", ckpt, "-t", str(target), "--torch", "2.5"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("DCP semantics of torch 2.5 (installed torch 2.13)")
    assert "silent" in out
    assert main(["plan", ckpt, "-t", str(target), "--torch", "2.6", "--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert got["torch_version"] == "2.6"
    assert [p["severity"] for p in got["problems"] if p["kind"] == "shape_mismatch"] == ["error"]
    assert main(["plan", ckpt, "-t", str(target), "--torch", "2.5,2.13", "--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert got["torch_versions"] == ["2.5", "2.13"]
    assert {c["rank"] for c in got["changes"]} == {0, 1}
    assert all(c["changed"] == ["w"] for c in got["changes"])
    assert main(["plan", ckpt, "-t", str(target), "--torch", "2.3"]) == 2
    assert "2.3" in capsys.readouterr().err


def test_reshard_explorer_torch_dropdown():
    """The explorer's torch dropdown re-plans with that version: its reads are plan_load's for
    the version, and the nested (2.10) and sweep (2.13) orders differ on this reshard."""
    from workbench.widgets import ReshardExplorer

    ex = ReshardExplorer()
    assert ex.torch_version.value == "2.13" and "2.4" in ex.torch_version.options
    ex.shape.value, ex.save_mesh.value, ex.save_placements.value = "8, 12", "2, 2", "S(0), S(1)"
    ex.load_mesh.value, ex.load_placements.value = "4", "R"
    orders = {}
    for v in ("2.10", "2.13"):
        ex.torch_version.value = v
        r = ex.result
        assert ex.message.value == "" and r.load.torch_version == r.save.torch_version == v
        orders[v] = [it.storage_index.index for it in r.load.plans[0].items]
        again = plan_load(r.save.metadata, r.load.layouts, torch_version=v)
        assert orders[v] == [it.storage_index.index for it in again.plans[0].items]
        assert len(r.reads) == 4
    assert orders == {"2.10": [0, 1, 2, 3], "2.13": [0, 2, 1, 3]}


def test_readme_versions_example_runs():
    import re

    readme = (DATA.parent.parent / "README.md").read_text()
    (block,) = [
        b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "compare_versions" in b
    ]
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    files = tuple(f"__{w}_0.distcp" for w in (0, 2, 1, 3))
    assert ns["load"].torch_version == "2.10"
    assert ns["changes"] == [(r, ("w",), files) for r in range(4)]


def test_pytorch_own_cases_in_the_recordings():
    """PyTorch's own test cases lead the recorded inputs (test_planner's validation cases,
    test_dedup_tensors' case): each version's answers, and the workbench's, on them."""
    assert cases()["validate"][1]["md"]["param"]["chunks"] == [[[0], [2]], [[1], [2]]]
    for v in SUPPORTED_TORCH_VERSIONS:
        four, overlap = recorded(v)["validate"][:2]
        assert four["logged"] == []
        (msg,) = overlap["logged"]
        first = msg.split("ChunkStorageMetadata")[1]
        # pairwise (<= 2.9) prints [0:2] first, the sweep (2.10+) the later-starting [1:3]
        assert ("offsets=torch.Size([0])" in first) is (version_key(v) <= (2, 9)), v
        assert recorded(v)["save"][0]["dedup"] == [
            [["tensor_0", [0], None], ["r0", [0], None]],
            [["r1", [0], None]],
        ]


@pytest.mark.parametrize(
    "v", [p.parent.name.removeprefix("torch-") for p in sorted(DATA.glob("torch-*/fake_pg.json"))]
)
def test_whole_plans_equal_that_torchs_own_planners_on_real_dtensors(v):
    """Recorded by that torch in its own runtime (its DefaultSavePlanner / DefaultLoadPlanner on
    meta DTensors under its fake process group: its DTensor maths included)."""
    rec = json.loads((DATA / f"torch-{v}" / "fake_pg.json").read_text())
    assert rec["torch"].startswith(v + ".")
    for case, got in zip(cases()["whole"], rec["whole"], strict=True):
        save = plan_save(layouts(case, "save"), torch_version=v)
        assert [plan_rows(p) for p in save.plans] == got["plans"]
        assert {
            k: [[list(c.offsets), list(c.sizes)] for c in e.chunks]
            for k, e in save.metadata.state_dict_metadata.items()
            if hasattr(e, "chunks")
        } == got["chunks"]
        assert save.errors == got["errors"]
        if "strides" in got:  # recorded since 2.15 appeared: each fqn's TensorProperties.strides
            assert {
                k: None if e.properties.strides is None else list(e.properties.strides)
                for k, e in save.metadata.state_dict_metadata.items()
                if hasattr(e, "chunks")
            } == got["strides"]
        load = plan_load(save.metadata, layouts(case, "load"), torch_version=v)
        assert [rows(p.items) for p in load.plans] == got["loads"]


def test_fake_pg_recordings_cover_old_versions():
    have = {p.parent.name for p in DATA.glob("torch-*/fake_pg.json")}
    assert {"torch-2.7", "torch-2.9", "torch-2.13"} <= have


# ----------------------------------------------------------------------------- DTensor maths
def as_placements(spec) -> list:
    from workbench.sharding import Partial, Replicate, Shard, StridedShard

    make = {
        "S": lambda p: Shard(p[1]),
        "SS": lambda p: StridedShard(p[1], p[2]),
        "R": lambda p: Replicate(),
        "P": lambda p: Partial(),
    }
    return [make[p[0]](p) for p in spec]


def maths_rows(case, v) -> list | str:
    """``local_shape_and_offset(..., torch_version=v)`` for every coordinate of the case, in
    the recording's form (torch's exception type and message where that torch raises)."""
    import itertools

    from workbench.sharding import local_shape_and_offset

    out = []
    for coord in itertools.product(*(range(n) for n in case["mesh"])):
        try:
            shape, off = local_shape_and_offset(
                case["shape"],
                case["mesh"],
                coord,
                as_placements(case["placements"]),
                torch_version=v,
            )
            out.append([list(shape), list(off)])
        except WorkbenchError as e:
            if "torch_error" not in e.facts:  # refused before torch's maths: no _StridedShard
                return "no _StridedShard" if "does not have" in e.what else str(e)
            out.append({"raise": list(e.torch_error)})
    return out


@VERSIONS
def test_dtensor_maths_equal_that_versions_own_code(v):
    """Each version's compute_local_shape_and_global_offset (its wheel's _utils.py and
    placement_types.py, run by the recording tool) on random shapes, 1-3-d meshes and placements
    (uneven, empty, nested on one dim, _StridedShard): every coordinate, item by item."""
    for case, rec in zip(cases()["dtensor"], recorded_maths(v), strict=True):
        assert maths_rows(case, v) == rec, (v, case)


def test_newest_maths_fail_older_versions_recordings():
    """The check is not vacuous: 2.13's maths disagree with 2.4 - 2.9's recordings (empty-shard
    offsets, nested shards, _StridedShard), and agree with 2.10+'s."""
    newest = [maths_rows(case, "2.13") for case in cases()["dtensor"]]
    for v in SUPPORTED_TORCH_VERSIONS:
        wrong = sum(
            ours != rec for ours, rec in zip(newest, recorded_maths(v)) if rec != "no _StridedShard"
        )
        assert (wrong > 0) is (version_key(v) <= (2, 9)), (v, wrong)
    # the (6,) case on (2, 4) [S(0), S(0)]: ranks 3 and 7 are empty at offset 3 through 2.7
    first = cases()["dtensor"][0]
    assert (first["shape"], first["mesh"]) == ([6], [2, 4])
    assert [r[1] for r in recorded_maths("2.6")[0]] == [[0], [1], [2], [3], [3], [4], [5], [3]]
    assert [r[1] for r in recorded_maths("2.8")[0]] == [[0], [1], [2], [6], [3], [4], [5], [6]]


EMPTY_AT_3 = {"w": ["dtensor", [6], [2, 4], "S(0), S(0)"]}


def test_empty_shards_colliding_in_2_6_lose_a_chunk():
    """(6,) on a (2, 4) mesh [S(0), S(0)]: through 2.7 the empty shards of ranks 3 and 7 sit at
    offset 3, rank 4's [3:4] too; dedup keys on (fqn, offset) and keeps one (recorded: that
    torch's own dedup and validation). 2.8+ put empty shards at offset 6: nothing is lost."""
    from workbench.diagnosis import find_save_problems

    (i,) = [i for i, c in enumerate(cases()["whole"]) if c["save"] == EMPTY_AT_3]
    lay = dtensor_layout((6,), (2, 4), "S(0), S(0)")
    for v in SUPPORTED_TORCH_VERSIONS:
        rec = recorded(v)["whole"][i]
        save = plan_save({"w": lay}, torch_version=v)
        kept = [w[1] for p in rec["plans"] for w in p]
        assert [it.index.offset for p in save.plans for it in p.items] == [tuple(o) for o in kept]
        problems = find_save_problems(save)
        lost = [p for p in problems if p.kind == "dedup_loss"]
        if version_key(v) <= (2, 7):
            # torch's own dedup dropped rank 4's [3:4] and validation then refused the save
            assert rec["md"]["w"]["chunks"].count([[3], [1]]) == 0
            assert rec["validate"]["returned"] in (False, []) and rec["validate"]["logged"]
            (p,) = lost
            assert p.ranks == (4,) and p.severity == "error" and str(p.region) == "[3:4]"
            assert f"torch {v}" in p.message and "ranks 3, 7" in p.message
        else:
            assert [[3], [1]] in rec["md"]["w"]["chunks"] and not rec["validate"]["logged"]
            assert lost == [] and save.errors == []


def test_compare_versions_shows_the_lost_chunk_as_a_change():
    """compare_versions from the saved state dict's layouts: the save is planned by each version
    too, so the dedup loss of 2.6 vanishes in 2.8 (rank 4 named, the problem quoted)."""
    from workbench.version_compare import compare_versions

    src = {"w": dtensor_layout((6,), (2, 4), "S(0), S(0)")}
    target = {"w": dtensor_layout((6,), (8,), "R")}
    cmp = compare_versions(src, target, ["2.6", "2.8"])
    changed = {c.rank: c for c in cmp.changed()}
    assert sorted(changed) == list(range(8))
    # rank 4's chunk is the one dedup drops in 2.6; 2.8 keeps it
    assert [r for r, c in changed.items() if "error dedup_loss w" in c.vanishing] == [4]
    # every rank reads the whole tensor: in 2.6 the checkpoint misses [3:4] (the save fails,
    # the load would read stale rows), in 2.8 not; nothing appears
    for c in changed.values():
        assert {"error uncovered w", "silent uncovered w"} <= set(c.vanishing)
        assert c.appearing == () and c.changed == ("w",)


def test_strided_shard_refused_where_torch_has_none():
    from workbench.sharding import local_shape_and_offset

    with pytest.raises(WorkbenchError, match="torch 2.4 does not have"):
        dtensor_layout((13,), (3, 2), "SS(0,2), S(0)", torch_version="2.4")
    # 2.5 - 2.7 refuse a Shard after the strided part ended, as their own code raises
    with pytest.raises(WorkbenchError, match=r"torch 2.6's compute_local_shape_and_global_offset"):
        local_shape_and_offset(
            (8,), (2, 2, 2), (0, 0, 0), "SS(0,2), S(0), S(0)", torch_version="2.6"
        )


# ----------------------------------------------------------------------------- newer torch
def test_a_newer_installed_torch_is_assumed_the_newest_with_one_warning():
    """In a fresh process whose installed torch reads as 2.16: the newest recorded semantics,
    one NewerTorchWarning naming the version assumed (once per process), the same line for
    headers, and torch_version="2.16" itself refused."""
    import subprocess
    import sys

    program = """
import json, warnings
import workbench.versions as versions
versions.installed_torch_version = lambda: "2.16"
from workbench.errors import WorkbenchError
from workbench.planning import plan_save
from workbench.sharding import tensor_layout
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = [plan_save({"t": tensor_layout((2,), 1)}).torch_version for _ in range(3)]
try:
    plan_save({"t": tensor_layout((2,), 1)}, torch_version="2.16")
    refused = None
except WorkbenchError as e:
    refused = str(e)
print(json.dumps({"got": got, "warnings": [(w.category.__name__, str(w.message)) for w in caught],
                  "note": versions.assumed_version_note(), "refused": refused}))
"""
    root = str(DATA.parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={**__import__("os").environ, "PYTHONPATH": root},
        check=True,
    )
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["got"] == ["2.15"] * 3
    assert rec["warnings"] == [["NewerTorchWarning", rec["note"]]]
    assert rec["note"].startswith("torch 2.16 is installed, newer than")
    assert "assumes torch 2.15's DCP semantics" in rec["note"]
    assert "'2.16' is newer than every recorded version" in rec["refused"]
    from workbench.versions import assumed_version_note

    assert assumed_version_note() is None  # this process: torch 2.13


def test_checkpointable_tensor_is_refused_by_name():
    """torch 2.14's CheckpointableTensor (a plain tensor naming its global chunks) is saved as
    those chunks, not as a whole tensor: the bridge refuses to take it for a plain tensor."""
    import torch

    from workbench.torch_bridge.convert import layout_from_torch

    t = torch.zeros(4, 3)
    t.global_shape, t.global_offsets = (8, 3), ((4, 0),)
    t.local_offsets, t.local_sizes = ((0, 0),), ((4, 3),)
    with pytest.raises(
        WorkbenchError, match=r"a CheckpointableTensor .* global_shape \(8, 3\)"
    ) as e:
        layout_from_torch(t)
    assert e.value.kind == "CheckpointableTensor" and "sharded_layout" in e.value.fix
    assert layout_from_torch(torch.zeros(4, 3)).kind == "tensor"
