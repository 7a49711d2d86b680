"""Benchmark: tables and pictures of a tensor with 4096 chunks (target: a widget round trip, a new
picture and table, under 100 ms; a 4096-chunk picture drawn well under a second).

Each case is timed as the best of a few runs (these machines are noisy and shared): the
``*_data`` / ``*_table`` step alone, then the picture drawn to pixels with Agg
(``FigureCanvasAgg(fig).draw()``; a bare Figure's own canvas draws nothing), a PNG
(``savefig``), and, for reference, the same rectangles drawn the naive way (one ``Rectangle``
patch each) to show what the collections buy.

The widget's redraw (a 6.4 x 4.2 inch picture at 90 dpi, fixed margins) is timed both ways: all
tiles as paths with savefig's default PNG (how widgets drew until `plots.picture_png`), and
`picture_png` (dense runs painted as one image each, PNG at zlib level 1); `reshard_data` both
cold and for the next rank (the saved and the other ranks' tiles are then reused). Run:

    .venv/bin/python benchmarks/bench_plots.py
"""

from __future__ import annotations

import io
import itertools
import time

import matplotlib

matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import workbench as wb  # noqa: E402
from workbench import picture_data, plots, tables  # noqa: E402
from workbench.planning import plan_load, plan_save  # noqa: E402


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def drawn(make):
    def run():
        out = make()
        fig = out if isinstance(out, Figure) else out.figure
        FigureCanvasAgg(fig).draw()  # a bare Figure's own canvas draws nothing

    return run


def png(ax) -> bytes:
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


WIDGET = dict(figsize=(6.4, 4.2), dpi=90, margins=dict(left=0.1, right=0.7, top=0.92, bottom=0.27))


def widget_paths_png(picture) -> bytes:
    """The widget's picture drawn with paths only and savefig's default PNG compression."""
    fig = Figure(figsize=WIDGET["figsize"], dpi=WIDGET["dpi"])
    fig.subplots_adjust(**WIDGET["margins"])
    plots.draw_picture(picture, fig.add_subplot())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=WIDGET["dpi"])
    return buf.getvalue()


def next_rank(world: int):
    """A callable returning a different rank each call (a widget stepping through ranks)."""
    ranks = itertools.count(1)
    return lambda: next(ranks) % world


def cold(fn):
    def run():
        picture_data._LAYERS.clear()  # as after a re-plan: nothing computed for these sources yet
        return fn()

    return run


def naive_layout(layout):
    """The same tiles as one Rectangle patch each (what a plain loop over ax.add_patch costs)."""

    def run():
        pic = picture_data.layout_data(layout)
        ax = Figure().add_subplot()
        for t in pic.tiles:
            ax.add_patch(Rectangle((t.x, t.y), t.w, t.h, facecolor=t.face, edgecolor=t.edge))
        ax.set_xlim(0, pic.width)
        ax.set_ylim(pic.height, 0)
        FigureCanvasAgg(ax.figure).draw()

    return run


def main() -> None:
    shape = (4096, 4096)
    layout = wb.dtensor_layout(shape, (64, 64), "S(0), S(1)")
    save = plan_save({"w": wb.dtensor_layout(shape, (4096,), "S(0)")})
    load = plan_load(save.metadata, {"w": layout})
    rank = next_rank(4096)
    picture = picture_data.reshard_data(save, load, "w", rank=0)
    rows = [
        ("layout_chunks_table (4096 chunks)", best(lambda: tables.layout_chunks_table(layout))),
        (
            "checkpoint_chunks_table (4096 chunks)",
            best(lambda: tables.checkpoint_chunks_table(save.metadata, "w")),
        ),
        (
            "read_items_table, one rank (64 items)",
            best(lambda: tables.read_items_table(load, "w", rank=0)),
        ),
        ("io_table (4096 ranks)", best(lambda: tables.io_table(load))),
        ("layout_data (4096 tiles)", best(lambda: picture_data.layout_data(layout))),
        ("plot_layout + Agg draw (4096 tiles)", best(drawn(lambda: plots.plot_layout(layout)))),
        ("same tiles as 4096 Rectangle patches", best(naive_layout(layout), repeat=1)),
        (
            "reshard_data (4096 saved + 4096 wanted), cold",
            best(cold(lambda: picture_data.reshard_data(save, load, "w", rank=rank()))),
        ),
        (
            "reshard_data, next rank (layers reused)",
            best(lambda: picture_data.reshard_data(save, load, "w", rank=rank())),
        ),
        ("plot_reshard + Agg draw", best(drawn(lambda: plots.plot_reshard(save, load, "w", 0)))),
        (
            "plot_reshard + PNG (7.5x5 in, constrained layout)",
            best(lambda: png(plots.plot_reshard(save, load, "w", 0))),
        ),
        (
            "plot_reshard zoom=True + PNG",
            best(lambda: png(plots.plot_reshard(save, load, "w", 0, zoom=True))),
        ),
        ("widget picture: paths + default PNG", best(lambda: widget_paths_png(picture))),
        ("widget picture: picture_png", best(lambda: plots.picture_png(picture, **WIDGET))),
        (
            "widget redraw before: cold data, paths, default PNG",
            best(
                cold(
                    lambda: widget_paths_png(
                        picture_data.reshard_data(save, load, "w", rank=rank())
                    )
                )
            ),
        ),
        (
            "widget redraw now: next rank, picture_png",
            best(
                lambda: plots.picture_png(
                    picture_data.reshard_data(save, load, "w", rank=rank()), **WIDGET
                )
            ),
        ),
        ("plot_mesh + Agg draw (64x64 mesh)", best(drawn(lambda: plots.plot_mesh(layout)))),
        (
            "plot_bytes_per_rank + Agg draw (4096 ranks)",
            best(drawn(lambda: plots.plot_bytes_per_rank(load))),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, t in rows:
        print(f"{name:<{width}}  {t * 1000:8.1f} ms")
    by_name = dict(rows)
    ratio = (
        by_name["same tiles as 4096 Rectangle patches"]
        / by_name["plot_layout + Agg draw (4096 tiles)"]
    )
    print(f"collections vs one patch per tile: {ratio:.1f}x faster")
    table = by_name["read_items_table, one rank (64 items)"]
    for name, key in (
        (
            "before (paths, default PNG, data recomputed)",
            "widget redraw before: cold data, paths, default PNG",
        ),
        ("now (picture_png, layers reused)", "widget redraw now: next rank, picture_png"),
    ):
        print(
            f"reshard widget load-rank round trip {name}: "
            f"{(table + by_name[key]) * 1000:.0f} ms (target 100 ms)"
        )
    speedup = (
        by_name["widget picture: paths + default PNG"] / by_name["widget picture: picture_png"]
    )
    print(f"widget picture: picture_png vs paths + default PNG: {speedup:.1f}x faster")


if __name__ == "__main__":
    main()
