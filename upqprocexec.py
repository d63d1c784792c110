"""ProcessExecutor: a job type's runs in pre-started, reused worker processes (isolation = process).

Each worker is a fresh interpreter running upqworker.py, the leader of its own session
and process group, connected by a socketpair. A run that kills its worker, passes its
timeout, or ignores a cancel for `kill_grace` seconds ends as a clear Outcome; the worker's
whole group is stopped (SIGTERM, then SIGKILL after kill_grace) by a reaper thread while
the slot is free at once and a fresh worker takes it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from parseconfig import JobConfig
from upqexec import Executor, ThreadExecutor
from upqjob import UpqJob
from upqstates import Outcome, OutcomeKind
from upqworkerproc import WorkerGone, WorkerProc, death_message, serve_call, wait_ready, worker_user

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upqworker.py")
TICK = 0.1                  # how often a waiting run looks at job.cancelled


class ProcessExecutor:
    """A job type's worker processes: an idle pool of `size()` (pre-started), one per busy run."""

    def __init__(self, config: JobConfig, jobs_dir: str, logger: logging.Logger, size: Callable[[], int],
                 user: tuple[int, int] | None = None):
        self.config = config            # replaced whole by reconfigure
        self.jobs_dir = jobs_dir
        self.log = logger
        self.size = size
        self.user = user                # (uid, gid) to run the workers as, or None
        self._lock = threading.Lock()   # guards _idle, _all, _generation, _closed
        self._idle: list[WorkerProc] = []
        self._all: set[WorkerProc] = set()
        self._generation = 0
        self._closed = False
        try:
            for _ in range(size()):
                self._idle.append(self._start())
        except (OSError, subprocess.SubprocessError) as exc:
            self.log.error("job %s: cannot start a worker process: %s", config.name, exc)

    # -- the pool ------------------------------------------------------------
    def _start(self) -> WorkerProc:
        """Start one worker process (it says ready once its job module is imported)."""
        cfg = self.config
        ours, theirs = socket.socketpair()
        init = {"jobs_dir": self.jobs_dir, "name": cfg.name, "options": dict(cfg.options),
                "max_memory": cfg.max_memory, "max_cpu": cfg.max_cpu, "capture": cfg.log_limit > 0}
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user[0], group=self.user[1], extra_groups=[])
        proc = subprocess.Popen([sys.executable, RUNNER, str(theirs.fileno()), json.dumps(init)],
                                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd="/", **kwargs)
        theirs.close()
        w = WorkerProc(proc, ours, self._generation)
        with self._lock:
            self._all.add(w)
        return w

    def _take(self) -> WorkerProc:
        with self._lock:
            w = self._idle.pop() if self._idle else None
        return w if w is not None else self._start()

    def _give_back(self, w: WorkerProc, retire: bool = False) -> None:
        w.runs += 1
        limit = self.config.max_runs_per_process
        with self._lock:
            keep = not retire and not self._closed and w.generation == self._generation and \
                not (limit and w.runs >= limit) and len(self._idle) < self.size()
            if keep:
                self._idle.append(w)
        if not keep:
            self._retire(w)
            self._refill()

    def _refill(self) -> None:
        """Keep `size()` idle workers ready, so the next run (a retry too) starts at once."""
        with self._lock:
            short = 0 if self._closed else self.size() - len(self._idle)
        for _ in range(max(0, short)):
            try:
                w = self._start()
            except (OSError, subprocess.SubprocessError) as exc:
                self.log.error("job %s: cannot start a worker process: %s", self.config.name, exc)
                return
            with self._lock:
                self._idle.append(w)

    def _retire(self, w: WorkerProc) -> None:
        """An idle worker leaves: told to exit, then reaped by a thread of its own."""
        with self._lock:
            self._all.discard(w)
        try:
            w.send(op="exit")
        except WorkerGone:
            pass
        self._reaper(w, stop=False)

    def _reaper(self, w: WorkerProc, stop: bool) -> None:
        """A thread that (if `stop`) sends SIGTERM to the worker's group, waits up to kill_grace
        for the worker to exit, then SIGKILLs what is left and reaps it."""
        with self._lock:
            self._all.discard(w)
        grace = self.config.kill_grace

        def reap() -> None:
            if stop:
                w.kill_group(signal.SIGTERM)
            if w.exit_status(grace) is None:
                self.log.warning("job %s: worker process %d still alive %gs after SIGTERM: SIGKILL",
                                 self.config.name, w.pid, grace)
            w.reap()
        threading.Thread(target=reap, name=f"{self.config.name}-reap-{w.pid}", daemon=True).start()

    # -- one run ---------------------------------------------------------------
    def execute(self, job: UpqJob, jobid: int, timeout: float | None) -> Outcome:
        """Run `job` in a worker process; every way that can end comes back as an Outcome."""
        if self._closed:
            threading.Event().wait()    # the daemon is exiting: the run is left to be re-run
        cfg = self.config
        for tries in range(3):
            try:
                w = self._take()
            except (OSError, subprocess.SubprocessError) as exc:
                return Outcome(OutcomeKind.FAILED, f"worker process could not start: {exc}")
            try:
                if not w.ready:
                    problem = wait_ready(w)
                    if problem:
                        self._reaper(w, stop=True)
                        return Outcome(OutcomeKind.FAILED, problem)
                w.send(op="run", jobid=jobid, attempt=job.attempt, params=job.jobdata, paths=job.paths)
            except WorkerGone:          # it died while idle: the job has not started, take another
                self._reaper(w, stop=True)
                continue
            t0 = time.monotonic()       # the timeout counts from the start of run(), as in a thread
            try:
                return self._follow(w, job, cfg, None if timeout is None else t0 + timeout, timeout)
            except WorkerGone:
                return self._died(w, cfg)
        return Outcome(OutcomeKind.FAILED, "worker processes keep dying before the run starts")

    def _follow(self, w: WorkerProc, job: UpqJob, cfg: JobConfig, deadline: float | None,
                timeout: float | None) -> Outcome:
        """Wait for the run's outcome, forwarding a cancel; stop the worker at a deadline."""
        cancel_by: float | None = None
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.log.warning("job %s #%s: timed out after %gs; stopping worker process %d",
                                 cfg.name, job.jobid, timeout, w.pid)
                return self._stop_run(w, f"timeout: run() took longer than {timeout:g} s; "
                                         "its worker process was stopped")
            if job.cancelled and cancel_by is None:
                w.send(op="cancel", jobid=job.jobid)
                cancel_by = now + cfg.kill_grace
            if cancel_by is not None and now >= cancel_by:
                return self._stop_run(w, f"cancelled: run() did not return within kill_grace "
                                         f"({cfg.kill_grace:g} s); its worker process was stopped")
            ends = [t for t in (deadline, cancel_by) if t is not None]
            wait = min([TICK] + [max(0.0, t - now) for t in ends])
            msg = w.receive(wait)
            if msg is None:
                continue
            if msg.get("op") == "log":
                alog = getattr(job, "_upq_log", None)
                if alog is not None:
                    alog.add(str(msg.get("text", "")))
                continue
            if msg.get("op") in ("submit", "wait_child"):
                serve_call(w, job, msg, cfg.name)
                continue
            if msg.get("op") != "outcome":
                continue
            job.msg, job.result = msg.get("msg") or "", msg.get("result")
            self._give_back(w, retire=bool(msg.get("retire")))
            delay = msg.get("delay")
            return Outcome(OutcomeKind(msg["kind"]), job.msg, job.result,
                           delay=None if delay is None else float(delay))

    def _stop_run(self, w: WorkerProc, why: str) -> Outcome:
        self._reaper(w, stop=True)
        self._refill()
        return Outcome(OutcomeKind.FAILED, why)

    def _died(self, w: WorkerProc, cfg: JobConfig) -> Outcome:
        """The worker closed its socket mid-run: find out how it ended and replace it."""
        status = w.exit_status(cfg.kill_grace + 1.0)
        if self._closed:
            w.reap() if status is not None else None
            threading.Event().wait()    # close() stopped it: the daemon is exiting
        if status is None:              # closed its socket but lives on: stop it
            self._reaper(w, stop=True)
            why = "worker process closed its connection to the daemon"
        else:
            with self._lock:
                self._all.discard(w)
            w.reap()
            why = death_message(status, cfg)
        self.log.warning("job %s: %s", cfg.name, w.fenced or why)
        self._refill()
        if w.fenced:
            return Outcome(OutcomeKind.RETRY, w.fenced, delay=0.0)
        return Outcome(OutcomeKind.FAILED, why)

    # -- life cycle ------------------------------------------------------------
    def reconfigure(self, config: JobConfig) -> None:
        """A reload: new settings and job code; idle workers are replaced now, busy ones after
        their current run."""
        with self._lock:
            self.config = config
            self._generation += 1
            idle, self._idle = self._idle, []
        for w in idle:
            self._retire(w)
        self._refill()

    def close(self) -> None:
        """The daemon is stopping (after shutdown_grace): stop every worker, busy or idle."""
        with self._lock:
            self._closed = True
            workers, self._idle = list(self._all), []
        for w in workers:
            w.kill_group(signal.SIGTERM)
        deadline = time.monotonic() + min(self.config.kill_grace, 5.0)
        for w in workers:
            w.exit_status(max(0.0, deadline - time.monotonic()))
            w.kill_group(signal.SIGKILL)

    def fence(self, why: str) -> int:
        """The partition guard: SIGKILL every busy worker now; their runs end as a retry."""
        with self._lock:
            busy = [w for w in self._all if w not in self._idle]
        for w in busy:
            w.fenced = why
            w.kill_group(signal.SIGKILL)
        return len(busy)


def executor_for(cfg: JobConfig, jobs_dir: str, log: logging.Logger, queue: Any, slots: Any) -> Executor:
    """A type's executor by its `isolation`: worker processes, as many as it has slots, or
    threads (a timed-out run's thread is abandoned: it holds the type back until it ends)."""
    if cfg.isolation == "process":
        return ProcessExecutor(cfg, jobs_dir, log, lambda: slots.size, worker_user(cfg.user))

    def abandoned(jobid: int) -> None:
        slots.abandon()
        queue.hold_back(jobid)

    def reaped(jobid: int) -> None:
        slots.reaped()
        queue.release_hold(jobid)
    return ThreadExecutor(cfg.name, log, abandoned, reaped)


def reconfigured(executor: Any, old: JobConfig, new: JobConfig, make: Callable[[], Any]) -> Any:
    """A reload: process workers take the new code and settings (idle ones now, busy ones after
    their run); a changed isolation gets a new executor (`make`) and the old one drains."""
    if new.isolation != old.isolation:
        if isinstance(executor, ProcessExecutor):
            executor.size = lambda: 0
            executor.reconfigure(executor.config)
        return make()
    if isinstance(executor, ProcessExecutor):
        executor.reconfigure(new)
    return executor
