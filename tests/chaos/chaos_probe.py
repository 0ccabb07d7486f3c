"""The chaos oracle's eyes on the databases, with plain SQL, from where the processes see them.

Usage: python chaos_probe.py BACKEND_DB OUTBOX...
For each line read on stdin, prints one JSON line: per outbox the highest sequence its device
allocated (``signed``), and the backend's contiguous coverage from 1 (``upto``: stored, rejected
for good or declared). It runs in the agents' and backend's mount namespace when the disks are
tmpfs mounts there: SQLite resolves symbolic links, so the test cannot reach those files through
/proc/<pid>/root.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys


def signed(outbox: str) -> tuple[str, int]:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)) as db:
            device = db.execute("SELECT device FROM state").fetchone()
            # agent/outbox.py NEXT_SEQ_SQL: a cycle does not rewrite state.next_seq (issue 20)
            nxt = db.execute("SELECT MAX(next_seq, IFNULL((SELECT MAX(seq) FROM readings), 0) + 1,"
                             " IFNULL((SELECT MAX(seq) FROM quarantine), 0) + 1) FROM state")
            return device[0], int(nxt.fetchone()[0]) - 1
    except (sqlite3.OperationalError, TypeError):  # not made yet
        return "", 0


def upto(db: sqlite3.Connection, device: str) -> int:
    done = {r[0] for r in db.execute("SELECT seq FROM readings WHERE device = ?", (device,))}
    done |= {r[0] for r in db.execute(
        "SELECT seq FROM rejections WHERE device = ? AND permanent = 1", (device,))}
    for first, last in db.execute("SELECT first, last FROM declared_gaps WHERE device = ?", (device,)):
        done |= set(range(first, last + 1))
    covered = 0
    while covered + 1 in done:
        covered += 1
    return covered


def main(backend: str, outboxes: list[str]) -> None:
    for _ in sys.stdin:
        answer = {}
        with contextlib.closing(sqlite3.connect(f"file:{backend}?mode=ro", uri=True, timeout=30)) as db:
            for path in outboxes:
                device, n = signed(path)
                answer[path] = {"signed": n, "upto": upto(db, device) if device else 0}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
