"""The API under 20 concurrent clients: p50 / p99 of a proof bundle, a day of a metering point and
``/healthz``, beside a fixed route that does no I/O, all in the same run and the same mix.

    .venv/bin/python bench/bench_api.py --readings 100000 --requests 1000 [--cpu 300] [--json]

Builds a database of ``--readings`` readings (``--points`` metering points, one meter each, a
household key per point; rows written straight into the tables, leaves sealed by the real
Sealer, one enrolled device key per gateway so every bundle carries a device leaf too), serves
it with the product's app (``create_app``) under uvicorn as ``meterchain backend serve`` runs it
(one process, log level warning) in a child process, and drives it from this process with
``--clients`` httpx clients. Each client sends the four requests in turn (a household's proof
bundle of a random reading of its point, a household's day (96 readings) of its point,
``/healthz``, and ``/bench/fixed``) until ``--requests`` of each are done, so every route sees the
same queue. ``/bench/fixed`` exists only in this bench's app: it returns a constant and touches
nothing (the product has no route without I/O: ``/metrics`` renders every metric). Then
``--cpu`` requests of each route from one client, one at a time: the server process's CPU per
request (/proc), which a loaded machine disturbs far less than it does latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.support

T0 = 1_700_000_100 - 1_700_000_100 % 900
DAY = 96
ADMIN = "bench-admin-token"
ROUTES = ("bundle", "day", "healthz", "fixed")


async def build(path: Path, readings: int, points: int) -> dict[str, object]:
    """The database, sealed; returns each point's (device, household token, readings per point)."""
    from meterchain.backend.access.model import KeyKind, PointKind
    from meterchain.backend.access.tables import PartyTables
    from meterchain.backend.devices.registry import enrol
    from meterchain.backend.log.sealer import Sealer
    from meterchain.backend.store import open_sqlite
    from meterchain.contract import merkle
    from meterchain.contract.note import NoteSigner

    from tests.support.backend import Gateway

    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)
    signer = NoteSigner.generate("bench.example/log")
    store = await open_sqlite(path)
    tables = PartyTables(store)
    await tables.add_utility("u", "", 0)
    await tables.add_community("c", "u", "", 0)
    per_point = readings // points
    tokens = []
    for p in range(points):
        gateway = Gateway(f"gw-{p:06d}", meter=f"M-{p}")
        await enrol(store, gateway.device, gateway.public_key, T0)
        await tables.add_household(f"h-{p}", "c", "", 0)
        await tables.add_metering_point(f"mp-{p}", "u", "c", PointKind.CONSUMPTION, 0)
        await tables.bind_meter(f"mp-{p}", gateway.device, gateway.meter, 0, None, 0)
        await tables.add_occupancy(f"mp-{p}", f"h-{p}", 0, None, 0)
        _, token = await tables.create_key(KeyKind.HOUSEHOLD, f"h-{p}", "bench", None, 0)
        tokens.append(token)
    sealer = Sealer(store, signer, max_leaves=100_000)
    await sealer.seal_all()  # the device leaves
    db = store.connection
    leaf_id = int((await db.execute_fetchall("SELECT max(id) FROM leaves"))[0][0])  # type: ignore[index]
    rng = random.Random(1)
    for p in range(points):  # interleaved in time like a fleet: point by point is enough here
        leaves, rows = [], []
        for seq in range(1, per_point + 1):
            leaf_id += 1
            data = b"\x82" + rng.randbytes(276)  # a message's first byte (stored raw)
            leaves.append((leaf_id, data, merkle.leaf_hash(data)))
            end = T0 + 900 * seq
            rows.append((leaf_id, f"gw-{p:06d}", seq, f"M-{p}", end - 900, end, 1000 * seq, 0))
        await db.execute("BEGIN")
        await db.executemany("INSERT INTO leaves (id, kind, data, leaf_hash, received_at) "
                             "VALUES (?, 'reading', ?, ?, 0)", leaves)
        await db.executemany('INSERT INTO readings (leaf_id, device, seq, meter, start, "end", '
                             "import_wh, export_wh) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        await db.execute("COMMIT")
        if p % 20 == 19 or p == points - 1:
            await sealer.seal_all()
    size = sealer.tree.size
    await store.close()
    return {"tokens": tokens, "per_point": per_point, "size": size, "verifier": str(signer.verifier)}


def serve(db: str, port: int, verifier: str) -> None:
    """The child process: the product's app plus the no-I/O route, under uvicorn as serve runs it."""
    import uvicorn
    from meterchain.backend.api.app import create_app
    from meterchain.backend.api.limits import RequestLimits
    from meterchain.contract.note import NoteVerifier

    app = create_app(db, ADMIN, NoteVerifier.parse(verifier))

    @app.get("/bench/fixed")
    async def fixed() -> dict[str, object]:
        return {"ok": True, "tree_size": 0}

    # Where /healthz is in the route table (create_app puts the probes first): matching costs
    # the same for both, so the two differ only by what /healthz does.
    routes = app.router.routes
    routes.insert([getattr(r, "path", None) for r in routes].index("/healthz"), routes.pop())
    for middleware in app.user_middleware:  # and, like /healthz, not rate-limited
        if middleware.cls is RequestLimits:
            middleware.kwargs["exempt"] = ("/healthz", "/metrics", "/bench/fixed")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_cpu(pid: int, ticks: int) -> float:
    """Seconds of CPU the process has used (user + system, all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


async def drive(port: int, world: dict[str, object], clients: int, requests: int, server: int,
                cpu_requests: int, cpu_ms: dict[str, float]) -> dict[str, list[float]]:
    """``clients`` concurrent clients, each sending the four routes in turn; seconds per request."""
    import httpx

    tokens: list[str] = world["tokens"]  # type: ignore[assignment]
    per_point = int(world["per_point"])  # type: ignore[call-overload]
    rng = random.Random(7)
    latencies: dict[str, list[float]] = {route: [] for route in ROUTES}
    plan = [ROUTES[i % len(ROUTES)] for i in range(requests * len(ROUTES))]
    rng.shuffle(plan)
    queue = iter(plan)

    def request(route: str) -> tuple[str, dict[str, str]]:
        point = rng.randrange(len(tokens))
        auth = {"Authorization": f"Bearer {tokens[point]}"}
        if route == "bundle":
            seq = rng.randint(1, per_point)
            return f"/api/v1/metering-points/mp-{point}/readings/gw-{point:06d}/{seq}/bundle", auth
        if route == "day":
            start = T0 + 900 * (1 + rng.randrange(max(1, per_point - DAY)))  # seq k ends at T0 + 900k
            return (f"/api/v1/metering-points/mp-{point}/readings?start={start}"
                    f"&end={start + 900 * DAY}", auth)
        return ("/healthz" if route == "healthz" else "/bench/fixed"), {}

    async def client(http: httpx.AsyncClient) -> None:
        for route in queue:
            url, headers = request(route)
            start = time.perf_counter()
            response = await http.get(url, headers=headers)
            latencies[route].append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
            if route == "day" and len(response.json()) != DAY:
                raise RuntimeError(f"{url}: {len(response.json())} readings, not {DAY}")

    async def sequential(http: httpx.AsyncClient) -> None:
        """One client, one route at a time: the server's CPU per request (load-robust)."""
        ticks = os.sysconf("SC_CLK_TCK")
        for route in ROUTES:
            before = server_cpu(server, ticks)
            for _ in range(cpu_requests):
                url, headers = request(route)
                if (await http.get(url, headers=headers)).status_code != 200:
                    raise RuntimeError(f"{url}: not 200")
            cpu_ms[route] = (server_cpu(server, ticks) - before) / cpu_requests * 1000

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                 timeout=60) as http:
        for _ in range(50):  # warm up: the app, the caches, the connections
            url, headers = request(ROUTES[_ % len(ROUTES)])
            await http.get(url, headers=headers)
        await asyncio.gather(*(client(http) for _ in range(clients)))
        if cpu_requests:
            await sequential(http)
    return latencies


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def run(readings: int, points: int, clients: int, requests: int, folder: Path,
        profile: Path | None = None, cpu_requests: int = 0) -> dict[str, object]:
    db = folder / f"api-{readings}.db"
    start = time.perf_counter()
    world = asyncio.run(build(db, readings, points))
    built = time.perf_counter() - start
    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(db), str(port),
                              str(world["verifier"])])
    spy = None
    try:
        for _ in range(300):  # until it accepts connections
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        if profile:  # the server's steady state only (attached after start-up)
            spy = subprocess.Popen(["py-spy", "record", "-r", "250", "-f", "raw", "-o", str(profile),
                                    "--pid", str(child.pid)])
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        cpu_ms: dict[str, float] = {}
        latencies = asyncio.run(drive(port, world, clients, requests, child.pid, cpu_requests, cpu_ms))
        seconds = time.perf_counter() - start
        load_after = os.getloadavg()[0]
    finally:
        if spy is not None:  # py-spy writes its profile on SIGINT
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        child.terminate()
        child.wait(timeout=60)
    result: dict[str, object] = {
        "readings": readings, "points": points, "clients": clients, "requests_per_route": requests,
        "tree_size": world["size"], "build_s": built, "load_before": load_before,
        "load_after": load_after, "requests_per_s": requests * len(ROUTES) / seconds,
    }
    for route, samples in latencies.items():
        if route in cpu_ms:
            result[f"{route}_server_cpu_ms"] = cpu_ms[route]
        result[f"{route}_p50_ms"] = statistics.median(samples) * 1000
        result[f"{route}_p99_ms"] = quantile(samples, 0.99)
    result["healthz_over_fixed_p99"] = float(result["healthz_p99_ms"]) / float(result["fixed_p99_ms"])  # type: ignore[arg-type]
    return result


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000, help="per route")
    parser.add_argument("--dir", type=Path, help="keep the database there (default: a temporary folder)")
    parser.add_argument("--cpu", type=int, default=200, metavar="N",
                        help="then N requests per route from one client: the server's CPU per request")
    parser.add_argument("--profile", type=Path, help="py-spy the server into this file (raw stacks)")
    parser.add_argument("--json", action="store_true", help="one JSON line at the end (run_all.py)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mc-bench-api-") as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        result = run(args.readings, args.points, args.clients, args.requests, folder, args.profile,
                     args.cpu)
    print(f"{result['readings']:,} readings ({result['points']} points, tree {result['tree_size']:,}), "
          f"built in {result['build_s']:.0f} s; {args.clients} clients, {args.requests} requests per "
          f"route, mixed: {result['requests_per_s']:.0f} requests/s; load {result['load_before']:.2f} → "
          f"{result['load_after']:.2f}")
    print("| route | p50 ms | p99 ms | server CPU per request, one client (ms) |\n|---|---:|---:|---:|")
    for route in ROUTES:
        cpu = result.get(f"{route}_server_cpu_ms")
        print(f"| {route} | {result[f'{route}_p50_ms']:.1f} | {result[f'{route}_p99_ms']:.1f} "
              f"| {'–' if cpu is None else f'{cpu:.2f}'} |")
    print(f"healthz p99 / fixed p99: {result['healthz_over_fixed_p99']:.2f} (goal ≤ 1.5)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
