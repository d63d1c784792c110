#!/usr/bin/env python3
"""What unique jobs and priorities cost (issue 15): enqueue and drain rates, upq alone.

    .venv/bin/python bench/features.py [--n 5000] [--db sqlite|mysql]

Three runs on a fresh database each, job type `gate` (tests/jobs/gate.py: parks in run()
until a file exists) with concurrent = 4:
  plain       N submissions `gate i:<n>`
  unique      the same with `unique = i` (every job distinct, so all are stored: the cost
              is the guarded insert, not duplicates being refused)
  priorities  the same with @priority cycling through 5 values (-20, -10, 0, 10, 20)
enqueue: one connection, pipelined windows of 1000 lines, timed from the first line to
the last ACK, the 4 workers parked on the gate. drain: the gate file is made and the time
until N jobs are done is measured (polling the database every 20 ms).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sqlalchemy import create_engine, func, select, text  # noqa: E402

from conftest import MYSQL_URL, Daemon, wait_for  # noqa: E402
from upqschema import jobs  # noqa: E402

PRIORITIES = (-20, -10, 0, 10, 20)


def fresh_mysql() -> tuple[str, str]:
    name = f"upq_bench_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    with create_engine(MYSQL_URL).begin() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    return MYSQL_URL.rsplit("/", 1)[0] + "/" + name, name


def one_run(variant: str, n: int, db: str) -> tuple[float, float]:
    """(enqueue jobs/s, drain jobs/s) of one variant on a fresh database."""
    work = Path(tempfile.mkdtemp(prefix="upqb-", dir="/tmp"))
    dbname = None
    if db == "mysql":
        url, dbname = fresh_mysql()
    else:
        url = "sqlite:///./upq.db"
    opts = {"concurrent": "4"}
    if variant == "unique":
        opts["unique"] = "i"
    d = Daemon(work, url, {"gate": opts}, server={"shutdown_grace": "1"})
    try:
        d.start()
        lines = [f"gate i:{i}" + (f" @priority:{PRIORITIES[i % 5]}" if variant == "priorities" else "")
                 for i in range(n)]
        with d.connect(timeout=120) as conn:
            t0 = time.perf_counter()
            for start in range(0, n, 1000):
                window = lines[start:start + 1000]
                conn.send("".join(line + "\n" for line in window))
                for _ in window:
                    answer = conn.line()
                    assert answer.startswith("ACK"), answer
            enqueue = n / (time.perf_counter() - t0)
        engine = create_engine(url.replace("sqlite:///./", f"sqlite:///{work}/"))
        wait_for(lambda: d.records.exists() and d.records.read_text().count("start ") >= 4, 60, "4 parked")

        def done() -> int:
            with engine.connect() as c:
                return c.execute(select(func.count()).select_from(jobs).where(jobs.c.state == "done")).scalar_one()
        (work / "gate.open").touch()
        t0 = time.perf_counter()
        while done() < n:
            time.sleep(0.02)
            if time.perf_counter() - t0 > 600:
                raise SystemExit("drain did not finish in 600 s")
        drain = n / (time.perf_counter() - t0)
        engine.dispose()
        return enqueue, drain
    finally:
        d.kill_if_running()
        shutil.rmtree(work, ignore_errors=True)
        if dbname:
            with create_engine(MYSQL_URL).begin() as conn:
                conn.execute(text(f"DROP DATABASE {dbname}"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--db", choices=("sqlite", "mysql"), default="sqlite")
    args = ap.parse_args()
    results = {v: one_run(v, args.n, args.db) for v in ("plain", "unique", "priorities")}
    base_enq, base_drain = results["plain"]
    print(f"upq on {args.db}, N = {args.n}, gate job, concurrent = 4")
    print(f"{'variant':<12} {'enqueue/s':>10} {'vs plain':>9} {'drain/s':>9} {'vs plain':>9}")
    for v, (enq, drain) in results.items():
        print(f"{v:<12} {enq:>10.0f} {enq / base_enq - 1:>+9.1%} {drain:>9.0f} {drain / base_drain - 1:>+9.1%}")
    print("targets (issue 15): unique enqueue costs <= 15%; 5 priorities cost drain <= 10%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
