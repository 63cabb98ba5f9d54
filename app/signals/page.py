"""The /ops page: one server-rendered HTML document, inline CSS and SVG, no script.

Fired signals first, each with a sparkline of its recorded samples; the stage and its
reasons; the advice; the flags in effect. Everything shown is escaped.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from app.signals.model import Report, Signal, format_number

Series = dict[str, list[tuple[datetime, str, float | None]]]
COLOURS = {"ok": "#1a7f37", "warn": "#b58100", "critical": "#cf222e", "unknown": "#6e7781"}
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1f2328;background:#fff}
h1{font-size:1.3rem;margin:0 0 .3rem}h2{font-size:1.05rem;margin:1.4rem 0 .4rem}
table{border-collapse:collapse;width:100%}td,th{padding:.3rem .5rem;text-align:left;
border-bottom:1px solid #d0d7de;vertical-align:top}th{font-weight:600;background:#f6f8fa}
.status{font-weight:600;text-transform:uppercase;font-size:.8rem}
.stage{font-size:1.1rem}.muted{color:#6e7781}.details{font-size:.8rem;color:#57606a}
code{background:#f6f8fa;padding:0 .2rem}
"""


def render(report: Report, series: Series, hours: float) -> str:
    rows = "\n".join(_row(item, series.get(item.key, [])) for item in report.signals)
    reasons = "".join(f"<li>{escape(reason)}</li>" for reason in report.stage.reasons)
    advice = "".join(f"<li>{escape(line)}</li>" for line in report.advice) or (
        "<li class=muted>nothing to flip</li>"
    )
    flags = "".join(
        f"<tr><td><code>{escape(name)}</code></td><td>{escape(value)}</td></tr>"
        for name, value in report.flags.items()
    )
    fired = sum(1 for item in report.signals if item.fired)
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=60>
<meta name=viewport content="width=device-width,initial-scale=1">
<title>pgfirst ops: stage {report.stage.number}</title><style>{STYLE}</style></head>
<body>
<h1>pgfirst signals</h1>
<p class=muted>sampled {escape(report.sampled_at.isoformat(timespec="seconds"))};
charts: the last {hours:g} h of recorded samples</p>
<p class=stage id=stage>Stage {report.stage.number}: <strong>{escape(report.stage.name)}</strong>
</p><ul>{reasons}</ul>
<h2>Advice</h2><ul id=advice>{advice}</ul>
<h2>Signals ({fired} fired)</h2>
<table id=signals><thead><tr><th>status</th><th>signal</th><th>value</th><th>warn / critical
</th><th>trend</th><th>recommendation</th></tr></thead><tbody>
{rows}
</tbody></table>
<h2>Flags in effect</h2><table id=flags>{flags}</table>
</body></html>"""


def _row(item: Signal, points: list[tuple[datetime, str, float | None]]) -> str:
    colour = COLOURS[item.status]
    value = "—" if item.value is None else f"{format_number(item.value)} {escape(item.unit)}"
    details = "".join(f"<div class=details>{escape(line)}</div>" for line in item.details)
    flag = f" <code>{escape(item.flag)}</code>" if item.flag else ""
    return (
        f'<tr data-key="{escape(item.key)}" data-status="{item.status}">'
        f'<td class=status style="color:{colour}">{item.status}</td>'
        f"<td><code>{escape(item.key)}</code></td>"
        f"<td>{value}</td>"
        f"<td>{format_number(item.warn)} / {format_number(item.critical)}</td>"
        f"<td>{sparkline(points)}</td>"
        f"<td>{escape(item.recommendation)}{flag}{details}</td></tr>"
    )


def sparkline(points: list[tuple[datetime, str, float | None]], width: int = 120) -> str:
    """An inline SVG polyline of the values, a dot per fired sample."""
    values = [(status, value) for _, status, value in points if value is not None]
    if len(values) < 2:
        return "<span class=muted>—</span>"
    height = 24
    low = min(v for _, v in values)
    high = max(v for _, v in values)
    span = (high - low) or 1.0
    step = width / (len(values) - 1)
    coords = [
        (i * step, height - 2 - (v - low) / span * (height - 4)) for i, (_, v) in enumerate(values)
    ]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.5" fill="{COLOURS[status]}"/>'
        for (x, y), (status, _) in zip(coords, values, strict=True)
        if status in ("warn", "critical")
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role=img>'
        f'<polyline fill="none" stroke="#57606a" stroke-width="1" points="{line}"/>{dots}</svg>'
    )
