"""DBQueue: one job type's queue, whose truth is the database.

`put_async` stores a job (ACK-able once the future resolves); `get` hands a
worker a job it has started. Memory holds a bounded number of claimed jobs
however long the backlog is. The writer thread's CPU is what limits a busy
daemon, so the database work per job is kept low:
- a submission that finds an idle worker here is stored already running on
  this node and handed straight to it;
- outcomes are recorded without the worker waiting (upqqueuemngr);
- while this daemon is alone on its database (`set_leasing`), a claim leases as
  many due jobs as the workers run within LEASE_WINDOW seconds (at least one per
  idle worker): new -> leased, reserved for this node and still shown as new. A
  worker starts one (leased -> running) without waiting for that commit either;
  its outcome is fenced on the start. A cancel takes a leased job out of this
  queue first (`withdraw`), so no worker starts it. After a crash, leases go back
  to new with `attempts` counted up, since a start may have been under way.
- With other daemons on the database, a claim takes one job per idle worker,
  new -> running, as a cancel sent to another daemon must be able to stop a job
  that has not started.
A lease not started within `lease_validity` seconds (node_timeout / 2) is given
back rather than started: a paused daemon cannot start a job reaped meanwhile.
"""
from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
import time
from typing import Callable

from groupcommit import Pending
from upqdb import Database
from upqerrors import DatabaseUnavailable, QueueStopped
from upqschema import JobRow, utcnow
from upqstates import State

LEASE_WINDOW = 0.05         # seconds of the workers' runs leased ahead (fast jobs only)
LEASE_MAX = 256             # jobs leased at most, per type


class DBQueue:
    """A bounded in-memory buffer of claimed jobs, refilled from the database on demand.

    Everything below `_cond` is guarded by it (workers, submitters and the writer's
    callbacks all come here); `_hand_over` and `wake_at` run on the writer thread, so
    nothing may wait for the writer while holding `_cond`."""

    def __init__(self, db: Database, jobname: str, node: str, logger: logging.Logger,
                 poll_interval: float = 1.0, slots: int = 1, lease_validity: float = 15.0):
        self.db = db
        self.jobname = jobname
        self.node = node
        self.log = logger
        self.poll_interval = poll_interval
        self.lease_validity = lease_validity
        self._cond = threading.Condition()
        self._buffer: collections.deque[tuple[JobRow, float]] = collections.deque()  # (row, lease end)
        self._slots = slots         # the type's worker slots: how many jobs a claim may take
        self._generation = 0        # counts submissions, so a claimer never sleeps past one
        self._claiming = False
        self._waiting = 0           # workers in get() (read without the lock as a hint)
        self._reserved = 0          # idle workers promised a job that is being stored claimed
        self._stopped = False
        self._next_due = float("inf")   # monotonic time a known delayed job becomes due
        self._held_back: set[int] = set()  # jobs whose timed-out run is still alive here
        self._avg_run = 1.0         # seconds per run (moving average); slow until measured
        self._leasing = False       # alone on the database: lease ahead (set_leasing)
        self._paused = False        # the type is paused (upqpause.py): claim nothing

    # -- producer side -----------------------------------------------------
    def put_async(self, params: dict[str, str], parent: int | None = None,
                  delay: float | None = None, priority: int = 0, cap: int = 0) -> "Pending[int]":
        """Store a job; the future resolves to its id after commit (0 if `cap` jobs are queued)."""
        if delay:
            fut = self.db.insert_job_async(self.jobname, params, parent=parent, delay=delay, priority=priority,
                                           cap=cap)
            self.wake_at(time.monotonic() + delay)
            return fut
        # a lock-free look first: with every worker busy (a backlog) submissions never touch the
        # queue's lock, which the workers and the writer's callbacks also want
        direct = not self._paused and self._waiting - self._reserved - len(self._buffer) > 0
        if direct:
            with self._cond:
                direct = (not self._stopped and not self._paused
                          and self._waiting - self._reserved - len(self._buffer) > 0)
                if direct:
                    self._reserved += 1
        if not direct:
            fut = self.db.insert_job_async(self.jobname, params, parent=parent, priority=priority, cap=cap)
            fut.add_done_callback(lambda _f: self.wake())
            return fut
        now = utcnow()
        fut = self.db.insert_job_async(self.jobname, params, parent=parent, state=State.RUNNING,
                                       node=self.node, now=now, priority=priority)
        fut.add_done_callback(lambda f: self._hand_over(f, params, parent, now, priority))
        return fut

    def _hand_over(self, fut: "Pending[int]", params: dict[str, str], parent: int | None,
                   now: dt.datetime, priority: int = 0) -> None:
        """A job stored already claimed goes straight to the idle worker it was meant for."""
        with self._cond:
            self._reserved -= 1
            if fut.exception() is None:
                self._buffer.append((JobRow(jobid=fut.result(), jobname=self.jobname, state=State.RUNNING,
                                            params=params, msg="", result=None, attempts=1, retries_used=0,
                                            created=now, started=now, finished=None, run_after=None,
                                            node=self.node, parent=parent, priority=priority),
                                     float("inf")))
                self._cond.notify()

    def wake(self) -> None:
        """New work may be due: let one idle worker look."""
        if not self._waiting:
            return      # nobody to wake, and no claim in flight (a claimer counts as waiting)
        with self._cond:
            self._generation += 1
            self._cond.notify()

    def wake_at(self, when: float) -> None:
        """A delayed job becomes due at monotonic time `when`: look then, not a poll later."""
        with self._cond:
            if when < self._next_due:
                self._next_due = when
                self._cond.notify()

    def kick(self) -> None:
        """Wake every waiting worker (one may have to retire)."""
        with self._cond:
            self._cond.notify_all()

    def resize(self, slots: int) -> None:
        """The type's worker slots changed (reload)."""
        with self._cond:
            self._slots = slots
            self._cond.notify_all()

    def hold_back(self, jobid: int) -> None:
        """A timed-out run of this job is still alive here: do not claim the job meanwhile."""
        with self._cond:
            self._held_back.add(jobid)

    def release_hold(self, jobid: int) -> None:
        with self._cond:
            self._held_back.discard(jobid)
            self._generation += 1
            self._cond.notify()

    # -- consumer side -----------------------------------------------------
    def get(self, leave: Callable[[], bool] = lambda: False) -> JobRow:
        """Return a job this node has started; QueueStopped at shutdown or when leave() says so."""
        while True:
            with self._cond:
                self._waiting += 1
                try:
                    row, lease_end = self._get_locked(leave)
                finally:
                    self._waiting -= 1
            if row.state != State.LEASED:
                return row          # claimed or handed over already running
            if time.monotonic() > lease_end:
                self.log.info("job %d: leased over %gs ago and not started; giving it back",
                              row.jobid, self.lease_validity)
                self.give_back([row])
                continue
            fut, started = self.db.start_async(row, self.node)
            fut.add_done_callback(self._started)
            return started

    def _started(self, fut: "Pending[bool]") -> None:
        if fut.exception() is None and not fut.result():
            self.log.warning("a leased %s job was taken over before its start was recorded (this "
                             "daemon was paused?); its run's outcome will be discarded", self.jobname)

    def ran(self, seconds: float) -> None:
        """A run took `seconds`: how far ahead to lease follows how fast jobs run (a hint, no lock)."""
        self._avg_run += 0.2 * (seconds - self._avg_run)

    def set_leasing(self, on: bool) -> None:
        """Lease ahead only while alone on the database; leases held when that ends go back."""
        with self._cond:
            self._leasing = on
            back = [] if on else self._take_out(lambda row: row.state == State.LEASED)
        self.give_back(back)

    def set_paused(self, on: bool) -> None:
        """A paused type claims nothing more (jobs leased already, ~50 ms of work, still start)."""
        with self._cond:
            self._paused = on
            self._cond.notify_all()

    def withdraw(self, jobid: int) -> JobRow | None:
        """Take a leased job out before a worker has it (to cancel it); the job if it was here."""
        with self._cond:
            out = self._take_out(lambda row: row.jobid == jobid and row.state == State.LEASED)
        return out[0] if out else None

    def give_back(self, rows: list[JobRow]) -> None:
        """Claimed or leased jobs this queue will not start go back to new for any daemon."""
        if not rows:
            return
        try:
            self.db.unclaim(rows, self.node)
        except DatabaseUnavailable as exc:
            self.log.warning("%d claimed %s job(s) stay reserved for this daemon until it restarts: %s",
                             len(rows), self.jobname, exc)

    def stop(self) -> None:
        """Wake every worker to leave; claimed jobs that never started go back."""
        with self._cond:
            self._stopped = True
            left = [row for row, _ in self._buffer]
            self._buffer.clear()
            self._cond.notify_all()
        self.give_back(left)

    # -- claiming (caller holds _cond) ------------------------------------
    def _take_out(self, match: Callable[[JobRow], bool]) -> list[JobRow]:
        """Remove the buffered jobs that match."""
        out = [row for row, _ in self._buffer if match(row)]
        if out:
            keep = [entry for entry in self._buffer if not match(entry[0])]
            self._buffer.clear()
            self._buffer.extend(keep)
        return out

    def _want(self) -> int:
        """How many jobs one claim takes: one per idle worker not promised a job being stored
        for it, and when leasing, what the workers run within LEASE_WINDOW."""
        idle = self._waiting - self._reserved
        if not self._leasing:
            return min(idle, self._slots - len(self._buffer))
        ahead = int(self._slots * LEASE_WINDOW / max(self._avg_run, 1e-5))
        return min(max(idle, ahead), LEASE_MAX) - len(self._buffer)

    def _get_locked(self, leave: Callable[[], bool]) -> tuple[JobRow, float]:
        backoff = 0.0
        while True:
            if self._stopped or leave():
                raise QueueStopped(f"{self.jobname}: upq is stopping")
            if self._buffer:
                return self._buffer.popleft()
            # claim for the idle workers not already promised a job being stored for them;
            # they stay promised while the claim runs, so no job is claimed twice over
            want = 0 if self._paused else self._want()
            if not self._claiming and want > 0:
                generation = self._generation
                self._reserved += want
                lease = self._leasing
                try:
                    rows, failed = self._claim_unlocked(want, lease)
                finally:
                    self._reserved -= want
                if lease and not self._leasing and rows:
                    # leasing ended while we claimed (rare): give them back, without the lock,
                    # which the writer's callbacks take (holding it while waiting on the writer
                    # would deadlock)
                    self._cond.release()
                    try:
                        self.give_back(rows)
                    finally:
                        self._cond.acquire()
                    rows = []
                lease_end = time.monotonic() + self.lease_validity
                self._buffer.extend((row, lease_end) for row in rows)
                if rows:
                    self._cond.notify_all()
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
            self._cond.wait(backoff or min(self.poll_interval, self._next_due - now))

    def _claim_unlocked(self, want: int, lease: bool) -> tuple[list[JobRow], bool]:
        """Claim with the lock released so submissions are not blocked meanwhile."""
        self._claiming = True
        held_back = tuple(self._held_back)
        self._cond.release()
        try:
            return self.db.claim(self.jobname, max(1, want), self.node, held_back, lease=lease), False
        except DatabaseUnavailable as exc:
            self.log.warning("claiming %s jobs failed: %s", self.jobname, exc)
            return [], True
        finally:
            self._cond.acquire()
            self._claiming = False
