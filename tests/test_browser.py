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
PICTURE = f"{EXPLORER} .wb-picture img"
READS = f"{EXPLORER} .wb-reads table"
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
            yield Server(f"http://127.0.0.1:{port}", token, proc, log)
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


def _open_and_run_all(page, lab: Server) -> None:
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
    # The kernel is really connected only when the status bar reads "<kernel> | Idle"; the
    # toolbar's execution indicator says idle before the session exists and a Run All clicked
    # then is silently dropped.
    page.locator(
        ".jp-StatusBar-TextItem", has_text=re.compile(r"^(?!No Kernel).+ \| Idle$")
    ).wait_for()
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
        src0 = page.locator(PICTURE).first.get_attribute("src")
        assert src0 and src0.startswith("data:image/png;base64,")
        reads0 = page.locator(READS).first.inner_text()
        assert "dest_offsets" in reads0 and "[0:4, 0:4]" in reads0
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
            _changed(page, PICTURE, "src", src0)
            _changed(page, READS, "innerText", reads0)
        assert rank.input_value() != old_rank
        src1 = page.locator(PICTURE).first.get_attribute("src")
        reads1 = page.locator(READS).first.inner_text()
        assert src1 != src0 and reads1 != reads0

        # 2. another classic reshard from the dropdown (the tour opens on the strided one)
        classic = page.locator(CLASSIC).first
        assert classic.input_value() != NEXT_CLASSIC
        with timed("classic reshard change round trip"):
            classic.select_option(label=NEXT_CLASSIC)
            _changed(page, PICTURE, "src", src1)
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
        src2 = page.locator(PICTURE).first.get_attribute("src")
        placements = page.locator(f"{EXPLORER} .wb-load-placements input").first
        placements.fill("S(5), R")
        placements.press("Enter")
        message = page.locator(MESSAGE).first
        message.locator("text=shards dim 5").wait_for()
        assert "Traceback" not in message.inner_text()
        assert page.locator(PICTURE).first.get_attribute("src") == src2
        page.screenshot(path=str(SHOT_DIR / "tour-explorer-bad-input.png"))

        # 4. the read-order stepper: "next" lights the next item
        stepper = page.locator(".wb-stepper").first
        stepper.scroll_into_view_if_needed()
        caption = stepper.locator(".wb-caption")
        assert caption.inner_text().startswith("item 1 of 2")
        stepper.locator(".wb-next").click()
        caption.locator("text=item 2 of 2").wait_for()
        widget_errors = [
            e for e in page.console_errors if "widget" in e.lower() or "model" in e.lower()
        ]
        assert not widget_errors, widget_errors
