"""Colours: one deterministic colour per rank, the same in every picture and table.

A rank's colour is a pure function of the rank number, so a picture, a table and a widget of one
session (or of two sessions) agree without sharing state. The first 18 ranks get matplotlib's
``tab20`` colours without its two greys (the dark ``tab10`` hues first, then their light partners,
so neighbouring ranks differ in hue); every further block of 18 ranks reuses the hues with a
lightness step, a small hue turn and (past six blocks) a saturation step: ranks 0..4095 get 4096
different colours, and neighbouring ranks always differ in hue. Grey is kept for "writer
unknown".

Past `MAX_CATEGORICAL_RANKS` ranks in one picture, 64 hues can be told apart only in pairs and a
legend of 64 swatches says nothing: such pictures colour by `rank_scale_color` instead, a
continuous scale (viridis) over ``0..n-1`` drawn with a colour bar that names it. Pure standard library (``colorsys``): no matplotlib.
"""

from __future__ import annotations

import colorsys
from functools import lru_cache

__all__ = [
    "BASE_PALETTE",
    "UNKNOWN_COLOR",
    "HIGHLIGHT_COLOR",
    "rank_color",
    "rank_colors",
    "text_color",
    "MAX_CATEGORICAL_RANKS",
    "RANK_SCALE",
    "rank_scale_color",
]

# matplotlib's tab20 (hex) minus its greys, dark hues first then their light partners.
BASE_PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
)
UNKNOWN_COLOR = "#bdbdbd"  # a chunk whose writer rank is not known
HIGHLIGHT_COLOR = "#ffd400"  # the lit read items of the selected rank

# Lightness offsets of the successive blocks of 18 ranks: alternate darker / lighter, growing.
_LIGHTNESS_STEPS = (0.0, -0.14, 0.12, -0.24, 0.2, -0.32)
_HUE_TURN = 0.041  # fraction of the colour wheel per block, so block k and k+6 still differ


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(min(max(c, 0.0), 1.0) * 255):02x}" for c in rgb)


def _rgb(color: str) -> tuple[float, float, float]:
    c = color.lstrip("#")
    return tuple(int(c[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


@lru_cache(maxsize=8192)
def rank_color(rank: int) -> str:
    """Hex colour (``"#1f77b4"``) of ``rank``; ``None`` or a negative rank gets `UNKNOWN_COLOR`."""
    if rank is None or rank < 0:
        return UNKNOWN_COLOR
    block, i = divmod(int(rank), len(BASE_PALETTE))
    if block == 0:
        return BASE_PALETTE[i]
    h, light, s = colorsys.rgb_to_hls(*_rgb(BASE_PALETTE[i]))
    step = _LIGHTNESS_STEPS[block % len(_LIGHTNESS_STEPS)]
    h = (h + _HUE_TURN * block) % 1.0
    # step the other way rather than clamp: clamping makes far-apart ranks coincide
    light = light + step if 0.15 <= light + step <= 0.9 else min(max(light - step, 0.15), 0.9)
    # a third knob once the lightness steps repeat, so far-apart blocks do not coincide
    s *= 1.0 - 0.15 * ((block // len(_LIGHTNESS_STEPS)) % 4)
    return _hex(colorsys.hls_to_rgb(h, light, s))


def rank_colors(n: int) -> list[str]:
    """The colours of ranks ``0..n-1``."""
    return [rank_color(r) for r in range(n)]


def text_color(background: str) -> str:
    """Black or white, whichever reads better on ``background`` (WCAG relative luminance)."""

    def lin(c):
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in _rgb(background))
    return "#000000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "#ffffff"


MAX_CATEGORICAL_RANKS = len(BASE_PALETTE)  # more ranks in one picture: `rank_scale_color`
# matplotlib's viridis at 0, 1/8, ..., 1 (perceptually uniform, readable in grey and by the
# colour-blind); linear in RGB between them, as matplotlib's ListedColormap of 9 colours would be
RANK_SCALE: tuple[str, ...] = (
    "#440154",
    "#472d7b",
    "#3b528b",
    "#2c728e",
    "#21918c",
    "#28ae80",
    "#5ec962",
    "#addc30",
    "#fde725",
)


@lru_cache(maxsize=8192)
def rank_scale_color(rank: int, n: int) -> str:
    """Hex colour of ``rank`` on the continuous rank scale of ``n`` ranks (`RANK_SCALE` from rank
    0 to rank n-1); ``None`` or a negative rank gets `UNKNOWN_COLOR`."""
    if rank is None or rank < 0:
        return UNKNOWN_COLOR
    t = min(max(rank / (n - 1), 0.0), 1.0) if n > 1 else 0.0
    k, f = divmod(t * (len(RANK_SCALE) - 1), 1.0)
    k = int(k)
    if k >= len(RANK_SCALE) - 1:
        return RANK_SCALE[-1]
    a, b = _rgb(RANK_SCALE[k]), _rgb(RANK_SCALE[k + 1])
    return _hex(tuple(x + (y - x) * f for x, y in zip(a, b)))  # type: ignore[arg-type]
