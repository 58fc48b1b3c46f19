"""Server-side SVG charts: no script, no CDN, nothing fetched; the page works offline.

Inline ``<svg>`` is part of the HTML document, so the page's Content-Security-Policy
(``default-src 'none'``) needs no exception for it. Each function returns ``Markup`` (the
templates insert it as is), which is sound because every label is escaped here and everything
else is a number this module formats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

DONE, DEAD, GRID, EMPTY = "#16a34a", "#dc2626", "#e5e7eb", "#d1d5db"


def donut(done: int, dead: int, *, label: str, size: int = 132) -> Markup:
    """Done vs dead as a ring; the success rate in the middle."""
    done, dead = int(done), int(dead)
    total = done + dead
    radius, stroke = size / 2 - 12, 18
    circumference = 2 * math.pi * radius
    centre = size / 2
    ring = (
        f'<circle cx="{centre}" cy="{centre}" r="{radius:.2f}" fill="none" '
        f'stroke="{EMPTY if total == 0 else DEAD}" stroke-width="{stroke}"/>'
    )
    if total:
        arc = circumference * done / total
        ring += (
            f'<circle cx="{centre}" cy="{centre}" r="{radius:.2f}" fill="none" stroke="{DONE}" '
            f'stroke-width="{stroke}" stroke-dasharray="{arc:.2f} {circumference - arc:.2f}" '
            f'transform="rotate(-90 {centre} {centre})"/>'
        )
    text = f"{100 * done / total:.1f}%" if total else "no data"
    title = f"{label}: {done} done, {dead} dead"
    return Markup(
        f'<svg class="donut" width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>{ring}'
        f'<text x="{centre}" y="{centre + 5}" text-anchor="middle" font-size="16" '
        f'font-weight="bold">{escape(text)}</text></svg>'
    )


def line_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[int]]],
    *,
    title: str,
    width: int = 640,
    height: int = 180,
    tick_every: int = 30,
) -> Markup:
    """One polyline per (name, colour, values) over shared x ``labels``; y from zero."""
    left, right, top, bottom = 40, 24, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([1, *(max(values, default=0) for _, _, values in series)])
    count = max(len(labels), 2)

    def x(i: int) -> float:
        return left + plot_w * i / (count - 1)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / peak)

    parts = [
        f'<line x1="{left}" y1="{y(v):.1f}" x2="{width - right}" y2="{y(v):.1f}" '
        f'stroke="{GRID}"/><text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end" '
        f'font-size="10">{v:g}</text>'
        for v in (0, peak / 2, peak)
    ]
    parts += [
        f'<text x="{x(i):.1f}" y="{height - 6}" text-anchor="middle" font-size="10">'
        f"{escape(label)}</text>"
        for i, label in enumerate(labels)
        if i % tick_every == 0
    ]
    for name, colour, values in series:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(
            f'<polyline fill="none" stroke="{escape(colour)}" stroke-width="1.5" points="{points}">'
            f"<title>{escape(name)}</title></polyline>"
        )
    return Markup(
        f'<svg class="line" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f"{''.join(parts)}</svg>"
    )


def bar(value: int, peak: int, *, width: int = 160, colour: str = "#2563eb") -> Markup:
    """A single horizontal bar, for queue depths."""
    value, peak = int(value), int(peak)
    filled = 0 if peak <= 0 else width * min(value, peak) / peak
    return Markup(
        f'<svg class="bar" width="{width}" height="12" viewBox="0 0 {width} 12" role="img" '
        f'aria-label="{value}"><rect width="{width}" height="12" fill="{GRID}"/>'
        f'<rect width="{filled:.1f}" height="12" fill="{escape(colour)}"/></svg>'
    )
