"""Per-job logs (issue 13): what a run writes, kept per job and attempt in the database.

AttemptLog collects one attempt's lines (from its own `self.logger`, and in a worker
process its stdout and stderr), capped at the type's `log_limit` characters: past it
the first and the last parts are kept with a marker between. JobLogs owns the
`joblog-flush` thread, which writes the logs of running attempts about twice a second
(so `log` shows lines of a running job) and once more when the run ends.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Connection

from upqschema import job_logs

FLUSH_INTERVAL = 0.5
LINE_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s")


class AttemptLog(logging.Handler):
    """One attempt's capped lines; a logging.Handler so a job's logger writes straight into it.
    Its fields are guarded by the Handler's own lock (`self.lock`)."""

    def __init__(self, jobid: int, attempt: int, limit: int):
        super().__init__(logging.DEBUG)
        self.setFormatter(LINE_FORMAT)
        self.jobid, self.attempt, self.limit = jobid, attempt, limit
        self._head: list[str] = []
        self._head_chars = 0
        self._tail: collections.deque[str] = collections.deque()
        self._tail_chars = 0
        self._cut_lines = self._cut_chars = 0
        self.dirty = False
        self.written = False        # a row exists (or is on its way): the end is written too
        self.ended = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.add(self.format(record))
        except Exception:  # noqa: BLE001 - a bad log call must not break the job
            self.handleError(record)

    def add(self, text: str) -> None:
        """Lines (text may hold several) at the end of the log, within log_limit."""
        half = self.limit // 2
        with self.lock:     # type: ignore[union-attr]  (Handler.createLock made it)
            for line in text.splitlines() or [""]:
                cost = len(line) + 1
                if not self._tail and self._head_chars + cost <= half:
                    self._head.append(line)
                    self._head_chars += cost
                    continue
                line = line[:max(0, self.limit - half - 1)]
                self._tail.append(line)
                self._tail_chars += len(line) + 1
                while self._tail and self._tail_chars > self.limit - half:
                    gone = self._tail.popleft()
                    self._tail_chars -= len(gone) + 1
                    self._cut_lines += 1
                    self._cut_chars += len(gone) + 1
            self.dirty = True

    def snapshot(self) -> tuple[str, bool]:
        """(text, truncated) as stored; clears `dirty`."""
        with self.lock:     # type: ignore[union-attr]
            lines = list(self._head)
            if self._cut_lines:
                lines.append(f"[... {self._cut_lines} lines ({self._cut_chars} characters) left out: "
                             f"log_limit is {self.limit} ...]")
            lines.extend(self._tail)
            self.dirty = False
            return "\n".join(lines), bool(self._cut_lines)


class JobLogs:
    """The logs of the runs on this daemon and their writes; `_lock` guards `_active`."""

    def __init__(self, db: Any, logger: logging.Logger):
        self.db = db
        self.log = logger
        self._lock = threading.Lock()
        self._active: dict[tuple[int, int], AttemptLog] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flusher, name="joblog-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def begin(self, jobid: int, attempt: int, limit: int, parent: logging.Logger) -> tuple[AttemptLog, logging.Logger]:
        """A run starts: its log, and a logger of its own writing into it (and, as before, to
        the daemon's log). The logger is not registered with logging, so it goes with the run."""
        alog = AttemptLog(jobid, attempt, limit)
        lg = logging.Logger(parent.name)
        lg.parent = parent
        lg.addHandler(alog)
        with self._lock:
            self._active[(jobid, attempt)] = alog
        return alog, lg

    def attach(self, job: Any, jobid: int, attempt: int, limit: int, parent: logging.Logger) -> AttemptLog | None:
        """Give a starting run its own logger and log (none with log_limit = 0); a process
        executor feeds the worker's lines to `job._upq_log`."""
        if not limit:
            return None
        alog, job.logger = self.begin(jobid, attempt, limit, parent)
        job._upq_log = alog
        return alog

    def end(self, alog: AttemptLog | None) -> None:
        """The run has ended: its last lines are written (without waiting for the commit)."""
        if alog is None:
            return
        with self._lock:
            self._active.pop((alog.jobid, alog.attempt), None)
        alog.ended = True
        if alog.dirty or alog.written:
            self._write(alog)

    def _flusher(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            with self._lock:
                dirty = [a for a in self._active.values() if a.dirty]
            for alog in dirty:
                self._write(alog)

    def _write(self, alog: AttemptLog) -> None:
        text, truncated = alog.snapshot()
        alog.written = True
        key = and_(job_logs.c.jobid == alog.jobid, job_logs.c.attempt == alog.attempt)
        values = dict(text=text, truncated=int(truncated), live=int(not alog.ended))

        def op(conn: Connection) -> None:
            if conn.execute(update(job_logs).where(key).values(**values)).rowcount == 0:
                conn.execute(insert(job_logs).values(jobid=alog.jobid, attempt=alog.attempt, **values))
        fut = self.db.writer.submit(op)
        fut.add_done_callback(lambda f: f.exception() is not None and self.log.warning(
            "job %d attempt %d: log not stored: %s", alog.jobid, alog.attempt, f.exception()))

    def read(self, jobid: int, attempt: int) -> dict[str, Any]:
        """The stored log of one attempt of a job, as the `log` command answers it."""
        def q(conn: Connection) -> Any:
            return conn.execute(select(job_logs.c.text, job_logs.c.truncated).where(
                and_(job_logs.c.jobid == jobid, job_logs.c.attempt == attempt))).first()
        r = self.db._read(q)
        return {"jobid": jobid, "attempt": attempt, "lines": r.text.split("\n") if r is not None and r.text else [],
                "truncated": bool(r is not None and r.truncated)}
