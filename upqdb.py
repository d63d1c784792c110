"""The storage interface: the schema, reads, and every state change of a job or node.

Every write goes through the group-commit `Writer` (groupcommit.py); reads run
on their own pooled connections. The SQL of a job's run (claim, start, outcome)
is in upqruns.py.
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

from sqlalchemy import create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from groupcommit import DatabaseUnavailable, Pending, RowInsert, Writer, describe
from upqruns import CANCELLED_BEFORE_RUN, FinishRun, StartRun, claim_rows, release_leases
from upqschema import (SCHEMA_VERSION, STATES_QUEUED, JobRow, Outcome, RetryPolicy, iso, jobs, meta, metadata,
                       nodes, row_from, shown_state, utcnow)

T = TypeVar("T")


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
                    for index in jobs.indexes:      # an index added since the table was made
                        index.create(conn, checkfirst=True)
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
        return self.write(lambda conn: claim_rows(conn, jobname, limit, node, skip, lease,
                                                  self.db_now(conn, exact=False), self.is_sqlite))

    def start_async(self, row: JobRow, node: str) -> "tuple[Pending[bool], JobRow]":
        """Start a leased job without waiting for the commit; the future and the row as started."""
        now = utcnow()
        started = dataclasses.replace(row, state="running", attempts=row.attempts + 1, started=now,
                                      finished=None, node=node)
        return self.writer.submit(StartRun(row, node, now)), started

    def record_outcome_async(self, row: JobRow, outcome: Outcome, node: str,
                             policy: RetryPolicy) -> "Pending[JobRow | None]":
        """Write how a run ended (re-queueing it when a retry is due), fenced on jobid, state,
        attempt and node so a stale run cannot overwrite a newer one. The worker does not wait:
        the commit is shared with the next ones. The future holds the stored row, or None
        if the run was fenced out."""
        return self.writer.submit(FinishRun(row, outcome, node, policy, self.db_now))

    def unclaim(self, rows: Iterable[JobRow], node: str) -> None:
        """Claimed or leased jobs that never started go back to new, attempts as before."""
        rows = list(rows)
        leased = [r.jobid for r in rows if r.state == "leased"]

        def op(conn: Connection) -> None:
            if leased:
                release_leases(conn, jobs.c.jobid.in_(leased), jobs.c.node == node)
            for r in rows:
                if r.state == "running":
                    conn.execute(update(jobs).where(jobs.c.jobid == r.jobid, jobs.c.state == "running",
                                                    jobs.c.attempts == r.attempts, jobs.c.node == node)
                                 .values(state="new", attempts=r.attempts - 1, started=None))
        if rows:
            self.write(op)

    def cancel(self, jobid: int, node: str, withdrawn: bool) -> tuple[str, JobRow] | None:
        """A queued job is cancelled at once, a running one flagged; returns (state before, row).
        A leased job is cancelled at once only if `withdrawn` from this node's (`node`) queue;
        otherwise a worker may be starting it: it is flagged, and its holder cancels it
        (releasing or running it flagged)."""
        queued = dict(state="cancelled", finished=utcnow(), msg=CANCELLED_BEFORE_RUN)
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
                release_leases(conn, jobs.c.node == name, crashed=True)
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
            release_leases(conn, jobs.c.node == node, crashed=True)
            res = conn.execute(update(jobs).where(jobs.c.state == "running", jobs.c.node == node)
                               .values(state="new", node=None))
            return res.rowcount
        return self.write(op)
