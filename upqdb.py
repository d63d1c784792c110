"""All of upq's SQL: creating the schema and every state change of a job or node.

Every write goes through the group-commit `Writer` (groupcommit.py); reads run
on their own pooled connections.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, Iterable, TypeVar

from sqlalchemy import bindparam, create_engine, delete, event, func, insert, select, tuple_, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from groupcommit import Batchable, DatabaseUnavailable, MergeMismatch, Pending, RowInsert, Writer, describe
from upqschema import (SCHEMA_VERSION, STATES_QUEUED, JobRow, Outcome, RetryPolicy, cap_msg, encode_result,
                       iso, jobs, meta, metadata, nodes, row_from, shown_state, utcnow)

T = TypeVar("T")


# The hot path's statements, built once (their compiled form is cached by SQLAlchemy).
_FINISH = (update(jobs)
           .where(jobs.c.jobid == bindparam("b_jobid"), jobs.c.state == "running",
                  jobs.c.attempts == bindparam("b_attempts"), jobs.c.node == bindparam("b_node"),
                  jobs.c.cancel_requested == 0)
           .values(state=bindparam("state"), msg=bindparam("msg"), result=bindparam("result"),
                   finished=bindparam("finished")))
# The same for many runs that ended alike (b_ids, b_pairs of (jobid, attempts)): one statement,
# where an executemany would cost PyMySQL one round trip per row.
_FINISH_ALIKE = (update(jobs)
                 .where(jobs.c.jobid.in_(bindparam("b_ids", expanding=True)),
                        tuple_(jobs.c.jobid, jobs.c.attempts).in_(bindparam("b_pairs", expanding=True)),
                        jobs.c.state == "running", jobs.c.node == bindparam("b_node"),
                        jobs.c.cancel_requested == 0)
                 .values(state=bindparam("state"), msg=bindparam("msg"), result=bindparam("result"),
                         finished=bindparam("finished")))

# Claim: the oldest due jobs of a type (b_name, b_now, b_limit), moved to running for b_node.
_PICK = (select(jobs.c.jobid)
         .where(jobs.c.jobname == bindparam("b_name"), jobs.c.state == "new",
                jobs.c.run_after.is_(None) | (jobs.c.run_after <= bindparam("b_now")))
         .order_by(jobs.c.jobid).limit(bindparam("b_limit")))


def _claim_update(*where: Any, lease: bool) -> Any:
    if lease:       # reserved for this node (b_node); attempts and started change when one starts
        return update(jobs).where(*where).values(state="leased", node=bindparam("b_node"), cancel_requested=0)
    return update(jobs).where(*where).values(
        state="running", attempts=jobs.c.attempts + 1, started=bindparam("b_now"), finished=None,
        node=bindparam("b_node"), cancel_requested=0)


_CLAIM_SQLITE = {lease: _claim_update(jobs.c.jobid.in_(_PICK), lease=lease).returning(jobs)
                 for lease in (False, True)}
# A leased job's start, fenced on its lease (b_jobid, b_node; b_now).
_START = (update(jobs)
          .where(jobs.c.jobid == bindparam("b_jobid"), jobs.c.state == "leased", jobs.c.node == bindparam("b_node"))
          .values(state="running", attempts=jobs.c.attempts + 1, started=bindparam("b_now"), finished=None))
_START_MANY = (update(jobs)
               .where(jobs.c.jobid.in_(bindparam("b_ids", expanding=True)), jobs.c.state == "leased",
                      jobs.c.node == bindparam("b_node"))
               .values(state="running", attempts=jobs.c.attempts + 1, started=bindparam("b_now"), finished=None))
_CANCELLED_BEFORE_RUN = "cancelled before it ran"
_PICK_ROWS_MYSQL = (select(jobs)
                    .where(jobs.c.jobname == bindparam("b_name"), jobs.c.state == "new",
                           jobs.c.run_after.is_(None) | (jobs.c.run_after <= bindparam("b_now")))
                    .order_by(jobs.c.jobid).limit(bindparam("b_limit"))
                    .with_for_update(skip_locked=True))


def _is_final(outcome: Outcome, row: JobRow, policy: RetryPolicy) -> bool:
    """The run's outcome ends the job (no retry due): one fenced UPDATE records it."""
    return outcome.state == "done" or (outcome.state == "failed" and policy.next_delay(row.retries_used) is None)


def _finish_args(row: JobRow, node: str, state: str, msg: str, result: str | None,
                 now: dt.datetime) -> dict[str, Any]:
    return dict(b_jobid=row.jobid, b_attempts=row.attempts, b_node=node,
                state=state, msg=msg, result=result, finished=now)


def _ended_row(row: JobRow, state: str, msg: str, result: str | None, now: dt.datetime) -> JobRow:
    """The row as _FINISH left it (built directly: dataclasses.replace is slow on the hot path)."""
    return JobRow(row.jobid, row.jobname, state, row.params, msg,
                  None if result is None else json.loads(result), row.attempts, row.retries_used,
                  row.created, row.started, now, row.run_after, row.node, row.parent)


class FinishRun(Batchable):
    """Record how one run ended (Database._record); the final outcomes of a batch are one
    fenced executemany, and if any of them is fenced out the batch runs again unmerged."""

    order = 2           # after StartRun: a fast job's start and outcome often share a batch

    def __init__(self, db: "Database", row: JobRow, outcome: Outcome, node: str, policy: RetryPolicy):
        self.db, self.row, self.outcome, self.node, self.policy = db, row, outcome, node, policy

    def __call__(self, conn: Connection) -> JobRow | None:
        return self.db._record(conn, self.row, self.outcome, self.node, self.policy)

    @classmethod
    def run_many(cls, conn: Connection, ops: list[Any]) -> list[Any]:
        now = utcnow()
        results: list[Any] = [None] * len(ops)
        args, fast = [], []
        for i, op in enumerate(ops):
            if _is_final(op.outcome, op.row, op.policy):
                msg, result = cap_msg(op.outcome.msg), encode_result(op.outcome.result)
                args.append(_finish_args(op.row, op.node, op.outcome.state, msg, result, now))
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
    attempt (see _release_leases)."""

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


def _release_leases(conn: Connection, *where: Any, crashed: bool = False) -> int:
    """Leased rows matching `where` are queued again, or cancelled if a cancel was asked
    meanwhile. `crashed`: their daemon died, and a worker may have begun one whose start
    was not committed yet, so `attempts` counts one up (it never undercounts runs started)."""
    conn.execute(update(jobs).where(jobs.c.state == "leased", jobs.c.cancel_requested == 1, *where)
                 .values(state="cancelled", finished=utcnow(), msg=_CANCELLED_BEFORE_RUN))
    values: dict[str, Any] = dict(state="new", node=None)
    if crashed:
        values["attempts"] = jobs.c.attempts + 1
    return conn.execute(update(jobs).where(jobs.c.state == "leased", *where).values(**values)).rowcount


class Database:
    """The storage interface: every other module reaches SQL only through this."""

    def __init__(self, url: str, logger: logging.Logger, durability: str = "full"):
        self.url = url
        self.log = logger
        self.is_sqlite = url.startswith("sqlite")
        self.read_engine = self._engine(url, durability, writer=False)
        self.write_engine = self._engine(url, durability, writer=True)
        self.writer = Writer(self.write_engine, logger)
        self._node_lock_conn: Connection | None = None
        self._clock_offset: dt.timedelta | None = None
        self._node_lock_name = ""
        self._node_lock_fd: int | None = None

    # -- set-up ------------------------------------------------------------
    def _engine(self, url: str, durability: str, writer: bool) -> Engine:
        if self.is_sqlite:
            engine = create_engine(url, connect_args={"timeout": 30},
                                   pool_size=1 if writer else 5, max_overflow=0 if writer else 10)
            sync = "FULL" if durability == "full" else "NORMAL"

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None      # we issue BEGIN ourselves
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA synchronous={sync}")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            if writer:
                @event.listens_for(engine, "begin")
                def _begin(conn: Connection) -> None:
                    # a write transaction takes the lock up front: no upgrade, no SQLITE_BUSY mid-way
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
            # reads stay in autocommit: each statement sees the latest commit, no BEGIN/ROLLBACK
            return engine
        # No pre-ping (a frozen server would cost a full read timeout before the query even
        # starts): a dropped connection fails fast and is retried once on a fresh one. Reads
        # get shorter timeouts so every answer, connect included, stays within 10 s.
        io_timeout = 5 if writer else 3
        engine = create_engine(
            url, pool_pre_ping=False, pool_recycle=1800, isolation_level="READ COMMITTED",
            pool_size=1 if writer else 5, max_overflow=0 if writer else 10, pool_timeout=5,
            connect_args={"connect_timeout": 2, "read_timeout": io_timeout, "write_timeout": io_timeout})

        @event.listens_for(engine, "connect")
        def _session(dbapi_conn: Any, _record: Any) -> None:
            # a lock wait must end (error 1205, retried) well before the 5 s read timeout
            cur = dbapi_conn.cursor()
            cur.execute("SET SESSION innodb_lock_wait_timeout = 2")
            cur.close()
        return engine

    def create_schema(self) -> None:
        """Create missing tables and record the schema version; safe when several daemons race."""
        for attempt in range(3):
            try:
                with self.write_engine.begin() as conn:
                    metadata.create_all(conn, checkfirst=True)
                    have = conn.execute(select(meta.c.value).where(meta.c.name == "schema_version")).scalar()
                    if have is None:
                        conn.execute(insert(meta).values(name="schema_version", value=str(SCHEMA_VERSION)))
                    elif int(have) > SCHEMA_VERSION:
                        raise DatabaseUnavailable(
                            f"database schema version {have} is newer than this upq understands ({SCHEMA_VERSION})")
                return
            except SQLAlchemyError:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def start(self) -> None:
        self.writer.start()

    def dispose(self) -> None:
        """Close pooled connections (before a fork; new ones open on demand)."""
        self.read_engine.dispose()
        self.write_engine.dispose()

    def close(self) -> None:
        self.writer.stop()
        self.release_node_name()
        if self._node_lock_fd is not None:
            os.close(self._node_lock_fd)
        self.dispose()

    # -- reads -------------------------------------------------------------
    def _read(self, fn: Callable[[Connection], T]) -> T:
        for attempt in (1, 2):
            try:
                with self.read_engine.connect() as conn:
                    return fn(conn)
            except DBAPIError as exc:
                if exc.connection_invalidated and attempt == 1:
                    continue        # a pooled connection the server dropped: once more, afresh
                self.log.warning("database read failed: %s", exc)
                raise DatabaseUnavailable(describe(exc)) from exc
            except SQLAlchemyError as exc:
                self.log.warning("database read failed: %s", exc)
                raise DatabaseUnavailable(describe(exc)) from exc
        raise AssertionError("unreachable")

    def get_job(self, jobid: int) -> JobRow | None:
        def q(conn: Connection) -> JobRow | None:
            r = conn.execute(select(jobs).where(jobs.c.jobid == jobid)).first()
            return None if r is None else row_from(r)
        return self._read(q)

    def children(self, jobid: int) -> list[dict[str, Any]]:
        """The jobs this one submitted, for `status`."""
        def q(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(select(jobs.c.jobid, jobs.c.jobname, jobs.c.state)
                                .where(jobs.c.parent == jobid).order_by(jobs.c.jobid).limit(1000))
            return [{"jobid": int(r.jobid), "jobname": r.jobname,
                     "state": shown_state(r.state)} for r in rows]
        return self._read(q)

    def list_jobs(self, state: str | None, limit: int) -> list[JobRow]:
        def q(conn: Connection) -> list[JobRow]:
            stmt = select(jobs).order_by(jobs.c.jobid.desc()).limit(limit)
            if state == "new":
                stmt = stmt.where(jobs.c.state.in_(STATES_QUEUED))
            elif state:
                stmt = stmt.where(jobs.c.state == state)
            return [row_from(r) for r in conn.execute(stmt)]
        return self._read(q)

    def count_by_state(self) -> dict[str, dict[str, int]]:
        """{jobname: {state: n}} over the whole table (index-only scan)."""
        def q(conn: Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            stmt = select(jobs.c.jobname, jobs.c.state, func.count()).group_by(jobs.c.jobname, jobs.c.state)
            for name, state, n in conn.execute(stmt):
                state = shown_state(state)
                per = out.setdefault(name, {})
                per[state] = per.get(state, 0) + n
            return out
        return self._read(q)

    # -- writes (all through the group-commit writer) -----------------------
    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run fn in a write transaction and wait for its commit."""
        return self.writer.submit(fn).result()

    def insert_job_async(self, jobname: str, params: dict[str, str], *, state: str = "new",
                         node: str | None = None, parent: int | None = None,
                         delay: float | None = None, now: dt.datetime | None = None) -> "Pending[int]":
        """Store a job (due `delay` seconds from now); the future holds its id once committed."""
        now = now or utcnow()
        running = state == "running"
        values = dict(jobname=jobname, state=state, params=json.dumps(params, ensure_ascii=False),
                      msg="", attempts=1 if running else 0, retries_used=0, created=now,
                      started=now if running else None, run_after=None, node=node, parent=parent,
                      cancel_requested=0)
        if not delay:
            return self.writer.submit(RowInsert(jobs, values))

        def op(conn: Connection) -> int:
            values["run_after"] = self.db_now(conn) + dt.timedelta(seconds=delay)
            return RowInsert(jobs, values)(conn)
        return self.writer.submit(op)

    def accept_held(self, jobid: int, params: dict[str, str], state: str, node: str,
                    delay: float | None = None) -> None:
        """A job stored by enqueue_job() inside check() was accepted: release it."""
        def op(conn: Connection) -> None:
            run_after = None if not delay else self.db_now(conn) + dt.timedelta(seconds=delay)
            values: dict[str, Any] = {"state": state, "params": json.dumps(params, ensure_ascii=False),
                                      "run_after": run_after}
            if state == "running":
                values.update(attempts=jobs.c.attempts + 1, started=utcnow(), node=node)
            conn.execute(update(jobs).where(jobs.c.jobid == jobid, jobs.c.state == "held").values(**values))
        self.write(op)

    def delete_held(self, jobid: int) -> None:
        """check() returned False after enqueue_job(): the job never existed for the client."""
        self.write(lambda conn: conn.execute(
            delete(jobs).where(jobs.c.jobid == jobid, jobs.c.state == "held")))

    def claim(self, jobname: str, limit: int, node: str, exclude: Iterable[int] = (),
              lease: bool = False) -> list[JobRow]:
        """Atomically move up to `limit` due jobs new -> running for this node, or with `lease`
        new -> leased: reserved for this node and started one by one (`start_async`), so one
        claim serves many runs of fast jobs without counting them running before they run."""
        skip = tuple(exclude)
        return self.write(lambda conn: self._claim(conn, jobname, limit, node, skip, lease))

    def start_async(self, row: JobRow, node: str) -> "tuple[Pending[bool], JobRow]":
        """Start a leased job without waiting for the commit; the future and the row as started."""
        now = utcnow()
        started = JobRow(row.jobid, row.jobname, "running", row.params, row.msg, row.result, row.attempts + 1,
                         row.retries_used, row.created, now, None, row.run_after, node, row.parent)
        return self.writer.submit(StartRun(row, node, now)), started

    def record_outcome_async(self, row: JobRow, outcome: Outcome, node: str,
                             policy: RetryPolicy) -> "Pending[JobRow | None]":
        """Write how a run ended (re-queueing it when a retry is due), fenced on jobid, state,
        attempt and node so a stale run cannot overwrite a newer one. The worker does not wait:
        the commit is shared with the next ones. The future holds the stored row, or None
        if the run was fenced out."""
        return self.writer.submit(FinishRun(self, row, outcome, node, policy))

    def unclaim(self, rows: Iterable[JobRow], node: str) -> None:
        """Claimed or leased jobs that never started go back to new, attempts as before."""
        rows = list(rows)
        leased = [r.jobid for r in rows if r.state == "leased"]

        def op(conn: Connection) -> None:
            if leased:
                _release_leases(conn, jobs.c.jobid.in_(leased), jobs.c.node == node)
            for r in rows:
                if r.state == "running":
                    conn.execute(update(jobs).where(jobs.c.jobid == r.jobid, jobs.c.state == "running",
                                                    jobs.c.attempts == r.attempts, jobs.c.node == node)
                                 .values(state="new", attempts=r.attempts - 1, started=None))
        if rows:
            self.write(op)

    def _claim(self, conn: Connection, jobname: str, limit: int, node: str,
               skip: tuple[int, ...], lease: bool) -> list[JobRow]:
        now = self.db_now(conn, exact=False)
        pick = _PICK if not skip else _PICK.where(jobs.c.jobid.not_in(skip))
        args = dict(b_name=jobname, b_now=now, b_limit=limit, b_node=node)
        if self.is_sqlite:
            # one statement; the writer's BEGIN IMMEDIATE makes it atomic across processes too
            stmt = (_CLAIM_SQLITE[lease] if not skip else
                    _claim_update(jobs.c.jobid.in_(pick), lease=lease).returning(jobs))
            return sorted((row_from(r) for r in conn.execute(stmt, args)), key=lambda r: r.jobid)
        # MySQL: lock the rows (skipping ones other daemons hold), then move them, by key: two
        # round trips; the rows returned are what the update wrote
        pick_rows = _PICK_ROWS_MYSQL if not skip else _PICK_ROWS_MYSQL.where(jobs.c.jobid.not_in(skip))
        locked = [row_from(r) for r in conn.execute(pick_rows, args)]
        if not locked:
            return []
        conn.execute(_claim_update(jobs.c.jobid.in_([r.jobid for r in locked]), lease=lease), args)
        if lease:
            return [dataclasses.replace(r, state="leased", node=node) for r in locked]
        return [dataclasses.replace(r, state="running", attempts=r.attempts + 1, started=now,
                                    finished=None, node=node) for r in locked]

    def _record(self, conn: Connection, row: JobRow, outcome: Outcome, node: str,
                policy: RetryPolicy) -> JobRow | None:
        msg, result = cap_msg(outcome.msg), encode_result(outcome.result)
        if _is_final(outcome, row, policy):
            # the common case: one fenced statement, no read back
            now = utcnow()
            res = conn.execute(_FINISH, _finish_args(row, node, outcome.state, msg, result, now))
            if res.rowcount == 1:
                return _ended_row(row, outcome.state, msg, result, now)
        fence = (jobs.c.jobid == row.jobid, jobs.c.state == "running",
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
        now = self.db_now(conn)
        values: dict[str, Any] = {"msg": msg, "result": result, "state": outcome.state, "finished": now}
        delay = policy.next_delay(cur.retries_used) if outcome.state == "failed" else None
        if cur.cancel_requested:
            values["state"] = "cancelled"
        elif outcome.state == "retry":
            values.update(state="new", finished=None, run_after=now + dt.timedelta(seconds=outcome.delay))
        elif delay is not None:
            values.update(state="new", finished=None, run_after=now + dt.timedelta(seconds=delay),
                          retries_used=cur.retries_used + 1)
        conn.execute(update(jobs).where(*fence).values(**values))
        return row_from(conn.execute(select(jobs).where(jobs.c.jobid == row.jobid)).one())

    def cancel(self, jobid: int, node: str, withdrawn: bool) -> tuple[str, JobRow] | None:
        """A queued job is cancelled at once, a running one flagged; returns (state before, row).
        A leased job is cancelled at once only if `withdrawn` from this node's (`node`) queue;
        otherwise a worker may be starting it: it is flagged, and its holder cancels it
        (releasing or running it flagged)."""
        queued = dict(state="cancelled", finished=utcnow(), msg=_CANCELLED_BEFORE_RUN)
        flag = dict(cancel_requested=1)

        def change(state: str, holder: str | None) -> dict[str, Any] | None:
            if state == "leased":
                return queued if withdrawn and holder == node else flag
            return {"new": queued, "held": queued, "running": flag}.get(state)
        return self._change_by_state(jobid, change)

    def retry(self, jobid: int) -> tuple[str, JobRow] | None:
        """Queue a failed or cancelled job again with a fresh retries budget; (state before, row)."""
        again = dict(state="new", run_after=None, finished=None, retries_used=0, cancel_requested=0)
        return self._change_by_state(jobid, lambda state, _node: again if state in ("failed", "cancelled") else None)

    def _change_by_state(self, jobid: int, change: Callable[[str, str | None], dict[str, Any] | None]
                         ) -> tuple[str, JobRow] | None:
        """Apply change(state, node) to the job, if it gives values; (state before, row after).
        The row is locked while we look (MySQL; SQLite's writer holds the whole database), so a
        run another daemon is starting or finishing cannot slip between the look and the change."""
        def op(conn: Connection) -> tuple[str, JobRow] | None:
            cur = conn.execute(select(jobs.c.state, jobs.c.node).where(jobs.c.jobid == jobid)
                               .with_for_update()).first()
            if cur is None:
                return None
            values = change(cur.state, cur.node)
            if values:
                conn.execute(update(jobs).where(jobs.c.jobid == jobid, jobs.c.state == cur.state)
                             .values(**values))
            return cur.state, row_from(conn.execute(select(jobs).where(jobs.c.jobid == jobid)).one())
        return self.write(op)

    # -- nodes (several daemons on one database) ---------------------------
    def db_now(self, conn: Connection, exact: bool = True) -> dt.datetime:
        """The database's clock (MySQL), so hosts with skewed clocks agree on ages. Not exact:
        this host's clock plus the offset measured at the last exact reading (every heartbeat),
        which spares the claim a round trip."""
        if self.is_sqlite:
            return utcnow()
        if not exact and self._clock_offset is not None:
            return utcnow() + self._clock_offset
        now = conn.execute(select(func.utc_timestamp(6))).scalar_one()
        self._clock_offset = now - utcnow()
        return now

    def hold_node_name(self, node: str) -> bool:
        """Take the lock that says `node` is alive; False if a live daemon holds it. MySQL: a
        server-side GET_LOCK, SQLite: flock on a file beside the database; both die with us."""
        digest = hashlib.sha1(node.encode()).hexdigest()
        if self.is_sqlite:
            path = make_url(self.url).database
            if not path or path == ":memory:":
                return True
            fd = os.open(f"{path}-node-{digest[:16]}.lock", os.O_RDWR | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._node_lock_fd = fd
            return True
        self._node_lock_name = "upq:" + digest
        return self._take_node_lock()

    def _take_node_lock(self) -> bool:
        conn = self.read_engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.execute(select(func.get_lock(self._node_lock_name, 0))).scalar()
        except SQLAlchemyError:
            conn.close()
            raise
        if got != 1:
            conn.close()
            return False
        if self._node_lock_conn is not None:
            self._node_lock_conn.close()
        self._node_lock_conn = conn
        return True

    def node_name_still_held(self) -> bool:
        """Heartbeat check (and keep-alive) of the MySQL lock; retaken when its connection was cut.
        False only when another daemon holds the name now."""
        if self.is_sqlite or self._node_lock_conn is None:
            return True
        try:
            mine = self._node_lock_conn.execute(
                select(func.is_used_lock(self._node_lock_name) == func.connection_id())).scalar()
            if mine:
                return True
        except SQLAlchemyError:
            pass
        try:
            return self._take_node_lock()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(describe(exc)) from exc

    def node_heartbeat(self, node: str) -> tuple[str, dt.datetime, float] | None:
        """(state, heartbeat, age in seconds by the database's clock) of a node, or None."""
        def op(conn: Connection) -> tuple[str, dt.datetime, float] | None:
            r = conn.execute(select(nodes.c.state, nodes.c.heartbeat).where(nodes.c.node == node)).first()
            if r is None:
                return None
            return r.state, r.heartbeat, (self.db_now(conn) - r.heartbeat).total_seconds()
        return self.write(op)

    def release_node_name(self) -> None:
        if self._node_lock_conn is not None:
            self._node_lock_conn.close()
            self._node_lock_conn = None

    def register_node(self, node: str, host: str, pid: int) -> dict[str, Any] | None:
        """Mark this node alive; returns the row it replaces (None if new)."""
        def op(conn: Connection) -> dict[str, Any] | None:
            now = self.db_now(conn)
            old = conn.execute(select(nodes).where(nodes.c.node == node)).first()
            values = dict(host=host, pid=pid, started=now, heartbeat=now, state="alive")
            if old is None:
                conn.execute(insert(nodes).values(node=node, **values))
                return None
            conn.execute(update(nodes).where(nodes.c.node == node).values(**values))
            return dict(old._mapping)
        return self.write(op)

    def heartbeat(self, node: str, state: str = "alive") -> tuple[str | None, int]:
        """Refresh this node's heartbeat; returns the state it had (e.g. 'dead' after a long
        pause) and how many other daemons are alive."""
        def op(conn: Connection) -> tuple[str | None, int]:
            before = conn.execute(select(nodes.c.state).where(nodes.c.node == node)).scalar()
            conn.execute(update(nodes).where(nodes.c.node == node)
                         .values(heartbeat=self.db_now(conn), state=state))
            peers = conn.execute(select(func.count()).select_from(nodes)
                                 .where(nodes.c.state == "alive", nodes.c.node != node)).scalar_one()
            return before, int(peers)
        return self.write(op)

    def reap_dead_nodes(self, me: str, timeout: float) -> list[tuple[str, int]]:
        """Nodes silent for `timeout` seconds are marked dead and their running jobs re-queued,
        exactly once: only the daemon whose conditional update wins does it."""
        def op(conn: Connection) -> list[tuple[str, int]]:
            cutoff = self.db_now(conn) - dt.timedelta(seconds=timeout)
            stale = [r[0] for r in conn.execute(
                select(nodes.c.node).where(nodes.c.state == "alive", nodes.c.heartbeat < cutoff,
                                           nodes.c.node != me))]
            out = []
            for name in stale:
                won = conn.execute(update(nodes).where(nodes.c.node == name, nodes.c.state == "alive",
                                                       nodes.c.heartbeat < cutoff).values(state="dead"))
                if won.rowcount != 1:
                    continue
                conn.execute(delete(jobs).where(jobs.c.state == "held", jobs.c.node == name))
                _release_leases(conn, jobs.c.node == name, crashed=True)
                moved = conn.execute(update(jobs).where(jobs.c.state == "running", jobs.c.node == name)
                                     .values(state="new", node=None))
                out.append((name, moved.rowcount))
            return out
        return self.write(op)

    def cancel_requests(self, node: str) -> list[int]:
        """Jobs running on (or leased by) this node that a client, on any daemon, asked to cancel."""
        return self._read(lambda conn: [int(r[0]) for r in conn.execute(
            select(jobs.c.jobid).where(jobs.c.state.in_(("running", "leased")), jobs.c.node == node,
                                       jobs.c.cancel_requested == 1))])

    def list_nodes(self) -> list[dict[str, Any]]:
        """Every daemon known to this database, with how many jobs each runs now."""
        def q(conn: Connection) -> list[dict[str, Any]]:
            running = dict(conn.execute(select(jobs.c.node, func.count()).where(jobs.c.state == "running")
                                        .group_by(jobs.c.node)).all())
            return [{"node": r.node, "host": r.host, "pid": r.pid, "state": r.state,
                     "started": iso(r.started), "heartbeat": iso(r.heartbeat),
                     "running": running.get(r.node, 0)}
                    for r in conn.execute(select(nodes).order_by(nodes.c.node))]
        return self._read(q)

    def requeue_orphans(self, node: str) -> int:
        """Jobs this node left running (crash, kill -9) go back to new, and its leases too;
        held ones were never ACKed."""
        def op(conn: Connection) -> int:
            conn.execute(delete(jobs).where(jobs.c.state == "held", jobs.c.node == node))
            _release_leases(conn, jobs.c.node == node, crashed=True)
            res = conn.execute(update(jobs).where(jobs.c.state == "running", jobs.c.node == node)
                               .values(state="new", node=None))
            return res.rowcount
        return self.write(op)
