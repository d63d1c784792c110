"""The daemon's Prometheus metrics, in its own CollectorRegistry (built once in upq.py; the
default global registry is never used).

Counters that only this daemon sees (runs finished, durations, submissions, ERR answers) are
kept by prometheus_client's own thread-safe metrics, fed from the after-outcome hook and the
socket edge. What the database knows (jobs by type and state, the oldest due job) and the
workers' counters are read at scrape time by `UpqCollector`, with index seeks only.
"""
from __future__ import annotations

import collections
import datetime as dt
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from upqschema import jobs, utcnow
from upqstates import SHOWN, State, shown

if TYPE_CHECKING:
    from upqdb import Database
    from upqqueuemngr import Ended, QueueManager

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600, float("inf"))


def oldest_due(conn: Connection, jobname: str, now: dt.datetime) -> dt.datetime | None:
    """When the oldest due queued job of a type became due: two seeks on ix_upq_jobs_due."""
    first = conn.execute(select(jobs.c.created).where(jobs.c.jobname == jobname, jobs.c.state == State.NEW,
                                                      jobs.c.run_after.is_(None))
                         .order_by(jobs.c.jobid).limit(1)).scalar()
    delayed = conn.execute(select(func.min(jobs.c.run_after)).where(
        jobs.c.jobname == jobname, jobs.c.state == State.NEW, jobs.c.run_after <= now)).scalar()
    found = [t for t in (first, delayed) if t is not None]
    return min(found) if found else None


class UpqCollector(Collector):
    """Read at every scrape: jobs by type and state, oldest due age, workers, database health."""

    def __init__(self, manager: "QueueManager", db: "Database"):
        self.manager = manager
        self.db = db

    def describe(self) -> list[Any]:
        return []           # nothing is read when the registry is built

    def collect(self) -> Iterator[Any]:
        types = self.manager.types
        counts = self.db.count_by_state()
        by_state = GaugeMetricFamily("upq_jobs", "Jobs stored, by job type and state", labels=["jobname", "state"])
        for name in sorted(set(counts) | set(types)):
            for state in SHOWN:
                by_state.add_metric([name, str(state)], counts.get(name, {}).get(state, 0))
        yield by_state

        def ages(conn: Connection) -> dict[str, float]:
            now = self.db.db_now(conn, exact=False)     # the heartbeat keeps the offset fresh
            out = {}
            for name in sorted(set(counts) | set(types)):
                t = oldest_due(conn, name, now) if counts.get(name, {}).get(State.NEW) else None
                out[name] = 0.0 if t is None else max(0.0, (now - t).total_seconds())
            return out
        oldest = GaugeMetricFamily("upq_oldest_due_seconds", "Age of the oldest due queued job, by type "
                                   "(0 when none is due)", labels=["jobname"])
        for name, age in self.db.read(ages).items():
            oldest.add_metric([name], age)
        yield oldest
        busy = GaugeMetricFamily("upq_workers_busy", "Workers of this daemon running a job, by type", labels=["jobname"])
        total = GaugeMetricFamily("upq_workers", "Workers of this daemon (concurrent), by type", labels=["jobname"])
        for name, jt in sorted(types.items()):
            busy.add_metric([name], jt.slots.busy()[0])
            total.add_metric([name], jt.config.concurrent)
        yield busy
        yield total
        errors, outage = self.db.writer.health.snapshot()
        yield CounterMetricFamily("upq_db_errors", "Failed database reads and write batches since start",
                                  value=errors)
        yield CounterMetricFamily("upq_db_outage_seconds", "Seconds the database was failing writes since start",
                                  value=outage)


class Metrics:
    """The registry and the counters this daemon keeps; one per daemon."""

    def __init__(self, manager: "QueueManager", db: "Database"):
        self.registry = CollectorRegistry(auto_describe=False)
        self.runs = Counter("upq_job_runs", "Runs finished since start, by type and outcome",
                            ["jobname", "outcome"], registry=self.registry)
        self.durations = Histogram("upq_job_duration_seconds", "How long runs took, by type", ["jobname"],
                                   buckets=DURATION_BUCKETS, registry=self.registry)
        self.submissions = Counter("upq_submissions", "Jobs submitted over the sockets since start",
                                   registry=self.registry)
        self._finished_lock = threading.Lock()
        # type -> [second (monotonic), jobs ended in it], the last hour: at most 3600 entries
        self._finished: dict[str, collections.deque[list[int]]] = {}
        self.errors = Counter("upq_err_answers", "ERR answers sent since start", registry=self.registry)
        ProcessCollector(namespace="", registry=self.registry)
        self.registry.register(UpqCollector(manager, db))

    def on_ended(self, ended: "Ended") -> None:
        """After-outcome hook: count the run and its duration (quick, no I/O)."""
        row, stored = ended.row, ended.stored
        outcome = str(shown(stored.state)) if stored is not None and stored.is_final else str(ended.outcome.kind)
        self.runs.labels(row.jobname, outcome).inc()
        if stored is not None and stored.is_final:
            second = int(time.monotonic())
            with self._finished_lock:
                q = self._finished.setdefault(row.jobname, collections.deque())
                if q and q[-1][0] == second:
                    q[-1][1] += 1
                else:
                    q.append([second, 1])
                while q[0][0] <= second - 3600:
                    q.popleft()
        end = stored.finished if stored is not None and stored.finished else utcnow()
        if row.started is not None:
            self.durations.labels(row.jobname).observe(max(0.0, (end - row.started).total_seconds()))

    def recent_finishes(self) -> dict[str, tuple[int, int]]:
        """{type: (jobs ended on this daemon in the last minute, in the last hour)}."""
        second = int(time.monotonic())
        with self._finished_lock:
            out = {}
            for name, q in self._finished.items():
                while q and q[0][0] <= second - 3600:
                    q.popleft()
                out[name] = (sum(n for t, n in q if t > second - 60), sum(n for _, n in q))
            return out

    def submitted(self) -> None:
        self.submissions.inc()

    def answered(self, lines: Iterable[str]) -> None:
        """The socket edge sent these answer lines."""
        n = sum(1 for line in lines if line.startswith("ERR"))
        if n:
            self.errors.inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
