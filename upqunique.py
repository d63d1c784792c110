"""Unique jobs: the digest of a job's `unique` params and the insert the database guards.

A job of a type with `unique =` is stored with its digest in `unique_key`, which a unique
index on (jobname, unique_key) keeps to one new-or-running job; every statement that ends
a job sets it to NULL. The insert is ignored on a duplicate key, and the twin's jobid is
answered instead (`ACK <jobid> duplicate`), so it holds across daemons and races.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, Callable, Mapping

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from groupcommit import Batchable, RowInsert
from upqerrors import UpqError
from upqschema import jobs
from upqstates import State

DUPLICATE = "duplicate"


def insert_ignore(table: Any) -> Any:
    """INSERT that does nothing on a duplicate key (rowcount 0): the loser of a race."""
    return (insert(table).prefix_with("OR IGNORE", dialect="sqlite")
            .prefix_with("IGNORE", dialect="mysql").prefix_with("IGNORE", dialect="mariadb"))


def unique_digest(fields: tuple[str, ...], params: Mapping[str, str]) -> str | None:
    """sha256 of the chosen params' values (missing ones count as absent); None if not unique."""
    if not fields:
        return None
    chosen = dict(params) if fields == ("*",) else {k: params.get(k) for k in fields}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def find_twin(conn: Connection, jobname: str, digest: str) -> int | None:
    """The new-or-running job of the type with that digest, if any (one index read)."""
    twin = conn.execute(select(jobs.c.jobid).where(jobs.c.jobname == jobname,
                                                   jobs.c.unique_key == digest)).scalar()
    return None if twin is None else int(twin)


class UniqueInsert(Batchable):
    """A write operation: store the job unless a twin is active; (jobid, duplicate?).
    A writer batch of them is one look for twins and one multi-row insert; if another
    daemon stored a twin meanwhile, the insert fails and the writer runs them one by one."""

    def __init__(self, values: dict[str, Any], digest: str, delay: float | None,
                 db_now: Callable[[Connection], dt.datetime]):
        self.values = dict(values, unique_key=digest, unique_digest=digest)
        self.digest, self.delay, self.db_now = digest, delay, db_now

    def __call__(self, conn: Connection) -> tuple[int, bool]:
        if self.delay:
            self.values["run_after"] = self.db_now(conn) + dt.timedelta(seconds=self.delay)
        for _ in range(5):      # the twin may end between our insert and our look: try again
            res = conn.execute(insert_ignore(jobs), self.values)
            if res.rowcount == 1:
                return int(res.inserted_primary_key[0]), False
            twin = find_twin(conn, self.values["jobname"], self.digest)
            if twin is not None:
                return twin, True
        raise UpqError("could not store the unique job: its twin kept ending and starting")

    @classmethod
    def run_many(cls, conn: Connection, ops: list[Any]) -> list[Any]:
        if any(op.delay for op in ops):
            now = ops[0].db_now(conn)
            for op in ops:
                if op.delay:
                    op.values["run_after"] = now + dt.timedelta(seconds=op.delay)
        keys = {(op.values["jobname"], op.digest) for op in ops}
        found: dict[tuple[str, str], int] = {}
        for name in {k[0] for k in keys}:
            digests = [k[1] for k in keys if k[0] == name]
            for jobid, digest in conn.execute(select(jobs.c.jobid, jobs.c.unique_key).where(
                    jobs.c.jobname == name, jobs.c.unique_key.in_(digests))):
                found[name, digest] = int(jobid)
        fresh: dict[tuple[str, str], int] = {}      # first op of each new key -> its index
        for i, op in enumerate(ops):
            key = (op.values["jobname"], op.digest)
            if key not in found and key not in fresh:
                fresh[key] = i
        if fresh:
            inserted = RowInsert.run_many(conn, [RowInsert(jobs, ops[i].values) for i in fresh.values()]) \
                if len(fresh) > 1 else [RowInsert(jobs, ops[next(iter(fresh.values()))].values)(conn)]
            created = dict(zip(fresh, inserted))
        else:
            created = {}
        out = []
        for i, op in enumerate(ops):
            key = (op.values["jobname"], op.digest)
            if key in found:
                out.append((found[key], True))
            else:
                out.append((created[key], fresh[key] != i))
        return out


def update_ignore(table: Any) -> Any:
    """UPDATE that leaves a row alone when it would duplicate a unique key (rowcount 0)."""
    return (update(table).prefix_with("OR IGNORE", dialect="sqlite")
            .prefix_with("IGNORE", dialect="mysql").prefix_with("IGNORE", dialect="mariadb"))


class AcceptHeldUnique:
    """A write operation: a job check() stored with enqueue_job() becomes new, unless a twin
    is active (then the held row is dropped); (jobid, duplicate?)."""

    def __init__(self, jobid: int, jobname: str, params: Mapping[str, str], digest: str,
                 delay: float | None, db_now: Callable[[Connection], dt.datetime], priority: int = 0):
        self.priority = priority
        self.jobid, self.jobname, self.digest, self.delay, self.db_now = jobid, jobname, digest, delay, db_now
        self.params = json.dumps(dict(params), ensure_ascii=False)

    def __call__(self, conn: Connection) -> tuple[int, bool]:
        run_after = None if not self.delay else self.db_now(conn) + dt.timedelta(seconds=self.delay)
        held = (jobs.c.jobid == self.jobid, jobs.c.state == State.HELD)
        conn.execute(update_ignore(jobs).where(*held).values(
            state=State.NEW, params=self.params, run_after=run_after, prio_rank=-self.priority,
            unique_key=self.digest, unique_digest=self.digest))
        # MySQL's rowcount counts matched rows, not changed ones: look at what is stored
        if conn.execute(select(jobs.c.state).where(jobs.c.jobid == self.jobid)).scalar() == State.NEW:
            return self.jobid, False
        twin = find_twin(conn, self.jobname, self.digest)
        conn.execute(delete(jobs).where(*held))
        if twin is None:
            raise UpqError(f"job {self.jobid} was dropped before it was accepted")
        return twin, True
