"""Home Assistant discovery: payloads against HA's documented keys and examples, the
never-decreasing rule (also across a restart), and the publisher against a real broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.agent.homeassistant import (
    ENERGY_EXPORT,
    ENERGY_IMPORT,
    POWER,
    HomeAssistantError,
    HomeAssistantPublisher,
    MeterDevice,
    MeterState,
    MonotonicGuard,
    Topics,
    decimal_text,
    device_block,
    discovery_messages,
    sensors_for,
    state_payload,
    topic_id,
    unique_id,
    validate_update,
)
from meterchain.mqtt import Backoff
from meterchain.mqtt.broker import RunningBroker, find_mosquitto, free_port, start_mosquitto

from tests.support.paths import TESTS_ROOT

DATA = TESTS_ROOT / "data" / "homeassistant"
KEYS = json.loads((DATA / "discovery_keys.json").read_text(encoding="utf-8"))
SENSORS_EXAMPLE = json.loads((DATA / "example_sensors.json").read_text(encoding="utf-8"))
SINGLE_EXAMPLE = json.loads((DATA / "example_single_component.json").read_text(encoding="utf-8"))
OTHER_EXAMPLES = [
    json.loads((DATA / name).read_text(encoding="utf-8"))["payload"]
    for name in ("example_binary_sensor.json", "example_sensor_timestamp.json")
]

HOUSE = MeterDevice.for_model("sdm630", "SDM630-0001", "house")
FULL_STATE = MeterState(12_345_678, 4_321, -1_250, (2301, 2299, 2305))
FAST = Backoff(initial=0.05, maximum=0.2)


def _expand(payload: dict[str, object]) -> dict[str, object]:
    """A documented payload with its abbreviations written out (as Home Assistant does)."""
    out: dict[str, object] = {}
    for key, value in payload.items():
        full = KEYS["abbreviations"].get(key, key)
        if full == "device" and isinstance(value, dict):
            value = {KEYS["device_abbreviations"].get(k, k): v for k, v in value.items()}
        if full == "origin" and isinstance(value, dict):
            value = {KEYS["origin_abbreviations"].get(k, k): v for k, v in value.items()}
        out[full] = value
    return out


DOCUMENTED_CONFIGS = (
    [c["payload"] for c in SENSORS_EXAMPLE["configs"]]
    + [_expand(SINGLE_EXAMPLE["payload"])]
    + OTHER_EXAMPLES
)


def _ours(
    state: MeterState = FULL_STATE, device: MeterDevice = HOUSE
) -> list[tuple[str, dict[str, object]]]:
    return discovery_messages(device, sensors_for(state), Topics("gw-0001"))


# --- against the documentation ------------------------------------------------------------------


def test_documented_examples_use_only_documented_keys() -> None:
    """The data itself: the examples kept from the docs agree with the key list kept from them."""
    documented = set(KEYS["sensor_keys"]) | set(KEYS["discovery_keys"])
    for payload in DOCUMENTED_CONFIGS:
        assert set(payload) <= documented, set(payload) - documented
        assert set(payload.get("device", {})) <= set(KEYS["device_keys"])  # type: ignore[arg-type]
        assert set(payload.get("origin", {})) <= set(KEYS["origin_keys"])  # type: ignore[arg-type]


def test_every_key_we_publish_is_a_documented_discovery_key() -> None:
    documented = set(KEYS["sensor_keys"]) | set(KEYS["discovery_keys"])
    topic_re = re.compile(
        r"^(?P<prefix>[^/]+)/(?P<component>sensor)/(?:(?P<node>[a-zA-Z0-9_-]+)/)?(?P<object>[a-zA-Z0-9_-]+)/config$"
    )
    messages = _ours()
    assert len(messages) == 2 + 1 + 3  # two energies, power, three voltages
    for topic, payload in messages:
        assert set(payload) <= documented, set(payload) - documented
        assert set(KEYS["sensor_required_keys"]) <= set(payload)
        assert set(payload["device"]) <= set(KEYS["device_keys"])  # type: ignore[arg-type]
        assert set(payload["origin"]) <= set(KEYS["origin_keys"])  # type: ignore[arg-type]
        match = topic_re.match(topic)
        assert match, topic
        assert match["prefix"] == KEYS["default_discovery_prefix"]
        # HA's best practice: object id = unique id, no node id.
        assert match["object"] == payload["unique_id"] and match["node"] is None
        assert re.fullmatch(KEYS["topic_id_pattern"], str(payload["unique_id"]))
        assert payload["state_class"] in KEYS["state_classes"]


def test_our_payloads_have_the_shape_of_the_documented_examples() -> None:
    documented_sensor = SENSORS_EXAMPLE["configs"][0]["payload"]
    for _, payload in _ours():
        # Everything the documented multi-value sensor example sets, we set too.
        assert set(documented_sensor) - {"device"} <= set(payload)
        for example in DOCUMENTED_CONFIGS:
            for key in set(example) & set(payload):
                if example[key] is None:  # "name": null is allowed; ours is a string
                    continue
                assert type(payload[key]) is type(example[key]), (key, payload[key], example[key])
        device = payload["device"]
        assert isinstance(device, dict)
        documented_device = documented_sensor["device"]
        assert set(device) - {"via_device"} <= set(documented_device)
        for key in set(device) & set(documented_device):
            assert type(device[key]) is type(documented_device[key]), key
        assert all(isinstance(i, str) for i in device["identifiers"])
        # value_template reads one field of a JSON state, as in the documented example.
        assert re.fullmatch(r"\{\{ value_json\.[a-z0-9_]+ \}\}", str(payload["value_template"]))


def test_state_has_the_documented_shape_and_every_field_the_templates_read() -> None:
    documented = json.loads(SENSORS_EXAMPLE["state"]["payload_text"], parse_float=Decimal)
    ours = json.loads(state_payload(FULL_STATE), parse_float=Decimal)
    assert isinstance(ours, dict) and isinstance(documented, dict)
    assert all(isinstance(v, (Decimal, int)) for v in documented.values())
    assert all(isinstance(v, (Decimal, int)) and not isinstance(v, bool) for v in ours.values())
    fields = {str(p["value_template"]).split(".")[1].split()[0] for _, p in _ours()}
    assert fields == set(ours)
    assert ours == {
        "energy_import_kwh": Decimal("12345.678"),
        "energy_export_kwh": Decimal("4.321"),
        "power_w": -1250,
        "voltage_l1_v": Decimal("230.1"),
        "voltage_l2_v": Decimal("229.9"),
        "voltage_l3_v": Decimal("230.5"),
    }


def test_energy_sensors_meet_the_energy_dashboard_requirements() -> None:
    need = KEYS["energy_dashboard"]
    energy = [p for _, p in _ours() if p["device_class"] == "energy"]
    assert {p["unique_id"] for p in energy} == {
        unique_id(HOUSE, ENERGY_IMPORT),
        unique_id(HOUSE, ENERGY_EXPORT),
    }
    for payload in energy:
        assert payload["device_class"] == need["device_class"]
        assert (
            payload["state_class"] == "total_increasing"
            and payload["state_class"] in need["state_classes"]
        )
        assert payload["unit_of_measurement"] == "kWh" and "kWh" in need["energy_units"]
    power = [p for _, p in _ours() if p["device_class"] == "power"]
    assert [(p["state_class"], p["unit_of_measurement"]) for p in power] == [("measurement", "W")]


def test_device_block_names_meter_and_gateway() -> None:
    block = device_block(HOUSE, Topics("gw-0001"))
    assert block == {
        "identifiers": ["meterchain_sdm630_SDM630-0001"],
        "name": "house",
        "manufacturer": "Eastron",
        "model": "SDM630",
        "serial_number": "SDM630-0001",
        "via_device": "meterchain_gateway_gw-0001",
    }
    unnamed = MeterDevice.for_model("sdm120", "77")
    assert device_block(unnamed, Topics("gw-0001"))["name"] == "SDM120 77"


def test_sensors_follow_what_the_state_carries() -> None:
    assert [k.key for k in sensors_for(MeterState(1, 2))] == ["energy_import", "energy_export"]
    assert [k.key for k in sensors_for(MeterState(1, 2, 5, (2300,)))] == [
        "energy_import",
        "energy_export",
        "power",
        "voltage_l1",
    ]


def test_meter_exchange_is_a_new_device_not_a_drop() -> None:
    new = MeterDevice.for_model("sdm630", "SDM630-0002", "house")
    old_ids = {p["unique_id"] for _, p in _ours()}
    new_ids = {p["unique_id"] for _, p in _ours(device=new)}
    assert not old_ids & new_ids
    assert new.identifier != HOUSE.identifier
    guard = MonotonicGuard()
    guard.admit(HOUSE.identifier, MeterState(9_000_000, 10))
    admitted = guard.admit(new.identifier, MeterState(3, 0))
    assert admitted.held == () and admitted.state == MeterState(3, 0)


# --- pure helpers -------------------------------------------------------------------------------


@given(st.integers(-(2**53), 2**53), st.integers(0, 6))
@settings(max_examples=200)
def test_decimal_text_is_exact(value: int, places: int) -> None:
    text = decimal_text(value, places)
    assert Decimal(text) == Decimal(value).scaleb(-places)
    assert re.fullmatch(r"-?\d+(\.\d+)?", text)
    assert json.loads(text, parse_float=Decimal) == Decimal(value).scaleb(-places)


@given(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
)
@settings(max_examples=200)
def test_topic_ids_are_valid_and_distinct(a: str, b: str) -> None:
    assert re.fullmatch(KEYS["topic_id_pattern"], topic_id(a))
    assert (topic_id(a) == topic_id(b)) == (a == b)


def test_topic_id_keeps_valid_ids() -> None:
    assert topic_id("SDM630-0001") == "SDM630-0001"
    assert topic_id("A.1") != topic_id("A_1")


def test_bad_prefixes_and_urls_are_typed_errors() -> None:
    for prefix in ("", "/ha", "ha/", "ha/#", "a+b"):
        with pytest.raises(HomeAssistantError):
            Topics("gw", prefix)
    assert Topics("gw", "home/ha").config("x") == "home/ha/sensor/x/config"
    for url in ("http://host", "mqtt://", "mqtt://host:99999", "host:1883"):
        with pytest.raises(HomeAssistantError) as info:
            HomeAssistantPublisher(url, gateway_id="gw", guard=MonotonicGuard())
        assert "homeassistant" in info.value.diagnostics()
    with pytest.raises(HomeAssistantError) as info:
        HomeAssistantPublisher("http://u:secret@h", gateway_id="gw", guard=MonotonicGuard())
    assert "secret" not in info.value.diagnostics()
    with pytest.raises(HomeAssistantError):
        MeterDevice.for_model("dsmr", "1")


@pytest.mark.parametrize(
    ("device", "state"),
    [
        (HOUSE, MeterState(-1, 0)),
        (HOUSE, MeterState(0, 2**53)),
        (HOUSE, MeterState(True, 0)),  # type: ignore[arg-type]
        (HOUSE, MeterState(1.5, 0)),  # type: ignore[arg-type]
        (HOUSE, MeterState(0, 0, power_w="12")),  # type: ignore[arg-type]
        (HOUSE, MeterState(0, 0, voltage_dv=(1, 2, 3, 4))),
        (HOUSE, MeterState(0, 0, voltage_dv=[2300])),  # type: ignore[arg-type]
        (HOUSE, MeterState(0, 0, voltage_dv=(-1,))),
        (MeterDevice("has space", "Eastron", "SDM630"), MeterState(0, 0)),
        (MeterDevice("", "Eastron", "SDM630"), MeterState(0, 0)),
        (MeterDevice("x", "", "SDM630"), MeterState(0, 0)),
    ],
)
def test_bad_updates_are_refused_with_context(device: MeterDevice, state: MeterState) -> None:
    with pytest.raises(HomeAssistantError):
        validate_update(device, state)
    publisher = HomeAssistantPublisher(
        "mqtt://127.0.0.1:1", gateway_id="gw", guard=MonotonicGuard()
    )
    assert publisher.update(device, state) is False
    assert publisher.stats.invalid_updates == 1


# --- the guard ----------------------------------------------------------------------------------


def test_guard_holds_each_register_on_its_own() -> None:
    guard = MonotonicGuard()
    first = guard.admit("m", MeterState(1000, 50, 300))
    assert first.state == MeterState(1000, 50, 300) and first.held == ()
    lower_import = guard.admit("m", MeterState(900, 60, 280))
    assert lower_import.state == MeterState(1000, 60, 280)  # import held, export and power pass
    assert [(h.register, h.offered, h.published) for h in lower_import.held] == [
        ("import_wh", 900, 1000)
    ]
    equal = guard.admit("m", MeterState(1000, 60))
    assert equal.held == () and equal.state == MeterState(1000, 60)
    assert guard.snapshot() == {"m": {"import_wh": 1000, "export_wh": 60}}


@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)), min_size=1, max_size=30))
@settings(max_examples=100)
def test_published_cumulative_values_never_decrease(offers: list[tuple[int, int]]) -> None:
    guard = MonotonicGuard()
    published: list[MeterState] = [guard.admit("m", MeterState(i, e)).state for i, e in offers]
    for before, after in itertools.pairwise(published):
        assert after.import_wh >= before.import_wh and after.export_wh >= before.export_wh
    assert published[-1].import_wh == max(i for i, _ in offers)


def test_guard_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ha-guard.json"
    guard = MonotonicGuard.load(path)
    assert guard.snapshot() == {}
    guard.admit("m", MeterState(5000, 7))
    guard.save()
    assert not path.with_name(path.name + ".tmp").exists()
    again = MonotonicGuard.load(path)
    assert again.last("m", "import_wh") == 5000
    assert again.admit("m", MeterState(4000, 7)).state.import_wh == 5000
    seeded = MonotonicGuard(None, {"m": {"import_wh": 10, "export_wh": 3}})
    assert seeded.admit("m", MeterState(9, 4)).state == MeterState(10, 4)


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"version": 2, "meters": {}}',
        '{"version": 1}',
        '{"version": 1, "meters": {"m": 5}}',
        '{"version": 1, "meters": {"m": {"import_wh": -1}}}',
        '{"version": 1, "meters": {"m": {"import_wh": 1.5}}}',
        '{"version": 1, "meters": {"m": {"voltage": 1}}}',
        b"\xff\xfe",
    ],
)
def test_a_damaged_guard_file_is_an_error_not_an_empty_guard(
    tmp_path: Path, content: str | bytes
) -> None:
    path = tmp_path / "guard.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(HomeAssistantError) as info:
        MonotonicGuard.load(path)
    assert str(path) in info.value.diagnostics()


# --- against a real broker ----------------------------------------------------------------------


def _subscriber(url: str) -> aiomqtt.Client:
    u = urlsplit(url)
    return aiomqtt.Client(
        u.hostname or "", u.port or 1883, username=u.username, password=u.password
    )


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


class Recorder:
    """Every message on ``homeassistant/#`` in arrival order, with its retain flag."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []

    async def run(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            self.messages.append((str(message.topic), payload, bool(message.retain)))

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]


@pytest.fixture
async def recorder(broker: RunningBroker) -> AsyncIterator[Recorder]:
    rec = Recorder()
    async with _subscriber(broker.url) as client:
        await client.subscribe("homeassistant/#", qos=1)
        task = asyncio.create_task(rec.run(client))
        yield rec
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _import_kwh(payload: bytes) -> Decimal:
    return json.loads(payload, parse_float=Decimal)["energy_import_kwh"]


async def _run(publisher: HomeAssistantPublisher) -> asyncio.Task[None]:
    task = asyncio.create_task(publisher.run())
    await asyncio.wait_for(publisher.connected.wait(), 10)
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_discovery_availability_and_state_reach_the_broker_retained(
    broker: RunningBroker, recorder: Recorder, tmp_path: Path
) -> None:
    guard = MonotonicGuard.load(tmp_path / "guard.json")
    publisher = HomeAssistantPublisher(broker.url, gateway_id="gw-0001", guard=guard, backoff=FAST)
    task = await _run(publisher)
    assert publisher.update(HOUSE, FULL_STATE)
    await _until(lambda: publisher.stats.states_published == 1)
    topics = Topics("gw-0001")
    await _until(lambda: bool(recorder.on(topics.state(HOUSE))))
    assert recorder.on(topics.availability)[0] == b"online"

    # A subscriber that comes later (Home Assistant after a restart) gets it all retained.
    retained: dict[str, bytes] = {}
    async with _subscriber(broker.url) as late:
        await late.subscribe("homeassistant/#", qos=1)
        async with asyncio.timeout(10):
            async for message in late.messages:
                assert message.retain
                retained[str(message.topic)] = message.payload  # type: ignore[assignment]
                if len(retained) == 1 + 6 + 1:
                    break
    expected = dict(_ours())
    for topic, payload in expected.items():
        assert json.loads(retained[topic]) == payload
    assert retained[topics.availability] == b"online"
    assert json.loads(retained[topics.state(HOUSE)], parse_float=Decimal)[
        "energy_import_kwh"
    ] == Decimal("12345.678")
    assert publisher.stats.discovery_published == 6

    await _stop(task)
    await _until(lambda: recorder.on(topics.availability)[-1:] == [b"offline"])


async def test_a_lower_value_is_never_published_even_after_a_restart(
    broker: RunningBroker, recorder: Recorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "guard.json"
    topics = Topics("gw-0001")
    state_topic = topics.state(HOUSE)
    publisher = HomeAssistantPublisher(
        broker.url, gateway_id="gw-0001", guard=MonotonicGuard.load(path), backoff=FAST
    )
    task = await _run(publisher)
    publisher.update(HOUSE, MeterState(5_000, 100, 40))
    await _until(lambda: len(recorder.on(state_topic)) == 1)
    with caplog.at_level(logging.WARNING, logger="meterchain.agent.homeassistant"):
        publisher.update(HOUSE, MeterState(4_999, 120, 35))  # import dropped, export rose
        await _until(lambda: len(recorder.on(state_topic)) == 2)
    second = json.loads(recorder.on(state_topic)[1], parse_float=Decimal)
    assert second["energy_import_kwh"] == Decimal("5.000")  # held, not 4.999
    assert second["energy_export_kwh"] == Decimal("0.120") and second["power_w"] == 35
    assert publisher.stats.values_held == 1
    held_logs = [r.getMessage() for r in caplog.records if "event=ha_value_held" in r.getMessage()]
    assert held_logs and "offered=4999 published=5000" in held_logs[0]
    await _stop(task)

    # Restart: a new publisher with the same guard file, fed an even lower value.
    restarted = HomeAssistantPublisher(
        broker.url, gateway_id="gw-0001", guard=MonotonicGuard.load(path), backoff=FAST
    )
    task = await _run(restarted)
    restarted.update(HOUSE, MeterState(1_000, 130))
    await _until(lambda: len(recorder.on(state_topic)) == 3)
    restarted.update(HOUSE, MeterState(6_000, 130))
    await _until(lambda: len(recorder.on(state_topic)) == 4)
    await _stop(task)
    published = [_import_kwh(p) for p in recorder.on(state_topic)]
    assert published == [Decimal("5.000"), Decimal("5.000"), Decimal("5.000"), Decimal("6.000")]
    assert restarted.stats.values_held == 1
    # Announced again after the restart: both energies (these states carry no power).
    assert restarted.stats.discovery_published == 2


async def test_a_sensor_the_meter_stops_carrying_is_removed(
    broker: RunningBroker, recorder: Recorder
) -> None:
    publisher = HomeAssistantPublisher(
        broker.url, gateway_id="gw-0001", guard=MonotonicGuard(), backoff=FAST
    )
    task = await _run(publisher)
    power_config = Topics("gw-0001").config(unique_id(HOUSE, POWER))
    publisher.update(HOUSE, MeterState(1, 1, 10))
    await _until(lambda: publisher.stats.states_published == 1)
    publisher.update(HOUSE, MeterState(2, 1))
    await _until(lambda: publisher.stats.states_published == 2)
    await _until(lambda: len(recorder.on(power_config)) == 2)
    assert json.loads(recorder.on(power_config)[0])["device_class"] == "power"
    assert recorder.on(power_config)[1] == b""  # HA deletes the entity on an empty config
    await _stop(task)


async def test_the_caller_never_waits_for_a_missing_broker_and_delivery_follows_it(
    tmp_path: Path,
) -> None:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("needs mosquitto to start a broker on a chosen port")
    port = free_port()
    publisher = HomeAssistantPublisher(
        f"mqtt://127.0.0.1:{port}",
        gateway_id="gw-0001",
        guard=MonotonicGuard.load(tmp_path / "g.json"),
        backoff=FAST,
        connect_timeout=1.0,
    )
    task = asyncio.create_task(publisher.run())
    for wh in (1_000, 2_000, 3_000):  # returns at once; only the newest is kept
        assert publisher.update(HOUSE, MeterState(wh, 0))
    await _until(lambda: publisher.stats.connection_failures >= 2)
    assert not task.done() and publisher.stats.states_published == 0
    broker = await start_mosquitto(binary, port=port, workdir=tmp_path / "broker")
    try:
        await _until(lambda: publisher.stats.states_published == 1, timeout=15)
        async with _subscriber(broker.url) as client:
            await client.subscribe(Topics("gw-0001").state(HOUSE), qos=1)
            async with asyncio.timeout(5):
                async for message in client.messages:
                    assert _import_kwh(message.payload) == Decimal("3.000")  # type: ignore[arg-type]
                    break
        await _stop(task)
    finally:
        await broker.stop()


_CRASHING_AGENT = """
import asyncio, sys
from meterchain.agent.homeassistant import HomeAssistantPublisher, MeterDevice, MeterState, MonotonicGuard
async def main():
    p = HomeAssistantPublisher(sys.argv[1], gateway_id="gw-0001", guard=MonotonicGuard())
    task = asyncio.create_task(p.run())
    p.update(MeterDevice.for_model("sdm120", "77"), MeterState(1, 2))
    while p.stats.states_published < 1:
        await asyncio.sleep(0.02)
    print("published", flush=True)
    await task
asyncio.run(main())
"""


async def test_last_will_marks_the_gateway_offline_when_the_agent_dies(
    broker: RunningBroker, recorder: Recorder
) -> None:
    availability = Topics("gw-0001").availability
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASHING_AGENT,
        broker.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"published"
        await _until(lambda: recorder.on(availability) == [b"online"])
        proc.kill()  # no clean shutdown: only the broker's will can say "offline"
        await _until(lambda: recorder.on(availability) == [b"online", b"offline"], timeout=15)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_no_state_goes_out_while_the_guard_cannot_be_saved(
    broker: RunningBroker, recorder: Recorder, tmp_path: Path
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the guard's folder should be")
    guard = MonotonicGuard(blocker / "guard.json")
    publisher = HomeAssistantPublisher(broker.url, gateway_id="gw-0001", guard=guard, backoff=FAST)
    task = await _run(publisher)
    assert publisher.update(HOUSE, MeterState(7_000, 0))
    await _until(lambda: publisher.stats.guard_save_failures == 1)
    await asyncio.sleep(0.2)
    assert publisher.stats.states_published == 0
    assert recorder.on(Topics("gw-0001").state(HOUSE)) == []
    blocker.unlink()  # the disk is fixed: the next update saves, then publishes
    assert publisher.update(HOUSE, MeterState(7_001, 0))
    await _until(lambda: len(recorder.on(Topics("gw-0001").state(HOUSE))) == 1)
    assert MonotonicGuard.load(blocker / "guard.json").last(HOUSE.identifier, "import_wh") == 7_001
    await _stop(task)
