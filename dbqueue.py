"""DBQueue: one job type's queue, whose truth is the database.

`put` stores a job (ACK-able once the future resolves); `get` claims due jobs
atomically (new -> running) for the workers that are idle right now, so memory
holds at most one claimed job per idle worker however long the backlog is.
"""
from __future__ import annotations

import logging
import queue
import time
from concurrent.futures import Future

from upqdb import Database, DatabaseUnavailable, JobRow, Outcome


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
        self._stopped = False

    # -- producer side -----------------------------------------------------
    def put_async(self, params: dict[str, str], parent: int | None = None) -> "Future[int]":
        """Store a job; the future resolves to its id after commit, then a worker is woken."""
        fut = self.db.insert_job_async(self.jobname, params, parent=parent)
        fut.add_done_callback(lambda _f: self.wake())
        return fut

    def put(self, params: dict[str, str], block: bool = True, timeout: float | None = None) -> int:  # type: ignore[override]
        """Store a job and return its id once committed."""
        return self.put_async(params).result(timeout)

    def wake(self) -> None:
        """New work may be due: let one idle worker look."""
        with self.mutex:
            self._generation += 1
            self.not_empty.notify()

    # -- consumer side -----------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None) -> JobRow:  # type: ignore[override]
        """Return a job this node has claimed; raises QueueStopped at shutdown."""
        with self.mutex:
            self._waiting += 1
            try:
                return self._get_locked()
            finally:
                self._waiting -= 1

    def _get_locked(self) -> JobRow:
        backoff = 0.0
        while True:
            if self._stopped:
                raise QueueStopped(self.jobname)
            if self._qsize():
                return self._get()
            if not self._claiming:
                generation = self._generation
                rows, failed = self._claim_unlocked(min(self._waiting, self.maxsize))
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
            self.not_empty.wait(backoff or self.poll_interval)

    def _claim_unlocked(self, want: int) -> tuple[list[JobRow], bool]:
        """Claim with the mutex released so submissions are not blocked meanwhile."""
        self._claiming = True
        self.mutex.release()
        try:
            return self.db.claim(self.jobname, max(1, want), self.node), False
        except DatabaseUnavailable as exc:
            self.log.warning("claiming %s jobs failed: %s", self.jobname, exc)
            return [], True
        finally:
            self.mutex.acquire()
            self._claiming = False

    def task_done(self, row: JobRow, outcome: Outcome, stopping: "callable[[], bool]" = lambda: False) -> bool:  # type: ignore[override]
        """Record a run's outcome, retrying through a database outage; False if it was stale."""
        delay = 0.2
        while True:
            try:
                return self.db.record_outcome(row, outcome, self.node)
            except DatabaseUnavailable as exc:
                if stopping():
                    self.log.warning("job %d: outcome not recorded before shutdown (%s); it will run again",
                                     row.jobid, exc)
                    return False
                self.log.warning("job %d: recording outcome failed, retrying in %.1fs: %s",
                                 row.jobid, delay, exc)
                time.sleep(delay)
                delay = min(5.0, delay * 2)

    def stop(self) -> list[JobRow]:
        """Wake every worker to leave; returns claimed jobs that never started."""
        with self.mutex:
            self._stopped = True
            left = [self._get() for _ in range(self._qsize())]
            self.not_empty.notify_all()
        return left
