#!/usr/bin/env python3
"""upq against huey and RQ: enqueue, drain, end-to-end and latency (issue 8).

    make bench                                   # this, then bench/backlog.py
    .venv/bin/python bench/run.py [--n 20000] [--quick] [--only upq-sqlite,huey-sqlite,...]
                                  [--latency 500] [--json bench/results.json]

Systems (columns), each on a fresh temp dir / database / Redis key space per workload:
  upq-sqlite         upq on SQLite, [db] durability = full (synchronous=FULL): ACK after fsync
  upq-sqlite-normal  the same with durability = normal (synchronous=NORMAL)
  upq-mariadb        upq on a fresh MariaDB database upq_bench_<random> (dropped after)
  huey-sqlite        huey SqliteHuey, documented defaults (WAL; fsync=None keeps SQLite's
                     default synchronous, FULL on this build); consumer: 4 worker threads
  huey-redis         huey RedisHuey (blocking=True default); consumer: 4 worker threads
  rq-simple          RQ on Redis, 4 SimpleWorker processes (one job at a time each)
  rq-fork            RQ on Redis, 4 default (forking) Worker processes
  upq-process        upq-sqlite with isolation = process: 4 pre-started worker processes (issue 13)
  upq-sqlite-log10   upq-sqlite with a job that writes 10 lines to self.logger (log capture cost)
  upq-sqlite-log10-off  the same with log_limit = 0 (the lines go to upq's own log, as before)
Redis here keeps nothing on disk (save "" and appendonly no are checked and printed), so
huey-redis and RQ acknowledge before anything is durable.

Workloads (rows); the job is a no-op everywhere (bench_tasks.py / the generated jobs/noop.py):
  enqueue 1 client   N jobs submitted and acknowledged by one client process. upq: one
                     connection, pipelining windows of 1000 lines, two windows in flight;
                     peers: calling the huey task / queue.enqueue() in a loop.
  enqueue 8 clients  the same from 8 client processes, N/8 each (upq: 8 connections).
  drain 4 workers    N queued jobs run to completion by 4 workers (upq: concurrent = 4).
  end-to-end         8 clients submit N jobs while 4 workers run; time until all are done.
  latency            one job at a time on an idle system, --latency jobs (500): submit ->
                     run() starts (the job appends time.time() to a stamp file) and
                     submit -> done seen by the client (upq: ACK, then `wait <id>` on the same
                     connection, as `upq-cli.py --wait` does; huey: result.get() polled every
                     0.5 ms; RQ: job.get_status() polled every 0.5 ms -- the peers' own blocking
                     gets sleep 100 ms or more between looks, so this is their best case).
How workers are kept out of the enqueue figures: every job first passes a "gate" (a file).
While the gate is missing a job parks in run(), so the 4 workers each hold one job and
consume nothing more; enqueue is timed like that. Drain: the queue is filled (untimed) with
the gate closed, the bench waits until all 4 workers are parked, then creates the gate file
and times until the system reports N done (upq: `stats`; huey: result_count(); RQ: its
finished-job registry), polled every 20 ms (upq: `wait` on the newest job first, since a
`stats` poll would run inside the daemon and take CPU from its workers). Workers are started before the clock starts
everywhere (upq: the daemon answers `ping`; peers: their processes are in their loops).
A job's completion is recorded by each system in its own way: upq marks the row done,
huey stores the task's return value True, RQ stores status and result.

The slow RQ workers drain and run end-to-end only --rq-cap jobs (default 1000); their cells
are marked with the count. Raw reference rates (SQLite WAL synchronous=FULL and MariaDB
commit rates, MariaDB SKIP LOCKED claim rate) are measured first. The table, the targets of
issue 8 with OK/MISS, and the durability notes are printed; everything goes to --json.
Every wait is bounded, every process started here is killed at the end, the temp dirs,
MariaDB databases and the Redis keys are removed (Redis: a database index, --redis-db,
that must be empty at the start and is emptied at the end).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT))

import bench_tasks  # noqa: E402
from backlog import Conn, Daemon, MySQLScratch, mysql_reachable  # noqa: E402

DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1/test"
ALL_SYSTEMS = ("upq-sqlite", "upq-sqlite-normal", "upq-mariadb", "huey-sqlite", "huey-redis",
               "rq-simple", "rq-fork", "upq-process", "upq-sqlite-log10", "upq-sqlite-log10-off")
WORKERS = 4
CLIENTS = 8
WINDOW = 1000                 # upq pipelining: lines per window
POLL = 0.02                   # done-count polling
READY_TIMEOUT = 60.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s))) - 1))]


def phase_timeout(n: int, slow: bool = False) -> float:
    return 120.0 + n / (20.0 if slow else 200.0)


# ==============================================================================
# client processes (spawned; everything they need comes in `spec`)
# ==============================================================================
class UpqClient:
    def __init__(self, spec: dict[str, Any]):
        self.conn = Conn(spec["socket"], timeout=60)

    def enqueue(self, count: int) -> None:
        sock = self.conn.sock
        buf = b""
        sent = got = 0
        line = b"noop\n"

        def send_window() -> None:
            nonlocal sent
            k = min(WINDOW, count - sent)
            sock.sendall(line * k)
            sent += k

        send_window()
        send_window()
        while got < count:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("upq closed the connection")
            buf += chunk
            *answers, buf = buf.split(b"\n")
            for a in answers:
                if not a.startswith(b"ACK "):
                    raise RuntimeError(f"upq answered {a[:200]!r}")
            got += len(answers)
            while sent < count and sent - got <= WINDOW:     # keep up to two windows in flight
                send_window()
        self.conn.buf = buf

    def latency(self, count: int) -> list[tuple[float, float, float]]:
        out = []
        for i in range(count):
            t0 = time.time()
            a = self.conn.ask(f"noop tag:{i}")
            t1 = time.time()
            if not a.startswith("ACK "):
                raise RuntimeError(f"upq answered {a[:200]!r}")
            w = self.conn.ask(f"wait {a.split()[1]} timeout:30")
            t2 = time.time()
            if not w.startswith("ACK "):
                raise RuntimeError(f"wait answered {w[:200]!r}")
            out.append((t0, t1, t2))
        return out


class HueyClient:
    def __init__(self, spec: dict[str, Any]):
        assert bench_tasks.huey_noop is not None
        self.task = bench_tasks.huey_noop

    def enqueue(self, count: int) -> None:
        task = self.task
        for _ in range(count):
            task()

    def latency(self, count: int) -> list[tuple[float, float, float]]:
        out = []
        for i in range(count):
            t0 = time.time()
            r = self.task(i)
            t1 = time.time()
            deadline = t1 + 30
            while r.get() is None:
                if time.time() > deadline:
                    raise TimeoutError(f"huey task {i} not done within 30 s")
                time.sleep(0.0005)
            out.append((t0, t1, time.time()))
        return out


class RQClient:
    def __init__(self, spec: dict[str, Any]):
        from redis import Redis
        from rq import Queue
        self.queue = Queue(spec["queue"], connection=Redis(host="127.0.0.1", port=6379, db=spec["redis_db"]))

    def enqueue(self, count: int) -> None:
        q, fn = self.queue, bench_tasks.noop
        for _ in range(count):
            q.enqueue(fn)

    def latency(self, count: int) -> list[tuple[float, float, float]]:
        out = []
        for i in range(count):
            t0 = time.time()
            job = self.queue.enqueue(bench_tasks.noop, i)
            t1 = time.time()
            deadline = t1 + 30
            while True:
                st = job.get_status(refresh=True)
                if st == "finished":
                    break
                if st in ("failed", "stopped", "canceled") or time.time() > deadline:
                    raise RuntimeError(f"rq job {i}: {st}")
                time.sleep(0.0005)
            out.append((t0, t1, time.time()))
        return out


def client_main(spec: dict[str, Any], role: str, count: int, go: Any, out: Any) -> None:
    """Entry of a spawned client process."""
    try:
        os.environ.update(spec.get("env", {}))
        if spec.get("env"):
            import importlib
            importlib.reload(bench_tasks)
        cls = {"upq": UpqClient, "huey": HueyClient, "rq": RQClient}[spec["family"]]
        client = cls(spec)
        out.put(("ready", os.getpid(), None))
        if not go.wait(READY_TIMEOUT):
            raise TimeoutError("never told to start")
        t0 = time.time()
        res: Any = None
        if role == "enqueue":
            client.enqueue(count)
        else:
            res = client.latency(count)
        out.put(("done", os.getpid(), {"t0": t0, "t1": time.time(), "latency": res}))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out.put(("error", os.getpid(), f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


class Clients:
    """k client processes, started, made ready, released together, collected with a deadline."""

    def __init__(self, spec: dict[str, Any], role: str, counts: list[int]):
        ctx = mp.get_context("spawn")
        self.go = ctx.Event()
        self.q = ctx.Queue()
        self.procs = [ctx.Process(target=client_main, args=(spec, role, c, self.go, self.q), daemon=True)
                      for c in counts]
        for p in self.procs:
            p.start()
        ready = 0
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while ready < len(self.procs):
                try:
                    kind, pid, payload = self.q.get(timeout=max(0.1, deadline - time.monotonic()))
                except Exception:  # queue.Empty
                    raise TimeoutError(f"clients not ready within {READY_TIMEOUT:.0f} s") from None
                if kind == "error":
                    raise RuntimeError(f"client {pid}: {payload}")
                ready += 1
        except BaseException:
            self.kill()
            raise

    def start(self) -> float:
        t = time.time()
        self.go.set()
        return t

    def collect(self, timeout: float) -> list[dict[str, Any]]:
        res = []
        deadline = time.monotonic() + timeout
        try:
            while len(res) < len(self.procs):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"clients did not finish within {timeout:.0f} s")
                try:
                    kind, pid, payload = self.q.get(timeout=min(left, 1.0))
                except Exception:  # queue.Empty
                    if not any(p.is_alive() for p in self.procs) and self.q.empty():
                        raise RuntimeError("client processes died without an answer") from None
                    continue
                if kind == "error":
                    raise RuntimeError(f"client {pid}: {payload}")
                res.append(payload)
            return res
        finally:
            self.kill()

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


def split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


# ==============================================================================
# systems
# ==============================================================================
class Procs:
    """Every subprocess this bench starts; kill_all() ends them (and their process groups)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(log_path, "ab")
        try:
            p = subprocess.Popen(argv, stdout=out, stderr=out, env={**os.environ, **(env or {})},
                                 start_new_session=True)
        finally:
            out.close()
        self.procs.append(p)
        return p

    @staticmethod
    def _signal(p: subprocess.Popen, sig: int) -> None:
        """Signal p's own process group (a forking worker's children too), else p alone."""
        try:
            if os.getpgid(p.pid) == p.pid:
                os.killpg(p.pid, sig)
                return
        except ProcessLookupError:
            pass
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(self, p: subprocess.Popen, grace: float = 10.0) -> None:
        if p.poll() is None:
            self._signal(p, signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self._signal(p, signal.SIGKILL)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if p in self.procs:
            self.procs.remove(p)

    def kill_all(self) -> None:
        for p in list(self.procs):
            self.stop(p, grace=3.0)


class Instance:
    """One fresh store + running workers of a system, for one workload."""

    family = ""

    def __init__(self, sysname: str, wdir: Path, gate_open: bool):
        self.sysname = sysname
        self.dir = wdir
        self.gate = wdir / "gate"
        self.stampfile = wdir / "stamps"
        if gate_open:
            self.gate.write_text("open")

    def parked(self) -> int:
        return len(list(self.dir.glob("gate.parked.*")))

    def open_gate(self) -> None:
        self.gate.write_text("open")

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def done_count(self) -> int:
        raise NotImplementedError

    def stamps(self) -> dict[int, float]:
        out = {}
        if self.stampfile.exists():
            for line in self.stampfile.read_text().splitlines():
                tag, t = line.split()
                out[int(tag)] = float(t)
        return out

    def close(self) -> None:
        raise NotImplementedError

    def diagnose(self) -> None:
        """Something stalled: print what can be seen (overridden by upq)."""

    def wait_quietly(self, deadline: float) -> None:
        """Wait for the bulk of the work without loading the system (upq: `wait` on the newest job)."""


class UpqInstance(Instance):
    family = "upq"

    def __init__(self, sysname: str, wdir: Path, gate_open: bool, procs: Procs, ctx: "Context"):
        super().__init__(sysname, wdir, gate_open)
        self.procs = procs
        self.scratch: MySQLScratch | None = None
        self.daemon: Daemon | None = None
        if sysname == "upq-mariadb":
            self.scratch = MySQLScratch(ctx.mysql_url)
            db = f"url = {self.scratch.url}\n"
        else:
            db = f"url = sqlite:///{wdir / 'upq.db'}\n"
            db += "durability = normal\n" if sysname.endswith("-normal") else "durability = full\n"
        (wdir / "jobs").mkdir()
        (wdir / "jobs" / "noop.py").write_text(bench_tasks.UPQ_JOB_SOURCE)
        cfg = wdir / "upq.cfg"
        cfg.write_text(
            "[logging]\nloglevel = info\nlogfile = ./upq.log\n\n"
            "[paths]\nsocket = ./upq.sock\njobs_dir = ./jobs\n\n"
            f"[db]\n{db}\n"
            "[server]\nallow_root = true\nshutdown_grace = 2\n\n"
            f"[job noop]\nenabled = true\nconcurrent = {WORKERS}\n"
            f"gate = {self.gate}\nstamp = {self.stampfile}\n"
            + ("isolation = process\n" if sysname == "upq-process" else "")
            + ("log_lines = 10\n" if "-log10" in sysname else "")
            + ("log_limit = 0\n" if sysname.endswith("-log10-off") else ""))
        self.daemon = Daemon(wdir, cfg, str(wdir / "upq.sock"))
        self.startup_s = self.daemon.start()
        procs.procs.append(self.daemon.proc)       # killed by kill_all() if anything goes wrong
        self.conn = Conn(self.daemon.socket)

    def spec(self) -> dict[str, Any]:
        assert self.daemon is not None
        return {"family": "upq", "socket": self.daemon.socket}

    def wait_quietly(self, deadline: float) -> None:
        """`stats` runs inside the daemon, so polling it would take CPU from the workers (the
        peers are counted from outside). Jobs are claimed in id order: `wait` on the newest
        job first (server-side, no load), then poll `stats` for the last few."""
        a = self.conn.ask("list limit:1")
        if not a.startswith("ACK ") or not json.loads(a[4:]):
            return
        newest = json.loads(a[4:])[0]["jobid"]
        while time.monotonic() < deadline:
            left = max(1, min(100, int(deadline - time.monotonic())))
            w = self.conn.ask(f"wait {newest} timeout:{left}")
            if not w.startswith("ERR timeout"):
                return

    def diagnose(self) -> None:
        """Print the daemon's log tail, its stats, and its threads' stacks when py-spy is at hand
        ($UPQ_BENCH_PYSPY or py-spy on PATH)."""
        assert self.daemon is not None
        print(f"--- {self.sysname} stalled; stats: {self.conn.ask('stats')[:500]}", flush=True)
        print(self.daemon.tail(4000), flush=True)
        spy = os.environ.get("UPQ_BENCH_PYSPY") or shutil.which("py-spy")
        if spy:
            r = subprocess.run([spy, "dump", "--pid", str(self.daemon.pid)], capture_output=True,
                               text=True, timeout=60)
            print(r.stdout[-20000:], r.stderr[-2000:], flush=True)

    def done_count(self) -> int:
        a = self.conn.ask("stats")
        if not a.startswith("ACK "):
            raise RuntimeError(f"stats: {a[:200]}")
        return int(json.loads(a[4:])["jobs"].get("noop", {}).get("done", 0))

    def close(self) -> None:
        try:
            self.open_gate()
            try:
                self.conn.close()
            except OSError:
                pass
            if self.daemon is not None:
                self.daemon.stop()
                if self.daemon.proc in self.procs.procs:
                    self.procs.procs.remove(self.daemon.proc)
        finally:
            if self.scratch is not None:
                self.scratch.drop()


class HueyInstance(Instance):
    family = "huey"

    def __init__(self, sysname: str, wdir: Path, gate_open: bool, procs: Procs, ctx: "Context"):
        super().__init__(sysname, wdir, gate_open)
        self.procs = procs
        if sysname == "huey-sqlite":
            hspec = f"sqlite:{wdir / 'huey.db'}"
        else:
            hspec = f"redis:upqbench-{uuid.uuid4().hex[:10]}:{ctx.redis_db}"
        self.env = {"UPQ_BENCH_HUEY": hspec, "UPQ_BENCH_GATE": str(self.gate),
                    "UPQ_BENCH_STAMP": str(self.stampfile), "PYTHONPATH": str(BENCH)}
        # the bench's own handle on the same storage, for counting results
        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            import importlib
            self.mod = importlib.reload(bench_tasks)
            self.huey = self.mod.huey
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        ready = wdir / "ready"
        self.proc = procs.start([sys.executable, str(BENCH / "peer_worker.py"), "huey", str(ready)],
                                wdir / "consumer.log", self.env)
        wait_for(lambda: ready.exists(), 30, "huey consumer ready", self.proc)
        time.sleep(0.3)            # the consumer's threads start right after the ready file

    def spec(self) -> dict[str, Any]:
        return {"family": "huey", "env": self.env}

    def done_count(self) -> int:
        return int(self.huey.result_count())

    def close(self) -> None:
        self.open_gate()
        self.procs.stop(self.proc)
        try:
            self.huey.storage.flush_all()
        except Exception:  # noqa: BLE001
            pass
        importlib_reset()


def importlib_reset() -> None:
    import importlib
    for k in ("UPQ_BENCH_HUEY", "UPQ_BENCH_GATE", "UPQ_BENCH_STAMP"):
        os.environ.pop(k, None)
    importlib.reload(bench_tasks)


class RQInstance(Instance):
    family = "rq"

    def __init__(self, sysname: str, wdir: Path, gate_open: bool, procs: Procs, ctx: "Context"):
        super().__init__(sysname, wdir, gate_open)
        from redis import Redis
        from rq import Queue
        from rq.registry import FinishedJobRegistry
        self.procs = procs
        self.redis_db = ctx.redis_db
        self.name = f"upqbench-{uuid.uuid4().hex[:10]}"
        self.redis = Redis(host="127.0.0.1", port=6379, db=ctx.redis_db)
        self.queue = Queue(self.name, connection=self.redis)
        self.finished = FinishedJobRegistry(queue=self.queue)
        env = {"UPQ_BENCH_GATE": str(self.gate), "UPQ_BENCH_STAMP": str(self.stampfile),
               "PYTHONPATH": str(BENCH)}
        self.workers = []
        for i in range(WORKERS):
            ready = wdir / f"ready{i}"
            p = procs.start([sys.executable, str(BENCH / "peer_worker.py"), sysname, self.name,
                             str(ctx.redis_db), str(ready)], wdir / f"worker{i}.log", env)
            self.workers.append(p)
            wait_for(lambda: ready.exists(), 30, f"{sysname} worker {i} ready", p)
        time.sleep(0.5)            # let the workers register and block on the queue

    def spec(self) -> dict[str, Any]:
        return {"family": "rq", "queue": self.name, "redis_db": self.redis_db}

    def done_count(self) -> int:
        return int(self.finished.count)

    def close(self) -> None:
        self.open_gate()
        for p in self.workers:
            self.procs.stop(p)


def wait_for(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.01)


class Context:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.mysql_url = args.mysql_url
        self.redis_db = args.redis_db
        self.procs = Procs()
        self.counter = 0

    def instance(self, sysname: str, gate_open: bool) -> Instance:
        self.counter += 1
        wdir = self.tmp / f"w{self.counter}"
        wdir.mkdir()
        if sysname.startswith("upq"):
            return UpqInstance(sysname, wdir, gate_open, self.procs, self)
        if sysname.startswith("huey"):
            return HueyInstance(sysname, wdir, gate_open, self.procs, self)
        return RQInstance(sysname, wdir, gate_open, self.procs, self)


# ==============================================================================
# workloads
# ==============================================================================
def wait_done(inst: Instance, n: int, timeout: float) -> float:
    """Poll the done count every POLL s until it reaches n; returns time.time() then."""
    deadline = time.monotonic() + timeout
    inst.wait_quietly(deadline)
    while True:
        c = inst.done_count()
        if c >= n:
            return time.time()
        if time.monotonic() > deadline:
            inst.diagnose()
            raise TimeoutError(f"{inst.sysname}: {c} of {n} done after {timeout:.0f} s")
        time.sleep(POLL)


def w_enqueue(ctx: Context, sysname: str, n: int, k: int) -> dict[str, Any]:
    inst = ctx.instance(sysname, gate_open=False)
    try:
        cl = Clients(inst.spec(), "enqueue", split(n, k))
        cl.start()
        res = cl.collect(phase_timeout(n))
        el = max(r["t1"] for r in res) - min(r["t0"] for r in res)
        return {"n": n, "clients": k, "seconds": round(el, 3), "jobs_per_s": round(n / el, 1)}
    finally:
        inst.close()


def w_drain(ctx: Context, sysname: str, n: int, slow: bool) -> dict[str, Any]:
    inst = ctx.instance(sysname, gate_open=False)
    try:
        cl = Clients(inst.spec(), "enqueue", [n])
        cl.start()
        res = cl.collect(phase_timeout(n, slow))
        fill_s = res[0]["t1"] - res[0]["t0"]
        wait_for(lambda: inst.parked() >= WORKERS, 60, f"{sysname}: {WORKERS} workers parked")
        time.sleep(0.2)
        t0 = time.time()
        inst.open_gate()
        t1 = wait_done(inst, n, phase_timeout(n, slow))
        el = t1 - t0
        return {"n": n, "workers": WORKERS, "seconds": round(el, 3), "jobs_per_s": round(n / el, 1),
                "fill_seconds": round(fill_s, 3)}
    finally:
        inst.close()


def w_e2e(ctx: Context, sysname: str, n: int, slow: bool) -> dict[str, Any]:
    inst = ctx.instance(sysname, gate_open=True)
    try:
        cl = Clients(inst.spec(), "enqueue", split(n, CLIENTS))
        t0 = cl.start()
        res = cl.collect(phase_timeout(n, slow))       # all submitted (nothing can be all done before)
        t1 = wait_done(inst, n, phase_timeout(n, slow))
        sub = max(r["t1"] for r in res) - min(r["t0"] for r in res)
        el = t1 - min(r["t0"] for r in res + [{"t0": t0}])
        return {"n": n, "clients": CLIENTS, "workers": WORKERS, "seconds": round(el, 3),
                "jobs_per_s": round(n / el, 1), "submit_seconds": round(sub, 3)}
    finally:
        inst.close()


def w_latency(ctx: Context, sysname: str, n: int) -> dict[str, Any]:
    inst = ctx.instance(sysname, gate_open=True)
    try:
        time.sleep(0.5)                       # idle
        cl = Clients(inst.spec(), "latency", [n])
        cl.start()
        res = cl.collect(120 + n * 2.0)
        lat = res[0]["latency"]
        time.sleep(0.2)
        stamps = inst.stamps()
        start = [(stamps[i] - t0) * 1000 for i, (t0, _t1, _t2) in enumerate(lat) if i in stamps]
        ackl = [(t1 - t0) * 1000 for t0, t1, _ in lat]
        done = [(t2 - t0) * 1000 for t0, _, t2 in lat]
        if len(start) != len(lat):
            raise RuntimeError(f"{sysname}: {len(lat) - len(start)} jobs left no start stamp")
        r = {"n": n}
        for key, vals in (("ack", ackl), ("start", start), ("done", done)):
            r[f"{key}_p50_ms"] = round(pct(vals, 50), 3)
            r[f"{key}_p99_ms"] = round(pct(vals, 99), 3)
            r[f"{key}_mean_ms"] = round(statistics.fmean(vals), 3)
        return r
    finally:
        inst.close()


# ==============================================================================
# raw reference rates
# ==============================================================================
def timed_loop(fn: Callable[[], None], seconds: float, max_iter: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    i = 0
    while i < max_iter:
        fn()
        i += 1
        if (i & 15) == 0 and time.perf_counter() - t0 > seconds:
            break
    return i, time.perf_counter() - t0


def raw_sqlite(tmp: Path, seconds: float) -> dict[str, Any]:
    path = tmp / "raw.db"
    c = sqlite3.connect(path, isolation_level=None)
    try:
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")

        def one() -> None:
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT INTO t (v) VALUES ('x')")
            c.execute("COMMIT")

        rows = [("x",)] * 100

        def hundred() -> None:
            c.execute("BEGIN IMMEDIATE")
            c.executemany("INSERT INTO t (v) VALUES (?)", rows)
            c.execute("COMMIT")

        k1, s1 = timed_loop(one, seconds, 100000)
        k2, s2 = timed_loop(hundred, seconds, 100000)
        sync = c.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        c.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    return {"version": sqlite3.sqlite_version, "synchronous": sync,
            "commits_per_s": round(k1 / s1, 1), "rows_per_s_100_per_commit": round(100 * k2 / s2, 1)}


def raw_mariadb(url: str, seconds: float) -> dict[str, Any]:
    import pymysql
    from sqlalchemy.engine import make_url
    scratch = MySQLScratch(url)
    u = make_url(scratch.url)
    try:
        c = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username,
                            password=u.password or "", database=u.database, autocommit=False)
        try:
            cur = c.cursor()
            cur.execute("SELECT @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin, VERSION()")
            flush, sync_binlog, log_bin, version = cur.fetchone()
            cur.execute("CREATE TABLE t (id BIGINT AUTO_INCREMENT PRIMARY KEY, state VARCHAR(16) NOT NULL, "
                        "v TEXT, KEY ix (state, id)) ENGINE=InnoDB")
            c.commit()

            def one() -> None:
                cur.execute("INSERT INTO t (state, v) VALUES ('done', 'x')")
                c.commit()

            rows = [("done", "x")] * 100

            def hundred() -> None:
                cur.executemany("INSERT INTO t (state, v) VALUES (%s, %s)", rows)
                c.commit()

            k1, s1 = timed_loop(one, seconds, 100000)
            k2, s2 = timed_loop(hundred, seconds, 100000)
            # queued rows to claim
            backlog = 20000
            for _ in range(backlog // 1000):
                cur.executemany("INSERT INTO t (state, v) VALUES (%s, %s)", [("new", "x")] * 1000)
            c.commit()
            missing = []

            def claim() -> None:
                cur.execute("SELECT id FROM t WHERE state = 'new' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
                r = cur.fetchone()
                if r is None:
                    missing.append(1)
                else:
                    cur.execute("UPDATE t SET state = 'running' WHERE id = %s", (r[0],))
                c.commit()

            k3, s3 = timed_loop(claim, seconds, backlog)
        finally:
            c.close()
    finally:
        scratch.drop()
    return {"version": version, "innodb_flush_log_at_trx_commit": int(flush), "sync_binlog": int(sync_binlog),
            "log_bin": int(log_bin), "commits_per_s": round(k1 / s1, 1),
            "rows_per_s_100_per_commit": round(100 * k2 / s2, 1),
            "skip_locked_claims_per_s": round(k3 / s3, 1), "empty_claims": len(missing)}


# ==============================================================================
# report
# ==============================================================================
def fmt_rate(cell: dict[str, Any] | None, n: int) -> str:
    if cell is None:
        return "-"
    if "error" in cell:
        return "error"
    s = f"{cell['jobs_per_s']:,.0f}"
    if cell["n"] != n:
        s += f" ({cell['n']})"
    return s


def fmt_ms(cell: dict[str, Any] | None, key: str) -> str:
    if cell is None:
        return "-"
    if "error" in cell:
        return "error"
    return f"{cell[key]:.2f}"


def report(res: dict[str, Any]) -> list[dict[str, Any]]:
    systems = [s for s in ALL_SYSTEMS if s in res["systems"]]
    n = res["n"]
    R = res["systems"]
    rows: list[tuple[str, list[str]]] = [
        ("enqueue, 1 client (jobs/s)", [fmt_rate(R[s].get("enqueue1"), n) for s in systems]),
        ("enqueue, 8 clients (jobs/s)", [fmt_rate(R[s].get("enqueue8"), n) for s in systems]),
        ("drain, 4 workers (jobs/s)", [fmt_rate(R[s].get("drain"), n) for s in systems]),
        ("end-to-end, 8 cl + 4 w (jobs/s)", [fmt_rate(R[s].get("e2e"), n) for s in systems]),
    ]
    for key, label in (("ack", "submit -> ACK"), ("start", "submit -> run() starts"), ("done", "submit -> done")):
        for p in ("p50", "p99"):
            rows.append((f"latency {label} {p} (ms)", [fmt_ms(R[s].get("latency"), f"{key}_{p}_ms")
                                                       for s in systems]))
    w0 = max(len(r[0]) for r in rows)
    ws = [max(len(s), 10) for s in systems]
    print()
    print(f"upq vs huey vs RQ -- N = {n:,}, latency over {res['latency_n']} jobs, {res['host']}, "
          f"{res['cpus']} CPUs, {res['date']}")
    print(f"command: {res['command']}")
    print("  " + f"{'figure':<{w0}}" + "".join(f"  {s:>{w}}" for s, w in zip(systems, ws)))
    print("  " + "-" * (w0 + sum(w + 2 for w in ws)))
    for label, cells in rows:
        print("  " + f"{label:<{w0}}" + "".join(f"  {c:>{w}}" for c, w in zip(cells, ws)))
    print("  (k) after a rate: measured over k jobs (--rq-cap) instead of N.")
    raw = res.get("raw", {})
    if "sqlite" in raw:
        r = raw["sqlite"]
        print(f"raw SQLite {r['version']} WAL synchronous=FULL: {r['commits_per_s']:,.0f} commits/s, "
              f"{r['rows_per_s_100_per_commit']:,.0f} rows/s at 100 rows per commit")
    if "mariadb" in raw and "error" not in raw["mariadb"]:
        r = raw["mariadb"]
        print(f"raw MariaDB {r['version']} (innodb_flush_log_at_trx_commit={r['innodb_flush_log_at_trx_commit']}, "
              f"log_bin={r['log_bin']}): {r['commits_per_s']:,.0f} single-row commits/s, "
              f"{r['rows_per_s_100_per_commit']:,.0f} rows/s at 100 rows per commit, "
              f"SKIP LOCKED claim+update {r['skip_locked_claims_per_s']:,.0f}/s (1 thread)")
    print()
    print("durability of an acknowledged job:")
    for line in res["durability"]:
        print(f"  {line}")
    print()

    def get(s: str, w: str, key: str = "jobs_per_s") -> float | None:
        c = R.get(s, {}).get(w)
        return None if c is None or "error" in c else c.get(key)

    targets: list[dict[str, Any]] = []

    def ratio(fig: str, val: float | None, ref: float | None, want: float, ref_name: str) -> None:
        r = None if val is None or not ref else val / ref
        targets.append({"figure": fig, "value": val, "reference": ref, "reference_name": ref_name,
                        "ratio": None if r is None else round(r, 2), "target_ratio": want,
                        "ok": r is not None and r >= want})

    def limit(fig: str, val: float | None, lim: float) -> None:
        targets.append({"figure": fig, "value": val, "target_le": lim, "ok": val is not None and val <= lim})

    ratio("enqueue 1 client, upq-sqlite", get("upq-sqlite", "enqueue1"), get("huey-sqlite", "enqueue1"), 3,
          "huey-sqlite enqueue 1 client")
    ratio("enqueue 8 clients, upq-sqlite", get("upq-sqlite", "enqueue8"), get("huey-sqlite", "enqueue8"), 4,
          "huey-sqlite enqueue 8 clients")
    ratio("drain 4 workers, upq-sqlite", get("upq-sqlite", "drain"), get("huey-sqlite", "drain"), 3,
          "huey-sqlite drain")
    ratio("end-to-end, upq-sqlite", get("upq-sqlite", "e2e"), get("rq-simple", "e2e"), 10, "rq-simple end-to-end")
    ratio("end-to-end, upq-sqlite", get("upq-sqlite", "e2e"), get("huey-redis", "e2e"), 2, "huey-redis end-to-end")
    limit("latency submit -> done p50 ms, upq-sqlite", get("upq-sqlite", "latency", "done_p50_ms"), 2.0)
    limit("latency submit -> done p99 ms, upq-sqlite", get("upq-sqlite", "latency", "done_p99_ms"), 10.0)
    # issue 13: process isolation and per-job log capture
    ratio("drain 4 workers, upq-process", get("upq-process", "drain"), get("rq-fork", "drain"), 10, "rq-fork drain")
    ratio("drain 4 workers, upq-process", get("upq-process", "drain"), get("upq-sqlite", "drain"), 0.25,
          "upq-sqlite (threads) drain")
    limit("latency submit -> done p50 ms, upq-process", get("upq-process", "latency", "done_p50_ms"), 3.0)
    ratio("drain 4 workers, 10 log lines a job", get("upq-sqlite-log10", "drain"), get("upq-sqlite", "drain"),
          0.85, "upq-sqlite drain (no log lines)")
    md = raw.get("mariadb", {})
    ratio("enqueue 8 clients, upq-mariadb", get("upq-mariadb", "enqueue8"), md.get("commits_per_s"), 5,
          "MariaDB single-row commits/s")
    ratio("drain 4 workers, upq-mariadb", get("upq-mariadb", "drain"), md.get("skip_locked_claims_per_s"), 3,
          "MariaDB SKIP LOCKED claim+update/s")
    print("targets (issue 8; the backlog targets are checked by bench/backlog.py):")
    for t in targets:
        ok = "OK" if t["ok"] else ("n/a (not measured)" if t.get("value") is None or
                                   ("reference" in t and not t["reference"]) else "MISS")
        if "target_ratio" in t:
            val = "-" if t["value"] is None else f"{t['value']:,.0f}"
            ref = "-" if t["reference"] is None else f"{t['reference']:,.0f}"
            rr = "-" if t["ratio"] is None else f"{t['ratio']:.2f}x"
            print(f"  {t['figure']:<42} {val:>9} / {ref:>8} {t['reference_name']:<36} = {rr:>7}"
                  f"  target >= {t['target_ratio']}x  {ok}")
        else:
            val = "-" if t["value"] is None else f"{t['value']:.2f}"
            print(f"  {t['figure']:<42} {val:>9}  target <= {t['target_le']}  {ok}")
    return targets


def durability_notes(ctx: Context, res: dict[str, Any]) -> list[str]:
    notes = ["upq-sqlite: ACK after the commit with synchronous=FULL (WAL): durable, survives power loss",
             "upq-sqlite-normal: synchronous=NORMAL (WAL): survives a crash of upq, "
             "not an OS crash/power loss",
             "upq-mariadb: ACK after COMMIT; durable as the server's settings make it"
             + (f" (innodb_flush_log_at_trx_commit={res['raw']['mariadb']['innodb_flush_log_at_trx_commit']})"
                if "commits_per_s" in res.get("raw", {}).get("mariadb", {}) else "")]
    try:
        c = sqlite3.connect(":memory:")
        opts = [o[0] for o in c.execute("PRAGMA compile_options") if "SYNCHRONOUS" in o[0]]
        c.close()
    except sqlite3.Error:
        opts = []
    notes.append("huey-sqlite: WAL, huey's fsync=None leaves SQLite's default synchronous ("
                 + ", ".join(opts) + " here): durable")
    try:
        from redis import Redis
        r = Redis(host="127.0.0.1", port=6379, db=ctx.redis_db)
        save = r.config_get("save").get("save", "?")
        aof = r.config_get("appendonly").get("appendonly", "?")
        fs = r.config_get("appendfsync").get("appendfsync", "?")
        persists = bool(save.strip()) or aof == "yes"
        notes.append(f"huey-redis, rq-*: Redis save={save!r} appendonly={aof} appendfsync={fs}: "
                     + ("acknowledged before durable (at best periodic snapshots / fsync every second)"
                        if persists else "acknowledged, never durable (Redis keeps nothing on disk here)"))
    except Exception as exc:  # noqa: BLE001
        notes.append(f"huey-redis, rq-*: Redis not reachable ({exc})")
    return notes


# ==============================================================================
# main
# ==============================================================================
def run_system(ctx: Context, sysname: str, n: int, lat_n: int, rq_cap: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    slow = sysname.startswith("rq")
    n_slow = min(n, rq_cap) if slow else n
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("enqueue1", lambda: w_enqueue(ctx, sysname, n, 1)),
        ("enqueue8", lambda: w_enqueue(ctx, sysname, n, CLIENTS)),
        ("drain", lambda: w_drain(ctx, sysname, n_slow, slow)),
        ("e2e", lambda: w_e2e(ctx, sysname, n_slow, slow)),
        ("latency", lambda: w_latency(ctx, sysname, lat_n)),
    ]
    for key, fn in steps:
        t = time.monotonic()
        try:
            out[key] = fn()
        except Exception as exc:  # noqa: BLE001 - one failure must not lose the rest
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  {sysname} {key}: ERROR {exc}")
            traceback.print_exc()
            ctx.procs.kill_all()
        else:
            brief = out[key].get("jobs_per_s", out[key].get("done_p50_ms"))
            log(f"  {sysname} {key}: {brief} ({time.monotonic() - t:.1f} s)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--n", type=int, default=20000, help="jobs per throughput workload (default 20,000)")
    p.add_argument("--latency", type=int, default=500, help="jobs in the latency workload (default 500)")
    p.add_argument("--quick", action="store_true", help="n = 2,000, latency 100, shorter raw loops")
    p.add_argument("--only", default="", help="comma-separated systems: " + ",".join(ALL_SYSTEMS))
    p.add_argument("--rq-cap", type=int, default=1000, help="jobs RQ drains / runs end-to-end (default 1,000)")
    p.add_argument("--no-raw", action="store_true", help="skip the raw SQLite/MariaDB reference rates")
    p.add_argument("--mysql-url", default=os.environ.get("UPQ_TEST_MYSQL_URL", DEFAULT_MYSQL_URL))
    p.add_argument("--redis-db", type=int, default=14, help="Redis database index to use (must be empty)")
    p.add_argument("--json", default=str(BENCH / "results.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.latency = 2000, 100
    systems = [s.strip() for s in args.only.split(",") if s.strip()] or list(ALL_SYSTEMS)
    bad = [s for s in systems if s not in ALL_SYSTEMS]
    if bad:
        p.error(f"unknown system(s) {bad}; choose from {', '.join(ALL_SYSTEMS)}")

    res: dict[str, Any] = {
        "n": args.n, "latency_n": args.latency, "rq_cap": args.rq_cap, "workers": WORKERS, "clients": CLIENTS,
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.executable).name, "bench/run.py"] + sys.argv[1:]),
        "systems": {}, "raw": {},
    }
    try:
        import huey, redis, rq  # noqa: F401,E401
        res["versions"] = {"huey": huey.__version__, "rq": rq.__version__, "redis-py": redis.__version__}
    except ImportError as exc:
        if any(not s.startswith("upq") for s in systems):
            print(f"bench: {exc}; install the bench extras (make bench does)", file=sys.stderr)
            return 2

    need_redis = any(s.startswith(("huey-redis", "rq")) for s in systems)
    redis_conn = None
    if need_redis:
        from redis import Redis
        redis_conn = Redis(host="127.0.0.1", port=6379, db=args.redis_db, socket_connect_timeout=3)
        try:
            if redis_conn.dbsize():
                print(f"bench: Redis database {args.redis_db} is not empty; pick another with --redis-db",
                      file=sys.stderr)
                return 2
        except Exception as exc:  # noqa: BLE001
            print(f"bench: Redis at 127.0.0.1:6379 not reachable ({exc}); skipping huey-redis and RQ",
                  file=sys.stderr)
            systems = [s for s in systems if not s.startswith(("huey-redis", "rq"))]
            redis_conn = None
    why = mysql_reachable(args.mysql_url)
    if why and "upq-mariadb" in systems:
        print(f"bench: MariaDB at {args.mysql_url} not reachable ({why}); skipping upq-mariadb", file=sys.stderr)
        systems.remove("upq-mariadb")

    tmp = Path(tempfile.mkdtemp(prefix="upqr-", dir="/tmp"))
    ctx = Context(args, tmp)
    t_all = time.monotonic()
    try:
        if not args.no_raw:
            secs = 1.0 if args.quick else 3.0
            log("raw SQLite reference ...")
            res["raw"]["sqlite"] = raw_sqlite(tmp, secs)
            if not why:
                log("raw MariaDB reference ...")
                try:
                    res["raw"]["mariadb"] = raw_mariadb(args.mysql_url, secs)
                except Exception as exc:  # noqa: BLE001
                    res["raw"]["mariadb"] = {"error": str(exc)}
            log(f"  raw: {json.dumps(res['raw'])}")
        for s in systems:
            log(f"{s} ...")
            res["systems"][s] = run_system(ctx, s, args.n, args.latency, args.rq_cap)
        res["seconds"] = round(time.monotonic() - t_all, 1)
        res["durability"] = durability_notes(ctx, res)
        res["targets"] = report(res)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        print(f"\nJSON: {args.json}  ({res['seconds']:.0f} s in all)")
        return 0
    finally:
        ctx.procs.kill_all()
        if redis_conn is not None:
            try:
                redis_conn.flushdb()      # it was empty when we started
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
