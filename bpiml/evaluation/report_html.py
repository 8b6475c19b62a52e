"""The HTML pieces of the visual report: tables and inline SVG line charts (no plotting library)."""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return "-" if value is None else str(value)


def html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def svg_chart(series: Mapping[str, Sequence[float]], title: str, width: int = 420, height: int = 220) -> str:
    """Inline SVG line chart of one or more series (x = index)."""
    clean = {k: [float(v) for v in vals if v is not None and math.isfinite(float(v))] for k, vals in series.items()}
    clean = {k: v for k, v in clean.items() if v}
    if not clean:
        return f"<p>{html.escape(title)}: no data</p>"
    lo = min(min(v) for v in clean.values())
    hi = max(max(v) for v in clean.values())
    hi = hi if hi > lo else lo + 1.0
    n = max(len(v) for v in clean.values())
    left, right, top, bottom = 48, 10, 22, 24
    pw, ph = width - left - right, height - top - bottom

    def xy(i: int, v: float) -> str:
        x = left + (pw * i / (n - 1) if n > 1 else pw / 2)
        y = top + ph * (1 - (v - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="14" font-size="12" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
             f'<text x="{left - 4}" y="{top + 10}" font-size="10" text-anchor="end">{hi:.4g}</text>',
             f'<text x="{left - 4}" y="{top + ph}" font-size="10" text-anchor="end">{lo:.4g}</text>',
             f'<text x="{left}" y="{height - 8}" font-size="10">0</text>',
             f'<text x="{left + pw}" y="{height - 8}" font-size="10" text-anchor="end">{n - 1}</text>']
    for j, (name, values) in enumerate(clean.items()):
        color = COLORS[j % len(COLORS)]
        points = " ".join(xy(i, v) for i, v in enumerate(values))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{points}"><title>'
                     f'{html.escape(name)}</title></polyline>')
        parts.append(f'<text x="{left + pw - 4}" y="{top + 12 + 12 * j}" font-size="10" text-anchor="end" '
                     f'fill="{color}">{html.escape(name)} ({values[-1]:.4g})</text>')
    return "".join(parts) + "</svg>"


CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:right}th{background:#eee}
td:first-child,th:first-child{text-align:left}figure{margin:0 0 1.2em}figcaption{font-size:13px;margin-bottom:3px}
.charts{display:flex;flex-wrap:wrap;gap:12px}figure img{max-width:100%;height:auto}"""


def curves_html(curves: Mapping[str, Any]) -> str:
    charts = []
    for name, value in curves.items():
        series = value if isinstance(value, Mapping) else {name: value}
        charts.append(svg_chart(series, name))
    return f'<div class="charts">{"".join(charts)}</div>' if charts else "<p>(no curves)</p>"


