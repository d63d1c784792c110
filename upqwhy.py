"""`why <jobid>`: why a job is not running (or where it runs, or how it ended), as a reason code
and one sentence a person can act on.

It reads the job, the database's clock, the nodes (with the job types each runs, stored by
NodeStore.set_jobs) and the running jobs of the job's type, in one short read; what only this
daemon knows (timed-out runs holding its type back) comes from the queue manager.
Reason codes (SPEC): not_due, retry_wait, not_enabled, held_back, workers_busy, leased, queued;
running, done, failed, cancelled; `paused` when its type is paused.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from upqdb import Database
from upqerrors import UnknownJob
from upqqueuemngr import QueueManager
from upqschema import JobRow, iso, jobs, nodes, row_from
from upqstates import FINAL, State, shown

MAX_SHOWN_RUNS = 20


@dataclass(frozen=True)
class Seen:
    """What one read found: the job, the database's now, the nodes and the type's running jobs."""
    row: JobRow
    now: dt.datetime
    nodes: list[dict[str, Any]]         # node, state, age (s), jobs {type: concurrent}
    running: list[dict[str, Any]]       # jobid, node, started, age (s)


def _look(db: Database, jobid: int) -> Seen:
    def q(conn: Connection) -> Seen:
        r = conn.execute(select(jobs).where(jobs.c.jobid == jobid)).first()
        if r is None:
            raise UnknownJob(f"no job {jobid}")
        row = row_from(r)
        now = db.db_now(conn)
        found = [{"node": n.node, "state": n.state, "age": (now - n.heartbeat).total_seconds(),
                  "jobs": json.loads(n.jobs) if n.jobs else {}}
                 for n in conn.execute(select(nodes).order_by(nodes.c.node))]
        running = [{"jobid": int(j.jobid), "node": j.node, "started": iso(j.started),
                    "age": round((now - j.started).total_seconds(), 1) if j.started else None}
                   for j in conn.execute(select(jobs.c.jobid, jobs.c.node, jobs.c.started)
                                         .where(jobs.c.jobname == row.jobname, jobs.c.state == State.RUNNING)
                                         .order_by(jobs.c.jobid).limit(1000))]
        return Seen(row, now, found, running)
    return db.read(q)


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def why(jobid: int, manager: QueueManager, db: Database, node_timeout: float) -> dict[str, Any]:
    """{jobid, state, reason, text, ...details}: the answer of `why`."""
    seen = _look(db, jobid)
    row, now = seen.row, seen.now
    out: dict[str, Any] = {"jobid": row.jobid, "jobname": row.jobname, "state": str(shown(row.state))}

    def answer(reason: str, text: str, **details: Any) -> dict[str, Any]:
        return {**out, "reason": reason, "text": text, **details}

    if row.state in FINAL:
        at = f" at {iso(row.finished)}" if row.finished else ""
        where = f" on {row.node}" if row.node else ""
        msg = f": {row.msg}" if row.msg else ""
        return answer(str(row.state), f"job {jobid} has ended {row.state}{at}{where}{msg}",
                      node=row.node, finished=iso(row.finished))
    if row.state == State.RUNNING:
        age = (now - row.started).total_seconds() if row.started else 0.0
        return answer(str(State.RUNNING), f"job {jobid} is running on {row.node} since {iso(row.started)} "
                      f"({_ago(age)}), attempt {row.attempts}", node=row.node, started=iso(row.started),
                      seconds=round(age, 1))
    if row.state == State.LEASED:
        return answer(str(State.LEASED), f"job {jobid} is leased by daemon {row.node}, which will start it "
                      f"as soon as one of its workers is free", node=row.node)
    if row.state == State.HELD:
        return answer("queued", f"job {jobid} is being submitted by a running job's check() on "
                      f"{row.node} and is not accepted yet", node=row.node)
    jt = manager.types.get(row.jobname)
    if row.run_after is not None and row.run_after > now:
        wait = (row.run_after - now).total_seconds()
        due = iso(row.run_after)
        if row.attempts > 0:
            tries = f" of {jt.config.retries + 1}" if jt is not None and row.retries_used > 0 else ""
            return answer("retry_wait", f"job {jobid} is waiting for a retry: attempt {row.attempts}{tries} "
                          f"did not finish it; the next attempt is due at {due} (in {_ago(wait)})",
                          attempt=row.attempts, attempts=None if not tries else jt.config.retries + 1,
                          due=due, seconds=round(wait, 1))
        return answer("not_due", f"job {jobid} is not due yet: it is due at {due} (in {_ago(wait)})",
                      due=due, seconds=round(wait, 1))
    if manager.is_paused(row.jobname):
        return answer("paused", f"job type {row.jobname} is paused (`resume {row.jobname}` ends it): "
                      f"no daemon starts its jobs; job {jobid} waits in the queue")
    live = [n for n in seen.nodes if n["state"] == "alive" and n["age"] < node_timeout]
    runners = [n for n in live if row.jobname in n["jobs"]]
    if jt is not None and manager.node not in {n["node"] for n in runners}:
        runners.append({"node": manager.node, "jobs": manager.concurrent()})
    if not runners:
        def runs(n: dict[str, Any]) -> str:
            return ", ".join(sorted(n["jobs"])) or "no job types"
        live_text = "; ".join(f"{n['node']} runs {runs(n)}" for n in live) or "none"
        others = [n for n in seen.nodes if n not in live and row.jobname in n["jobs"]]
        off = "; ".join(f"{n['node']} ({n['state']}, last heartbeat {_ago(n['age'])} ago)" for n in others)
        return answer("not_enabled", f"job type {row.jobname} is not enabled on any live daemon "
                      f"(live daemons: {live_text})" + (f"; it is enabled on {off}" if off else ""),
                      live=[{"node": n["node"], "jobs": sorted(n["jobs"])} for n in live],
                      enabled_on=[n["node"] for n in others])
    if jt is not None and len(runners) == 1:
        _, abandoned, size = jt.slots.busy()
        if abandoned >= size:
            return answer("held_back", f"job type {row.jobname} is held back on {manager.node}: "
                          f"{abandoned} timed-out run(s) are still alive and it starts no more until "
                          f"one ends", abandoned=abandoned)
    busy_nodes = []
    for n in runners:
        mine = [r for r in seen.running if r["node"] == n["node"]]
        if len(mine) < max(1, int(n["jobs"].get(row.jobname, 1))):
            break
        busy_nodes.append(n["node"])
    else:
        shown_runs = seen.running[:MAX_SHOWN_RUNS]
        listing = ", ".join(f"{r['jobid']} on {r['node']} for {_ago(r['age'] or 0)}" for r in shown_runs)
        return answer("workers_busy", f"every worker of job type {row.jobname} is busy: {listing}",
                      jobids=[r["jobid"] for r in shown_runs], running=shown_runs, nodes=busy_nodes)
    return answer("queued", f"job {jobid} is due now; a free worker of {row.jobname} on "
                  f"{', '.join(sorted(n['node'] for n in runners))} should start it shortly "
                  f"(older due jobs of the type go first)", nodes=sorted(n["node"] for n in runners))
