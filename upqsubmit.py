"""Submission: a request or a running job becomes a stored job.

`check()` runs in the caller's thread; an accepted job is stored (the future
resolves after the commit), or with `concurrent = 0` run at once in the
caller's thread. Jobs reach the daemon through this module too (it is their
JobHost): `enqueue_job()` inside check() (2011 style) and sub-jobs.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Mapping, Union

from groupcommit import Mapped, Pending
from upqdb import Database
from upqerrors import JobRejected
from upqjob import UpqJob
from upqpause import QueueFull
from upqqueuemngr import JobType, QueueManager
from upqschema import JobRow, utcnow
from upqstates import State
from upqunique import DUPLICATE, AcceptHeldUnique, UniqueInsert, unique_digest


@dataclass(frozen=True)
class Accepted:
    """A stored job: its id and the msg for the ACK line (ok=False: an inline run failed)."""
    jobid: int
    msg: str
    ok: bool = True


Submitted = Union["Pending[Accepted]", "Mapped[Accepted]"]   # .result(timeout) -> Accepted, after commit
Waiter = Callable[[int, "float | None"], "JobRow | None"]    # (jobid, timeout) -> the ended row, or None


class ChildFinished(threading.Event):
    """`child.finished` of a sub-job: waiting on it lends the parent's worker slot, and fills
    in the child's msg, result and state from the row it ended with."""

    def __init__(self, child: UpqJob, parent: UpqJob, wait: Waiter,
                 lending: Callable[[UpqJob], ContextManager[None]]):
        super().__init__()
        self._child, self._parent = child, parent
        self._wait, self._lending = wait, lending
        self._row: JobRow | None = None

    def wait(self, timeout: float | None = None) -> bool:
        if self._row is not None:
            return True
        assert self._child.jobid is not None
        with self._lending(self._parent):
            row = self._wait(self._child.jobid, timeout)
        if row is None:
            return False
        self._row = row
        self._child.msg, self._child.result = row.msg, row.result
        self._child.state = row.state  # type: ignore[attr-defined]
        self.set()
        return True


class Submitter:
    """Checks and stores jobs; the JobHost of every job object this daemon makes."""

    def __init__(self, manager: QueueManager, db: Database, wait: Waiter):
        self.manager = manager
        self.db = db
        self._wait = wait

    def submit(self, name: str, params: dict[str, str], delay: float | None = None,
               priority: int | None = None) -> Submitted:
        """Check and store a job; the future resolves after commit (and after the run, inline)."""
        jt = self.manager.job_type(name)
        job = self._instantiate(jt, params)
        self._check(job)
        return self._store(jt, job, delay=delay, priority=priority)

    def submit_child(self, parent: UpqJob, jobname: str, params: Mapping[str, str]) -> UpqJob:
        """A job started by another job (UpqJob.submit): stored with its parent, queued, returned."""
        jt = self.manager.job_type(jobname)
        child = self._instantiate(jt, dict(params))
        self._check(child)
        child.finished = ChildFinished(child, parent, self._wait, self.manager.lending)
        child.jobid = self._store(jt, child, parent=parent.jobid).result().jobid
        return child

    def checked(self, name: str, params: dict[str, str]) -> dict[str, str]:
        """A periodic run's params after check(), as a submission's (JobRejected if refused);
        the schedule stores the run itself, so a row check() held is dropped."""
        job = self._instantiate(self.manager.job_type(name), params)
        self._check(job)
        self._drop_held(job)
        return dict(job.jobdata)

    def enqueue_from_check(self, job: UpqJob) -> int:
        """UpqJob.enqueue_job(): store now, held until check() returns True."""
        return self.db.insert_job_async(job.jobname, dict(job.jobdata), state=State.HELD,
                                        node=self.manager.node).result()

    def _instantiate(self, jt: JobType, params: dict[str, str]) -> UpqJob:
        return jt.instantiate(params, self, self.manager.config.paths.extra)

    def _check(self, job: UpqJob) -> None:
        """Run check(); any refusal or error becomes JobRejected (and a held row is dropped)."""
        try:
            accepted = job.check()
        except SystemExit as exc:
            self._drop_held(job)
            raise JobRejected(f"check() called sys.exit({exc.code!r})") from exc
        except Exception as exc:  # noqa: BLE001 - a job's bug becomes the client's ERR
            job.logger.exception("job %s: check() raised", job.jobname)
            self._drop_held(job)
            raise JobRejected(f"check() raised {type(exc).__name__}: {exc}") from exc
        if accepted is not True:
            self._drop_held(job)
            raise JobRejected(job.msg or ("check() refused the job" if accepted is False else
                                          f"check() returned {type(accepted).__name__}, not True or False"))

    def _drop_held(self, job: UpqJob) -> None:
        if job.jobid is not None:
            self.db.delete_held(job.jobid)
            job.jobid = None

    def _store(self, jt: JobType, job: UpqJob, *, parent: int | None = None,
               delay: float | None = None, priority: int | None = None) -> Submitted:
        priority = jt.config.priority if priority is None else priority
        if jt.inline and not delay and not self.manager.is_paused(jt.name):   # paused: queued
            return Pending.resolved(self._run_inline(jt, job, parent))
        digest = unique_digest(jt.config.unique, job.jobdata)
        if digest is not None:
            return self._store_unique(jt, job, digest, parent, delay, priority)
        if job.jobid is not None:           # 2011 style: check() called enqueue_job()
            self.db.accept_held(job.jobid, job.jobdata, State.NEW, self.manager.node, delay, priority)
            jt.queue.wake_at(time.monotonic() + (delay or 0))
            return Pending.resolved(Accepted(job.jobid, job.msg))
        msg, cap = job.msg, jt.config.max_queued

        def accepted(jobid: int) -> Accepted:
            if not jobid:       # max_queued: nothing was stored
                raise QueueFull(f"queue full: {cap} {jt.name} jobs queued")
            return Accepted(jobid, msg)
        return Mapped(jt.queue.put_async(dict(job.jobdata), parent=parent, delay=delay, priority=priority, cap=cap),
                      accepted)

    def _store_unique(self, jt: JobType, job: UpqJob, digest: str, parent: int | None,
                      delay: float | None, priority: int) -> Submitted:
        """`unique =`: stored unless a twin is new or running (then its jobid, `duplicate`)."""
        values = dict(jobname=jt.name, state=State.NEW, params=json.dumps(dict(job.jobdata), ensure_ascii=False),
                      msg="", attempts=0, retries_used=0, created=utcnow(), started=None, run_after=None,
                      node=None, parent=parent, cancel_requested=0, prio_rank=-priority)
        op: "UniqueInsert | AcceptHeldUnique" = UniqueInsert(values, digest, delay, self.db.db_now)
        if job.jobid is not None:           # 2011 style: check() called enqueue_job()
            op = AcceptHeldUnique(job.jobid, jt.name, job.jobdata, digest, delay, self.db.db_now, priority)
        fut = self.db.writer.submit(op)
        fut.add_done_callback(lambda f: f.exception() or jt.queue.wake_at(time.monotonic() + (delay or 0)))
        msg = job.msg
        return Mapped(fut, lambda res: Accepted(res[0], DUPLICATE if res[1] else msg))

    def _run_inline(self, jt: JobType, job: UpqJob, parent: int | None) -> Accepted:
        """concurrent = 0: run in the caller's thread, answer with the outcome."""
        if job.jobid is not None:
            self.db.accept_held(job.jobid, job.jobdata, State.RUNNING, self.manager.node)
        else:
            job.jobid = self.db.insert_job_async(jt.name, dict(job.jobdata), state=State.RUNNING,
                                                 node=self.manager.node, parent=parent).result()
        row = self.db.get_job(job.jobid)
        assert row is not None
        job.attempt = row.attempts
        stored = self.manager.run_inline(jt, job, row)
        return Accepted(row.jobid, stored.msg if stored else job.msg,
                        ok=stored is not None and stored.state == State.DONE)
