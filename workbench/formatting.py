"""How the workbench writes indices and ranks as text, the same in messages, tables and pictures.

Imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "index_runs",
    "format_ranks",
    "format_held",
    "ranks_text",
    "list_text",
    "BYTE_UNITS",
    "byte_unit",
    "format_bytes",
]

# Binary units: DCP's sizes are element counts times 1, 2, 4 or 8 bytes, and tensor shapes are
# powers of two more often than not, so 2**k sizes read as round numbers ("16 GiB", not "17.2 GB").
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def index_runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs of indices, in the given order, as ``(start, stop)``:
    ``[0, 1, 4, 5]`` -> ``[(0, 2), (4, 6)]``."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([i, i + 1])
    return [(a, b) for a, b in runs]


def format_ranks(ranks) -> str:
    """Ranks as compact ranges: ``(0, 1, 2, 3, 8)`` -> ``"r0-3,8"``; empty -> ``""``."""
    ranks = sorted({int(r) for r in ranks})
    if ranks and ranks[-1] - ranks[0] == len(ranks) - 1:  # one run (a stage's 1024 writers)
        return f"r{ranks[0]}" if len(ranks) == 1 else f"r{ranks[0]}-{ranks[-1]}"
    runs = index_runs(ranks)
    if not runs:
        return ""
    return "r" + ",".join(str(a) if b == a + 1 else f"{a}-{b - 1}" for a, b in runs)


def format_held(held: dict[int, Iterable[int]]) -> str:
    """What a rank really holds (`Layout.held_indices`) in slice runs:
    ``{0: [0, 1, 4, 5]}`` -> ``"dim 0: 0:2, 4:6"``."""
    return "; ".join(
        f"dim {d}: " + ", ".join(f"{a}:{b}" for a, b in index_runs(ix)) for d, ix in held.items()
    )


def ranks_text(ranks: Iterable[int], limit: int = 8) -> str:
    """``rank 3`` / ``ranks 0, 1, 2`` / ``ranks 0-1023`` / ``ranks 0, 1, ... (12 ranks)``."""
    rs = sorted(set(ranks))
    if not rs:
        return "no rank"
    if len(rs) == 1:
        return f"rank {rs[0]}"
    if rs == list(range(rs[0], rs[-1] + 1)) and len(rs) > 3:
        return f"ranks {rs[0]}-{rs[-1]}"
    if len(rs) > limit:
        return "ranks " + ", ".join(map(str, rs[:limit])) + f", ... ({len(rs)} ranks)"
    return "ranks " + ", ".join(map(str, rs))


def list_text(values, limit: int = 8) -> str:
    """``[a, b, c]``, or the first ``limit`` values and how many there are in all."""
    vs = list(values)
    if len(vs) > limit:
        return "[" + ", ".join(map(str, vs[:limit])) + f", ... ({len(vs)} in all)]"
    return "[" + ", ".join(map(str, vs)) + "]"


def byte_unit(n: float) -> tuple[int, str]:
    """``(factor, name)`` of the binary unit that writes ``n`` bytes with 1 to 3 digits before
    the point: ``byte_unit(3 * 2**30)`` -> ``(2**30, "GiB")``; an axis scaled by ``1 / factor``
    gets round ticks and says its unit once, in its label."""
    n = abs(float(n))
    k = 0
    while k < len(BYTE_UNITS) - 1 and n >= 1024 ** (k + 1):
        k += 1
    return 1024**k, BYTE_UNITS[k]


def format_bytes(n) -> str:
    """Bytes in binary units, at most three significant digits: ``1536`` -> ``"1.5 KiB"``,
    ``2**30`` -> ``"1 GiB"``, ``1128840839168`` -> ``"1.03 TiB"``, ``1023`` -> ``"1023 B"``; None ->
    ``"unknown"`` (a pickled entry's size before a real save). The one byte formatter of the
    workbench: pictures, tables, the CLI and the report all write bytes with it."""
    if n is None:
        return "unknown"
    factor, unit = byte_unit(n)
    if factor == 1:
        return f"{int(n)} B"
    v = float(n) / factor
    # three significant digits, trailing zeros dropped; 1023.99 KiB rounds to "1024 KiB", never
    # to an exponent
    digits = 2 if abs(v) < 10 else 1 if abs(v) < 100 else 0
    text = f"{v:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}"
