"""The no-op task every system of bench/run.py runs, and the peers' task registration.

Imported as `bench_tasks` (bench/ on sys.path) by the bench's client processes, by
the huey consumer and by the RQ workers. Configuration comes from the environment,
so the consumer and the clients build the same objects:

  UPQ_BENCH_GATE   a file path: while it does not exist, a task "parks" (sleeps in
                   10 ms steps) after touching <gate>.parked.<pid>.<thread>; once it
                   exists the task returns at once (and never looks again in that
                   process). Used to keep workers busy while jobs are enqueued, so
                   enqueue is measured without workers consuming, and drain starts
                   from a full queue with every worker already running.
  UPQ_BENCH_STAMP  a file path: a task called with a tag appends "<tag> <time.time()>"
                   there as the first thing it does (latency: submit -> run() starts).
  UPQ_BENCH_HUEY   "sqlite:<file>" or "redis:<name>:<redis db>": builds `huey` with the
                   library's documented defaults and registers `huey_noop`.
"""
from __future__ import annotations

import os
import threading
import time

GATE = os.environ.get("UPQ_BENCH_GATE", "")
STAMP = os.environ.get("UPQ_BENCH_STAMP", "")
_gate_open = False


def pass_gate(gate: str = GATE) -> None:
    """Park while the gate file is missing (see the module doc)."""
    global _gate_open
    if _gate_open or not gate:
        return
    if not os.path.exists(gate):
        marker = f"{gate}.parked.{os.getpid()}.{threading.get_ident()}"
        open(marker, "w").close()
        deadline = time.monotonic() + 900        # bounded: never outlive the bench
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
    _gate_open = True


def stamp(tag: object, path: str = STAMP) -> None:
    if tag is not None and path:
        with open(path, "a") as f:
            f.write(f"{tag} {time.time():.6f}\n")


def noop(tag: object = None) -> bool:
    """The peers' no-op: stamp when tagged, pass the gate, return True (a stored result)."""
    stamp(tag)
    pass_gate()
    return True


# -- huey ----------------------------------------------------------------------
huey = None
huey_noop = None
_spec = os.environ.get("UPQ_BENCH_HUEY", "")
if _spec:
    kind, _, rest = _spec.partition(":")
    if kind == "sqlite":
        from huey import SqliteHuey
        huey = SqliteHuey(name="upqbench", filename=rest)           # defaults: WAL, fsync=None
    elif kind == "redis":
        from huey import RedisHuey
        _name, _, _db = rest.rpartition(":")
        huey = RedisHuey(name=_name, host="127.0.0.1", port=6379, db=int(_db))  # blocking=True
    else:
        raise RuntimeError(f"UPQ_BENCH_HUEY: unknown kind {kind!r}")
    huey_noop = huey.task(name="noop")(noop)


# -- upq -------------------------------------------------------------------------
UPQ_JOB_SOURCE = '''"""noop: the benchmark's job type (written by bench/run.py)."""
import os
import threading
import time

from upqjob import UpqJob

_gate_open = False


class Noop(UpqJob):
    def run(self):
        global _gate_open
        tag = self.jobdata.get("tag")
        if tag is not None:
            with open(self.jobcfg["stamp"], "a") as f:
                f.write(f"{tag} {time.time():.6f}\\n")
        if not _gate_open:
            gate = self.jobcfg["gate"]
            if not os.path.exists(gate):
                open(f"{gate}.parked.{os.getpid()}.{threading.get_ident()}", "w").close()
                deadline = time.monotonic() + 900
                while not os.path.exists(gate) and time.monotonic() < deadline:
                    time.sleep(0.01)
            _gate_open = True
        for i in range(int(self.jobcfg.get("log_lines", "0"))):
            self.logger.info("line %d", i)
        return True
'''
