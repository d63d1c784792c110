#!/usr/bin/env python3
"""Retention benchmark: submit latency while the background purge deletes N expired jobs.

    .venv/bin/python bench/purge.py                      # SQLite, N = 1,000,000
    .venv/bin/python bench/purge.py --rows 200000 --db mysql

On a fresh temp dir (and for MariaDB a fresh database, dropped at the end):
  1. baseline: the daemon on an empty database, --clients clients submitting `hello`
     (one line at a time, waiting for each ACK) for --seconds: submit p50/p99/max;
  2. stops it, stores N `noop` jobs in state done that ended two hours ago straight into
     the table (server-side INSERT ... SELECT doublings), starts it again with
     keep_done = 10s for noop, and measures the same submissions until retention has
     deleted every one of them: submit p50/p99/max and how long the purge took.
Target (issue 16): submit p99 < 50 ms during the purge. Prints a table and appends JSON to
bench/results-purge.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backlog import (DEFAULT_MYSQL_URL, Conn, Daemon, MySQLScratch, ms, mysql_reachable,  # noqa: E402
                     pct, write_files)

TARGET_P99_MS = 50.0


def fill_done(url: str, n: int, jobname: str = "noop") -> float:
    """n done jobs that ended two hours ago; returns seconds taken."""
    from sqlalchemy import create_engine, insert, select

    from upqschema import jobs
    t0 = time.perf_counter()
    ended = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(hours=2)
    row = dict(jobname=jobname, state="done", params="{}", msg="", attempts=1, retries_used=0,
               created=ended, started=ended, finished=ended, cancel_requested=0)
    base, doublings = n, 0
    while base % 2 == 0 and base > 5000:
        base, doublings = base // 2, doublings + 1
    eng = create_engine(url)
    with eng.begin() as conn:
        for i in range(0, base, 5000):
            conn.execute(insert(jobs), [row] * min(5000, base - i))
    for _ in range(doublings):
        with eng.begin() as conn:
            conn.execute(insert(jobs).from_select(list(row), select(*[jobs.c[k] for k in row])
                                                  .where(jobs.c.jobname == jobname)))
    eng.dispose()
    return time.perf_counter() - t0


def left(url: str, jobname: str = "noop") -> int:
    from sqlalchemy import create_engine, func, select

    from upqschema import jobs
    eng = create_engine(url)
    with eng.connect() as conn:
        n = conn.execute(select(func.count()).select_from(jobs).where(jobs.c.jobname == jobname)).scalar_one()
    eng.dispose()
    return int(n)


def submit_load(sock: str, clients: int, until: Any) -> dict[str, Any]:
    """`clients` threads submitting hello until until() is true; latencies in ms."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        c = Conn(sock)
        try:
            while not stop.is_set():
                took, answer = c.timed("hello name:bench")
                with lock:
                    (lat.append(took) if answer.startswith("ACK ") else errors.append(answer))
        finally:
            c.close()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while not until():
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    lat.sort()
    return {"seconds": round(time.perf_counter() - t0, 1), "submits": len(lat), "errors": len(errors),
            "p50_ms": ms(pct(lat, 50)), "p99_ms": ms(pct(lat, 99)), "max_ms": ms(lat[-1]) if lat else None}


def run(db: str, url: str, rows: int, clients: int, seconds: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="upq-bench-purge-", dir="/tmp"))
    d = None
    try:
        db_url = url if db == "mysql" else f"sqlite:///{work / 'upq.db'}"
        cfg = write_files(work, db_url)
        text = cfg.read_text().replace("[job noop]\nenabled = true\n", "[job noop]\nenabled = true\nkeep_done = 10s\n")
        cfg.write_text(text.replace("[job hello]\nenabled = true\n", "[job hello]\nenabled = true\nkeep_done = 0\n"))
        d = Daemon(work, cfg, str(work / "upq.sock"))
        d.start()
        t_end = time.monotonic() + seconds
        base = submit_load(d.socket, clients, lambda: time.monotonic() > t_end)
        d.stop()
        fill_s = fill_done(db_url, rows)
        d.start()
        t0 = time.monotonic()
        during = submit_load(d.socket, clients, lambda: left(db_url) == 0 or time.monotonic() - t0 > 1800)
        during["purge_s"] = round(time.monotonic() - t0, 1)
        during["left"] = left(db_url)
        return {"db": db, "rows": rows, "clients": clients, "fill_s": round(fill_s, 1),
                "baseline": base, "during_purge": during, "host": platform.node(),
                "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    finally:
        if d is not None:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", choices=("sqlite", "mysql"), default="sqlite")
    p.add_argument("--mysql-url", default=DEFAULT_MYSQL_URL)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5.0, help="of the baseline")
    args = p.parse_args(argv)
    scratch = None
    url = ""
    if args.db == "mysql":
        problem = mysql_reachable(args.mysql_url)
        if problem:
            print(f"MariaDB/MySQL unreachable: {problem}", file=sys.stderr)
            return 2
        scratch = MySQLScratch(args.mysql_url)
        url = scratch.url
    try:
        res = run(args.db, url, args.rows, args.clients, args.seconds)
    finally:
        if scratch is not None:
            scratch.drop()
    b, dp = res["baseline"], res["during_purge"]
    print(f"{res['db']}: {res['rows']} expired rows (stored in {res['fill_s']} s), {res['clients']} clients")
    print(f"  baseline      submits {b['submits']:>7}  p50 {b['p50_ms']} ms  p99 {b['p99_ms']} ms  "
          f"max {b['max_ms']} ms")
    print(f"  during purge  submits {dp['submits']:>7}  p50 {dp['p50_ms']} ms  p99 {dp['p99_ms']} ms  "
          f"max {dp['max_ms']} ms  errors {dp['errors']}  purge {dp['purge_s']} s  left {dp['left']}")
    ok = dp["p99_ms"] is not None and dp["p99_ms"] < TARGET_P99_MS and dp["errors"] == 0 and dp["left"] == 0
    print(f"  target submit p99 < {TARGET_P99_MS:g} ms during the purge: {'OK' if ok else 'MISS'}")
    out = Path(__file__).resolve().parent / "results-purge.json"
    old = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(old + [res], indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
