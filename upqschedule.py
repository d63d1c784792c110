"""Periodic jobs: the scheduler thread submits each due time of a schedule exactly once.

Exactly once across daemons is the database's job: a due time becomes a row of
upq_schedule_runs, whose primary key is (job type, due time), inserted in the same
transaction as the job it submits. A daemon that loses the race inserts nothing (the
insert is ignored) and says so at debug level only. Due times missed while every daemon
was down (the first missed one more than STALE seconds old) are made up once: one run,
due at the latest missed time, its run row noted `catch-up of <n> missed`. Owned by
upq.py (started after the workers, stopped before them).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from upqcron import UTC, latest_due
from upqdb import Database
from upqerrors import UpqError
from upqjobkeys import Periodic
from upqqueuemngr import QueueManager
from upqschema import iso, jobs, schedule_runs, utcnow
from upqstates import QUEUED, State, shown
from upqsubmit import Submitter
from upqunique import insert_ignore

TICK = 1.0          # seconds between looks at the schedules
STALE = 10.0        # a due time this old at a look was missed (every daemon was down): catch up
MAX_PER_TICK = 100  # due times submitted one by one in one look; more are a catch-up
NOTE_QUEUED, NOTE_SKIPPED, NOTE_REJECTED = "", "skipped: previous run still active", "rejected by check()"


def aware(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=UTC)


def naive(t: dt.datetime) -> dt.datetime:
    return t.astimezone(UTC).replace(tzinfo=None)


def plan(periodic: Periodic, since: dt.datetime, now: dt.datetime) -> list[tuple[dt.datetime, str]]:
    """The due times in (since, now] to submit now, each with its note (aware UTC)."""
    sched = periodic.schedule
    first = sched.next_after(since)
    if first is None or first > now:
        return []
    if (now - first).total_seconds() > STALE:
        last, missed = latest_due(sched, since, now)
        assert last is not None
        return [(last, f"catch-up of {missed} missed" if missed > 1 else "catch-up")]
    out, due = [], first
    while due is not None and due <= now and len(out) < MAX_PER_TICK:
        out.append((due, NOTE_QUEUED))
        due = sched.next_after(due)
    return out


class Scheduler:
    """One thread; looks at every enabled periodic type each TICK seconds."""

    def __init__(self, db: Database, submitter: Submitter, manager: QueueManager,
                 log: logging.Logger, node: str):
        self.db, self.submitter, self.manager = db, submitter, manager
        self.log, self.node = log, node
        self._stop = threading.Event()
        self._since: dict[str, dt.datetime] = {}    # types without runs yet: when first seen
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def periodic_types(self) -> dict[str, Periodic]:
        return {name: jt.config.periodic for name, jt in list(self.manager.types.items())
                if jt.config.periodic is not None}

    def _loop(self) -> None:
        # looks just after each whole TICK of the clock, so a due time is submitted at once
        # (and daemons sharing the database race for it, which the primary key settles)
        while not self._stop.wait(TICK - time.time() % TICK + 0.02):
            for name, periodic in self.periodic_types().items():
                if self._stop.is_set():
                    return
                try:
                    self.look(name, periodic)
                except UpqError as exc:
                    self.log.warning("schedule of %s: %s", name, exc.reason)
                except Exception:  # noqa: BLE001 - the scheduler thread must not die
                    self.log.exception("schedule of %s failed", name)

    def _last_due(self, name: str) -> tuple[dt.datetime | None, dt.datetime]:
        """(the latest due time stored for the type, the database's now), aware UTC."""
        def q(conn: Connection) -> tuple[dt.datetime | None, dt.datetime]:
            last = conn.execute(select(func.max(schedule_runs.c.due))
                                .where(schedule_runs.c.jobname == name)).scalar()
            return (None if last is None else aware(last)), aware(self.db.db_now(conn, exact=False))
        return self.db.read(q)

    def look(self, name: str, periodic: Periodic) -> list[int]:
        """Submit what is due for one type now; the jobids this daemon stored."""
        last, now = self._last_due(name)
        since = last if last is not None else self._since.setdefault(name, now)
        stored = []
        for due, note in plan(periodic, since, now):
            jobid = self._submit(name, periodic, due, note)
            if jobid is not None:
                stored.append(jobid)
        if stored:
            self.manager.wake(name)
        return stored

    def _submit(self, name: str, periodic: Periodic, due: dt.datetime, note: str) -> int | None:
        """One due time: check() the run, then store it unless another daemon already did."""
        try:
            params: dict[str, str] | None = self.submitter.checked(name, dict(periodic.params))
        except UpqError as exc:
            self.log.warning("periodic %s due %s: %s", name, iso(naive(due)), exc.reason)
            params = None
        prio_rank = -self.manager.job_type(name).config.priority

        def op(conn: Connection) -> int | None:
            won = conn.execute(insert_ignore(schedule_runs), dict(
                jobname=name, due=naive(due), jobid=None, node=self.node,
                note=NOTE_REJECTED if params is None else note)).rowcount == 1
            if not won:
                return None
            if params is None:
                return None
            if periodic.overlap == "skip" and self._previous_active(conn, name):
                conn.execute(update(schedule_runs).where(schedule_runs.c.jobname == name,
                                                         schedule_runs.c.due == naive(due))
                             .values(note=NOTE_SKIPPED))
                self.log.info("periodic %s due %s skipped: its previous run is still queued or running",
                              name, iso(naive(due)))
                return None
            jobid = int(conn.execute(insert(jobs), dict(
                jobname=name, state=State.NEW, params=json.dumps(params, ensure_ascii=False), msg="",
                attempts=0, retries_used=0, created=utcnow(), started=None, run_after=None, node=None,
                parent=None, cancel_requested=0, due=naive(due),
                prio_rank=prio_rank)).inserted_primary_key[0])
            conn.execute(update(schedule_runs).where(schedule_runs.c.jobname == name,
                                                     schedule_runs.c.due == naive(due)).values(jobid=jobid))
            return jobid
        jobid = self.db.write(op)
        if jobid is None:
            self.log.debug("periodic %s due %s: stored by another daemon or not run", name, iso(naive(due)))
        else:
            self.log.info("periodic %s due %s: job %d%s", name, iso(naive(due)), jobid,
                          f" ({note})" if note else "")
        return jobid

    @staticmethod
    def _previous_active(conn: Connection, name: str) -> bool:
        """Whether the schedule's latest submitted run is still queued or running."""
        prev = conn.execute(select(schedule_runs.c.jobid).where(
            schedule_runs.c.jobname == name, schedule_runs.c.jobid.is_not(None))
            .order_by(schedule_runs.c.due.desc()).limit(1)).scalar()
        if prev is None:
            return False
        state = conn.execute(select(jobs.c.state).where(jobs.c.jobid == prev)).scalar()
        return state is not None and (state in QUEUED or state == State.RUNNING)

    def describe(self) -> list[dict[str, Any]]:
        """`schedules`: per periodic type its schedule, zone, next and last due time, last run."""
        def q(conn: Connection) -> list[dict[str, Any]]:
            now = aware(self.db.db_now(conn, exact=False))
            out = []
            for name, p in sorted(self.periodic_types().items()):
                last = conn.execute(select(schedule_runs).where(schedule_runs.c.jobname == name)
                                    .order_by(schedule_runs.c.due.desc()).limit(1)).first()
                state = None
                if last is not None and last.jobid is not None:
                    state = conn.execute(select(jobs.c.state).where(jobs.c.jobid == last.jobid)).scalar()
                nxt = p.schedule.next_after(now)
                out.append({"jobname": name, "schedule": p.text, "tz": p.tz,
                            "next": None if nxt is None else iso(naive(nxt)),
                            "last": None if last is None else iso(last.due),
                            "last_jobid": None if last is None or last.jobid is None else int(last.jobid),
                            "last_state": None if state is None else shown(state).value,
                            "last_note": None if last is None else last.note,
                            "overlap": p.overlap})
            return out
        return self.db.read(q)
