"""Results that display themselves: the HTML a notebook shows for a result left as the last line
of a cell (``_repr_html_``), and the plain text beside it.

`LoadPlanResult`, `SavePlanResult`, `Checkpoint`, problem lists (`diagnosis.Problems`),
`VersionComparison` and `CapturedTarget` call the ``*_html`` function here lazily from their
``_repr_html_``: a summary line, counts, a small inline SVG picture drawn from the picture data
(`picture_data.bytes_per_rank_data`) and the problems table, as pandas and treescope objects show
themselves. Everything is built as text with the standard library: no pandas, matplotlib or
torch, so a result displays in any front end that renders HTML, and importing this module costs
nothing. Untrusted text (keys, file names, paths, messages: they come from a stranger's
checkpoint) goes through `html.escape` in `text`, the one way text gets into the markup here.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from .formatting import format_bytes, format_ranks
from .picture_data import WRITTEN_COLOR, BarsData, bytes_per_rank_data

__all__ = [
    "MAX_PROBLEM_ROWS",
    "text",
    "html_table",
    "svg_bars",
    "problems_html",
    "load_result_html",
    "save_result_html",
    "checkpoint_html",
    "version_comparison_html",
    "captured_target_html",
]

MAX_PROBLEM_ROWS = 20  # a notebook summary; the full list is the object itself
MAX_ROWS = 20
SEVERITY_BG = {"error": "#fdecea", "silent": "#fff4e5", "warning": "#fffbe6"}
_STYLE = (
    "font: 12.5px/1.4 system-ui, -apple-system, 'Segoe UI', sans-serif; "
    "border-left: 3px solid #9ecae1; padding: 4px 10px; margin: 2px 0"
)
_TABLE = "border-collapse: collapse; font-size: 12px; margin: 4px 0"
_CELL = "border: 1px solid #ddd; padding: 1px 6px; text-align: left; vertical-align: top"


def text(value) -> str:
    """``value`` as text safe inside HTML elements and attribute values (``html.escape``)."""
    return html.escape(str(value), quote=True)


def html_table(headers: Sequence[str], rows: Iterable[Sequence], *, styles=None) -> str:
    """A small HTML table; every header and cell is escaped. ``styles``: an optional CSS
    declaration per row (trusted, ours)."""
    head = "".join(f'<th style="{_CELL}; background: #f5f5f7">{text(h)}</th>' for h in headers)
    body = []
    for i, row in enumerate(rows):
        style = f' style="{styles[i]}"' if styles and styles[i] else ""
        cells = "".join(f'<td style="{_CELL}">{text(c)}</td>' for c in row)
        body.append(f"<tr{style}>{cells}</tr>")
    return f'<table style="{_TABLE}"><tr>{head}</tr>{"".join(body)}</table>'


def _box(title: str, parts: Iterable[str]) -> str:
    """The frame of one summary: a bold first line (already markup) and its parts."""
    return f'<div style="{_STYLE}"><div><b>{title}</b></div>{"".join(parts)}</div>'


def _n(count: int, one: str, many: str | None = None) -> str:
    """``1 entry`` / ``2 entries``."""
    return f"{count} {one if count == 1 else many or one + 's'}"


def _line(*facts: str) -> str:
    return "<div>" + " &middot; ".join(facts) + "</div>"


# ----------------------------------------------------------------------------- pictures
def svg_bars(data, *, width: int = 420, height: int = 90) -> str:
    """A small inline SVG of `picture_data.BarsData` (bytes per rank): one bar per rank, the
    second quantity (bytes needed) as a narrower dark bar in front, a title naming both in
    human units, and a caption under it (the rank range, the tallest bar, the colours). Past ``width / 2`` ranks, ranks are grouped by pixel column (the largest value
    of each group drawn), so the SVG stays a few hundred elements at 4096 ranks."""
    n = len(data.ranks)
    top = max(
        float(data.values.max(initial=0)),
        float(data.reference.max(initial=0)) if data.reference is not None else 0.0,
        1.0,
    )
    plot_h = height - 14
    groups = min(n, width // 2) or 1
    edges = np.linspace(0, n, groups + 1).astype(np.int64)

    def grouped(v):
        return [float(v[a:b].max(initial=0)) for a, b in zip(edges[:-1], edges[1:])]

    bar_w = width / groups
    series = [(grouped(data.values), data.color, 0.0, text(data.label))]
    if data.reference is not None:
        series.append(
            (grouped(data.reference), data.reference_color, 0.25, text(data.reference_label))
        )
    rects = []
    for values, color, inset, _ in series:
        for i, v in enumerate(values):
            h = plot_h * v / top
            rects.append(
                f'<rect x="{i * bar_w + bar_w * inset:.1f}" y="{plot_h - h:.1f}" '
                f'width="{max(bar_w * (1 - 2 * inset) - (0.5 if bar_w > 2 else 0), 0.5):.1f}" '
                f'height="{h:.1f}" fill="{color}"/>'
            )
    legend = " ".join(
        f'<span style="color: {color}">&#9632;</span> {label}' for _, color, _, label in series
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{plot_h + 1}" '
        f'role="img" style="display: block; margin: 4px 0 0 0">'
        f"<title>{text(data.title)}</title>"
        + "".join(rects)
        + f'<line x1="0" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#999" '
        'stroke-width="0.5"/></svg>'
        # the caption as HTML under the picture, where it wraps instead of being cut
        f'<div style="color: #555; font-size: 11px">ranks 0-{n - 1}, tallest '
        f"{text(format_bytes(top))} &#183; {legend}</div>"
    )


# ----------------------------------------------------------------------------- problems
def _severity_counts(problems) -> str:
    counts = Counter(p.severity for p in problems)
    return ", ".join(f"{counts[s]} {s}" for s in ("error", "silent", "warning") if counts[s])


def _problems_table(problems, limit: int = MAX_PROBLEM_ROWS) -> str:
    shown = list(problems)[:limit]
    table = html_table(
        ("severity", "kind", "fqn", "ranks", "region", "message", "fix"),
        (
            (
                p.severity,
                p.kind,
                p.fqn,
                format_ranks(p.ranks),
                "" if p.region is None else p.region,
                p.message,
                p.fix,
            )
            for p in shown
        ),
        styles=[f"background: {SEVERITY_BG.get(p.severity, '')}" for p in shown],
    )
    more = (
        f"<div>first {len(shown)} of {len(problems)} problems (the list holds them all)</div>"
        if len(problems) > len(shown)
        else ""
    )
    return table + more


def problems_html(problems) -> str:
    """A problem list: counts by severity and the first `MAX_PROBLEM_ROWS` problems."""
    if not problems:
        return _box("No problems", [])
    blocking = sum(1 for p in problems if p.blocking)
    title = f"{len(problems)} problems ({_severity_counts(problems)})" + (
        f": {blocking} make the load raise or load wrong values" if blocking else ""
    )
    return _box(text(title), [_problems_table(problems)])


# ----------------------------------------------------------------------------- results
def _verdict(problems) -> str:
    blocking = [p for p in problems if p.blocking]
    if blocking:
        kinds = ", ".join(sorted({p.kind for p in blocking}))
        return (
            '<div style="color: #9b1c1c"><b>BLOCKED</b>: '
            f"{len(blocking)} problem(s) make this load raise or load wrong values "
            f"({text(kinds)})</div>"
        )
    return (
        '<div style="color: #1e6b34"><b>OK</b>: raises nothing and loads every element '
        f"({len(problems)} warning(s))</div>"
    )


def load_result_html(result) -> str:
    """A `LoadPlanResult`: the verdict, counts (entries, read items, files, bytes loaded against
    bytes needed), the bytes-per-rank picture and the problems."""
    io, problems = result.io, result.problems
    needed, loaded = int(io.bytes_needed.sum()), int(io.bytes_read.sum())
    ratio = f" ({loaded / needed:.1f}x)" if needed else ""
    parts = [
        _verdict(problems),
        _line(
            _n(len(result.layouts), "entry", "entries"),
            _n(int(io.reads.sum()), "read item"),
            f"{sum(1 for f in io.files if io.readers[f])} of {len(io.files)} files read",
            f"{text(format_bytes(loaded))} loaded for {text(format_bytes(needed))} needed{ratio}",
        ),
        svg_bars(bytes_per_rank_data(result)),
    ]
    if problems:
        parts.append(_problems_table(problems))
    title = (
        f"LoadPlanResult: {result.world_size} ranks, torch {text(result.torch_version)} semantics"
    )
    return _box(title, parts)


def save_result_html(result) -> str:
    """A `SavePlanResult`: entries, bytes written, the validation errors and what torch refuses
    or the storage writer drops, the bytes-per-rank picture."""
    written = np.asarray(result.bytes_written)
    parts = [
        _line(
            _n(len(result.layouts), "entry", "entries"),
            f"{len(result.metadata.state_dict_metadata)} in the metadata",
            f"{text(format_bytes(int(written.sum())))} written by "
            f"{int((written > 0).sum())} of {result.world_size} ranks",
            f"storage {text(result.storage)}",
        ),
        svg_bars(bytes_per_rank_data(result)),
    ]
    if result.errors:
        parts.append(html_table(("validation error",), ((e,) for e in result.errors)))
    if result.failures:
        parts.append(
            html_table(
                ("fqn", "ranks", "torch raises"),
                ((f, format_ranks(r), m) for f, r, m in result.failures),
            )
        )
    if result.lost:
        parts.append(f"<div>{len(result.lost)} chunk(s) dropped by the storage writer</div>")
    title = (
        f"SavePlanResult: {result.world_size} ranks, torch {text(result.torch_version)} semantics"
    )
    return _box(title, parts)


def checkpoint_html(checkpoint) -> str:
    """A `Checkpoint`: where, which format, entries, chunks, files (missing ones named), bytes
    per writer as a picture, damage as problems."""
    md = checkpoint.metadata
    sizes = checkpoint.file_sizes
    missing = checkpoint.missing_files
    writers = [c.writer_rank for c in checkpoint.chunks]
    per_writer: dict[int, int] = {}
    for c in checkpoint.chunks:
        if c.writer_rank is not None and c.storage is not None:
            per_writer[c.writer_rank] = per_writer.get(c.writer_rank, 0) + c.storage.length
    on_disk = sum(s for s in sizes.values() if s)
    parts = [
        _line(
            f"format {text(checkpoint.format)}",
            _n(len(md.state_dict_metadata), "entry", "entries"),
            _n(len(checkpoint.chunks), "saved chunk"),
            f"{len(sizes)} files ({text(format_bytes(on_disk))} on disk)",
            f"{len({w for w in writers if w is not None})} writer ranks",
        )
    ]
    if per_writer:
        n = max(per_writer) + 1
        values = np.zeros(n, dtype=np.float64)
        for w, b in per_writer.items():
            values[w] = b
        parts.append(
            svg_bars(
                BarsData(
                    ranks=tuple(range(n)),
                    values=values,
                    color=WRITTEN_COLOR,
                    label="bytes stored per writer rank",
                    reference=None,
                    reference_color=None,
                    reference_label=None,
                    ylabel="bytes stored",
                    title=f"{format_bytes(values.sum())} stored by {len(per_writer)} writers",
                )
            )
        )
    entries = list(md.state_dict_metadata.items())
    per_entry = Counter(c.fqn for c in checkpoint.chunks)
    parts.append(
        html_table(
            ("fqn", "shape", "dtype", "chunks", "bytes"),
            (
                (
                    fqn,
                    "x".join(map(str, e.size)) or "()" if hasattr(e, "size") else "(bytes)",
                    e.properties.dtype if hasattr(e, "properties") else "",
                    per_entry[fqn],
                    format_bytes(e.nbytes) if hasattr(e, "nbytes") else "",
                )
                for fqn, e in entries[:MAX_ROWS]
            ),
        )
    )
    if len(entries) > MAX_ROWS:
        parts.append(f"<div>first {MAX_ROWS} of {len(entries)} entries</div>")
    if missing:
        shown = ", ".join(text(f) for f in missing[:8])
        parts.append(f"<div>missing files: {shown}{' ...' if len(missing) > 8 else ''}</div>")
    damage = checkpoint.problems()
    if damage:
        parts.append(_problems_table(damage))
    return _box(f"Checkpoint <code>{text(checkpoint.path)}</code>", parts)


def version_comparison_html(comparison) -> str:
    """A `VersionComparison`: per later version, how many ranks change and how, and the first
    changed (version, rank) records."""
    parts = []
    base = comparison.versions[0]
    rows = []
    for v in comparison.versions[1:]:
        cs = [c for c in comparison.changes if c.version == v]
        rows.append(
            (
                f"{base} -> {v}",
                sum(not c.unchanged for c in cs),
                sum(bool(c.reordered) for c in cs),
                sum(bool(c.changed) for c in cs),
                sum(len(c.appearing) for c in cs),
                sum(len(c.vanishing) for c in cs),
                sum(c.files_before != c.files_after for c in cs),
            )
        )
    parts.append(
        html_table(
            (
                "versions",
                "ranks changed",
                "reordered",
                "other reads",
                "problems appearing",
                "vanishing",
                "file order",
            ),
            rows,
        )
    )
    changed = comparison.changed()[:MAX_ROWS]
    if changed:
        parts.append(
            html_table(
                ("version", "rank", "reordered", "changed", "appearing", "vanishing"),
                (c.row() for c in changed),
            )
        )
    title = "VersionComparison: torch " + " vs ".join(text(v) for v in comparison.versions)
    return _box(title, parts)


def captured_target_html(target) -> str:
    """A `CapturedTarget`: the build, how it ran, and its entries (first `MAX_ROWS`)."""
    entries = list(target.items())
    parts = [
        _line(
            f"build <code>{text(target.build)}</code>",
            f"{target.world_size} ranks",
            f"ran ranks {text(format_ranks(target.ranks_run))}",
            f"{target.seconds:.1f} s",
        ),
        html_table(
            ("fqn", "layout"),
            ((fqn, lay.describe()) for fqn, lay in entries[:MAX_ROWS]),
        ),
    ]
    if len(entries) > MAX_ROWS:
        parts.append(f"<div>first {MAX_ROWS} of {len(entries)} entries</div>")
    return _box(f"CapturedTarget: {_n(len(entries), 'entry', 'entries')}", parts)
