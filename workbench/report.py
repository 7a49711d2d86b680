"""The HTML report: ONE self-contained file to attach to a bug report.

What a checkpoint holds (every entry, its chunks, files, byte ranges and writer ranks) and, given
a target, the reshard's verdict, its problems, pictures of the worst tensors, each rank's I/O and
its read items. It scales with what a person reads, not with the checkpoint: entries are one row
each (chunk counts, files and writers summed with numpy), and past `MAX_RANK_ROWS` ranks or files
the per-rank and per-file tables become a distribution and the largest rows, the saved chunks and
read items the first rows, each with a note of how many more there are and where to see them; so
a 16,384-rank checkpoint (a million chunks) gives a page of about the same size as a 64-rank one. Self-contained means: inline CSS, pictures as ``data:image/png;base64`` URIs, no
script, no external ``src`` or ``href``, so it opens the same offline, in a mail client or
attached to an issue. Built from the same tables (`workbench.tables`) and pictures
(`workbench.plots`) as the notebooks; top layer, may import everything. Lazy imports: inside the
functions, so that importing it loads neither pandas nor matplotlib.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .formatting import format_bytes
from .records import TensorStorageMetadata

__all__ = [
    "ReportContent",
    "report_content",
    "render_report",
    "build_report",
    "write_report",
    "figure_data_uri",
    "shape_text",
]

# Tensors drawn one picture each: the ones with problems first, then the largest.
MAX_PICTURES = 8
# ... and past MAX_RANK_ROWS ranks: a picture costs some 0.2 s at 16,384 ranks, and the explorer
# draws any tensor from any rank.
SCALE_PICTURES = 4
# Rows of the read-item and saved-chunk tables; a whole-model plan has 100k+ (the I/O table and
# pictures summarise them).
MAX_READ_ROWS = 200
MAX_PROBLEM_ROWS = 500
MAX_ENTRY_ROWS = 200
# Per-rank and per-file tables list every row up to this many; past it, a distribution (min,
# median, max, total) and the `TOP_ROWS` largest rows.
MAX_RANK_ROWS = 64
TOP_ROWS = 20
# A tensor of more saved chunks than this is drawn zoomed on the pictured rank's chunk (its
# surroundings, not a thousand slivers).
ZOOM_CHUNKS = 256
# Cells a side of the traffic heatmap: about its pixels at the report's resolution, so a cell sums
# a block of ranks x files rather than being dropped when drawn.
TRAFFIC_CELLS = 256
_INSPECT_HINT = "<code>workbench inspect CHECKPOINT --json</code> lists every one"
_EXPLORER_HINT = (
    "<code>tables.io_table(plan_load(...))</code> or the explorer "
    "(<code>CheckpointExplorer</code>) shows every rank"
)

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1180px; color: #1d1d1f; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .meta code { background: #f3f3f3; padding: 0 .3em; }
.verdict { padding: .7em 1em; border-radius: 6px; font-weight: 600; margin: 1em 0; }
.verdict.ok { background: #e6f4ea; color: #1e6b34; } .verdict.blocked { background: #fdecea; color: #9b1c1c; }
.verdict.none { background: #eef2f7; color: #334; }
table { border-collapse: collapse; font-size: 12.5px; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: 2px 7px; text-align: left; vertical-align: top; }
th { background: #f5f5f7; } td span[title] { white-space: nowrap; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .92em; } .note { color: #666; font-size: .92em; }
"""


def figure_data_uri(picture, *, tight: bool = True) -> str:
    """A matplotlib Figure (or an Axes: its Figure) as a ``data:image/png;base64,...`` URI,
    cropped to what is drawn (``tight=False``: the whole figure, for a chart whose constrained
    layout fills it already; the crop draws it twice, 0.4 s for a 16,384-rank chart).
    `workbench.plots` draws on pyplot-free Figures, so nothing is left open."""
    fig = getattr(picture, "figure", picture)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight" if tight else None)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def shape_text(shape) -> str:
    """``[64, 32]`` -> ``"64x32"``; a 0-d shape (or a bytes entry's None) -> ``"()"``."""
    return "x".join(map(str, shape or ())) or "()"


def _e(text) -> str:
    return html.escape(str(text))


def _frame_html(
    df, *, max_rows: int | None = None, total: int | None = None, hint: str = ""
) -> str:
    """A DataFrame as an HTML table, coloured by rank like every picture. Past ``max_rows`` (or
    when ``total``, the rows ``df`` was cut from, is larger) a note says how many more rows
    there are and, with ``hint`` (trusted HTML), where to see them."""
    from .tables import style_by_rank

    total = len(df) if total is None else total
    if max_rows is not None and len(df) > max_rows:
        df = df.head(max_rows)
    note = (
        f'<p class="note">first {len(df):,} of {total:,} rows; {total - len(df):,} more'
        + (f": {hint}" if hint else "")
        + ".</p>"
        if total > len(df)
        else ""
    )
    # style_by_rank escapes every cell and label: keys and paths come from a stranger's checkpoint
    return style_by_rank(df).hide(axis="index").to_html() + note


def _problems_html(problems) -> str:
    from .tables import problems_table

    if not problems:
        return (
            "<p>No problems: every rank's wanted chunks are covered by saved chunks, keys, "
            "shapes and dtypes agree.</p>"
        )
    # the shown rows only: a wrong target at 16,384 ranks can give one problem per key and rank
    df = problems_table(list(problems)[:MAX_PROBLEM_ROWS]).drop(columns=["ranks"])
    note = (
        f'<p class="note">first {MAX_PROBLEM_ROWS} of {len(problems):,} problems; '
        "<code>workbench plan --json</code> lists all.</p>"
        if len(problems) > MAX_PROBLEM_ROWS
        else ""
    )
    return (
        df.style.format(escape="html")
        .hide(axis="index")
        .map(lambda s: f"background-color: {_SEV_BG.get(s, '')}", subset=["severity"])
        .to_html()
    ) + note


_SEV_BG = {"error": "#fdecea", "silent": "#fff4e5", "warning": "#fffbe6"}


def _figure(uri: str, caption: str) -> str:
    return (
        f'<figure><img alt="{_e(caption)}" src="{uri}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _pick_tensors(metadata, layouts, problems, limit: int) -> list[str]:
    """Tensors worth a picture: those with problems (in problem order), then the largest, one
    per look (shape, dtype, saved chunks and target placements): a model's 126 layers give the
    same picture 126 times."""
    sdm = metadata.state_dict_metadata
    tensors = [k for k, md in sdm.items() if isinstance(md, TensorStorageMetadata) and md.size]
    names = set(tensors)
    first = dict.fromkeys(p.fqn for p in problems if p.fqn in names)
    rest = sorted((k for k in tensors if k not in first), key=lambda k: -math.prod(sdm[k].size))

    def look(fqn):
        md, lay = sdm[fqn], (layouts or {}).get(fqn)
        placed = None
        if lay is not None:
            placed = (lay.kind, lay.mesh_shape, tuple(map(str, lay.placements or ())))
        return (tuple(md.size), md.properties.dtype, len(md.chunks), placed)

    seen = {look(k) for k in first}
    for k in rest:
        if len(first) >= limit:
            break
        if look(k) not in seen:
            seen.add(look(k))
            first[k] = None
    return list(first)[:limit]


def _read_items_html(result) -> str:
    """The first `MAX_READ_ROWS` read items, rank by rank: tabulating all of a whole-model plan
    (hundreds of thousands of items) would take seconds and nobody reads it."""
    import pandas as pd

    from .tables import read_items_table

    parts, n = [], 0
    total = int(result.io.reads.sum())
    for r in range(result.world_size):
        if n >= MAX_READ_ROWS:
            break
        df = read_items_table(result, rank=r).head(MAX_READ_ROWS - n)
        parts.append(df)
        n += len(df)
    df = pd.concat(parts, ignore_index=True).drop(
        columns=["dest_offsets", "storage_offsets", "lengths"]
    )
    return _frame_html(df, total=total, hint="the explorer shows any rank's read items")


def _verdict_html(problems) -> str:
    if problems is None:
        return (
            '<div class="verdict none">No target given: this report shows what the '
            "checkpoint holds. Add <code>--target</code> to check a reshard.</div>"
        )
    blocking = [p for p in problems if p.blocking]
    if blocking:
        kinds = ", ".join(sorted({p.kind for p in blocking}))
        return (
            f'<div class="verdict blocked">BLOCKED: {len(blocking)} problem(s) make this '
            f"load raise or load wrong values ({_e(kinds)}).</div>"
        )
    return (
        '<div class="verdict ok">OK: this load raises nothing and loads every element from '
        f"the checkpoint ({len(problems)} warning(s)).</div>"
    )


def _pictured_rank(result, problems, fqn: str) -> int:
    """The load rank a reshard picture is seen from: the first rank a problem of ``fqn`` names,
    else the first rank reading it (at 16,384 ranks rank 0 holds one pipeline stage and reads
    nothing of the others' tensors), else rank 0."""
    named = next((p.ranks[0] for p in problems if p.fqn == fqn and p.ranks), None)
    if named is not None:
        return named
    ranks = result.reads(fqn).rank
    return int(ranks[0]) if len(ranks) else 0


def _pictures_html(metadata, result, problems, fqns) -> list[str]:
    from . import plots
    from .picture_data import reshard_data

    out = ["<h2>Pictures</h2>"]
    sdm = metadata.state_dict_metadata
    drawable = sum(isinstance(md, TensorStorageMetadata) and bool(md.size) for md in sdm.values())
    if len(fqns) < drawable:
        out.append(
            f'<p class="note">{len(fqns)} of {drawable:,} tensors drawn: those with problems '
            "first, then the largest, one per shape, saved chunks and target placements. The "
            "explorer (<code>CheckpointExplorer</code>) draws any tensor from any rank.</p>"
        )
    for fqn in fqns:
        if result is not None and fqn in result.layouts:
            rank = _pictured_rank(result, problems, fqn)
            zoom = len(sdm[fqn].chunks) > ZOOM_CHUNKS and bool(result.layouts[fqn].chunks(rank))
            pic = reshard_data(metadata, result, fqn, rank, zoom=zoom)
            caption = (
                f"{fqn}: saved chunks by writer; rank {rank}'s wanted chunk and its read "
                "items, numbered in DCP's order"
                + (
                    f" (zoomed on rank {rank}'s chunk: {len(sdm[fqn].chunks):,} saved chunks)"
                    if zoom
                    else ""
                )
            )
            # the widgets' fast path (dense runs of tiles as images, fixed margins): half the
            # time of a tight-bbox savefig, and a report at 16,384 ranks draws several
            _, png = plots.picture_png(pic, figsize=(8.0, 4.2), dpi=80, margins=_PICTURE_MARGINS)
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        else:
            uri = figure_data_uri(plots.plot_layout(metadata, fqn=fqn))
            caption = f"{fqn}: saved chunks, coloured by writer rank"
        out.append(_figure(uri, caption))
    return out


# room on the right for the legend and the writer colour bar, below for the notes
_PICTURE_MARGINS = dict(left=0.08, right=0.64, top=0.92, bottom=0.25)


def _long_table_html(df, *, by: str, noun: str, members: str, hint: str) -> str:
    """A per-rank or per-file table: every row up to `MAX_RANK_ROWS`. Past it: each number's
    distribution (`tables.distribution_table`), then the rows with equal numbers as one row
    (`tables.equal_rows_table`: a 16,384-rank load has a few dozen I/O profiles, not 16,384),
    the `TOP_ROWS` largest in ``by`` first, with how many are left out and where to see them."""
    from .tables import distribution_table, equal_rows_table

    if len(df) <= MAX_RANK_ROWS:
        return _frame_html(df)
    groups = equal_rows_table(df, members=members, by=by)
    return (
        f"<p>{len(df):,} {noun}: the distribution of each number, then the {noun} with equal "
        f"numbers as one row ({len(groups):,} such groups), the most "
        f"{_e(by.replace('_', ' '))} first.</p>"
        + _frame_html(distribution_table(df, exclude=(df.columns[0], members), label=noun))
        + _frame_html(groups, max_rows=TOP_ROWS, hint=hint)
    )


def _io_html(result) -> list[str]:
    from . import plots
    from .tables import io_table

    io = result.io
    needed, read = int(io.bytes_needed.sum()), int(io.bytes_read.sum())
    readers = int((io.reads > 0).sum())
    amp = f", {read / needed:.2f}x what they need" if needed else ""
    return [
        "<h2>I/O per rank</h2>",
        f"<p>{readers:,} of {result.world_size:,} ranks read: {int(io.reads.sum()):,} read "
        f"items, {format_bytes(read)} loaded from {sum(1 for f in io.files if io.readers[f]):,} "
        f"file(s) for {format_bytes(needed)} needed{amp}; the busiest rank loads "
        f"{format_bytes(int(io.bytes_read.max(initial=0)))} in "
        f"{int(io.reads.max(initial=0)):,} read items from "
        f"{int(io.files_opened.max(initial=0)):,} file(s).</p>",
        _figure(
            figure_data_uri(plots.plot_bytes_per_rank(result), tight=False),
            "bytes each rank loads (whole saved chunks) against the bytes it needs",
        ),
        _figure(
            figure_data_uri(plots.plot_traffic(result, cells=TRAFFIC_CELLS), tight=False),
            "traffic: which rank reads from which file",
        ),
        _long_table_html(
            io_table(result), by="bytes_read", noun="ranks", members="rank", hint=_EXPLORER_HINT
        ),
    ]


def _checkpoint_html(layouts, entries, files, chunks) -> list[str]:
    tensors = entries[entries["kind"] == "tensor"]
    n_chunks = int(tensors["chunks"].sum())
    writers = files["writer"].dropna().nunique()
    shown = entries.head(MAX_ENTRY_ROWS).copy()
    shown["shape"] = [shape_text(s) for s in shown["shape"]]
    shown["dtype"] = shown["dtype"].fillna("")
    if layouts is not None:
        shown["target"] = [
            layouts[f].describe() if f in layouts else "not requested" for f in shown["fqn"]
        ]
    return [
        "<h2>Checkpoint</h2>",
        f"<p>{len(entries):,} entries ({len(tensors):,} tensors, "
        f"{len(entries) - len(tensors):,} other), "
        f"{n_chunks:,} saved chunks, "
        f"{format_bytes(int(tensors['bytes'].sum()))} of tensor data in "
        f"{len(files):,} file(s) written by {writers:,} rank(s).</p>",
        _frame_html(shown, total=len(entries), hint=_INSPECT_HINT),
        "<h3>Saved chunks</h3>",
        _frame_html(
            chunks.drop(columns=["offsets", "sizes"]),
            total=int(entries["chunks"].sum()),  # a bytes entry is one row
            hint=_INSPECT_HINT,
        ),
        "<h3>Files</h3>",
        _long_table_html(files, by="bytes", noun="files", members="writer", hint=_INSPECT_HINT),
    ]


def _first_chunks(metadata, limit: int):
    """The first ``limit`` rows of `tables.checkpoint_chunks_table`, built entry by entry: the
    whole table of a 16,384-rank checkpoint is a million rows (a minute) for 200 shown."""
    import pandas as pd

    from .tables import checkpoint_chunks_table

    parts, n = [], 0
    for fqn in metadata.state_dict_metadata:
        if n >= limit:
            break
        df = checkpoint_chunks_table(metadata, fqn).head(limit - n)
        parts.append(df)
        n += len(df)
    return (
        pd.concat(parts, ignore_index=True) if parts else checkpoint_chunks_table(metadata).head(0)
    )


@dataclass(frozen=True, slots=True)
class ReportContent:
    """What the report shows, computed before any HTML is written (`report_content`); `render_report`
    turns it into the page. ``problems`` is None without a target (the report then shows what the
    checkpoint holds and ``saved_problems``, the saved chunks' own holes and overlaps)."""

    metadata: Any
    layouts: Mapping | None
    checkpoint: str | None
    target: str | None
    created: datetime
    torch_version: str
    read_item_order: str  # "nested" or "sweep": torch_version's order of read items
    assumed_version: str | None  # versions.assumed_version_note(): a newer torch than recorded
    result: Any  # LoadPlanResult of the target, or None
    problems: tuple | None
    saved_problems: tuple
    damage: tuple[str, ...]
    facts: Mapping
    file_problems: tuple | None
    format_tables: Mapping
    entries: Any  # tables.checkpoint_entries_table: every entry
    files: Any  # tables.checkpoint_files_table: every data file
    chunks: Any  # the first MAX_READ_ROWS rows of tables.checkpoint_chunks_table
    pictured: tuple[str, ...]  # tensors drawn: those with problems first, then the largest

    @property
    def title(self) -> str:
        return "DCP reshard report" + (f": {self.checkpoint}" if self.checkpoint else "")

    @property
    def shown_problems(self) -> tuple:
        """The problems the verdict and pictures are about: the load's with a target, else the
        saved chunks'."""
        return self.problems if self.problems is not None else self.saved_problems


def report_content(
    metadata,
    layouts=None,
    *,
    checkpoint: str | None = None,
    target: str | None = None,
    damage: list[str] | None = None,
    max_pictures: int | None = None,
    torch_version: str | None = None,
    facts: dict | None = None,
    file_problems: list | None = None,
    format_tables: dict | None = None,
) -> ReportContent:
    """Everything the report shows (see `build_report` for the arguments): the load planned
    against ``layouts`` and its problems, or the saved chunks' problems without a target; the
    checkpoint's tables; the tensors to draw."""
    from .diagnosis import find_checkpoint_problems
    from .planning import plan_load
    from .tables import checkpoint_entries_table, checkpoint_files_table
    from .versions import assumed_version_note, semantics

    sem = semantics(torch_version)
    result = (
        plan_load(metadata, layouts, torch_version=sem.version) if layouts is not None else None
    )
    problems = tuple(result.problems) if result is not None else None
    saved_problems = () if result is not None else tuple(find_checkpoint_problems(metadata))
    files = checkpoint_files_table(metadata)
    if max_pictures is None:
        world = result.world_size if result is not None else files["writer"].nunique()
        max_pictures = MAX_PICTURES if world <= MAX_RANK_ROWS else SCALE_PICTURES
    return ReportContent(
        metadata=metadata,
        layouts=layouts,
        checkpoint=checkpoint,
        target=target,
        created=datetime.now(timezone.utc),
        torch_version=sem.version,
        read_item_order=sem.read_item_order,
        assumed_version=assumed_version_note() if torch_version is None else None,
        result=result,
        problems=problems,
        saved_problems=saved_problems,
        damage=tuple(damage or ()),
        facts=dict(facts or {}),
        file_problems=None if file_problems is None else tuple(file_problems),
        format_tables=dict(format_tables or {}),
        entries=checkpoint_entries_table(metadata),
        files=files,
        chunks=_first_chunks(metadata, MAX_READ_ROWS),
        pictured=tuple(
            _pick_tensors(
                metadata,
                layouts,
                problems if problems is not None else saved_problems,
                max_pictures,
            )
        ),
    )


def _header_html(c: ReportContent) -> list[str]:
    """Title, what was checked against what, the verdict, damage, the format's facts."""
    out = [
        "<h1>DCP reshard report</h1>",
        '<p class="meta">checkpoint <code>'
        + _e(c.checkpoint or "(metadata)")
        + "</code>"
        + (" &middot; target <code>" + _e(c.target) + "</code>" if c.target else "")
        + f" &middot; {c.created:%Y-%m-%d %H:%M} UTC"
        + f" &middot; DCP metadata version {_e(c.metadata.version)}"
        + f" &middot; semantics of torch {_e(c.torch_version)}</p>"
        + (f'<p class="note">{_e(c.assumed_version)}</p>' if c.assumed_version else ""),
        _verdict_html(c.problems),
    ]
    if c.damage:
        out.append(
            '<div class="verdict blocked">Damaged checkpoint: torch\'s reader fails on '
            "these files.<ul>" + "".join(f"<li>{_e(m)}</li>" for m in c.damage) + "</ul></div>"
        )
    if c.facts:
        out.append(
            '<table class="facts">'
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in c.facts.items())
            + "</table>"
        )
    for title, df in c.format_tables.items():
        out += [f"<h3>{_e(title)}</h3>", _frame_html(df)]
    return out


def _problem_sections_html(c: ReportContent) -> list[str]:
    """Are the files all there; the load's problems, or the saved chunks' without a target."""
    out = []
    if c.file_problems is not None:
        out += [
            "<h2>Are the files all there</h2>",
            _problems_html(c.file_problems)
            if c.file_problems
            else "<p>Every file the metadata names is there and holds every byte range it "
            "names.</p>",
        ]
    if c.result is not None:
        out += ["<h2>Problems</h2>", _problems_html(c.problems)]
    elif c.saved_problems:
        out += [
            "<h2>Problems in the saved chunks</h2>",
            "<p>Whatever the target, a load that reads these regions gets stale or "
            "last-applied values without an error.</p>",
            _problems_html(c.saved_problems),
        ]
    return out


def render_report(c: ReportContent) -> str:
    """The page of a `ReportContent`: one self-contained HTML string (every untrusted string
    escaped)."""
    body = _header_html(c) + _problem_sections_html(c)
    body += _pictures_html(c.metadata, c.result, c.shown_problems, c.pictured)
    if c.result is not None:
        body += _io_html(c.result)
    body += _checkpoint_html(c.layouts, c.entries, c.files, c.chunks)
    if c.result is not None:
        order = "nested-loop" if c.read_item_order == "nested" else "sweep"
        body += [
            "<h2>Read items</h2>",
            "<p>Each rank's read items in DCP's order (state-dict order of keys, then "
            f"torch {_e(c.torch_version)}'s {order} order).</p>",
            _read_items_html(c.result),
        ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(c.title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def build_report(metadata, layouts=None, **kw) -> str:
    """The report as one HTML string: verdict, problems, pictures, I/O, the checkpoint's
    contents, read items (`render_report` of `report_content`). ``layouts`` (``{fqn: Layout}``,
    the target) is optional: without it the report shows what the checkpoint holds. Keywords:
    ``checkpoint`` / ``target`` (how to name them); ``damage``: messages about the data files
    (`checkpoint.Checkpoint.problems`: missing or short files), shown under the verdict;
    ``max_pictures`` (default `MAX_PICTURES`, `SCALE_PICTURES` past `MAX_RANK_ROWS` ranks);
    ``torch_version``: whose DCP semantics plan the load (default
    `versions.default_torch_version`), named in the report; ``facts``: the format and what it
    records of itself (`checkpoint.Checkpoint.facts`); ``file_problems``:
    `checkpoint.find_file_problems` (are the files all there); ``format_tables``:
    `tables.format_tables` (what the format records beyond the chunks)."""
    return render_report(report_content(metadata, layouts, **kw))


def write_report(path, metadata, layouts=None, **kw) -> Path:
    """`build_report` written to ``path`` (one file); returns the path. Nothing is written when
    building fails."""
    text = build_report(metadata, layouts, **kw)
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path
