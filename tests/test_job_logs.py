"""Per-job logs (issue 13): what a run writes through self.logger, and in a worker process its
stdout and stderr (and its programs'), kept per job and attempt, capped at log_limit, shown by
the `log` command while the job runs and by `upq-cli log [-f]`.

Job tests/jobs/chatty.py runs as `chatty` (threads) and as `chattyp` (isolation = process).
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Callable

import pytest

from conftest import CLI, SQLITE_ONLY, Daemon, wait_for

MakeDaemon = Callable[..., Daemon]
MODES = pytest.mark.parametrize("kind", ["chatty", "chattyp"])


def chatty_daemon(make_daemon: MakeDaemon, **opts: str) -> Daemon:
    d = make_daemon({"chatty": dict(opts), "chattyp": {"isolation": "process", **opts}}, start=False)
    src = (d.dir / "jobs" / "chatty.py").read_text()
    (d.dir / "jobs" / "chattyp.py").write_text(src.replace("class Chatty(", "class Chattyp("))
    return d.start()


def log_of(d: Daemon, jobid: int, attempt: int | None = None) -> dict:
    answer = d.ask(f"log {jobid}" + ("" if attempt is None else f" attempt:{attempt}"))
    assert answer.startswith("ACK {"), answer
    return json.loads(answer[4:])


def messages(log: dict) -> list[str]:
    """The lines without their time stamp and level (the logger's lines), or as they are."""
    return [line.split(" ", 3)[3] if " INFO " in line else line for line in log["lines"]]


@MODES
def test_logger_lines_are_kept_per_attempt(make_daemon: MakeDaemon, kind: str) -> None:
    d = chatty_daemon(make_daemon, retries="1", retry_delay="0")
    jobid = d.submit(f"{kind} lines:2 fail:1")
    assert d.wait_job(jobid, 20)["state"] == "done"
    latest = log_of(d, jobid)
    assert latest["attempt"] == 2 and not latest["truncated"], latest
    assert messages(latest) == ["line 0 of attempt 2", "line 1 of attempt 2"]
    assert messages(log_of(d, jobid, 1)) == ["line 0 of attempt 1", "line 1 of attempt 1"]


@SQLITE_ONLY
def test_a_worker_process_keeps_its_stdout_stderr_and_programs_output(make_daemon: MakeDaemon) -> None:
    d = chatty_daemon(make_daemon)
    jobid = d.submit("chattyp lines:1 print:1")
    assert d.wait_job(jobid, 20)["state"] == "done"
    assert messages(log_of(d, jobid)) == ["line 0 of attempt 1", "printed by attempt 1",
                                          "from a program", "to stderr"]


@MODES
@SQLITE_ONLY
def test_log_limit_keeps_the_first_and_last_lines_with_a_marker(make_daemon: MakeDaemon, kind: str) -> None:
    d = chatty_daemon(make_daemon, log_limit="4000")
    jobid = d.submit(f"{kind} lines:2000")
    assert d.wait_job(jobid, 30)["state"] == "done"
    log = log_of(d, jobid)
    text = messages(log)
    assert log["truncated"] and text[0] == "line 0 of attempt 1" and text[-1] == "line 1999 of attempt 1"
    marker = [line for line in text if line.startswith("[... ")]
    assert len(marker) == 1 and "log_limit is 4000" in marker[0], marker
    assert len("\n".join(line for line in log["lines"] if not line.startswith("[... "))) <= 4000


@MODES
@SQLITE_ONLY
def test_lines_of_a_running_job_are_visible_before_it_ends_and_cli_follows(make_daemon: MakeDaemon,
                                                                           kind: str) -> None:
    d = chatty_daemon(make_daemon)
    hold = d.dir / "hold"
    jobid = d.submit(f"{kind} lines:1 hold:{hold}")
    wait_for(lambda: "holding" in " ".join(log_of(d, jobid)["lines"]), 5, "the running job's lines")
    assert d.job(jobid)["state"] == "running"
    follow = subprocess.Popen([sys.executable, str(CLI), "-s", d.socket, "log", str(jobid), "-f"],
                              stdout=subprocess.PIPE, text=True)
    try:
        hold.write_text("go")
        out, _ = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 0, out
    assert out.count("line 0 of attempt 1") == 1 and "holding" in out, out


@SQLITE_ONLY
def test_cli_log_prints_the_lines(make_daemon: MakeDaemon) -> None:
    d = chatty_daemon(make_daemon)
    jobid = d.submit("chatty lines:2")
    d.wait_job(jobid, 20)
    res = d.cli("log", str(jobid))
    assert res.returncode == 0 and res.stdout.count("\n") == 2 and "line 1 of attempt 1" in res.stdout, res


@SQLITE_ONLY
def test_bad_log_requests_get_a_clear_err(make_daemon: MakeDaemon) -> None:
    d = chatty_daemon(make_daemon)
    d.wait_job(d.submit("chatty lines:1"), 20)
    for line in ["log", "log x", "log 1 2", "log 999", "log 1 attempt:0", "log 1 attempt:7", "log 1 attempt:x",
                 "log 1 attempt:1 attempt:1", "log 1 try:1", "log 1 attempt:99999999999999999999999"]:
        answer = d.ask(line)
        assert answer.startswith("ERR ") and len(answer) > 8, (line, answer)
    assert d.answers_ping()


@SQLITE_ONLY
def test_a_job_that_never_ran_has_an_empty_log(make_daemon: MakeDaemon) -> None:
    d = chatty_daemon(make_daemon)
    jobid = d.submit("chatty lines:1 @delay:3600")
    assert log_of(d, jobid) == {"jobid": jobid, "attempt": 0, "lines": [], "truncated": False}

