"""Utilities over HTTP: scoped routes, signed batches (paged under concurrent ingest, verified by
an independent client), OCMF export verified by pyocmf, webhooks (retries, dedup, dead letters,
replay), fleet health (a gateway goes silent and comes back), request limits."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cbor2
import pytest
from meterchain.backend.api.app import create_app
from meterchain.backend.utility.webhooks import WebhookWorker, verify_signature
from meterchain.contract.ack import ocmf_topic, status_topic
from meterchain.contract.note import NoteSigner
from meterchain.contract.ocmf import build_ocmf, sign_ocmf
from meterchain.contract.status import GatewayStatus, MeterHealth

from tests.support.access import all_routes
from tests.support.backend import T0, backend, close
from tests.support.humantime import assert_no_unix_seconds
from tests.support.utility import ADMIN, World, make_world, round_of_messages
from tests.support.utility_client import Invalid, verify_batch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return asyncio.run(make_world(tmp_path_factory.mktemp("utility")))


@pytest.fixture(scope="module")
def http(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(str(world.db), ADMIN, world.log_key.verifier)) as client:
        yield client


def log_key_text(world: World) -> str:
    return str(world.log_key.verifier)


# ------------------------------------------------------------------------------- scopes

UTILITY_PATHS = {
    "/api/v1/utility/batch", "/api/v1/metering-points/{point}/ocmf", "/api/v1/devices/{device}/ocmf",
    "/api/v1/fleet", "/fleet", "/api/v1/webhooks", "/api/v1/webhooks/{hook}",
    "/api/v1/webhooks/{hook}/deliveries", "/api/v1/webhooks/{hook}/deliveries/{delivery}/replay",
}


def test_every_utility_route_refuses_no_key_and_leaks_nothing_to_another_utility(
        http: TestClient, world: World) -> None:
    created = http.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"},
                        headers=world.auth("u1"))
    assert created.status_code == 201, created.text
    hook = created.json()["id"]
    values = {"point": "mp-1", "device": "gw-a", "hook": hook, "delivery": 1}
    routes = [r for r in all_routes(http.app.router.routes)  # type: ignore[attr-defined]
              if r.path in UTILITY_PATHS]
    assert {r.path for r in routes} == UTILITY_PATHS
    for route in routes:
        url = route.path_format.format(**{p.name: values[p.name] for p in route.dependant.path_params})
        for method in route.methods:
            body = {"url": "http://127.0.0.1:9/x"} if method == "POST" else None
            anonymous = http.request(method, url, json=body, follow_redirects=False)
            if url == "/fleet":  # the page: a browser without a key goes to the console's sign-in
                assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/console")
            else:
                assert anonymous.status_code == 401, (method, url)
                assert set(anonymous.json()) == {"error", "detail", "hint"}
            other = http.request(method, url, json=body, headers=world.auth("u2"))
            # u2 may call the collection routes (it gets its own data) but never sees u1's.
            assert other.status_code in (200, 201, 403, 404), (method, url, other.status_code)
            if other.status_code in (200, 201):
                assert "M-1" not in other.text and hook not in other.text, (method, url)
            else:  # answered exactly like an unknown id: no existence oracle
                unknown = http.request(method, url.replace(hook, "wh-000000000000").replace(
                    "mp-1", "mp-none").replace("gw-a", "gw-none"), json=body, headers=world.auth("u2"))
                assert unknown.status_code == other.status_code, (method, url)
    # What u2 gets from the collection routes is its own.
    batch = http.get("/api/v1/utility/batch", headers=world.auth("u2")).json()
    assert {e["point"] for e in batch["entries"]} == {"mp-2", "mp-3"}
    fleet = http.get("/api/v1/fleet", headers=world.auth("u2")).json()
    assert {g["device"] for g in fleet["gateways"]} == {"gw-a", "gw-b"}
    assert all(m["meter"] for g in fleet["gateways"] for m in g["meters"])
    assert http.get("/api/v1/fleet", headers=world.auth("u1")).json()["gateways"][0]["device"] == "gw-a"
    # A household key cannot own webhooks.
    refused = http.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}, headers=world.auth("h1"))
    assert refused.status_code == 403 and refused.json()["hint"]


# ---------------------------------------------------------------------- signed batches


def test_a_batch_verifies_with_an_independent_client_as_json_and_cbor(http: TestClient, world: World) -> None:
    batches = http.get("/api/v1/batches").json()["batches"]
    sizes = [b["size"] for b in batches]
    a, b = sizes[1], sizes[-1]
    page = http.get(f"/api/v1/utility/batch?from={a}&to={b}", headers=world.auth("u1"))
    assert page.status_code == 200
    doc = page.json()
    verified = verify_batch(doc, log_key_text(world), binary=False)
    assert [r[3]["meter"] for r in verified.readings] == ["M-1"] * (len(sizes) - 2)
    assert all(a <= r[0] < b for r in verified.readings)

    binary = http.get(f"/api/v1/utility/batch?from={a}&to={b}",
                      headers={**world.auth("u1"), "Accept": "application/cbor"})
    assert binary.headers["content-type"] == "application/cbor"
    as_cbor = cbor2.loads(binary.content)
    assert verify_batch(as_cbor, log_key_text(world), binary=True).readings == verified.readings

    # Tampering is caught: another reading's message, a forged checkpoint, a bad consistency proof.
    forged = json.loads(json.dumps(doc))
    forged["entries"][0]["message"] = forged["entries"][1]["message"]
    with pytest.raises(Invalid):
        verify_batch(forged, log_key_text(world), binary=False)
    forged = json.loads(json.dumps(doc))
    forged["consistency"] = forged["consistency"][::-1]
    with pytest.raises(Invalid):
        verify_batch(forged, log_key_text(world), binary=False)
    with pytest.raises(Invalid):
        verify_batch(doc, str(NoteSigner.generate("utility.test/log").verifier), binary=False)


def test_batch_range_errors_say_what_to_do(http: TestClient, world: World) -> None:
    for query in ("from=5&to=6", "from=6&to=3", "from=0&to=6&cursor=99"):
        answer = http.get(f"/api/v1/utility/batch?{query}", headers=world.auth("u1"))
        assert answer.status_code == 404, query
        assert answer.json()["hint"]
    assert http.get("/api/v1/utility/batch?from=9007199254740992",
                    headers=world.auth("u1")).status_code == 422


async def test_paging_is_complete_under_concurrent_ingest(tmp_path: Path) -> None:
    """While new readings are ingested and sealed, paging a fixed (from, to) with a small page
    returns every reading of the utility in the range exactly once."""
    world = await make_world(tmp_path, rounds=5)
    admin, ingest, sealer, store = await backend(tmp_path, log_key=world.log_key)
    app = create_app(str(world.db), ADMIN, world.log_key.verifier)
    from httpx import ASGITransport, AsyncClient

    stop = asyncio.Event()

    async def keep_ingesting() -> None:
        k = 100
        while not stop.is_set():
            k += 1
            await ingest.process(round_of_messages(world, k))
            await sealer.seal_all()
            await asyncio.sleep(0)

    async with (app.router.lifespan_context(app),
                AsyncClient(transport=ASGITransport(app=app), base_url="http://t") as client):
            to = int((await client.get("/api/v1/checkpoint")).text.split("\n")[1])
            writer = asyncio.create_task(keep_ingesting())
            seen: list[int] = []
            cursor: int | None = 0
            pages = 0
            while cursor is not None:
                answer = await client.get(f"/api/v1/utility/batch?from=0&to={to}&limit=2&cursor={cursor}",
                                          headers=world.auth("u1"))
                doc = answer.json()
                verify_batch(doc, log_key_text(world), binary=False)
                seen += [e["index"] for e in doc["entries"]]
                cursor, pages = doc["next"], pages + 1
                await asyncio.sleep(0.01)
            stop.set()
            await writer
            newest = int((await client.get("/api/v1/checkpoint")).text.split("\n")[1])
            rest = (await client.get(f"/api/v1/utility/batch?from={to}&limit=1000",
                                     headers=world.auth("u1"))).json()
            verify_batch(rest, log_key_text(world), binary=False)  # consistent with `to`'s tree
    assert newest > to  # readings really arrived while we paged
    assert pages >= 3 and len(seen) == len(set(seen)) == 5 and seen == sorted(seen)
    assert all(i < to for i in seen)
    assert {e["index"] for e in rest["entries"]}.isdisjoint(seen)
    assert rest["entries"] and all(e["index"] >= to for e in rest["entries"])
    await close(admin, ingest, sealer, store)


# -------------------------------------------------------------------------------- OCMF


def test_exported_ocmf_records_are_verbatim_scoped_and_verify_with_pyocmf(
        http: TestClient, world: World) -> None:
    pyocmf = pytest.importorskip("pyocmf")
    records = http.get("/api/v1/metering-points/mp-1/ocmf", headers=world.auth("u1")).json()
    assert [r["seq"] for r in records] == [1, 3, 5, 7, 9, 11]  # gw-a's M-1 readings
    for r in records:
        theirs = pyocmf.OCMF.from_string(r["record"], strict=True)
        assert theirs.verify_signature(world.gw_a.public_key.hex()) is True
        assert theirs.verify_signature(world.gw_b.public_key.hex()) is False
        assert ("gw-a", "M-1", f"F{r['seq']}") == (theirs.payload.GS, theirs.payload.MS, theirs.payload.PG)
    assert http.get("/api/v1/metering-points/mp-1/ocmf", headers=world.auth("u2")).status_code == 404
    household = http.get("/api/v1/devices/gw-a/ocmf", headers=world.auth("h1")).json()
    assert {r["meter"] for r in household} == {"M-1"}
    everything = http.get("/api/v1/devices/gw-a/ocmf", headers=world.auth("root")).json()
    assert {r["meter"] for r in everything} == {"M-1", "M-2"}


async def test_ocmf_records_that_do_not_verify_are_not_kept(tmp_path: Path) -> None:
    world = await make_world(tmp_path, rounds=1)
    admin, ingest, sealer, store = await backend(tmp_path, log_key=world.log_key)
    signed = world.gw_a.signed(50, meter="M-1", end=T0 + 900 * 50)
    payload = build_ocmf(signed.reading, gateway_id="x", gateway_version="1")
    forged = sign_ocmf(payload, world.gw_b.signer)  # another device's key
    wrong_topic = sign_ocmf(payload, world.gw_a.signer)
    await ingest.process([(ocmf_topic("gw-a"), forged.encode()),
                          (ocmf_topic("gw-b"), wrong_topic.encode()),
                          (ocmf_topic("gw-a"), b"OCMF|{}|{}")])
    assert ingest.stats["ocmf:signature"] == 1 and ingest.stats["ocmf:topic"] == 1
    assert ingest.stats["ocmf:encoding"] == 1
    await ingest.process([(ocmf_topic("gw-a"), wrong_topic.encode())])
    again = sign_ocmf(payload, world.gw_a.signer)  # same page, other (randomised) signature
    await ingest.process([(ocmf_topic("gw-a"), again.encode()), (ocmf_topic("gw-a"), wrong_topic.encode())])
    assert (ingest.stats["ocmf:stored"], ingest.stats["ocmf:conflict"], ingest.stats["ocmf:duplicate"]) == (1, 1, 1)
    rows = await store.connection.execute_fetchall("SELECT record FROM ocmf_records WHERE seq = 50")
    assert [bytes(r[0]).decode() for r in rows] == [wrong_topic]  # the first bytes, verbatim
    await close(admin, ingest, sealer, store)


# ---------------------------------------------------------------------------- webhooks


class Receiver:
    """A utility's webhook endpoint on 127.0.0.1: checks signatures, deduplicates by key, and
    fails the first ``fail_first`` POSTs (or all of them)."""

    def __init__(self, secret: str = "", fail_first: int = 0) -> None:
        self.secret, self.fail_first = secret, fail_first
        self.posts: list[tuple[str, dict[str, object]]] = []
        self.processed: dict[str, dict[str, object]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not verify_signature(receiver.secret, self.headers["Meterchain-Signature"], body,
                                        int(time.time())):
                    self.send_response(401)
                    self.end_headers()
                    return
                key = self.headers["Idempotency-Key"]
                receiver.posts.append((key, json.loads(body)))
                if len(receiver.posts) <= receiver.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.processed.setdefault(key, json.loads(body))  # dedup: once per key
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_webhooks_retry_until_acknowledged_dedupe_dead_letter_and_replay(tmp_path: Path) -> None:
    world = await make_world(tmp_path, rounds=1)
    app = create_app(str(world.db), ADMIN, world.log_key.verifier)
    admin, ingest, sealer, store = await backend(tmp_path, log_key=world.log_key)
    now = [time.time()]
    from httpx import ASGITransport, AsyncClient

    async with (app.router.lifespan_context(app),
                AsyncClient(transport=ASGITransport(app=app), base_url="http://t") as client):
            ok = Receiver(fail_first=2)
            dead = Receiver(fail_first=10**6)
            hooks = {}
            for name, receiver, who in (("ok", ok, "u1"), ("dead", dead, "u2")):
                answer = await client.post("/api/v1/webhooks", json={"url": receiver.url},
                                           headers=world.auth(who))
                hooks[name] = answer.json()
                receiver.secret = hooks[name]["secret"]
            listed = (await client.get("/api/v1/webhooks", headers=world.auth("u1"))).json()
            assert [h["id"] for h in listed] == [hooks["ok"]["id"]] and "secret" not in listed[0]

            worker = WebhookWorker(await_store := store, clock=lambda: now[0], max_attempts=3,
                                   backoff_base=5, timeout=5)
            del await_store
            for k in (2, 3):  # two new sealed batches, each with readings of both utilities
                await ingest.process(round_of_messages(world, k))
                await sealer.seal_all()
            await worker.tick()  # first attempt of both batches: ok fails twice (503)
            assert len(ok.posts) == 2 and not ok.processed
            await worker.tick()  # not due yet (backoff 5 s)
            assert len(ok.posts) == 2
            for _ in range(4):
                now[0] += 60
                await worker.tick()
            assert set(ok.processed) == {"batch-1", "batch-2"}
            assert len(ok.posts) == 4  # two failures, then each batch acknowledged once
            body = ok.processed["batch-1"]
            assert body["event"] == "batch.sealed" and body["readings"] == 1
            pulled = await client.get(str(body["pull"]), headers=world.auth("u1"))
            assert [e["point"] for e in pulled.json()["entries"]] == ["mp-1"]

            # The always-failing receiver: 3 attempts each, then dead-lettered.
            assert len(dead.posts) == 6
            dead_list = (await client.get(f"/api/v1/webhooks/{hooks['dead']['id']}/deliveries?state=dead",
                                          headers=world.auth("u2"))).json()
            assert [d["idempotency_key"] for d in dead_list] == ["batch-1", "batch-2"]
            assert all(d["attempts"] == 3 and d["last_error"] == "HTTP 503" for d in dead_list)
            assert (await client.get(f"/api/v1/webhooks/{hooks['dead']['id']}/deliveries",
                                     headers=world.auth("u1"))).status_code == 404

            # Replay: the receiver is fixed; the delivery goes out again with the same key.
            dead.fail_first = 0
            replay = await client.post(
                f"/api/v1/webhooks/{hooks['dead']['id']}/deliveries/{dead_list[0]['id']}/replay",
                headers=world.auth("u2"))
            assert replay.status_code == 200 and replay.json()["state"] == "pending"
            again = await client.post(
                f"/api/v1/webhooks/{hooks['dead']['id']}/deliveries/{dead_list[0]['id']}/replay",
                headers=world.auth("u2"))
            assert again.status_code == 409
            await worker.tick()
            assert set(dead.processed) == {"batch-1"}
            # A lost acknowledgement: the same delivery is sent twice; the receiver keeps it once.
            ok.processed.clear()
            await store.connection.execute(
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0 WHERE webhook = ?",
                (hooks["ok"]["id"],))
            await worker.tick()
            await worker.tick()
            assert set(ok.processed) == {"batch-1", "batch-2"} and len(ok.posts) == 6
            ok.close()
            dead.close()
    await close(admin, ingest, sealer, store)


# ------------------------------------------------------------------------ fleet health


async def test_fleet_health_shows_a_gateway_going_silent_and_coming_back(tmp_path: Path) -> None:
    world = await make_world(tmp_path, rounds=2)
    admin, ingest, sealer, store = await backend(tmp_path, log_key=world.log_key)
    # A gap: gw-b misses interval 3 and 4, then reads again at 5.
    world.seq["gw-b"] += 1
    await ingest.process([world.gw_b.message(world.seq["gw-b"], meter="M-3", end=T0 + 900 * 5)])
    app = create_app(str(world.db), ADMIN, world.log_key.verifier)

    def status(device: str, sent: int, depth: int) -> tuple[str, bytes]:
        return status_topic(device), GatewayStatus(
            device, sent, "0.1.0", 3600, depth, 0, (MeterHealth("M-3", T0 + 900 * 5, -4),)).to_cbor()

    real = time.time()
    ingest.clock = lambda: real - 3600  # an hour ago
    await ingest.process([status("gw-b", int(real) - 3600, 17), status("gw-a", int(real) - 3600, 0)])
    ingest.clock = lambda: real
    await ingest.process([status("gw-a", int(real), 1), status("gw-x", int(real), 1),
                          (status_topic("gw-a"), b"\xa0")])
    assert ingest.stats["status:unknown-device"] == 1 and ingest.stats["status:encoding"] == 1
    with TestClient(app) as http:
        fleet = http.get("/api/v1/fleet", headers=world.auth("u2")).json()
        by_device = {g["device"]: g for g in fleet["gateways"]}
        assert by_device["gw-b"]["silent"] and not by_device["gw-a"]["silent"]
        assert by_device["gw-b"]["backlog"] == 17
        meter = by_device["gw-b"]["meters"][0]
        assert meter["drift"] == -4 and meter["gaps"] == [[T0 + 900 * 2, T0 + 900 * 4]]
        assert [(a["device"], a["kind"]) for a in fleet["alerts"]] == [("gw-b", "silent")]
        page = http.get("/fleet", headers=world.auth("u2"))
        assert page.status_code == 200 and "gw-b" in page.text and "silent" in page.text
        assert "meter clock 4 s behind" in page.text and "(1 h ago)" in page.text
        assert_no_unix_seconds(page.text, "/fleet")
        browser = http.get("/fleet", follow_redirects=False)  # no key: to the console's sign-in
        assert browser.status_code == 303 and browser.headers["location"].startswith("/console")
        assert http.get("/fleet", headers={"Authorization": "Bearer nope"}).status_code == 401
        # It comes back.
        await ingest.process([status("gw-b", int(real), 0)])
        fleet = http.get("/api/v1/fleet", headers=world.auth("u2")).json()
        assert fleet["alerts"] == []
        assert {g["device"]: g["backlog"] for g in fleet["gateways"]} == {"gw-a": 1, "gw-b": 0}
        # An older status arriving late does not overwrite the newer one.
        await ingest.process([status("gw-b", int(real) - 7200, 99)])
        assert {g["device"]: g["backlog"] for g in http.get(
            "/api/v1/fleet", headers=world.auth("u2")).json()["gateways"]}["gw-b"] == 0
    await close(admin, ingest, sealer, store)


# ------------------------------------------------------------------------------ limits


def test_request_limits_answer_413_and_429_with_retry_after() -> None:
    from fastapi import FastAPI
    from meterchain.backend.api.limits import RequestLimits, TokenBuckets

    app = FastAPI()

    @app.post("/echo")
    async def echo(body: dict[str, str]) -> dict[str, str]:
        return body

    app.add_middleware(RequestLimits, max_body=100, rate=1.0, burst=3)
    with TestClient(app) as client:
        big = client.post("/echo", json={"x": "y" * 200}, headers={"Authorization": "Bearer a"})
        assert big.status_code == 413 and big.json()["error"] == "too-large"
        answers = [client.post("/echo", json={"x": "y"}, headers={"Authorization": "Bearer b"})
                   for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[-1].headers["retry-after"] == "1" and answers[-1].json()["hint"]
        # Another key has its own bucket.
        assert client.post("/echo", json={"x": "y"}, headers={"Authorization": "Bearer c"}).status_code == 200
    buckets = TokenBuckets(rate=2.0, burst=1, max_keys=2)
    assert buckets.take("a", 0.0) == 0 and buckets.take("a", 0.0) == pytest.approx(0.5)
    assert buckets.take("a", 0.5) == 0
    buckets.take("b", 0.5)
    buckets.take("c", 10.0)  # over max_keys: refilled buckets are forgotten
    assert len(buckets._buckets) <= 2


async def test_an_mqtt_webhook_forwards_each_sealed_batch_to_the_utilitys_broker(
        tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    import aiomqtt
    from meterchain.mqtt import BrokerUrl

    world = await make_world(tmp_path, rounds=1)
    admin, ingest, sealer, store = await backend(tmp_path, log_key=world.log_key)
    address = BrokerUrl.parse(broker.url)
    app = create_app(str(world.db), ADMIN, world.log_key.verifier)
    from httpx import ASGITransport, AsyncClient

    async with (app.router.lifespan_context(app),
                AsyncClient(transport=ASGITransport(app=app), base_url="http://t") as client):
        url = f"mqtt://{address.host}:{address.port}/sw1/meterchain"
        created = await client.post("/api/v1/webhooks", json={"url": url}, headers=world.auth("u2"))
        assert created.status_code == 201
        received: list[tuple[str, bytes]] = []
        async with aiomqtt.Client(address.host, address.port, identifier="utility-sw1") as sub:
            await sub.subscribe("sw1/meterchain/#", qos=1)
            for k in (2, 3):
                await ingest.process(round_of_messages(world, k))
                await sealer.seal_all()
            worker = WebhookWorker(store, timeout=5)
            await worker.tick()

            async def collect() -> None:
                async for message in sub.messages:
                    received.append((message.topic.value, bytes(message.payload)))  # type: ignore[arg-type]
                    if len(received) == 2:
                        return

            await asyncio.wait_for(collect(), 10)
    # Batch 0 holds 2 device leaves, 4 assignment leaves (3 meter bindings, 1 occupancy) and 3
    # readings; each later batch 3 readings.
    assert sorted(t for t, _ in received) == ["sw1/meterchain/batch/1/9", "sw1/meterchain/batch/2/12"]
    for _, payload in received:
        doc = cbor2.loads(payload)
        verified = verify_batch(doc, log_key_text(world), binary=True)
        assert {r[3]["meter"] for r in verified.readings} == {"M-2", "M-3"}  # u2's, never M-1
    deliveries = await store.connection.execute_fetchall("SELECT state FROM webhook_deliveries")
    assert [r[0] for r in deliveries] == ["delivered", "delivered"]
    await close(admin, ingest, sealer, store)
