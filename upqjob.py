"""UpqJob: the base class every job type derives from (see README, "Writing a job")."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Protocol


@dataclass(frozen=True)
class Retry:
    """Returned by run() (via UpqJob.retry) to be run again later; not a failure."""
    msg: str
    delay: float | None     # None: the type's retry_delay


class JobHost(Protocol):
    """What a job may ask of the daemon; implemented by upqsubmit.Submitter."""

    def enqueue_from_check(self, job: "UpqJob") -> int: ...

    def submit_child(self, parent: "UpqJob", jobname: str, params: Mapping[str, str]) -> "UpqJob": ...


class UpqJob:
    """A job: `check()` runs at submission, `run()` in a worker thread.

    Attributes kept from the 2011 API: jobname, jobid, jobdata, jobcfg, paths, msg,
    result, finished (threading.Event set when a run ends); added: attempt, logger,
    cancelled.
    """

    def __init__(self, jobname: str, jobcfg: Mapping[str, str], jobdata: dict[str, str],
                 paths: Mapping[str, str], *, host: JobHost | None = None,
                 logger: logging.Logger | None = None, jobid: int | None = None,
                 attempt: int = 0):
        self.jobname = jobname
        self.jobcfg = dict(jobcfg)
        self.jobdata = jobdata
        self.paths = dict(paths)
        self.jobid = jobid
        self.attempt = attempt
        self.msg = ""
        self.result: Any = None
        self.finished = threading.Event()
        self.cancelled = False
        self.logger = logger or logging.getLogger(f"upq.job.{jobname}")
        self._host = host

    def check(self) -> bool:
        """Accept (True) or refuse (False, reason in self.msg) a submission; default accepts."""
        return True

    def run(self) -> bool:
        """Do the work; True means done, False failed (reason in self.msg)."""
        raise NotImplementedError(f"{type(self).__name__}.run() is not written")

    def enqueue_job(self) -> int:
        """Store and queue this job from inside check(), as 2011-style jobs do; returns jobid."""
        if self._host is None:
            raise RuntimeError("this job is not attached to a running upq")
        if self.jobid is None:
            self.jobid = self._host.enqueue_from_check(self)
        return self.jobid

    def submit(self, jobname: str, params: Mapping[str, str] | None = None) -> "UpqJob":
        """Start another job from this one; wait on `child.finished`, then read `child.result`."""
        if self._host is None:
            raise RuntimeError("this job is not attached to a running upq")
        return self._host.submit_child(self, jobname, params or {})

    def retry(self, msg: str = "", delay: float | None = None) -> Retry:
        """`return self.retry("mirror busy", delay=60)`: run again later, without using up `retries`."""
        return Retry(msg, delay)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.jobname} #{self.jobid}>"
