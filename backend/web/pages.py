"""The household's pages: periods with charts, live power, intervals with proofs, bills, exports.

Every handler starts with ``ctx.household(request, household)`` (session → its own household,
else 404) and reads readings only through ``PartyTables`` with that household's principal, so a
page can show nothing outside the household's metering points and occupancy periods.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from meterchain.backend.access.model import (
    DEVICE_PATTERN,
    ID_PATTERN,
    MeterBinding,
    MeteringPoint,
    PointKind,
    Principal,
)
from meterchain.backend.access.tables import OPEN_END, PartyTables
from meterchain.backend.erasure.rules import utc_day
from meterchain.backend.erasure.tables import ErasureTables
from meterchain.backend.log.proofs import ProofUnavailable, build_bundle
from meterchain.backend.store.records import ReadingRow
from meterchain.backend.web import series
from meterchain.backend.web.charts import ChartSpec, bar_chart, kwh
from meterchain.backend.web.context import PageError, WebContext
from meterchain.backend.web.settlements import LINE_LABELS, community_share, trades_of
from meterchain.backend.web.tables import WebTables
from meterchain.contract.bundle import BundleError, verify_bundle
from meterchain.contract.humantime import human_interval

#: A meter whose newest reading is older than this is reported as silent.
SILENT_AFTER = 2 * series.INTERVAL_SECONDS + 300
KIND_LABELS = {
    PointKind.CONSUMPTION: "House", PointKind.GENERATION: "PV inverter",
    PointKind.HEAT_PUMP: "Heat pump", PointKind.EV_CHARGER: "EV charger",
    PointKind.BATTERY: "Battery", PointKind.OTHER: "Meter",
}
MAX_READINGS = 10_000


@dataclass(frozen=True, slots=True)
class PointView:
    point: MeteringPoint
    label: str
    bindings: list[MeterBinding]
    intervals: list[series.Interval]


def spec_for(point: MeteringPoint, title: str) -> ChartSpec:
    if point.kind is PointKind.GENERATION:
        return ChartSpec(title, "export", "PV production", None, "gen")
    return ChartSpec(title, "import", "consumption", "export")


def euros(micro: int) -> str:
    """µ€ as euros to the cent for reading (the exact µ€ stay in the page's data attributes)."""
    cents = (abs(micro) + 5_000) // 10_000
    return f"{'−' if micro < 0 else ''}€{cents // 100:,}.{cents % 100:02d}"


def _check_id(value: str, pattern: str = ID_PATTERN) -> str:
    if not re.fullmatch(pattern, value):
        raise PageError(404, "There is no such page.")
    return value


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/households/{household}", include_in_schema=False)

    async def household_row(household: str) -> tuple[str, str]:
        found = await PartyTables(ctx.store).household(household)
        return (found.name, found.community) if found else (household, "")

    async def points_of(who: Principal, start: int, end: int) -> list[PointView]:
        tables = PartyTables(ctx.store)
        views = []
        for point in await tables.visible_points(who):
            held = [o for o in await tables.occupancies(point.id) if o.household == who.id]
            bindings = [b for b in await tables.meter_bindings(point.id)
                        if any(b.valid_from < (o.valid_to or OPEN_END)
                               and o.valid_from < (b.valid_to or OPEN_END) for o in held)]
            rows = await tables.readings(who, point=point.id, start=max(0, start - series.LOOKBACK_SECONDS),
                                         end=end + 1, limit=MAX_READINGS)
            views.append(PointView(point, KIND_LABELS[point.kind], bindings,
                                   series.interval_energy(row for row, _ in rows)))
        return views

    async def silent_meters(who: Principal, views: list[PointView]) -> list[str]:
        now, tables, alerts = ctx.now(), PartyTables(ctx.store), []
        for view in views:
            current = [b for b in view.bindings if b.valid_to is None or b.valid_to > now]
            if not current:
                continue
            recent = await tables.readings(who, point=view.point.id, start=now - SILENT_AFTER,
                                           end=OPEN_END, limit=1)
            if not recent:
                b = current[0]
                alerts.append(f"No data from {view.label.lower()} meter {b.meter} (gateway "
                              f"{b.device}, metering point {view.point.id}) for more than "
                              f"{SILENT_AFTER // 60} minutes.")
        return alerts

    async def erased_days(who: Principal, views: list[PointView], start: int, end: int
                          ) -> list[str]:
        """"<local day>: erased on <date>" for each day of [start, end) with erased readings."""
        zone = ZoneInfo(await WebTables(ctx.store).timezone(who.id))
        days: dict[str, str] = {}
        for view in views:
            for e in await ErasureTables(ctx.store).erased_in(who, view.point.id, start + 1, end + 1):
                local = dt.datetime.fromtimestamp(e.end - 1, zone).strftime("%a %-d %b %Y")
                days.setdefault(local, utc_day(e.erased_at))
        return [f"{day}: readings erased on {when} at your household's request"
                for day, when in days.items()]

    def current_meters(views: list[PointView]) -> list[tuple[PointView, MeterBinding]]:
        now = ctx.now()
        return [(v, b) for v in views for b in v.bindings
                if b.valid_from <= now and (b.valid_to is None or now < b.valid_to)]

    async def period_page(request: Request, household: str, kind: str, key: str | None
                          ) -> HTMLResponse:
        session, who = await ctx.household(request, household)
        zone = await WebTables(ctx.store).timezone(household)
        try:
            day = series.today(ctx.now(), zone) if key is None else None
            period = (series.period("day", day, zone) if day is not None
                      else series.parse_period(kind, key or "", zone))
        except ValueError:
            raise PageError(404, "There is no such period.") from None
        now = ctx.now()
        views = await points_of(who, period.start, period.end)
        if key is None and views and max(
                sum(period.start <= i.start < period.end for i in v.intervals)
                for v in views) < DEFAULT_DAY_MIN:
            # the default page: a day that has just begun is a nearly empty chart, so it shows
            # the day before until today has a few hours ("later ›" and the live card are today)
            period = period.shifted(-1)
            views = await points_of(who, period.start, period.end)
        charts = []
        shaped = []
        for view in views:
            if period.kind == "day":
                late = await ctx.settlements.late(view.point.id, period.start, period.end)
                slots = series.quarter_hours(view.intervals, period.start, period.end, late=late)
                link = _proof_link(household, view.point.id)
            else:
                slots = series.daily(view.intervals, period.days())
                link = _day_link(household, zone)
            shaped.append((view, slots))
            title = f"{view.label} ({view.point.id}), {period.label}"
            charts.append((view, bar_chart(slots, spec_for(view.point, title), zone,
                                           daily=period.kind != "day", now=now, link=link),
                           series.total(slots), series.coverage(slots, now)))
        together = []
        grid = [s for v, s in shaped if v.point.kind is not PointKind.GENERATION]
        pv = [s for v, s in shaped if v.point.kind is PointKind.GENERATION]
        for name, group, spec in (
            ("grid", grid, ChartSpec(f"All meters at the grid, {period.label}", "import",
                                     "consumption", "export")),
            ("pv", pv, ChartSpec(f"PV production, {period.label}", "export", "PV production",
                                 None, "gen")),
        ):
            if group:
                slots = series.combine(group)
                day_link = None if period.kind == "day" else _day_link(household, zone)
                together.append((name, bar_chart(slots, spec, zone, daily=period.kind != "day",
                                                 now=now, link=day_link),
                                 series.total(slots), series.coverage(slots, now)))
        name, _ = await household_row(household)
        return ctx.render(
            request, "period.html", household=household, household_name=name,
            username=session.username, period=period, prev=period.shifted(-1),
            next=period.shifted(1), charts=charts, together=together, kwh=kwh,
            alerts=await silent_meters(who, views), live=current_meters(views),
            erased=await erased_days(who, views, period.start, period.end),
            month_key=period.first_day.strftime("%Y-%m"), zone=zone, fmt_time=_fmt(zone))

    @r.get("", response_class=HTMLResponse)
    async def overview(request: Request, household: str) -> HTMLResponse:
        return await period_page(request, household, "day", None)

    @r.get("/live.json")
    async def live(request: Request, household: str) -> JSONResponse:
        _, who = await ctx.household(request, household)
        now = ctx.now()
        views = await points_of(who, now, now)
        meters = current_meters(views)
        samples = ctx.live.latest([(b.device, b.meter) for _, b in meters], now)
        out = []
        for view, b in meters:
            entry = samples.get((b.device, b.meter))
            out.append({"point": view.point.id, "device": b.device, "meter": b.meter,
                        "power_w": entry.sample.power_w if entry else None,
                        "voltage_dv": list(entry.sample.voltage_dv) if entry else [],
                        "time": entry.sample.time if entry else None,
                        "signed": False})
        return JSONResponse({"now": now, "meters": out},
                            headers={"Cache-Control": "no-store"})

    @r.get("/points/{point}/day/{key}", response_class=HTMLResponse)
    async def point_day(request: Request, household: str, point: str, key: str) -> HTMLResponse:
        session, who = await ctx.household(request, household)
        _check_id(point)
        zone = await WebTables(ctx.store).timezone(household)
        try:
            period = series.parse_period("day", key, zone)
        except ValueError:
            raise PageError(404, "There is no such day.") from None
        view = next((v for v in await points_of(who, period.start, period.end)
                     if v.point.id == point), None)
        if view is None:
            raise PageError(404, "There is no such page.")
        inside = [i for i in view.intervals if period.start <= i.start < period.end]
        late = await ctx.settlements.late(point, period.start, period.end)
        slots = series.quarter_hours(view.intervals, period.start, period.end, late=late)
        chart = bar_chart(slots, spec_for(view.point, f"{view.label} ({point}), {period.label}"),
                          zone, now=ctx.now(), link=_proof_link(household, point))
        name, _ = await household_row(household)
        return ctx.render(request, "point_day.html", household=household,
                          household_name=name, username=session.username, view=view,
                          period=period, prev=period.shifted(-1), next=period.shifted(1),
                          chart=chart, intervals=inside, late=late, kwh=kwh, fmt_time=_fmt(zone),
                          total=series.total(slots), coverage=series.coverage(slots, ctx.now()),
                          erased=await erased_days(who, [view], period.start, period.end))

    async def visible_reading(who: Principal, point: str, device: str, seq: int) -> ReadingRow:
        _check_id(point)
        _check_id(device, DEVICE_PATTERN)
        if not 1 <= seq < 2**53 or await PartyTables(ctx.store).reading_point(who, device, seq) != point:
            erased = await ErasureTables(ctx.store).erased_reading(who, device, seq)
            if erased is not None and erased.metering_point == point:
                raise PageError(410, f"This reading was erased on {utc_day(erased.erased_at)} at "
                                     "your household's request; only its hash stays in the log.")
            raise PageError(404, "There is no such reading.")
        row = await ctx.store.reading(device, seq)
        if row is None:
            raise PageError(404, "There is no such reading.")
        return row

    @r.get("/points/{point}/readings/{device}/{seq}", response_class=HTMLResponse)
    async def verification(request: Request, household: str, point: str, device: str, seq: int
                           ) -> HTMLResponse:
        session, who = await ctx.household(request, household)
        row = await visible_reading(who, point, device, seq)
        zone = await WebTables(ctx.store).timezone(household)
        verified, problem = None, None
        try:
            verified = verify_bundle(await build_bundle(ctx.store, device, seq), ctx.api.verifier,
                                     ctx.api.witness_policy)
        except ProofUnavailable as exc:
            problem = ("This reading is stored but not sealed into the log yet; the log seals "
                       "every few seconds." if exc.check == "not-sealed" else str(exc))
        except BundleError as exc:
            problem = f"The proof did not verify: {exc.diagnostics()}"
        name, _ = await household_row(household)
        return ctx.render(request, "verify.html", household=household, household_name=name,
                          username=session.username, point=point, row=row, verified=verified,
                          problem=problem, fmt_time=_fmt(zone), kwh=kwh, policy=ctx.api.witness_policy,
                          fmt_interval=lambda a, b: human_interval(a, b, zone),
                          key_id=verified.key.key_id.hex() if verified else "")

    @r.get("/points/{point}/readings/{device}/{seq}/bundle")
    async def bundle(request: Request, household: str, point: str, device: str, seq: int
                     ) -> Response:
        _, who = await ctx.household(request, household)
        await visible_reading(who, point, device, seq)
        try:
            text = await build_bundle(ctx.store, device, seq)
        except ProofUnavailable:
            raise PageError(409, "This reading is not sealed into the log yet; try again in a "
                                 "few seconds.") from None
        return PlainTextResponse(text, headers={
            "Content-Disposition": f'attachment; filename="{device}-{seq}.tlog-proof"'})

    @r.get("/bill")
    async def this_month(request: Request, household: str) -> Response:
        await ctx.household(request, household)
        day = series.today(ctx.now(), await WebTables(ctx.store).timezone(household))
        return RedirectResponse(f"/households/{household}/bill/{day:%Y-%m}", status_code=303)

    @r.get("/bill/{month}", response_class=HTMLResponse)
    async def bill(request: Request, household: str, month: str) -> Response:
        session, who = await ctx.household(request, household)
        zone = await WebTables(ctx.store).timezone(household)
        as_csv = month.endswith(".csv")
        try:
            period = series.parse_period("month", month.removesuffix(".csv"), zone)
        except ValueError:
            raise PageError(404, "There is no such month.") from None
        member = await ctx.settlements.member_for(household, period.start, period.end)
        found = await ctx.settlements.bill(member, period.start, period.end)
        if as_csv:
            return _bill_csv(household, period, found)
        results = await ctx.settlements.results(member, period.start, period.end)
        name, _ = await household_row(household)
        return ctx.render(request, "bill.html", household=household, household_name=name,
                          username=session.username, period=period, prev=period.shifted(-1),
                          next=period.shifted(1), bill=found, labels=LINE_LABELS, euros=euros,
                          kwh=kwh, trades=trades_of(member, results)[:500],
                          share=community_share(member, results), fmt_time=_fmt(zone))

    @r.get("/intervals/{kind}/{key}.csv")
    async def intervals_csv(request: Request, household: str, kind: str, key: str) -> Response:
        _, who = await ctx.household(request, household)
        zone = await WebTables(ctx.store).timezone(household)
        try:
            period = series.parse_period(kind, key, zone)
        except ValueError:
            raise PageError(404, "There is no such period.") from None
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["metering_point", "kind", "interval_start_utc", "interval_start_local",
                         "import_wh", "export_wh", "substituted", "device", "seq"])
        tz = ZoneInfo(zone)
        for view in await points_of(who, period.start, period.end):
            for i in view.intervals:
                if period.start <= i.start < period.end:
                    writer.writerow([view.point.id, view.point.kind.value, i.start,
                                     dt.datetime.fromtimestamp(i.start, tz).isoformat(),
                                     i.import_wh, i.export_wh, int(i.substituted), i.device, i.seq])
        return _download(out.getvalue(), f"{household}-{period.kind}-{period.key}.csv", "text/csv")

    @r.get("/export.json")
    async def export(request: Request, household: str) -> Response:
        """Everything the backend holds about this household, as one JSON document."""
        session, who = await ctx.household(request, household)
        tables, web = PartyTables(ctx.store), WebTables(ctx.store)
        name, community = await household_row(household)
        points = []
        for point in await tables.visible_points(who):
            readings, start = [], 0
            while True:
                page = await tables.readings(who, point=point.id, start=start, limit=MAX_READINGS)
                readings += [{"device": row.device, "seq": row.seq, "meter": row.meter,
                              "start": row.start, "end": row.end, "import_wh": row.import_wh,
                              "export_wh": row.export_wh, "leaf_index": row.leaf_index,
                              "message": base64.b64encode(row.message).decode()}
                             for row, _ in page]
                if len(page) < MAX_READINGS:
                    break
                start = page[-1][0].end + 1
            points.append({
                "id": point.id, "kind": point.kind.value,
                "occupancies": [[o.valid_from, o.valid_to] for o in await tables.occupancies(point.id)
                                if o.household == household],
                "meters": [{"device": b.device, "meter": b.meter, "valid_from": b.valid_from,
                            "valid_to": b.valid_to} for b in await tables.meter_bindings(point.id)],
                "readings": readings})
        document = {"household": {"id": household, "name": name, "community": community,
                                  "timezone": await web.timezone(household)},
                    "logins": [x.username for x in await web.logins(household)],
                    "exported_at": ctx.now(), "exported_by": session.username,
                    "metering_points": points}
        return _download(json.dumps(document, indent=1), f"{household}-export.json",
                         "application/json")

    @r.get("/{kind}/{key}", response_class=HTMLResponse)
    async def period_view(request: Request, household: str, kind: str, key: str) -> HTMLResponse:
        """A day (quarter hours), week or month (days) of every meter, apart and together."""
        return await period_page(request, household, kind, key)

    return r


#: Quarter hours with data today before the default page shows today rather than yesterday.
DEFAULT_DAY_MIN = 24


def _proof_link(household: str, point: str) -> Callable[[series.Slot], str | None]:
    """A quarter hour's bar opens the verification page of the reading that closed it."""
    def link(slot: series.Slot) -> str | None:
        if slot.device is None or slot.seq is None:
            return None
        return f"/households/{household}/points/{point}/readings/{slot.device}/{slot.seq}"
    return link


def _day_link(household: str, zone: str) -> Callable[[series.Slot], str | None]:
    """A day's bar (week and month charts) opens that day."""
    tz = ZoneInfo(zone)

    def link(slot: series.Slot) -> str | None:
        return f"/households/{household}/day/{dt.datetime.fromtimestamp(slot.start, tz):%Y-%m-%d}"
    return link


def _fmt(zone: str) -> Callable[..., str]:
    tz = ZoneInfo(zone)

    def fmt(ts: int | None, pattern: str = "%a %-d %b %Y %H:%M %Z") -> str:
        return "" if ts is None else dt.datetime.fromtimestamp(ts, tz).strftime(pattern)

    return fmt


def _download(text: str, filename: str, media_type: str) -> Response:
    return Response(text, media_type=media_type, headers={
        "Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"})


def _bill_csv(household: str, period: series.Period, found: object) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["line", "label", "energy_wh", "amount_micro_eur"])
    if found is not None:
        for line in found.lines:  # type: ignore[attr-defined]
            writer.writerow([line.kind, LINE_LABELS.get(line.kind, line.kind),
                             "" if line.energy_wh is None else line.energy_wh, line.amount])
        writer.writerow(["total", "Total", "", found.total])  # type: ignore[attr-defined]
    return _download(out.getvalue(), f"{household}-bill-{period.key}.csv", "text/csv")
