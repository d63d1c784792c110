"""QueueManager: executes jobs. Per enabled job type one DBQueue, its worker threads and slots.

A worker takes a started job from its type's queue, runs it through the type's
executor (upqexec.py) and writes the outcome without waiting for the commit.
Once committed, the outcome goes to a list of hooks, in order: this manager's
own (settle the run, wake the queue for a retry, log, set `job.finished`), then
the ones it was given (waiters, notifications). Hooks run on the writer thread:
they must be quick and never wait for a write.

`concurrent` bounds the runs of a type that are not waiting on a child: a run
waiting on one lends its slot (`lending`), so sub-jobs cannot deadlock even at
concurrent = 1. A run past `timeout` fails at once; its thread is abandoned and
counted, and with `concurrent` of them alive the type stops claiming.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

from dbqueue import DBQueue
from groupcommit import Pending
from parseconfig import Config, JobConfig
from upqdb import Database
from upqerrors import JobRejected, QueueStopped, UnknownJob
from upqexec import Executor
from upqprocexec import executor_for, reconfigured
from upqjob import JobHost, UpqJob
from upqjoblog import JobLogs
from upqschema import JobRow, utcnow
from upqslots import Run, Runs, Slots
from upqstates import Outcome, OutcomeKind, RetryPolicy, State


@dataclass(slots=True)
class Ended:
    """A run's outcome once committed (or given up on): what every after-outcome hook receives."""
    config: JobConfig
    row: JobRow                 # the run as it started
    outcome: Outcome
    job: UpqJob | None
    stored: JobRow | None       # as committed; None when fenced out, or not recorded (`error` says why)
    error: str = ""


Hook = Callable[[Ended], None]


@dataclass
class JobType:
    """One enabled job type. `config` and `cls` are replaced whole by a reload (readers take
    one reference); the counters live in `slots`, under its lock."""
    config: JobConfig
    cls: type[UpqJob]
    queue: DBQueue
    executor: Executor
    logger: logging.Logger
    slots: Slots = field(default_factory=lambda: Slots(1))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def inline(self) -> bool:
        """concurrent = 0: submissions run in the connection's thread."""
        return self.config.concurrent == 0

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.config.retries, self.config.retry_delay)

    def instantiate(self, params: dict[str, str], host: JobHost, paths: Mapping[str, str],
                    row: JobRow | None = None) -> UpqJob:
        """A job object of this type; JobRejected if its constructor fails."""
        try:
            return self.cls(self.name, self.config.options, params, paths, host=host, logger=self.logger,
                            jobid=None if row is None else row.jobid, attempt=0 if row is None else row.attempts)
        except Exception as exc:  # noqa: BLE001 - a job's bug becomes its failure
            self.logger.exception("job %s: constructor raised", self.name)
            raise JobRejected(f"{self.cls.__name__}() raised {type(exc).__name__}: {exc}") from exc


def log_outcome(log: logging.Logger, e: Ended) -> None:
    """The after-outcome hook that logs: a failure, retry or loss at info or warning, done at debug."""
    row, stored = e.row, e.stored
    if e.error:
        log.warning("job %d: outcome %s %s", row.jobid, e.outcome.kind, e.error)
    elif stored is None:
        log.warning("job %d: outcome %s discarded (the job was taken over)", row.jobid, e.outcome.kind)
    elif stored.state == State.NEW:
        log.info("job %s #%d attempt %d: %s; runs again after %s", row.jobname, row.jobid,
                 row.attempts, e.outcome.msg, stored.run_after)
    else:
        # done is the hot path: at debug, so the log does not slow a busy daemon down
        log.log(logging.DEBUG if stored.state == State.DONE else logging.WARNING,
                "job %s #%d %s: %s", row.jobname, row.jobid, stored.state, stored.msg)


def wanted_slots(config: JobConfig) -> int:
    """Worker threads of a type; an inline one keeps one for re-runs, retries and delayed jobs."""
    return max(1, config.concurrent)


class QueueManager:
    """Owns the job types, their queues, workers and slots, and the runs on this daemon."""

    def __init__(self, config: Config, db: Database, job_classes: Mapping[str, type[UpqJob]],
                 logger: logging.Logger, node: str, hooks: Sequence[Hook] = (), joblogs: JobLogs | None = None):
        self.config = config            # replaced whole by reconfigure
        self.db = db
        self.joblogs = joblogs or JobLogs(db, logger)
        self.log = logger
        self.node = node
        self.runs = Runs()
        self._hooks: tuple[Hook, ...] = (self._settle, self._wake_for_retry,
                                         functools.partial(log_outcome, logger), self._set_finished, *hooks)
        self._classes = dict(job_classes)
        # published whole, never changed in place: readers on any thread take a snapshot;
        # the main thread (start, reconfigure, under upq's reload lock) writes it
        self.types: Mapping[str, JobType] = {}
        self._stopping = threading.Event()
        self._alone = False             # no other daemon on the database; the heartbeat thread's
        self._host: JobHost | None = None
        self.is_paused: Callable[[str], bool] = lambda name: False   # upq.py: Pauses.is_paused

    # -- life cycle --------------------------------------------------------
    def add_hook(self, hook: Hook) -> None:
        """One more after-outcome hook (e.g. /metrics' counters); before start() only."""
        assert not self.types, "hooks are fixed once the workers run"
        self._hooks = (*self._hooks, hook)

    def start(self, host: JobHost) -> None:
        """Create each type's queue and start its workers; jobs they run submit through `host`."""
        self._host = host
        self.joblogs.start()
        self.types = {name: self._start_type(cfg, self._classes[name])
                      for name, cfg in self.config.enabled_jobs().items()}

    def _start_type(self, cfg: JobConfig, cls: type[UpqJob]) -> JobType:
        srv = self.config.server
        queue = DBQueue(self.db, cfg.name, self.node, self.log, poll_interval=srv.poll_interval,
                        slots=wanted_slots(cfg), lease_validity=srv.node_timeout / 2)
        queue.set_leasing(self._alone)
        if self.is_paused(cfg.name):
            queue.set_paused(True)
        slots = Slots(wanted_slots(cfg))
        jt = JobType(cfg, cls, queue, self._executor_for(cfg, queue, slots),
                     self.log.getChild(f"job.{cfg.name}"), slots)   # getChild takes logging's lock: once
        for _ in range(slots.size):
            self._spawn_worker(jt)
        return jt

    def _executor_for(self, cfg: JobConfig, queue: DBQueue, slots: Slots) -> Executor:
        return executor_for(cfg, self.config.paths.jobs_dir, self.log, queue, slots)

    def reconfigure(self, config: Config, job_classes: Mapping[str, type[UpqJob]]) -> list[str]:
        """Apply reloaded [job] sections: added, removed and resized types; returns what changed.

        A removed type's running jobs finish; its queued ones stay in the database."""
        changes: list[str] = []
        wanted = config.enabled_jobs()
        self.config, self._classes = config, dict(job_classes)
        types = dict(self.types)
        for name in sorted(set(types) - set(wanted)):
            types.pop(name).queue.stop()
            changes.append(f"removed {name}")
        for name, cfg in sorted(wanted.items()):
            jt = types.get(name)
            if jt is None:
                types[name] = self._start_type(cfg, job_classes[name])
                changes.append(f"added {name}")
                continue
            old = jt.config.concurrent
            jt.executor = reconfigured(jt.executor, jt.config, cfg, lambda: self._executor_for(cfg, jt.queue, jt.slots))
            jt.config, jt.cls = cfg, job_classes[name]
            if cfg.concurrent != old:
                changes.append(f"{name} concurrent {old} -> {cfg.concurrent}")
                for _ in range(jt.slots.resize(wanted_slots(cfg))):
                    self._spawn_worker(jt)
                jt.queue.resize(wanted_slots(cfg))      # extra workers notice and retire
        self.types = types
        return changes

    def concurrent(self) -> dict[str, int]:
        """{job type: concurrent} of the types enabled here (stored for `why` on other daemons)."""
        return {name: jt.config.concurrent for name, jt in self.types.items()}

    def set_peers(self, peers: int) -> None:
        """The heartbeat counted the other live daemons: lease ahead only while there are none."""
        alone = peers == 0
        if alone == self._alone:
            return
        self._alone = alone
        self.log.info("%s", "alone on the database: leasing jobs ahead" if alone else
                      f"{peers} other daemon(s) on the database: claiming one job per idle worker")
        for jt in self.types.values():
            jt.queue.set_leasing(alone)

    def wake_all(self) -> None:
        """Jobs were re-queued behind our back (a dead node's): let every type look."""
        for jt in self.types.values():
            jt.queue.wake()

    def set_paused(self, jobname: str, paused: bool) -> None:
        """A pause or resume read from the database (upqpause.Pauses' on_change)."""
        jt = self.types.get(jobname)
        if jt is not None:
            jt.queue.set_paused(paused)

    def wake(self, jobname: str) -> None:
        jt = self.types.get(jobname)
        if jt is not None:
            jt.queue.wake()

    def stop(self, grace: float) -> bool:
        """Stop starting jobs; wait up to `grace` seconds for running ones. True if all ended."""
        self._stopping.set()
        types = list(self.types.values())
        for jt in types:
            jt.slots.wake_all()
            jt.queue.stop()
        deadline = time.monotonic() + grace
        for jt in types:
            for t in jt.slots.threads():
                t.join(max(0.0, deadline - time.monotonic()))
        for jt in types:
            jt.executor.close()
        self.joblogs.stop()
        return not any(t.is_alive() for jt in types for t in jt.slots.threads())

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _keep_trying(self) -> bool:
        """Outcome writes wait out a database outage until the daemon stops."""
        return not self._stopping.is_set()

    def job_type(self, name: str) -> JobType:
        jt = self.types.get(name)
        if jt is None:
            raise UnknownJob(f"unknown job type {name!r} (see 'help' for the enabled ones)")
        return jt

    # -- running -----------------------------------------------------------
    def _spawn_worker(self, jt: JobType) -> None:
        t = threading.Thread(target=self._work, args=(jt,), daemon=True)
        jt.slots.add_worker(t, f"{jt.name}-")
        t.start()

    def _work(self, jt: JobType) -> None:
        assert self._host is not None
        while not self.stopping:
            jt.slots.wait_while_held_back(self._stopping.is_set, jt.name, self.log)
            try:
                row = jt.queue.get(leave=jt.slots.try_retire)
            except QueueStopped:
                return
            try:
                job = jt.instantiate(row.params, self._host, self.config.paths.extra, row)
            except JobRejected as exc:
                self._record(jt, row, Outcome(OutcomeKind.FAILED, exc.reason), None)
                continue
            self._execute(jt, job, row, holds_slot=True)
            if jt.slots.try_retire():
                return
        jt.slots.leave()

    def run_inline(self, jt: JobType, job: UpqJob, row: JobRow) -> JobRow | None:
        """concurrent = 0: run in the caller's thread (holding no slot) and wait until the
        outcome is committed and its hooks have run; the stored row (None if not recorded)."""
        box: list[JobRow | None] = []
        done = threading.Event()

        def committed(f: "Pending[JobRow | None]") -> None:     # runs after the hooks
            box.append(None if f.exception() is not None else f.result())
            done.set()
        self._execute(jt, job, row, holds_slot=False).add_done_callback(committed)
        done.wait()
        return box[0]

    def _execute(self, jt: JobType, job: UpqJob, row: JobRow, holds_slot: bool) -> "Pending[JobRow | None]":
        """Run one started job; a worker's run holds one of the type's slots."""
        run = Run(job, jt.slots, holds_slot)
        if holds_slot:
            jt.slots.acquire(self._stopping.is_set)
        self.runs.begin(row.jobid, run)
        alog = self.joblogs.attach(job, row.jobid, row.attempts, jt.config.log_limit, jt.logger)
        t0 = time.perf_counter()
        try:
            outcome = jt.executor.execute(job, row.jobid, jt.config.timeout)
            jt.queue.ran(time.perf_counter() - t0)
        finally:
            self.runs.end(row.jobid)
            jt.slots.finish(run)
            self.joblogs.end(alog)
        return self._record(jt, row, outcome, job)

    @contextlib.contextmanager
    def lending(self, parent: UpqJob) -> Iterator[None]:
        """While a run waits on a child it gives up its slot (and a worker is added if needed)."""
        run = None if parent.jobid is None else self.runs.get(parent.jobid)
        jt = None if run is None or run.job is not parent else self.types.get(parent.jobname)
        lent = spawn = False
        if jt is not None and run is not None:
            lent, spawn = jt.slots.lend(run)
        if not lent:
            yield               # an inline run holds no slot
            return
        assert jt is not None and run is not None
        if spawn and not self.stopping:
            self._spawn_worker(jt)
        try:
            yield
        finally:
            jt.slots.unlend(run, self._stopping.is_set)
            jt.queue.kick()         # an extra worker may retire now

    def _record(self, jt: JobType, row: JobRow, outcome: Outcome, job: UpqJob | None) -> "Pending[JobRow | None]":
        """Write the outcome; the hooks run once it is committed (workers do not wait for that)."""
        fut = self.db.record_outcome_async(row, outcome, self.node, jt.policy, self._keep_trying)
        config = jt.config
        fut.add_done_callback(lambda f: self._after_commit(config, row, outcome, job, f))
        return fut

    def _after_commit(self, config: JobConfig, row: JobRow, outcome: Outcome, job: UpqJob | None,
                      f: "Pending[JobRow | None]") -> None:
        exc = f.exception()
        ended = (Ended(config, row, outcome, job, f.result()) if exc is None else
                 Ended(config, row, outcome, job, None, f"not recorded ({exc}); it will run again"))
        for hook in self._hooks:
            try:
                hook(ended)
            except Exception:  # noqa: BLE001 - reporting must never break job processing
                self.log.exception("job %d: an after-outcome hook failed", row.jobid)

    # -- this manager's own hooks --------------------------------------------
    def _settle(self, e: Ended) -> None:
        self.runs.settle(e.row.jobid)           # before waiters are woken: see Control.wait

    def _wake_for_retry(self, e: Ended) -> None:
        stored = e.stored
        if stored is not None and stored.state == State.NEW and stored.run_after is not None:
            jt = self.types.get(stored.jobname)
            if jt is not None:
                wait = (stored.run_after - utcnow()).total_seconds()
                jt.queue.wake_at(time.monotonic() + max(0.0, wait))

    def _set_finished(self, e: Ended) -> None:
        if e.job is not None and e.stored is not None and e.stored.is_final:
            e.job.finished.set()

    # -- for the control commands -------------------------------------------
    def withdraw(self, jobid: int) -> tuple[DBQueue, JobRow] | None:
        """Take a job leased here out of its queue, so that no worker starts it."""
        for jt in self.types.values():
            row = jt.queue.withdraw(jobid)
            if row is not None:
                return jt.queue, row
        return None
