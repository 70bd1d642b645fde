"""Line charts as inline SVG, rendered on the server: the job page needs no JavaScript and no
charting library from a CDN, so it works on a machine with no internet."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

COLORS = ("#1a73e8", "#e8710a", "#188038", "#c5221f", "#9334e6", "#12b5cb")
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 76, 12, 44, 34
MAX_POINTS = 600  # per series


@dataclass
class Series:
    label: str
    points: list  # [(x, y)], x ascending; non-finite y values are left out
    color: str = COLORS[0]
    dashed: bool = False


@dataclass
class Chart:
    title: str
    series: list = field(default_factory=list)
    x_label: str = ""
    levels: list = field(default_factory=list)  # [(label, y, color)]: horizontal lines (a plan, a budget)
    y_format: object = None  # y value -> tick text (default: 3 significant digits)
    x_format: object = None
    y_zero: bool = False  # start the y axis at 0 (bytes, throughput)
    y_binary: bool = False  # bytes: ticks at round KiB/MiB/GiB values, not round decimal ones
    width: int = 560
    height: int = 230


def render(chart: Chart) -> str:
    """The chart as one <svg> element (with a <title> per series for screen readers and tooltips)."""
    e = html.escape
    series = [Series(s.label, thin([(x, y) for x, y in s.points if _finite(x) and _finite(y)]), s.color, s.dashed)
              for s in chart.series]
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points] + [y for _, y, _ in chart.levels if _finite(y)]
    w, h = chart.width, chart.height
    head = (f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' width='{w}' height='{h}' "
            f"viewBox='0 0 {w} {h}' role='img' aria-label='{e(chart.title)}'>"
            f"<text x='{_PAD_L}' y='16' class='ct'>{e(chart.title)}</text>")
    if not xs:
        return head + f"<text x='{w / 2}' y='{h / 2}' text-anchor='middle' class='empty'>no data yet</text></svg>"
    x0, x1 = _span(min(xs), max(xs))
    y0, y1 = _span(0.0 if chart.y_zero else min(ys), max(ys))
    unit = 1024 ** int(math.log(max(abs(y0), abs(y1), 1.0), 1024)) if chart.y_binary else 1
    y_ticks = [t * unit for t in ticks(y0 / unit, y1 / unit)]
    y0, y1 = min(y0, y_ticks[0]), max(y1, y_ticks[-1])
    px = lambda x: _PAD_L + (x - x0) / (x1 - x0) * (w - _PAD_L - _PAD_R)  # noqa: E731
    py = lambda y: h - _PAD_B - (y - y0) / (y1 - y0) * (h - _PAD_T - _PAD_B)  # noqa: E731
    parts = [head, _axes(chart, y_ticks, ticks(x0, x1), px, py, w, h)]
    for label, y, color in chart.levels:
        if _finite(y):
            parts.append(f"<line x1='{_PAD_L}' x2='{w - _PAD_R}' y1='{py(y):.1f}' y2='{py(y):.1f}' stroke='{color}' "
                         f"stroke-dasharray='6 3'><title>{e(label)}</title></line>")
    for s in series:
        parts.append(_series(s, px, py))
    parts.append(_legend(series, chart.levels, w))
    return "".join(parts) + "</svg>"


def _axes(chart, y_ticks, x_ticks, px, py, w, h) -> str:
    fy = chart.y_format or _num
    fx = chart.x_format or _num
    out = [f"<line x1='{_PAD_L}' x2='{_PAD_L}' y1='{_PAD_T}' y2='{h - _PAD_B}' class='axis'/>",
           f"<line x1='{_PAD_L}' x2='{w - _PAD_R}' y1='{h - _PAD_B}' y2='{h - _PAD_B}' class='axis'/>"]
    for t in y_ticks:
        y = py(t)
        out.append(f"<line x1='{_PAD_L}' x2='{w - _PAD_R}' y1='{y:.1f}' y2='{y:.1f}' class='grid'/>"
                   f"<text x='{_PAD_L - 4}' y='{y + 4:.1f}' text-anchor='end' class='tick'>{html.escape(fy(t))}</text>")
    for t in x_ticks:
        x = px(t)
        if _PAD_L - 0.5 <= x <= w - _PAD_R + 0.5:
            out.append(f"<text x='{x:.1f}' y='{h - _PAD_B + 14}' text-anchor='middle' class='tick'>"
                       f"{html.escape(fx(t))}</text>")
    out.append(f"<text x='{(w + _PAD_L) / 2}' y='{h - 4}' text-anchor='middle' class='tick'>"
               f"{html.escape(chart.x_label)}</text>")
    return "".join(out)


def _series(s: Series, px, py) -> str:
    if not s.points:
        return ""
    pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
    dash = " stroke-dasharray='4 3'" if s.dashed else ""
    out = [f"<polyline fill='none' stroke='{s.color}' stroke-width='2'{dash} points='{pts}'>"
           f"<title>{html.escape(s.label)}</title></polyline>"]
    if len(s.points) <= 60:  # a dot per point while they can be told apart
        out += [f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='2.5' fill='{s.color}'/>" for x, y in s.points]
    return "".join(out)


def _legend(series, levels, w) -> str:
    """One row under the title, wrapped onto a second when it does not fit."""
    items = [(s.label, s.color, s.dashed) for s in series] + [(label, c, True) for label, _, c in levels]
    out, x, y = [], _PAD_L, 30
    for label, color, dashed in items:
        width = 7 * len(label) + 30
        if x + width > w - _PAD_R and x > _PAD_L:
            x, y = _PAD_L, y + 13
        dash = " stroke-dasharray='4 3'" if dashed else ""
        out.append(f"<line x1='{x}' x2='{x + 16}' y1='{y - 4}' y2='{y - 4}' stroke='{color}' stroke-width='2'{dash}/>"
                   f"<text x='{x + 20}' y='{y}' class='lg'>{html.escape(label)}</text>")
        x += width
    return "".join(out)


def thin(points: list, most: int = MAX_POINTS) -> list:
    """At most `most` points, evenly spaced, the last kept: a days-long job's memory samples or a
    long run's epochs stay a page of a few hundred KiB (a chart is ~500 px wide anyway)."""
    if len(points) <= most:
        return points
    step = len(points) / (most - 1)
    return [points[int(i * step)] for i in range(most - 1)] + [points[-1]]


def ticks(lo: float, hi: float, n: int = 5) -> list:
    """About n round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    span = hi - lo
    raw = span / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    out, t = [], first
    while t <= hi + step * 0.5 and len(out) < 4 * n:
        out.append(round(t, 12))
        t += step
    return out


def _span(lo: float, hi: float) -> tuple:
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.1 or 1.0  # one value: a band around it
    return lo - pad, hi + pad


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: float) -> str:
    return f"{v:.3g}"
