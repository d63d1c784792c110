"""The control commands: status, list, stats, cancel, retry and wait.

They read and change jobs through the storage interface, and reach the runs of
this daemon through the queue manager (a cancel must stop a job leased or
running here). `Completions` lets `wait` sleep until a job ends here rather
than poll the database hard; it is one of the manager's after-outcome hooks.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable

from dbqueue import DBQueue
from upqdb import Database
from upqerrors import DatabaseUnavailable, JobRejected, UnknownJob
from upqqueuemngr import Ended, QueueManager
from upqschema import JobRow
from upqstates import FINAL, SHOWN, State, can_retry, shown


class EndEvent(threading.Event):
    """Set when a job may have ended; carries the final row when the notifier knew it."""
    row: JobRow | None = None


class Completions:
    """Waiters per jobid, under `_lock`; woken from the writer thread once an outcome is in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[int, set[EndEvent]] = {}

    def register(self, jobid: int) -> EndEvent:
        ev = EndEvent()
        with self._lock:
            self._events.setdefault(jobid, set()).add(ev)
        return ev

    def unregister(self, jobid: int, ev: EndEvent) -> None:
        with self._lock:
            evs = self._events.get(jobid)
            if evs is not None:
                evs.discard(ev)
                if not evs:
                    del self._events[jobid]

    def notify(self, jobid: int, row: JobRow | None = None) -> None:
        """The job may have ended; `row`, when given, is how it ended (saves the waiter a read)."""
        with self._lock:
            for ev in self._events.get(jobid, ()):
                ev.row = row
                ev.set()

    def on_ended(self, ended: Ended) -> None:
        """The after-outcome hook."""
        self.notify(ended.row.jobid, ended.stored)


class Control:
    """Carries out the control commands for one daemon."""

    def __init__(self, manager: QueueManager, db: Database, completions: Completions, poll_interval: float):
        self.manager = manager
        self.db = db
        self.completions = completions
        self.poll_interval = poll_interval

    def status(self, jobid: int) -> tuple[JobRow, list[dict[str, Any]]]:
        """The job and its children."""
        row = self.db.get_job(jobid)
        if row is None:
            raise UnknownJob(f"no job {jobid}")
        return row, self.db.children(jobid)

    def list(self, state: State | None, limit: int) -> list[JobRow]:
        return self.db.list_jobs(state, limit)

    def stats(self) -> dict[str, Any]:
        """Counts per job type and state as shown, the type's workers, and the nodes."""
        counts = self.db.count_by_state()
        types = self.manager.types
        jobs: dict[str, Any] = {}
        for name in sorted(set(counts) | set(types)):
            per = counts.get(name, {})
            jt = types.get(name)
            jobs[name] = {"queued": per.get(State.NEW, 0),
                          **{s.value: per.get(s, 0) for s in SHOWN if s != State.NEW},
                          "workers": 0 if jt is None else jt.config.concurrent,
                          "paused": self.manager.is_paused(name)}
        return {"jobs": jobs, "nodes": self.db.list_nodes()}

    def cancel(self, jobid: int) -> JobRow:
        """A queued job never runs; a running one sees job.cancelled and ends cancelled."""
        res = self._cancel_in_db(jobid, self.manager.withdraw(jobid))
        if res is None:
            raise UnknownJob(f"no job {jobid}")
        before, row = res
        if before in FINAL:
            raise JobRejected(f"job {jobid} has already ended ({before}); nothing to cancel")
        if row.state in (State.RUNNING, State.LEASED):     # leased: a worker here is starting it
            self.manager.runs.flag_cancelled([jobid])
        self.completions.notify(jobid)
        return row

    def flag_cancelled(self, jobids: list[int]) -> None:
        """Cancels asked on another daemon (seen at the heartbeat): runs here see job.cancelled,
        jobs leased here and not started yet are cancelled."""
        for jobid in jobids:
            withdrawn = self.manager.withdraw(jobid)
            if withdrawn is not None:
                with contextlib.suppress(DatabaseUnavailable):      # given back: cancelled when released
                    self._cancel_in_db(jobid, withdrawn)
        self.manager.runs.flag_cancelled(jobids)

    def _cancel_in_db(self, jobid: int, withdrawn: tuple[DBQueue, JobRow] | None) -> tuple[State, JobRow] | None:
        """db.cancel; a lease withdrawn for it goes back if the database cannot take the cancel."""
        try:
            return self.db.cancel(jobid, self.manager.node, withdrawn is not None)
        except DatabaseUnavailable:
            if withdrawn is not None:
                withdrawn[0].give_back([withdrawn[1]])
            raise

    def retry(self, jobid: int) -> JobRow:
        """Queue a failed or cancelled job again: same jobid, a fresh retries budget."""
        old = self.db.get_job(jobid)
        if old is not None and old.unique_digest and can_retry(old.state):
            twin = self.db.twin_of(old.jobname, old.unique_digest)
            if twin is not None and twin != jobid:
                raise JobRejected(f"job {jobid} is unique and its twin, job {twin}, is queued or running")
        res = self.db.retry(jobid)
        if res is None:
            raise UnknownJob(f"no job {jobid}")
        before, row = res
        if not can_retry(before):
            raise JobRejected(f"job {jobid} is {shown(before)}; "
                              "only failed or cancelled jobs can be retried")
        self.manager.wake(row.jobname)
        return row

    def wait(self, jobid: int, timeout: float | None, gone: Callable[[], bool] = lambda: False) -> JobRow | None:
        """Block until the job has ended; None on timeout or when the client went away."""
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True
        while True:
            ev = self.completions.register(jobid)
            try:
                # a job running here, or whose outcome is being committed, will wake `ev` (its
                # end is reported after the run is settled): no need to read it the first time
                if not (first and self.manager.runs.unsettled(jobid)):
                    row = self.db.get_job(jobid)
                    if row is None:
                        raise UnknownJob(f"no job {jobid}")
                    if row.is_final:
                        return row
                first = False
                step = self.poll_interval
                if deadline is not None:
                    step = min(step, deadline - time.monotonic())
                    if step <= 0:
                        return None
                if ev.wait(step) and ev.row is not None and ev.row.is_final:
                    return ev.row
            finally:
                self.completions.unregister(jobid, ev)
            if gone():
                return None
