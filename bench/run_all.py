"""Every like-for-like benchmark in one command: JSON plus a Markdown table, load average per row.

Each row names what both sides do; the peer or bound of each row is measured in the same run,
right beside ours (interleaved where the bench allows), and the 1-minute load average is recorded
before and after each row: on a shared machine only the ratios compare across runs.

    .venv/bin/python bench/run_all.py --quick          # a few minutes
    .venv/bin/python bench/run_all.py                  # larger samples
    .venv/bin/python bench/run_all.py --only log,agent # some rows

Writes bench/results/run_all-<UTC time>.json and .md (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests.support

Row = dict[str, object]


def load() -> float:
    return round(os.getloadavg()[0], 2)


def run_json(script: str, *args: str) -> object:
    """Run ``bench/<script> --json …`` and return its JSON (the last line of its stdout)."""
    out = subprocess.run([sys.executable, str(HERE / script), *args, "--json"], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ the rows


def row_leafdata(quick: bool) -> list[Row]:
    n, rounds = (2000, 3) if quick else (10000, 5)
    r = run_json("bench_leafdata.py", "--n", str(n), "--rounds", str(rounds))
    assert isinstance(r, dict)
    return [{
        "what": "pack a real signed reading (leaf data, level-9 DEFLATE with the v1 dictionary), "
                "byte-identical output asserted",
        "ours": "one primed compressor copied per message", "ours_value": r["primed_copy_per_s"],
        "peer": "a compressor set up per message (before issue 20)", "peer_value": r["fresh_per_s"],
        "unit": "messages/s", "ratio": r["ratio"], "goal": "> 1",
        "command": f"bench/bench_leafdata.py --n {n} --rounds {rounds}",
    }]


def row_contract(quick: bool) -> list[Row]:
    from bench_verify import per_message

    n, rounds = (1000, 3) if quick else (5000, 5)
    r = per_message(n, rounds)
    return [{
        "what": "check one signed reading, one thread, distinct messages, no caching of results (CPU time; "
                f"wall-time ratio {r['ratio_wall']:.2f})",
        "ours": "parse_message + verify_reading (strict CBOR, every bound, key id, low-S, ECDSA)",
        "ours_value": r["full_per_s"], "peer": "bare cryptography ECDSA P-256 verify of the same reading bytes",
        "peer_value": r["bare_per_s"], "unit": "messages/s", "ratio": r["ratio"], "goal": "≥ 0.8",
        "command": f"bench/bench_verify.py --n {n} --rounds {rounds} (interleaved rounds, best of each)",
    }]


def row_bundle(quick: bool) -> list[Row]:
    from bench_verify import per_bundle

    count, rounds = (100, 3) if quick else (200, 5)
    r = per_bundle(count, rounds)
    return [{
        "what": f"verify one proof bundle offline, {label} ({count} distinct bundles, 4,096-leaf log; CPU time, "
                f"wall {r[key + '_us_wall']:,.0f} µs)",
        "ours": "verify_bundle: parse, checkpoint note, device leaf inclusion, key, low-S, ECDSA, inclusion"
                + (", 3 cosignatures verified" if key == "quorum" else ""),
        "ours_value": r[key + "_us"], "peer": f"the bare verifies it needs: 1 ECDSA + {eds} Ed25519",
        "peer_value": r[floor + "_us"], "unit": "µs", "ratio": r[key + "_us"] / r[floor + "_us"],
        "goal": "≤ 1,000 µs" if key == "quorum" else "",
        "command": f"bench/bench_verify.py --bundles {count} --rounds {rounds}",
    } for label, key, floor, eds in (("log key only", "single", "floor1", 1),
                                     ("log key + 2-of-3 witness quorum", "quorum", "floor4", 4))]


def row_ingest(quick: bool) -> list[Row]:
    from bench_scale_out import CONFIGS, receive_only, run

    n, devices, rounds = (5000, 100, 1) if quick else (20000, 200, 2)
    label, workers, group = CONFIGS[0]  # one worker, plain subscription: what ingest runs

    async def interleaved() -> tuple[list[dict[str, object]], list[int], list[int], list[int]]:
        ours, bare311, paho311, bare5 = [], [], [], []
        with tempfile.TemporaryDirectory(prefix="mc-runall-ingest-") as tmp:
            for r in range(rounds):
                ours.append(await run(label, workers, group, n, devices, Path(tmp) / f"ingest-{r}"))
                bare311.append(await receive_only(group, n, devices, Path(tmp) / f"bare311-{r}"))
                paho311.append(await receive_only(group, n, devices, Path(tmp) / f"paho311-{r}",
                                                  client="paho"))
                bare5.append(await receive_only(group, n, devices, Path(tmp) / f"bare5-{r}", protocol="5"))
        return ours, bare311, paho311, bare5

    runs, bare311, paho311, bare5 = asyncio.run(interleaved())
    best = max(runs, key=lambda r: float(r["committed_sealed_per_s"]))  # type: ignore[arg-type]
    # The bound: the fastest bare drain with ingest's MQTT version, QoS and receiving processes.
    rate, bound = float(best["committed_sealed_per_s"]), max(*bare311, *paho311)  # type: ignore[arg-type]
    return [{
        "what": f"drain a backlog of {n:,} signed readings (QoS 1, MQTT 3.1.1 as a plain ingest connects, "
                f"Mosquitto on loopback, one receiving process; the same drain in MQTT 5: {max(bare5):,} msg/s)",
        "ours": f"one ingest worker process (receive, commit, ack; {best['check_processes'] or 1} check process "
                "by default: parse, checks, verify, pack), sealed by the sealer",
        "ours_value": rate, "peer": "the faster bare subscriber that only counts (MQTT 3.1.1, persistent "
        f"session): aiomqtt {max(bare311):,} or paho's own loop {max(paho311):,} msg/s",
        "peer_value": bound, "bare_mqtt5": max(bare5), "runs": [r["committed_sealed_per_s"] for r in runs],
        "bare_runs": bare311, "paho_runs": paho311, "unit": "messages/s", "ratio": rate / bound, "goal": "≥ 0.7",
        "stages": {**best["cpu_us_per_message"], **{  # type: ignore[dict-item]
            f"check, replayed: {k}": v for k, v in best["check_replayed_cpu_us_per_message"].items()}},  # type: ignore[attr-defined]
        "command": f"bench/run_all.py --only ingest (bench_scale_out.run and receive_only, n={n:,}, "
                   f"{rounds} interleaved round(s), best of each)",
    }]


def row_checkpoint(quick: bool) -> list[Row]:
    seconds = "5" if quick else "10"
    results = run_json("bench_checkpoint_latency.py", "--rate", "500", "--seconds", seconds)
    assert isinstance(results, list)
    timer, arrivals = results
    return [{
        "what": f"publish → signed checkpoint covering the reading, 500 readings/s for {seconds} s, "
                f"{key} ms",
        "ours": "arrival-driven sealing (coalesce 0.05 s, 5 s upper bound)",
        "ours_value": arrivals[f"{key}_ms"],
        "peer": "the timer before issue 20 (every 5 s or 10,000 leaves)", "peer_value": timer[f"{key}_ms"],
        "unit": "ms", "ratio": arrivals[f"{key}_ms"] / timer[f"{key}_ms"],
        "goal": "p50 ≤ 300 ms" if key == "p50" else "p99 ≤ 1,000 ms",
        "command": f"bench/bench_checkpoint_latency.py --rate 500 --seconds {seconds}",
    } for key in ("p50", "p99")]


def row_agent(quick: bool) -> list[Row]:
    seconds = "15" if quick else "30"
    r = run_json("bench_agent_rss.py", "--seconds", seconds)
    assert isinstance(r, dict)
    lean, whole = r["results"]
    return [{
        "what": f"agent run with 10 emulated SDM630 meters, {seconds} s, VmHWM (peak resident memory)",
        "ours": "meterchain agent run (only the agent's commands imported)", "ours_value": lean["hwm_mb"],
        "peer": "the same agent through the whole CLI (before issue 20)", "peer_value": whole["hwm_mb"],
        "unit": "MB", "ratio": lean["hwm_mb"] / whole["hwm_mb"], "goal": "≤ 60 MB",
        "command": f"bench/bench_agent_rss.py --seconds {seconds}",
    }]


def row_agent_io(quick: bool) -> list[Row]:
    cycles = "120" if quick else "300"
    before = run_json("bench_agent_io.py", "--cycles", cycles, "--outbox-from", "fe3eeaf")
    now = run_json("bench_agent_io.py", "--cycles", cycles)
    assert isinstance(before, dict) and isinstance(now, dict)
    return [{
        "what": f"agent with 10 emulated SDM630 meters, {cycles} poll cycles, an acking backend: "
                "bytes written to disk per reading (/proc/<agent>/io write_bytes)",
        "ours": "one transaction per cycle, sends and acks in memory, acked rows purged in batches, "
                "OCMF packed, 1 KiB pages, WAL + synchronous FULL", "ours_value": now["bytes_per_reading"],
        "peer": "the outbox before issue 20 (fe3eeaf: a transaction per publish batch and per ack, "
                "4 KiB pages), same run", "peer_value": before["bytes_per_reading"],
        "unit": "B", "ratio": now["bytes_per_reading"] / before["bytes_per_reading"], "goal": "≤ 1,000 B",
        "command": f"bench/bench_agent_io.py --cycles {cycles} [--outbox-from fe3eeaf]",
    }]


def row_reconnect(quick: bool) -> list[Row]:
    outages = "3,10" if quick else "3,10,30"
    r = run_json("bench_reconnect.py", "--outages", outages)
    assert isinstance(r, dict)
    probe, before = r["summary"]["probe (now)"], r["summary"]["no probe (before)"]
    return [{
        "what": f"broker down {outages} s, then started again: seconds from its port accepting to "
                "the agent's publisher connected (worst of the outages)",
        "ours": "reconnect loop probing the port while it waits (Backoff.probe 1 s)",
        "ours_value": probe["max_s"],
        "peer": "the same publisher with probe=0 (backoff only, before issue 20), same outages",
        "peer_value": before["max_s"], "unit": "s", "ratio": probe["max_s"] / before["max_s"],
        "goal": "≤ 2 s", "command": f"bench/bench_reconnect.py --outages {outages}",
    }]


def row_log(quick: bool) -> list[Row]:
    from bench_log import build_log, ensure_pymerkle, pymerkle

    size = 50_000 if quick else 200_000
    python = ensure_pymerkle()
    if python is None:
        raise RuntimeError("pymerkle's venv (bench/.venv-pymerkle) could not be created")
    with tempfile.TemporaryDirectory(prefix="mc-runall-log-") as tmp:
        # pymerkle before and after ours (its mean): the load drifts on a shared machine
        first = pymerkle(python, "build", Path(tmp) / "pymerkle-1.db", size, seed=size)
        ours = asyncio.run(build_log(Path(tmp) / "log.db", size, seed=size))
        second = pymerkle(python, "build", Path(tmp) / "pymerkle-2.db", size, seed=size)
    theirs = {key: (first[key] + second[key]) / 2 for key in ("appends_per_s", "appends_cpu_per_s")}
    what = (f"append {size:,} random 277-byte leaves to a log in SQLite (WAL, synchronous FULL: the "
            "store's pragmas)")
    ours_does = ("leaf hash + ingest's leaf INSERT (its indexed table) + the real Sealer's seal: "
                 "tree, leaf indices, every 4th level, signed checkpoint")
    command = f"bench/bench_log.py --sizes {size} --pymerkle-sizes {size} (its 'appends' rows)"
    return [{
        "what": what, "ours": ours_does, "ours_value": ours["appends_per_s"],
        "peer": "pymerkle 7 SqliteTree.append_entries (leaf hash + leaf INSERT, rollback journal, "
                "synchronous FULL; no tree: nodes derived on demand)",
        "peer_value": theirs["appends_per_s"], "unit": "leaves/s",
        "ratio": ours["appends_per_s"] / theirs["appends_per_s"], "goal": "≥ 1",
        "cpu_ratio": ours["appends_cpu_per_s"] / theirs["appends_cpu_per_s"], "command": command,
    }, {
        "what": what, "ours": ours_does, "ours_value": ours["appends_per_s"],
        "peer": "bound: bare hashlib + one executemany of the same rows into a plain table, same "
                "pragmas, interleaved per 100k chunk", "peer_value": ours["bare_per_s"],
        "unit": "leaves/s", "ratio": ours["appends_per_s"] / ours["bare_per_s"], "goal": "≥ 0.7",
        "cpu_ratio": ours["appends_cpu_per_s"] / ours["bare_cpu_per_s"], "command": command,
    }]


def row_api(quick: bool) -> list[Row]:
    readings, requests = (100_000, 300) if quick else (100_000, 1000)
    r = run_json("bench_api.py", "--readings", str(readings), "--requests", str(requests))
    assert isinstance(r, dict)
    command = f"bench/bench_api.py --readings {readings} --requests {requests}"
    mix = (f"20 concurrent httpx clients, {readings:,} readings, the four routes mixed ({requests} "
           f"each; {r['requests_per_s']:.0f} requests/s in all), uvicorn + create_app")
    rows: list[Row] = [{
        "what": f"{mix}: /healthz p99", "ours": "/healthz (its own connection: SELECT the newest "
        "checkpoint)", "ours_value": r["healthz_p99_ms"],
        "peer": "/bench/fixed: a constant, no I/O, same place in the route table, same run",
        "peer_value": r["fixed_p99_ms"], "unit": "ms", "ratio": r["healthz_over_fixed_p99"],
        "goal": "≤ 1.5", "command": command,
    }]
    for route, does in (("bundle", "a household's proof bundle (auth, visibility, reading, checkpoint, "
                                   "device leaves, 2 inclusion proofs)"),
                        ("day", "a household's day of its metering point (auth, visibility, 96 readings)")):
        rows.append({
            "what": f"{mix}: {route} p99", "ours": does, "ours_value": r[f"{route}_p99_ms"],
            "peer": "/bench/fixed p99, same run (for scale: the queue every route waits in)",
            "peer_value": r["fixed_p99_ms"], "unit": "ms",
            "ratio": float(r[f"{route}_p99_ms"]) / float(r["fixed_p99_ms"]), "goal": "–",
            "command": command,
        })
    return rows


SECTIONS: dict[str, Callable[[bool], list[Row]]] = {
    "leafdata": row_leafdata, "contract": row_contract, "bundle": row_bundle, "log": row_log, "ingest": row_ingest,
    "checkpoint": row_checkpoint, "agent": row_agent, "agent_io": row_agent_io,
    "reconnect": row_reconnect, "api": row_api,
}


def table(rows: list[Row], stages: bool = True) -> str:
    lines = ["| what (both sides) | ours | value | bound or peer, same run | value | ours / peer | goal "
             "| load 1 min (before → after) |", "|---|---|---:|---|---:|---:|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['section']} | not run: {r['error']} | | | | | | {r['load_before']} |")
            continue
        cpu = f" (CPU time: {r['cpu_ratio']:.2f})" if "cpu_ratio" in r else ""
        lines.append(
            f"| {r['what']} | {r['ours']} | {r['ours_value']:,.1f} {r['unit']} | {r['peer']} "
            f"| {r['peer_value']:,.1f} {r['unit']} | {r['ratio']:.2f}{cpu} | {r['goal']} "
            f"| {r['load_before']} → {r['load_after']} |")
    for r in rows if stages else ():
        if "stages" in r:
            lines += ["", f"CPU-µs per message by stage ({r['section']}; the check processes' CPU under check):", "",
                      "| stage | CPU-µs / message |", "|---|---:|"]
            lines += [f"| {stage} | {value:,.1f} |" for stage, value in r["stages"].items()]  # type: ignore[attr-defined]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small samples: a few minutes in all")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    rows: list[Row] = []
    started = time.time()
    for name in [s for s in args.only.split(",") if s]:
        before, t0 = load(), time.perf_counter()
        try:
            found = SECTIONS[name](args.quick)
        except Exception as exc:  # one failing bench must not lose the others' rows
            traceback.print_exc()
            found = [{"error": f"{type(exc).__name__}: {exc}"[:200]}]
        for r in found:
            r.update(section=name, load_before=before, load_after=load(),
                     seconds=round(time.perf_counter() - t0, 1))
        rows += found
        print(table(found, stages=False).splitlines()[-1], flush=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"started": stamp, "quick": args.quick, "cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg_start": load(), "rows": rows}
    (args.out / f"run_all-{stamp}.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    text = (f"`bench/run_all.py{' --quick' if args.quick else ''}`, {stamp}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}\n\n" + table(rows))
    (args.out / f"run_all-{stamp}.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
