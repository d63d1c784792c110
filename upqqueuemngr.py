"""QueueManager: one DBQueue and `concurrent` worker threads per enabled job type.

It turns a request into a stored job (running the job's `check()`), executes
claimed jobs on worker threads, records outcomes, and tells waiters when a
job ends. Policies: a run past `timeout` fails at once and its thread is
abandoned (Python cannot kill it); a run waiting on a child lends its slot.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Union

from dbqueue import DBQueue, QueueStopped
from groupcommit import Mapped, Pending
from parseconfig import Config, JobConfig
from upqdb import Database, DatabaseUnavailable
from upqschema import STATES_FINAL, JobRow, Outcome, RetryPolicy
from upqjob import Retry, UpqJob


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


Submitted = Union["Pending[Accepted]", "Mapped[Accepted]"]   # .result(timeout) -> Accepted, after commit


@dataclass
class JobType:
    """What the manager keeps per enabled job type; counters change under the manager's lock."""
    config: JobConfig
    cls: type[UpqJob]
    queue: DBQueue | None = None                  # None when concurrent = 0 (inline)
    live: int = 0                                 # worker threads alive
    lent: int = 0                                 # runs waiting on a child: extra workers allowed
    abandoned: int = 0                            # timed-out runs whose thread is still alive
    active: int = 0                               # worker runs holding a slot (not waiting on a child)
    threads: list[threading.Thread] = field(default_factory=list)
    logger: logging.Logger | None = None          # the jobs' logger, upq.job.<name>

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def inline(self) -> bool:
        """concurrent = 0: submissions run in the connection's thread."""
        return self.config.concurrent == 0

    @property
    def slots(self) -> int:
        """Worker threads wanted; an inline type keeps one for re-runs, retries and delayed jobs."""
        return max(1, self.config.concurrent)

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.config.retries, self.config.retry_delay)


class Completions:
    """Lets `wait` sleep until a job ends here, instead of polling the database hard."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[int, set[threading.Event]] = {}

    def register(self, jobid: int) -> "EndEvent":
        ev = EndEvent()
        with self._lock:
            self._events.setdefault(jobid, set()).add(ev)
        return ev

    def unregister(self, jobid: int, ev: "EndEvent") -> None:
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


class EndEvent(threading.Event):
    """Set when a job may have ended; carries the final row when the notifier knew it."""
    row: JobRow | None = None


class ChildFinished(threading.Event):
    """`child.finished` of a sub-job: waiting on it lends the parent's worker slot."""

    def __init__(self, manager: "QueueManager", child: UpqJob, parent: UpqJob):
        super().__init__()
        self._manager = manager
        self._child = child
        self._parent = parent

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        assert self._child.jobid is not None
        with self._manager.lending(self._parent):
            row = self._manager.wait(self._child.jobid, timeout, lambda: False)
        if row is None:
            return False
        self._child.msg, self._child.result = row.msg, row.result
        self._child.state = row.state  # type: ignore[attr-defined]
        self.set()
        return True


def run_job(job: UpqJob, log: logging.Logger) -> Outcome:
    """Call job.run() and turn every way it can end into an Outcome; never raises."""
    try:
        ok = job.run()
    except SystemExit as exc:
        return Outcome("failed", f"SystemExit: run() called sys.exit({exc.code!r})", job.result)
    except BaseException as exc:  # noqa: BLE001 - a job's bug (even KeyboardInterrupt) must not reach the daemon
        log.exception("job %s #%s raised", job.jobname, job.jobid)
        return Outcome("failed", f"{type(exc).__name__}: {exc}", job.result)
    if ok is True:
        return Outcome("done", job.msg, job.result)
    if ok is False:
        return Outcome("failed", job.msg or "run() returned False", job.result)
    if isinstance(ok, Retry):
        return Outcome("retry", ok.msg or job.msg or "asked to run again", job.result,
                       delay=-1.0 if ok.delay is None else max(0.0, float(ok.delay)))
    return Outcome("failed", f"run() returned {type(ok).__name__} {ok!r:.80}, not True or False", job.result)


class QueueManager:
    """Owns the job types, their queues and worker threads."""

    def __init__(self, config: Config, db: Database, job_classes: Mapping[str, type[UpqJob]],
                 logger: logging.Logger, node: str,
                 on_final: Callable[[JobConfig, JobRow], None] = lambda cfg, row: None):
        self.config = config
        self.on_final = on_final            # notifications hook: called once a job has ended here
        self.db = db
        self.log = logger
        self.node = node
        self.completions = Completions()
        self.types: dict[str, JobType] = {
            name: JobType(config=cfg, cls=job_classes[name])
            for name, cfg in config.enabled_jobs().items()}
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._running: dict[int, UpqJob] = {}     # jobid -> job running here (for cancel)
        self._unsettled: set[int] = set()         # running here, or its outcome not yet committed
        self._alone = False                       # no other daemon on the database (set_peers)

    # -- life cycle --------------------------------------------------------
    def start(self) -> None:
        """Create each type's queue and start its workers."""
        for jt in self.types.values():
            self._start_type(jt)

    def _start_type(self, jt: JobType) -> None:
        jt.logger = self.log.getChild(f"job.{jt.name}")     # once: getChild takes logging's lock
        jt.queue = DBQueue(self.db, jt.name, self.node, self.log,
                           poll_interval=self.config.server.poll_interval,
                           maxsize=jt.slots, lease_validity=self.config.server.node_timeout / 2)
        jt.queue.set_leasing(self._alone)
        with self._lock:
            for _ in range(jt.slots):
                self._spawn_worker(jt)

    def reconfigure(self, config: Config, job_classes: Mapping[str, type[UpqJob]]) -> list[str]:
        """Apply reloaded [job] sections: added, removed and resized types; returns what changed.

        A removed type's running jobs finish; its queued ones stay in the database."""
        changes: list[str] = []
        wanted = config.enabled_jobs()
        for name in sorted(set(self.types) - set(wanted)):
            self._retire_type(self.types.pop(name))
            changes.append(f"removed {name}")
        for name, cfg in sorted(wanted.items()):
            jt = self.types.get(name)
            if jt is None:
                self.types[name] = jt = JobType(config=cfg, cls=job_classes[name])
                self._start_type(jt)
                changes.append(f"added {name}")
                continue
            old = jt.config.concurrent
            jt.config, jt.cls = cfg, job_classes[name]
            if cfg.concurrent != old:
                changes.append(f"{name} concurrent {old} -> {cfg.concurrent}")
                with self._lock:
                    for _ in range(jt.slots + jt.lent - jt.live):
                        self._spawn_worker(jt)
                assert jt.queue is not None
                jt.queue.maxsize = jt.slots
                jt.queue.kick()          # extra workers notice and retire
        self.config = config
        return changes

    def _retire_type(self, jt: JobType) -> None:
        """Its workers leave after their current job; jobs claimed but not started go back."""
        if jt.queue is None:
            return
        left = jt.queue.stop()
        try:
            self.db.unclaim(left, self.node)
        except DatabaseUnavailable as exc:
            self.log.warning("%d claimed %s job(s) stay running until the next start: %s",
                             len(left), jt.name, exc)

    def set_peers(self, peers: int) -> None:
        """The heartbeat counted the other live daemons: lease ahead only while there are none."""
        alone = peers == 0
        if alone == self._alone:
            return
        self._alone = alone
        self.log.info("%s", "alone on the database: leasing jobs ahead" if alone else
                      f"{peers} other daemon(s) on the database: claiming one job per idle worker")
        for jt in list(self.types.values()):
            if jt.queue is not None:
                jt.queue.set_leasing(alone)

    def wake_all(self) -> None:
        """Jobs were re-queued behind our back (a dead node's): let every type look."""
        for jt in list(self.types.values()):
            if jt.queue is not None:
                jt.queue.wake()

    def stop(self, grace: float) -> bool:
        """Stop starting jobs; wait up to `grace` seconds for running ones. True if all ended."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        for jt in self.types.values():
            self._retire_type(jt)
        deadline = time.monotonic() + grace
        for jt in self.types.values():
            for t in list(jt.threads):
                t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for jt in self.types.values() for t in jt.threads)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- submission --------------------------------------------------------
    def job_type(self, name: str) -> JobType:
        jt = self.types.get(name)
        if jt is None:
            raise UnknownJob(f"unknown job type {name!r} (see 'help' for the enabled ones)")
        return jt

    def submit(self, name: str, params: dict[str, str], delay: float | None = None) -> "Submitted":
        """Check and store a job; the future resolves after commit (and after the run, inline)."""
        jt = self.job_type(name)
        job = self._instantiate(jt, params)
        self._check(job)
        return self._store(jt, job, delay=delay)

    def submit_child(self, parent: UpqJob, jobname: str, params: Mapping[str, str]) -> UpqJob:
        """A job started by another job (UpqJob.submit): stored with its parent, queued, returned."""
        jt = self.job_type(jobname)
        child = self._instantiate(jt, dict(params))
        self._check(child)
        child.finished = ChildFinished(self, child, parent)
        acc = self._store(jt, child, parent=parent.jobid).result()
        child.jobid = acc.jobid
        return child

    def enqueue_from_check(self, job: UpqJob) -> int:
        """Called by UpqJob.enqueue_job(): store now, accept once check() returns True."""
        return self.db.insert_job_async(job.jobname, dict(job.jobdata), state="held", node=self.node).result()

    def _check(self, job: UpqJob) -> None:
        """Run check(); any refusal or error becomes JobRejected (and a held row is dropped)."""
        try:
            accepted = job.check()
        except SystemExit as exc:
            self._drop_held(job)
            raise JobRejected(f"check() called sys.exit({exc.code!r})") from exc
        except Exception as exc:  # noqa: BLE001 - a job's bug becomes the client's ERR
            self.log.exception("job %s: check() raised", job.jobname)
            self._drop_held(job)
            raise JobRejected(f"check() raised {type(exc).__name__}: {exc}") from exc
        if accepted is not True:
            self._drop_held(job)
            raise JobRejected(job.msg or ("check() refused the job" if accepted is False else
                                          f"check() returned {type(accepted).__name__}, not True or False"))

    def _store(self, jt: JobType, job: UpqJob, *, parent: int | None = None,
               delay: float | None = None) -> "Submitted":
        assert jt.queue is not None
        if jt.inline and not delay:
            return Pending.resolved(self._run_inline(jt, job, parent))
        if job.jobid is not None:           # 2011 style: check() called enqueue_job()
            self.db.accept_held(job.jobid, job.jobdata, "new", self.node, delay)
            jt.queue.wake_at(time.monotonic() + (delay or 0))
            return Pending.resolved(Accepted(job.jobid, job.msg))
        msg = job.msg
        return Mapped(jt.queue.put_async(dict(job.jobdata), parent=parent, delay=delay),
                      lambda jobid: Accepted(jobid, msg))

    def _drop_held(self, job: UpqJob) -> None:
        if job.jobid is not None:
            self.db.delete_held(job.jobid)
            job.jobid = None

    def _instantiate(self, jt: JobType, params: dict[str, str], row: JobRow | None = None) -> UpqJob:
        try:
            job = jt.cls(jt.name, jt.config.options, params, self.config.paths.extra,
                         host=self, logger=jt.logger,
                         jobid=None if row is None else row.jobid,
                         attempt=0 if row is None else row.attempts)
        except Exception as exc:  # noqa: BLE001
            self.log.exception("job %s: constructor raised", jt.name)
            raise JobRejected(f"{jt.cls.__name__}() raised {type(exc).__name__}: {exc}") from exc
        return job

    def _run_inline(self, jt: JobType, job: UpqJob, parent: int | None) -> Accepted:
        """concurrent = 0: run in the caller's thread, answer with the outcome."""
        if job.jobid is not None:
            self.db.accept_held(job.jobid, job.jobdata, "running", self.node)
        else:
            job.jobid = self.db.insert_job_async(jt.name, dict(job.jobdata), state="running",
                                                 node=self.node, parent=parent).result()
        row = self.db.get_job(job.jobid)
        assert row is not None
        job.attempt = row.attempts
        stored = self._execute(jt, job, row, wait=True)
        return Accepted(row.jobid, stored.msg if stored else job.msg,
                        ok=stored is not None and stored.state == "done")

    # -- workers -----------------------------------------------------------
    def _spawn_worker(self, jt: JobType) -> None:
        """Start one worker thread for jt; caller holds self._lock."""
        jt.live += 1
        t = threading.Thread(target=self._work, args=(jt,), name=f"{jt.name}-{len(jt.threads) + 1}",
                             daemon=True)
        jt.threads = [x for x in jt.threads if x.is_alive()] + [t]
        t.start()

    def _try_retire(self, jt: JobType) -> bool:
        """An extra worker (its lender resumed) leaves; True if the caller should exit."""
        with self._lock:
            if jt.live > jt.slots + jt.lent:
                jt.live -= 1
                return True
            return False

    def _work(self, jt: JobType) -> None:
        assert jt.queue is not None
        while not self.stopping:
            with self._lock:
                if jt.abandoned >= jt.slots:
                    self.log.warning("job type %s: %d timed-out run(s) still alive; not starting more "
                                     "until one ends", jt.name, jt.abandoned)
                while jt.abandoned >= jt.slots and not self.stopping:
                    self._lock.wait(1.0)
            try:
                row = jt.queue.get(leave=lambda: self._try_retire(jt))
            except QueueStopped:
                return
            try:
                job = self._instantiate(jt, row.params, row)
            except JobRejected as exc:
                self._finish(jt, row, Outcome("failed", str(exc)), None)
                continue
            self._execute(jt, job, row)
            if self._try_retire(jt):
                return
        with self._lock:
            jt.live -= 1

    @contextlib.contextmanager
    def lending(self, parent: UpqJob) -> Iterator[None]:
        """While a run waits on a child it gives up its slot (and a thread is added if needed), so
        `concurrent` bounds only the runs not waiting: no deadlock even at concurrent = 1."""
        jt = self.types.get(parent.jobname)
        if jt is None or not getattr(parent, "_upq_slot", False):
            yield               # an inline run holds no slot
            return
        with self._lock:
            jt.lent += 1
            self._release_slot(jt, parent)
            if jt.live < jt.slots + jt.lent and not self.stopping:
                self._spawn_worker(jt)
        try:
            yield
        finally:
            with self._lock:
                jt.lent -= 1
                self._acquire_slot(jt, parent)
            if jt.queue is not None:
                jt.queue.kick()         # an extra worker may retire now

    def _acquire_slot(self, jt: JobType, job: UpqJob) -> None:
        """Wait for a free slot of the type; caller holds self._lock."""
        while jt.active >= jt.slots and not self.stopping:
            self._lock.wait(1.0)
        jt.active += 1
        job._upq_slot = True  # type: ignore[attr-defined]

    def _release_slot(self, jt: JobType, job: UpqJob) -> None:
        """Caller holds self._lock."""
        if getattr(job, "_upq_slot", False):
            jt.active -= 1
            job._upq_slot = False  # type: ignore[attr-defined]
            self._lock.notify_all()

    def _execute(self, jt: JobType, job: UpqJob, row: JobRow, wait: bool = False) -> JobRow | None:
        """Run one claimed job; a worker's run (wait=False) holds one of the type's slots."""
        with self._lock:
            if not wait:
                self._acquire_slot(jt, job)
            self._running[row.jobid] = job
            self._unsettled.add(row.jobid)
        t0 = time.perf_counter()
        try:
            outcome = self._run_bounded(jt, job, row)
            jt.queue.ran(time.perf_counter() - t0)  # type: ignore[union-attr]
        finally:
            with self._lock:
                self._running.pop(row.jobid, None)
                self._release_slot(jt, job)
        if outcome.state == "retry" and outcome.delay < 0:
            outcome = Outcome("retry", outcome.msg, outcome.result, jt.config.retry_delay)
        return self._finish(jt, row, outcome, job, wait)

    def _run_bounded(self, jt: JobType, job: UpqJob, row: JobRow) -> Outcome:
        """run() with the type's timeout: past it the job fails and its thread is left to end alone."""
        timeout = jt.config.timeout
        if timeout is None:
            return run_job(job, self.log)
        box: list[Outcome] = []
        t = threading.Thread(target=lambda: box.append(run_job(job, self.log)),
                             name=f"{jt.name}-run-{row.jobid}", daemon=True)
        t.start()
        t.join(timeout)
        if not t.is_alive():
            return box[0]
        job.cancelled = True            # a cooperative job may notice and stop
        with self._lock:
            jt.abandoned += 1
        if jt.queue is not None:
            jt.queue.held_back.add(row.jobid)
        self.log.warning("job %s #%d: timed out after %gs; its thread keeps running, its result "
                         "will be discarded", jt.name, row.jobid, timeout)
        threading.Thread(target=self._reap, args=(jt, t, row.jobid), name=f"reap-{row.jobid}",
                         daemon=True).start()
        return Outcome("failed", f"timeout: run() took longer than {timeout:g} s", None)

    def _reap(self, jt: JobType, t: threading.Thread, jobid: int) -> None:
        t.join()
        self.log.info("job %s #%d: the timed-out run has ended; its result was discarded", jt.name, jobid)
        with self._lock:
            jt.abandoned -= 1
            self._lock.notify_all()
        if jt.queue is not None:
            jt.queue.held_back.discard(jobid)
            jt.queue.wake()

    def _finish(self, jt: JobType, row: JobRow, outcome: Outcome, job: UpqJob | None,
                wait: bool = False) -> JobRow | None:
        """Record the outcome; waiters and notifiers are told once it is committed. Workers
        do not wait for that commit (wait=False): it is shared with the next ones."""
        assert jt.queue is not None
        if not wait:
            jt.queue.finish(row, outcome, jt.policy,
                            lambda stored, error: self._ended(jt, row, outcome, job, stored, error),
                            lambda: self.stopping)
            return None
        box: list[JobRow | None] = []
        committed = threading.Event()

        def done(stored: JobRow | None, error: str) -> None:
            self._ended(jt, row, outcome, job, stored, error)
            box.append(stored)
            committed.set()
        jt.queue.finish(row, outcome, jt.policy, done, lambda: self.stopping)
        committed.wait()
        return box[0]

    def _ended(self, jt: JobType, row: JobRow, outcome: Outcome, job: UpqJob | None,
               stored: JobRow | None, error: str) -> None:
        """After the outcome's commit: log, wake waiters, notify."""
        self._unsettled.discard(row.jobid)      # before waking waiters: see wait()
        if error:
            self.log.warning("job %d: outcome %s %s", row.jobid, outcome.state, error)
        elif stored is None:
            self.log.warning("job %d: outcome %s discarded (the job was taken over)", row.jobid, outcome.state)
        elif stored.state == "new":
            self.log.info("job %s #%d attempt %d: %s; runs again after %s", row.jobname, row.jobid,
                          row.attempts, outcome.msg, stored.run_after)
        else:
            # done is the hot path: at debug, so the log does not slow a busy daemon down
            self.log.log(logging.DEBUG if stored.state == "done" else logging.WARNING,
                         "job %s #%d %s: %s", row.jobname, row.jobid, stored.state, stored.msg)
        if stored is not None and stored.is_final:
            if job is not None and not isinstance(job.finished, ChildFinished):
                job.finished.set()
            try:
                self.on_final(jt.config, stored)
            except Exception:  # noqa: BLE001 - reporting must never break job processing
                self.log.exception("job %d: the on_final hook failed", row.jobid)
        self.completions.notify(row.jobid, stored)

    # -- commands ----------------------------------------------------------
    def _withdraw(self, jobid: int) -> tuple[DBQueue, JobRow] | None:
        """Take a job leased here out of its queue, so that no worker starts it."""
        for jt in list(self.types.values()):
            row = None if jt.queue is None else jt.queue.withdraw(jobid)
            if row is not None:
                return jt.queue, row  # type: ignore[return-value]
        return None

    def _cancel_in_db(self, jobid: int, withdrawn: tuple[DBQueue, JobRow] | None) -> tuple[str, JobRow] | None:
        """db.cancel; a lease withdrawn for it goes back if the database cannot take the cancel."""
        try:
            return self.db.cancel(jobid, self.node, withdrawn is not None)
        except DatabaseUnavailable:
            if withdrawn is not None:
                withdrawn[0].give_back([withdrawn[1]])
            raise

    def cancel(self, jobid: int) -> JobRow:
        """`cancel`: a queued job never runs; a running one sees job.cancelled."""
        res = self._cancel_in_db(jobid, self._withdraw(jobid))
        if res is None:
            raise UnknownJob(f"no job {jobid}")
        before, row = res
        if before in STATES_FINAL:
            raise JobRejected(f"job {jobid} has already ended ({before}); nothing to cancel")
        if row.state in ("running", "leased"):     # leased: a worker here is starting it
            with self._lock:
                job = self._running.get(jobid)
            if job is not None:
                job.cancelled = True
        self.completions.notify(jobid)
        return row

    def flag_cancelled(self, jobids: list[int]) -> None:
        """Runs here whose cancel was asked elsewhere (seen at the heartbeat) see job.cancelled;
        jobs leased here and not started yet are cancelled."""
        for jobid in jobids:
            withdrawn = self._withdraw(jobid)
            if withdrawn is not None:
                with contextlib.suppress(DatabaseUnavailable):      # given back: cancelled when released
                    self._cancel_in_db(jobid, withdrawn)
        with self._lock:
            for jobid in jobids:
                job = self._running.get(jobid)
                if job is not None:
                    job.cancelled = True

    def retry(self, jobid: int) -> JobRow:
        """`retry`: queue a failed or cancelled job again."""
        res = self.db.retry(jobid)
        if res is None:
            raise UnknownJob(f"no job {jobid}")
        before, row = res
        if before not in ("failed", "cancelled"):
            raise JobRejected(f"job {jobid} is {'new' if before == 'held' else before}; "
                              "only failed or cancelled jobs can be retried")
        jt = self.types.get(row.jobname)
        if jt is not None and jt.queue is not None:
            jt.queue.wake()
        return row

    def wait(self, jobid: int, timeout: float | None, gone: Callable[[], bool]) -> JobRow | None:
        """Block until the job has ended; None on timeout or when the client went away."""
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True
        while True:
            ev = self.completions.register(jobid)
            try:
                # a job running here, or whose outcome is being committed, will wake `ev` (its
                # end is reported after the set forgets it): no need to read it the first time
                if not (first and jobid in self._unsettled):
                    row = self.db.get_job(jobid)
                    if row is None:
                        raise UnknownJob(f"no job {jobid}")
                    if row.is_final:
                        return row
                first = False
                step = self.config.server.poll_interval
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
