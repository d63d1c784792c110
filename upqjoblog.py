"""Per-job logs (issue 13): what a run writes, kept per job and attempt in the database.

AttemptLog collects one attempt's lines (from its own `self.logger`, and in a worker
process its stdout and stderr), capped at the type's `log_limit` characters: past it
the first and the last parts are kept with a marker between. JobLogs owns the
`joblog-flush` thread, which writes the logs of running attempts about twice a second
(so `log` shows lines of a running job) and once more after the run ended, many
logs per statement.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from sqlalchemy import and_, bindparam, insert, select, update
from sqlalchemy.engine import Connection

from upqschema import job_logs

FLUSH_INTERVAL = 0.5
LINE_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
# built once (immutable): a short run's log is one INSERT at its end, a longer one's updates
_INSERT = insert(job_logs)
_UPDATE = update(job_logs).where(and_(job_logs.c.jobid == bindparam("b_jobid"),
                                      job_logs.c.attempt == bindparam("b_attempt")))


class AttemptLog:
    """One attempt's capped lines. A job's logger writes straight into it: it has what a
    logging handler needs (`level`, `handle`) without being registered with logging, which
    would cost a global lock per run. Its fields are guarded by `lock`."""

    level = logging.NOTSET

    def __init__(self, jobid: int, attempt: int, limit: int):
        self.lock = threading.Lock()
        self._stamp: tuple[int, str] = (-1, "")
        self.jobid, self.attempt, self.limit = jobid, attempt, limit
        self._head: list[str] = []
        self._head_chars = 0
        self._tail: collections.deque[str] = collections.deque()
        self._tail_chars = 0
        self._cut_lines = self._cut_chars = 0
        self.dirty = False
        self.written = False        # a row exists (or is on its way): later writes update it
        self.ended = False

    def handle(self, record: logging.LogRecord) -> None:
        """As LINE_FORMAT would write it, with the time stamp made once a second (a run's
        logging is on its hot path)."""
        try:
            sec = int(record.created)
            cached = self._stamp
            if cached[0] != sec:
                cached = self._stamp = (sec, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec)))
            line = f"{cached[1]},{int(record.msecs):03d} {record.levelname} {record.getMessage()}"
            if record.exc_info:
                line += "\n" + LINE_FORMAT.formatException(record.exc_info)
            self.add(line)
        except Exception:  # noqa: BLE001 - a bad log call must not break the job
            self.add(f"(a log call failed: {record.msg!r:.200} {record.args!r:.200})")

    def add(self, text: str) -> None:
        """Lines (text may hold several) at the end of the log, within log_limit."""
        half = self.limit // 2
        with self.lock:
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

    def snapshot(self, clear: bool = True) -> tuple[str, bool]:
        """(text, truncated) as stored; clears `dirty` (unless a read only looks)."""
        with self.lock:
            lines = list(self._head)
            if self._cut_lines:
                lines.append(f"[... {self._cut_lines} lines ({self._cut_chars} characters) left out: "
                             f"log_limit is {self.limit} ...]")
            lines.extend(self._tail)
            self.dirty = self.dirty and not clear
            return "\n".join(lines), bool(self._cut_lines)


class JobLogs:
    """The logs of the runs on this daemon and their writes; `_lock` guards `_active` (runs
    going on) and `_ended` (ended runs whose last lines are not committed yet)."""

    def __init__(self, db: Any, logger: logging.Logger):
        self.db = db
        self.log = logger
        self._lock = threading.Lock()
        self._active: dict[tuple[int, int], AttemptLog] = {}
        self._ended: dict[tuple[int, int], AttemptLog] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flusher, name="joblog-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """The daemon stops: what is not written yet goes to the writer (which commits it)."""
        self._stop.set()
        self.flush()

    def begin(self, jobid: int, attempt: int, limit: int, parent: logging.Logger) -> tuple[AttemptLog, logging.Logger]:
        """A run starts: its log, and a logger of its own writing into it only (with log_limit = 0
        a run logs to upq's log, as before). Not registered with logging: it goes with the run;
        its level is the type logger's."""
        alog = AttemptLog(jobid, attempt, limit)
        lg = logging.Logger(parent.name, parent.getEffectiveLevel())
        lg.propagate = False
        lg.handlers.append(alog)    # type: ignore[arg-type]  (see AttemptLog)
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
        """The run has ended: its last lines are written with the next flush (reads see them
        from memory until then)."""
        if alog is None:
            return
        key = (alog.jobid, alog.attempt)
        alog.ended = True
        with self._lock:
            self._active.pop(key, None)
            if alog.dirty or alog.written:
                self._ended[key] = alog

    def _flusher(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            self.flush()

    def flush(self) -> None:
        """One write of every log that changed (many rows per statement, so the cost per run
        is small); ended runs leave memory once it is committed."""
        with self._lock:
            logs = [a for a in self._active.values() if a.dirty] + list(self._ended.values())
        inserts, updates = [], []
        for alog in logs:
            text, truncated = alog.snapshot()
            values = dict(text=text, truncated=int(truncated), live=int(not alog.ended))
            if alog.written:
                updates.append(dict(b_jobid=alog.jobid, b_attempt=alog.attempt, **values))
            else:
                inserts.append(dict(jobid=alog.jobid, attempt=alog.attempt, **values))
            alog.written = True
        if not logs:
            return

        def op(conn: Connection) -> None:
            if inserts:
                conn.execute(_INSERT, inserts)
            if updates:
                conn.execute(_UPDATE, updates)

        def committed(f: Any) -> None:
            if f.exception() is not None:
                self.log.warning("%d job log(s) not stored: %s", len(logs), f.exception())
            with self._lock:
                for alog in logs:
                    key = (alog.jobid, alog.attempt)
                    if alog.ended and not alog.dirty and self._ended.get(key) is alog:
                        del self._ended[key]
        self.db.writer.submit(op).add_done_callback(committed)

    def read(self, jobid: int, attempt: int) -> dict[str, Any]:
        """One attempt's log, as the `log` command answers it: from memory while this daemon
        has lines of it not committed yet, else from the database."""
        with self._lock:
            alog = self._active.get((jobid, attempt)) or self._ended.get((jobid, attempt))
        if alog is not None:
            text, truncated = alog.snapshot(clear=False)
        else:
            def q(conn: Connection) -> Any:
                return conn.execute(select(job_logs.c.text, job_logs.c.truncated).where(
                    and_(job_logs.c.jobid == jobid, job_logs.c.attempt == attempt))).first()
            r = self.db._read(q)
            text, truncated = ("", False) if r is None else (r.text, bool(r.truncated))
        return {"jobid": jobid, "attempt": attempt, "lines": text.split("\n") if text else [],
                "truncated": truncated}
