#!/usr/bin/env python3
"""Backlog benchmark: upq idle and with N (default 1,000,000) queued jobs.

    make bench                                   # SQLite, N = 1,000,000
    .venv/bin/python bench/backlog.py --jobs 200000
    .venv/bin/python bench/backlog.py --db mysql [--mysql-url mysql+pymysql://root@127.0.0.1/test]

What it does, on a fresh temp dir under /tmp (and, for MariaDB, a fresh database
`upq_bench_<random>` that is dropped at the end):
  1. writes a config with two job types: `noop` (concurrent = 0: submissions run inline;
     its one worker for re-runs and retries drains the queued rows meanwhile, fast, as
     leases let it) and `hello` (concurrent = 2, idle workers polling an empty queue);
  2. starts the daemon on an empty database: start-up time (process start -> first
     `ping` answered), RSS (VmRSS from /proc), and the same queries as below;
  3. stops it and fills the table with N rows in state `new` directly through
     SQLAlchemy Core (executemany, batches of --batch rows per commit); with
     --scheduled they are due in a day, so the daemon holds them without running any;
  4. starts the daemon on that database and measures start-up time, RSS after start
     and after 100 `status` + 1 `stats` + 1 `list`, `status <id>` latency (p50/p99
     over random ids on one persistent connection), `stats` and `list` latency
     (median of 5), `stats`, `/metrics` and the dashboard overview p50 over 50 samples
     (issue 14; [http] on a free port, Bearer token), and `noop` submissions (inline run,
     ACK after commit);
     with --concurrent K the backlog type gets K workers that drain it meanwhile
     (start-up and RSS then include claiming from the backlog);
  5. prints a table, the targets of issue 8 with OK/MISS, and writes JSON to
     bench/results-backlog.json (one entry per database, earlier entries kept).

Standard library plus SQLAlchemy/PyMySQL from the project's venv. Every wait is
bounded; the daemon is always stopped and the temp dir / database removed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

UPQ = ROOT / "upq.py"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1/test"
START_TIMEOUT = 180.0       # seconds to wait for the first ping
QUERY_TIMEOUT = 120.0       # seconds for any one answer
STOP_TIMEOUT = 20.0         # seconds SIGTERM gets before SIGKILL

# issue 8: backlog of 1,000,000 queued -> start-up < 3 s, RSS < 120 MB, status < 10 ms
TARGET_START_S = 3.0
TARGET_RSS_MB = 120.0
TARGET_STATUS_MS = 10.0
# issue 14: with 1,000,000 jobs, /metrics, the dashboard overview and `stats` < 10 ms p50
TARGET_COUNTS_MS = 10.0
HTTP_TOKEN = "bench-token"
HTTP_SAMPLES = 50

NOOP_JOB = '''"""noop: does nothing; the backlog benchmark's job type."""
from upqjob import UpqJob


class Noop(UpqJob):
    def run(self):
        return True
'''

HELLO_JOB = '''"""hello: a second, idle job type (its workers poll an empty queue)."""
from upqjob import UpqJob


class Hello(UpqJob):
    def run(self):
        self.msg = "Hello " + self.jobdata.get("name", "")
        return True
'''


# -- talking to the daemon ---------------------------------------------------
class Conn:
    """One persistent client connection; every read is bounded."""

    def __init__(self, path: str, timeout: float = QUERY_TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def ask(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"connection closed after {line!r}")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\n", 1)
        return raw.decode("utf-8", "replace")

    def timed(self, line: str) -> tuple[float, str]:
        t0 = time.perf_counter()
        answer = self.ask(line)
        return time.perf_counter() - t0, answer

    def close(self) -> None:
        self.sock.close()


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


class Daemon:
    """A upq process on the bench's temp dir; stop() is safe to call any time."""

    def __init__(self, workdir: Path, cfg: Path, socket_path: str):
        self.dir = workdir
        self.cfg = cfg
        self.socket = socket_path
        self.proc: subprocess.Popen | None = None
        self.stderr_path = workdir / "stderr.log"

    def start(self) -> float:
        """Start and return seconds from process start to the first `ping` answered."""
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        out = open(self.stderr_path, "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(UPQ), "-c", str(self.cfg)],
                                     stdout=out, stderr=out, cwd=str(self.dir))
        out.close()
        deadline = t0 + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"upq exited with {self.proc.returncode}:\n{self.tail()}")
            if os.path.exists(self.socket):
                try:
                    c = Conn(self.socket, timeout=5)
                    try:
                        if c.ask("ping") == "ACK pong":
                            return time.perf_counter() - t0
                    finally:
                        c.close()
                except OSError:
                    pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"upq did not answer ping within {START_TIMEOUT}s:\n{self.tail()}")
            time.sleep(0.005)

    def tail(self, n: int = 3000) -> str:
        text = ""
        for p in (self.stderr_path, self.dir / "upq.log"):
            if p.exists():
                text += f"--- {p.name}\n" + p.read_text(errors="replace")[-n:]
        return text

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# -- set-up ------------------------------------------------------------------
def write_files(workdir: Path, db_url: str, concurrent: int = 0, http_port: int = 0) -> Path:
    jobs_dir = workdir / "jobs"
    jobs_dir.mkdir()
    (jobs_dir / "noop.py").write_text(NOOP_JOB)
    (jobs_dir / "hello.py").write_text(HELLO_JOB)
    cfg = workdir / "upq.cfg"
    cfg.write_text(
        "[logging]\nloglevel = info\nlogfile = ./upq.log\n\n"
        "[paths]\nsocket = ./upq.sock\njobs_dir = ./jobs\n\n"
        f"[db]\nurl = {db_url}\n\n"
        "[server]\nallow_root = true\nshutdown_grace = 5\n\n"
        + (f"[http]\nlisten = 127.0.0.1:{http_port}\ntoken = {HTTP_TOKEN}\n\n" if http_port else "")
        + "; concurrent = 0 (the default): runs inline at submission; one worker runs queued rows\n"
        f"[job noop]\nenabled = true\nconcurrent = {concurrent}\n\n"
        "[job hello]\nenabled = true\nconcurrent = 2\n")
    return cfg


def fill(db_url: str, n: int, batch: int, jobname: str = "noop", scheduled: bool = False) -> dict[str, Any]:
    """Insert n queued rows straight into upq_jobs; returns timings."""
    import logging

    from sqlalchemy import create_engine, event, insert, text

    import upqdb

    # create the schema exactly as the daemon does (also records the schema version)
    db = upqdb.Database(db_url, logging.getLogger("bench"))
    db.create_schema()
    db.close()

    is_sqlite = db_url.startswith("sqlite")
    engine = create_engine(db_url)
    if is_sqlite:
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")   # the fill is set-up, not the measurement
            cur.close()

    created = upqdb.utcnow()
    run_after = created + dt.timedelta(days=1) if scheduled else None
    stmt = insert(upqdb.jobs)
    t0 = time.perf_counter()
    done = 0
    with engine.connect() as conn:
        while done < n:
            k = min(batch, n - done)
            rows = [{"jobname": jobname, "state": "new", "params": f'{{"i": "{done + i}"}}',
                     "msg": "", "result": None, "attempts": 0, "retries_used": 0,
                     "created": created, "started": None, "finished": None, "run_after": run_after,
                     "node": None, "parent": None} for i in range(k)]
            # executemany: sqlite3 runs it natively; PyMySQL rewrites it into multi-row INSERTs
            conn.execute(stmt, rows)
            conn.commit()
            done += k
            el = time.perf_counter() - t0
            print(f"\r  filled {done:>10,} / {n:,} rows  {el:6.1f} s  ({done / el:,.0f} rows/s)",
                  end="", flush=True)
        print()
        fill_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        if is_sqlite:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            conn.exec_driver_sql("ANALYZE TABLE upq_jobs").fetchall()
        post_s = time.perf_counter() - t1
        total = conn.execute(text("SELECT COUNT(*) FROM upq_jobs")).scalar()
    engine.dispose()
    return {"rows": n, "rows_in_table": int(total), "batch": batch, "seconds": round(fill_s, 2),
            "rows_per_s": round(n / fill_s), "post_seconds": round(post_s, 2),
            "post_step": "wal_checkpoint(TRUNCATE)" if is_sqlite else "ANALYZE TABLE"}


# -- measuring ---------------------------------------------------------------
def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s))) - 1))]


def check_ack(answer: str, what: str) -> None:
    if not answer.startswith("ACK"):
        raise RuntimeError(f"{what}: {answer[:300]}")


def http_p50(port: int, path: str, samples: int) -> float:
    """p50 seconds of GET path (Bearer token) on one keep-alive connection."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=QUERY_TIMEOUT)
    lat = []
    try:
        for _ in range(samples + 1):
            t0 = time.perf_counter()
            conn.request("GET", path, headers={"Authorization": f"Bearer {HTTP_TOKEN}"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"backlog: GET {path} answered {resp.status}")
            lat.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return pct(lat[1:], 50)


def measure(d: Daemon, ids: list[int], status_samples: int, repeats: int,
            http_port: int = 0) -> dict[str, Any]:
    """Start-up time, RSS and query latencies of a running daemon (ids: existing job ids)."""
    r: dict[str, Any] = {}
    r["startup_s"] = round(d.start(), 3)
    r["rss_start_kb"] = rss_kb(d.pid)["VmRSS"]
    c = Conn(d.socket)
    try:
        rng = random.Random(1)
        # warm-up: 100 status + 1 stats + 1 list, then RSS again
        for _ in range(100):
            if ids:
                check_ack(c.ask(f"status {rng.choice(ids)}"), "status")
        t, a = c.timed("stats")
        check_ack(a, "stats")
        r["stats_first_ms"] = ms(t)
        t, a = c.timed("list")
        check_ack(a, "list")
        r["list_first_ms"] = ms(t)
        r["rss_after_queries_kb"] = rss_kb(d.pid)["VmRSS"]

        if ids:
            lat = []
            for _ in range(status_samples):
                t, a = c.timed(f"status {rng.choice(ids)}")
                check_ack(a, "status")
                lat.append(t)
            r["status_samples"] = len(lat)
            r["status_p50_ms"] = ms(pct(lat, 50))
            r["status_p99_ms"] = ms(pct(lat, 99))
            r["status_max_ms"] = ms(max(lat))
        t, a = c.timed("status 999999999999")      # a missing id: ERR, still a lookup
        r["status_missing_ms"] = ms(t)

        for cmd, key in (("stats", "stats"), ("list", "list"), ("list new", "list_new"),
                         ("list done", "list_done")):
            lat = []
            for _ in range(repeats):
                t, a = c.timed(cmd)
                check_ack(a, cmd)
                lat.append(t)
            r[f"{key}_median_ms"] = ms(statistics.median(lat))
        stats = json.loads(c.ask("stats")[4:])
        r["stats_answer"] = stats.get("jobs", stats)
        lat = [c.timed("stats")[0] for _ in range(HTTP_SAMPLES)]
        r["stats_p50_ms"] = ms(pct(lat, 50))
        if http_port:
            r["metrics_p50_ms"] = ms(http_p50(http_port, "/metrics", HTTP_SAMPLES))
            r["overview_p50_ms"] = ms(http_p50(http_port, "/", HTTP_SAMPLES))

        lat = []
        for i in range(repeats):
            t, a = c.timed(f"noop n:{i}")
            check_ack(a, "noop submission")
            lat.append(t)
        r["submit_noop_first_ms"] = ms(lat[0])
        r["submit_noop_median_ms"] = ms(statistics.median(lat))
        r["rss_end_kb"] = rss_kb(d.pid)["VmRSS"]
        r["rss_peak_kb"] = rss_kb(d.pid)["VmHWM"]
    finally:
        c.close()
    return r


# -- databases ---------------------------------------------------------------
class MySQLScratch:
    """A fresh database on the server of `url`, dropped by drop()."""

    def __init__(self, url: str):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        self.base = make_url(url)
        self.name = "upq_bench_" + uuid.uuid4().hex[:8]
        self.engine = create_engine(self.base, isolation_level="AUTOCOMMIT")
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")
        self.url = self.base.set(database=self.name).render_as_string(hide_password=False)
        self.server = self._server_info()

    def _server_info(self) -> str:
        with self.engine.connect() as conn:
            return str(conn.exec_driver_sql("SELECT VERSION()").scalar())

    def empty(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{self.name}`")
            conn.exec_driver_sql(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")

    def drop(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{self.name}`")
        finally:
            self.engine.dispose()


def mysql_reachable(url: str) -> str | None:
    """None if reachable, else the reason."""
    try:
        from sqlalchemy import create_engine
        e = create_engine(url, connect_args={"connect_timeout": 3})
        with e.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        e.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return str(getattr(exc, "orig", exc)).splitlines()[0]


# -- output ------------------------------------------------------------------
def mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def report(res: dict[str, Any]) -> list[dict[str, Any]]:
    idle, back, fl = res["idle"], res["backlog"], res["fill"]
    n = fl["rows"]
    print()
    print(f"upq backlog benchmark — {res['db']} ({res['db_server']}), {res['host']}, "
          f"{res['cpus']} CPUs, {res['date']}")
    k = res["noop_concurrent"]
    print("backlog type noop: " + ("concurrent = 0 (inline; its one worker drains a due backlog)" if k == 0 else
          f"concurrent = {k}, workers drain the backlog during the measurement"))
    print(f"fill: {n:,} queued rows in {fl['seconds']:.1f} s ({fl['rows_per_s']:,} rows/s, "
          f"batches of {fl['batch']:,}; {fl['post_step']} {fl['post_seconds']:.1f} s)")
    if res.get("db_size_mb") is not None:
        print(f"database size after fill: {res['db_size_mb']:.0f} MB")
    print()
    rows = [
        ("start-up (process start -> first ping)", "s", idle["startup_s"], back["startup_s"]),
        ("RSS after start", "MB", mb(idle["rss_start_kb"]), mb(back["rss_start_kb"])),
        ("RSS after 100 status + stats + list", "MB", mb(idle["rss_after_queries_kb"]),
         mb(back["rss_after_queries_kb"])),
        ("RSS at end / peak (VmHWM)", "MB", f"{mb(idle['rss_end_kb'])} / {mb(idle['rss_peak_kb'])}",
         f"{mb(back['rss_end_kb'])} / {mb(back['rss_peak_kb'])}"),
        ("status <id> p50", "ms", idle.get("status_p50_ms"), back.get("status_p50_ms")),
        ("status <id> p99", "ms", idle.get("status_p99_ms"), back.get("status_p99_ms")),
        ("status <id> max", "ms", idle.get("status_max_ms"), back.get("status_max_ms")),
        ("status <missing id>", "ms", idle["status_missing_ms"], back["status_missing_ms"]),
        ("stats (first)", "ms", idle["stats_first_ms"], back["stats_first_ms"]),
        ("stats (median of 5)", "ms", idle["stats_median_ms"], back["stats_median_ms"]),
        ("stats p50 (50 samples)", "ms", idle["stats_p50_ms"], back["stats_p50_ms"]),
        ("/metrics p50 (50 samples)", "ms", idle.get("metrics_p50_ms"), back.get("metrics_p50_ms")),
        ("dashboard overview p50 (50 samples)", "ms", idle.get("overview_p50_ms"), back.get("overview_p50_ms")),
        ("list (first)", "ms", idle["list_first_ms"], back["list_first_ms"]),
        ("list (median of 5)", "ms", idle["list_median_ms"], back["list_median_ms"]),
        ("list new (median of 5)", "ms", idle["list_new_median_ms"], back["list_new_median_ms"]),
        ("list done (median of 5)", "ms", idle["list_done_median_ms"], back["list_done_median_ms"]),
        ("submit noop, ACK (first)", "ms", idle["submit_noop_first_ms"], back["submit_noop_first_ms"]),
        ("submit noop, ACK (median of 5)", "ms", idle["submit_noop_median_ms"],
         back["submit_noop_median_ms"]),
    ]
    w = max(len(r[0]) for r in rows)
    head_b = f"{n:,} queued"
    print(f"{'figure':<{w}}  {'unit':<4}  {'empty db':>14}  {head_b:>16}")
    print("-" * (w + 40))
    for name, unit, a, b in rows:
        print(f"{name:<{w}}  {unit:<4}  {fmt(a):>14}  {fmt(b):>16}")
    print()

    rss_max = max(back["rss_start_kb"], back["rss_after_queries_kb"], back["rss_end_kb"]) / 1024
    targets = [
        ("start-up with backlog", back["startup_s"], TARGET_START_S, "s"),
        ("RSS with backlog (max of samples)", round(rss_max, 1), TARGET_RSS_MB, "MB"),
        ("status p50 with backlog", back.get("status_p50_ms"), TARGET_STATUS_MS, "ms"),
        ("status p99 with backlog", back.get("status_p99_ms"), TARGET_STATUS_MS, "ms"),
        ("stats p50 with backlog (issue 14)", back.get("stats_p50_ms"), TARGET_COUNTS_MS, "ms"),
        ("/metrics p50 with backlog (issue 14)", back.get("metrics_p50_ms"), TARGET_COUNTS_MS, "ms"),
        ("overview p50 with backlog (issue 14)", back.get("overview_p50_ms"), TARGET_COUNTS_MS, "ms"),
    ]
    out = []
    print(f"targets (issue 8, backlog of 1,000,000 queued{'' if n == 1_000_000 else f'; this run: {n:,}'}):")
    for name, val, limit, unit in targets:
        ok = val is not None and val < limit
        print(f"  {name:<34} {fmt(val):>10} {unit:<2}  target < {limit:g} {unit:<2}  {'OK' if ok else 'MISS'}")
        out.append({"figure": name, "value": val, "target_lt": limit, "unit": unit, "ok": ok})
    print(f"  stats at this size (no target): {back['stats_median_ms']:,.2f} ms median")
    return out


# -- main --------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", "-n", type=int, default=1_000_000, help="queued jobs (default 1,000,000)")
    p.add_argument("--db", choices=("sqlite", "mysql"), default="sqlite")
    p.add_argument("--mysql-url", default=os.environ.get("UPQ_TEST_MYSQL_URL", DEFAULT_MYSQL_URL),
                   help=f"server to create a scratch database on (default {DEFAULT_MYSQL_URL})")
    p.add_argument("--batch", type=int, default=50_000, help="rows per fill transaction")
    p.add_argument("--status-samples", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5, help="samples for stats/list/submit medians")
    p.add_argument("--out", default=str(ROOT / "bench" / "results-backlog.json"))
    p.add_argument("--scheduled", action="store_true",
                   help="the backlog is due in a day (queued, not yet runnable) instead of due now")
    p.add_argument("--concurrent", type=int, default=0,
                   help="workers of the backlog's type `noop` (default 0: inline, one worker for re-runs; "
                        ">0: that many workers drain it while the daemon is measured)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (and MariaDB database)")
    args = p.parse_args(argv)

    if args.db == "mysql":
        why = mysql_reachable(args.mysql_url)
        if why:
            print(f"backlog: MariaDB/MySQL at {args.mysql_url} not reachable: {why}", file=sys.stderr)
            return 2

    workdir = Path(tempfile.mkdtemp(prefix="upqb-", dir="/tmp"))
    scratch: MySQLScratch | None = None
    daemon: Daemon | None = None
    res: dict[str, Any] = {
        "db": args.db, "jobs": args.jobs, "host": platform.node(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "noop_concurrent": args.concurrent,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.executable).name, "bench/backlog.py"] + sys.argv[1:]),
    }
    try:
        if args.db == "mysql":
            scratch = MySQLScratch(args.mysql_url)
            db_url = scratch.url
            res["db_server"] = f"MariaDB/MySQL {scratch.server}, database {scratch.name}"
        else:
            import sqlite3
            db_url = f"sqlite:///{workdir / 'upq.db'}"
            res["db_server"] = f"SQLite {sqlite3.sqlite_version}"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            http_port = probe.getsockname()[1]
        cfg = write_files(workdir, db_url, args.concurrent, http_port)
        print(f"workdir {workdir}; db {res['db_server']}")
        daemon = Daemon(workdir, cfg, str(workdir / "upq.sock"))

        print("1/3 idle daemon, empty database ...")
        res["idle"] = measure(daemon, [], args.status_samples, args.repeats, http_port)
        # a few existing ids so the idle status figure means the same as the backlog one
        c = Conn(daemon.socket)
        try:
            ids = [int(c.ask(f"noop n:{i}").split()[1]) for i in range(20)]
            lat = [c.timed(f"status {random.choice(ids)}")[0] for _ in range(args.status_samples)]
        finally:
            c.close()
        res["idle"].update(status_samples=len(lat), status_p50_ms=ms(pct(lat, 50)),
                           status_p99_ms=ms(pct(lat, 99)), status_max_ms=ms(max(lat)))
        daemon.stop()

        # start the backlog from an empty table again
        if scratch is not None:
            scratch.empty()
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(str(workdir / "upq.db") + suffix).unlink(missing_ok=True)

        print(f"2/3 filling {args.jobs:,} queued jobs ...")
        res["fill"] = fill(db_url, args.jobs, args.batch, scheduled=args.scheduled)
        if scratch is None:
            res["db_size_mb"] = round(sum(os.path.getsize(f) for f in workdir.glob("upq.db*")) / 2**20, 1)
        else:
            from sqlalchemy import create_engine
            e = create_engine(db_url)
            with e.connect() as conn:
                size = conn.exec_driver_sql(
                    "SELECT data_length + index_length FROM information_schema.tables "
                    "WHERE table_schema = DATABASE() AND table_name = 'upq_jobs'").scalar()
            e.dispose()
            res["db_size_mb"] = round(int(size or 0) / 2**20, 1)

        print("3/3 daemon with the backlog ...")
        ids_range = range(1, args.jobs + 1)          # a fresh table numbers rows 1..N
        res["backlog"] = measure(daemon, ids_range, args.status_samples, args.repeats,  # type: ignore[arg-type]
                                 http_port)
        daemon.stop()

        res["targets"] = report(res)
        out = Path(args.out)
        try:
            all_results = json.loads(out.read_text()) if out.exists() else {}
            if not isinstance(all_results, dict):
                all_results = {}
        except ValueError:
            all_results = {}
        key = args.db if args.concurrent == 0 else f"{args.db}-concurrent{args.concurrent}"
        all_results[key] = res
        out.write_text(json.dumps(all_results, indent=2) + "\n")
        print(f"\nJSON: {out} (key {key!r})")
        return 0
    finally:
        if daemon is not None:
            daemon.stop()
        if args.keep:
            print(f"kept {workdir}" + (f" and database {scratch.name}" if scratch else ""))
        else:
            if scratch is not None:
                scratch.drop()
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
