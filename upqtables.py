"""Answers as tables a person can read, for upq-cli.py when standard output is a terminal:
list, stats, status, help and why. Standard library only (the client imports it).

Output to a pipe or file never comes here: it stays the protocol line, so scripts do not change.
Columns fit the terminal's width (80 at least is assumed), times read "3 s ago", failed rows
are marked with "!".
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Callable

from upqstates import State

# the columns of `stats`, as it names them (a queued job's state is shown as "new")
STATS_COLUMNS = ["queued", *[str(s) for s in (State.RUNNING, State.DONE, State.FAILED, State.CANCELLED)]]
FAILED = str(State.FAILED)


def ago(iso: str | None, now: dt.datetime | None = None) -> str:
    """'3 s ago' / 'in 5 min' from the ISO time of a job, '' for none."""
    if not iso:
        return ""
    try:
        t = dt.datetime.fromisoformat(iso.rstrip("Z"))
    except ValueError:
        return iso
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    s = (now - t).total_seconds()
    future, s = s < 0, abs(s)
    if s < 120:
        text = f"{s:.0f} s"
    elif s < 7200:
        text = f"{s / 60:.0f} min"
    elif s < 172800:
        text = f"{s / 3600:.0f} h"
    else:
        text = f"{s / 86400:.0f} d"
    return f"in {text}" if future else f"{text} ago"


def table(headers: list[str], rows: list[list[Any]], width: int = 80, stretch: int = -1) -> str:
    """Aligned columns; the `stretch` column (default the last) is cut so a row fits `width`."""
    cells = [[one_line(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    stretch = stretch % len(headers)
    room = width - (sum(widths) - widths[stretch]) - 2 * (len(headers) - 1)
    widths[stretch] = max(len(headers[stretch]), min(widths[stretch], room))

    def fit(text: str, w: int) -> str:
        return text if len(text) <= w else text[:max(0, w - 1)] + "…"
    lines = ["  ".join(fit(h, w).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for r in cells:
        lines.append("  ".join(fit(c, w).ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def one_line(value: Any) -> str:
    return " ".join(("" if value is None else str(value)).split())


def _list(jobs: list[dict[str, Any]], width: int) -> str:
    rows = [[("! " if j["state"] == FAILED else "  ") + str(j["jobid"]), j["jobname"], j["state"],
             ago(j.get("created")), j.get("node") or "", j.get("msg") or ""] for j in jobs]
    return table(["  JOBID", "TYPE", "STATE", "CREATED", "NODE", "MSG"], rows, width) + f"\n{len(jobs)} job(s)"


def _stats(payload: dict[str, Any], width: int) -> str:
    states = STATS_COLUMNS
    rows = [[("! " if c.get(FAILED) else "  ") + name, *[c.get(s, 0) for s in states], c.get("workers", 0)]
            for name, c in payload.get("jobs", {}).items()]
    out = table(["  TYPE", *[s.upper() for s in states], "WORKERS"], rows, width, stretch=0)
    nodes = payload.get("nodes", [])
    if nodes:
        out += "\n\n" + table(["NODE", "STATE", "HEARTBEAT", "RUNNING"],
                              [[n["node"], n["state"], ago(n.get("heartbeat")), n.get(str(State.RUNNING), 0)]
                               for n in nodes], width, stretch=0)
    return out


def _status(job: dict[str, Any], width: int) -> str:
    def when(key: str) -> str:
        return f"{job.get(key)}  ({ago(job.get(key))})" if job.get(key) else ""
    mark = "  <- FAILED" if job.get("state") == FAILED else ""
    pairs = [("jobid", job.get("jobid")), ("type", job.get("jobname")), ("state", f"{job.get('state')}{mark}"),
             ("msg", job.get("msg")), ("attempts", job.get("attempts")), ("created", when("created")),
             ("due", when("run_after")), ("started", when("started")), ("finished", when("finished")),
             ("node", job.get("node")), ("parent", job.get("parent")),
             ("params", json.dumps(job.get("params", {}), ensure_ascii=False)),
             ("result", "" if job.get("result") is None else json.dumps(job["result"], ensure_ascii=False))]
    children = job.get("children")
    if children:
        pairs.append(("children", ", ".join(f"{c.get('jobid')} ({c.get('state')})" for c in children)))
    return "\n".join(f"{k:<9} {one_line(v)}"[:width] for k, v in pairs if v not in (None, ""))


def _help(payload: dict[str, Any], width: int) -> str:
    cmds = table(["COMMAND", "WHAT IT DOES"], [[k, v] for k, v in payload.get("commands", {}).items()], width)
    jobs = table(["JOB TYPE", "CONCURRENT"], [[k, v.get("concurrent")] for k, v in payload.get("jobs", {}).items()],
                 width, stretch=0)
    return cmds + "\n\n" + jobs


SCHEDULE_COLUMNS = ["jobname", "schedule", "tz", "next", "last", "last_jobid", "last_state", "last_note"]


def _schedules(rows: list[dict[str, Any]], width: int) -> str:
    if not rows:
        return "no periodic job types enabled"
    cells = [["-" if r.get(c) in (None, "") else r[c] for c in SCHEDULE_COLUMNS] for r in rows]
    return table(SCHEDULE_COLUMNS, cells, width)


RENDERERS: dict[str, Callable[[Any, int], str]] = {
    "list": _list, "list_queue": _list, "stats": _stats, "status": _status, "help": _help,
    "why": lambda w, width: str(w["text"]), "schedules": _schedules,
}
# drawn into a pipe too, at full width: `why` (SPEC) and `schedules` (--json gives the JSON)
INTO_PIPES = {"why", "schedules"}


def render(command: str, answer: str, width: int = 80) -> str | None:
    """The answer as a table, or None when it is not one we draw (then it is printed as is)."""
    kind, _, payload = answer.partition(" ")
    if kind != "ACK" or command not in RENDERERS or not payload.lstrip().startswith(("{", "[")):
        return None
    try:
        return RENDERERS[command](json.loads(payload), max(40, width))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def printed(command: str, answer: str, tty: bool) -> bool:
    """On a terminal, print the answer as a table sized to it; INTO_PIPES commands are drawn into
    a pipe too. False when it is not one we draw: then the answer is printed as it is."""
    import shutil
    if not tty and command not in INTO_PIPES:
        return False
    text = render(command, answer, shutil.get_terminal_size().columns if tty else 10_000)
    if text is not None:
        print(text, flush=True)
    return text is not None
