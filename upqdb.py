"""The storage interface: the reads, and every state change of a job or node.

Every write goes through the group-commit `Writer` (groupcommit.py); reads run
on their own pooled connections. The SQL of a job's run (claim, start, outcome)
is in upqruns.py; engines, schema, the database's clock and the node-name lock
in upqengine.py.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from typing import Any, Callable, Iterable, TypeVar

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from groupcommit import Pending, Retrying, RowInsert, Writer, describe
from upqcrashloop import CapFor, requeue_interrupted
from upqcounts import read_counts
from upqengine import Clock, create_schema, is_sqlite, make_engine
from upqerrors import DatabaseUnavailable
from upqruns import RETRIED, FinishRun, StartRun, cancelled_before_run, claim_rows, release_leases
from upqschema import JobRow, iso, jobs, nodes, row_from, utcnow
from upqstates import QUEUED, CancelEffect, Outcome, RetryPolicy, State, can_retry, cancel_effect, shown
from upqunique import find_twin

T = TypeVar("T")


class Database:
    """The storage interface: every other module reaches the jobs and nodes only through this."""

    def __init__(self, url: str, logger: logging.Logger, durability: str = "full"):
        self.url = url
        self.log = logger
        self.is_sqlite = is_sqlite(url)
        self.read_engine = make_engine(url, durability, writer=False)
        self.write_engine = make_engine(url, durability, writer=True)
        self.writer = Writer(self.write_engine, logger)
        self.clock = Clock(url)
        self.nodes = NodeStore(self)
        self.counted = False            # upq_counts kept by triggers (set by create_schema)

    def create_schema(self) -> None:
        self.counted = create_schema(self.write_engine)
        if not self.counted:
            self.log.warning("the database refused triggers (TRIGGER privilege?): stats and /metrics "
                             "count jobs with GROUP BY, which is slow on a large table")

    def start(self) -> None:
        self.writer.start()

    def dispose(self) -> None:
        """Close pooled connections (before a fork; new ones open on demand)."""
        self.read_engine.dispose()
        self.write_engine.dispose()

    def close(self) -> None:
        self.writer.stop()
        self.dispose()

    def db_now(self, conn: Connection, exact: bool = True) -> dt.datetime:
        return self.clock.now(conn, exact)

    # -- reads -------------------------------------------------------------
    def read(self, fn: Callable[[Connection], T]) -> T:
        """fn(conn) on a pooled read connection; DatabaseUnavailable when the database fails."""
        return self._read(fn)

    def _read(self, fn: Callable[[Connection], T]) -> T:
        for attempt in (1, 2):
            try:
                with self.read_engine.connect() as conn:
                    return fn(conn)
            except DBAPIError as exc:
                if exc.connection_invalidated and attempt == 1:
                    continue        # a pooled connection the server dropped: once more, afresh
                self.log.warning("database read failed: %s", exc)
                self.writer.health.failed()
                raise DatabaseUnavailable(describe(exc)) from exc
            except SQLAlchemyError as exc:
                self.log.warning("database read failed: %s", exc)
                raise DatabaseUnavailable(describe(exc)) from exc
        raise AssertionError("unreachable")

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run fn on a read connection (errors become DatabaseUnavailable), for other modules' reads."""
        return self._read(fn)

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
            return [{"jobid": int(r.jobid), "jobname": r.jobname, "state": shown(r.state)} for r in rows]
        return self._read(q)

    def list_jobs(self, state: State | None, limit: int) -> list[JobRow]:
        """Newest first; `state` as clients name it (NEW covers the internal queued states)."""
        def q(conn: Connection) -> list[JobRow]:
            stmt = select(jobs).order_by(jobs.c.jobid.desc()).limit(limit)
            if state == State.NEW:
                stmt = stmt.where(jobs.c.state.in_(QUEUED))
            elif state:
                stmt = stmt.where(jobs.c.state == state)
            return [row_from(r) for r in conn.execute(stmt)]
        return self._read(q)

    def count_by_state(self) -> dict[str, dict[State, int]]:
        """{jobname: {state as shown: n}}: a few rows of upq_counts (or a GROUP BY without triggers)."""
        def q(conn: Connection) -> dict[str, dict[State, int]]:
            out: dict[str, dict[State, int]] = {}
            stmt = select(jobs.c.jobname, jobs.c.state, func.count()).group_by(jobs.c.jobname, jobs.c.state)
            for name, state, n in (read_counts(conn) if self.counted else conn.execute(stmt)):
                per = out.setdefault(name, {})
                per[shown(state)] = per.get(shown(state), 0) + n
            return out
        return self._read(q)

    def twin_of(self, jobname: str, digest: str) -> int | None:
        """The new-or-running job of a unique type with that digest (upqunique)."""
        return self._read(lambda conn: find_twin(conn, jobname, digest))

    def cancel_requests(self, node: str) -> list[int]:
        """Jobs running on (or leased by) this node that a client, on any daemon, asked to cancel."""
        return self._read(lambda conn: [int(r[0]) for r in conn.execute(
            select(jobs.c.jobid).where(jobs.c.state.in_((State.RUNNING, State.LEASED)), jobs.c.node == node,
                                       jobs.c.cancel_requested == 1))])

    def list_nodes(self) -> list[dict[str, Any]]:
        """Every daemon known to this database, with how many jobs each runs now."""
        def q(conn: Connection) -> list[dict[str, Any]]:
            running = dict(conn.execute(select(jobs.c.node, func.count()).where(jobs.c.state == State.RUNNING)
                                        .group_by(jobs.c.node)).all())
            return [{"node": r.node, "host": r.host, "pid": r.pid, "state": r.state,
                     "started": iso(r.started), "heartbeat": iso(r.heartbeat),
                     State.RUNNING.value: running.get(r.node, 0)}
                    for r in conn.execute(select(nodes).order_by(nodes.c.node))]
        return self._read(q)

    # -- writes (all through the group-commit writer) -----------------------
    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run fn in a write transaction and wait for its commit."""
        return self.writer.submit(fn).result()

    def insert_job_async(self, jobname: str, params: dict[str, str], *, state: State = State.NEW,
                         node: str | None = None, parent: int | None = None,
                         delay: float | None = None, now: dt.datetime | None = None,
                         priority: int = 0, cap: int = 0) -> "Pending[int]":
        """Store a job (due `delay` seconds from now); the future holds its id once committed,
        or 0 when `cap` jobs of the type were queued already (max_queued; nothing stored)."""
        now = now or utcnow()
        running = state == State.RUNNING
        values = dict(jobname=jobname, state=state, params=json.dumps(params, ensure_ascii=False),
                      msg="", attempts=1 if running else 0, retries_used=0, created=now,
                      started=now if running else None, run_after=None, node=node, parent=parent,
                      cancel_requested=0, prio_rank=-priority)
        store: Callable[[Connection], int] = RowInsert(jobs, values)
        if cap and not running:
            from upqpause import capped_insert
            store = capped_insert(jobname, values, cap)
        if not delay:
            return self.writer.submit(store)

        def op(conn: Connection) -> int:
            values["run_after"] = self.db_now(conn) + dt.timedelta(seconds=delay)
            return store(conn)
        return self.writer.submit(op)

    def accept_held(self, jobid: int, params: dict[str, str], state: State, node: str,
                    delay: float | None = None, priority: int = 0) -> None:
        """A job stored by enqueue_job() inside check() was accepted: release it."""
        def op(conn: Connection) -> None:
            run_after = None if not delay else self.db_now(conn) + dt.timedelta(seconds=delay)
            values: dict[str, Any] = {"state": state, "params": json.dumps(params, ensure_ascii=False),
                                      "run_after": run_after, "prio_rank": -priority}
            if state == State.RUNNING:
                values.update(attempts=jobs.c.attempts + 1, started=utcnow(), node=node)
            conn.execute(update(jobs).where(jobs.c.jobid == jobid, jobs.c.state == State.HELD).values(**values))
        self.write(op)

    def delete_held(self, jobid: int) -> None:
        """check() returned False after enqueue_job(): the job never existed for the client."""
        self.write(lambda conn: conn.execute(
            delete(jobs).where(jobs.c.jobid == jobid, jobs.c.state == State.HELD)))

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
        started = dataclasses.replace(row, state=State.RUNNING, attempts=row.attempts + 1, started=now,
                                      finished=None, node=node)
        return self.writer.submit(StartRun(row, node, now)), started

    def record_outcome_async(self, row: JobRow, outcome: Outcome, node: str, policy: RetryPolicy,
                             retry_while: Retrying) -> "Pending[JobRow | None]":
        """Write how a run ended (re-queueing it when a retry is due), fenced on jobid, state,
        attempt and node so a stale run cannot overwrite a newer one; through an outage it is
        retried while `retry_while()`. The worker does not wait: the commit is shared with the
        next ones. The future holds the stored row, or None if the run was fenced out."""
        return self.writer.submit(FinishRun(row, outcome, node, policy, self.db_now), retry_while)

    def unclaim(self, rows: Iterable[JobRow], node: str) -> None:
        """Claimed or leased jobs that never started go back to new, attempts as before."""
        rows = list(rows)
        leased = [r.jobid for r in rows if r.state == State.LEASED]

        def op(conn: Connection) -> None:
            if leased:
                release_leases(conn, jobs.c.jobid.in_(leased), jobs.c.node == node)
            for r in rows:
                if r.state == State.RUNNING:
                    conn.execute(update(jobs).where(jobs.c.jobid == r.jobid, jobs.c.state == State.RUNNING,
                                                    jobs.c.attempts == r.attempts, jobs.c.node == node)
                                 .values(state=State.NEW, attempts=r.attempts - 1, started=None))
        if rows:
            self.write(op)

    def cancel(self, jobid: int, node: str, withdrawn: bool) -> tuple[State, JobRow] | None:
        """Cancel as upqstates.cancel_effect says: a queued job at once, a running one flagged
        (`withdrawn`: a job leased by this node was taken out of its queue); (state before, row)."""
        effects = {CancelEffect.NOW: cancelled_before_run(),
                   CancelEffect.FLAG: dict(cancel_requested=1)}
        return self._change_by_state(
            jobid, lambda state, holder: effects.get(cancel_effect(state, withdrawn and holder == node)))

    def retry(self, jobid: int) -> tuple[State, JobRow] | None:
        """Queue a failed or cancelled job again with a fresh retries budget; (state before, row)."""
        again = dict(RETRIED, unique_key=jobs.c.unique_digest)
        return self._change_by_state(jobid, lambda state, _node: again if can_retry(state) else None)

    def _change_by_state(self, jobid: int, change: Callable[[str, str | None], dict[str, Any] | None]
                         ) -> tuple[State, JobRow] | None:
        """Apply change(state, node) to the job, if it gives values; (state before, row after).
        The row is locked while we look (MySQL; SQLite's writer holds the whole database), so a
        run another daemon is starting or finishing cannot slip between the look and the change."""
        def op(conn: Connection) -> tuple[State, JobRow] | None:
            cur = conn.execute(select(jobs.c.state, jobs.c.node).where(jobs.c.jobid == jobid)
                               .with_for_update()).first()
            if cur is None:
                return None
            values = change(cur.state, cur.node)
            if values:
                conn.execute(update(jobs).where(jobs.c.jobid == jobid, jobs.c.state == cur.state)
                             .values(**values))
            return State(cur.state), row_from(conn.execute(select(jobs).where(jobs.c.jobid == jobid)).one())
        return self.write(op)


class NodeStore:
    """The rows of upq_nodes, and what happens to a node's jobs when it dies: the storage
    side of several daemons sharing one database (upqnodes.NodeKeeper drives it)."""

    def __init__(self, db: Database):
        self.db = db
        # the crash-loop cap (upqcrashloop.py), set by upq.py: max_interrupted of a type, and
        # who hears of jobs that ended failed at it (after the commit)
        self.cap_for: CapFor = lambda jobname: 0
        self.on_interrupt_failed: Callable[[list[JobRow]], None] = lambda rows: None

    def write(self, fn: Callable[[Connection], T]) -> T:
        return self.db.write(fn)

    def db_now(self, conn: Connection, exact: bool = True) -> dt.datetime:
        return self.db.db_now(conn, exact)

    def node_heartbeat(self, node: str) -> tuple[str, dt.datetime, float] | None:
        """(state, heartbeat, age in seconds by the database's clock) of a node, or None."""
        def op(conn: Connection) -> tuple[str, dt.datetime, float] | None:
            r = conn.execute(select(nodes.c.state, nodes.c.heartbeat).where(nodes.c.node == node)).first()
            if r is None:
                return None
            return r.state, r.heartbeat, (self.db_now(conn) - r.heartbeat).total_seconds()
        return self.write(op)

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
            failed.clear()
            cutoff = self.db_now(conn) - dt.timedelta(seconds=timeout)
            stale = [r[0] for r in conn.execute(
                select(nodes.c.node).where(nodes.c.state == "alive", nodes.c.heartbeat < cutoff,
                                           nodes.c.node != me))]
            out = []
            for name in stale:
                won = conn.execute(update(nodes).where(nodes.c.node == name, nodes.c.state == "alive",
                                                       nodes.c.heartbeat < cutoff).values(state="dead"))
                if won.rowcount == 1:
                    out.append((name, _requeue_node_jobs(conn, name, self.cap_for, failed)))
            return out
        failed: list[JobRow] = []
        out = self.write(op)
        self._report(failed)
        return out

    def set_jobs(self, node: str, concurrent: dict[str, int]) -> None:
        """Record the job types this node runs and their workers, so `why` on any daemon can tell."""
        self.write(lambda conn: conn.execute(update(nodes).where(nodes.c.node == node)
                                             .values(jobs=json.dumps(concurrent, sort_keys=True))))

    def requeue_orphans(self, node: str, crashed: bool = True) -> int:
        """Jobs this node left running (crash, kill -9) go back to new, and its leases too.
        Not `crashed`: its last run stopped cleanly, leaving runs past shutdown_grace behind;
        those were cut off by the admin, not by the job, and count no interruption."""
        failed: list[JobRow] = []
        cap_for = self.cap_for if crashed else (lambda jobname: -1)

        def op(conn: Connection) -> int:
            failed.clear()
            return _requeue_node_jobs(conn, node, cap_for, failed)
        out = self.write(op)
        self._report(failed)
        return out

    def _report(self, failed: list[JobRow]) -> None:
        if failed:
            for row in failed:
                self.db.log.warning("job %s #%d: %s", row.jobname, row.jobid, row.msg)
            self.on_interrupt_failed(failed)


def _requeue_node_jobs(conn: Connection, node: str, cap_for: CapFor, failed: list[JobRow]) -> int:
    """A node that died: its held jobs were never ACKed (dropped), its leases go back to new
    for any daemon, its running jobs too, each counting an interruption (ended failed at the
    cap, into `failed`); returns how many running jobs went back."""
    conn.execute(delete(jobs).where(jobs.c.state == State.HELD, jobs.c.node == node))
    release_leases(conn, jobs.c.node == node, crashed=True)
    return requeue_interrupted(conn, jobs.c.node == node, cap_for, failed)
