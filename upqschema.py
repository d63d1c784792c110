"""What upq stores: the tables, a job row as a value, and the rules for stored values.

Plain data and pure functions; the SQL that changes rows lives in upqdb.py and
upqruns.py, the states and their rules in upqstates.py.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.dialects import mysql

from upqstates import is_final

SCHEMA_VERSION = 1
MAX_MSG_CHARS = 4000            # msg is a short text; longer ones are cut (documented)
MAX_RESULT_CHARS = 1_000_000    # a result's JSON beyond this is replaced by an error note

_BigId = BigInteger().with_variant(Integer(), "sqlite")
_Time = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

metadata = MetaData()

jobs = Table(
    "upq_jobs", metadata,
    Column("jobid", _BigId, primary_key=True, autoincrement=True),
    Column("jobname", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("params", _LongText, nullable=False),
    Column("msg", Text, nullable=False, default=""),
    Column("result", _LongText, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("retries_used", Integer, nullable=False, default=0),
    Column("created", _Time, nullable=False),
    Column("started", _Time, nullable=True),
    Column("finished", _Time, nullable=True),
    Column("run_after", _Time, nullable=True),
    Column("node", String(255), nullable=True),
    Column("parent", BigInteger, nullable=True),
    Column("cancel_requested", Integer, nullable=False, default=0),
    # runs whose start was recorded and that were cut off by a crash (upqcrashloop.py)
    Column("interrupted", Integer, nullable=False, default=0, server_default="0"),
    Column("due", _Time, nullable=True),       # the schedule's due time of a periodic run
    # unique jobs: the digest of the `unique` params; unique_key holds it only while the job is
    # new or running (NULLed in the same statement that ends it), so the unique index below
    # lets one active job per (type, digest) in, across daemons (NULLs never collide)
    Column("unique_digest", String(64), nullable=True),
    Column("unique_key", String(64), nullable=True),
    # priorities: prio_rank is minus the job's priority (so the claim index runs ascending);
    # late is 0 for a delayed or retried job whose due time came (the claim promotes it:
    # run_after NULL, late 0), so those start before the others of the same priority
    Column("prio_rank", Integer, nullable=False, default=0, server_default="0"),
    Column("late", Integer, nullable=False, default=1, server_default="1"),
    Column("fell_due", _Time, nullable=True),  # run_after as it was when promoted (shown so)
    # claims and per-type counts (stats) are all served by this index: a claim promotes the
    # delayed jobs now due (the range run_after <= now), then reads the claimable ones
    # (run_after NULL) in start order, priority first: one range however many priorities;
    # jobs not due yet sit in the run_after > now part and are never scanned
    Index("ix_upq_jobs_claim", "jobname", "state", "run_after", "prio_rank", "late", "jobid"),
    # list by state, newest first (orphan recovery filters the few running rows by node)
    Index("ix_upq_jobs_state", "state", "jobid"),
    Index("ix_upq_jobs_parent", "parent"),
    Index("ux_upq_jobs_unique", "jobname", "unique_key", unique=True),
    # retention and purge: a type's ended jobs of one state, oldest end first (upqretention.py)
    Index("ix_upq_jobs_ended", "jobname", "state", "finished"),
)

# One row per job type any daemon has enabled: whether it is paused (upqpause.py), the lock
# capped submissions take (max_queued), and the types retention visits.
types = Table(
    "upq_types", metadata,
    Column("jobname", String(64), primary_key=True),
    Column("paused", Integer, nullable=False, default=0, server_default="0"),
    Column("changed", _Time, nullable=True),
)

nodes = Table(
    "upq_nodes", metadata,
    Column("node", String(255), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started", _Time, nullable=False),
    Column("heartbeat", _Time, nullable=False),
    Column("state", String(16), nullable=False),          # alive | dead | stopped
    Column("jobs", Text, nullable=True),                  # JSON {job type: concurrent} it runs (`why`)
)

# one row per (job type, due time) of a schedule: the primary key is what makes each due
# time submitted exactly once across daemons (upqschedule.py); `note` says what became of it
schedule_runs = Table(
    "upq_schedule_runs", metadata,
    Column("jobname", String(64), primary_key=True),
    Column("due", _Time, primary_key=True),
    Column("jobid", BigInteger, nullable=True),
    Column("note", String(64), nullable=False, default=""),
    Column("node", String(255), nullable=True),
)

# a run's log (issue 13): what it wrote through self.logger (and, in a worker process, to
# stdout/stderr), capped at the type's log_limit; one row per attempt, rewritten while it runs
job_logs = Table(
    "upq_job_logs", metadata,
    Column("jobid", BigInteger, primary_key=True, autoincrement=False),
    Column("attempt", Integer, primary_key=True, autoincrement=False),
    Column("text", _LongText, nullable=False),
    Column("truncated", Integer, nullable=False, default=0),
    Column("live", Integer, nullable=False, default=1),       # 1 while the run goes on
)

meta = Table(
    "upq_meta", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)


@dataclass(frozen=True)
class JobRow:
    """One job as stored."""
    jobid: int
    jobname: str
    state: str
    params: dict[str, str]
    msg: str
    result: Any
    attempts: int
    retries_used: int
    created: dt.datetime
    started: dt.datetime | None
    finished: dt.datetime | None
    run_after: dt.datetime | None
    node: str | None
    parent: int | None
    due: dt.datetime | None = None      # set for runs a schedule submitted
    unique_digest: str | None = None
    priority: int = 0

    @property
    def is_final(self) -> bool:
        return is_final(self.state)


def utcnow() -> dt.datetime:
    """Naive UTC, the form every time column holds."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="microseconds") + "Z"


def encode_result(result: Any) -> str | None:
    """JSON for the result column, capped so a poison job cannot bloat the database."""
    if result is None:
        return None
    try:
        text = json.dumps(result, ensure_ascii=False, default=str, allow_nan=False)
    except (TypeError, ValueError) as exc:
        text = json.dumps({"error": f"result is not JSON: {exc}"})
    if len(text) > MAX_RESULT_CHARS:
        text = json.dumps({"error": f"result too large ({len(text)} chars, limit {MAX_RESULT_CHARS})"})
    return text


def cap_msg(msg: Any) -> str:
    text = "" if msg is None else str(msg)
    return text if len(text) <= MAX_MSG_CHARS else text[:MAX_MSG_CHARS - 3] + "..."


def row_from(r: Any) -> JobRow:
    """A JobRow from a result row of the jobs table."""
    return JobRow(
        jobid=int(r.jobid), jobname=r.jobname, state=r.state,
        params=json.loads(r.params), msg=r.msg or "",
        result=None if r.result is None else json.loads(r.result),
        attempts=r.attempts, retries_used=r.retries_used, created=r.created,
        started=r.started, finished=r.finished,
        run_after=r.run_after if r.run_after is not None else getattr(r, "fell_due", None),
        node=r.node, parent=r.parent, due=getattr(r, "due", None),
        unique_digest=getattr(r, "unique_digest", None), priority=-int(getattr(r, "prio_rank", 0) or 0))
