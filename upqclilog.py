"""`upq-cli log <jobid> [attempt:<n>] [-f]`: print a job's log lines; -f follows a running job
until it ends, like `tail -f` (a new attempt's lines follow under a header line)."""
from __future__ import annotations

import json
from typing import Any, Callable

POLL = 0.5          # seconds a followed job is waited for between reads of its log


def new_lines(printed: list[str], lines: list[str], truncated: bool) -> list[str]:
    """The lines not printed yet; past log_limit the middle moves, so find the last one printed."""
    if not truncated or not printed:
        return lines[len(printed):]
    last = printed[-1]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i] == last:
            return lines[i + 1:]
    return lines


def show_log(ask: Callable[[str], str], line: str, follow: bool, out: Callable[[str], None] = print) -> int:
    """Print the log the `log` request `line` names; with follow, keep printing until the job ends.
    Returns the exit status: 0 once the log is shown (and a followed job ended done), else 1."""
    words = line.split()
    answer = ask(line)
    if not answer.startswith("ACK "):
        out(answer)
        return 1
    log: dict[str, Any] = json.loads(answer[4:])
    for text in log["lines"]:
        out(text)
    if not follow:
        return 0
    jobid, printed, attempt = log["jobid"], list(log["lines"]), log["attempt"]
    fixed = len(words) > 2          # attempt:<n> given: follow that one only
    while True:
        # `wait` answers ACK {job} once it ended done, ERR {job} once it ended otherwise,
        # ERR timeout... while it has not ended
        waited = ask(f"wait {jobid} timeout:{POLL}")
        ended = waited.startswith(("ACK {", "ERR {"))
        if not ended and not waited.startswith("ERR timeout"):
            out(waited)
            return 1
        log = json.loads(ask(f"log {jobid}" + (f" attempt:{attempt}" if fixed else ""))[4:])
        if log["attempt"] != attempt:
            out(f"--- attempt {log['attempt']} ---")
            attempt, printed = log["attempt"], []
        fresh = new_lines(printed, log["lines"], log["truncated"])
        for text in fresh:
            out(text)
        printed = list(log["lines"])
        if ended:
            return 0 if waited.startswith("ACK") else 1
