"""The HTML report: one self-contained file (no external src / href, no script, pictures as PNG
data URIs) that shows the checkpoint and, given a target, the reshard's problems. Checkpoints are
written by real multi-process gloo ``dcp.save`` runs (``torch_bridge.runs``)."""

from __future__ import annotations

import base64
import dataclasses
import html
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from workbench import load_metadata
from workbench.checkpoint import describe_checkpoint
from workbench.cli import main
from workbench.formatting import format_bytes
from workbench.planning import plan_load
from workbench.report import build_report, write_report
from workbench.sharding import dtensor_layout


@pytest.fixture(scope="module")
def scenarios(scenario_runs):
    return scenario_runs[0]  # conftest's session-wide real checkpoints; read, never written


class _Refs(HTMLParser):
    """Every tag and every URL-carrying attribute of a page."""

    def __init__(self):
        super().__init__()
        self.tags, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "data", "poster", "background"):
                self.urls.append((tag, name, value))


def _assert_self_contained(text: str) -> list[bytes]:
    refs = _Refs()
    refs.feed(text)
    assert not {"script", "link", "iframe", "object", "embed"} & set(refs.tags)
    assert "url(" not in text and "@import" not in text  # no CSS fetches either
    pngs = []
    for tag, name, value in refs.urls:
        assert (tag, name) == ("img", "src"), (tag, name, value[:60])
        assert value.startswith("data:image/png;base64,")
        pngs.append(base64.b64decode(value.split(",", 1)[1], validate=True))
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 1000 for p in pngs)
    return pngs


@pytest.mark.real
def test_report_with_target_is_self_contained_and_lists_every_problem(scenarios, tmp_path):
    sc = scenarios["strided"]
    md = load_metadata(sc.path)
    problems = plan_load(md, sc.load_layouts).problems
    assert {p.kind for p in problems} == {"strided_misdescribed"} and len(problems) == 2
    out = write_report(
        tmp_path / "r.html", md, sc.load_layouts, checkpoint=sc.path, target="strided.json"
    )
    text = out.read_text(encoding="utf-8")
    pngs = _assert_self_contained(text)
    # one reshard picture of w, the bytes-per-rank bars and the traffic map
    assert len(pngs) == 3
    assert "BLOCKED" in text and "strided_misdescribed" in text
    shown = html.unescape(text)
    for p in problems:
        assert p.message in shown and p.fix in shown
    assert text.count("<h2>") == 5  # problems, checkpoint, pictures, I/O, read items


@pytest.mark.real
def test_report_on_a_hole_names_the_missing_region(scenarios):
    sc = scenarios["hole"]
    md = load_metadata(sc.path)
    text = build_report(md, sc.load_layouts, checkpoint=sc.path)
    _assert_self_contained(text)
    (hole,) = [p for p in plan_load(md, sc.load_layouts).problems if p.kind == "uncovered"]
    assert str(hole.region) == "[4:8, 0:6]"  # the chunk runs._drop_chunk removed
    assert "[4:8, 0:6]" in text and "BLOCKED" in text


@pytest.mark.real
def test_report_of_a_clean_reshard_says_ok(scenarios):
    sc = scenarios["fsdp"]
    text = build_report(load_metadata(sc.path), sc.load_layouts)
    _assert_self_contained(text)
    assert 'class="verdict ok"' in text and "BLOCKED" not in text


@pytest.mark.real
def test_report_without_target_shows_the_checkpoint_only(scenarios):
    sc = scenarios["fsdp"]
    md = load_metadata(sc.path)
    text = build_report(md, checkpoint=sc.path)
    pngs = _assert_self_contained(text)
    assert "No target given" in text and "<h2>Problems</h2>" not in text
    assert len(pngs) == 2  # w and b drawn from the checkpoint (step is bytes)
    for fqn in ("w", "b", "step"):
        assert f"<td>{fqn}</td>" in text or f">{fqn}</td>" in text
    for f in ("__0_0.distcp", "__1_0.distcp"):
        assert f in text
    assert "Problems in the saved chunks" not in text  # a clean checkpoint has none
    hole = build_report(load_metadata(scenarios["hole"].path), checkpoint="hole")
    assert "Problems in the saved chunks" in hole and "no saved chunk covers [4:8, 0:6]" in hole


@pytest.mark.real
def test_describe_checkpoint_matches_the_metadata(scenarios):
    sc = scenarios["fsdp"]
    md = load_metadata(sc.path)
    info = describe_checkpoint(md)
    entries = {e["fqn"]: e for e in info["entries"]}
    assert entries["w"]["shape"] == [8, 6] and entries["w"]["nbytes"] == 8 * 6 * 4
    # FSDP on 2 ranks: rank r wrote rows [4r:4r+4] into its own file
    assert [(c["region"], c["writer"], c["file"]) for c in entries["w"]["chunks"]] == [
        ("[0:4, 0:6]", 0, "__0_0.distcp"),
        ("[4:8, 0:6]", 1, "__1_0.distcp"),
    ]
    on_disk = {p.name: p.stat().st_size for p in Path(sc.path).glob("*.distcp")}
    assert {f["file"]: f["bytes"] for f in info["files"]} == on_disk


def test_format_bytes():
    # binary units, at most three significant digits, never an exponent
    cases = (0, 1023, 1024, 1536, 5632, 3 * 2**30, 2**20 - 1, 1128840839168, 17.6e9, None)
    assert [format_bytes(n) for n in cases] == [
        "0 B",
        "1023 B",
        "1 KiB",
        "1.5 KiB",
        "5.5 KiB",
        "3 GiB",
        "1024 KiB",
        "1.03 TiB",
        "16.4 GiB",
        "unknown",
    ]


@pytest.mark.real
def test_cli_report_writes_one_file(scenarios, tmp_path, capsys):
    sc = scenarios["strided"]
    out = tmp_path / "report.html"
    assert main(["report", sc.path, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert list(tmp_path.iterdir()) == [out]
    _assert_self_contained(out.read_text(encoding="utf-8"))


@pytest.mark.real
def test_cli_report_to_a_missing_directory_is_exit_2(scenarios, tmp_path, capsys):
    rc = main(["report", scenarios["fsdp"].path, "-o", str(tmp_path / "no" / "r.html")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("workbench report: error: ") and "Traceback" not in err


def test_hostile_key_names_are_escaped():
    """Keys come from a stranger's .metadata: a key that is markup must stay text."""
    from workbench.geometry import Chunk
    from workbench.records import Metadata, TensorProperties, TensorStorageMetadata

    evil = '<img src=x onerror="alert(1)">'
    md = Metadata(
        {evil: TensorStorageMetadata(TensorProperties("float32"), (4,), [Chunk((0,), (4,))])},
        version="1.0.0",
    )
    text = build_report(md, checkpoint="<script>alert(2)</script>")
    _assert_self_contained(text)
    assert evil not in text and "<script>" not in text
    assert "&lt;img src=x onerror=" in text and "&lt;script&gt;alert(2)" in text


@pytest.mark.real
def test_cli_report_shows_a_missing_data_file(scenarios, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(scenarios["fsdp"].path, ckpt)
    (ckpt / "__1_0.distcp").unlink()
    out = tmp_path / "r.html"
    assert main(["report", str(ckpt), "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    _assert_self_contained(text)
    assert "Damaged checkpoint" in text and "__1_0.distcp: data file is missing" in text


def test_a_report_with_a_target_keeps_every_untrusted_string_text():
    """Keys, paths, damage messages, format facts and table titles are a stranger's text: in a
    report with a target (problems, pictures, I/O and read items), none becomes an element."""
    from html.parser import HTMLParser

    from workbench.planning import plan_save
    from workbench.report import report_content

    evil = "<img src=x onerror=alert(1)>"
    script = "<script>alert(2)</script>"
    saved = plan_save({evil: dtensor_layout((8, 4), (2,), "S(0)")}).metadata
    target = {evil: dtensor_layout((8, 4), (4,), "S(1)"), script: dtensor_layout((4,), (4,), "R")}
    kw = dict(
        checkpoint=script,
        target=evil,
        damage=[f"{evil}: data file is missing"],
        facts={script: evil},
        format_tables={script: pd.DataFrame({evil: [script]})},
        file_problems=[],
    )
    content = report_content(saved, target, **kw)
    assert [p.kind for p in content.problems] == ["missing_key"]
    assert content.shown_problems == content.problems and content.pictured == (evil,)
    text = build_report(saved, target, **kw)

    class Elements(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.data = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

        def handle_data(self, data):
            self.data.append(data)

    page = Elements()
    page.feed(text)
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and tags.count("img") == len(content.pictured) + 2
    for _tag, attrs in page.tags:  # the pictures and the I/O charts: data URIs, no handlers
        assert not any(a.startswith("on") for a in attrs)
        assert attrs.get("src", "data:").startswith("data:")
    joined = "".join(page.data)
    for s in (evil, script, f"{evil}: data file is missing"):
        assert s in joined


def test_a_report_of_thousands_of_ranks_is_bounded_and_its_sums_are_exact(tmp_path):
    """A 2048-rank save read as torch wrote it (the benchmark's `torch_metadata_bytes`, through the
    columnar reader a real directory takes): the page stays the size of a small one, its tables
    summarise (entries, files and ranks), and every sum equals the chunk-by-chunk answer."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import references

    from workbench.report import (
        MAX_ENTRY_ROWS,
        MAX_READ_ROWS,
        SCALE_PICTURES,
        TOP_ROWS,
        render_report,
        report_content,
    )
    from workbench.tables import (
        checkpoint_chunks_table,
        distribution_table,
        equal_rows_table,
        io_table,
    )

    ws, mesh = 2048, (32, 64)
    saved = {f"layers.{i}.w": dtensor_layout((4096 + 640 * i, 96), (ws,), "S(0)") for i in range(3)}
    saved["norm"] = dtensor_layout((100,), (ws,), "S(0)")  # 1948 empty shards
    saved |= {f"bias.{i}": dtensor_layout((96,), (ws,), "R") for i in range(4)}  # one chunk each
    saved = {k: dataclasses.replace(v, dtype="bfloat16") for k, v in saved.items()}
    target = {
        k: dtensor_layout(v.shape, mesh, {2: "S(0), S(1)", 1: "S(0), R"}[len(v.shape)], "bfloat16")
        if k[0] != "b"
        else dtensor_layout(v.shape, mesh, "R, R", "bfloat16")
        for k, v in saved.items()
    }
    (tmp_path / ".metadata").write_bytes(references.torch_metadata_bytes(saved))
    md = load_metadata(tmp_path)
    content = report_content(md, target, checkpoint="big")
    text = render_report(content)

    # the entries and files tables, summed with numpy, against the per-chunk table
    chunks = checkpoint_chunks_table(md)
    per_entry = chunks.groupby("fqn", sort=False).agg(
        chunks=("fqn", "size"), files=("file", "nunique"), writers=("writer", "nunique")
    )
    entries = content.entries.set_index("fqn")
    assert list(entries.index) == list(md.state_dict_metadata)
    pd.testing.assert_frame_equal(
        entries[["chunks", "files", "writers"]], per_entry, check_dtype=False
    )
    assert entries["bytes"].tolist() == [e.nbytes for e in md.state_dict_metadata.values()]
    per_file = (
        chunks.groupby("file")
        .agg(writer=("writer", "first"), items=("file", "size"), bytes=("length", "sum"))
        .reset_index()
        .sort_values(["writer", "file"], ignore_index=True)
    )
    pd.testing.assert_frame_equal(content.files, per_file, check_dtype=False)
    assert len(content.files) == len(chunks["file"].unique()) > 2000

    # the per-rank summaries against the per-rank table
    io = io_table(content.result)
    dist = distribution_table(io, label="ranks").set_index("over all ranks")
    for c in ("files", "reads", "bytes_needed", "bytes_read"):
        v = sorted(io[c].tolist())
        assert dist[c].tolist() == [v[0], v[(len(v) - 1) // 2], v[-1], sum(v)], c
    groups = equal_rows_table(io, members="rank", by="bytes_read")
    numbers = ["files", "reads", "bytes_needed", "bytes_read", "amplification"]
    assert int(groups["count"].sum()) == ws
    assert set(groups[numbers].itertuples(index=False)) == set(
        io[numbers].drop_duplicates().itertuples(index=False)
    )
    assert groups["bytes_read"].is_monotonic_decreasing

    # the page: bounded, says what it left out, pictures capped
    pngs = _assert_self_contained(text)
    assert len(pngs) == len(content.pictured) + 2 and len(content.pictured) <= SCALE_PICTURES
    rows = text.count("<tr>")
    assert rows < MAX_ENTRY_ROWS + 2 * MAX_READ_ROWS + 2 * TOP_ROWS + 40, rows
    assert len(text) < 1_000_000, len(text)
    shown = html.unescape(text)
    assert f"first {MAX_READ_ROWS} of {len(chunks):,} rows" in shown
    assert f"{ws:,} ranks: the distribution of each number" in shown
    assert f"{len(content.files):,} files: the distribution of each number" in shown


def test_a_report_of_many_entries_lists_the_first_and_counts_the_rest():
    """Past `MAX_ENTRY_ROWS` entries the checkpoint table stops and says how many more there are
    and where to see them; a planned save's storage (no reader columns) sums the same way."""
    from workbench.planning import plan_save
    from workbench.report import MAX_ENTRY_ROWS, report_content
    from workbench.tables import checkpoint_chunks_table

    n = MAX_ENTRY_ROWS + 7
    md = plan_save({f"b{i}": dtensor_layout((6,), (3,), "S(0)") for i in range(n)}).metadata
    content = report_content(md)
    chunks = checkpoint_chunks_table(md)
    assert content.entries["chunks"].tolist() == [3] * n
    assert content.entries["files"].tolist() == content.entries["writers"].tolist() == [3] * n
    assert content.files["items"].tolist() == chunks.groupby("file").size().tolist() == [n] * 3
    text = html.unescape(build_report(md))
    assert f"first {MAX_ENTRY_ROWS} of {n} rows; 7 more: <code>workbench inspect" in text
    assert content.files["bytes"].isna().all()  # a planned save knows no byte ranges
    assert f">b{MAX_ENTRY_ROWS - 1}</td>" in text and f">b{MAX_ENTRY_ROWS}</td>" not in text
