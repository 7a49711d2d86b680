"""Widget round trips: set a control's ``.value`` -> new ``.result`` and outputs written, the path
a browser change takes once it reaches the kernel (the browser <-> kernel hop adds 0.1-0.2 s,
see tests/test_browser.py's timings). Target (DESIGN.md): under 100 ms for tensors with up to
4096 chunks.

Cases: a classic small reshard, and a (4096, 4096) tensor saved on a 64 x 64 mesh (4096 chunks)
loaded on a 32 x 32 mesh (4 reads a rank), with the load rank changed (plans cached), the dims
flipped (plans cached) and the load placements changed (everything re-planned). Each round trip is also split into its
parts (planning, tables, picture data, drawing, PNG) with the same functions the widget calls,
and the reference line times torch's own ``create_read_items_for_chunk_list`` for one rank's
chunk of the big case (the work torch does per rank and per tensor, for scale).

Run: ``.venv/bin/python benchmarks/bench_widgets.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("MPLBACKEND", "Agg")

TARGET_S = 0.100


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cycle(control, values):
    """A callable setting ``control.value`` to the next of ``values`` (always a change)."""
    state = {"i": 0}

    def step():
        state["i"] = (state["i"] + 1) % len(values)
        control.value = values[state["i"]]

    return step


def _parts(spec_texts: dict, rank: int) -> dict[str, float]:
    """The cost of each step of one redraw (plans already cached)."""
    from workbench.plots import picture_png, reshard_data
    from workbench.tables import read_items_table
    from workbench.widgets import explore as w
    from workbench.widgets.controls import mime, styled

    r = w.explore_reshard(**spec_texts, rank=rank)
    out = {}
    t0 = time.perf_counter()
    reads = read_items_table(r.load, w.FQN, rank=rank)
    t1 = time.perf_counter()
    pic = reshard_data(r.save, r.load, w.FQN, rank, dims=r.dims)
    t2 = time.perf_counter()
    t3 = time.perf_counter()  # drawing and PNG encoding are one call in the widget's path
    picture_png(pic, figsize=w.FIGSIZE, dpi=w.DPI, margins=w.MARGINS)
    t4 = time.perf_counter()
    mime(styled(reads, w.READ_COLUMNS))
    t5 = time.perf_counter()
    out.update(
        read_table=t1 - t0,
        picture_data=t2 - t1,
        draw_and_png=t4 - t3,
        table_html=t5 - t4,
        tiles=len(pic.tiles),
    )
    return out


def _torch_reference(spec_texts: dict, rank: int, repeat: int) -> float | None:
    """torch's create_read_items_for_chunk_list for one rank's chunk (None without torch)."""
    try:
        import torch
        from torch.distributed.checkpoint.metadata import (
            ChunkStorageMetadata,
            TensorProperties,
            TensorStorageMetadata,
        )
        from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
    except ImportError:
        return None
    from workbench.widgets import explore as w

    r = w.explore_reshard(**spec_texts, rank=rank)
    md = r.save.metadata.state_dict_metadata[w.FQN]
    tmd = TensorStorageMetadata(
        TensorProperties(dtype=torch.float32),
        torch.Size(md.size),
        [ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)) for c in md.chunks],
    )
    local = [
        ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes))
        for c in r.load.layouts[w.FQN].chunks(rank)
    ]
    return _median(lambda: create_read_items_for_chunk_list(w.FQN, tmd, local), repeat)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)

    from workbench.widgets import CLASSIC_RESHARDS, ReshardExplorer

    big = dict(
        shape="4096, 4096",
        save_mesh="64, 64",
        save_placements="S(0), S(1)",
        load_mesh="32, 32",
        load_placements="S(0), S(1)",
    )
    rows = []

    ex = ReshardExplorer("FSDP -> FSDP+TP")
    rows.append(
        (
            "classic FSDP -> FSDP+TP: load rank",
            _median(_cycle(ex.rank, [0, 1, 2, 3, 4, 5, 6, 7]), args.repeat),
        )
    )
    rows.append(
        (
            "classic: start-from dropdown (re-plan)",
            _median(_cycle(ex.classic, list(CLASSIC_RESHARDS)), args.repeat),
        )
    )

    t0 = time.perf_counter()
    ex.load_mesh.value, ex.load_placements.value = big["load_mesh"], big["load_placements"]
    ex.save_mesh.value, ex.save_placements.value = big["save_mesh"], big["save_placements"]
    ex.shape.value = big["shape"]
    first = time.perf_counter() - t0
    assert ex.message.value == "", ex.message.value
    n_saved = len(ex.result.save.metadata.state_dict_metadata["weight"].chunks)
    assert n_saved == 4096
    rows.append((f"4096 chunks: typing the spec (5 controls, {n_saved} saved chunks)", first))
    rows.append(
        (
            "4096 chunks: load rank (plans cached)",
            _median(_cycle(ex.rank, [5, 6, 7, 500, 1023]), args.repeat),
        )
    )
    rows.append(
        (
            "4096 chunks: dims to draw (plans cached)",
            _median(_cycle(ex.dims, ["0, 1", "1, 0"]), args.repeat),
        )
    )
    rows.append(
        (
            "4096 chunks: load placements (re-plan)",
            _median(
                _cycle(ex.load_placements, ["S(0), S(1)", "S(1), S(0)"]), max(3, args.repeat // 2)
            ),
        )
    )

    print(f"{'round trip (set .value -> .result + outputs)':60s} {'median':>9s} {'vs 100 ms':>9s}")
    for name, t in rows:
        print(f"{name:60s} {t * 1e3:7.1f}ms {t / TARGET_S:8.2f}x")
    parts = _parts(big, 500)
    tiles = parts.pop("tiles")
    print(
        f"\none 4096-chunk redraw, rank 500 ({tiles} tiles):  "
        + "  ".join(f"{k} {v * 1e3:.1f}ms" for k, v in parts.items())
    )
    ref = _torch_reference(big, 500, args.repeat)
    if ref is not None:
        print(
            f"reference: torch create_read_items_for_chunk_list, rank 500 vs 4096 saved "
            f"chunks: {ref * 1e3:.1f}ms (the load-rank round trip is "
            f"{rows[3][1] / ref:.0f}x that: planning is not the cost, the picture is)"
        )


if __name__ == "__main__":
    main()
