"""Retention: ended jobs are deleted keep_done / keep_failed / keep_cancelled after they ended.

A background thread ("retention", owned by upq.py) visits every type of upq_types and each
final state, and deletes expired rows in batches of at most BATCH rows, each batch its own
short write (ids picked by ix_upq_jobs_ended, then deleted by primary key), so submissions
sharing the writer are never held up for long. Deleting by id and state is idempotent: every
daemon may run it at once. `purge` uses the same batches at once. A job's rows in other
tables (JOB_TABLES: its log lines, when a table for them exists) go with it.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Callable

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from parseconfig import Config, JobConfig
from upqdb import Database
from upqerrors import DatabaseUnavailable
from upqpause import known_types
from upqschema import jobs, metadata, utcnow
from upqstates import FINAL, State

BATCH = 1000                    # rows deleted per transaction at most
MIN_BATCH = 100
BATCH_SECONDS = 0.01            # what one batch's write should take (its size adapts)
PAUSE_BETWEEN = 0.005           # seconds between batches at least, so submissions keep their share
# tables whose rows belong to a job (column `jobid`); one that does not exist is skipped
JOB_TABLES = ("upq_job_logs",)


def keep_for(server: "Config", job: JobConfig | None, state: State) -> float:
    """Seconds a job of this type in this final state is kept after it ended; 0 = forever."""
    key = f"keep_{state.value}"
    own = None if job is None else getattr(job, key)
    return float(getattr(server.server, key) if own is None else own)


def delete_jobs(conn: Connection, ids: list[int], state: State) -> int:
    """Delete these jobs (if still in `state`) and their rows in JOB_TABLES; how many went."""
    for name in JOB_TABLES:
        table = metadata.tables.get(name)
        if table is not None and "jobid" in table.c:
            conn.execute(delete(table).where(table.c.jobid.in_(ids),
                                             table.c.jobid.in_(select(jobs.c.jobid).where(
                                                 jobs.c.jobid.in_(ids), jobs.c.state == state))))
    return conn.execute(delete(jobs).where(jobs.c.jobid.in_(ids), jobs.c.state == state)).rowcount


def purge_batches(db: Database, jobname: str, state: State, cutoff: dt.datetime,
                  go_on: Callable[[], bool] = lambda: True, gentle: bool = True) -> int:
    """Delete `jobname`'s jobs in final `state` that ended before `cutoff`, in batches of at
    most BATCH rows. `gentle` (the background purge): batches sized so each write takes about
    BATCH_SECONDS (a submission waiting behind one waits no longer), each followed by at least
    as long a pause; else (`purge`, asked for now) full batches with short pauses."""
    assert state in FINAL
    total, size = 0, BATCH
    pick = (select(jobs.c.jobid).where(jobs.c.jobname == jobname, jobs.c.state == state,
                                       jobs.c.finished < cutoff).order_by(jobs.c.finished))
    while go_on():
        ids = db._read(lambda conn: [int(r[0]) for r in conn.execute(pick.limit(size))])
        if not ids:
            break
        t0 = time.monotonic()
        total += db.write(lambda conn: delete_jobs(conn, ids, state))
        took = time.monotonic() - t0
        if len(ids) < size:
            break
        if gentle:
            size = (max(MIN_BATCH, size // 2) if took > BATCH_SECONDS else
                    min(BATCH, size * 2) if took < BATCH_SECONDS / 2 else size)
        time.sleep(max(PAUSE_BETWEEN, took) if gentle else PAUSE_BETWEEN)
    return total


def purge(db: Database, state: State, older: float, jobname: str | None) -> int:
    """The `purge` command: delete at once the jobs in `state` that ended `older` seconds ago."""
    cutoff = utcnow() - dt.timedelta(seconds=older)
    names = [jobname] if jobname else known_types(db)
    return sum(purge_batches(db, name, state, cutoff, gentle=False) for name in names)


class Retention:
    """The background purge; `config` is read anew at each pass (a reload may change it)."""

    def __init__(self, db: Database, config: Callable[[], Config], logger: logging.Logger):
        self.db = db
        self.config = config
        self.log = logger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def interval(self) -> float:
        """Half the shortest keep, between 1 s and 60 s: a short keep is honoured closely."""
        cfg = self.config()
        keeps = [keep_for(cfg, job, s) for job in [None, *cfg.jobs.values()] for s in FINAL]
        keeps = [k for k in keeps if k > 0]
        return min(60.0, max(1.0, min(keeps, default=60.0) / 2))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval()):
            try:
                n = self.run_once()
                if n:
                    self.log.info("retention: deleted %d ended job(s)", n)
            except DatabaseUnavailable as exc:
                self.log.warning("retention: %s", exc)
            except Exception:  # noqa: BLE001 - the thread must live on
                self.log.exception("retention pass failed")

    def run_once(self) -> int:
        """One pass over every known type and final state."""
        cfg, now, total = self.config(), utcnow(), 0
        for name in known_types(self.db):
            for state in sorted(FINAL):
                keep = keep_for(cfg, cfg.jobs.get(name), state)
                if keep > 0 and not self._stop.is_set():
                    total += purge_batches(self.db, name, state, now - dt.timedelta(seconds=keep),
                                           lambda: not self._stop.is_set())
        return total
