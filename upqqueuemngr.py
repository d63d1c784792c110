"""QueueManager: one DBQueue and `concurrent` worker threads per enabled job type.

It turns a request into a stored job (running the job's `check()`), executes
claimed jobs on worker threads, records outcomes, and tells waiters when a
job ends.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from dbqueue import DBQueue, QueueStopped
from parseconfig import Config, JobConfig
from upqdb import Database, JobRow, Outcome
from upqjob import UpqJob


class UnknownJob(Exception):
    """No enabled job type of that name, or no job with that id."""


class JobRejected(Exception):
    """check() refused the submission or could not run; str() is the reason."""


@dataclass(frozen=True)
class Accepted:
    """A stored job: its id and the msg for the ACK line (ok=False: an inline run failed)."""
    jobid: int
    msg: str
    ok: bool = True


@dataclass
class JobType:
    """What the manager keeps per enabled job type."""
    config: JobConfig
    cls: type[UpqJob]
    queue: DBQueue | None = None                  # None when concurrent = 0 (inline)
    workers: list[threading.Thread] = field(default_factory=list)
    running: int = 0


class Completions:
    """Lets `wait` sleep until a job ends here, instead of polling the database hard."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[int, set[threading.Event]] = {}

    def register(self, jobid: int) -> threading.Event:
        ev = threading.Event()
        with self._lock:
            self._events.setdefault(jobid, set()).add(ev)
        return ev

    def unregister(self, jobid: int, ev: threading.Event) -> None:
        with self._lock:
            evs = self._events.get(jobid)
            if evs is not None:
                evs.discard(ev)
                if not evs:
                    del self._events[jobid]

    def notify(self, jobid: int) -> None:
        with self._lock:
            for ev in self._events.get(jobid, ()):
                ev.set()


def run_job(job: UpqJob, log: logging.Logger) -> Outcome:
    """Call job.run() and turn every way it can end into an Outcome; never raises."""
    try:
        ok = job.run()
    except SystemExit as exc:
        return Outcome("failed", f"SystemExit: run() called sys.exit({exc.code!r})", job.result)
    except Exception as exc:  # noqa: BLE001 - a job's bug must not reach the daemon
        log.exception("job %s #%s raised", job.jobname, job.jobid)
        return Outcome("failed", f"{type(exc).__name__}: {exc}", job.result)
    if ok is True:
        return Outcome("done", job.msg, job.result)
    if ok is False:
        return Outcome("failed", job.msg or "run() returned False", job.result)
    return Outcome("failed", f"run() returned {type(ok).__name__} {ok!r:.80}, not True or False", job.result)


class QueueManager:
    """Owns the job types, their queues and worker threads."""

    def __init__(self, config: Config, db: Database, job_classes: Mapping[str, type[UpqJob]],
                 logger: logging.Logger, node: str):
        self.config = config
        self.db = db
        self.log = logger
        self.node = node
        self.completions = Completions()
        self.types: dict[str, JobType] = {
            name: JobType(config=cfg, cls=job_classes[name])
            for name, cfg in config.enabled_jobs().items()}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- life cycle --------------------------------------------------------
    def start(self) -> None:
        """Create each type's queue and start its workers."""
        for name, jt in self.types.items():
            if jt.config.concurrent == 0:
                continue
            jt.queue = DBQueue(self.db, name, self.node, self.log,
                               poll_interval=self.config.server.poll_interval,
                               maxsize=max(1, jt.config.concurrent))
            for i in range(jt.config.concurrent):
                t = threading.Thread(target=self._work, args=(jt,), name=f"{name}-{i + 1}", daemon=True)
                jt.workers.append(t)
                t.start()

    def stop(self, grace: float) -> bool:
        """Stop starting jobs; wait up to `grace` seconds for running ones. True if all ended."""
        self._stopping.set()
        for jt in self.types.values():
            if jt.queue is not None:
                jt.queue.stop()
        deadline = time.monotonic() + grace
        for jt in self.types.values():
            for t in jt.workers:
                t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for jt in self.types.values() for t in jt.workers)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- submission --------------------------------------------------------
    def job_type(self, name: str) -> JobType:
        jt = self.types.get(name)
        if jt is None:
            raise UnknownJob(f"unknown job type {name!r} (see 'help' for the enabled ones)")
        return jt

    def submit(self, name: str, params: dict[str, str]) -> "Future[Accepted]":
        """Check and store a job; the future resolves after commit (and after the run, inline)."""
        jt = self.job_type(name)
        job = self._instantiate(jt, params)
        try:
            accepted = job.check()
        except SystemExit as exc:
            self._drop_held(job)
            raise JobRejected(f"check() called sys.exit({exc.code!r})") from exc
        except Exception as exc:  # noqa: BLE001 - a job's bug becomes the client's ERR
            self.log.exception("job %s: check() raised", name)
            self._drop_held(job)
            raise JobRejected(f"check() raised {type(exc).__name__}: {exc}") from exc
        if accepted is not True:
            self._drop_held(job)
            raise JobRejected(job.msg or ("check() refused the job" if accepted is False else
                                          f"check() returned {type(accepted).__name__}, not True or False"))
        if jt.queue is None:
            return _resolved(self._run_inline(jt, job))
        if job.jobid is not None:           # 2011 style: check() called enqueue_job()
            self.db.accept_held(job.jobid, job.jobdata, "new", self.node)
            jt.queue.wake()
            return _resolved(Accepted(job.jobid, job.msg))
        msg = job.msg
        return _chain(jt.queue.put_async(dict(job.jobdata)), lambda jobid: Accepted(jobid, msg))

    def enqueue_from_check(self, job: UpqJob) -> int:
        """Called by UpqJob.enqueue_job(): store now, accept once check() returns True."""
        return self.db.insert_job_async(job.jobname, dict(job.jobdata), state="held", node=self.node).result()

    def submit_child(self, parent: UpqJob, jobname: str, params: Mapping[str, str]) -> UpqJob:
        """A job started by another job (see UpqJob.submit)."""
        raise NotImplementedError("sub-jobs arrive with the job lifecycle work")

    def _drop_held(self, job: UpqJob) -> None:
        if job.jobid is not None:
            self.db.delete_held(job.jobid)
            job.jobid = None

    def _instantiate(self, jt: JobType, params: dict[str, str], row: JobRow | None = None) -> UpqJob:
        try:
            job = jt.cls(jt.config.name, jt.config.options, params, self.config.paths.extra,
                         host=self, logger=self.log.getChild(f"job.{jt.config.name}"),
                         jobid=None if row is None else row.jobid,
                         attempt=0 if row is None else row.attempts)
        except Exception as exc:  # noqa: BLE001
            self.log.exception("job %s: constructor raised", jt.config.name)
            raise JobRejected(f"{jt.cls.__name__}() raised {type(exc).__name__}: {exc}") from exc
        return job

    def _run_inline(self, jt: JobType, job: UpqJob) -> Accepted:
        """concurrent = 0: run in the connection's thread, answer with the outcome."""
        if job.jobid is not None:
            self.db.accept_held(job.jobid, job.jobdata, "running", self.node)
        else:
            job.jobid = self.db.insert_job_async(jt.config.name, dict(job.jobdata), state="running",
                                                 node=self.node).result()
        row = self.db.get_job(job.jobid)
        assert row is not None
        job.attempt = row.attempts
        outcome = self._execute(jt, job, row)
        return Accepted(row.jobid, outcome.msg, ok=outcome.state == "done")

    # -- execution ---------------------------------------------------------
    def _work(self, jt: JobType) -> None:
        assert jt.queue is not None
        while True:
            try:
                row = jt.queue.get()
            except QueueStopped:
                return
            try:
                job = self._instantiate(jt, row.params, row)
            except JobRejected as exc:
                self._finish(jt, row, Outcome("failed", str(exc)), None)
                continue
            self._execute(jt, job, row)

    def _execute(self, jt: JobType, job: UpqJob, row: JobRow) -> Outcome:
        with self._lock:
            jt.running += 1
        try:
            outcome = run_job(job, self.log)
        finally:
            with self._lock:
                jt.running -= 1
        self._finish(jt, row, outcome, job)
        return outcome

    def _finish(self, jt: JobType, row: JobRow, outcome: Outcome, job: UpqJob | None) -> None:
        if jt.queue is not None:
            recorded = jt.queue.task_done(row, outcome, lambda: self.stopping)
        else:
            recorded = self.db.record_outcome(row, outcome, self.node)
        if not recorded:
            self.log.warning("job %d: outcome %s discarded (the job was taken over)", row.jobid, outcome.state)
        else:
            self.log.log(logging.INFO if outcome.state == "done" else logging.WARNING,
                         "job %s #%d %s: %s", row.jobname, row.jobid, outcome.state, outcome.msg)
        if job is not None:
            job.finished.set()
        self.completions.notify(row.jobid)

    # -- queries -----------------------------------------------------------
    def wait(self, jobid: int, timeout: float | None, gone: Callable[[], bool]) -> JobRow | None:
        """Block until the job has ended; None on timeout or when the client went away."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ev = self.completions.register(jobid)
            try:
                row = self.db.get_job(jobid)
                if row is None:
                    raise UnknownJob(f"no job {jobid}")
                if row.is_final:
                    return row
                step = self.config.server.poll_interval
                if deadline is not None:
                    step = min(step, deadline - time.monotonic())
                    if step <= 0:
                        return None
                ev.wait(step)
            finally:
                self.completions.unregister(jobid, ev)
            if gone():
                return None

    def stats(self) -> dict[str, Any]:
        counts = self.db.count_by_state()
        out: dict[str, Any] = {}
        for name in sorted(set(counts) | set(self.types)):
            per = counts.get(name, {})
            jt = self.types.get(name)
            out[name] = {"queued": per.get("new", 0), "running": per.get("running", 0),
                         "done": per.get("done", 0), "failed": per.get("failed", 0),
                         "cancelled": per.get("cancelled", 0),
                         "workers": 0 if jt is None else jt.config.concurrent}
        return out


def _resolved(value: Any) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


def _chain(fut: Future, fn: Callable[[Any], Any]) -> Future:
    """A future holding fn(result of fut), or fut's exception."""
    out: Future = Future()

    def done(f: Future) -> None:
        exc = f.exception()
        if exc is not None:
            out.set_exception(exc)
        else:
            out.set_result(fn(f.result()))
    fut.add_done_callback(done)
    return out
