#!/usr/bin/env python3
"""Profile the upq daemon under one bench workload with py-spy (not part of `make bench`).

    python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy
    .venv/bin/python bench/profile_upq.py --py-spy /tmp/pyspy/bin/py-spy \\
        --workload drain|enqueue8|e2e|latency [--system upq-sqlite] [--n 20000] [--top 25]

Runs the workload exactly as bench/run.py does while `py-spy record --format raw
--threads` samples (active threads only) the daemon, then prints the functions with the most samples
(self and inclusive, over non-idle samples) per thread group, and keeps the collapsed
stacks (for flamegraph.pl / speedscope) next to --out.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402



def summarize(raw: Path, top: int) -> None:
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        funcs = frames[1:]
        total += n
        if funcs:
            self_c[funcs[-1]] += n
            for f in set(funcs):
                incl[f] += n
    print(f"\n{total} samples of running (non-idle) threads")
    print(f"\ntop {top} by self samples:")
    for f, n in self_c.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print(f"\ntop {top} by inclusive samples (functions of upq, SQLAlchemy, sqlite3, pymysql, logging, json):")
    keep = [(f, n) for f, n in incl.most_common() if re.search(
        r"upq|dbqueue|sqlalchemy|sqlite|pymysql|logging|json|socketserver", f)]
    for f, n in keep[:top]:
        print(f"  {100 * n / total:5.1f}%  {f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--py-spy", default=os.environ.get("UPQ_BENCH_PYSPY", "py-spy"))
    p.add_argument("--workload", choices=("drain", "enqueue1", "enqueue8", "e2e", "latency"), default="drain")
    p.add_argument("--system", default="upq-sqlite", choices=[s for s in run.ALL_SYSTEMS if s.startswith("upq")])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "upq-profile.txt"))
    p.add_argument("--mysql-url", default=os.environ.get("UPQ_TEST_MYSQL_URL", run.DEFAULT_MYSQL_URL))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="upqp-", dir="/tmp"))
    ctx = run.Context(argparse.Namespace(mysql_url=args.mysql_url, redis_db=14), tmp)
    gate_open = args.workload in ("e2e", "latency")
    inst = ctx.instance(args.system, gate_open=gate_open)
    spy = None
    out = Path(args.out)
    try:
        if args.workload == "drain":
            cl = run.Clients(inst.spec(), "enqueue", [args.n])
            cl.start()
            cl.collect(run.phase_timeout(args.n))
            run.wait_for(lambda: inst.parked() >= run.WORKERS, 60, "workers parked")
        assert isinstance(inst, run.UpqInstance) and inst.daemon is not None
        role = "latency" if args.workload == "latency" else "enqueue"
        k = 8 if args.workload in ("enqueue8", "e2e") else 1
        n = min(args.n, 500) if role == "latency" else args.n
        cl = run.Clients(inst.spec(), role, run.split(n, k)) if args.workload != "drain" else None
        spy = subprocess.Popen([args.py_spy, "record", "--pid", str(inst.daemon.pid), "--format", "raw",
                                "--threads", "--gil", "--rate", str(args.rate), "--output", str(out),
                                "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        t0 = time.time()
        if args.workload == "drain":
            inst.open_gate()
            t1 = run.wait_done(inst, args.n, run.phase_timeout(args.n))
        elif args.workload == "e2e":
            cl.start()
            cl.collect(run.phase_timeout(n))
            t1 = run.wait_done(inst, n, run.phase_timeout(n))
        else:
            cl.start()
            cl.collect(run.phase_timeout(n) + 2 * n)
            t1 = time.time()
        print(f"{args.system} {args.workload}: {n} jobs in {t1 - t0:.2f} s = {n / (t1 - t0):,.0f}/s")
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        summarize(out, args.top)
        print(f"\ncollapsed stacks: {out}")
        return 0
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        inst.close()
        ctx.procs.kill_all()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
