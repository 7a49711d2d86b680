"""The tour notebook in a real browser: JupyterLab + headless Debian Chromium driven by Playwright.

JupyterLab is started on 127.0.0.1 with a random token on a temporary copy of ``notebooks/``
(Lab autosaves; the repository's notebooks must stay output-free), the tour is run with Run All,
and the `ReshardExplorer` is driven through the page: a change of the load-rank dropdown and of
the classic-reshard dropdown travels browser -> kernel -> Output widget -> browser, and the
picture and the read-item table must change. A screenshot is kept under ``artifacts/browser/``.

Needs ``/usr/bin/chromium`` (``make chromium``, i.e. ``apt-get install -y chromium``); never
``playwright install``. With Chromium missing the tests FAIL (no skip): the widgets must be seen
working in a browser. Servers are stopped by PID, their kernels too.
Run: ``.venv/bin/python -m pytest -s -m e2e tests/test_browser.py``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil  # ipykernel depends on it
import pytest

from workbench.formatting import format_bytes

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOK = "00_tour.ipynb"
CHROMIUM = os.environ.get("WB_CHROMIUM", "/usr/bin/chromium")
SHOT_DIR = ROOT / "artifacts" / "browser"  # gitignored
# Playwright already passes --headless --no-sandbox --disable-background-networking and its own
# --disable-features list (adding another --disable-features would replace it). We add: no GPU
# process, and every hostname but loopback resolving to NOT_FOUND inside Chromium, so its
# background calls to Google hosts never leave the machine (checked with a netlog, see
# /work/shared/jupyter-testing.md section 4).
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
]

# The ReshardExplorer's parts carry CSS classes (widgets.py) so these selectors do not depend on
# ipywidgets' DOM details beyond the <select> / <img> / <table> inside them.
EXPLORER = ".wb-reshard"
CLASSIC = f"{EXPLORER} .wb-classic select"
RANK = f"{EXPLORER} .wb-rank select"
PICTURE = f"{EXPLORER} .wb-canvas"  # the canvas's root: data-scene counts the scenes drawn
READS = f"{EXPLORER} .wb-canvas-table"  # the canvas's read-item table
PROBLEMS = f"{EXPLORER} .wb-problems table"
MESSAGE = f"{EXPLORER} .wb-message"  # the ReshardExplorer's message panel
NEXT_CLASSIC = "FSDP -> FSDP+TP"


@contextmanager
def timed(name: str):
    t0 = time.perf_counter()
    yield
    print(f"[timing] {name}: {time.perf_counter() - t0:.2f} s")


# ----------------------------------------------------------------------------- server
@dataclass
class Server:
    url: str
    token: str
    proc: subprocess.Popen
    log: Path
    root: Path  # the served copy of notebooks/


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, probe_url: str, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"jupyter lab exited rc={proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(probe_url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"jupyter lab not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server by PID, then any kernel it left behind, by PID."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)  # the kernels
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # jupyter_server shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp, port, token = tmp_path_factory.mktemp("lab"), _free_port(), secrets.token_hex(16)
    root = tmp / "notebooks"  # a copy: Lab autosaves every 120 s and must not touch the repo
    shutil.copytree(NOTEBOOK_DIR, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    env = dict(
        os.environ,
        MPLBACKEND="Agg",
        # hermetic: no user config, no restored workspace, no stale runtime files
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "lab-workspaces"),
        JUPYTER_PLATFORM_DIRS="1",
    )
    # never show the "Jupyter news?" toast over the notebook, never fetch news
    notif = (
        tmp
        / "lab-settings"
        / "@jupyterlab"
        / "apputils-extension"
        / "notification.jupyterlab-settings"
    )
    notif.parent.mkdir(parents=True)
    notif.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    # render every cell: with Lab's default windowing, cells scrolled away after Run All are
    # detached and their text reads as empty
    tracker = (
        tmp / "lab-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    )
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--IdentityProvider.token={token}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_root=True",  # CI runs as root; refused otherwise
        "--ServerApp.terminals_enabled=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]  # no PyPI queries
    log = tmp / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT), start_new_session=True
        )
        try:
            with timed("lab server start"):
                _wait_ready(proc, f"http://127.0.0.1:{port}/api/status?token={token}", log)
            yield Server(f"http://127.0.0.1:{port}", token, proc, log, root)
        finally:
            _stop(proc)


# ----------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def browser():
    # A missing browser is a failure, not a skip: these tests are how we know the widgets work.
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: run `make chromium` (apt-get install -y chromium); "
        "never `playwright install`"
    )
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
    finally:
        pw.stop()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.console_errors = errors  # type: ignore[attr-defined]
    yield pg
    ctx.close()


@contextmanager
def screenshot_on_error(page, name: str):
    try:
        yield
    except BaseException:
        SHOT_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOT_DIR / f"{name}-failure.png"), full_page=True)
        raise


def _open_and_run_all(page, lab: Server, notebook: str = NOTEBOOK, front: str = "lab") -> None:
    if front == "lab":
        # ?reset: a fresh workspace, so no tab of an earlier test (and its kernel) is restored
        page.goto(f"{lab.url}/lab/tree/{notebook}?token={lab.token}&reset")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
        # The kernel is really connected only when the status bar reads "<kernel> | Idle"; the
        # toolbar's execution indicator says idle before the session exists and a Run All
        # clicked then is silently dropped.
        page.locator(
            ".jp-StatusBar-TextItem", has_text=re.compile(r"^(?!No Kernel).+ \| Idle$")
        ).wait_for()
    else:  # Notebook 7: no status bar; its kernel indicator names the kernel once connected
        page.goto(f"{lab.url}/notebooks/{notebook}?token={lab.token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
        page.wait_for_selector(".jp-NotebookKernelStatus-idle, [data-status='idle']")
        page.locator(".jp-KernelName", has_text=re.compile(r"Python")).first.wait_for()
        page.wait_for_timeout(1000)
    # Lab 4 has no key binding for Run All: use the main menu.
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
    page.wait_for_function(
        r"""() => {
        const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
        return p.length > 0 && p.every(e => /\[\d+\]/.test(e.textContent));
    }""",
        timeout=180_000,
    )


def _changed(page, selector: str, prop: str, old: str) -> None:
    """Wait until the first element matching selector has a different prop (src / innerText)."""
    page.wait_for_function(
        "([sel, prop, old]) => { const e = document.querySelector(sel);"
        " return e !== null && e[prop] !== old; }",
        arg=[selector, prop, old],
    )


def _changed_attr(page, selector: str, name: str, old: str) -> None:
    """Wait until the first element matching selector has another value of attribute ``name``."""
    page.wait_for_function(
        "([sel, name, old]) => { const e = document.querySelector(sel);"
        " return e !== null && e.getAttribute(name) !== old; }",
        arg=[selector, name, old],
    )


def test_tour_runs_and_explorer_reacts_to_the_page(lab, page):
    with screenshot_on_error(page, "tour"):
        with timed("page load + run all"):
            _open_and_run_all(page, lab)
        tracebacks = page.locator(
            ".jp-OutputArea-output[data-mime-type="
            "'application/vnd.jupyter.stderr']:has-text('Traceback')"
        )
        errors = page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
        )
        assert tracebacks.count() == 0 and errors.count() == 0, "a tour cell raised"

        # the explorer rendered: picture, read-item table for the rank, a problem found
        page.locator(".jp-Cell").first.scroll_into_view_if_needed()  # the first screen
        page.wait_for_selector(PICTURE, state="visible")
        page.wait_for_selector(READS)
        page.wait_for_selector(PROBLEMS)
        page.wait_for_selector(f"{PICTURE} canvas.wb-canvas-plot", state="visible")
        src0 = page.locator(PICTURE).first.get_attribute("data-scene")
        assert src0 and int(src0) >= 1
        reads0 = page.locator(READS).first.inner_text()
        assert "dest_region" in reads0 and "[0:4, 0:4]" in reads0
        assert "strided_misdescribed" in page.locator(PROBLEMS).first.inner_text()
        assert page.locator(MESSAGE).first.inner_text().strip() == ""
        SHOT_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOT_DIR / "tour-first-screen.png"))

        # 1. load rank through the page: browser -> kernel -> Output widget -> browser
        rank = page.locator(RANK).first
        old_rank = rank.input_value()
        options = rank.locator("option").all_inner_texts()
        new_rank = next(o for o in options if o != old_rank)
        with timed("rank change round trip"):
            rank.select_option(label=new_rank)
            _changed_attr(page, PICTURE, "data-scene", src0)
            _changed(page, READS, "innerText", reads0)
        assert rank.input_value() != old_rank
        src1 = page.locator(PICTURE).first.get_attribute("data-scene")
        reads1 = page.locator(READS).first.inner_text()
        assert src1 != src0 and reads1 != reads0

        # 2. another classic reshard from the dropdown (the tour opens on the strided one)
        classic = page.locator(CLASSIC).first
        assert classic.input_value() != NEXT_CLASSIC
        with timed("classic reshard change round trip"):
            classic.select_option(label=NEXT_CLASSIC)
            _changed_attr(page, PICTURE, "data-scene", src1)
            _changed(page, READS, "innerText", reads1)
        # FSDP -> FSDP+TP has no problem: the strided problem rows are gone from the page
        page.wait_for_function(
            "sel => !document.querySelector(sel).innerText.includes('strided_misdescribed')",
            arg=f"{EXPLORER} .wb-problems",
        )
        assert page.locator(MESSAGE).first.inner_text().strip() == ""

        page.locator(EXPLORER).first.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOT_DIR / "tour-explorer-changed.png"))

        # 3. bad input typed into the page: the message panel says why, the picture stays
        src2 = page.locator(PICTURE).first.get_attribute("data-scene")
        placements = page.locator(f"{EXPLORER} .wb-load-placements input").first
        placements.fill("S(5), R")
        placements.press("Enter")
        message = page.locator(MESSAGE).first
        message.locator("text=shards dim 5").wait_for()
        assert "Traceback" not in message.inner_text()
        assert page.locator(PICTURE).first.get_attribute("data-scene") == src2
        page.screenshot(path=str(SHOT_DIR / "tour-explorer-bad-input.png"))

        # 4. the read-order stepper: "next" lights the next item
        stepper = page.locator(".wb-stepper").first
        stepper.scroll_into_view_if_needed()
        caption = stepper.locator(".wb-caption")
        assert caption.inner_text().startswith("item 1 of 2")
        stepper.locator(".wb-next").click()
        caption.locator("text=item 2 of 2").wait_for()
        # play DCP's read order: from the first item the Play widget steps to the second
        stepper.locator(".wb-prev").click()
        caption.locator("text=item 1 of 2").wait_for()
        stepper.locator(".wb-play button").first.click()
        caption.locator("text=item 2 of 2").wait_for(timeout=20_000)
        page.screenshot(path=str(SHOT_DIR / "tour-stepper-played.png"))
        widget_errors = [
            e for e in page.console_errors if "widget" in e.lower() or "model" in e.lower()
        ]
        assert not widget_errors, widget_errors


# ----------------------------------------------------------------------------- the canvas
# A notebook written for these tests (the repository's notebooks stay as they are): a reshard
# explorer, the 70B-like reference's model explorer (FSDP 64 -> FSDP2 + TP 8 x 8, load rank 9)
# and a checkpoint whose keys are HTML and script.
CANVAS_NOTEBOOK = "canvas_checks.ipynb"
XSS_KEYS = ("<img src=x onerror=window.__wbXss=1>", "<script>window.__wbXss=2</script>")
CANVAS_CELLS = [
    "from workbench.widgets import CheckpointExplorer, ModelExplorer, ReshardExplorer\n"
    "ex = ReshardExplorer('FSDP -> FSDP+TP')\nex",
    "from workbench.models import apply_recipe, model_state_dict\n"
    "from workbench.planning import plan_save\n"
    "model = model_state_dict('llama', '70b')\n"
    "saved = plan_save(apply_recipe(model, 'fsdp', 64))\n"
    "m = ModelExplorer(saved, apply_recipe(model, 'fsdp2+tp', (8, 8)), rank=9)\nm",
    "from workbench.sharding import dtensor_layout\n"
    f"keys = {XSS_KEYS!r}\n"
    "hostile = plan_save({k: dtensor_layout((8, 4), (2,), 'S(0)') for k in keys})\n"
    "CheckpointExplorer(hostile)",
    "print('canvas cells done')",
]
O_PROJ = "layers.0.self_attn.o_proj.weight"


def _write_canvas_notebook(root: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CANVAS_CELLS]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, str(root / CANVAS_NOTEBOOK))


def _hook(page, selector: str, expr: str, arg=None):
    """Evaluate ``expr`` (a function of the canvas's test hook ``wb`` and ``arg``) in the page."""
    return page.locator(selector).first.evaluate(
        f"(e, arg) => {{ const wb = e.__wb; return ({expr}); }}", arg
    )


def _labels_overlap(labels) -> list:
    return [
        (a["text"], b["text"])
        for k, a in enumerate(labels)
        for b in labels[k + 1 :]
        if a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    ]


@pytest.mark.parametrize("front", ["lab", "notebook7"])
def test_canvas_hover_click_select_zoom_and_escape(lab, page, front):
    shots = SHOT_DIR / front
    shots.mkdir(parents=True, exist_ok=True)
    _write_canvas_notebook(Path(lab.root))
    with screenshot_on_error(page, f"canvas-{front}"):
        with timed(f"{front}: page load + run all"):
            _open_and_run_all(page, lab, CANVAS_NOTEBOOK, "lab" if front == "lab" else "nb")
        page.locator(".jp-OutputArea-output", has_text="canvas cells done").wait_for()
        assert (
            page.locator(
                ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
            ).count()
            == 0
        )
        reshard = f"{EXPLORER} .wb-canvas"
        page.wait_for_selector(f"{reshard} canvas.wb-canvas-plot", state="visible")
        page.locator(reshard).first.scroll_into_view_if_needed()

        # 1. hover saved chunk #2 (rows [4:6], written by rank 2 into __2_0.distcp)
        i = _hook(page, reshard, "wb.find('saved', 2)")
        x, y = _hook(page, reshard, "wb.tileCenter(arg)", i)
        page.mouse.move(x, y)
        tip = page.locator(f"{reshard} .wb-canvas-tooltip").first
        tip.locator("text=saved chunk #2 [4:6, 0:12]").wait_for()
        text = tip.inner_text()
        assert "writer rank 2" in text and "file __2_0.distcp" in text and "(96 B)" in text, text
        page.screenshot(path=str(shots / "1-hover-tooltip.png"))

        # 2. click in load rank 3's region (rows [4:8], cols [6:12]): Python selects rank 3,
        # re-plans the view and sends rank 3's reads back to the table
        x, y = _hook(page, reshard, "wb.toPage(9, 5)")
        page.mouse.click(x, y)
        page.locator(f"{EXPLORER} .wb-rank select").first.wait_for()
        page.wait_for_function(
            "sel => document.querySelector(sel).value === '3'", arg=f"{EXPLORER} .wb-rank select"
        )
        table = page.locator(f"{reshard} .wb-canvas-table").first
        table.locator("td", has_text="[4:6, 6:12]").first.wait_for()
        assert (
            "load rank 3" in page.locator(f"{reshard} .wb-canvas-reads-caption").first.inner_text()
        )
        assert _hook(page, reshard, "wb.state().selected") == 3
        # sizes in the table in human units (format_bytes), the exact count on hover
        size = table.locator("td.wb-canvas-bytes").first
        exact = size.get_attribute("title")
        assert exact.endswith(" bytes") and size.inner_text() == format_bytes(int(exact.split()[0]))
        page.screenshot(path=str(shots / "2-click-selects-rank-3.png"))

        # 3. click the second table row: that read lights up on the canvas
        row = table.locator("tr.wb-canvas-row").nth(1)
        order = int(row.get_attribute("data-order"))
        row.click()
        page.wait_for_function(
            "([sel, o]) => { const s = document.querySelector(sel).__wb.state();"
            " return s.highlight === o && s.lit.length === 1; }",
            arg=[reshard, order],
        )
        lit = _hook(page, reshard, "wb.state().lit[0]")
        assert _hook(page, reshard, "wb.tooltip(arg)[0]", lit).startswith(f"read item {order} ")
        assert "wb-lit" in (row.get_attribute("class") or "")
        page.screenshot(path=str(shots / "3-row-lights-read.png"))

        # 4. the model map: click o_proj of layer 0, its chunk canvas opens on rank 9's reads
        mp = ".wb-model .wb-model-map.wb-canvas"
        page.locator(mp).first.scroll_into_view_if_needed()
        page.wait_for_selector(f"{mp} canvas.wb-canvas-plot", state="visible")
        page.screenshot(path=str(shots / "4-model-map.png"))
        k = _hook(page, mp, "wb.meta().fqns.indexOf(arg)", O_PROJ)
        x, y = _hook(page, mp, "wb.tileCenter(arg)", _hook(page, mp, "wb.find('tensor', arg)", k))
        page.mouse.click(x, y)
        tensor = ".wb-model .wb-tensor-canvas.wb-canvas"
        page.locator(f"{tensor} .wb-canvas-title", has_text=f"{O_PROJ}: rank 9's reads").wait_for()
        page.locator(tensor).first.scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        page.screenshot(path=str(shots / "5-o_proj-opened.png"))

        # 5. zoom to rank 9's region: other labels, and all eight reads labelled, none overlapping
        before = {b["text"] for b in _hook(page, tensor, "wb.state().labels")}
        page.locator(f"{tensor} .wb-canvas-zoom-rank").first.click()
        page.wait_for_function(
            "sel => document.querySelector(sel).__wb.state().labels.filter("
            "l => l.text.includes('\\u2190')).length === 8",
            arg=tensor,
        )
        labels = _hook(page, tensor, "wb.state().labels")
        reads = sorted(b["text"] for b in labels if "\u2190" in b["text"])
        assert len(reads) == 8 and {b["text"] for b in labels} != before
        assert not _labels_overlap(labels)
        page.wait_for_timeout(300)
        page.screenshot(path=str(shots / "6-rank-9-zoomed.png"))

        # 6. hostile keys: shown as text, no element injected, no script run
        hostile = page.locator(".wb-checkpoint").last
        hostile.scroll_into_view_if_needed()
        hostile.locator(".wb-chunks table").wait_for()
        assert page.locator("img[src='x']").count() == 0
        assert page.evaluate("() => window.__wbXss === undefined")
        # (the Select shows spaces as no-break spaces)
        assert XSS_KEYS[0] in hostile.locator(".wb-tensor select").inner_text().replace("\xa0", " ")
        assert XSS_KEYS[0] in hostile.locator(".wb-canvas-title").inner_text()
        page.screenshot(path=str(shots / "7-hostile-keys.png"))
        # 7. the per-rank I/O table, costed from the kernel's event loop after the first scene,
        # replaces the "costing" note
        io = hostile.locator(".wb-io")
        io.locator("table").wait_for()
        io.scroll_into_view_if_needed()
        assert "costing" not in io.inner_text() and "bytes_read" in io.inner_text()
        page.screenshot(path=str(shots / "8-io-after-first-scene.png"))
        assert not [e for e in page.console_errors if "widget" in e.lower() or "model" in e.lower()]


# ----------------------------------------------------------------------------- labels at scale
def _standalone(browser, scene, name: str, **traits):
    """The canvas's ES module on a page of its own (no Jupyter) drawing ``scene``."""
    from canvas_page import canvas_page

    page = browser.new_page(viewport={"width": 1150, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_content(canvas_page(scene, **traits))
    page.wait_for_function("window.wbReady === true")
    page.wait_for_timeout(200)
    return page, errors


@pytest.fixture(scope="module")
def reference_70b():
    """The 70B-like reference: FSDP on 64 ranks -> FSDP2 + TP on 8 x 8 (notebook 04's case)."""
    from workbench.models import apply_recipe, model_state_dict
    from workbench.planning import plan_load, plan_save

    model = model_state_dict("llama", "70b")
    saved = plan_save(apply_recipe(model, "fsdp", 64))
    return saved, plan_load(saved.metadata, apply_recipe(model, "fsdp2+tp", (8, 8)))


@pytest.mark.parametrize("case", ["o_proj rank 9", "4096 chunks"])
def test_canvas_labels_never_overlap_at_full_view_and_zoomed(browser, reference_70b, case):
    from workbench.picture_data import reshard_data
    from workbench.planning import plan_load, plan_save
    from workbench.sharding import dtensor_layout
    from workbench.tables import read_items_table
    from workbench.widgets.scenes import chunk_scene

    if case == "o_proj rank 9":
        saved, load = reference_70b
        fqn, rank = O_PROJ, 9
    else:  # (4096, 64) saved S(0) on 4096 ranks, loaded S(0) on 64: rank 9 reads 64 chunks
        saved = plan_save({"w": dtensor_layout((4096, 64), (4096,), "S(0)")})
        load = plan_load(saved.metadata, {"w": dtensor_layout((4096, 64), (64,), "S(0)")})
        fqn, rank = "w", 9
    reads = read_items_table(load, fqn, rank=rank)
    scene = chunk_scene(
        saved.metadata,
        fqn,
        load,
        rank,
        picture=reshard_data(saved.metadata, load, fqn, rank),
        reads=reads,
    )
    page, errors = _standalone(browser, scene, case)
    root = "#root"
    full = _hook(page, root, "wb.state().labels")
    assert not _labels_overlap(full)
    page.locator(".wb-canvas-zoom-rank").click()
    if case == "4096 chunks":  # one-row reads: closer still, with the keys, until they fit
        for _ in range(3):
            page.keyboard.press("+")
    page.wait_for_timeout(300)
    zoomed = _hook(page, root, "wb.state().labels")
    assert not _labels_overlap(zoomed) and zoomed != full
    # zoomed to the rank's region: o_proj's eight reads all labelled; the 4096-chunk tensor's
    # 64 one-row reads as many as fit, never over each other
    read_labels = [b for b in zoomed if "\u2190" in b["text"]]
    assert len(read_labels) == 8 if case == "o_proj rank 9" else read_labels, read_labels
    if case == "o_proj rank 9":  # the rank's box named at full view, its reads once they fit
        assert "rank 9" in {b["text"] for b in full}
        assert "rank 9" not in {b["text"] for b in zoomed}
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOT_DIR / f"labels-{case.replace(' ', '-')}.png"), full_page=True)
    assert not errors, errors
    page.close()


# ----------------------------------------------------------------------------- frames
def test_pan_and_zoom_frames_reuse_the_raster_and_settle_to_a_fresh_draw(browser):
    """Pan and zoom frames copy the tiles' cached raster instead of drawing every tile: a wheel
    zoom shows a scaled copy, then settles to a fresh raster; a short drag copies it pixel for
    pixel to where a fresh raster puts the tiles; a long drag re-rasterises only when it leaves
    the cached margin."""
    from workbench.widgets.scenes import synthetic_scene

    page, errors = _standalone(browser, synthetic_scene(60, 80), "frames")
    root = "#root"
    box = page.locator("#root canvas.wb-canvas-plot").bounding_box()
    cx, cy = round(box["x"] + box["width"] / 2), round(box["y"] + box["height"] / 2)

    def fresh_draw_matches() -> bool:
        shown = _hook(page, root, "wb.checksum()")
        _hook(page, root, "wb.redraw()")
        return _hook(page, root, "wb.checksum()") == shown

    # the wheel: the frame right after it is a scaled copy (read in the same animation frame,
    # before the settle timer can run); 400 ms later, one fresh raster
    r0 = _hook(page, root, "wb.state().rasters")
    scaled = page.locator(root).evaluate(
        """(e, xy) => new Promise((done) => {
            const c = e.querySelector("canvas.wb-canvas-plot");
            c.dispatchEvent(new WheelEvent("wheel", {deltaY: -200, clientX: xy[0], clientY: xy[1],
                                                     bubbles: true, cancelable: true}));
            requestAnimationFrame(() => requestAnimationFrame(() => done(e.__wb.state())));
        })""",
        [cx, cy],
    )
    assert scaled["rasters"] == r0, scaled
    page.wait_for_timeout(400)
    assert _hook(page, root, "wb.state().rasters") == r0 + 1
    assert fresh_draw_matches()

    # a short drag in whole pixels: copies only, and exactly what a fresh raster draws
    r1 = _hook(page, root, "wb.state().rasters")
    v1 = _hook(page, root, "wb.state().view")
    page.mouse.move(cx, cy)
    page.mouse.down()
    for k in range(1, 13):
        page.mouse.move(cx - 5 * k, cy - 2 * k)
        page.wait_for_timeout(20)
    page.mouse.up()
    page.wait_for_timeout(400)
    st = _hook(page, root, "wb.state()")
    assert st["view"][0] > v1[0] and st["view"][1] > v1[1], (v1, st["view"])
    assert st["rasters"] == r1, st
    # the status's tile count follows the view once it is still (the 60 x 80 grid of 8 x 8)
    x0, y0, x1, y1 = st["view"]
    cols = sum(1 for c in range(80) if 8 * c + 8 > x0 and 8 * c < x1)
    rows = sum(1 for r in range(60) if 8 * r + 8 > y0 and 8 * r < y1)
    assert page.locator(root).get_attribute("data-visible-tiles") == str(rows * cols)
    assert fresh_draw_matches()

    # closer (a raster of twice the scale at once), then a long drag (12 x 40 px, past the
    # quarter-view margin): a few re-rasters, not 12
    page.mouse.wheel(0, -500)
    page.wait_for_timeout(400)
    r2 = _hook(page, root, "wb.state().rasters")
    page.mouse.move(cx + 200, cy)
    page.mouse.down()
    for k in range(1, 13):
        page.mouse.move(cx + 200 - 40 * k, cy)
        page.wait_for_timeout(20)
    page.mouse.up()
    page.wait_for_timeout(400)
    assert 1 <= _hook(page, root, "wb.state().rasters") - r2 <= 4
    assert fresh_draw_matches()
    assert float(page.locator(root).get_attribute("data-frame-ms")) > 0
    assert not errors, errors
    page.close()

    # a view that changes one axis's scale only (bars, no fixed aspect): settles too
    from workbench.planning import plan_load, plan_save
    from workbench.sharding import dtensor_layout
    from workbench.widgets.scenes import bytes_scene

    save = plan_save({"w": dtensor_layout((64, 8), (8,), "S(0)")})
    load = plan_load(save.metadata, {"w": dtensor_layout((64, 8), (4,), "S(1)")})
    page, errors = _standalone(browser, bytes_scene(load), "bars")
    x0, y0, x1, y1 = _hook(page, root, "wb.state().view")
    r0 = _hook(page, root, "wb.state().rasters")
    _hook(page, root, "wb.setView(...arg)", [x0, y0, x1, y0 + (y1 - y0) / 1.5])
    page.wait_for_timeout(400)
    assert _hook(page, root, "wb.state().rasters") == r0 + 1
    assert fresh_draw_matches()
    assert not errors, errors
    page.close()
