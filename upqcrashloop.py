"""The crash-loop cap: a job whose runs keep dying with their daemon (or worker) ends failed.

When a dead daemon's running jobs are re-queued (at its own restart, or by a survivor that
finds it dead), each one whose start was recorded counts one interruption in its row, in
the same transaction; at `max_interrupted` (per type, else [server]; 0 = no cap) it ends
`failed` with INTERRUPTED_MSG instead, and is notified like any failure. Leases that never
started are released elsewhere (upqruns.release_leases) and count nothing here. `retry`
resets the count. An executor whose worker process was killed by a signal calls
`record_interruption` for that run.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from upqschema import JobRow, jobs, row_from, utcnow
from upqstates import State

if TYPE_CHECKING:
    from notify import Notifier
    from parseconfig import Config
    from upqcontrol import Completions
    from upqqueuemngr import QueueManager

CapFor = Callable[[str], int]   # jobname -> max_interrupted (0 = no cap; < 0: count nothing)


def interrupted_msg(times: int) -> str:
    return f"interrupted {times} times: the daemon or its worker died while it ran"


def requeue_interrupted(conn: Connection, where: Any, cap_for: CapFor, failed: list[JobRow]) -> int:
    """Running jobs matching `where` were cut off: back to new with one more interruption, or
    failed at the cap (appended to `failed`; a caller clears it at the start of its op, as the
    writer may run an op twice). Returns how many went back to new."""
    stored = conn.execute(select(jobs).where(jobs.c.state == State.RUNNING, where).with_for_update()).all()
    now = utcnow()
    again = []
    counted = []
    for r in stored:
        row, times = row_from(r), (r.interrupted or 0) + 1
        cap = cap_for(row.jobname)
        if cap < 0:                 # not an interruption (a clean stop left it running)
            again.append(row.jobid)
        elif cap and times >= cap:
            msg = interrupted_msg(times)
            conn.execute(update(jobs).where(jobs.c.jobid == row.jobid, jobs.c.state == State.RUNNING)
                         .values(state=State.FAILED, finished=now, msg=msg, interrupted=times,
                                 unique_key=None))
            failed.append(dataclasses.replace(row, state=State.FAILED, finished=now, msg=msg))
        else:
            counted.append(row.jobid)
    for ids, values in ((counted, dict(interrupted=jobs.c.interrupted + 1)), (again, {})):
        if ids:
            conn.execute(update(jobs).where(jobs.c.jobid.in_(ids), jobs.c.state == State.RUNNING)
                         .values(state=State.NEW, node=None, **values))
    return len(counted) + len(again)


def record_interruption(write: Callable[[Callable[[Connection], Any]], Any], row: JobRow, node: str,
                        cap: int) -> JobRow | None:
    """One run (this node's, started as `row`) was killed: count it and re-queue the job, or
    end it failed at the cap. `write` is Database.write. The stored row, or None if the run
    had been taken over meanwhile (fenced on jobid, attempt and node)."""
    def op(conn: Connection) -> JobRow | None:
        fence = (jobs.c.jobid == row.jobid, jobs.c.state == State.RUNNING,
                 jobs.c.attempts == row.attempts, jobs.c.node == node)
        cur = conn.execute(select(jobs.c.interrupted).where(*fence).with_for_update()).first()
        if cur is None:
            return None
        times = (cur.interrupted or 0) + 1
        values: dict[str, Any] = dict(state=State.NEW, node=None, interrupted=times)
        if cap and times >= cap:
            values = dict(state=State.FAILED, finished=utcnow(), msg=interrupted_msg(times), interrupted=times,
                          unique_key=None)
        conn.execute(update(jobs).where(*fence).values(**values))
        return row_from(conn.execute(select(jobs).where(jobs.c.jobid == row.jobid)).one())
    return write(op)


def interrupt_cap(config: "Config", jobname: str) -> int:
    """max_interrupted of a type: its own, else [server]'s."""
    job = config.jobs.get(jobname)
    own = None if job is None else job.max_interrupted
    return config.server.max_interrupted if own is None else own


def interrupt_failed(manager: "QueueManager", notifier: "Notifier", completions: "Completions",
                     rows: list) -> None:
    """Jobs ended failed by the crash-loop cap are notified like any failure; waiters woken."""
    from parseconfig import JobConfig
    for row in rows:
        notifier.job_ended(manager.config.jobs.get(row.jobname) or JobConfig(row.jobname, True), row)
        completions.notify(row.jobid, row)
