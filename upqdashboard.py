"""The dashboard's pages and actions: overview, jobs (filtered, keyset-paged by jobid, never
OFFSET), one job, and cancel / retry / retry-all-failed behind a confirmation page.

Routes are added to an upqhttp.HttpApp, which has checked the session (and, on POST, the CSRF
token and Origin) before any of them runs.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.engine import Connection

import upqproto as proto
from upqerrors import UpqError
from upqhttp import HttpApp, Reply, Request
from upqschema import jobs, row_from, utcnow
from upqstates import FINAL, QUEUED, SHOWN, State, can_retry, shown
from upqtemplates import CSS, JS, environment

if TYPE_CHECKING:
    from upqcontrol import Control

PAGE = 50
REFRESH = 5
RETRY_ALL_MAX = 1000


def ago(seconds: float | None) -> str:
    """'3 s ago' style, for people."""
    if seconds is None:
        return ""
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.0f} d"


class Dashboard:
    """The pages; one per daemon."""

    def __init__(self, app: HttpApp, control: "Control"):
        self.app = app
        self.control = control
        self.env = environment()

    def page(self, name: str, req: Request | None, status: int = 200, refresh: int = 0, **values: Any) -> Reply:
        html = self.env.get_template(name).render(node=self.app.manager.node, refresh=refresh,
                                                  csrf=req.session.csrf if req and req.session else "",
                                                  **values)
        return Reply(status, html.encode(), "text/html; charset=utf-8")

    # -- pages ----------------------------------------------------------------
    def overview(self, req: Request) -> Reply:
        manager, db = self.app.manager, self.app.db
        counts = db.count_by_state()
        recent = self.app.metrics.recent_finishes()

        def ages(conn: Connection) -> tuple[dict[str, float | None], dict[str, list[str]]]:
            from upqmetrics import oldest_due
            from upqschema import nodes
            now = db.db_now(conn, exact=False)
            out: dict[str, float | None] = {}
            for name, per in counts.items():
                t = oldest_due(conn, name, now) if per.get(State.NEW) else None
                out[name] = None if t is None else (now - t).total_seconds()
            runs = {r.node: sorted(json.loads(r.jobs)) if r.jobs else []
                    for r in conn.execute(select(nodes.c.node, nodes.c.jobs))}
            return out, runs
        oldest, node_jobs = db.read(ages)
        types = []
        for name in sorted(set(counts) | set(manager.types)):
            per, jt = counts.get(name, {}), manager.types.get(name)
            busy = jt.slots.busy()[0] if jt is not None else 0
            minute, hour = recent.get(name, (0, 0))
            types.append({"name": name, **{str(s): per.get(s, 0) for s in SHOWN}, "busy": busy,
                          "workers": jt.config.concurrent if jt else 0, "oldest": ago(oldest.get(name)),
                          "minute": minute, "hour": hour, "paused": manager.is_paused(name)})
        now = utcnow()
        nodes = []
        for n in db.list_nodes():
            beat = dt.datetime.fromisoformat(n["heartbeat"].rstrip("Z")) if n["heartbeat"] else None
            nodes.append({**n, "age": ago((now - beat).total_seconds()) + " ago" if beat else "",
                          "jobs": ", ".join(node_jobs.get(n["node"], []))})
        return self.page("overview.html", req, refresh=REFRESH, types=types, nodes=nodes)

    def jobs(self, req: Request) -> Reply:
        f = {k: req.query.get(k, "").strip()[:200] for k in ("type", "state", "node", "q", "before")}
        before = int(f["before"]) if f["before"].isdigit() else None

        def q(conn: Connection) -> list[Any]:
            stmt = select(jobs)
            if f["type"]:
                stmt = stmt.where(jobs.c.jobname == f["type"])
            if f["state"] == State.NEW:
                stmt = stmt.where(jobs.c.state.in_(QUEUED))
            elif f["state"] in {str(s) for s in SHOWN}:
                stmt = stmt.where(jobs.c.state == f["state"])
            if f["node"]:
                stmt = stmt.where(jobs.c.node == f["node"])
            if f["q"]:
                like = "%" + f["q"].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                stmt = stmt.where(or_(jobs.c.params.like(like, escape="\\"), jobs.c.msg.like(like, escape="\\")))
            if before is not None:
                stmt = stmt.where(jobs.c.jobid < before)
            return [row_from(r) for r in conn.execute(stmt.order_by(jobs.c.jobid.desc()).limit(PAGE + 1))]
        rows = self.app.db.read(q)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        keep = {k: v for k, v in f.items() if v and k != "before"}
        next_link = first_link = ""
        from urllib.parse import urlencode
        if more:
            next_link = "/jobs?" + urlencode({**keep, "before": rows[-1].jobid})
        if before is not None:
            first_link = "/jobs?" + urlencode(keep)
        shown_rows = [{**proto.job_json(r)} for r in rows]
        return self.page("jobs.html", req, refresh=REFRESH, rows=shown_rows, f=f, next_link=next_link,
                         first_link=first_link, states=[str(s) for s in SHOWN],
                         type_names=sorted(set(self.app.manager.types) | ({f["type"]} if f["type"] else set())))

    def job(self, req: Request) -> Reply:
        raw = req.query.get("id", "")
        if not raw.isdigit():
            return self.page("done.html", req, 400, message="no job id given", error=True, back="/jobs")
        try:
            row, children = self.control.status(int(raw))
        except UpqError as exc:
            return self.page("done.html", req, 404, message=exc.reason, error=True, back="/jobs")
        from upqwhy import why
        try:
            sentence = why(row.jobid, self.app.manager, self.app.db,
                           self.app.manager.config.server.node_timeout)["text"]
        except UpqError as exc:
            sentence = exc.reason
        duration = ""
        if row.started is not None:
            duration = ago(((row.finished or utcnow()) - row.started).total_seconds())
        return self.page("job.html", req, refresh=REFRESH, j=proto.job_json(row), children=children, why=sentence,
                         params=json.dumps(row.params, indent=2, ensure_ascii=False),
                         result="" if row.result is None else json.dumps(row.result, indent=2, ensure_ascii=False),
                         duration=duration, can_retry=can_retry(row.state),
                         can_cancel=row.state not in FINAL)

    # -- actions --------------------------------------------------------------
    def confirm(self, req: Request) -> Reply:
        action, raw, jobname = req.query.get("action", ""), req.query.get("id", ""), req.query.get("type", "")
        if action in ("retry", "cancel") and raw.isdigit():
            return self.page("confirm.html", req, question=f"{action.capitalize()} job {raw}?", action=action,
                             verb=action, jobid=raw, type="", back=f"/jobs/{raw}")
        if action == "retry_all" and jobname:
            return self.page("confirm.html", req, question=f"Retry every failed job of type {jobname} "
                             f"(at most {RETRY_ALL_MAX} at a time)?", action=action, verb="retry them all",
                             jobid="", type=jobname, back="/")
        return self.page("done.html", req, 400, message="unknown action", error=True, back="/")

    def action(self, req: Request) -> Reply:
        action, raw, jobname = req.form.get("action", ""), req.form.get("id", ""), req.form.get("type", "")
        try:
            if action == "retry" and raw.isdigit():
                row = self.control.retry(int(raw))
                return self.page("done.html", req, message=f"job {row.jobid} is queued again ({shown(row.state)})",
                                 back=f"/jobs/{row.jobid}")
            if action == "cancel" and raw.isdigit():
                row = self.control.cancel(int(raw))
                return self.page("done.html", req, message=f"job {row.jobid}: cancel asked; it is now "
                                 f"{shown(row.state)}", back=f"/jobs/{row.jobid}")
            if action == "retry_all" and jobname:
                n = self._retry_all(jobname)
                return self.page("done.html", req, message=f"{n} failed job(s) of type {jobname} queued again",
                                 back="/")
        except UpqError as exc:
            return self.page("done.html", req, 409, message=exc.reason, error=True,
                             back=f"/jobs/{raw}" if raw.isdigit() else "/")
        return self.page("done.html", req, 400, message="unknown action", error=True, back="/")

    def _retry_all(self, jobname: str) -> int:
        ids = self.app.db.read(lambda conn: [int(r[0]) for r in conn.execute(
            select(jobs.c.jobid).where(jobs.c.jobname == jobname, jobs.c.state == State.FAILED)
            .order_by(jobs.c.jobid).limit(RETRY_ALL_MAX))])
        done = 0
        for jobid in ids:
            try:
                self.control.retry(jobid)
                done += 1
            except UpqError:
                pass            # retried or changed meanwhile
        return done


def add_dashboard(app: HttpApp, control: "Control") -> Dashboard:
    """Register the dashboard's pages, its login form and its static files on `app`."""
    d = Dashboard(app, control)
    app.pages.update({("GET", "/"): d.overview, ("GET", "/jobs"): d.jobs, ("GET", "/jobs/"): d.job,
                      ("GET", "/confirm"): d.confirm, ("POST", "/action"): d.action})
    app.login_page = lambda error: d.page("login.html", None, 401 if error else 200, error=error)
    app.public.update({"/static/upq.css": Reply(200, CSS.encode(), "text/css; charset=utf-8"),
                       "/static/upq.js": Reply(200, JS.encode(), "text/javascript; charset=utf-8")})
    return d
