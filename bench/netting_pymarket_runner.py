"""Runs pymarket 0.7.6 on an order book written by netting_bench.py; prints one JSON line.

Executed with bench/.venv-pymarket/bin/python (pymarket needs numpy 1 and pandas 2), never imported
by meterchain. Usage: python netting_pymarket_runner.py ORDERS.npz MECHANISM
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pymarket as pm


def main() -> None:
    path, mechanism = sys.argv[1], sys.argv[2]
    book = np.load(path)
    market = pm.Market()
    # pymarket takes floats: kWh and €/kWh, one user per order
    for user, (wh, price) in enumerate(zip(book["bid_wh"], book["bid_price"], strict=True)):
        market.accept_bid(float(wh) / 1000, float(price) / 1e6, user, True, 0, True)
    offset = len(book["bid_wh"])
    for k, (wh, price) in enumerate(zip(book["ask_wh"], book["ask_price"], strict=True)):
        market.accept_bid(float(wh) / 1000, float(price) / 1e6, offset + k, False, 0, True)
    args = (np.random.RandomState(1234),) if mechanism == "muda" else ()
    start = time.perf_counter()
    transactions, _extra = market.run(mechanism, *args)
    seconds = time.perf_counter() - start
    frame = transactions.get_df()
    traded_kwh = float(frame["quantity"].sum()) / 2 if len(frame) else 0.0  # both sides listed
    print(json.dumps({"seconds": seconds, "traded_wh": traded_kwh * 1000,
                      "transactions": len(frame)}))


if __name__ == "__main__":
    main()
