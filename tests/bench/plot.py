"""latency.svg of `make bench`: the distribution (CDF) of its latency samples, hand-written SVG."""

from __future__ import annotations

import html
import math
from typing import Any

KINDS = {  # sample key: (legend, colour)
    "start": ("submit→start", "#2f9e44"),
    "ended": ("submit→job ended (finished_at)", "#4c6ef5"),
    "finish": ("submit→finished (wait returned)", "#d9480f"),
}
STORES = {"SQLite": "", "PostgreSQL": "6 4"}  # store: its curves' stroke-dasharray
WIDTH, HEIGHT = 640, 480
LEFT, RIGHT, TOP, BOTTOM = 56, 624, 60, 360  # the plot area


def latency_svg(r: dict[str, Any]) -> str:
    """The share of jobs (y) answered within x ms, for each latency and store of report r;
    the x axis ends past the largest p99, slower samples are drawn at its edge."""
    series = {"SQLite": r["latency_samples"]}
    if "postgres" in r:
        series["PostgreSQL"] = r["postgres"]["latency_samples"]
    top = max(_p99(v) for samples in series.values() for v in samples.values())
    step = _tick_step(top * 1.1)
    xmax = step * math.ceil(top * 1.1 / step)
    e = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        '<text x="12" y="20" font-size="14" font-weight="bold">dts latency, one job at a time, '
        "1 worker &#215; concurrency 2 (CDF)</text>",
        f'<text x="12" y="38" fill="#555">{e(r["date"])}; {e(r["machine"])}; '
        f"{len(r['latency_samples']['finish'])} jobs per curve</text>",
        *_axes(xmax, step),
    ]
    for store, samples in series.items():
        for kind, values in samples.items():
            parts.append(
                f'<path d="{_cdf_path(values, xmax)}" fill="none" stroke="{KINDS[kind][1]}" '
                f'stroke-width="1.5"{_dash(store)}/>'
            )
    parts += _legend(list(series))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else 0.0


def _tick_step(span: float) -> float:
    """1, 2 or 5 times a power of ten: 4 to 10 ticks over span."""
    power = 10 ** math.floor(math.log10(max(span, 1e-3) / 5))
    return next(m * power for m in (1, 2, 5, 10) if span / (m * power) <= 10)


def _x(ms: float, xmax: float) -> float:
    return LEFT + min(ms, xmax) / xmax * (RIGHT - LEFT)


def _y(share: float) -> float:
    return BOTTOM - share * (BOTTOM - TOP)


def _axes(xmax: float, step: float) -> list[str]:
    """Grid lines, ticks and the labels of both axes."""
    out = []
    for i in range(round(xmax / step) + 1):
        x = _x(i * step, xmax)
        out += [
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{BOTTOM}" stroke="#eee"/>',
            f'<text x="{x:.1f}" y="{BOTTOM + 16}" text-anchor="middle">{i * step:g}</text>',
        ]
    for share in (0, 0.25, 0.5, 0.75, 1):
        y = _y(share)
        out += [
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" stroke="#eee"/>',
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{share:.0%}</text>',
        ]
    return [
        *out,
        f'<line x1="{LEFT}" y1="{_y(0.99):.1f}" x2="{RIGHT}" y2="{_y(0.99):.1f}" stroke="#aaa" '
        'stroke-dasharray="2 3"/>',
        f'<text x="{RIGHT - 4}" y="{_y(0.99) + 14:.1f}" text-anchor="end" fill="#777">p99</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{BOTTOM - TOP}" '
        'fill="none" stroke="#333"/>',
        f'<text x="{(LEFT + RIGHT) / 2}" y="{BOTTOM + 34}" text-anchor="middle">'
        "latency, ms (slower samples at the right edge)</text>",
        f'<text x="14" y="{(TOP + BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(TOP + BOTTOM) / 2})">jobs within, %</text>',
    ]


def _cdf_path(values: list[float], xmax: float) -> str:
    """The empirical CDF as steps: up by 1/n at each sample."""
    ordered = sorted(values)
    n = len(ordered)
    points = [f"M{_x(ordered[0], xmax):.1f},{_y(0):.1f}"] if n else []
    for i, ms in enumerate(ordered):
        x = _x(ms, xmax)
        points.append(f"L{x:.1f},{_y(i / n):.1f} L{x:.1f},{_y((i + 1) / n):.1f}")
    return " ".join(points)


def _legend(stores: list[str]) -> list[str]:
    """Below the plot: one row per latency, a line of each store's dash pattern."""
    which = ", ".join(f"{store} {'dashed' if STORES[store] else 'solid'}" for store in stores)
    out = [f'<text x="20" y="{BOTTOM + 52}" fill="#555">{which}</text>']
    for row, (label, colour) in enumerate(KINDS.values()):
        y = BOTTOM + 70 + row * 16
        for col, store in enumerate(stores):
            x = 20 + col * 36
            out.append(
                f'<line x1="{x}" y1="{y - 4}" x2="{x + 28}" y2="{y - 4}" stroke="{colour}" '
                f'stroke-width="2"{_dash(store)}/>'
            )
        out.append(f'<text x="{20 + len(stores) * 36}" y="{y}">{html.escape(label)}</text>')
    return out


def _dash(store: str) -> str:
    return f' stroke-dasharray="{STORES[store]}"' if STORES[store] else ""
