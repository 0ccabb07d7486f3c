"""`meterchain agent scan --protocol dlms|both`: DLMS emulators on a pty found by HDLC address."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from meterchain.agent.config import load_config
from meterchain.agent.provision import toml_text
from meterchain.agent.scan_dlms import (
    DEFAULT_HDLC_ADDRESSES,
    dlms_probe_timeout,
    dlms_scan_bound,
    parse_hdlc_addresses,
    propose_dlms_meters,
    scan_dlms_port,
)
from meterchain.bridge.dlms import (
    BusMeter,
    DlmsBusEmulator,
    DlmsMeterEmulator,
    EmulatedDlmsMeter,
    HdlcAddress,
)
from meterchain.bridge.dlms.emulator import default_settings
from meterchain.bridge.dlms.obis import SERIAL_NUMBER_OBIS
from meterchain.bridge.modbus.emulator import EmulatedMeter, ModbusBusEmulator

from tests.support.cli import run as _run
from tests.support.cli import run_timed

pytestmark = pytest.mark.timeout(180)  # several CLI processes a test; each imports for 10 s or more under load
PERIOD = 900


def _meter(serial: str, **kwargs: object) -> EmulatedDlmsMeter:
    """A meter with a day of 15-minute profile up to now."""
    start = int(time.time()) // PERIOD * PERIOD - 86_400
    return EmulatedDlmsMeter(serial_number=serial, start=start, **kwargs)  # type: ignore[arg-type]


def _station(serial: str, lower: int | None, baudrate: int | None = 9600) -> BusMeter:
    return BusMeter(_meter(serial), default_settings(address=HdlcAddress(1, lower)), baudrate)


def _loads(tmp_path: Path, meters: list[dict[str, object]]) -> list[str]:
    """The proposal inside a whole agent config, through the real loader; the meters' names."""
    path = tmp_path / "agent.toml"
    path.write_text(toml_text({
        "device_id": "gw-scan-1", "key_path": "device-key.pem", "backend_url": "http://127.0.0.1",
        "broker": {"url": "mqtt://127.0.0.1:1883"}, "meters": meters}))
    return [meter.name for meter in load_config(path).meters]


def test_hdlc_address_lists_are_bounded_and_refuse_broadcast() -> None:
    assert [str(a) for a in parse_hdlc_addresses("1,1/16-18, 2/4660")] == [
        "1", "1/16", "1/17", "1/18", "2/4660"]
    assert len(parse_hdlc_addresses(DEFAULT_HDLC_ADDRESSES)) == 17
    assert [str(a) for a in parse_hdlc_addresses("1/125-127")] == ["1/125"]  # 126/127 reserved
    assert parse_hdlc_addresses("1/17,1/17") == [HdlcAddress(1, 17)]
    for bad in ("", "0", "127", "1/0", "1/20-16", "x", "1/1-2000", "1/16383"):
        with pytest.raises(ValueError):
            parse_hdlc_addresses(bad)


async def test_two_meters_on_one_line_each_at_its_own_address(tmp_path: Path) -> None:
    """Multi-drop: one pty, three stations; one at another speed; one without a serial object."""
    nameless = _station("NOSERIAL", 23)
    nameless.meter.faults.unavailable.add(SERIAL_NUMBER_OBIS)
    line = [_station("MC20260017", 17), _station("MC20260020", 20),
            _station("MC20262400", 18, 2400), nameless]
    async with DlmsBusEmulator(line) as bus:
        assert bus.path is not None
        report = await scan_dlms_port(bus.path, baudrates=(9600, 2400),
                                      addresses=parse_hdlc_addresses("1/16-18,1/20,1/23"),
                                      base_timeout=0.05)
    found = sorted((m.address, m.baudrate, m.serial, m.logical_device_name) for m in report.found)
    assert found == [("1/17", 9600, "MC20260017", "MCEMC20260017"),
                     ("1/18", 2400, "MC20262400", "MCEMC20262400"),
                     ("1/20", 9600, "MC20260020", "MCEMC20260020"),
                     ("1/23", 9600, None, "MCENOSERIAL")]
    assert not report.garbled and not report.errors
    assert report.silent == 2 * 5 - 4  # every other probe simply timed out
    meter = next(m for m in report.found if m.serial == "MC20260017")
    start = line[0].meter.start
    assert meter.capture_period == PERIOD and meter.profile == "ok" and meter.export_wh == 0
    assert meter.import_wh is not None and meter.import_wh >= line[0].meter.import_wh(start)
    assert meter.clock_drift_seconds is not None and abs(meter.clock_drift_seconds) < 3
    assert not meter.clock_drifted
    proposal = propose_dlms_meters(report.found)
    # Multi-drop: every meter at the line's speed is proposed; the one at 2400 baud is advised.
    assert [m["physical_address"] for m in proposal.meters] == [17, 20, 23]
    assert [line for line in proposal.advice if "one speed" in line] == [(
        f"DLMS meter MC20262400 (HDLC 1/18, 2400 baud) is on {report.port} with meters at 9600 "
        "baud: the agent reads a line at one speed; set the meter to 9600 baud")]
    assert _loads(tmp_path, proposal.meters) == ["dlms-1-17", "dlms-1-20", "dlms-1-23"]
    configs = load_config(tmp_path / "agent.toml").meters
    assert {c.port for c in configs} == {report.port} and {c.baudrate for c in configs} == {9600}
    assert [(c.dlms.client_address, c.dlms.server_address, c.dlms.physical_address)
            for c in configs if c.dlms is not None] == [(16, 1, 17), (16, 1, 20), (16, 1, 23)]
    alone = propose_dlms_meters([m for m in report.found if m.serial is None])
    assert alone.meters[0]["serial"] == "MCENOSERIAL" and "logical device name" in alone.advice[0]
    assert _loads(tmp_path, alone.meters) == ["dlms-1-23"]
    # Modbus meters proposed on that port keep it: a DLMS meter there is advised, not proposed.
    shared = propose_dlms_meters(report.found, frozenset({report.port}))
    assert shared.meters == [] and all("with the Modbus meters" in a for a in shared.advice)


async def test_wrong_speed_is_silent_and_bad_frames_are_garbled_hints() -> None:
    async with DlmsMeterEmulator(_meter("MC1"), baudrate=2400) as emulator:
        assert emulator.path is not None
        report = await scan_dlms_port(emulator.path, baudrates=(9600, 19200),
                                      addresses=[HdlcAddress(1)], base_timeout=0.1)
        assert report.found == [] and report.silent == 2 and not report.garbled
        emulator.faults.corrupt_crc = True
        report = await scan_dlms_port(emulator.path, baudrates=(2400,),
                                      addresses=[HdlcAddress(1), HdlcAddress(2)],
                                      base_timeout=0.1)
    assert report.found == [] and report.silent == 1
    assert len(report.garbled) == 1 and report.garbled[0].startswith("2400 baud HDLC 1: frame check")


async def test_scan_command_dlms_only_and_a_silent_line_within_its_bound(tmp_path: Path) -> None:
    async with DlmsMeterEmulator(_meter("MC20260001")) as emulator:
        assert emulator.path is not None
        code, out = await _run("agent", "scan", emulator.path, "--protocol", "dlms", "--baud",
                               "9600", "--hdlc", "1-2", "--out", str(tmp_path / "meters.toml"))
        assert code == 0, out
        assert "found DLMS meter at HDLC 1, 9600 baud: serial MC20260001 (logical device name " \
            "MCEMC20260001), import " in out
        assert "load profile every 900 s" in out and 'model = "dlms"' in out
        assert _loads(tmp_path, [_table(tmp_path / "meters.toml")]) == ["dlms-1"]
        emulator.faults.silent = True
        code, out, took = await run_timed("agent", "scan", emulator.path, "--protocol", "dlms",
                                          "--baud", "9600", "--baud", "2400", "--hdlc", "1-3",
                                          after="probing takes at most")
    bound = dlms_scan_bound((9600, 2400), parse_hdlc_addresses("1-3"))
    assert bound == pytest.approx(3 * (dlms_probe_timeout(9600) + dlms_probe_timeout(2400)))
    assert code == 3 and "no meter answered" in out and "A/B swapped" in out
    assert "mode E" in out and f"probing takes at most {bound:.0f} s" in out
    # From the line announcing the bound to the exit: the interpreter's start-up is not the scan's.
    assert took < bound + 6, f"the silent line's scan took {took:.1f} s, announced {bound:.1f} s"


def _table(path: Path) -> dict[str, object]:
    import tomllib

    (table,) = tomllib.loads(path.read_text())["meters"]
    return table  # type: ignore[no-any-return]


async def test_scan_both_protocols_modbus_first_then_dlms_json(tmp_path: Path) -> None:
    """Default protocol: both, Modbus first; DLMS only where no Modbus meter answered."""
    async with DlmsMeterEmulator(_meter("MC20260001")) as emulator:
        assert emulator.path is not None
        code, out = await _run("agent", "scan", emulator.path, "--baud", "9600", "--ids", "1-2",
                               "--hdlc", "1", "--json")
    assert code == 0, out
    document = json.loads(out)
    assert document["modbus"]["found"] == [] and document["modbus"]["ids"] == [1, 2]
    assert [m["serial"] for m in document["dlms"]["found"]] == ["MC20260001"]
    assert document["dlms"]["found"][0]["address"] == "1"
    assert [m["model"] for m in document["proposal"]] == ["dlms"]
    modbus = [EmulatedMeter("sdm630", 2, 9600, serial_number=7)]
    async with ModbusBusEmulator(modbus) as bus:
        assert bus.path is not None
        code, out = await _run("agent", "scan", bus.path, "--baud", "9600", "--ids", "1-2",
                               "--hdlc", "1")
    assert code == 0, out
    assert "found sdm630 id 2 at 9600 baud: serial 7" in out and "found DLMS" not in out
    assert "Modbus meters answered: DLMS not scanned on this port" in out
    assert 'model = "sdm630"' in out


def test_emulate_dlms_counts_serials_up() -> None:
    from meterchain.bridge.cli import serial_for

    assert [serial_for(["MC20260001"], i) for i in range(3)] == [
        "MC20260001", "MC20260002", "MC20260003"]
    assert serial_for(["A", "B"], 1) == "B" and serial_for(["XY"], 1) == "XY-2"


def test_a_line_refuses_two_meters_at_one_address() -> None:
    with pytest.raises(ValueError, match="distinct HDLC addresses"):
        DlmsBusEmulator([_station("A", 17), _station("B", 17)])
    with pytest.raises(ValueError, match="baud"):
        DlmsBusEmulator([_station("A", 17, 1234)])
