"""Who is running what: a job type's worker slots, and the runs on this daemon.

Each job type has its own `Slots` with its own lock, so one type's workers never
wake or wait for another's. `Runs` maps the jobs running here to their run, for
cancel, lending and `wait`.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from upqjob import UpqJob


@dataclass(slots=True)
class Run:
    """One run on this daemon; `holds_slot` and `ended` change under its type's Slots lock."""
    job: UpqJob
    slots: "Slots"
    holds_slot: bool            # a worker's run holds one of the type's slots; an inline run none
    ended: bool = False


class Slots:
    """One job type's worker accounting; every field is guarded by `_cond`.

    size: slots (concurrent, at least 1); live: worker threads alive; lent: runs waiting on
    a child (each allows one extra worker); active: runs holding a slot; abandoned: timed-out
    runs whose thread is still alive (with `size` of them the type claims nothing)."""

    def __init__(self, size: int):
        self._cond = threading.Condition()
        self.size = size
        self.live = 0
        self.lent = 0
        self.active = 0
        self.abandoned = 0
        self._threads: list[threading.Thread] = []

    def add_worker(self, t: threading.Thread, prefix: str) -> None:
        """Count a worker thread about to start (and name it)."""
        with self._cond:
            self.live += 1
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.name = f"{prefix}{len(self._threads)}"

    def threads(self) -> list[threading.Thread]:
        with self._cond:
            return list(self._threads)

    def busy(self) -> tuple[int, int, int]:
        """(active, abandoned, size) in one look, for metrics, the dashboard and `why`."""
        with self._cond:
            return self.active, self.abandoned, self.size

    def try_retire(self) -> bool:
        """An extra worker (its lender resumed, or the type shrank) leaves: True if it should."""
        with self._cond:
            if self.live > self.size + self.lent:
                self.live -= 1
                return True
            return False

    def leave(self) -> None:
        with self._cond:
            self.live -= 1

    def resize(self, size: int) -> int:
        """New `size` (reload); returns how many worker threads to add."""
        with self._cond:
            self.size = size
            self._cond.notify_all()
            return max(0, size + self.lent - self.live)

    def acquire(self, stopping: Callable[[], bool]) -> None:
        """Wait for a free slot (never past the daemon's stop)."""
        with self._cond:
            while self.active >= self.size and not stopping():
                self._cond.wait(1.0)
            self.active += 1

    def finish(self, run: Run) -> None:
        """The run has ended: its slot, if it holds one, is free."""
        with self._cond:
            run.ended = True
            if run.holds_slot:
                run.holds_slot = False
                self.active -= 1
                self._cond.notify_all()

    def lend(self, run: Run) -> tuple[bool, bool]:
        """The run waits on a child: free its slot. (lent, whether a worker must be added)."""
        with self._cond:
            if not run.holds_slot:
                return False, False
            run.holds_slot = False
            self.lent += 1
            self.active -= 1
            self._cond.notify_all()
            return True, self.live < self.size + self.lent

    def unlend(self, run: Run, stopping: Callable[[], bool]) -> None:
        """The child has ended: the run takes a slot again (unless it was ended meanwhile)."""
        with self._cond:
            self.lent -= 1
            if run.ended:
                return
            while self.active >= self.size and not stopping():
                self._cond.wait(1.0)
            self.active += 1
            run.holds_slot = True

    def abandon(self) -> None:
        with self._cond:
            self.abandoned += 1

    def reaped(self) -> None:
        with self._cond:
            self.abandoned -= 1
            self._cond.notify_all()

    def wait_while_held_back(self, stopping: Callable[[], bool], jobname: str, log: logging.Logger) -> None:
        """With `size` timed-out runs still alive, no worker of the type starts another."""
        with self._cond:
            if self.abandoned >= self.size:
                log.warning("job type %s: %d timed-out run(s) still alive; not starting more "
                            "until one ends", jobname, self.abandoned)
            while self.abandoned >= self.size and not stopping():
                self._cond.wait(1.0)

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()


class Runs:
    """The jobs running on this daemon, and those whose outcome is not committed yet; under `_lock`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, Run] = {}
        self._unsettled: set[int] = set()

    def begin(self, jobid: int, run: Run) -> None:
        with self._lock:
            self._running[jobid] = run
            self._unsettled.add(jobid)

    def end(self, jobid: int) -> None:
        """run() has returned; the job stays unsettled until its outcome is committed."""
        with self._lock:
            self._running.pop(jobid, None)

    def settle(self, jobid: int) -> None:
        with self._lock:
            self._unsettled.discard(jobid)

    def get(self, jobid: int) -> Run | None:
        with self._lock:
            return self._running.get(jobid)

    def unsettled(self, jobid: int) -> bool:
        """Running here, or its outcome is being committed: its end will be reported."""
        with self._lock:
            return jobid in self._unsettled

    def flag_cancelled(self, jobids: list[int]) -> None:
        """Runs here that a client asked to cancel see `job.cancelled`."""
        with self._lock:
            for jobid in jobids:
                run = self._running.get(jobid)
                if run is not None:
                    run.job.cancelled = True
