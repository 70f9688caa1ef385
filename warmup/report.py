"""The warmup report: planned versus actual volume per day per provider, with the rates beneath.

``history`` reads the per-day outcome counters the adaptive hold keeps in Redis;
``render_html`` draws them as inline SVG (no JavaScript, no external files), and
``write_report`` also writes PNG through ``rsvg-convert`` (Debian ``librsvg2-bin``).
"""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from core.store import Store
from warmup.gate import load_ips, utc_day
from warmup.schedules import PROVIDERS, budget

COLORS = {
    "gmail": "#d93025",
    "microsoft": "#0078d4",
    "yahoo": "#6001d2",
    "apple": "#555555",
    "other": "#188038",
}


@dataclass
class Day:
    day: date
    planned: int | None  # None: warm by then
    sent: int = 0
    deferred: int = 0
    bounced: int = 0
    complained: int = 0

    @property
    def attempts(self) -> int:
        return self.sent + self.deferred + self.bounced

    def rate(self, kind: str) -> float:
        if kind == "complained":
            return self.complained / self.sent if self.sent else 0.0
        return getattr(self, kind) / self.attempts if self.attempts else 0.0


async def history(store: Store, ip: str, now: float) -> dict[str, list[Day]]:
    """Per provider, one ``Day`` per calendar day from the warmup's start to today."""
    config = (await load_ips(store))[ip]
    today = utc_day(now)
    out: dict[str, list[Day]] = {}
    for provider in PROVIDERS:
        raw = await store.warmup.daily_outcomes(ip, provider)
        counts: dict[str, dict[str, int]] = {}
        for name, value in raw.items():
            stamp, _, kind = name.partition(":")
            counts.setdefault(stamp, {})[kind] = value
        days = []
        moment = config.started_on
        while moment <= today:
            limits = budget(config.schedule, (moment - config.started_on).days)
            found = counts.get(moment.strftime("%Y%m%d"), {})
            days.append(
                Day(
                    moment,
                    None if limits.warm else limits.daily,
                    **{k: found.get(k, 0) for k in ("sent", "deferred", "bounced", "complained")},
                )
            )
            moment += timedelta(days=1)
        if any(d.attempts for d in days):
            out[provider] = days
    return out


def render_html(title: str, series: dict[str, list[Day]]) -> str:
    width, height, left, top = 900, 300, 60, 20
    plot_w, plot_h = width - left - 20, height - top - 40
    days = max((len(v) for v in series.values()), default=1)
    peak = max([1] + [max(d.planned or 0, d.sent) for v in series.values() for d in v])

    def x(i: int) -> float:
        return left + plot_w * (i / max(1, days - 1))

    def y(value: float, top_value: float = peak, base: int = top + plot_h) -> float:
        return base - plot_h * (value / top_value)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height * 2 + 40}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height * 2 + 40}" fill="#fff"/>',
        f'<text x="{left}" y="14" font-size="13">Volume per day: planned (dashed) and '
        "sent (solid)</text>",
    ]
    for frac in (0, 0.25, 0.5, 0.75, 1):
        yy = y(peak * frac)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{int(peak * frac):,}</text>'
        )
    for provider, days_of in series.items():
        color = COLORS.get(provider, "#000")
        planned = " ".join(
            f"{x(i):.1f},{y(d.planned):.1f}" for i, d in enumerate(days_of) if d.planned is not None
        )
        sent = " ".join(f"{x(i):.1f},{y(d.sent):.1f}" for i, d in enumerate(days_of))
        parts.append(
            f'<polyline points="{planned}" fill="none" stroke="{color}" stroke-dasharray="5,4"/>'
        )
        parts.append(f'<polyline points="{sent}" fill="none" stroke="{color}" stroke-width="2"/>')
    # rates beneath
    base2 = height * 2
    rate_top = max([0.05] + [d.rate("deferred") for v in series.values() for d in v])
    parts.append(
        f'<text x="{left}" y="{height + 24}" font-size="13">Deferral rate (bars) and '
        "bounce rate (line) per day</text>"
    )
    for frac in (0, 0.5, 1):
        yy = y(rate_top * frac, rate_top, base2)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{rate_top * frac:.0%}</text>'
        )
    bar = max(2.0, plot_w / max(1, days) / (len(series) + 1))
    for k, (provider, days_of) in enumerate(series.items()):
        color = COLORS.get(provider, "#000")
        for i, d in enumerate(days_of):
            top_y = y(d.rate("deferred"), rate_top, base2)
            parts.append(
                f'<rect x="{x(i) + k * bar - bar:.1f}" y="{top_y:.1f}" width="{bar:.1f}" '
                f'height="{base2 - top_y:.1f}" fill="{color}" opacity="0.55"/>'
            )
        bounce = " ".join(
            f"{x(i):.1f},{y(d.rate('bounced'), rate_top, base2):.1f}" for i, d in enumerate(days_of)
        )
        parts.append(f'<polyline points="{bounce}" fill="none" stroke="{color}" stroke-width="1"/>')
    for i in range(0, days, max(1, days // 10)):
        parts.append(f'<text x="{x(i):.1f}" y="{base2 + 16}" text-anchor="middle">day {i}</text>')
    for k, provider in enumerate(series):
        parts.append(
            f'<rect x="{left + 120 * k}" y="{base2 + 24}" width="10" height="10" '
            f'fill="{COLORS.get(provider, "#000")}"/><text x="{left + 120 * k + 14}" '
            f'y="{base2 + 33}">{provider}</text>'
        )
    parts.append("</svg>")
    rows = []
    for provider, days_of in series.items():
        for i, d in enumerate(days_of):
            rows.append(
                f"<tr><td>{provider}</td><td>{i}</td><td>{d.day}</td>"
                f"<td>{'warm' if d.planned is None else f'{d.planned:,}'}</td><td>{d.sent:,}</td>"
                f"<td>{d.rate('deferred'):.1%}</td><td>{d.rate('bounced'):.1%}</td>"
                f"<td>{d.rate('complained'):.2%}</td></tr>"
            )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2rem}table{border-collapse:collapse}"
        "td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}"
        "<table><tr><th>provider</th><th>day</th><th>date</th><th>planned</th><th>sent</th>"
        f"<th>deferred</th><th>bounced</th><th>complaints</th></tr>{''.join(rows)}</table>"
        "</body></html>"
    )


def write_report(path: Path, title: str, series: dict[str, list[Day]]) -> None:
    document = render_html(title, series)
    if path.suffix.lower() == ".png":
        converter = shutil.which("rsvg-convert")
        if converter is None:
            raise RuntimeError(
                "PNG needs rsvg-convert (apt-get install librsvg2-bin); or use .html"
            )
        svg = document[document.index("<svg") : document.index("</svg>") + 6]
        with tempfile.NamedTemporaryFile("w", suffix=".svg", delete=False) as handle:
            handle.write(svg)
        subprocess.run([converter, "-o", str(path), handle.name], check=True)
        Path(handle.name).unlink()
        return
    path.write_text(document)
