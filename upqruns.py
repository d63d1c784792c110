"""The SQL of a job's run: claim or lease, start, record the outcome, give a lease back.

The hot path of a busy daemon. Its statements are built once (SQLAlchemy caches
their compiled form), and the starts and outcomes of a writer batch go out as
one statement each (`StartRun`, `FinishRun`: see groupcommit.Batchable). Every
write is fenced on the job's state, node and attempt, so a run that was taken
over cannot overwrite a newer one. Database (upqdb.py) calls these in its writer.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from types import MappingProxyType
from typing import Any, Callable, Mapping

from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.engine import Connection

from groupcommit import Batchable, MergeMismatch
from upqschema import JobRow, cap_msg, encode_result, jobs, row_from, utcnow
from upqstates import Outcome, RetryPolicy, State, after_run, final_state, is_final

CANCELLED_BEFORE_RUN = "cancelled before it ran"
# what `retry` sets (one job, or every failed job of a type); Database.retry also gives a
# unique job its key back
RETRIED: Mapping[str, Any] = MappingProxyType(dict(
    state=State.NEW, run_after=None, fell_due=None, late=1, finished=None, retries_used=0, cancel_requested=0,
    interrupted=0))


def cancelled_before_run() -> dict[str, Any]:
    """The values of a queued or leased job cancelled before it started (its unique key freed)."""
    return dict(state=State.CANCELLED, finished=utcnow(), msg=CANCELLED_BEFORE_RUN, unique_key=None)


# A run's outcome (state, msg, result, finished), fenced on the run (b_node, and b_jobid with
# b_attempts); a flagged cancel makes it miss.
_OUTCOME = dict(state=bindparam("state"), msg=bindparam("msg"), result=bindparam("result"),
                finished=bindparam("finished"), unique_key=None)     # final: a twin may come in
_RUN_FENCE = (jobs.c.state == State.RUNNING, jobs.c.node == bindparam("b_node"), jobs.c.cancel_requested == 0)
_FINISH = (update(jobs)
           .where(jobs.c.jobid == bindparam("b_jobid"), jobs.c.attempts == bindparam("b_attempts"), *_RUN_FENCE)
           .values(**_OUTCOME))
# The same for many runs that ended alike (b_ids, b_pairs of (jobid, attempts)): one statement,
# where an executemany would cost PyMySQL one round trip per row.
_FINISH_ALIKE = (update(jobs)
                 .where(jobs.c.jobid.in_(bindparam("b_ids", expanding=True)),
                        tuple_(jobs.c.jobid, jobs.c.attempts).in_(bindparam("b_pairs", expanding=True)),
                        *_RUN_FENCE)
                 .values(**_OUTCOME))

# A leased job's start (b_now), fenced on its lease (b_node); one job (b_jobid) or many (b_ids).
_STARTED = dict(state=State.RUNNING, attempts=jobs.c.attempts + 1, started=bindparam("b_now"), finished=None)
_LEASE_FENCE = (jobs.c.state == State.LEASED, jobs.c.node == bindparam("b_node"))
_START = update(jobs).where(jobs.c.jobid == bindparam("b_jobid"), *_LEASE_FENCE).values(**_STARTED)
_START_MANY = (update(jobs).where(jobs.c.jobid.in_(bindparam("b_ids", expanding=True)), *_LEASE_FENCE)
               .values(**_STARTED))

# Claim: the due jobs of a type (b_name, b_now, b_limit), two index ranges of ix_upq_jobs_claim
# so that jobs not due yet are never scanned: first the delayed jobs now due are promoted
# (run_after NULL, late 0), then the claimable ones (run_after NULL) are read in start order:
# highest priority first, then the promoted ones, then oldest first. SQLite picks ids inside
# one UPDATE; MySQL locks rows.
PROMOTE_BATCH = 1000
_FALLEN_DUE = (jobs.c.jobname == bindparam("b_name"), jobs.c.state == State.NEW,
               jobs.c.run_after.is_not(None), jobs.c.run_after <= bindparam("b_now"))
_PROMOTE_IDS = select(jobs.c.jobid).where(*_FALLEN_DUE).order_by(jobs.c.run_after).limit(PROMOTE_BATCH)
# fell_due first: MySQL evaluates SET left to right, each seeing the ones before it
_PROMOTED = ((jobs.c.fell_due, jobs.c.run_after), (jobs.c.run_after, None), (jobs.c.late, 0))
_PROMOTE = (update(jobs).where(jobs.c.jobid.in_(bindparam("b_ids", expanding=True)), *_FALLEN_DUE)
            .ordered_values(*_PROMOTED))
_PROMOTE_SQLITE = update(jobs).where(jobs.c.jobid.in_(_PROMOTE_IDS)).ordered_values(*_PROMOTED)
_DUE_RANGES = ((jobs.c.run_after.is_(None), (jobs.c.prio_rank, jobs.c.late)),)


def _picks(*columns: Any) -> tuple[Any, ...]:
    return tuple(select(*columns)
                 .where(jobs.c.jobname == bindparam("b_name"), jobs.c.state == State.NEW, due)
                 .order_by(*order, jobs.c.jobid).limit(bindparam("b_limit"))
                 for due, order in _DUE_RANGES)


_PICKS = _picks(jobs.c.jobid)
_PICK_ROWS_MYSQL = tuple(pick.with_for_update(skip_locked=True) for pick in _picks(jobs))


def promote_due(conn: Connection, jobname: str, now: dt.datetime, is_sqlite: bool) -> None:
    """Delayed and retried jobs whose time came become claimable (a bounded batch)."""
    args = dict(b_name=jobname, b_now=now)
    if is_sqlite:
        conn.execute(_PROMOTE_SQLITE, args)
        return
    ids = [r[0] for r in conn.execute(_PROMOTE_IDS, args)]
    if ids:
        conn.execute(_PROMOTE, dict(args, b_ids=ids))


def _claim_update(*where: Any, lease: bool) -> Any:
    if lease:       # reserved for this node (b_node); attempts and started change when one starts
        return update(jobs).where(*where).values(state=State.LEASED, node=bindparam("b_node"), cancel_requested=0)
    return update(jobs).where(*where).values(node=bindparam("b_node"), cancel_requested=0, **_STARTED)


_CLAIM_SQLITE = {(lease, i): _claim_update(jobs.c.jobid.in_(pick), lease=lease).returning(jobs)
                 for lease in (False, True) for i, pick in enumerate(_PICKS)}


def _finish_args(row: JobRow, node: str, state: str, msg: str, result: str | None,
                 now: dt.datetime) -> dict[str, Any]:
    return dict(b_jobid=row.jobid, b_attempts=row.attempts, b_node=node,
                state=state, msg=msg, result=result, finished=now)


def _ended_row(row: JobRow, state: str, msg: str, result: str | None, now: dt.datetime) -> JobRow:
    """The row as _FINISH left it."""
    return dataclasses.replace(row, state=state, msg=msg, finished=now,
                               result=None if result is None else json.loads(result))


class FinishRun(Batchable):
    """Record how one run ended (record_outcome); the final outcomes of a batch go out
    together (_finish_many), and if any of them is fenced out the batch runs again unmerged."""

    order = 2           # after StartRun: a fast job's start and outcome often share a batch

    def __init__(self, row: JobRow, outcome: Outcome, node: str, policy: RetryPolicy,
                 db_now: Callable[[Connection], dt.datetime]):
        self.row, self.outcome, self.node, self.policy, self.db_now = row, outcome, node, policy, db_now

    def __call__(self, conn: Connection) -> JobRow | None:
        return record_outcome(conn, self.row, self.outcome, self.node, self.policy, self.db_now)

    @classmethod
    def run_many(cls, conn: Connection, ops: list[Any]) -> list[Any]:
        now = utcnow()
        results: list[Any] = [None] * len(ops)
        args, fast = [], []
        for i, op in enumerate(ops):
            state = final_state(op.outcome, op.row.retries_used, op.policy)
            if state is not None:
                msg, result = cap_msg(op.outcome.msg), encode_result(op.outcome.result)
                args.append(_finish_args(op.row, op.node, state, msg, result, now))
                fast.append(i)
            else:
                results[i] = op(conn)
        if args:
            _finish_many(conn, args)
            for i, a in zip(fast, args):
                results[i] = _ended_row(ops[i].row, a["state"], a["msg"], a["result"], now)
        return results


def _finish_many(conn: Connection, args: list[dict[str, Any]]) -> None:
    """Runs that ended alike (same state, msg and result, as no-op and quiet jobs do) share one
    UPDATE; the rest go as one executemany. MergeMismatch if any run was fenced out."""
    alike: dict[tuple[str, str, str | None], list[dict[str, Any]]] = {}
    for a in args:
        alike.setdefault((a["state"], a["msg"], a["result"]), []).append(a)
    single = []
    for (state, msg, result), group in alike.items():
        if len(group) == 1:
            single += group
            continue
        res = conn.execute(_FINISH_ALIKE, dict(
            b_ids=[a["b_jobid"] for a in group], b_pairs=[(a["b_jobid"], a["b_attempts"]) for a in group],
            b_node=group[0]["b_node"], state=state, msg=msg, result=result, finished=group[0]["finished"]))
        if res.rowcount != len(group):
            raise MergeMismatch("a finished run was fenced out")
    if single and conn.execute(_FINISH, single).rowcount != len(single):
        raise MergeMismatch("a finished run was fenced out")


class StartRun(Batchable):
    """A leased job starts (leased -> running, attempts + 1); True if its lease still held.
    The worker does not wait for this commit (waiting per job would double the transactions);
    the run's outcome is fenced on the start, and leases released after a crash count an
    attempt (see release_leases)."""

    order = 1

    def __init__(self, row: JobRow, node: str, now: dt.datetime):
        self.args = dict(b_jobid=row.jobid, b_node=node, b_now=now)

    def __call__(self, conn: Connection) -> bool:
        return conn.execute(_START, self.args).rowcount == 1

    @classmethod
    def run_many(cls, conn: Connection, ops: list[Any]) -> list[Any]:
        # one statement (PyMySQL would make an executemany one round trip per row); `started`
        # is the earliest start of the batch, a few milliseconds early at most
        first = ops[0].args
        res = conn.execute(_START_MANY, dict(b_ids=[op.args["b_jobid"] for op in ops], b_node=first["b_node"],
                                             b_now=min(op.args["b_now"] for op in ops)))
        if res.rowcount != len(ops):
            raise MergeMismatch("a lease was lost")
        return [True] * len(ops)


def release_leases(conn: Connection, *where: Any, crashed: bool = False) -> int:
    """Leased rows matching `where` are queued again, or cancelled if a cancel was asked
    meanwhile. `crashed`: their daemon died, and a worker may have begun one whose start
    was not committed yet, so `attempts` counts one up (it never undercounts runs started)."""
    conn.execute(update(jobs).where(jobs.c.state == State.LEASED, jobs.c.cancel_requested == 1, *where)
                 .values(**cancelled_before_run()))
    values: dict[str, Any] = dict(state=State.NEW, node=None)
    if crashed:
        values["attempts"] = jobs.c.attempts + 1
    return conn.execute(update(jobs).where(jobs.c.state == State.LEASED, *where).values(**values)).rowcount


def claim_rows(conn: Connection, jobname: str, limit: int, node: str, skip: tuple[int, ...],
               lease: bool, now: dt.datetime, is_sqlite: bool) -> list[JobRow]:
    """Move up to `limit` due jobs new -> leased (or running) for `node`: highest priority
    first, then delayed jobs now due, then the others, oldest first."""
    rows: list[JobRow] = []
    promote_due(conn, jobname, now, is_sqlite)
    for i in range(len(_PICKS)):
        if len(rows) < limit:
            rows += _claim_range(conn, i, jobname, limit - len(rows), node, skip, lease, now, is_sqlite)
    return rows


def _claim_range(conn: Connection, i: int, jobname: str, limit: int, node: str, skip: tuple[int, ...],
                 lease: bool, now: dt.datetime, is_sqlite: bool) -> list[JobRow]:
    args = dict(b_name=jobname, b_now=now, b_limit=limit, b_node=node)
    if is_sqlite:
        # one statement; the writer's BEGIN IMMEDIATE makes it atomic across processes too
        stmt = (_CLAIM_SQLITE[lease, i] if not skip else
                _claim_update(jobs.c.jobid.in_(_PICKS[i].where(jobs.c.jobid.not_in(skip))),
                              lease=lease).returning(jobs))
        return [row_from(r) for r in sorted(conn.execute(stmt, args),
                                            key=lambda r: (r.prio_rank, r.late, r.jobid))]
    # MySQL: lock the rows (skipping ones other daemons hold), then move them, by key: two
    # round trips; the rows returned are what the update wrote
    pick_rows = _PICK_ROWS_MYSQL[i] if not skip else _PICK_ROWS_MYSQL[i].where(jobs.c.jobid.not_in(skip))
    locked = [row_from(r) for r in conn.execute(pick_rows, args)]
    if not locked:
        return []
    conn.execute(_claim_update(jobs.c.jobid.in_([r.jobid for r in locked]), lease=lease), args)
    if lease:
        return [dataclasses.replace(r, state=State.LEASED, node=node) for r in locked]
    return [dataclasses.replace(r, state=State.RUNNING, attempts=r.attempts + 1, started=now,
                                finished=None, node=node) for r in locked]


def record_outcome(conn: Connection, row: JobRow, outcome: Outcome, node: str, policy: RetryPolicy,
                   db_now: Callable[[Connection], dt.datetime]) -> JobRow | None:
    """Write how a run ended, fenced on jobid, state, attempt and node; None if fenced out."""
    msg, result = cap_msg(outcome.msg), encode_result(outcome.result)
    state = final_state(outcome, row.retries_used, policy)
    if state is not None:
        # the common case: one fenced statement, no read back
        now = utcnow()
        res = conn.execute(_FINISH, _finish_args(row, node, state, msg, result, now))
        if res.rowcount == 1:
            return _ended_row(row, state, msg, result, now)
    fence = (jobs.c.jobid == row.jobid, jobs.c.state == State.RUNNING,
             jobs.c.attempts == row.attempts, jobs.c.node == node)
    # locked while we look (MySQL), so a cancel from another daemon cannot slip in between
    look = select(jobs.c.cancel_requested, jobs.c.retries_used).where(*fence).with_for_update()
    cur = conn.execute(look).first()
    if cur is None and row.attempts > 0 and conn.execute(
            _START.where(jobs.c.attempts == row.attempts - 1),
            dict(b_jobid=row.jobid, b_node=node, b_now=row.started)).rowcount:
        # a leased job whose start was not recorded (the database was away then): now it is
        cur = conn.execute(look).first()
    if cur is None:
        return None
    now = db_now(conn)
    step = after_run(outcome, cur.retries_used, bool(cur.cancel_requested), policy)
    values: dict[str, Any] = {"msg": msg, "result": result, "state": step.state, "finished": now}
    if is_final(step.state):
        values["unique_key"] = None
    if step.delay is not None:
        values.update(finished=None, run_after=now + dt.timedelta(seconds=step.delay))
    if step.uses_retry:
        values["retries_used"] = cur.retries_used + 1
    conn.execute(update(jobs).where(*fence).values(**values))
    return row_from(conn.execute(select(jobs).where(jobs.c.jobid == row.jobid)).one())
