#!/usr/bin/env python3
"""Several daemons, one MariaDB: how fast do 1, 2, 3 daemons drain the same backlog?

    .venv/bin/python bench/multinode.py [--jobs 3000] [--concurrent 4] [--work-ms 0 10]
                                        [--daemons 1 2 3] [--repeat 2] [--mysql-url URL]

For each job length (`--work-ms`, 0 = no-op) and each daemon count: a fresh database
`upq_bench_<random>`; N daemons (own temp dir and socket, `concurrent` workers for
the `work` type, poll_interval 0.2) started on it and idle; then `--jobs` rows
inserted as `new` in one transaction straight through SQLAlchemy; the clock runs
from that commit until every row is `done` (polled in the database every 20 ms).
Prints jobs/s and how the jobs split across nodes; writes bench/results-multinode.json.
Every wait is bounded; daemons are stopped and databases dropped.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backlog import DEFAULT_MYSQL_URL, Daemon  # noqa: E402

DRAIN_TIMEOUT = 300.0

WORK_JOB = '''"""work: sleeps `ms` milliseconds (0 = returns at once)."""
import time

from upqjob import UpqJob


class Work(UpqJob):
    def run(self):
        ms = float(self.jobdata.get("ms", "0"))
        if ms:
            time.sleep(ms / 1000)
        return True
'''


def start_daemons(root: Path, url: str, n: int, concurrent: int) -> list[Daemon]:
    daemons = []
    for i in range(n):
        d = root / f"d{i}"
        (d / "jobs").mkdir(parents=True)
        (d / "jobs" / "work.py").write_text(WORK_JOB)
        cfg = d / "upq.cfg"
        cfg.write_text(
            "[logging]\nloglevel = info\nlogfile = ./upq.log\n\n"
            "[paths]\nsocket = ./upq.sock\njobs_dir = ./jobs\n\n"
            f"[db]\nurl = {url}\n\n"
            "[server]\nallow_root = true\nshutdown_grace = 5\npoll_interval = 0.2\n\n"
            f"[job work]\nenabled = true\nconcurrent = {concurrent}\n")
        daemon = Daemon(d, cfg, str(d / "upq.sock"))
        daemons.append(daemon)
        daemon.start()
    return daemons


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pid(conn: Any) -> int | None:
    """The pid of the server `conn` talks to, if it runs on this host (its pid file)."""
    from sqlalchemy import text
    try:
        path = conn.execute(text("SELECT @@pid_file")).scalar()
        pid = int(Path(path).read_text().split()[0])
        return pid if Path(f"/proc/{pid}").exists() else None
    except (OSError, ValueError, IndexError):
        return None


def one_run(base_url: str, n_daemons: int, jobs: int, concurrent: int, work_ms: float) -> dict[str, Any]:
    from sqlalchemy import create_engine, insert, text
    from sqlalchemy.engine import make_url

    import upqdb

    name = f"upq_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    root = Path(tempfile.mkdtemp(prefix="upqmn-", dir="/tmp"))
    daemons: list[Daemon] = []
    engine = create_engine(url)
    try:
        db = upqdb.Database(url, logging.getLogger("bench"))
        db.create_schema()
        db.close()
        daemons = start_daemons(root, url, n_daemons, concurrent)
        created = upqdb.utcnow()
        rows = [{"jobname": "work", "state": "new", "params": json.dumps({"ms": str(work_ms)}), "msg": "",
                 "result": None, "attempts": 0, "retries_used": 0, "created": created, "started": None,
                 "finished": None, "run_after": None, "node": None, "parent": None} for _ in range(jobs)]
        with engine.begin() as conn:
            conn.execute(insert(upqdb.jobs), rows)
        t0 = time.perf_counter()
        with engine.connect() as conn:
            spid = server_pid(conn)
        cpu0 = [cpu_seconds(d.pid) for d in daemons], cpu_seconds(spid) if spid else None
        deadline = t0 + DRAIN_TIMEOUT
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="READ COMMITTED")
            while True:
                done = conn.execute(text("SELECT COUNT(*) FROM upq_jobs WHERE state = 'done'")).scalar()
                conn.commit()
                if done >= jobs:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"only {done}/{jobs} done after {DRAIN_TIMEOUT}s")
                time.sleep(0.02)
            elapsed = time.perf_counter() - t0
            cpu_daemons = sum(cpu_seconds(d.pid) for d in daemons) - sum(cpu0[0])
            cpu_server = cpu_seconds(spid) - cpu0[1] if spid else None
            split = dict(conn.execute(text("SELECT node, COUNT(*) FROM upq_jobs GROUP BY node")).all())
            attempts = conn.execute(text("SELECT MAX(attempts) FROM upq_jobs")).scalar()
        return {"daemons": n_daemons, "jobs": jobs, "concurrent": concurrent, "work_ms": work_ms,
                "seconds": round(elapsed, 3), "jobs_per_s": round(jobs / elapsed, 1),
                "split": sorted(split.values(), reverse=True), "max_attempts": attempts,
                "cpu_s_daemons": round(cpu_daemons, 2),
                "cpu_s_server": None if cpu_server is None else round(cpu_server, 2),
                "loadavg_1m": os.getloadavg()[0]}
    finally:
        for d in daemons:
            d.stop()
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--concurrent", type=int, default=4)
    ap.add_argument("--work-ms", type=float, nargs="+", default=[0.0, 10.0])
    ap.add_argument("--daemons", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--mysql-url", default=DEFAULT_MYSQL_URL)
    args = ap.parse_args(argv)

    results = []
    for work_ms in args.work_ms:
        for n in args.daemons:
            runs = [one_run(args.mysql_url, n, args.jobs, args.concurrent, work_ms) for _ in range(args.repeat)]
            best = statistics.median(r["jobs_per_s"] for r in runs)
            print(f"work {work_ms:>5g} ms  daemons {n}  jobs/s {best:>8.1f}  "
                  f"runs {[r['jobs_per_s'] for r in runs]}  split {[r['split'] for r in runs]}  "
                  f"max attempts {max(r['max_attempts'] for r in runs)}  "
                  f"cpu daemons/server {[(r['cpu_s_daemons'], r['cpu_s_server']) for r in runs]}  "
                  f"load {[r['loadavg_1m'] for r in runs]}", flush=True)
            results.append({"work_ms": work_ms, "daemons": n, "median_jobs_per_s": best, "runs": runs})
    out = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
           "cpus": os.cpu_count(), "results": results}
    (ROOT / "bench" / "results-multinode.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
