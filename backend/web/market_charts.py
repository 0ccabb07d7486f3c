"""SVG price charts of the market page, drawn on the server like the energy charts (charts.py):
no JavaScript, every point with a ``<title>`` a screen reader says and a tooltip shows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape
from zoneinfo import ZoneInfo

from meterchain.backend.settlement.market import DayView

WIDTH, HEIGHT = 720, 220
LEFT, BOTTOM, TOP = 56, 22, 10


def eur_kwh(micro: int) -> str:
    """µ€/kWh as €/kWh with three decimals (integer arithmetic; half up on the magnitude)."""
    milli = (abs(micro) + 500) // 1000
    return f"{'−' if micro < 0 else ''}{milli // 1000}.{milli % 1000:03d} €/kWh"


def _scale(values: Sequence[int]) -> tuple[int, int]:
    low, high = min([*values, 0]), max([*values, 1])
    pad = max((high - low) // 10, 1)
    return low - pad if low < 0 else 0, high + pad


def price_history(days: Sequence[DayView], title: str) -> str:
    """Each day's volume-weighted local price as a line, within the band [p_f, p_g] shaded."""
    n = max(len(days), 1)
    lo, hi = _scale([d.retail for d in days] + [d.feed_in for d in days]
                    + [d.mean_price for d in days if d.mean_price is not None])
    plot_h, step = HEIGHT - TOP - BOTTOM, (WIDTH - LEFT) / n

    def y(v: int) -> float:
        return TOP + plot_h * (hi - v) / (hi - lo)

    def x(k: int) -> float:
        return LEFT + step * (k + 0.5)

    parts = [f'<svg class="pricechart" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
             f'data-days="{len(days)}" preserveAspectRatio="none"><title>{escape(title)}</title>']
    if days:
        top = " ".join(f"{x(k):.1f},{y(d.retail):.1f}" for k, d in enumerate(days))
        bottom = " ".join(f"{x(k):.1f},{y(d.feed_in):.1f}" for k, d in reversed(list(enumerate(days))))
        parts.append(f'<polygon class="band" points="{top} {bottom}"><title>price band: feed-in '
                     f'tariff p_f to grid price p_g</title></polygon>')
        parts.append(f'<polyline class="edge" points="{top}"/>')
        parts.append(f'<polyline class="edge" points="{bottom}"/>')
    for value in (hi, lo + (hi - lo) // 2):
        parts.append(f'<text class="tick" x="{LEFT - 4}" y="{y(value) + 4:.1f}" '
                     f'text-anchor="end">{escape(eur_kwh(value).removesuffix(" €/kWh"))}</text>')
    points = [(k, d) for k, d in enumerate(days) if d.mean_price is not None]
    run: list[str] = []
    for k, d in enumerate(days):
        if d.mean_price is None:
            if len(run) > 1:
                parts.append(f'<polyline class="line" points="{" ".join(run)}"/>')
            run = []
        else:
            run.append(f"{x(k):.1f},{y(d.mean_price):.1f}")
    if len(run) > 1:
        parts.append(f'<polyline class="line" points="{" ".join(run)}"/>')
    for k, d in points:
        assert d.mean_price is not None
        label = (f"{d.day}: local {eur_kwh(d.mean_price)} (from {eur_kwh(d.low or 0)} to "
                 f"{eur_kwh(d.high or 0)}), {d.local_wh / 1000:.1f} kWh traded; band "
                 f"{eur_kwh(d.feed_in)} … {eur_kwh(d.retail)}")
        parts.append(f'<g class="day" data-day="{d.day}" data-price="{d.mean_price}">'
                     f'<circle cx="{x(k):.1f}" cy="{y(d.mean_price):.1f}" r="3"/>'
                     f'<title>{escape(label)}</title></g>')
    for k, d in enumerate(days):
        if n <= 10 or k % 5 == 0:
            parts.append(f'<text class="tick" x="{x(k):.1f}" y="{HEIGHT - 6}" '
                         f'text-anchor="middle">{escape(d.day[5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def grid_curve(curve: Sequence[tuple[str, int, int, int]], start: int, end: int, now: int,
               zone: str, title: str) -> str:
    """Imported grid prices (p_g and p_f) as steps over [start, end), with a mark at ``now``."""
    tz = ZoneInfo(zone)
    lo, hi = _scale([p for _, _, _, p in curve])
    plot_h, span = HEIGHT - TOP - BOTTOM, max(end - start, 1)

    def x(t: int) -> float:
        return LEFT + (WIDTH - LEFT) * (min(max(t, start), end) - start) / span

    def y(v: int) -> float:
        return TOP + plot_h * (hi - v) / (hi - lo)

    parts = [f'<svg class="pricechart grid" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
             f'data-steps="{len(curve)}" preserveAspectRatio="none"><title>{escape(title)}</title>']
    for value in (hi, lo + (hi - lo) // 2):
        parts.append(f'<text class="tick" x="{LEFT - 4}" y="{y(value) + 4:.1f}" '
                     f'text-anchor="end">{escape(eur_kwh(value).removesuffix(" €/kWh"))}</text>')
    for kind, cls, name in (("retail", "line", "grid price"), ("feed_in", "feed", "feed-in")):
        for _, s, e, price in (c for c in curve if c[0] == kind):
            label = (f"{dt.datetime.fromtimestamp(s, tz):%a %H:%M}–"
                     f"{dt.datetime.fromtimestamp(e, tz):%H:%M %Z}: {name} {eur_kwh(price)}")
            parts.append(f'<g class="step {kind}"><line class="{cls}" x1="{x(s):.1f}" '
                         f'x2="{x(e):.1f}" y1="{y(price):.1f}" y2="{y(price):.1f}"/>'
                         f'<title>{escape(label)}</title></g>')
    t = start
    while t < end:
        local = dt.datetime.fromtimestamp(t, tz)
        if local.hour % 6 == 0 and local.minute == 0:
            parts.append(f'<text class="tick" x="{x(t):.1f}" y="{HEIGHT - 6}" '
                         f'text-anchor="middle">{local:%a %H:%M}</text>')
        t += 3600
    if start <= now < end:
        parts.append(f'<line class="now" x1="{x(now):.1f}" x2="{x(now):.1f}" y1="{TOP}" '
                     f'y2="{HEIGHT - BOTTOM}"><title>now</title></line>')
    parts.append("</svg>")
    return "".join(parts)
