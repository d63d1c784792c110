"""`upq-cli.py top`: a terminal view of the queue that refreshes every second (curses, standard
library only): per type counts and workers, the running jobs with their age, the latest
failures. `q` quits; Ctrl-C exits cleanly (0); when the daemon goes away, a message and exit 2.
It fits 80x24 and works over ssh (plain curses, no mouse, no colours needed).
"""
from __future__ import annotations

import curses
import json
import sys
import time
from typing import Any, Callable

from upqstates import State
from upqtables import STATS_COLUMNS, ago, table

REFRESH = 1.0


def _payload(answer: str) -> Any:
    kind, _, payload = answer.partition(" ")
    if kind != "ACK":
        raise RuntimeError(answer)
    return json.loads(payload)


def snapshot(ask: Callable[[str], str]) -> dict[str, Any]:
    """One look: stats, the running jobs and the latest failures."""
    return {"stats": _payload(ask("stats")), "runs": _payload(ask(f"list {State.RUNNING} limit:50")),
            "failures": _payload(ask(f"list {State.FAILED} limit:10"))}


def lines(snap: dict[str, Any], width: int, height: int) -> list[str]:
    """The screen's text, cut to the terminal."""
    stats = snap["stats"]
    states = STATS_COLUMNS
    out = [f"upq top  {time.strftime('%H:%M:%S')}  (q quits)", ""]
    out += table(["TYPE", "QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED", "WORKERS"],
                 [[name, *[c.get(s, 0) for s in states], c.get("workers", 0)]
                  for name, c in stats.get("jobs", {}).items()], width, stretch=0).splitlines()
    out += ["", f"RUNNING ({len(snap['runs'])})"]
    out += table(["JOBID", "TYPE", "STARTED", "NODE", "MSG"],
                 [[j["jobid"], j["jobname"], ago(j.get("started")), j.get("node") or "", j.get("msg") or ""]
                  for j in snap["runs"]], width).splitlines()
    out += ["", "LATEST FAILURES"]
    out += table(["JOBID", "TYPE", "FINISHED", "MSG"],
                 [[j["jobid"], j["jobname"], ago(j.get("finished")), j.get("msg") or ""]
                  for j in snap["failures"]], width).splitlines()
    return [line[:width - 1] for line in out[:height]]


def _loop(screen: Any, ask: Callable[[str], str]) -> None:
    curses.curs_set(0)
    screen.timeout(int(REFRESH * 1000))
    while True:
        snap = snapshot(ask)
        height, width = screen.getmaxyx()
        screen.erase()
        for y, text in enumerate(lines(snap, width, height)):
            screen.addstr(y, 0, text)
        screen.refresh()
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return


def top(ask: Callable[[str], str], lost: type[Exception]) -> int:
    """Run the view until `q`; 0 on q or Ctrl-C, 2 when the daemon went away (`lost` raised)."""
    if not sys.stdout.isatty():
        print("upq-cli.py: top needs a terminal", file=sys.stderr)
        return 2
    try:
        curses.wrapper(_loop, ask)
    except KeyboardInterrupt:
        return 0
    except (lost, RuntimeError, ValueError) as exc:
        print(f"upq-cli.py top: {exc}", file=sys.stderr)
        return 2
    return 0
