"""DBQueue: one job type's queue, whose truth is the database.

`put` stores a job (ACK-able once the future resolves); `get` claims due jobs
atomically (new -> running) for the workers that are idle right now, so memory
holds at most one claimed job per idle worker however long the backlog is.
Two shortcuts keep the database round trips per job low: a submission that
finds an idle worker here is stored already claimed by this node and handed
straight to it, and a worker records its outcome and claims its next job in
one transaction (`finish`).
"""
from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable

from upqdb import Database, DatabaseUnavailable
from upqschema import JobRow, Outcome, RetryPolicy, utcnow


class QueueStopped(Exception):
    """The queue is shutting down: workers leave their loop."""


class DBQueue(queue.Queue):
    """A bounded in-memory buffer of claimed jobs, refilled from the database on demand."""

    def __init__(self, db: Database, jobname: str, node: str, logger: logging.Logger,
                 poll_interval: float = 1.0, maxsize: int = 64):
        super().__init__(maxsize=maxsize)
        self.db = db
        self.jobname = jobname
        self.node = node
        self.log = logger
        self.poll_interval = poll_interval
        self._generation = 0        # counts submissions, so a claimer never sleeps past one
        self._claiming = False
        self._waiting = 0
        self._reserved = 0          # idle workers promised a job that is being stored claimed
        self._stopped = False
        self._next_due = float("inf")   # monotonic time a known delayed job becomes due
        self.held_back: set[int] = set()  # jobs whose timed-out run is still alive here

    # -- producer side -----------------------------------------------------
    def put_async(self, params: dict[str, str], parent: int | None = None,
                  delay: float | None = None) -> "Future[int]":
        """Store a job; the future resolves to its id after commit, then a worker is woken."""
        if delay:
            fut = self.db.insert_job_async(self.jobname, params, parent=parent, delay=delay)
            self.wake_at(time.monotonic() + delay)
            return fut
        # a lock-free look first: with every worker busy (a backlog) submissions never touch the
        # queue's lock, which the workers and the writer's callbacks also want
        direct = self._waiting - self._reserved - len(self.queue) > 0
        if direct:
            with self.mutex:
                direct = not self._stopped and self._waiting - self._reserved - self._qsize() > 0
                if direct:
                    self._reserved += 1
        if not direct:
            fut = self.db.insert_job_async(self.jobname, params, parent=parent)
            fut.add_done_callback(lambda _f: self.wake())
            return fut
        now = utcnow()
        fut = self.db.insert_job_async(self.jobname, params, parent=parent, state="running",
                                       node=self.node, now=now)
        fut.add_done_callback(lambda f: self._hand_over(f, params, parent, now))
        return fut

    def _hand_over(self, fut: "Future[int]", params: dict[str, str], parent: int | None,
                   now: dt.datetime) -> None:
        """A job stored already claimed goes straight to the idle worker it was meant for."""
        with self.mutex:
            self._reserved -= 1
            if fut.exception() is None:
                self._put(JobRow(jobid=fut.result(), jobname=self.jobname, state="running", params=params,
                                 msg="", result=None, attempts=1, retries_used=0, created=now, started=now,
                                 finished=None, run_after=None, node=self.node, parent=parent))
                self.not_empty.notify()

    def wake(self) -> None:
        """New work may be due: let one idle worker look."""
        if not self._waiting:
            return      # nobody to wake, and no claim in flight (a claimer counts as waiting)
        with self.mutex:
            self._generation += 1
            self.not_empty.notify()

    def wake_at(self, when: float) -> None:
        """A delayed job becomes due at monotonic time `when`: look then, not a poll later."""
        with self.mutex:
            if when < self._next_due:
                self._next_due = when
                self.not_empty.notify()

    def kick(self) -> None:
        """Wake every waiting worker (one may have to retire)."""
        with self.mutex:
            self.not_empty.notify_all()

    # -- consumer side -----------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None,  # type: ignore[override]
            leave: Callable[[], bool] = lambda: False) -> JobRow:
        """Return a job this node has claimed; QueueStopped at shutdown or when leave() says so."""
        with self.mutex:
            self._waiting += 1
            try:
                return self._get_locked(leave)
            finally:
                self._waiting -= 1

    def _get_locked(self, leave: Callable[[], bool]) -> JobRow:
        backoff = 0.0
        while True:
            if self._stopped or leave():
                raise QueueStopped(self.jobname)
            if self._qsize():
                return self._get()
            # claim for the idle workers not already promised a job being stored for them;
            # they stay promised while the claim runs, so no job is claimed twice over
            want = min(self._waiting - self._reserved, self.maxsize - self._qsize())
            if not self._claiming and want > 0:
                generation = self._generation
                self._reserved += want
                try:
                    rows, failed = self._claim_unlocked(want)
                finally:
                    self._reserved -= want
                for row in rows:
                    self._put(row)
                if rows:
                    self.not_empty.notify_all()
                    backoff = 0.0
                    continue
                if failed:
                    backoff = min(5.0, max(0.2, backoff * 2))
                elif self._generation != generation:
                    continue
            now = time.monotonic()
            if self._next_due <= now:
                self._next_due = float("inf")
                continue
            self.not_empty.wait(backoff or min(self.poll_interval, self._next_due - now))

    def _claim_unlocked(self, want: int) -> tuple[list[JobRow], bool]:
        """Claim with the mutex released so submissions are not blocked meanwhile."""
        self._claiming = True
        self.mutex.release()
        try:
            return self.db.claim(self.jobname, max(1, want), self.node, tuple(self.held_back)), False
        except DatabaseUnavailable as exc:
            self.log.warning("claiming %s jobs failed: %s", self.jobname, exc)
            return [], True
        finally:
            self.mutex.acquire()
            self._claiming = False

    def finish(self, row: JobRow, outcome: Outcome, policy: RetryPolicy,
               done: Callable[[JobRow | None, str], None], stopping: Callable[[], bool] = lambda: False,
               delay: float = 0.2) -> None:
        """Record a run's outcome without making the worker wait for the commit; `done(stored)`
        runs after it (stored is None when fenced out or, with a reason, not recorded at all).
        Retried through a database outage until the daemon stops."""
        fut = self.db.record_outcome_async(row, outcome, self.node, policy)

        def committed(f: "Future[JobRow | None]") -> None:
            exc = f.exception()
            if exc is None:
                stored = f.result()
                if stored is not None and stored.state == "new" and stored.run_after is not None:
                    wait = (stored.run_after - utcnow()).total_seconds()
                    self.wake_at(time.monotonic() + max(0.0, wait))
                done(stored, "")
            elif isinstance(exc, DatabaseUnavailable) and not stopping():
                self.log.warning("job %d: recording outcome failed, retrying in %.1fs: %s", row.jobid, delay, exc)
                t = threading.Timer(delay, self.finish, (row, outcome, policy, done, stopping, min(5.0, delay * 2)))
                t.daemon = True
                t.start()
            else:
                done(None, f"not recorded ({exc}); it will run again")
        fut.add_done_callback(committed)

    def stop(self) -> list[JobRow]:
        """Wake every worker to leave; returns claimed jobs that never started."""
        with self.mutex:
            self._stopped = True
            left = [self._get() for _ in range(self._qsize())]
            self.not_empty.notify_all()
        return left
