"""The default page is never an empty chart: yesterday until today has a few hours of data."""

from __future__ import annotations

import asyncio
import datetime as dt
import warnings
from pathlib import Path
from zoneinfo import ZoneInfo

from meterchain.backend.api.app import create_app

from tests.support.web import PASSWORDS, ZONE, build

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def test_a_new_day_without_data_defaults_to_yesterday(tmp_path: Path) -> None:
    scenario = asyncio.run(build(tmp_path))
    app = create_app(str(scenario.db), "s3cret", scenario.log_key.verifier)  # type: ignore[attr-defined]
    # 1 April 2024, 05:00 in Berlin: the scenario's readings end on 31 March
    app.state.web.clock = lambda: int(dt.datetime(2024, 4, 1, 5, 0, tzinfo=ZoneInfo(ZONE)).timestamp())
    with TestClient(app) as http:
        http.post("/login", data={"username": "alice", "password": PASSWORDS["alice"]})
        default = http.get("/households/h-alice").text
        assert "Sunday 31 March 2024" in default and "no data for this period" not in default
        today = http.get("/households/h-alice/day/2024-04-01").text
        assert "Monday 1 April 2024" in today and "no data for this period" in today
