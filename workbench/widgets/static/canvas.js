// The workbench's chunk canvas (anywidget ES module, no build step, no network).
//
// Draws a scene (workbench/widgets/scenes.py): tiles as binary columns (boxes, fills, kinds,
// ranks, items, facts, extents) plus a small JSON `meta`. Tiles are rasterised into a cached
// layer a bit larger than the view: fills written into one pixel buffer with TypedArray.fill
// per row (a sub-pixel tile still lights its pixel, so 10^6 tiles aggregate per pixel instead
// of vanishing), outlines and hatches as one path per kind where they are big enough to be
// seen. Pan and zoom frames copy that layer (see "drawing" below); labels, highlights, axes and
// the minimap are drawn on top per frame. Redraws are batched on requestAnimationFrame; a new
// scene draws at once. Hover and click use a uniform grid over the tiles (O(1) per query at
// 10^6 tiles), which also culls the tiles of a small layer.
// Every text reaches the page through textContent or canvas fillText, never innerHTML.
// Test hook: the root element's `__wb` object and its data-frame-ms / data-raster-ms /
// data-labels / data-scene-ms attributes.

const M = { left: 70, right: 14, top: 8, bottom: 42 };
const FONT = "11px sans-serif";
const GROUP_FONT = "bold 11px sans-serif";
const LINE = 13;
const AGGREGATE = 250000; // tiles in the layer past which it is the scene's aggregated raster
const AGG_PIXELS = 2048; // the aggregated raster's longer side
const LAYER_MARGIN = 0.25; // the layer covers the view and this share of it on each side
const LAYER_RESCALE = 2; // zooming further than this from the layer's scale re-rasterises at once
const SETTLE_MS = 120; // the view still this long: re-rasterise at the exact view
const MAX_OUTLINES = 20000; // outlines per kind in one raster (more are too small to tell apart)

function view(dv, Ctor) {
  if (!dv) return new Ctor(0);
  let buf, off, len;
  if (dv instanceof ArrayBuffer) [buf, off, len] = [dv, 0, dv.byteLength];
  else [buf, off, len] = [dv.buffer, dv.byteOffset, dv.byteLength];
  const k = Ctor.BYTES_PER_ELEMENT;
  if (off % k === 0) return new Ctor(buf, off, Math.floor(len / k));
  return new Ctor(buf.slice(off, off + len));
}

function humanBytes(n) {
  // workbench.formatting.format_bytes, rule for rule: binary units, 1 to 3 digits before the
  // point, at most three significant digits, trailing zeros dropped (tests/test_canvas.py)
  if (n === null || n === undefined || !isFinite(n)) return "unknown";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  let k = 0;
  while (k < units.length - 1 && Math.abs(n) >= Math.pow(1024, k + 1)) k++;
  if (k === 0) return `${Math.trunc(n)} B`;
  const v = n / Math.pow(1024, k);
  const digits = Math.abs(v) < 10 ? 2 : Math.abs(v) < 100 ? 1 : 0;
  let text = v.toFixed(digits);
  if (text.includes(".")) text = text.replace(/0+$/, "").replace(/\.$/, "");
  return `${text} ${units[k]}`;
}

function boxText(ext, i, nd) {
  if (!nd) return "(scalar)";
  const parts = [];
  for (let d = 0; d < nd; d++) {
    const o = ext[i * 2 * nd + d], s = ext[i * 2 * nd + nd + d];
    parts.push(`${o}:${o + s}`);
  }
  return `[${parts.join(", ")}]`;
}

function rgbaCss(c) {
  return `rgba(${c >>> 24},${(c >>> 16) & 255},${(c >>> 8) & 255},${(c & 255) / 255})`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function niceStep(raw, integer) {
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const m = raw / p;
  const step = (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  return integer ? Math.max(1, Math.round(step)) : step;
}

function niceBytesStep(raw) {
  // steps of 1, 2, 5 x powers of 1024 units, so tick labels read 2 GiB, 4 GiB ...
  let unit = 1;
  while (raw / unit >= 1024) unit *= 1024;
  return niceStep(raw / unit, false) * unit;
}

function hatchPattern(ctx, kind, color) {
  const c = document.createElement("canvas");
  c.width = c.height = 8;
  const g = c.getContext("2d");
  g.strokeStyle = color;
  g.lineWidth = 1;
  g.beginPath();
  if (kind === "//" || kind === "xx") { g.moveTo(0, 8); g.lineTo(8, 0); }
  if (kind === "xx") { g.moveTo(0, 0); g.lineTo(8, 8); }
  g.stroke();
  return ctx.createPattern(c, "repeat");
}

class Scene {
  constructor(model) {
    const meta = JSON.parse(model.get("meta_json") || "{}");
    this.meta = meta;
    this.boxes = view(model.get("boxes"), Float64Array);
    this.n = Math.floor(this.boxes.length / 4);
    this.fills = view(model.get("fills"), Uint32Array);
    this.kinds = view(model.get("kinds"), Uint8Array);
    this.ranks = view(model.get("ranks"), Int32Array);
    this.items = view(model.get("items"), Int32Array);
    this.facts = view(model.get("facts"), Float64Array);
    this.extents = view(model.get("extents"), Float64Array);
    this.nd = meta.ndim || 0;
    this.styles = meta.styles || [];
    this.width = meta.width || 1;
    this.height = meta.height || 1;
    this.labels = meta.labels || [];
    // opaque pixel colours (ABGR for the little-endian pixel buffer), alpha mixed over white
    this.abgr = new Uint32Array(this.n);
    for (let i = 0; i < this.n; i++) {
      const c = this.fills[i], a = (c & 255) / 255;
      if (!(c & 255)) { this.abgr[i] = 0; continue; }
      const mix = (v) => Math.round(v * a + 255 * (1 - a));
      const r = mix(c >>> 24), g = mix((c >>> 16) & 255), b = mix((c >>> 8) & 255);
      this.abgr[i] = ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
    }
    this.seam = this.styles.map((st) => st.edge === "#ffffff");
    this.kindCode = {};
    this.styles.forEach((s, k) => (this.kindCode[s.name] = k));
    // per-kind drawing rules, read by the raster loop, and its reused outline / hatch lists
    this.minpx = this.styles.map((st) => st.minpx || 3);
    this.outlined = this.styles.map((st, k) => !!st.edge && !this.seam[k]);
    this.hatched = this.styles.map((st) => !!st.hatch);
    this.outlineLists = this.styles.map(() => []);
    this.hatchLists = this.styles.map(() => []);
    this.patterns = new Map();
    // read order -> its tiles, for the lit read
    this.readTiles = new Map();
    const readK = this.kindCode.read;
    for (let i = 0; i < this.n; i++) {
      if (this.kinds[i] !== readK) continue;
      const k = this.items[i];
      if (!this.readTiles.has(k)) this.readTiles.set(k, []);
      this.readTiles.get(k).push(i);
    }
    // the tiles' extent with the scene's [0, width] x [0, height]
    const e = [0, 0, this.width, this.height], B = this.boxes;
    for (let i = 0; i < this.n; i++) {
      const x = B[4 * i], y = B[4 * i + 1];
      if (x < e[0]) e[0] = x;
      if (y < e[1]) e[1] = y;
      if (x + B[4 * i + 2] > e[2]) e[2] = x + B[4 * i + 2];
      if (y + B[4 * i + 3] > e[3]) e[3] = y + B[4 * i + 3];
    }
    this.extent = e;
    this.buildIndex();
  }

  pattern(ctx, k) {
    // the hatch of kind k, made once per scene and context
    let p = this.patterns.get(ctx);
    if (!p) this.patterns.set(ctx, (p = []));
    if (!p[k]) p[k] = hatchPattern(ctx, this.styles[k].hatch, this.styles[k].edge);
    return p[k];
  }

  tilesIn(x0, y0, x1, y1) {
    // the tiles that may meet the data rectangle, ascending (drawing order), from the grid:
    // each tile once (a per-tile stamp), the big ones from their own list
    const G = this.G, cl = (v) => Math.max(0, Math.min(G - 1, v));
    const gx0 = cl(Math.floor(x0 / this.cw)), gx1 = cl(Math.floor(x1 / this.cw));
    const gy0 = cl(Math.floor(y0 / this.ch)), gy1 = cl(Math.floor(y1 / this.ch));
    if (!this.stamp) { this.stamp = new Uint32Array(this.n); this.gen = 0; this.found = new Int32Array(this.n); }
    const stamp = this.stamp, out = this.found, start = this.start, cells = this.cells;
    const gen = ++this.gen;
    let k = 0;
    for (let gy = gy0; gy <= gy1; gy++)
      for (let gx = gx0; gx <= gx1; gx++) {
        const c = gy * G + gx;
        for (let j = start[c], e = start[c + 1]; j < e; j++) {
          const i = cells[j];
          if (stamp[i] !== gen) { stamp[i] = gen; out[k++] = i; }
        }
      }
    for (const i of this.big) if (stamp[i] !== gen) { stamp[i] = gen; out[k++] = i; }
    // back into drawing order: a sort for a few, one pass over the stamps for many
    if (k * Math.log2(k + 2) < this.n) return out.subarray(0, k).sort();
    k = 0;
    for (let i = 0, n = this.n; i < n; i++) if (stamp[i] === gen) out[k++] = i;
    return out.subarray(0, k);
  }

  kind(i) { return (this.styles[this.kinds[i]] || {}).name; }

  buildIndex() {
    // uniform grid over the extent; tiles spanning many cells go to a short linear list
    const n = this.n, G = Math.max(8, Math.min(256, Math.ceil(Math.sqrt(n / 2))));
    this.G = G;
    const cw = this.width / G, ch = this.height / G, B = this.boxes;
    const counts = new Uint32Array(G * G + 1);
    const big = [];
    const span = new Int32Array(n * 4);
    for (let i = 0; i < n; i++) {
      const x0 = Math.max(0, Math.min(G - 1, Math.floor(B[4 * i] / cw)));
      const x1 = Math.max(0, Math.min(G - 1, Math.floor((B[4 * i] + B[4 * i + 2]) / cw - 1e-9)));
      const y0 = Math.max(0, Math.min(G - 1, Math.floor(B[4 * i + 1] / ch)));
      const y1 = Math.max(0, Math.min(G - 1, Math.floor((B[4 * i + 1] + B[4 * i + 3]) / ch - 1e-9)));
      span[4 * i] = x0; span[4 * i + 1] = x1; span[4 * i + 2] = y0; span[4 * i + 3] = y1;
      if ((x1 - x0 + 1) * (y1 - y0 + 1) > 64) { big.push(i); span[4 * i] = -1; continue; }
      for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) counts[y * G + x + 1]++;
    }
    for (let c = 1; c <= G * G; c++) counts[c] += counts[c - 1];
    const fill = counts.slice(0, G * G);
    const cells = new Int32Array(counts[G * G]);
    for (let i = 0; i < n; i++) {
      if (span[4 * i] < 0) continue;
      for (let y = span[4 * i + 2]; y <= span[4 * i + 3]; y++)
        for (let x = span[4 * i]; x <= span[4 * i + 1]; x++) cells[fill[y * G + x]++] = i;
    }
    this.start = counts;
    this.cells = cells;
    this.big = big;
    this.cw = cw;
    this.ch = ch;
  }

  hits(x, y) {
    // every tile containing data point (x, y), in drawing order
    const out = [], B = this.boxes, G = this.G;
    const inside = (i) => x >= B[4 * i] && x < B[4 * i] + B[4 * i + 2] && y >= B[4 * i + 1] && y < B[4 * i + 1] + B[4 * i + 3];
    if (x >= 0 && y >= 0 && x <= this.width && y <= this.height) {
      const cx = Math.min(G - 1, Math.floor(x / this.cw)), cy = Math.min(G - 1, Math.floor(y / this.ch));
      const c = cy * G + cx;
      for (let k = this.start[c]; k < this.start[c + 1]; k++) if (inside(this.cells[k])) out.push(this.cells[k]);
    }
    for (const i of this.big) if (inside(i)) out.push(i);
    out.sort((a, b) => a - b);
    return out;
  }

  best(list) {
    let best = -1, pri = -1;
    for (const i of list) {
      const p = (this.styles[this.kinds[i]] || {}).hit || 0;
      if (p >= pri) { pri = p; best = i; }
    }
    return best;
  }
}

class CanvasView {
  constructor(model, root) {
    this.model = model;
    this.root = root;
    root.classList.add("wb-canvas");
    root.tabIndex = 0;
    this.titleEl = el("div", "wb-canvas-title");
    this.bar = el("div", "wb-canvas-bar");
    const button = (text, title, fn, cls) => {
      const b = el("button", `wb-canvas-btn ${cls || ""}`, text);
      b.title = title;
      b.addEventListener("click", (e) => { e.preventDefault(); fn(); });
      this.bar.appendChild(b);
      return b;
    };
    button("fit", "fit the whole picture (double-click, key 0)", () => this.fit(), "wb-canvas-fit");
    button("+", "zoom in (wheel, key +)", () => this.zoomCenter(1.5));
    button("\u2212", "zoom out (wheel, key -)", () => this.zoomCenter(1 / 1.5));
    this.rankBtn = button("zoom to rank", "zoom to the selected rank's region (key r)", () => this.zoomToRank(), "wb-canvas-zoom-rank");
    this.playBtn = null;
    this.status = el("span", "wb-canvas-status");
    this.bar.appendChild(this.status);
    this.stage = el("div", "wb-canvas-stage");
    this.canvas = el("canvas", "wb-canvas-plot");
    this.mini = el("canvas", "wb-canvas-minimap");
    this.tip = el("div", "wb-canvas-tooltip");
    this.stage.append(this.canvas, this.mini, this.tip);
    this.legend = el("div", "wb-canvas-legend");
    this.notes = el("div", "wb-canvas-notes");
    this.error = el("div", "wb-canvas-error");
    this.tableBox = el("div", "wb-canvas-reads");
    root.append(this.titleEl, this.bar, this.stage, this.legend, this.notes, this.error, this.tableBox);
    this.ctx = this.canvas.getContext("2d");
    this.frames = [];
    this.placed = [];
    this.hover = -1;
    this.pending = false;
    this.textWidth = new Map();
    this.scene = null;
    this.view = null;
    this.bind();
    this.load();
    root.__wb = this.hook();
  }

  // ------------------------------------------------------------------ data
  load(now = false) {
    // now: draw before returning (a scene replacing one on the page), else on the next frame
    this.sceneT0 = performance.now();
    this.root.dataset.sceneAt = this.sceneT0.toFixed(1); // when the scene arrived (page clock)
    try {
      this.scene = new Scene(this.model);
    } catch (err) {
      this.scene = null;
      this.error.textContent = `the canvas could not read its scene: ${err}`;
      return;
    }
    const m = this.scene.meta;
    this.titleEl.textContent = m.title || "";
    this.rankBtn.style.display = m.mode === "chunks" || m.mode === "bars" ? "" : "none";
    this.renderLegend();
    this.notes.replaceChildren(...(m.notes || []).map((t) => el("div", "wb-canvas-note", t)));
    this.error.textContent = this.model.get("error") || "";
    this.renderTable();
    this.thumb = null;
    this.agg = null;
    const v = this.model.get("view");
    this.resize(this.cssW);
    if (v && v.length === 4 && this.keepView) this.setView(v[0], v[1], v[2], v[3], false);
    else this.fit(false);
    this.keepView = false;
    this.root.dataset.scene = String(this.model.get("scene_id"));
    this.root.dataset.tiles = String(this.scene.n);
    if (!now) { this.schedule(true); return; }
    // a new scene for a view already on the page: drawn at once rather than on the next
    // animation frame, which a busy page (JupyterLab re-rendering the outputs that changed
    // with it) can hold back for tens of ms
    this.draw();
    this.acknowledge();
  }

  acknowledge() {
    // from the scene's arrival to its first frame drawn (decode, index, draw)
    this.root.dataset.sceneMs = (performance.now() - this.sceneT0).toFixed(2);
    this.model.set("drawn", this.model.get("scene_id"));
    this.model.save_changes();
  }

  renderLegend() {
    const lg = this.scene.meta.legend || {};
    const items = [];
    for (const [label, face, edge, hatch] of lg.entries || []) {
      const sw = el("span", "wb-canvas-swatch");
      if (face) sw.style.background = face;
      if (edge) sw.style.border = `2px ${hatch ? "dotted" : "solid"} ${edge}`;
      const item = el("span", "wb-canvas-legend-item");
      item.append(sw, el("span", "", label));
      items.push(item);
    }
    if (lg.scale) {
      const s = lg.scale;
      const bar = el("span", "wb-canvas-scale");
      bar.style.background = `linear-gradient(to right, ${s.colors.join(", ")})`;
      const item = el("span", "wb-canvas-legend-item wb-canvas-legend-scale");
      item.append(el("span", "", s.min), bar, el("span", "", s.max), el("span", "wb-canvas-scale-label", s.label));
      items.push(item);
    }
    this.legend.replaceChildren(...items);
  }

  renderTable() {
    const m = this.scene.meta;
    const cols = m.read_columns || [];
    const rows = m.reads || [];
    if (!cols.length || m.mode !== "chunks") { this.tableBox.replaceChildren(); this.rows = []; return; }
    const caption = el("div", "wb-canvas-reads-caption",
      rows.length ? `read items of load rank ${m.rank}, in DCP's order (click a row to light it up)` : `load rank ${m.rank} reads nothing of this tensor`);
    const table = el("table", "wb-canvas-table");
    const head = el("tr");
    for (const c of cols) head.appendChild(el("th", "", c));
    table.appendChild(el("thead")).appendChild(head);
    const body = el("tbody");
    this.rows = [];
    const orderCol = cols.indexOf("order");
    // byte counts, named as tables.style_by_rank names them
    const sizes = cols.map((c) => c === "bytes" || c === "length" || c.startsWith("bytes_") || c.includes("_bytes"));
    rows.forEach((r, k) => {
      const tr = el("tr", "wb-canvas-row");
      const order = orderCol >= 0 ? r[orderCol] : k;
      tr.dataset.order = String(order);
      r.forEach((v, c) => {
        if (sizes[c] && typeof v === "number") {
          // human units (format_bytes's rule), the exact count on hover
          const td = el("td", "wb-canvas-bytes", humanBytes(v));
          td.title = `${v} bytes`;
          tr.appendChild(td);
        } else tr.appendChild(el("td", "", Array.isArray(v) ? `(${v.join(", ")})` : v === null ? "" : v));
      });
      tr.addEventListener("click", () => this.setHighlight(order));
      body.appendChild(tr);
      this.rows.push(tr);
    });
    table.appendChild(body);
    this.tableBox.replaceChildren(caption, table);
    this.markRow();
  }

  markRow() {
    const h = this.model.get("highlight");
    for (const tr of this.rows || []) {
      const on = Number(tr.dataset.order) === h;
      tr.classList.toggle("wb-lit", on);
      if (on && tr.scrollIntoViewIfNeeded) tr.scrollIntoViewIfNeeded(false);
    }
  }

  setHighlight(order) {
    this.model.set("highlight", order);
    this.model.save_changes();
    this.markRow();
    this.schedule();
  }

  // ------------------------------------------------------------------ geometry
  resize(width) {
    // width: the root's as last seen (a new scene; the ResizeObserver reports changes), else
    // read from the page, which forces a layout
    const w = Math.max(360, Math.floor(width || this.root.clientWidth || 800));
    const h = this.model.get("height") || 480;
    const dpr = window.devicePixelRatio || 1;
    if (w !== this.cssW || h !== this.cssH || dpr !== this.dpr) {
      // (setting a canvas's size, even to the same value, reallocates and clears it)
      this.cssW = w;
      this.cssH = h;
      this.dpr = dpr;
      this.canvas.style.width = `${w}px`;
      this.canvas.style.height = `${h}px`;
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
    const axes = !this.scene || this.scene.meta.axes !== false;
    this.m = axes ? M : { left: 4, right: 4, top: 4, bottom: 4 };
    this.pw = w - this.m.left - this.m.right;
    this.ph = h - this.m.top - this.m.bottom;
    if (this.layer) this.layer.stale = true;
  }

  aspectEqual() {
    const s = this.scene;
    if (!s || s.meta.aspect !== "equal") return false;
    const k = Math.min(this.pw / s.width, this.ph / s.height);
    // in proportion unless the tensor would shrink to a sliver (a 128256 x 8192 embedding)
    return (s.width * k) / this.pw > 0.15 && (s.height * k) / this.ph > 0.15;
  }

  fit(draw = true) {
    if (!this.scene) return;
    this.setView(0, 0, this.scene.width, this.scene.height, draw);
  }

  setView(x0, y0, x1, y1, draw = true) {
    if (this.aspectEqual()) {
      // grow the shorter side so one element is square on screen
      const k = Math.min(this.pw / (x1 - x0), this.ph / (y1 - y0));
      const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
      const hw = this.pw / k / 2, hh = this.ph / k / 2;
      [x0, x1, y0, y1] = [cx - hw, cx + hw, cy - hh, cy + hh];
    }
    this.view = { x0, y0, x1, y1 };
    if (draw) { this.schedule(); this.reportView(); }
  }

  sx() { return this.pw / (this.view.x1 - this.view.x0); }
  sy() { return this.ph / (this.view.y1 - this.view.y0); }

  // data -> css px inside the canvas
  toX(x) { return this.m.left + (x - this.view.x0) * this.sx(); }
  toY(y) {
    return this.scene.meta.yflip ? this.m.top + (this.view.y1 - y) * this.sy() : this.m.top + (y - this.view.y0) * this.sy();
  }
  fromX(px) { return this.view.x0 + (px - this.m.left) / this.sx(); }
  fromY(py) {
    return this.scene.meta.yflip ? this.view.y1 - (py - this.m.top) / this.sy() : this.view.y0 + (py - this.m.top) / this.sy();
  }

  tileRect(i) {
    const B = this.scene.boxes;
    const xa = this.toX(B[4 * i]), xb = this.toX(B[4 * i] + B[4 * i + 2]);
    const ya = this.toY(B[4 * i + 1]), yb = this.toY(B[4 * i + 1] + B[4 * i + 3]);
    return { x: Math.min(xa, xb), y: Math.min(ya, yb), w: Math.abs(xb - xa), h: Math.abs(yb - ya) };
  }

  zoomAt(px, py, f) {
    const x = this.fromX(px), y = this.fromY(py), v = this.view, s = this.scene;
    const span = Math.max(v.x1 - v.x0, v.y1 - v.y0) / f;
    if (f > 1 && span < 0.5) return; // closer than half an element shows nothing more
    if (f < 1 && span > 8 * Math.max(s.width, s.height)) return;
    const nx0 = x - (x - v.x0) / f, nx1 = x + (v.x1 - x) / f;
    const ny0 = y - (y - v.y0) / f, ny1 = y + (v.y1 - y) / f;
    this.view = { x0: nx0, y0: ny0, x1: nx1, y1: ny1 };
    this.schedule();
    this.reportView();
  }

  zoomCenter(f) { this.zoomAt(this.m.left + this.pw / 2, this.m.top + this.ph / 2, f); }

  pan(dxPx, dyPx) {
    const dx = dxPx / this.sx(), dy = dyPx / this.sy() * (this.scene.meta.yflip ? -1 : 1);
    const v = this.view;
    this.view = { x0: v.x0 - dx, x1: v.x1 - dx, y0: v.y0 - dy, y1: v.y1 - dy };
    this.schedule();
    this.reportView();
  }

  rankBox(rank) {
    // the selected rank's region: its own chunks (target) or, in other scenes, its tiles
    const s = this.scene, B = s.boxes, target = s.kindCode.target;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (let pass = 0; pass < 2 && x0 === Infinity; pass++) {
      for (let i = 0; i < s.n; i++) {
        const ok = pass === 0 ? s.kinds[i] === target && s.ranks[i] === rank : s.ranks[i] === rank && s.kind(i) !== "wanted";
        if (!ok) continue;
        x0 = Math.min(x0, B[4 * i]); y0 = Math.min(y0, B[4 * i + 1]);
        x1 = Math.max(x1, B[4 * i] + B[4 * i + 2]); y1 = Math.max(y1, B[4 * i + 1] + B[4 * i + 3]);
      }
    }
    return x0 === Infinity ? null : [x0, y0, x1, y1];
  }

  zoomToRank() {
    const rank = this.scene.meta.mode === "chunks" ? this.scene.meta.rank : this.model.get("selected_rank");
    const b = this.rankBox(rank);
    if (!b) return;
    const [x0, y0, x1, y1] = b, px = (x1 - x0) * 0.05, py = (y1 - y0) * 0.05;
    this.setView(x0 - px, y0 - py, x1 + px, y1 + py);
  }

  reportView() {
    clearTimeout(this.viewTimer);
    this.viewTimer = setTimeout(() => {
      const v = this.view;
      this.lastReported = [v.x0, v.y0, v.x1, v.y1];
      this.model.set("view", this.lastReported);
      this.model.save_changes();
    }, 250);
  }

  // ------------------------------------------------------------------ drawing
  //
  // Tiles are rasterised into a layer (an offscreen canvas) covering the view plus a margin, at
  // the view's scale: fills into one pixel buffer, then hatches and outlines as one path per
  // kind. A frame copies the layer to the screen with one drawImage, offset (pan) or scaled
  // (zoom), and draws on top what changes with the view: the lit read, the hovered tile, group
  // frames, labels, axes and the minimap. So a pan or zoom frame costs the same at 10^2 or 10^6
  // tiles; the layer is re-rasterised when the view leaves it, when zooming has changed the
  // scale by more than LAYER_RESCALE, and once the view settles (SETTLE_MS after the last move)
  // at the exact scale. More than AGGREGATE tiles in the layer: the layer is the scene's
  // aggregated raster (each pixel the last tile drawn on it, built once per scene).
  schedule(ack = false) {
    if (ack) this.ack = true;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
      if (this.ack) {
        this.ack = false;
        this.acknowledge();
      }
    });
  }

  raster(L, ids, outlines, hatches) {
    // fill the tiles (all, or the ascending ids) into L.px, a W x H pixel buffer (rows
    // L.stride apart, default W) whose pixel (0, 0) is data (L.x0, L.y0) (yflip: (L.x0, L.y1))
    // at L.kx, L.ky pixels per data unit; collect per kind the tiles big enough for an outline
    // or a hatch. Returns the number of tiles meeting the pixel rectangle L.vx0..vx1,
    // L.vy0..vy1 (the view).
    const s = this.scene, B = s.boxes, C = s.abgr, K = s.kinds, seam = s.seam;
    const px = L.px, W = L.W, H = L.H, S = L.stride || L.W, kx = L.kx, ky = L.ky, ox = L.x0, oy = L.y0, oy1 = L.y1, yflip = L.yflip;
    const minpx = s.minpx, outlined = s.outlined, hatched = s.hatched, dpr = this.dpr;
    const vx0 = L.vx0, vx1 = L.vx1, vy0 = L.vy0, vy1 = L.vy1;
    const m = ids ? ids.length : s.n;
    let seen = 0;
    for (let j = 0; j < m; j++) {
      const i = ids ? ids[j] : j;
      const x = B[4 * i], y = B[4 * i + 1], w = B[4 * i + 2], h = B[4 * i + 3];
      const X0 = (x - ox) * kx, X1 = (x + w - ox) * kx;
      if (X1 < 0 || X0 >= W) continue;
      const Y0 = yflip ? (oy1 - y - h) * ky : (y - oy) * ky;
      const Y1 = yflip ? (oy1 - y) * ky : (y + h - oy) * ky;
      if (Y1 < 0 || Y0 >= H) continue;
      if (X1 > vx0 && X0 < vx1 && Y1 > vy0 && Y0 < vy1) seen++;
      const k = K[i];
      if (outlines) {
        const lim = minpx[k] * dpr;
        if (outlined[k] && X1 - X0 >= lim && Y1 - Y0 >= lim && outlines[k].length < MAX_OUTLINES) outlines[k].push(i);
        if (hatched[k] && X1 - X0 >= 2 && Y1 - Y0 >= 2) hatches[k].push(i);
      }
      const c = C[i];
      if (!c) continue;
      let ix0 = Math.round(X0), ix1 = Math.round(X1), iy0 = Math.round(Y0), iy1 = Math.round(Y1);
      // a sub-pixel tile still lights its pixel: 10^6 tiles aggregate instead of vanishing
      if (ix1 <= ix0) ix1 = ix0 + 1;
      if (iy1 <= iy0) iy1 = iy0 + 1;
      // a white seam between neighbouring tiles big enough to show one: drawn by leaving the
      // last pixel column and row unfilled, no stroke needed
      if (seam[k]) { if (ix1 - ix0 >= 5) ix1--; if (iy1 - iy0 >= 5) iy1--; }
      if (ix0 < 0) ix0 = 0;
      if (iy0 < 0) iy0 = 0;
      if (ix1 > W) ix1 = W;
      if (iy1 > H) iy1 = H;
      if (ix1 - ix0 <= 8) {
        // a small tile: plain stores beat TypedArray.fill's call overhead
        for (let r = iy0; r < iy1; r++) for (let p = r * S + ix0, e = r * S + ix1; p < e; p++) px[p] = c;
      } else {
        for (let r = iy0; r < iy1; r++) px.fill(c, r * S + ix0, r * S + ix1);
      }
    }
    return seen;
  }

  pixelImage(W, H) {
    // a white W x H raster (ImageData and its pixels as uint32)
    const img = new ImageData(W, H), px = new Uint32Array(img.data.buffer);
    px.fill(0xffffffff);
    return { img, px };
  }

  aggregate() {
    // the whole extent rasterised once per scene at up to AGG_PIXELS pixels a side
    if (this.agg) return this.agg;
    const s = this.scene, k = AGG_PIXELS / Math.max(s.width, s.height);
    const W = Math.max(1, Math.round(s.width * k)), H = Math.max(1, Math.round(s.height * k));
    const { img, px } = this.pixelImage(W, H);
    this.raster(this.whole(px, W, H), null, null, null);
    const c = document.createElement("canvas");
    c.width = W; c.height = H;
    c.getContext("2d").putImageData(img, 0, 0);
    this.agg = { canvas: c, kx: W / s.width, ky: H / s.height };
    return this.agg;
  }

  whole(px, W, H) {
    // a W x H raster of the whole extent [0, width] x [0, height]
    const s = this.scene;
    return { px, W, H, x0: 0, y0: 0, y1: s.height, kx: W / s.width, ky: H / s.height, yflip: !!s.meta.yflip, vx0: 0, vy0: 0, vx1: W, vy1: H };
  }

  layerRect(kx, ky) {
    // the view plus LAYER_MARGIN of it on each side, cut to the tiles' extent, in whole pixels
    // counted from the view's top-left corner: after a pan by whole pixels the layer's pixels
    // land exactly where a fresh raster would put them. Returns the data rectangle and W x H.
    const v = this.view, e = this.scene.extent, yflip = !!this.scene.meta.yflip;
    const vw = (v.x1 - v.x0) * kx, vh = (v.y1 - v.y0) * ky;
    const mx = Math.round(vw * LAYER_MARGIN), my = Math.round(vh * LAYER_MARGIN);
    const a = Math.max(-mx, Math.floor((e[0] - v.x0) * kx)), b = Math.min(Math.ceil(vw) + mx, Math.ceil((e[2] - v.x0) * kx));
    // rows down from the view's top edge: data y0, or y1 when the y axis points up
    const top = yflip ? (v.y1 - e[3]) * ky : (e[1] - v.y0) * ky, bottom = yflip ? (v.y1 - e[1]) * ky : (e[3] - v.y0) * ky;
    const c = Math.max(-my, Math.floor(top)), d = Math.min(Math.ceil(vh) + my, Math.ceil(bottom));
    const [y0, y1] = yflip ? [v.y1 - d / ky, v.y1 - c / ky] : [v.y0 + c / ky, v.y0 + d / ky];
    return { x0: v.x0 + a / kx, y0, x1: v.x0 + b / kx, y1, W: b - a, H: d - c };
  }

  rasterise() {
    // (re)build the layer for the current view and scale
    const t0 = performance.now();
    this.rasters = (this.rasters || 0) + 1;
    const s = this.scene, dpr = this.dpr, kx = this.sx() * dpr, ky = this.sy() * dpr;
    const { x0, y0, x1, y1, W, H } = this.layerRect(kx, ky);
    const e = s.extent, area = (e[2] - e[0]) * (e[3] - e[1]) || 1;
    const share = Math.max(0, x1 - x0) * Math.max(0, y1 - y0) / area;
    const L = this.layer || (this.layer = { canvas: document.createElement("canvas") });
    L.scene = s; L.kx = kx; L.ky = ky; L.yflip = !!s.meta.yflip;
    if (W <= 0 || H <= 0) { Object.assign(L, { empty: true, x0, y0, x1, y1, seen: 0 }); return; }
    L.empty = false;
    const v = this.view;
    Object.assign(L, { x0, y0, x1, y1, W, H, vx0: (v.x0 - x0) * kx, vx1: (v.x1 - x0) * kx });
    [L.vy0, L.vy1] = L.yflip ? [(y1 - v.y1) * ky, (y1 - v.y0) * ky] : [(v.y0 - y0) * ky, (v.y1 - y0) * ky];
    // the aggregated raster stands in while there are too many tiles to draw one by one, or
    // while it has at least half the screen's resolution (a tile of it is then at most 2 x 2
    // pixels: the picture a raster of the tiles would give, for no per-tile work)
    const ak = AGG_PIXELS / Math.max(s.width, s.height);
    if (s.n > AGGREGATE && (s.n * share > AGGREGATE || (kx <= 2 * ak && ky <= 2 * ak))) {
      // tiles in view, assuming them spread evenly
      const e = s.extent, seen = Math.max(0, Math.min(v.x1, e[2]) - Math.max(v.x0, e[0])) * Math.max(0, Math.min(v.y1, e[3]) - Math.max(v.y0, e[1]));
      L.agg = this.aggregate();
      L.seen = Math.round((s.n * seen) / area);
      L.counted = this.viewKey();
      this.rasterMs = performance.now() - t0;
      return;
    }
    L.agg = null;
    if (!L.img || L.img.width < W || L.img.height < H) {
      // room for a few more pixels than needed: the size changes by a pixel with the view,
      // and reallocating the buffer and the canvas would cost more than the raster
      const cw = Math.ceil(W * 1.05) + 8, ch = Math.ceil(H * 1.05) + 8;
      Object.assign(L, this.pixelImage(cw, ch));
      L.canvas.width = cw; L.canvas.height = ch;
      L.ctx = L.canvas.getContext("2d");
    } else L.px.fill(0xffffffff);
    L.stride = L.img.width;
    // few tiles of many in the layer: only those the grid index says may meet it (past a
    // twentieth of the extent, one pass over all the boxes is quicker than the index)
    const ids = s.n > 20000 && share < 0.05 ? s.tilesIn(x0, y0, x1, y1) : null;
    const outlines = s.outlineLists, hatches = s.hatchLists;
    for (const a of outlines) a.length = 0;
    for (const a of hatches) a.length = 0;
    L.seen = this.raster(L, ids, outlines, hatches);
    L.counted = this.viewKey();
    const g = L.ctx;
    g.setTransform(1, 0, 0, 1, 0, 0);
    g.putImageData(L.img, 0, 0, 0, 0, W, H);
    // vectors in css px of the layer, like the frame's
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const rect = (i) => {
      const B = s.boxes, x = B[4 * i], y = B[4 * i + 1], w = B[4 * i + 2], h = B[4 * i + 3];
      const ya = L.yflip ? (y1 - y - h) * ky : (y - y0) * ky;
      g.rect((x - x0) * kx / dpr, ya / dpr, w * kx / dpr, h * ky / dpr);
    };
    s.styles.forEach((st, k) => {
      if (!hatches[k].length) return;
      g.beginPath();
      for (const i of hatches[k]) rect(i);
      g.fillStyle = s.pattern(g, k);
      g.fill();
    });
    s.styles.forEach((st, k) => {
      if (!outlines[k].length) return;
      g.beginPath();
      for (const i of outlines[k]) rect(i);
      g.setLineDash(st.dash || []);
      g.lineWidth = st.width || 1;
      g.strokeStyle = st.edge;
      g.stroke();
    });
    g.setLineDash([]);
    this.rasterMs = performance.now() - t0;
  }

  viewKey() {
    const v = this.view;
    return `${v.x0},${v.y0},${v.x1},${v.y1}`;
  }

  countInView() {
    // the tiles meeting the view (the status line's count; an aggregated layer estimates it)
    const L = this.layer, s = this.scene, v = this.view, B = s.boxes;
    L.counted = this.viewKey();
    if (L.agg) return;
    let seen = 0;
    for (let i = 0; i < s.n; i++) {
      const x = B[4 * i], y = B[4 * i + 1];
      if (x + B[4 * i + 2] > v.x0 && x < v.x1 && y + B[4 * i + 3] > v.y0 && y < v.y1) seen++;
    }
    L.seen = seen;
  }

  layerFits() {
    // the layer still serves this view: same scene and pixel ratio, covers the view's part of
    // the extent, and zooming has not moved the scale too far from the layer's
    const L = this.layer, s = this.scene, v = this.view, e = s.extent;
    if (!L || L.scene !== s || L.dpr !== this.dpr || L.stale) return false;
    const rx = (this.sx() * this.dpr) / L.kx, ry = (this.sy() * this.dpr) / L.ky;
    for (const r of [rx, ry]) if (r > LAYER_RESCALE || r < 1 / LAYER_RESCALE) return false;
    const x0 = Math.max(v.x0, e[0]), x1 = Math.min(v.x1, e[2]), y0 = Math.max(v.y0, e[1]), y1 = Math.min(v.y1, e[3]);
    if (!(x1 > x0 && y1 > y0)) return true;
    const tx = 0.5 / L.kx, ty = 0.5 / L.ky;
    if (L.empty) return false;
    return x0 >= L.x0 - tx && x1 <= L.x1 + tx && y0 >= L.y0 - ty && y1 <= L.y1 + ty;
  }

  exact() {
    // the layer was drawn for this very view (no settle re-raster needed)
    const L = this.layer, v = this.view;
    if (!L || L.agg) return true;
    const rx = (this.sx() * this.dpr) / L.kx, ry = (this.sy() * this.dpr) / L.ky;
    if (Math.abs(rx - 1) > 1e-9 || Math.abs(ry - 1) > 1e-9) return false;
    // recentre once the margin left on a side is below half of it
    const mx = (v.x1 - v.x0) * LAYER_MARGIN / 2, my = (v.y1 - v.y0) * LAYER_MARGIN / 2, e = this.scene.extent;
    return (v.x0 - L.x0 >= mx || L.x0 <= e[0]) && (L.x1 - v.x1 >= mx || L.x1 >= e[2])
      && (v.y0 - L.y0 >= my || L.y0 <= e[1]) && (L.y1 - v.y1 >= my || L.y1 >= e[3]);
  }

  blit() {
    // the layer onto the plot area at the current view
    const L = this.layer, ctx = this.ctx, dpr = this.dpr, m = this.m, v = this.view;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    const px0 = Math.round(m.left * dpr), py0 = Math.round(m.top * dpr);
    const pw = Math.round(this.pw * dpr), ph = Math.round(this.ph * dpr);
    ctx.fillStyle = "#fff";
    ctx.fillRect(px0, py0, pw, ph);
    if (L.empty) return;
    const kx = this.sx() * dpr, ky = this.sy() * dpr;
    let dx = m.left * dpr + (L.x0 - v.x0) * kx;
    let dy = m.top * dpr + (this.scene.meta.yflip ? (v.y1 - L.y1) * ky : (L.y0 - v.y0) * ky);
    let dw = (L.x1 - L.x0) * kx, dh = (L.y1 - L.y0) * ky;
    ctx.save();
    ctx.beginPath();
    ctx.rect(px0, py0, pw, ph);
    ctx.clip();
    ctx.imageSmoothingEnabled = false;
    if (L.agg) {
      const a = L.agg, s = this.scene;
      const sy0 = s.meta.yflip ? (s.height - L.y1) * a.ky : L.y0 * a.ky;
      ctx.drawImage(a.canvas, L.x0 * a.kx, sy0, (L.x1 - L.x0) * a.kx, (L.y1 - L.y0) * a.ky, dx, dy, dw, dh);
    } else {
      if (Math.abs(kx / L.kx - 1) < 1e-9 && Math.abs(ky / L.ky - 1) < 1e-9) {
        // same scale: a whole-pixel copy
        dx = Math.round(dx); dy = Math.round(dy); dw = L.W; dh = L.H;
      }
      ctx.drawImage(L.canvas, 0, 0, L.W, L.H, dx, dy, dw, dh);
    }
    ctx.restore();
  }

  draw() {
    if (!this.scene || !this.view) return;
    const t0 = performance.now();
    const s = this.scene, ctx = this.ctx, dpr = this.dpr;
    this.rasterMs = 0;
    if (!this.layerFits()) {
      this.rasterise();
      this.layer.dpr = dpr;
      this.layer.stale = false;
    }
    this.blit();
    clearTimeout(this.settleTimer);
    if (!this.exact() || this.layer.counted !== this.viewKey()) {
      // once the view is still: zoomed (a scaled copy) or near the layer's edge, a fresh
      // raster; else the tiles in view counted again for the status line
      this.settleTimer = setTimeout(() => {
        if (!this.layer || this.layer.scene !== this.scene) return;
        if (!this.exact()) this.layer.stale = true;
        else this.countInView();
        this.draw();
      }, SETTLE_MS);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.save();
    ctx.beginPath();
    ctx.rect(this.m.left, this.m.top, this.pw, this.ph);
    ctx.clip();
    // the lit read (table row / stepper) and the hovered tile
    const h = this.model.get("highlight");
    this.lit = h !== null && h !== undefined && h >= 0 ? s.readTiles.get(h) || [] : [];
    for (const i of this.lit) {
      const r = this.tileRect(i);
      ctx.lineWidth = 5; ctx.strokeStyle = "#ffd400"; ctx.strokeRect(r.x, r.y, r.w, r.h);
      ctx.lineWidth = 1.5; ctx.strokeStyle = "#000"; ctx.strokeRect(r.x, r.y, r.w, r.h);
    }
    if (this.hover >= 0 && this.hover < s.n) {
      const r = this.tileRect(this.hover);
      ctx.lineWidth = 2; ctx.strokeStyle = "#e6007e"; ctx.strokeRect(r.x, r.y, r.w, r.h);
    }
    this.drawGroups();
    this.placeLabels();
    ctx.restore();
    this.drawAxes();
    this.drawMinimap();
    this.finish(t0, this.layer.seen, !!this.layer.agg);
  }

  finish(t0, counted, aggregated) {
    const s = this.scene, v = this.view;
    const ms = performance.now() - t0;
    this.frames.push(ms);
    if (this.frames.length > 240) this.frames.shift();
    this.root.dataset.frameMs = ms.toFixed(2);
    this.root.dataset.rasterMs = this.rasterMs.toFixed(2);
    this.root.dataset.aggregated = String(aggregated);
    this.root.dataset.labels = String(this.placed.length);
    this.root.dataset.visibleTiles = String(counted);
    const z = Math.max(s.width / (v.x1 - v.x0), s.height / (v.y1 - v.y0));
    const text = s.meta.mode === "chunks"
      ? `view rows ${Math.max(0, Math.floor(v.y0))}:${Math.min(s.height, Math.ceil(v.y1))}, cols ${Math.max(0, Math.floor(v.x0))}:${Math.min(s.width, Math.ceil(v.x1))}  zoom ${z.toFixed(z < 10 ? 2 : 0)}x  ${aggregated ? `~${counted} of ${s.n} tiles, aggregated per pixel (zoom in for tiles)` : `${counted} of ${s.n} tiles`}  ${ms.toFixed(1)} ms`
      : `zoom ${z.toFixed(2)}x  ${ms.toFixed(1)} ms`;
    // written only when it changes (the frame time is rounded to 0.1 ms)
    if (text !== this.statusText) { this.statusText = text; this.status.textContent = text; }
  }

  drawGroups() {
    const g = this.scene.meta.groups;
    if (!g) return;
    const ctx = this.ctx;
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#222";
    for (const [, x, y, w, h] of g) {
      const xa = this.toX(x), ya = this.toY(y), wa = this.toX(x + w) - xa, ha = this.toY(y + h) - ya;
      ctx.strokeRect(xa, ya, wa, ha);
    }
  }

  measure(text, font = FONT) {
    // the widest line of text in font, remembered across frames and scenes
    const key = font === FONT ? text : `${font}\u0000${text}`;
    let w = this.textWidth.get(key);
    if (w === undefined) {
      this.ctx.font = font;
      w = Math.max(...text.split("\n").map((t) => this.ctx.measureText(t).width));
      this.textWidth.set(key, w);
    }
    return w;
  }

  placeLabels() {
    // greedy by priority (group names of a model map, the lit read, then the rank's reads,
    // then saved chunks), only inside the tile's visible part and never over a label already
    // placed
    const s = this.scene, ctx = this.ctx, placed = [];
    this.placed = placed;
    const captions = this.groupCaptions();
    if (!s.labels.length && !captions.length) return;
    const lit = new Set(this.lit || []);
    const sel = this.model.get("selected_rank");
    const cand = [];
    const named = new Set(captions.map((b) => b.text));
    for (const l of s.labels) {
      // a group of one tensor named like it: its caption says it already
      if (named.has(l[1])) continue;
      const i = l[0];
      if (!(i >= 0 && i < s.n)) continue;
      const r = this.tileRect(i);
      const x0 = Math.max(r.x, this.m.left), y0 = Math.max(r.y, this.m.top);
      const x1 = Math.min(r.x + r.w, this.m.left + this.pw), y1 = Math.min(r.y + r.h, this.m.top + this.ph);
      if (x1 - x0 < 12 || y1 - y0 < 8) continue;
      const pri = l[2] + (lit.has(i) ? 100 : 0) + (s.ranks[i] === sel && s.meta.mode !== "chunks" ? 10 : 0);
      cand.push([pri, (x1 - x0) * (y1 - y0), i, l[1], x0, y0, x1, y1]);
    }
    cand.sort((a, b) => b[0] - a[0] || b[1] - a[1]);
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    ctx.textAlign = "center";
    const cell = 48, grid = new Map();
    const overlaps = (b) => {
      for (let gx = Math.floor(b.x / cell); gx <= Math.floor((b.x + b.w) / cell); gx++)
        for (let gy = Math.floor(b.y / cell); gy <= Math.floor((b.y + b.h) / cell); gy++)
          for (const o of grid.get(gx * 100003 + gy) || [])
            if (b.x < o.x + o.w && o.x < b.x + b.w && b.y < o.y + o.h && o.y < b.y + b.h) return true;
      return false;
    };
    const keep = (b) => {
      placed.push(b);
      for (let gx = Math.floor(b.x / cell); gx <= Math.floor((b.x + b.w) / cell); gx++)
        for (let gy = Math.floor(b.y / cell); gy <= Math.floor((b.y + b.h) / cell); gy++) {
          const key = gx * 100003 + gy;
          if (!grid.has(key)) grid.set(key, []);
          grid.get(key).push(b);
        }
    };
    for (const b of captions) if (!overlaps(b)) keep(b);
    // the rank's own box is named only while none of its reads is (they say it already, and
    // its name would sit in a gap between theirs)
    const readK = s.kindCode.read, targetK = s.kindCode.target;
    let readNamed = false;
    for (const [, , i, text, x0, y0, x1, y1] of cand) {
      if (placed.length >= 600) break;
      if (readNamed && s.kinds[i] === targetK) continue;
      const lines = text.split("\n");
      const w = this.measure(text) + 6, h = lines.length * LINE + 2;
      if (w > x1 - x0 || h > y1 - y0) continue;
      const b = { x: (x0 + x1) / 2 - w / 2, y: (y0 + y1) / 2 - h / 2, w, h, tile: i, text };
      if (overlaps(b)) continue;
      keep(b);
      if (s.kinds[i] === readK) readNamed = true;
    }
    ctx.lineWidth = 3;
    ctx.strokeStyle = "rgba(255,255,255,0.9)";
    ctx.fillStyle = "#000";
    for (const b of placed) {
      ctx.font = b.tile < 0 ? GROUP_FONT : FONT;
      ctx.textAlign = b.tile < 0 ? "left" : "center";
      const lines = b.text.split("\n");
      lines.forEach((t, k) => {
        const y = b.y + 1 + LINE / 2 + k * LINE;
        const x = b.tile < 0 ? b.x + 3 : b.x + b.w / 2;
        ctx.strokeText(t, x, y);
        ctx.fillText(t, x, y);
      });
    }
  }

  groupCaptions() {
    // each group's name in the top-left corner of its visible part, where it fits (tile -1)
    const g = this.scene.meta.groups, out = [];
    if (!g) return out;
    const m = this.m;
    for (const [name, x, y, w, h] of g) {
      const xa = this.toX(x), xb = this.toX(x + w), ya = this.toY(y), yb = this.toY(y + h);
      const x0 = Math.max(Math.min(xa, xb), m.left), x1 = Math.min(Math.max(xa, xb), m.left + this.pw);
      const y0 = Math.max(Math.min(ya, yb), m.top), y1 = Math.min(Math.max(ya, yb), m.top + this.ph);
      const bw = this.measure(name, GROUP_FONT) + 6, bh = LINE + 2;
      if (bw > x1 - x0 - 4 || 2 * bh > y1 - y0) continue;
      out.push({ x: x0 + 2, y: y0 + 2, w: bw, h: bh, tile: -1, text: String(name) });
    }
    return out;
  }

  ticks(lo, hi, pixels, fmt, given) {
    if (given) {
      const inside = given.filter(([p]) => p >= lo && p <= hi);
      const keep = Math.max(1, Math.ceil(inside.length / Math.max(1, pixels / 60)));
      return inside.filter((_, k) => k % keep === 0).map(([p, t]) => [p, String(t)]);
    }
    const raw = (hi - lo) / Math.max(2, pixels / 80);
    const step = fmt === "bytes" ? niceBytesStep(raw) : niceStep(raw, true);
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi && out.length < 100; t += step)
      out.push([t, fmt === "bytes" ? humanBytes(t) : String(Math.round(t))]);
    return out;
  }

  drawAxes() {
    const s = this.scene, ctx = this.ctx, m = this.m, v = this.view;
    if (s.meta.axes === false) return;
    ctx.strokeStyle = "#333";
    ctx.lineWidth = 1;
    ctx.strokeRect(m.left - 0.5, m.top - 0.5, this.pw + 1, this.ph + 1);
    ctx.fillStyle = "#222";
    ctx.font = FONT;
    // x ticks: true tensor indices at every zoom
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const xt = this.ticks(Math.max(v.x0, 0), Math.min(v.x1, s.width), this.pw, "", s.meta.xticks);
    let right = -Infinity; // a tick label is skipped where it would touch the one before
    for (const [t, label] of xt) {
      const x = this.toX(t);
      const text = label.length > 14 ? label.slice(0, 13) + "\u2026" : label, half = this.measure(text) / 2;
      if (x - half < right + 8) continue;
      right = x + half;
      ctx.font = FONT;
      ctx.beginPath(); ctx.moveTo(x, m.top + this.ph); ctx.lineTo(x, m.top + this.ph + 4); ctx.stroke();
      ctx.fillText(text, x, m.top + this.ph + 6);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const yt = this.ticks(Math.max(v.y0, 0), Math.min(v.y1, s.height), this.ph, s.meta.yformat, s.meta.yticks);
    for (const [t, label] of yt) {
      const y = this.toY(t);
      ctx.beginPath(); ctx.moveTo(m.left - 4, y); ctx.lineTo(m.left, y); ctx.stroke();
      ctx.fillText(label, m.left - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    if (s.meta.xlabel) ctx.fillText(s.meta.xlabel, m.left + this.pw / 2, this.cssH - 2);
    if (s.meta.ylabel) {
      ctx.save();
      ctx.translate(12, m.top + this.ph / 2);
      ctx.rotate(-Math.PI / 2);
      ctx.textBaseline = "middle";
      ctx.fillText(s.meta.ylabel, 0, 0);
      ctx.restore();
    }
  }

  drawMinimap() {
    const s = this.scene, v = this.view;
    const zoomed = v.x0 > 0.5 || v.y0 > 0.5 || v.x1 < s.width - 0.5 || v.y1 < s.height - 0.5;
    const shown = zoomed && (v.x1 - v.x0) * (v.y1 - v.y0) < 0.8 * s.width * s.height;
    this.mini.style.display = shown ? "block" : "none";
    if (!shown) return;
    const k = Math.min(160 / s.width, 110 / s.height);
    const w = Math.max(24, Math.round(s.width * k)), h = Math.max(16, Math.round(s.height * k));
    if (!this.thumb || this.thumb.width !== w) {
      const c = document.createElement("canvas");
      c.width = w; c.height = h;
      if (s.n > AGGREGATE) {
        // 10^6 tiles: shrink the aggregated raster rather than rasterise them again
        const g = c.getContext("2d");
        g.imageSmoothingEnabled = true;
        g.imageSmoothingQuality = "low"; // "high" filters all 4M pixels: tens of ms
        g.drawImage(this.aggregate().canvas, 0, 0, w, h);
      } else {
        const { img, px } = this.pixelImage(w, h);
        this.raster(this.whole(px, w, h), null, null, null);
        c.getContext("2d").putImageData(img, 0, 0);
      }
      this.thumb = c;
    }
    if (this.mini.width !== w || this.mini.height !== h) {
      // (setting a canvas's size, even to the same value, reallocates and clears it)
      this.mini.width = w; this.mini.height = h;
      this.mini.style.width = `${w}px`; this.mini.style.height = `${h}px`;
    }
    this.mini.style.left = `${this.m.left + this.pw - w - 6}px`;
    this.mini.style.top = `${this.m.top + this.ph - h - 6}px`;
    const g = this.mini.getContext("2d");
    g.drawImage(this.thumb, 0, 0);
    g.strokeStyle = "#e6007e";
    g.lineWidth = 2;
    const ya = s.meta.yflip ? (s.height - v.y1) * (h / s.height) : v.y0 * (h / s.height);
    g.strokeRect(v.x0 * (w / s.width), ya, (v.x1 - v.x0) * (w / s.width), (v.y1 - v.y0) * (h / s.height));
    this.miniK = [w / s.width, h / s.height];
  }

  // ------------------------------------------------------------------ interaction
  local(e) {
    const r = this.canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  inPlot(px, py) {
    return px >= this.m.left && px <= this.m.left + this.pw && py >= this.m.top && py <= this.m.top + this.ph;
  }

  tooltipLines(i, stack) {
    const s = this.scene, m = s.meta, kind = s.kind(i);
    if (m.tips) return m.tips[s.items[i]] || [];
    const lines = [], nd = s.nd, box = boxText(s.extents, i, nd);
    const file = () => {
      const f = s.facts[3 * i], off = s.facts[3 * i + 1], len = s.facts[3 * i + 2];
      if (!isFinite(f)) return null;
      const range = isFinite(off) ? `bytes [${off}, ${off + len})` : "offset not recorded";
      return `file ${m.files[f]}, ${range} (${humanBytes(len)})`;
    };
    const elems = () => { let p = 1; for (let d = 0; d < nd; d++) p *= s.extents[i * 2 * nd + nd + d]; return p; };
    if (kind === "saved") {
      lines.push(`saved chunk #${s.items[i]} ${box}`);
      lines.push(s.ranks[i] >= 0 ? `writer rank ${s.ranks[i]}` : "writer rank unknown");
      const f = file(); if (f) lines.push(f); else lines.push(`${humanBytes(elems() * (m.element_size || 1))}`);
    } else if (kind === "read") {
      const k = s.items[i];
      const cols = m.read_columns || [];
      const row = (m.reads || []).find((r) => r[cols.indexOf("order")] === k);
      const get = (c) => (row ? row[cols.indexOf(c)] : null);
      lines.push(`read item ${k} of load rank ${m.rank} (DCP's order, 0-based)`);
      lines.push(`destination region ${get("dest_region") || box}`);
      if (get("storage_region")) lines.push(`storage region ${get("storage_region")} of saved chunk #${get("source_chunk")}`);
      const w = get("writer");
      lines.push(w !== null && w !== undefined ? `writer rank ${w}` : "writer rank unknown");
      const f = file(); if (f) lines.push(`reads the whole saved chunk: ${f}`);
      lines.push(`keeps ${humanBytes(elems() * (m.element_size || 1))}`);
      for (const p of m.problems || []) if (!p.ranks.length || p.ranks.includes(m.rank)) lines.push(`problem: ${p.kind} (${p.severity}): ${p.message}`);
    } else if (kind === "wanted") {
      lines.push(`load rank ${s.ranks[i]} wants ${box}`);
      lines.push(`click: show rank ${s.ranks[i]}'s reads`);
    } else if (kind === "target") {
      lines.push(`load rank ${s.ranks[i]}'s chunk ${box}`);
    } else if (kind === "uncovered") {
      lines.push("uncovered: no saved chunk holds this region; it keeps stale values after load");
    } else if (kind === "held") {
      lines.push(`rows load rank ${s.ranks[i]} really holds (its box misdescribes them)`);
    }
    if (kind !== "wanted" && stack) {
      const w = stack.filter((j) => s.kind(j) === "wanted").map((j) => s.ranks[j]);
      if (w.length) lines.push(`wanted here by load rank${w.length > 1 ? "s" : ""} ${w.slice(0, 8).join(", ")}${w.length > 8 ? " ..." : ""} (click to select)`);
    }
    return lines;
  }

  showTip(px, py) {
    const s = this.scene;
    if (!s || !this.inPlot(px, py)) { this.hideTip(); return; }
    const stack = s.hits(this.fromX(px), this.fromY(py));
    const i = s.best(stack);
    if (i !== this.hover) { this.hover = i; this.schedule(); }
    if (i < 0) { this.hideTip(); return; }
    const lines = this.tooltipLines(i, stack);
    this.tip.replaceChildren(...lines.map((t) => el("div", "wb-canvas-tip-line", t)));
    this.tip.style.display = "block";
    const left = Math.min(px + 14, this.cssW - 320);
    this.tip.style.left = `${Math.max(0, left)}px`;
    this.tip.style.top = `${py + 14}px`;
    this.root.dataset.hover = String(i);
  }

  hideTip() {
    this.tip.style.display = "none";
    if (this.hover !== -1) { this.hover = -1; this.schedule(); }
  }

  click(px, py) {
    const s = this.scene;
    if (!s || !this.inPlot(px, py)) return;
    const stack = s.hits(this.fromX(px), this.fromY(py));
    const i = s.best(stack);
    if (i < 0) return;
    const mode = s.meta.click;
    if (mode === "pick") {
      this.picks = (this.picks || 0) + 1;
      this.model.set("picked", { index: s.items[i], count: this.picks });
      this.model.save_changes();
      return;
    }
    if (s.kind(i) === "read") { this.setHighlight(s.items[i]); return; }
    const wanted = stack.filter((j) => s.kind(j) === "wanted");
    const r = wanted.length ? s.ranks[wanted[wanted.length - 1]] : s.ranks[i];
    if (r >= 0) {
      this.model.set("selected_rank", r);
      this.model.save_changes();
    }
  }

  bind() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [px, py] = this.local(e);
      this.zoomAt(px, py, Math.pow(1.0015, -e.deltaY));
    }, { passive: false });
    c.addEventListener("mousedown", (e) => {
      const [px, py] = this.local(e);
      drag = { px, py, x: px, y: py, moved: false };
      this.root.focus({ preventScroll: true });
    });
    window.addEventListener("mousemove", this.onMove = (e) => {
      if (!drag) return;
      const [px, py] = this.local(e);
      if (Math.abs(px - drag.px) + Math.abs(py - drag.py) > 3) drag.moved = true;
      if (drag.moved) { this.pan(px - drag.x, py - drag.y); drag.x = px; drag.y = py; }
    });
    window.addEventListener("mouseup", this.onUp = (e) => {
      if (!drag) return;
      const d = drag;
      drag = null;
      if (!d.moved) { const [px, py] = this.local(e); this.click(px, py); }
    });
    c.addEventListener("mousemove", (e) => {
      if (drag && drag.moved) return;
      const [px, py] = this.local(e);
      this.showTip(px, py);
    });
    c.addEventListener("mouseleave", () => this.hideTip());
    c.addEventListener("dblclick", (e) => { e.preventDefault(); this.fit(); });
    this.mini.addEventListener("click", (e) => {
      const r = this.mini.getBoundingClientRect(), [kx, ky] = this.miniK;
      const x = (e.clientX - r.left) / kx;
      let y = (e.clientY - r.top) / ky;
      if (this.scene.meta.yflip) y = this.scene.height - y;
      const v = this.view, hw = (v.x1 - v.x0) / 2, hh = (v.y1 - v.y0) / 2;
      this.view = { x0: x - hw, x1: x + hw, y0: y - hh, y1: y + hh };
      this.schedule(); this.reportView();
    });
    this.root.addEventListener("keydown", (e) => {
      const k = e.key, step = 60;
      const act = {
        "+": () => this.zoomCenter(1.5), "=": () => this.zoomCenter(1.5), "-": () => this.zoomCenter(1 / 1.5),
        "0": () => this.fit(), r: () => this.zoomToRank(),
        ArrowLeft: () => this.pan(step, 0), a: () => this.pan(step, 0),
        ArrowRight: () => this.pan(-step, 0), d: () => this.pan(-step, 0),
        ArrowUp: () => this.pan(0, step), w: () => this.pan(0, step),
        ArrowDown: () => this.pan(0, -step), s: () => this.pan(0, -step),
      }[k];
      if (act) { e.preventDefault(); e.stopPropagation(); act(); }
    });
    this.ro = new ResizeObserver(() => {
      const w = Math.floor(this.root.clientWidth || 0);
      if (w && Math.abs(w - this.cssW) > 2 && this.scene) {
        const v = this.view;
        this.resize();
        this.setView(v.x0, v.y0, v.x1, v.y1, false);
        this.thumb = null;
        this.schedule();
      }
    });
    this.ro.observe(this.root);
    const m = this.model;
    this.handlers = [
      ["change:scene_id", () => { this.keepView = !!m.get("keep_view"); this.load(true); }],
      ["change:highlight", () => { this.markRow(); this.schedule(); }],
      ["change:selected_rank", () => this.schedule()],
      ["change:error", () => { this.error.textContent = m.get("error") || ""; }],
      ["change:view", () => {
        const v = m.get("view");
        const last = this.lastReported;
        if (v && v.length === 4 && !(last && v.every((x, k) => x === last[k]))) this.setView(v[0], v[1], v[2], v[3], true);
      }],
      ["change:height", () => { this.resize(); this.fit(); }],
    ];
    for (const [ev, fn] of this.handlers) m.on(ev, fn);
  }

  dispose() {
    for (const [ev, fn] of this.handlers) this.model.off(ev, fn);
    window.removeEventListener("mousemove", this.onMove);
    window.removeEventListener("mouseup", this.onUp);
    clearTimeout(this.settleTimer);
    clearTimeout(this.viewTimer);
    this.ro.disconnect();
  }

  // ------------------------------------------------------------------ test hook
  hook() {
    const self = this;
    const page = (x, y) => {
      const r = self.canvas.getBoundingClientRect();
      return [r.left + self.toX(x), r.top + self.toY(y)];
    };
    return {
      state() {
        const v = self.view, s = self.scene;
        return {
          view: v && [v.x0, v.y0, v.x1, v.y1], n: s ? s.n : 0, frameMs: self.frames[self.frames.length - 1],
          labels: self.placed.map((b) => ({ text: b.text, x: b.x, y: b.y, w: b.w, h: b.h, tile: b.tile })),
          selected: self.model.get("selected_rank"), highlight: self.model.get("highlight"),
          scene: self.model.get("scene_id"), lit: self.lit || [], rasters: self.rasters,
        };
      },
      redraw() {
        // a frame drawn from a fresh raster of the current view (the layer thrown away)
        if (self.layer) self.layer.stale = true;
        self.draw();
      },
      checksum() {
        // of the canvas's pixels: compares two frames without shipping them
        const c = self.canvas, px = new Uint32Array(self.ctx.getImageData(0, 0, c.width, c.height).data.buffer);
        let h = 2166136261;
        for (let i = 0; i < px.length; i++) h = Math.imul(h ^ px[i], 16777619);
        return h >>> 0;
      },
      toPage: page,
      find(kind, item) {
        const s = self.scene;
        for (let i = 0; i < s.n; i++) if (s.kind(i) === kind && (item === undefined || s.items[i] === item)) return i;
        return -1;
      },
      tileCenter(i) {
        // the centre of the tile's visible part, in page coordinates
        const r = self.tileRect(i), c = self.canvas.getBoundingClientRect();
        const x0 = Math.max(r.x, self.m.left), x1 = Math.min(r.x + r.w, self.m.left + self.pw);
        const y0 = Math.max(r.y, self.m.top), y1 = Math.min(r.y + r.h, self.m.top + self.ph);
        return [c.left + (x0 + x1) / 2, c.top + (y0 + y1) / 2];
      },
      tooltip(i) { return self.tooltipLines(i, []); },
      meta() { return self.scene ? self.scene.meta : {}; },
      fit() { self.fit(); self.draw(); },
      zoomToRank() { self.zoomToRank(); self.draw(); },
      setView(x0, y0, x1, y1) { self.setView(x0, y0, x1, y1, false); self.draw(); },
      bench(frames, how = {}) {
        // [frame ms, of which re-rasterising the layer] per frame of one gesture, drawn
        // synchronously; a one-pixel read-back makes the canvas rasterise what was recorded, so
        // the time includes it. how.zoom: start zoomed in this much on the centre (1: fit);
        // how.pan: [dx, dy] css px per frame, one way, as a drag does; how.wheel: a zoom factor
        // per frame (in for half the frames, then out); how.raster: re-rasterise every frame
        // (the first frame's and a settle's cost)
        clearTimeout(self.settleTimer);
        self.fit(false);
        const z = how.zoom || 1, v = self.view, cx = (v.x0 + v.x1) / 2, cy = (v.y0 + v.y1) / 2;
        const hw = (v.x1 - v.x0) / 2 / z, hh = (v.y1 - v.y0) / 2 / z;
        self.setView(cx - hw, cy - hh, cx + hw, cy + hh, false);
        self.draw();
        const out = [], [dx, dy] = how.pan || [0, 0], f = how.wheel || 1;
        for (let k = 0; k < frames; k++) {
          if (how.raster) { self.layer.stale = true; self.pan(k % 2 ? 3 : -3, 0); }
          else if (f !== 1) self.zoomCenter(k < frames / 2 ? f : 1 / f);
          else self.pan(dx, dy);
          const t0 = performance.now();
          self.draw();
          self.ctx.getImageData(self.m.left + 1, self.m.top + 1, 1, 1);
          out.push([performance.now() - t0, self.rasterMs]);
        }
        clearTimeout(self.settleTimer);
        self.fit();
        return out;
      },
    };
  }
}

function render({ model, el }) {
  const v = new CanvasView(model, el);
  return () => v.dispose();
}

export default { render };
