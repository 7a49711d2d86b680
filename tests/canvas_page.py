"""A standalone page that runs the canvas's ES module on a `Scene`, without Jupyter.

The page holds the module's source, its CSS and a minimal model (``get`` / ``set`` / ``on`` /
``save_changes``, the part of anywidget's model the canvas uses) whose binary traits are the
scene's columns, decoded from base64 into ArrayBuffers as ipywidgets hands them over. Used by
the browser tests that need no Jupyter (labels at model scale) and for screenshots of large
scenes.
"""

from __future__ import annotations

import base64
import json

from workbench.widgets.canvas import STATIC
from workbench.widgets.scenes import Scene

PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>{css}</style>
<style>body {{ margin: 10px; width: {width}px; }}</style></head><body><div id="root"></div>
<script type="module">
{js}
const bins = {bins};
const state = {state};
for (const [k, v] of Object.entries(bins)) {{
  const raw = atob(v); const a = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) a[i] = raw.charCodeAt(i);
  state[k] = new DataView(a.buffer);
}}
const handlers = {{}};
const model = {{
  get: (k) => state[k],
  set: (k, v) => {{ const old = state[k]; state[k] = v; if (old !== v) (handlers["change:" + k] || []).forEach((f) => f()); }},
  on: (ev, f) => {{ (handlers[ev] = handlers[ev] || []).push(f); }},
  off: () => {{}},
  save_changes: () => {{}},
  send: () => {{}},
}};
window.wbModel = model;
__canvas.render({{ model, el: document.getElementById("root") }});
window.wbReady = true;
</script></body></html>"""


def canvas_page(scene: Scene, *, width: int = 1100, height: int = 560, **traits) -> str:
    """The HTML of a page drawing ``scene`` (``traits``: highlight=, selected_rank=, ...)."""
    js = (STATIC / "canvas.js").read_text().replace("export default", "const __canvas =")
    state = dict(
        meta_json=json.dumps(scene.meta),
        scene_id=1,
        height=height,
        selected_rank=scene.meta.get("rank", -1),
        highlight=-1,
        view=[],
        error="",
        keep_view=False,
        picked={},
        drawn=-1,
    )
    state.update(traits)
    bins = {k: base64.b64encode(v).decode() for k, v in scene.buffers().items()}
    return PAGE.format(
        css=(STATIC / "canvas.css").read_text(),
        js=js,
        bins=json.dumps(bins),
        state=json.dumps(state),
        width=width,
    )
