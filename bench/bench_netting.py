"""Netting engine timings: pro-rata intervals, a month of bills, call auctions vs pymarket.

Run: .venv/bin/python bench/bench_netting.py [--sections prorata,month,auction] [--month-members N]
       [--pymarket-timeout S]
Prints markdown rows for docs/benchmarks.md. Baselines run in the same process (a plain-Python
Fraction implementation of the same pro-rata split) or as a subprocess on the same orders (pymarket
0.7.6 in bench/.venv-pymarket, created here on first use: it needs numpy 1 and pandas 2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
from meterchain.backend.settlement.netting import (
    BillBuilder,
    Community,
    Fees,
    IntervalInput,
    MemberRoster,
    PriceSchedule,
    clear_call_auction,
    settle_interval,
)
from meterchain.backend.settlement.netting.prorata import split_prorata
from meterchain.backend.settlement.netting.rounding import tie_key

HERE = Path(__file__).resolve().parent
PYMARKET_VENV = HERE / ".venv-pymarket"
COMMUNITY = Community("bench", PriceSchedule.fixed(300_001), PriceSchedule.fixed(80_003),
                      Fees(20_000, 60_000, 5_001, 2_500_000, 1_900), co2_grams_per_kwh=380)


def best_seconds(run, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def naive_prorata(start: int, ids: list[str], imports: list[int], exports: list[int]):
    """The baseline: the same largest-remainder split written plainly with Fractions and dicts."""
    local = min(sum(imports), sum(exports))

    def split(weights: list[int]) -> dict[str, int]:
        total = sum(weights)
        if total == 0:
            return {m: 0 for m in ids}
        exact = {m: Fraction(local * w, total) for m, w in zip(ids, weights, strict=True)}
        shares = {m: int(v) for m, v in exact.items()}
        spare = local - sum(shares.values())
        order = sorted(ids, key=lambda m: (-(exact[m] - shares[m]), tie_key(start, m)))
        for m in order[:spare]:
            shares[m] += 1
        return shares

    return split(imports), split(exports)


def profile(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    imports = rng.integers(0, 400, n) * (rng.random(n) < 0.85)
    exports = rng.integers(0, 900, n) * (rng.random(n) < 0.3)
    return imports, exports


def bench_prorata(rows: list[str]) -> None:
    rng = np.random.default_rng(7)
    for n in (10_000, 100_000):
        roster = MemberRoster.of(f"member-{k:06d}" for k in range(n))
        imports, exports = profile(rng, n)
        inp = IntervalInput.from_columns(900, roster, imports, exports)
        split = best_seconds(partial(split_prorata, 900, roster.ids, inp.import_wh, inp.export_wh), 5)
        full = best_seconds(partial(settle_interval, COMMUNITY, inp), 5)
        ids, imp, exp = list(roster.ids), imports.tolist(), exports.tolist()
        naive = best_seconds(partial(naive_prorata, 900, ids, imp, exp), 1)
        ours = split_prorata(900, roster.ids, inp.import_wh, inp.export_wh)
        base = naive_prorata(900, ids, imp, exp)
        assert ours[0].tolist() == [base[0][m] for m in ids]  # same split, exactly
        rows.append(f"| pro-rata split, {n:,} members | {split * 1e3:.1f} ms | "
                    f"plain-Python Fractions {naive * 1e3:.0f} ms | {naive / split:.0f}× |")
        rows.append(f"| settle_interval (split, prices, money, digest), {n:,} members | "
                    f"{full * 1e3:.1f} ms | goal {'50 ms' if n == 10_000 else '500 ms'} | — |")


def bench_month(rows: list[str], members: int) -> None:
    rng = np.random.default_rng(11)
    roster = MemberRoster.of(f"member-{k:06d}" for k in range(members))
    start = 1_709_247_600  # 2024-03-01 00:00 Europe/Berlin
    count = 31 * 96 - 4  # March has the spring-forward day
    books = [profile(rng, members) for _ in range(16)]  # pre-made: time the engine, not numpy RNG
    began = time.perf_counter()
    builder = BillBuilder(COMMUNITY, start, start + count * 900)
    for k in range(count):
        imports, exports = books[k % 16]
        inp = IntervalInput.from_columns(start + 900 * k, roster, imports, exports)
        builder.add(settle_interval(COMMUNITY, inp))
    bills = builder.bills()
    seconds = time.perf_counter() - began
    assert len(bills) == members
    rows.append(f"| a month ({count} intervals) × {members:,} members, settled and billed | "
                f"{seconds:.1f} s | goal 60 s | — |")


def ensure_pymarket() -> Path | None:
    python = PYMARKET_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PYMARKET_VENV)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "pymarket==0.7.6",
                               "numpy<2", "pandas>=2,<3"], check=False)
        if done.returncode:
            return None
    return python


def pymarket_run(python: Path, book: Path, mechanism: str, timeout: float) -> dict | None:
    try:
        done = subprocess.run([str(python), "-W", "ignore", str(HERE / "netting_pymarket_runner.py"),
                               str(book), mechanism], capture_output=True, text=True,
                              timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_auction(rows: list[str], timeout: float) -> None:
    rng = np.random.default_rng(3)
    python = ensure_pymarket()
    for orders in (10_000, 100_000):
        half = orders // 2
        book = {
            "bid_wh": rng.integers(1, 2_000, half), "bid_price": rng.integers(50_000, 350_000, half),
            "ask_wh": rng.integers(1, 2_000, half), "ask_price": rng.integers(50_000, 350_000, half),
        }
        bidders, askers = np.arange(half), np.arange(half, orders)
        clear = partial(clear_call_auction, bidders, book["bid_price"], book["bid_wh"],
                        askers, book["ask_price"], book["ask_wh"])
        ours = best_seconds(clear, 5)
        result = clear()
        assert len(result.pairs) <= orders - 1
        rows.append(f"| call auction, {orders:,} orders (ours) | {ours * 1e3:.1f} ms | "
                    f"traded {result.volume_wh:,} Wh at {result.price} µ€/kWh | — |")
        if python is None:
            rows.append(f"| pymarket, {orders:,} orders | not run: venv could not be created | | |")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "book.npz"
            np.savez(path, **book)
            for mechanism in ("huang", "muda"):
                theirs = pymarket_run(python, path, mechanism, timeout)
                if theirs is None:
                    rows.append(f"| pymarket {mechanism}, {orders:,} orders | > {timeout:.0f} s "
                                f"(timed out) | ours {ours * 1e3:.1f} ms | > {timeout / ours:,.0f}× |")
                    continue
                rows.append(f"| pymarket {mechanism}, {orders:,} orders | {theirs['seconds']:.2f} s"
                            f" | traded {theirs['traded_wh']:,.0f} Wh | "
                            f"ours {theirs['seconds'] / ours:,.0f}× faster |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="prorata,month,auction")
    parser.add_argument("--month-members", type=int, default=10_000)
    parser.add_argument("--pymarket-timeout", type=float, default=600.0)
    args = parser.parse_args()
    rows = ["| what | ours | baseline (same run) | ratio |", "|---|---|---|---|"]
    sections = args.sections.split(",")
    if "prorata" in sections:
        bench_prorata(rows)
    if "month" in sections:
        bench_month(rows, args.month_members)
    if "auction" in sections:
        bench_auction(rows, args.pymarket_timeout)
    print(f"<!-- {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"numpy {np.__version__} -->")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
