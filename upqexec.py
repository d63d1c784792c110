"""Where a job's run() executes: the executor seam.

The queue manager hands an executor a job and gets an Outcome back, whatever
happened inside run(); it does not care where the job ran. ThreadExecutor runs
it in the worker's own thread, or, with a timeout, in a thread of its own that
is abandoned at the deadline (CPython cannot kill a thread). A process executor
(issue 13) plugs in behind the same interface.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Protocol

from upqjob import Retry, UpqJob
from upqstates import Outcome, OutcomeKind


class Executor(Protocol):
    """Runs job.run() somewhere; every way it can end comes back as an Outcome."""

    def execute(self, job: UpqJob, jobid: int, timeout: float | None) -> Outcome: ...

    def close(self) -> None: ...


def run_job(job: UpqJob, log: logging.Logger) -> Outcome:
    """Call job.run() and turn every way it can end into an Outcome; never raises."""
    try:
        ok = job.run()
    except SystemExit as exc:
        return Outcome(OutcomeKind.FAILED, f"SystemExit: run() called sys.exit({exc.code!r})", job.result)
    except BaseException as exc:  # noqa: BLE001 - a job's bug (even KeyboardInterrupt) must not reach the daemon
        log.exception("job %s #%s raised", job.jobname, job.jobid)
        return Outcome(OutcomeKind.FAILED, f"{type(exc).__name__}: {exc}", job.result)
    if ok is True:
        return Outcome(OutcomeKind.DONE, job.msg, job.result)
    if ok is False:
        return Outcome(OutcomeKind.FAILED, job.msg or "run() returned False", job.result)
    if isinstance(ok, Retry):
        return Outcome(OutcomeKind.RETRY, ok.msg or job.msg or "asked to run again", job.result,
                       delay=None if ok.delay is None else max(0.0, float(ok.delay)))
    return Outcome(OutcomeKind.FAILED, f"run() returned {type(ok).__name__} {ok!r:.80}, not True or False",
                   job.result)


class ThreadExecutor:
    """run() in the calling thread; with a timeout in a thread of its own, abandoned at the
    deadline. `on_abandoned(jobid)` / `on_reaped(jobid)` tell the owner when such a thread
    is left running and when it has ended (from the reaper thread)."""

    def __init__(self, jobname: str, logger: logging.Logger,
                 on_abandoned: Callable[[int], None], on_reaped: Callable[[int], None]):
        self.jobname = jobname
        self.log = logger
        self.on_abandoned = on_abandoned
        self.on_reaped = on_reaped

    def execute(self, job: UpqJob, jobid: int, timeout: float | None) -> Outcome:
        if timeout is None:
            return run_job(job, self.log)
        box: list[Outcome] = []
        t = threading.Thread(target=lambda: box.append(run_job(job, self.log)),
                             name=f"{self.jobname}-run-{jobid}", daemon=True)
        t.start()
        t.join(timeout)
        if not t.is_alive():
            return box[0]
        job.cancelled = True            # a cooperative job may notice and stop
        self.on_abandoned(jobid)
        self.log.warning("job %s #%d: timed out after %gs; its thread keeps running, its result "
                         "will be discarded", self.jobname, jobid, timeout)
        threading.Thread(target=self._reap, args=(t, jobid), name=f"reap-{jobid}", daemon=True).start()
        return Outcome(OutcomeKind.FAILED, f"timeout: run() took longer than {timeout:g} s")

    def _reap(self, t: threading.Thread, jobid: int) -> None:
        t.join()
        self.log.info("job %s #%d: the timed-out run has ended; its result was discarded", self.jobname, jobid)
        self.on_reaped(jobid)

    def close(self) -> None:
        """Threads cannot be stopped; abandoned ones end on their own."""
