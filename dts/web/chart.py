"""The overview's chart: finished jobs per minute as stacked bars, an inline SVG made here
(no script, no library). Pure: buckets in, markup out."""

from __future__ import annotations

import time
from collections.abc import Sequence

from markupsafe import Markup, escape

from dts.domain import ActivityBucket

WIDTH, HEIGHT = 720, 180
LEFT, BOTTOM, TOP = 40, 20, 10
# (field, css class, label) from the bottom of a bar up
SERIES = (
    ("succeeded", "ok", "succeeded"),
    ("failed", "bad", "failed"),
    ("cancelled", "off", "cancelled"),
)


def nice_max(value: int) -> int:
    """The y axis's top: 1, 2 or 5 times a power of ten, at least `value` (and 1)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= value:
                return step * m
        step *= 10


def activity_svg(buckets: Sequence[ActivityBucket]) -> Markup:
    """Stacked bars, one per bucket (oldest on the left), each with a tooltip; axis labels
    give the top count and the first and last minute (UTC)."""
    top = nice_max(max((b.succeeded + b.failed + b.cancelled for b in buckets), default=0))
    plot_w, plot_h = WIDTH - LEFT - 5, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(len(buckets), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="jobs finished per minute" xmlns="http://www.w3.org/2000/svg">',
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 5}" '
        f'y2="{TOP + plot_h}"/>',
        f'<text class="label" x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{top}</text>',
        f'<text class="label" x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">0</text>',
    ]
    for i, b in enumerate(buckets):
        x = LEFT + i * slot
        y: float = TOP + plot_h
        tip = f"{_minute(b.start)} UTC: " + ", ".join(
            f"{getattr(b, name)} {label}" for name, _, label in SERIES
        )
        parts.append(f"<g><title>{escape(tip)}</title>")
        for name, css, _ in SERIES:
            count: int = getattr(b, name)
            if count:
                h = count / top * plot_h
                y -= h
                parts.append(
                    f'<rect class="{css}" x="{x + 1:.1f}" y="{y:.1f}" '
                    f'width="{max(slot - 2, 1):.1f}" height="{h:.1f}"/>'
                )
        parts.append("</g>")
    if buckets:
        for anchor, x, b in (
            ("start", LEFT, buckets[0]),
            ("end", WIDTH - 5, buckets[-1]),
        ):
            parts.append(
                f'<text class="label" x="{x}" y="{HEIGHT - 4}" text-anchor="{anchor}">'
                f"{_minute(b.start)}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def _minute(t: float) -> str:
    return time.strftime("%H:%M", time.gmtime(t))
