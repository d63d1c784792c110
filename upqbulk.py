"""The admin commands on whole job types: pause, resume, purge, `retry type:` and `cancel type:`.

Bulk actions go in batches of BATCH jobs, each its own short write, with a short pause between
them, so 100,000 jobs never hold the writer (and every other client) for long.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

from sqlalchemy import select, update

from upqdb import Database
from upqerrors import UnknownJob
from upqpause import Pauses, known_types
from upqqueuemngr import QueueManager
from upqretention import BATCH, PAUSE_BETWEEN, purge
from upqruns import RETRIED, cancelled_before_run
from upqschema import jobs
from upqstates import State

class Admin:
    """Carries out the commands that act on a job type rather than one job."""

    def __init__(self, db: Database, manager: QueueManager, pauses: Pauses):
        self.db = db
        self.manager = manager
        self.pauses = pauses

    def _known(self, jobname: str) -> None:
        """A type configured here, or served by some daemon on this database; else UnknownJob."""
        if jobname not in self.manager.config.jobs and jobname not in known_types(self.db):
            raise UnknownJob(f"unknown job type {jobname!r} (see 'help' for the enabled ones)")

    def pause(self, jobname: str) -> None:
        self._known(jobname)
        self.pauses.set(jobname, True)

    def resume(self, jobname: str) -> None:
        self._known(jobname)
        self.pauses.set(jobname, False)
        self.manager.wake(jobname)

    def purge(self, state: State, older: float, jobname: str | None) -> int:
        if jobname is not None:
            self._known(jobname)
        return purge(self.db, state, older, jobname)

    def retry_type(self, jobname: str) -> int:
        """Every failed job of the type goes back to new with a fresh budget; how many."""
        self._known(jobname)
        n = self._batches(jobname, State.FAILED, RETRIED)
        self.manager.wake(jobname)
        return n

    def cancel_type(self, jobname: str) -> int:
        """Every queued (new, not leased) job of the type is cancelled; running ones are left alone."""
        self._known(jobname)
        return self._batches(jobname, State.NEW, None)

    def _batches(self, jobname: str, state: State, values: Mapping[str, Any] | None) -> int:
        pick = (select(jobs.c.jobid).where(jobs.c.jobname == jobname, jobs.c.state == state)
                .order_by(jobs.c.jobid).limit(BATCH))
        total, after = 0, 0
        while True:
            ids = self.db._read(lambda conn: [int(r[0]) for r in conn.execute(pick.where(jobs.c.jobid > after))])
            if not ids:
                return total
            after = ids[-1]
            change = values or cancelled_before_run()
            total += self.db.write(lambda conn: conn.execute(
                update(jobs).where(jobs.c.jobid.in_(ids), jobs.c.state == state).values(**change)).rowcount)
            if len(ids) < BATCH:
                return total
            time.sleep(PAUSE_BETWEEN)
