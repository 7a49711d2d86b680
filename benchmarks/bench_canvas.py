"""The chunk canvas's speed in headless Chromium (Debian's, driven by Playwright).

1. In-page frame times: the canvas's ES module on a standalone page (the tile columns served as
   binary responses, as ipywidgets hands them over) draws a grid of 100,000 and of 1,000,000
   saved chunks. Per scene: the first frame after it arrives (decode, index, first raster), then
   four gestures of ``--frames`` frames each, every frame drawn synchronously and timed in the
   page with ``performance.now()`` (a one-pixel read-back makes the canvas rasterise what it
   recorded): a drag with the whole picture in view, a drag zoomed 4x (the cached layer is
   re-rasterised when the view leaves its margin), a wheel zoom in and out (re-rasterised past
   2x), and a re-raster on every frame (what the first frame and a settle cost). Goal: a pan or
   zoom frame of 100,000 tiles, median < 16 ms; 10^6 tiles aggregate per pixel.
   ``--throttle N``: Chromium's CPU throttling, as on a machine N times busier.
2. Control change in JupyterLab: a `ReshardExplorer` of a (4096, 64) tensor saved ``S(0)`` on
   4096 ranks (4096 chunks) loaded ``S(0)`` on 64; the page picks another load rank in the
   dropdown and waits until the canvas has drawn the scene Python sent back. Printed: the Python
   side measured in this process (plan view, scene, serialisation), the page's side (scene
   message -> drawn), their sum (the Python -> canvas goal: < 100 ms), and the whole trip on the
   page's clock (dropdown change -> drawn, Jupyter's messaging included) and as Playwright's wall
   time (its own round trips included).

Run: ``.venv/bin/python benchmarks/bench_canvas.py [--frames 60] [--no-lab] [--throttle 4]``.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from workbench.widgets.canvas import STATIC  # noqa: E402
from workbench.widgets.scenes import synthetic_scene  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>{css}</style>
<style>body {{ margin: 10px; width: 1100px; }}</style></head><body><div id="root"></div>
<script type="module">
{js}
const state = {state};
for (const k of ["boxes", "fills", "kinds", "ranks", "items", "facts", "extents"])
  state[k] = new DataView(await (await fetch("{base}/" + k)).arrayBuffer());
const model = {{ get: (k) => state[k], set: (k, v) => {{ state[k] = v; }}, on: () => {{}},
  off: () => {{}}, save_changes: () => {{}}, send: () => {{}} }};
__canvas.render({{ model, el: document.getElementById("root") }});
window.wbReady = true;
</script></body></html>"""


# the gestures timed per scene: name -> the page hook's bench() options (canvas.js)
GESTURES = {
    "pan, whole picture in view": dict(pan=[7, 2]),
    "pan, zoomed 4x": dict(zoom=4, pan=[9, 3]),
    "wheel zoom in and out": dict(zoom=1.2, wheel=1.08),
    "re-raster (first / settle frame)": dict(raster=True),
}


class _Buffers(http.server.BaseHTTPRequestHandler):
    """Serves the page and the scene's columns from this process (a route through the
    Playwright driver would copy 10^8 bytes through its pipe as base64)."""

    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 (the http.server API)
        body = self.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        kind = "text/html" if self.path.endswith(".html") else "application/octet-stream"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def frame_times(browser, n_tiles: int, frames: int, throttle: float = 1) -> dict[str, list]:
    """Gesture name -> [frame ms, of which re-rasterising] per frame, on a page drawing a
    synthetic scene of ``n_tiles``."""
    side = int(round(n_tiles**0.5))
    scene = synthetic_scene(side, n_tiles // side)
    state = dict(meta_json=json.dumps(scene.meta), scene_id=1, height=560, selected_rank=-1, highlight=-1,
                 view=[], error="", keep_view=False, picked={}, drawn=-1)  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Buffers)
    base = f"http://127.0.0.1:{server.server_port}"
    html = PAGE.format(
        css=(STATIC / "canvas.css").read_text(),
        js=(STATIC / "canvas.js").read_text().replace("export default", "const __canvas ="),
        state=json.dumps(state),
        base=base,
    )
    _Buffers.files = dict(scene.buffers(), **{"index.html": html.encode()})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = browser.new_page(viewport={"width": 1150, "height": 800})
    try:
        page.goto(f"{base}/index.html")
        page.wait_for_function("window.wbReady === true", timeout=600_000)
        if throttle > 1:  # a slower CPU, as on a busier machine (Chromium's own emulation)
            cdp = page.context.new_cdp_session(page)
            cdp.send("Emulation.setCPUThrottlingRate", {"rate": throttle})
        first = float(page.locator("#root").get_attribute("data-scene-ms") or "nan")
        print(
            f"scene of {n_tiles:>9,} tiles arrives -> first frame drawn (decode, index, draw): {first:6.1f} ms"
        )
        return {
            name: page.evaluate(
                "([n, how]) => document.getElementById('root').__wb.bench(n, how)", [frames, how]
            )
            for name, how in GESTURES.items()
        }
    finally:
        page.close()
        server.shutdown()
        server.server_close()


def round_trip(browser, repeats: int) -> tuple[list[float], list[float], list[float]]:
    """Per dropdown change in JupyterLab: the whole trip, the page's share (scene message ->
    drawn) and the dropdown change -> scene message part (ms)."""
    import secrets
    import shutil
    import socket
    import subprocess
    import tempfile

    import nbformat
    from test_browser import EXPLORER, Server, _open_and_run_all, _stop, _wait_ready

    tmp = Path(tempfile.mkdtemp(prefix="wb-bench-"))
    root = tmp / "notebooks"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from workbench.widgets import ReshardExplorer\n"
            "ex = ReshardExplorer('FSDP 8 -> 4')\n"
            "ex.shape.value = '4096, 64'\nex.save_mesh.value = '4096'\nex.load_mesh.value = '64'\n"
            "assert len(ex.result.save.metadata.state_dict_metadata['weight'].chunks) == 4096\n"
            "ex"
        )
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nb, str(root / "bench.ipynb"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "c"), JUPYTER_RUNTIME_DIR=str(tmp / "r"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "s"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "w"))  # fmt: skip
    log = tmp / "server.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--IdentityProvider.token={token}",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", f"--ServerApp.root_dir={root}",
           "--ServerApp.allow_root=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                cwd=str(ROOT), start_new_session=True)  # fmt: skip
    out, in_page, to_kernel_and_back = [], [], []
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/api/status?token={token}", log)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        _open_and_run_all(page, Server(f"http://127.0.0.1:{port}", token, proc, log, root),
                          "bench.ipynb")  # fmt: skip
        canvas = f"{EXPLORER} .wb-canvas"
        page.wait_for_selector(f"{canvas} canvas.wb-canvas-plot", state="visible")
        select = page.locator(f"{EXPLORER} .wb-rank select").first
        # the page's clock when the dropdown changes: with the canvas's data-scene-at, the
        # browser -> kernel -> browser part of the trip
        select.evaluate(
            "s => s.addEventListener('change', () => { window.wbChanged = performance.now(); }, true)"
        )
        for k in range(repeats):
            old = page.locator(canvas).first.get_attribute("data-scene")
            t0 = time.perf_counter()
            select.select_option(str(1 + k % 60))
            page.wait_for_function(
                "([sel, old]) => document.querySelector(sel).getAttribute('data-scene') !== old",
                arg=[canvas, old], polling="raf",
            )  # fmt: skip
            out.append((time.perf_counter() - t0) * 1000)
            in_page.append(float(page.locator(canvas).first.get_attribute("data-scene-ms")))
            at = float(page.locator(canvas).first.get_attribute("data-scene-at"))
            to_kernel_and_back.append(at - page.evaluate("window.wbChanged"))
        page.close()
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return out, in_page, to_kernel_and_back


def python_side(repeats: int) -> list[float]:
    """Milliseconds from a control change in Python to the new scene handed to the comm (compute,
    scene, serialisation), in this process: the kernel's share of the round trip."""
    from workbench.widgets import ReshardExplorer

    ex = ReshardExplorer("FSDP 8 -> 4")
    ex.shape.value, ex.save_mesh.value, ex.load_mesh.value = "4096, 64", "4096", "64"
    out = []
    for k in range(repeats):
        t0 = time.perf_counter()
        ex.rank.value = 1 + k % 60
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-lab", action="store_true")
    ap.add_argument("--throttle", type=float, default=1)
    ap.add_argument("--only-frames", action="store_true")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    # the machine is shared: the load says how far the medians are from an idle machine's
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        if a.throttle > 1:
            print(f"CPU throttled {a.throttle:g}x in the page (Chromium's emulation)")
        for n in (100_000, 1_000_000):
            for name, rows in frame_times(browser, n, a.frames, a.throttle).items():
                ms = [f for f, _ in rows]
                raster = [r for _, r in rows if r > 0]
                print(
                    f"frame, {n:>9,} tiles, {name:<32}: median {statistics.median(ms):6.2f} ms, "
                    f"p90 {sorted(ms)[int(0.9 * len(ms))]:6.2f} ms, max {max(ms):6.2f} ms; "
                    f"{len(raster)} of {len(ms)} re-rasterised"
                    + (f" (median {statistics.median(raster):.1f} ms)" if raster else "")
                )
        print(
            "  (goal: a pan or zoom frame of 100,000 tiles, median < 16 ms; past 250,000 tiles in\n"
            "   the cached layer it is the scene's aggregated raster, built with the first frame)"
        )
        if a.only_frames:
            browser.close()
            return
        py = python_side(a.repeats)
        print(
            f"control change, 4096 chunks, Python side (plan view + scene + serialise): "
            f"median {statistics.median(py):6.1f} ms"
        )
        if not a.no_lab:
            rt, in_page, there_and_back = round_trip(browser, a.repeats)
            med = statistics.median
            print(
                f"control change, 4096 chunks, in the page (scene message -> drawn): "
                f"median {med(in_page):6.1f} ms"
            )
            print(
                f"  Python -> canvas (the two above): {med(py) + med(in_page):6.1f} ms (goal < 100 ms)"
            )
            trip = [a + b for a, b in zip(there_and_back, in_page)]
            print(
                f"control change, whole trip on the page's clock (dropdown change -> drawn): median "
                f"{med(trip):6.1f} ms, max {max(trip):6.1f} ms over {len(trip)}; of which dropdown "
                f"-> scene message (kernel + Jupyter's messaging) {med(there_and_back):6.1f} ms"
            )
            print(
                f"  the same as Playwright's wall time (its own round trips included): median "
                f"{med(rt):6.1f} ms"
            )
        browser.close()


if __name__ == "__main__":
    main()
