"""Inline SVG charts for the HTML report: horizontal bars and stacked columns.

Plain SVG strings, no JavaScript and nothing fetched: the report opens offline, in a
mail attachment or a browser with scripts turned off, and prints as it shows. Every
number shown is also in a table beside the chart; a chart's <title> elements give
the exact value of each bar on hover.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"
AXIS_COLOUR = "#6b7280"
GRID_COLOUR = "#e5e7eb"
TEXT_COLOUR = "#111827"


@dataclass(frozen=True)
class Segment:
    """One coloured part of a bar: its value, colour and legend name."""

    value: float
    colour: str
    name: str


@dataclass(frozen=True)
class Bar:
    label: str
    segments: tuple[Segment, ...]
    note: str = ""  # printed at the end of the bar (e.g. the formatted value)

    @property
    def total(self) -> float:
        return sum(max(0.0, s.value) for s in self.segments)


def nice_axis(value: float, max_ticks: int = 5) -> tuple[float, float]:
    """(axis maximum, tick step) for values up to `value`: the step is 1, 2 or 5 x 10^k,
    at most `max_ticks` steps, and the maximum a whole number of steps."""
    if value <= 0 or not math.isfinite(value):
        return 1.0, 0.25
    raw = value / max_ticks
    exponent = math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        step = multiple * 10**exponent
        if step * max_ticks >= value * (1 - 1e-12):
            break
    return step * math.ceil(value / step - 1e-9), step


def _ticks(maximum: float, step: float) -> list[float]:
    return [step * i for i in range(round(maximum / step) + 1)]


def _text(
    x: float,
    y: float,
    content: str,
    *,
    anchor: str = "start",
    size: int = 12,
    colour: str = TEXT_COLOUR,
    weight: str = "normal",
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
        f'font-weight="{weight}" fill="{colour}">{escape(content)}</text>'
    )


def _truncate(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def horizontal_bars(
    bars: Sequence[Bar],
    *,
    title: str,
    axis_format: Callable[[float], str],
    width: int = 640,
    label_width: int = 170,
    row_height: int = 26,
    axis_max: float | None = None,
    marker: tuple[float, str] | None = None,
    chart_id: str = "",
) -> str:
    """A horizontal bar chart, one row per bar, segments stacked left to right.

    `axis_max` fixes the scale (e.g. 1.0 for ratios); `marker` draws a dashed line at a
    value with a caption (e.g. the cluster's average).
    """
    top, bottom, right = (50 if marker else 34), 30, 90
    plot_width = width - label_width - right
    height = top + bottom + row_height * max(1, len(bars))
    if axis_max:
        maximum, step = axis_max, axis_max / 4
    else:
        maximum, step = nice_axis(max((b.total for b in bars), default=0.0))
    scale = plot_width / maximum
    label_chars = max(8, int(label_width / 7))
    parts = [_svg_open(width, height, title, chart_id), _text(0, 18, title, size=15, weight="600")]
    for tick in _ticks(maximum, step):
        x = label_width + tick * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - bottom}" '
            f'stroke="{GRID_COLOUR}"/>'
        )
        parts.append(
            _text(
                x,
                height - bottom + 16,
                axis_format(tick),
                anchor="middle",
                size=11,
                colour=AXIS_COLOUR,
            )
        )
    for i, bar in enumerate(bars):
        y = top + i * row_height
        parts.append(
            f"<g>{_text(label_width - 8, y + row_height * 0.62, _truncate(bar.label, label_chars), anchor='end')}"
            f"<title>{escape(bar.label)}</title></g>"
        )
        x = float(label_width)
        for segment in bar.segments:
            length = max(0.0, segment.value) * scale
            if length <= 0:
                continue
            parts.append(
                f'<rect x="{x:.2f}" y="{y + 4}" width="{length:.2f}" height="{row_height - 8}" '
                f'fill="{segment.colour}"><title>{escape(bar.label)}: {escape(segment.name)} '
                f"{escape(axis_format(segment.value))}</title></rect>"
            )
            x += length
        if bar.note:
            parts.append(_text(x + 6, y + row_height * 0.62, bar.note, size=11, colour=AXIS_COLOUR))
    if marker is not None:
        value, caption = marker
        x = label_width + min(value, maximum) * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - bottom}" '
            f'stroke="{TEXT_COLOUR}" stroke-dasharray="4 3"/>'
        )
        parts.append(_text(x, top - 10, caption, anchor="middle", size=11))
    parts.append("</svg>")
    return "".join(parts)


def stacked_columns(
    columns: Sequence[tuple[str, Sequence[Segment]]],
    *,
    title: str,
    axis_format: Callable[[float], str],
    width: int = 640,
    height: int = 320,
    legend: Sequence[tuple[str, str]] = (),
    chart_id: str = "",
) -> str:
    """Columns (e.g. one per day) of stacked segments, bottom to top, with a legend
    of (name, colour) below the axis."""
    left, right, top = 64, 12, 34
    legend_rows = math.ceil(len(legend) / 4)
    bottom = 40 + 18 * legend_rows
    plot_width, plot_height = width - left - right, height - top - bottom
    totals = [sum(max(0.0, s.value) for s in segments) for _, segments in columns]
    maximum, step = nice_axis(max(totals, default=0.0))
    slot = plot_width / max(1, len(columns))
    column_width = max(2.0, slot * 0.72)
    parts = [_svg_open(width, height, title, chart_id), _text(0, 18, title, size=15, weight="600")]
    for tick in _ticks(maximum, step):
        y = top + plot_height - tick / maximum * plot_height
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{GRID_COLOUR}"/>'
        )
        parts.append(
            _text(left - 6, y + 4, axis_format(tick), anchor="end", size=11, colour=AXIS_COLOUR)
        )
    label_every = max(1, math.ceil(len(columns) / 10))
    for i, (label, segments) in enumerate(columns):
        x = left + i * slot + (slot - column_width) / 2
        y = float(top + plot_height)
        for segment in segments:
            length = max(0.0, segment.value) / maximum * plot_height
            if length <= 0:
                continue
            y -= length
            parts.append(
                f'<rect x="{x:.2f}" y="{y:.2f}" width="{column_width:.2f}" height="{length:.2f}" '
                f'fill="{segment.colour}"><title>{escape(label)} {escape(segment.name)}: '
                f"{escape(axis_format(segment.value))}</title></rect>"
            )
        if i % label_every == 0:
            parts.append(
                _text(
                    x + column_width / 2,
                    top + plot_height + 16,
                    label,
                    anchor="middle",
                    size=11,
                    colour=AXIS_COLOUR,
                )
            )
    parts.append(
        f'<line x1="{left}" y1="{top + plot_height}" x2="{width - right}" '
        f'y2="{top + plot_height}" stroke="{AXIS_COLOUR}"/>'
    )
    for i, (name, colour) in enumerate(legend):
        lx = left + (i % 4) * (plot_width / 4)
        ly = top + plot_height + 32 + (i // 4) * 18
        parts.append(f'<rect x="{lx:.1f}" y="{ly - 10}" width="12" height="12" fill="{colour}"/>')
        parts.append(_text(lx + 17, ly, _truncate(name, 20), size=11))
    parts.append("</svg>")
    return "".join(parts)


def _svg_open(width: int, height: int, title: str, chart_id: str) -> str:
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    return (
        f'<svg{ident} width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'style="{FONT}">'
    )
