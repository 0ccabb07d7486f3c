"""Bar charts as SVG text rendered on the server: no JavaScript, no CDN, readable on a phone.

One ``<g class="slot">`` per interval or day, each with a ``<title>`` (a tooltip, and what a screen
reader says), bars up for one quantity (consumption or production) and down for the other
(export). A slot without data is a hatched column, so a gap is visible and never a zero; a slot
still to come is left blank; each bar links to what stands behind it (its proof, or its day).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from zoneinfo import ZoneInfo

from meterchain.backend.web.series import Slot

WIDTH = 720
HEIGHT = 240
PAD_LEFT = 48
PAD_BOTTOM = 22
PAD_TOP = 8


@dataclass(frozen=True, slots=True)
class ChartSpec:
    title: str
    up: str  # "import" or "export": which register's energy is drawn upwards
    up_label: str  # e.g. "consumption", "PV production"
    down_label: str | None = None  # the other register, drawn downwards (None: not drawn)
    up_class: str = "imp"
    down_class: str = "exp"


def kwh(wh: int) -> str:
    """Wh as kWh text with three decimals, computed on integers (no float rounding)."""
    sign = "-" if wh < 0 else ""
    wh = abs(wh)
    return f"{sign}{wh // 1000:,}.{wh % 1000:03d} kWh"


def _values(slot: Slot, spec: ChartSpec) -> tuple[int | None, int | None]:
    if spec.up == "import":
        return slot.import_wh, slot.export_wh if spec.down_label else None
    return slot.export_wh, slot.import_wh if spec.down_label else None


def _nice(top: int) -> int:
    """A round axis maximum ≥ top (1, 2, 5 × 10^k Wh)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= top:
                return m * step
        step *= 10


def _tick_label(slot: Slot, zone: ZoneInfo, daily: bool) -> str | None:
    local = dt.datetime.fromtimestamp(slot.start, zone)
    if daily:
        return local.strftime("%a %-d")
    if local.minute == 0 and local.hour % 3 == 0:
        return local.strftime("%H:%M")
    return None


def bar_chart(slots: Sequence[Slot], spec: ChartSpec, zone: str, *, daily: bool = False,
              now: int | None = None, link: Callable[[Slot], str | None] | None = None) -> str:
    """The SVG of ``slots``: an accessible image with one titled group per slot.

    Three states are drawn apart: a value (a bar, 0 Wh is a bar of no height on the axis), no
    data (a hatched column over the whole height, "no data" in its title) and, with ``now``, a
    slot still to come (nothing). ``link`` gives a slot's target (its proof, or its day): one
    click from a bar to what stands behind it.
    """
    tz = ZoneInfo(zone)
    values = [_values(s, spec) for s in slots]
    empty = all(up is None and down is None for up, down in values)
    top = _nice(max([v or 0 for v, _ in values] + [1]))
    bottom = _nice(max([d or 0 for _, d in values] + [1])) if spec.down_label else 0
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    zero_y = PAD_TOP + plot_h * top / (top + bottom)
    scale = plot_h / (top + bottom)
    n = max(len(slots), 1)
    step = (WIDTH - PAD_LEFT) / n
    bar_w = max(step * 0.8, 1.0)
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(spec.title)}" data-slots="{len(slots)}" '
        'preserveAspectRatio="none">',
        f"<title>{escape(spec.title)}</title>",
        '<defs><pattern id="nodata" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eceff1"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#b0bec5" stroke-width="2"/></pattern></defs>',
        f'<line class="axis" x1="{PAD_LEFT}" x2="{WIDTH}" y1="{zero_y:.1f}" y2="{zero_y:.1f}"/>',
    ]
    if not empty:  # no scale over nothing: "1 Wh" would read as a measured zero
        parts.append(f'<text class="tick" x="{PAD_LEFT - 4}" y="{PAD_TOP + 10}" '
                     f'text-anchor="end">{escape(_axis(top))}</text>')
    if bottom and not empty:
        parts.append(f'<text class="tick" x="{PAD_LEFT - 4}" y="{HEIGHT - PAD_BOTTOM}" '
                     f'text-anchor="end">−{escape(_axis(bottom))}</text>')
    for k, (slot, (up, down)) in enumerate(zip(slots, values, strict=True)):
        x = PAD_LEFT + k * step + (step - bar_w) / 2
        local = dt.datetime.fromtimestamp(slot.start, tz)
        when = local.strftime("%a %-d %b") if daily else (
            f"{local:%H:%M}–{dt.datetime.fromtimestamp(slot.end, tz):%H:%M} {local:%Z}")
        missing = up is None and down is None
        future = missing and now is not None and slot.start >= now
        if future:
            label = f"{when}: not yet"
        elif missing:
            label = f"{when}: no data"
        else:
            label = f"{when}: {spec.up_label} {kwh(up or 0)}"
            if spec.down_label:
                label += f", {spec.down_label} {kwh(down or 0)}"
            if slot.substituted:
                label += " (estimated: spread over a gap in the readings)"
            if slot.late:
                label += " (late: a reading came after the settlement deadline; settled again)"
        state = " future" if future else " missing" if missing else ""
        target = None if missing or link is None else link(slot)
        if target:
            label += " · click for its proof" if slot.seq is not None else " · click to open"
        marks = (" substituted" if slot.substituted else "") + (" late" if slot.late else "")
        group = [f'<g class="slot{state}{marks}" '
                 f'data-start="{slot.start}">' + (f'<a href="{escape(target)}">' if target else "")
                 + f"<title>{escape(label)}</title>"]
        if future:
            pass
        elif missing:
            group.append(f'<rect class="gap" x="{x:.2f}" y="{PAD_TOP}" fill="url(#nodata)" '
                         f'width="{bar_w:.2f}" height="{plot_h:.1f}"/>')
        else:
            # an invisible full-height target, so a 0 Wh bar can be clicked too
            group.append(f'<rect class="hit" x="{x:.2f}" y="{PAD_TOP}" width="{bar_w:.2f}" '
                         f'height="{plot_h:.1f}" fill="transparent"/>')
            h = (up or 0) * scale
            group.append(f'<rect class="{spec.up_class}" x="{x:.2f}" y="{zero_y - h:.2f}" '
                         f'width="{bar_w:.2f}" height="{h:.2f}"/>')
            if spec.down_label:
                group.append(f'<rect class="{spec.down_class}" x="{x:.2f}" y="{zero_y:.2f}" '
                             f'width="{bar_w:.2f}" height="{(down or 0) * scale:.2f}"/>')
            if slot.late:  # a mark above the bar: settled again after a late reading
                group.append(f'<rect class="late-mark" x="{x:.2f}" y="{PAD_TOP}" '
                             f'width="{bar_w:.2f}" height="4"/>')
        group.append("</a></g>" if target else "</g>")
        parts.append("".join(group))
        tick = _tick_label(slot, tz, daily)
        if tick and (not daily or n <= 10 or local.day % 5 == 1):
            parts.append(f'<text class="tick" x="{x + bar_w / 2:.1f}" y="{HEIGHT - 6}" '
                         f'text-anchor="middle">{escape(tick)}</text>')
    if empty:  # on top of the hatched columns, so it is read first
        middle = (PAD_LEFT + WIDTH) / 2
        parts.append(f'<rect class="nodata-box" x="{middle - 150:.0f}" y="{PAD_TOP + plot_h / 2 - 22:.0f}"'
                     f' width="300" height="36" rx="4" fill="#ffffff" fill-opacity="0.9"/>'
                     f'<text class="nodata-label" x="{middle:.0f}" y="{PAD_TOP + plot_h / 2 + 3:.0f}" '
                     'text-anchor="middle">no data for this period</text>')
    parts.append("</svg>")
    return "".join(parts)


def _axis(wh: int) -> str:
    return f"{wh / 1000:g} kWh" if wh >= 1000 else f"{wh} Wh"
