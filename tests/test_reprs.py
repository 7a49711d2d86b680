"""Results that display themselves (``_repr_html_``): the HTML is parsed with the standard
library's parser and the assertions are on its text and elements; keys that are HTML and script
(a stranger's checkpoint) must come out as text, never as elements."""

from __future__ import annotations

import warnings
from html.parser import HTMLParser

import pytest
from IPython.lib.pretty import pretty

from workbench.diagnosis import Problems, find_checkpoint_problems, find_problems
from workbench.planning import plan_load, plan_save
from workbench.reprs import MAX_PROBLEM_ROWS, html_table, svg_bars
from workbench.sharding import dtensor_layout
from workbench.version_compare import compare_versions

HOSTILE = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert('x')</script>"
ALLOWED = {
    "div",
    "b",
    "code",
    "table",
    "tr",
    "th",
    "td",
    "svg",
    "title",
    "rect",
    "line",
    "span",
}


class Parsed(HTMLParser):
    """The elements (tag, attributes) and the text of an HTML fragment."""

    def __init__(self, markup: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.chunks: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.chunks).split())

    def names(self) -> list[str]:
        return [t for t, _ in self.tags]

    def cells(self) -> list[str]:
        return self.chunks


def assert_inert(parsed: Parsed):
    """Only the elements a summary is made of, and no attribute that runs code."""
    assert set(parsed.names()) <= ALLOWED, set(parsed.names()) - ALLOWED
    for _tag, attrs in parsed.tags:
        assert not any(a.startswith("on") or a in ("src", "href") for a in attrs), attrs


@pytest.fixture(scope="module")
def o_proj():
    fqn = "model.layers.0.self_attn.o_proj.weight"
    save = plan_save({fqn: dtensor_layout((8192, 8192), (64,), "S(0)", "bfloat16")})
    load = plan_load(
        save.metadata, {fqn: dtensor_layout((8192, 8192), (8, 8), "S(0), S(1)", "bfloat16")}
    )
    return save, load


def test_load_result_shows_verdict_counts_and_bytes_per_rank(o_proj):
    save, load = o_proj
    page = Parsed(load._repr_html_())
    assert_inert(page)
    assert page.text.startswith("LoadPlanResult: 64 ranks, torch 2.13 semantics OK")
    # each rank loads its 8 saved row blocks (2 MiB each) whole and keeps 1/8 of each
    assert (
        "1 entry · 512 read items · 64 of 64 files read · 1 GiB loaded for 128 MiB needed (8.0x)"
        in page.text
    )
    # one bar per rank per quantity, the title naming both quantities in human units
    assert page.names().count("rect") == 128
    assert "load: 1 GiB loaded, 128 MiB needed, 8.0x what is needed" in page.text
    assert repr(load) == (
        "LoadPlanResult(entries=1, world_size=64, failures=0, allow_partial_load=False, "
        "torch_version='2.13')"
    )
    page = Parsed(save._repr_html_())
    assert_inert(page)
    assert "128 MiB written by 64 of 64 ranks" in page.text
    assert repr(save).startswith(
        "SavePlanResult(entries=1, world_size=64, bytes_written=134217728,"
    )


def test_svg_groups_thousands_of_ranks_by_pixel_column():
    save = plan_save({"w": dtensor_layout((4096, 8), (4096,), "S(0)")})
    from workbench.picture_data import bytes_per_rank_data

    svg = svg_bars(bytes_per_rank_data(save), width=400)
    assert Parsed(svg).names().count("rect") == 200  # 4096 ranks in 200 columns of 2 px


def _hostile_plans():
    # saved whole under hostile keys; the target wants a shape that does not exist and a key
    # the checkpoint lacks
    save = plan_save(
        {
            HOSTILE: dtensor_layout((8, 4), (2,), "S(0)"),
            SCRIPT: dtensor_layout((4,), (2,), "R"),
        }
    )
    target = {
        HOSTILE: dtensor_layout((8, 6), (2,), "S(0)"),
        f"{SCRIPT}.extra": dtensor_layout((4,), (2,), "R"),
    }
    return save, target


def test_problem_lists_are_lists_that_show_a_table_and_escape_keys():
    save, target = _hostile_plans()
    load = plan_load(save.metadata, target)
    problems = find_problems(load)
    assert isinstance(problems, Problems) and isinstance(problems, list)
    assert problems == list(problems) and type(problems[:1]) is list
    assert load.problems == problems and isinstance(load.problems, Problems)
    assert [p.kind for p in problems] == ["shape_mismatch", "missing_key", "unexpected_key"]
    assert repr(problems) == repr(list(problems))
    assert pretty(problems).splitlines()[0] == "3 problems (2 error, 1 warning)"
    page = Parsed(problems._repr_html_())
    assert_inert(page)
    assert page.names().count("img") == 0 and page.names().count("script") == 0
    assert page.text.startswith("3 problems (2 error, 1 warning): 2 make the load raise")
    # the keys come out as the text they are, in the fqn column and in the messages
    assert HOSTILE in page.cells() and f"{SCRIPT}.extra" in page.cells()
    assert sum(HOSTILE in c for c in page.cells()) >= 2
    # the load result shows the same, with the verdict
    page = Parsed(load._repr_html_())
    assert_inert(page)
    assert page.text.startswith("LoadPlanResult: 2 ranks, torch 2.13 semantics BLOCKED")
    assert ": 2 problem(s) make this load raise or load wrong values" in page.text
    assert HOSTILE in page.cells()
    assert (
        pretty(Problems()) == "Problems([])"
        and Parsed(Problems()._repr_html_()).text == "No problems"
    )
    assert find_checkpoint_problems(save.metadata) == [] and isinstance(
        find_checkpoint_problems(save.metadata), Problems
    )


def test_long_problem_lists_show_the_first_rows_and_say_so():
    layouts = {f"k{i}": dtensor_layout((4,), (2,), "S(0)") for i in range(30)}
    saved = plan_save({"w": dtensor_layout((4,), (2,), "S(0)")}).metadata
    load = plan_load(saved, layouts, allow_partial_load=False)
    page = Parsed(load.problems._repr_html_())
    assert page.names().count("tr") == MAX_PROBLEM_ROWS + 1
    assert len(load.problems) == 31  # 30 missing keys, "w" unexpected
    assert f"first {MAX_PROBLEM_ROWS} of 31 problems (the list holds them all)" in page.text


def test_save_result_with_torch_failures_escapes_them():
    save = plan_save({HOSTILE: dtensor_layout((4, 4), (2,), "P")})
    page = Parsed(save._repr_html_())
    assert_inert(page)
    assert HOSTILE in page.cells() and "r0-1" in page.cells()


def test_version_comparison_shows_what_changes():
    save, target = _hostile_plans()
    comp = compare_versions(save.metadata, target, ["2.5", "2.13"])
    page = Parsed(comp._repr_html_())
    assert_inert(page)
    assert page.text.startswith("VersionComparison: torch 2.5 vs 2.13")
    # 2.5 plans the size mismatch as a silent read; 2.13 raises: problems change on both ranks
    assert "2.5 -> 2.13" in page.cells()
    assert any(HOSTILE in c for c in page.cells())
    assert repr(comp).startswith("VersionComparison(versions=('2.5', '2.13'), changed=2 of 2")


def test_captured_target_lists_its_entries():
    from workbench.torch_bridge.capture import CapturedTarget

    target = CapturedTarget(
        {HOSTILE: dtensor_layout((8, 4), (2,), "S(0)")},
        build=SCRIPT,
        world_size=2,
        ranks_run=(0,),
        represented_by=(0, 0),
        seconds=1.25,
    )
    page = Parsed(target._repr_html_())
    assert_inert(page)
    assert page.text.startswith("CapturedTarget: 1 entry build " + SCRIPT)
    assert HOSTILE in page.cells()


def test_checkpoint_shows_entries_files_and_damage(tmp_path):
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp

    from workbench.checkpoint import open_checkpoint

    with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({HOSTILE: torch.zeros(8, 4), SCRIPT: torch.ones(3)}, checkpoint_id=str(tmp_path))
    (tmp_path / "__0_0.distcp").unlink()  # damage: the one data file is gone
    ck = open_checkpoint(tmp_path)
    page = Parsed(ck._repr_html_())
    assert_inert(page)
    assert page.text.startswith(f"Checkpoint {tmp_path} format dcp · 2 entries · 2 saved chunks")
    assert HOSTILE in page.cells() and SCRIPT in page.cells()
    assert "missing files: __0_0.distcp" in page.text
    assert "missing_file" in page.cells()
    assert repr(ck) == (
        f"Checkpoint({str(tmp_path)!r}, format='dcp', entries=2, chunks=2, files=1, missing_files=1)"
    )


def test_html_table_escapes_headers_and_cells():
    page = Parsed(html_table([SCRIPT], [[HOSTILE]]))
    assert page.names() == ["table", "tr", "th", "tr", "td"]
    assert page.cells() == [SCRIPT, HOSTILE]
