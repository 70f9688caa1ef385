"""Charts for the console, drawn as SVG on the server: axes with ticks and units, a legend,
and a ``<title>`` per point so a hover (or a screen reader) gives the exact value. Every text
that reaches the SVG is escaped here; nothing is scripted."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 56
COLOURS = ("#1a73e8", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb")


@dataclass(frozen=True)
class Series:
    name: str
    values: list[float | None]  # one per label; None: no value (a gap)
    dashed: bool = False


def _nice_top(value: float) -> float:
    """The axis's top: 1, 2 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def _number(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def line_chart(
    title: str, labels: list[str], series: list[Series], *, unit: str, bars: bool = False
) -> str:
    """Lines (or grouped bars) over ``labels`` on the x axis; ``unit`` names the y axis."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    highest = max((v for s in series for v in s.values if v is not None), default=0.0)
    top = _nice_top(highest)
    n = max(1, len(labels))
    step = plot_w / n

    def x(i: int) -> float:
        return LEFT + step * (i + 0.5)

    def y(v: float) -> float:
        return TOP + plot_h - (v / top) * plot_h

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for k in range(5):  # horizontal grid and y ticks
        value = top * k / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" '
            f'y2="{y(value):.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
            f"{_number(value)}</text>"
        )
    parts.append(
        f'<text class="unit" x="12" y="{TOP + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + plot_h / 2:.0f})">{escape(unit)}</text>'
    )
    every = max(1, math.ceil(n / 12))
    for i, label in enumerate(labels):
        if i % every == 0 or i == n - 1:
            parts.append(
                f'<text class="tick" x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" '
        f'y2="{TOP + plot_h}"/><line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" '
        f'y2="{TOP + plot_h}"/>'
    )
    width = step * 0.8 / max(1, len(series))
    for index, s in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        if bars:
            for i, v in enumerate(s.values):
                if v is None:
                    continue
                left = x(i) - step * 0.4 + width * index
                parts.append(
                    f'<rect x="{left:.1f}" y="{y(v):.1f}" width="{width:.1f}" '
                    f'height="{TOP + plot_h - y(v):.1f}" fill="{colour}">'
                    f"<title>{escape(s.name)}, {escape(labels[i])}: {v:g} {escape(unit)}</title>"
                    "</rect>"
                )
            continue
        points = [(x(i), y(v), v, labels[i]) for i, v in enumerate(s.values) if v is not None]
        if points:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
            dash = ' stroke-dasharray="6 4"' if s.dashed else ""
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{path}"/>'
            )
        for px, py, v, label in points:
            parts.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}">'
                f"<title>{escape(s.name)}, {escape(label)}: {v:g} {escape(unit)}</title></circle>"
            )
    legend_x = LEFT
    for index, s in enumerate(series):  # the legend, under the x axis
        colour = COLOURS[index % len(COLOURS)]
        parts.append(
            f'<rect x="{legend_x}" y="{HEIGHT - 18}" width="12" height="12" fill="{colour}"/>'
            f'<text class="legend" x="{legend_x + 16}" y="{HEIGHT - 8}">{escape(s.name)}</text>'
        )
        legend_x += 24 + 7 * len(s.name)
    parts.append("</svg>")
    return "".join(parts)
