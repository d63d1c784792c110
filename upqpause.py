"""Pause and resume of job types, stored in upq_types so every daemon sharing the database obeys.

A paused type still accepts submissions; no daemon claims its jobs (runs under way finish).
Each daemon re-reads the paused set every `poll_interval` on its own thread ("pause-watch")
and tells the queues whose state changed; a pause or resume sent to this daemon applies here
at once. The same table holds the row a capped submission (max_queued) locks, so capped
inserts of one type are serialized across daemons (see `capped_insert`).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from groupcommit import RowInsert
from upqdb import Database
from upqerrors import DatabaseUnavailable, UpqError
from upqschema import jobs, types, utcnow
from upqstates import QUEUED


class QueueFull(UpqError):
    """A submission to a type that already has max_queued jobs queued."""


def register_types(db: Database, names: Iterable[str]) -> None:
    """Make sure every type this daemon serves has its upq_types row (idempotent)."""
    for name in names:
        def op(conn: Connection, name: str = name) -> None:
            if conn.execute(select(types.c.jobname).where(types.c.jobname == name)).first() is None:
                conn.execute(insert(types).values(jobname=name, paused=0, changed=utcnow()))
        try:
            db.write(op)
        except (IntegrityError, DatabaseUnavailable):
            pass        # another daemon made it meanwhile, or the database is away: made later


def known_types(db: Database) -> list[str]:
    """Every type any daemon has served (a small table: one row per type)."""
    return db._read(lambda conn: [r[0] for r in conn.execute(select(types.c.jobname))])


def capped_insert(jobname: str, values: dict[str, Any], cap: int) -> Callable[[Connection], int]:
    """A writer op storing a job unless `cap` jobs of its type are queued; 0 when it did not.

    It locks the type's upq_types row first (MySQL: FOR UPDATE; SQLite's writer holds the whole
    file), so on one database capped submissions of a type are counted one after the other."""
    def op(conn: Connection) -> int:
        conn.execute(select(types.c.jobname).where(types.c.jobname == jobname).with_for_update()).first()
        queued = select(jobs.c.jobid).where(jobs.c.jobname == jobname, jobs.c.state.in_(QUEUED)).limit(cap)
        n = conn.execute(select(func.count()).select_from(queued.subquery())).scalar_one()
        if n >= cap:
            return 0
        return RowInsert(jobs, values)(conn)
    return op


class Pauses:
    """The paused set as last read, under `_lock`; `watch` pushes changes to `on_change`."""

    def __init__(self, db: Database, logger: logging.Logger, interval: float,
                 on_change: Callable[[str, bool], None]):
        self.db = db
        self.log = logger
        self.interval = interval
        self.on_change = on_change
        self._lock = threading.Lock()
        self._paused: frozenset[str] = frozenset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pause-watch", daemon=True)

    def is_paused(self, jobname: str) -> bool:
        return jobname in self._paused

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except DatabaseUnavailable as exc:
                self.log.warning("reading paused job types failed: %s", exc)

    def refresh(self) -> None:
        """Read the paused set; tell on_change about every type whose state changed."""
        now = frozenset(self.db._read(lambda conn: [r[0] for r in conn.execute(
            select(types.c.jobname).where(types.c.paused == 1))]))
        self._apply(now)

    def _apply(self, now: frozenset[str]) -> None:
        with self._lock:
            before, self._paused = self._paused, now
        for name in sorted(before ^ now):
            self.log.info("job type %s %s", name, "paused" if name in now else "resumed")
            self.on_change(name, name in now)

    def set(self, jobname: str, paused: bool) -> None:
        """Store the pause (or its end) and apply it here at once."""
        def op(conn: Connection) -> None:
            res = conn.execute(update(types).where(types.c.jobname == jobname)
                               .values(paused=int(paused), changed=utcnow()))
            if res.rowcount == 0:
                conn.execute(insert(types).values(jobname=jobname, paused=int(paused), changed=utcnow()))
        self.db.write(op)
        with self._lock:
            now = self._paused | {jobname} if paused else self._paused - {jobname}
        self._apply(frozenset(now))
