"""Scoped access over HTTP: every route is collected from the app, so a new route that forgets
its scope check fails here; reading routes refuse the wrong household, the wrong utility, an
expired auditor grant, a revoked key and anonymous callers; bindings split readings over time."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from meterchain.backend.api.app import create_app
from meterchain.contract.bundle import verify_bundle

from tests.support.access import ADMIN_TOKEN, EXCHANGE, MOVE, STRAY_SEQ, Scenario, all_routes, build
from tests.support.backend import T0

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.routing import APIRoute
    from fastapi.testclient import TestClient

#: Routes anyone may call. Each is public by design (docs/privacy.md): log hashes and signed
#: headers, the log key, health and metrics, the dashboard's sign-in pages, and two routes whose
#: credential is in the request itself (an installer token; a reading's own leaf hash).
PUBLIC = {
    "/healthz", "/metrics", "/api/v1/log/public-key", "/api/v1/log/witness-policy", "/api/v1/checkpoint",
    "/api/v1/proofs/consistency", "/api/v1/batches", "/checkpoint", "/tile/{path:path}",
    "/batch/{index}", "/api/v1/provision", "/api/v1/devices/{device}/readings/{seq}/inclusion",
    "/", "/login", "/logout", "/invite/{token}", "/reset/{token}",
    "/docs", "/favicon.svg", "/favicon.ico",  # the API docs page (Swagger UI, local assets) and the icon
    "/console/login", "/console/logout", "/console/invite/{token}",  # the console's sign-in and invitations
}


def sample_url(route: APIRoute, values: dict[str, object]) -> str:
    names = [p.name for p in route.dependant.path_params]
    missing = [n for n in names if n not in values]
    assert not missing, f"give a sample value for {missing} of {route.path} in this test"
    return route.path_format.format(**{n: values[n] for n in names})


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    import asyncio

    return asyncio.run(build(tmp_path_factory.mktemp("access")))


@pytest.fixture(scope="module")
def http(scenario: Scenario) -> Iterator[TestClient]:
    app = create_app(str(scenario.db), ADMIN_TOKEN, scenario.log_key.verifier)  # type: ignore[attr-defined]
    with TestClient(app) as client:
        yield client


def reading_routes(http: TestClient) -> list[APIRoute]:
    return [r for r in all_routes(http.app.router.routes)  # type: ignore[attr-defined]
            if "/readings" in r.path and r.path.startswith("/api/") and r.path not in PUBLIC]


def test_every_non_public_route_refuses_anonymous_callers(http: TestClient, scenario: Scenario) -> None:
    values = {"device": "gw-a", "seq": 1, "point": "mp-a", "key_id": scenario.key_ids["h-a"],
              "household": "h-a", "username": "alice", "kind": "day", "key": "2023-11-14",
              "month": "2023-11", "token": "x", "hook": "wh-000000000000", "delivery": 1,
              "community": "c1", "member": "mp-a", "interval_start": 0, "handle": "0123456789ab"}
    checked = 0
    for route in all_routes(http.app.router.routes):  # type: ignore[attr-defined]
        if route.path in PUBLIC:
            continue
        for method in sorted(route.methods):
            answer = http.request(method, sample_url(route, values), follow_redirects=False)
            if route.path.startswith("/api/"):
                assert answer.status_code == 401, (method, route.path, answer.text)
                assert answer.json()["error"] == "unauthorized" and answer.json()["hint"]
            else:  # the dashboard: its own sign-in (a redirect), never the page
                assert answer.status_code in (303, 307, 401, 404), (method, route.path)
            assert "M-A1" not in answer.text and "M-N" not in answer.text
            checked += 1
    assert checked >= 20  # the collection found the app's routes


def test_reading_routes_are_the_known_ones(http: TestClient) -> None:
    paths = {r.path for r in reading_routes(http)}
    assert {"/api/v1/devices/{device}/readings", "/api/v1/devices/{device}/readings/{seq}/bundle",
            "/api/v1/metering-points/{point}/readings",
            "/api/v1/metering-points/{point}/readings/{device}/{seq}/bundle"} <= paths


@pytest.mark.parametrize("caller, status, error", [
    (None, 401, "unauthorized"),
    ("h-a-revoked", 401, "key-revoked"),
    ("aud-expired", 403, "grant-expired"),
    ("h-b", 404, "not-found"),  # the wrong household
    ("h-old", 404, "not-found"),  # a neighbour on the same gateway
    ("u2", 404, "not-found"),  # the wrong utility
    ("aud-b", 404, "not-found"),  # an auditor whose grant names another point
    ("h-a", 200, None), ("u1", 200, None), ("aud-c1", 200, None), ("admin-key", 200, None),
    ("root", 200, None),
])
def test_reading_routes_refuse_out_of_scope_callers(
    http: TestClient, scenario: Scenario, caller: str | None, status: int, error: str | None
) -> None:
    values = {"device": "gw-a", "seq": scenario.seqs["mp-a"][0], "point": "mp-a"}
    routes = reading_routes(http)
    assert routes
    for route in routes:
        headers = scenario.auth(caller) if caller else {}
        answer = http.get(sample_url(route, values), headers=headers)
        if caller == "h-old" and route.path == "/api/v1/devices/{device}/readings":
            # The neighbour shares gw-a: it gets the device's list, with only its own readings.
            shown = {r["seq"] for r in answer.json()}
            assert shown and not shown & set(scenario.seqs["mp-a"]), answer.text
            continue
        assert answer.status_code == status, (caller, route.path, answer.text)
        if error is not None:
            body = answer.json()
            assert body["error"] == error and body["hint"], body


def test_out_of_scope_ids_look_like_unknown_ones(http: TestClient, scenario: Scenario) -> None:
    """A household cannot tell another household's metering point from one that does not exist."""
    other = http.get("/api/v1/metering-points/mp-b/readings", headers=scenario.auth("h-a"))
    unknown = http.get("/api/v1/metering-points/mp-zz/readings", headers=scenario.auth("h-a"))
    assert other.status_code == unknown.status_code == 404
    assert other.json()["detail"].replace("mp-b", "X") == unknown.json()["detail"].replace("mp-zz", "X")
    other = http.get("/api/v1/devices/gw-b/readings/1/bundle", headers=scenario.auth("h-a"))
    unknown = http.get("/api/v1/devices/gw-b/readings/999/bundle", headers=scenario.auth("h-a"))
    assert other.status_code == unknown.status_code == 404
    assert other.json()["error"] == unknown.json()["error"] == "not-found"


def seqs(answer) -> list[int]:  # type: ignore[no-untyped-def]
    assert answer.status_code == 200, answer.text
    return [r["seq"] for r in answer.json()]


def test_meter_exchange_and_move_split_readings_by_binding(http: TestClient, scenario: Scenario) -> None:
    get, a = http.get, scenario.auth
    # Both meters of mp-a, before and after the exchange; never the stray M-A1 reading.
    rows = get("/api/v1/metering-points/mp-a/readings", headers=a("h-a")).json()
    assert [r["seq"] for r in rows] == scenario.seqs["mp-a"]
    assert {r["meter"] for r in rows if r["end"] < EXCHANGE} == {"M-A1"}
    assert {r["meter"] for r in rows if r["end"] >= EXCHANGE} == {"M-A2"}
    assert all(r["device"] == "gw-a" for r in rows)
    # On the shared gateway a household sees only its own meter's readings.
    assert seqs(get("/api/v1/devices/gw-a/readings", headers=a("h-a"))) == scenario.seqs["mp-a"]
    # The admin sees every reading of the device, the stray one too; the utility only bound ones.
    everything = seqs(get("/api/v1/devices/gw-a/readings", headers=a("root")))
    assert STRAY_SEQ in everything and len(everything) == 17
    assert STRAY_SEQ not in seqs(get("/api/v1/devices/gw-a/readings", headers=a("u1")))
    assert get(f"/api/v1/devices/gw-a/readings/{STRAY_SEQ}/bundle", headers=a("u1")).status_code == 404
    assert get(f"/api/v1/devices/gw-a/readings/{STRAY_SEQ}/bundle", headers=a("root")).status_code == 200
    # The household that moved out sees its own past, never its successor's readings.
    old = get("/api/v1/metering-points/mp-n/readings", headers=a("h-old")).json()
    new = get("/api/v1/metering-points/mp-n/readings", headers=a("h-new")).json()
    assert old and new and all(r["end"] < MOVE for r in old) and all(r["end"] >= MOVE for r in new)
    assert [r["seq"] for r in old + new] == scenario.seqs["mp-n"]
    after_move = new[0]["seq"]
    assert get(f"/api/v1/devices/gw-a/readings/{after_move}/bundle", headers=a("h-old")).status_code == 404
    assert get(f"/api/v1/metering-points/mp-n/readings/gw-a/{after_move}/bundle",
               headers=a("h-new")).status_code == 200
    # A time window narrows further; a bundle asked for under the wrong point is unknown.
    window = get("/api/v1/metering-points/mp-a/readings", headers=a("h-a"),
                 params={"start": T0 + 900 * 2, "end": T0 + 900 * 4})
    assert [r["end"] for r in window.json()] == [T0 + 900 * 2, T0 + 900 * 3]
    assert get(f"/api/v1/metering-points/mp-n/readings/gw-a/{scenario.seqs['mp-a'][0]}/bundle",
               headers=a("root")).status_code == 404
    # Listing: each key sees its own metering points only.
    listed = {who: [p["id"] for p in get("/api/v1/metering-points", headers=a(who)).json()]
              for who in ("h-a", "h-old", "u1", "u2", "aud-c1", "aud-b", "root")}
    assert listed == {"h-a": ["mp-a"], "h-old": ["mp-n"], "u1": ["mp-a", "mp-n"], "u2": ["mp-b"],
                      "aud-c1": ["mp-a", "mp-n"], "aud-b": ["mp-b"], "root": ["mp-a", "mp-b", "mp-n"]}


def test_reading_lists_are_exactly_their_documented_models(http: TestClient, scenario: Scenario) -> None:
    # The lists are serialized by hand (issue 20): every row must be what response_model says.
    from meterchain.backend.access.readings_routes import PointReadingOut, ReadingOut
    from pydantic import TypeAdapter

    for url, model, who in (("/api/v1/metering-points/mp-a/readings", PointReadingOut, "h-a"),
                            ("/api/v1/devices/gw-a/readings", ReadingOut, "h-a"),
                            ("/api/v1/devices/gw-a/readings", ReadingOut, "root")):
        answer = http.get(url, headers=scenario.auth(who))
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        rows = answer.json()
        assert rows and all(list(row) == list(model.model_fields) for row in rows)
        checked = TypeAdapter(list[model]).validate_python(rows, strict=True)  # type: ignore[valid-type]
        assert [m.model_dump() for m in checked] == rows


def test_bundles_for_a_household_verify(http: TestClient, scenario: Scenario) -> None:
    from meterchain.contract.note import NoteVerifier

    log_key = NoteVerifier.parse(http.get("/api/v1/log/public-key").text)
    seq = scenario.seqs["mp-a"][-1]
    text = http.get(f"/api/v1/metering-points/mp-a/readings/gw-a/{seq}/bundle",
                    headers=scenario.auth("h-a")).text
    checked = verify_bundle(text, log_key).reading.reading
    assert (checked.device, checked.seq, checked.meter) == ("gw-a", seq, "M-A2")


def test_admin_routes_need_admin_scope_and_explain_conflicts(http: TestClient, scenario: Scenario) -> None:
    a = scenario.auth
    refused = http.post("/api/v1/utilities", json={"id": "u9"}, headers=a("h-a"))
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert http.post("/api/v1/utilities", json={"id": "u9"}, headers=a("admin-key")).status_code == 201
    again = http.post("/api/v1/utilities", json={"id": "u9"}, headers=a("root"))
    assert again.status_code == 409 and again.json()["error"] == "exists"
    overlap = http.post("/api/v1/metering-points/mp-a/meters", headers=a("root"),
                        json={"device": "gw-a", "meter": "M-X", "valid_from": EXCHANGE + 10})
    assert overlap.status_code == 409 and overlap.json()["error"] == "overlap"
    assert "end that binding first" in overlap.json()["detail"]
    same_meter = http.post("/api/v1/metering-points/mp-b/meters", headers=a("root"),
                           json={"device": "gw-a", "meter": "M-N", "valid_from": 0, "valid_to": 10})
    assert same_meter.status_code == 409 and "meter gw-a/M-N" in same_meter.json()["detail"]
    bad = http.post("/api/v1/metering-points", headers=a("root"),
                    json={"id": "mp-x", "utility": "u1", "kind": "solar"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid-request"
    wrong_community = http.post("/api/v1/metering-points", headers=a("root"),
                                json={"id": "mp-x", "utility": "u1", "community": "c2",
                                      "kind": "ev-charger"})
    assert wrong_community.status_code == 400 and "belongs to utility u2" in wrong_community.json()["detail"]
    bindings = http.get("/api/v1/metering-points/mp-a/bindings", headers=a("root")).json()
    assert [(m["meter"], m["valid_to"]) for m in bindings["meters"]] == [("M-A1", EXCHANGE), ("M-A2", None)]
    assert http.get("/api/v1/metering-points/mp-a/bindings", headers=a("h-a")).status_code == 403


def test_key_rotation_revocation_and_last_use(http: TestClient, scenario: Scenario) -> None:
    root = scenario.auth("root")
    made = http.post("/api/v1/keys", headers=root, json={"kind": "household", "subject": "h-a",
                                                          "label": "phone"})
    assert made.status_code == 201
    first = made.json()
    assert first["token"].startswith("mck_") and first["last_used"] is None
    one = {"Authorization": f"Bearer {first['token']}"}
    assert http.get("/api/v1/whoami", headers=one).json() == {
        "kind": "household", "id": "h-a", "key_id": first["id"], "scopes": ["read"]}
    # Self-service rotation without grace: both keys work until the old one is revoked.
    second = http.post(f"/api/v1/keys/{first['id']}/rotate", json={}, headers=one).json()
    two = {"Authorization": f"Bearer {second['token']}"}
    assert second["replaces"] == first["id"] and second["subject"] == "h-a"
    assert http.get("/api/v1/metering-points", headers=one).status_code == 200
    assert http.get("/api/v1/metering-points", headers=two).status_code == 200
    # A key may manage only itself; another key id is unknown to it.
    other = scenario.key_ids["h-b"]
    assert http.post(f"/api/v1/keys/{other}/revoke", headers=two).status_code == 404
    assert http.post(f"/api/v1/keys/{first['id']}/revoke", headers=root).json()["revoked"] is not None
    gone = http.get("/api/v1/metering-points", headers=one)
    assert gone.status_code == 401 and gone.json()["error"] == "key-revoked"
    # Rotation with grace 0: the old key stops at once.
    third = http.post(f"/api/v1/keys/{second['id']}/rotate", json={"grace": 0}, headers=root).json()
    expired = http.get("/api/v1/metering-points", headers=two)
    assert expired.status_code == 401 and expired.json()["error"] == "key-expired"
    three = {"Authorization": f"Bearer {third['token']}"}
    assert http.get("/api/v1/metering-points/mp-a/readings", headers=three).status_code == 200
    refused = http.post(f"/api/v1/keys/{second['id']}/rotate", json={}, headers=root)
    assert refused.status_code == 400 and "expired" in refused.json()["detail"]
    keys = {k["id"]: k for k in http.get("/api/v1/keys", headers=root).json()}
    assert keys[first["id"]]["last_used"] is not None and keys[third["id"]]["last_used"] is not None
    assert all("token" not in k for k in keys.values())
    unknown = http.get("/api/v1/whoami", headers={"Authorization": "Bearer mck_nope"})
    assert unknown.status_code == 401 and unknown.json()["error"] == "unauthorized"
    assert http.post("/api/v1/keys", headers=root, json={"kind": "utility"}).status_code == 400
    assert http.post("/api/v1/keys", headers=root,
                     json={"kind": "auditor", "subject": "g-none"}).status_code == 404


def test_tokens_are_stored_only_as_hashes(scenario: Scenario) -> None:
    import sqlite3

    with sqlite3.connect(scenario.db) as db:
        dump = "\n".join(db.iterdump())
        hashes = {row[0] for row in db.execute("SELECT token_hash FROM api_keys")}
    from meterchain.backend.access.model import token_hash

    for name, token in scenario.tokens.items():
        if name != "root":
            assert token not in dump and token_hash(token) in hashes
