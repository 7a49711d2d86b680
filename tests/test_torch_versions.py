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
from workbench.planner_helpers import LocalTensor
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
from workbench.sharding import bytes_layout, dtensor_layout, tensor_layout
from workbench.versions import SUPPORTED_TORCH_VERSIONS, semantics

DATA = Path(__file__).parent / "data"
DTYPES = {1: "uint8", 2: "float16", 4: "float32", 8: "float64"}


@cache
def cases() -> dict:
    return json.loads((DATA / "torch-cases.json").read_text())


@cache
def recorded(v: str) -> dict:
    return json.loads((DATA / f"torch-{v}" / "planner.json").read_text())["cases"]


def test_every_supported_version_is_recorded():
    have = sorted(p.name for p in DATA.glob("torch-2.*") if (p / "planner.json").exists())
    assert have == sorted(f"torch-{v}" for v in SUPPORTED_TORCH_VERSIONS)
    for v in SUPPORTED_TORCH_VERSIONS:
        rec = recorded(v)
        assert {k: len(x) for k, x in rec.items()} == {k: len(x) for k, x in cases().items()}


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
    return LocalTensor(tensor_layout(tuple(spec), 1), 0)


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


def layouts(case, side) -> dict:
    ws = case["world_size"]
    out = {fqn: layout(spec, ws) for fqn, spec in case[side].items()}
    # the chunks torch's functions were given are the ones planned here
    for fqn, lay in out.items():
        stored = case[f"{side}_chunks"][fqn][2]
        assert [[[list(c.offsets), list(c.sizes)] for c in cs] for cs in lay.rank_chunks] == stored
    return out


@VERSIONS
def test_whole_plans(v):
    for case, rec in zip(cases()["whole"], recorded(v)["whole"]):
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
