"""upq-cli.py on a terminal (issue 14): list, stats, status and help as tables, `why` as its
sentence, `top` refreshing; the same commands into a pipe print exactly the protocol answer."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import CLI, SQLITE_ONLY, wait_for
from helpers.tmux import Tmux

JOBS = {"record": {"concurrent": "2"}, "fail": {}, "gate": {"concurrent": "1"}}


@pytest.fixture
def term():
    t = Tmux()
    yield t
    t.close()


def cli_line(d, *args: str) -> list[str]:
    return [sys.executable, str(CLI), "-s", d.socket, *args]


@SQLITE_ONLY
def test_pipes_print_exactly_the_protocol_answer(make_daemon) -> None:
    d = make_daemon(jobs=JOBS)
    jobid = d.submit("record")
    d.wait_job(jobid)
    for command in (["list"], ["stats"], ["status", str(jobid)], ["help"], ["--raw", "why", str(jobid)]):
        r = d.cli(*command)
        assert r.returncode == 0, r.stderr
        assert r.stdout == d.ask(" ".join(command[-2:] if command[0] == "--raw" else command)) + "\n", command
        assert d.cli("--json", *command[-2:]).stdout.startswith(("{", "["))
    sentence = json.loads(d.ask(f"why {jobid}")[4:])["text"]
    assert d.cli("why", str(jobid)).stdout == sentence + "\n"      # SPEC: it prints the sentence


@SQLITE_ONLY
def test_list_and_stats_are_tables_on_a_terminal(make_daemon, term: Tmux) -> None:
    d = make_daemon(jobs=JOBS)
    ok = d.submit("record")
    bad = d.submit("fail")
    d.wait_job(ok), d.wait_job(bad)
    term.type(cli_line(d, "list"), '; echo "rc""=$?"')
    screen = wait_for(lambda: (lambda s: s if "\nrc=" in s else None)(term.screen()), 15, "list to print")
    assert "rc=0" in screen and "ACK" not in screen, screen
    lines = screen.splitlines()
    header = next(line for line in lines if "JOBID" in line)
    assert header.split() == ["JOBID", "TYPE", "STATE", "CREATED", "NODE", "MSG"], header
    failed_row = next(line for line in lines if f" {bad} " in line + " ")
    assert failed_row.startswith(f"! {bad}") and "failed" in failed_row and "s ago" in failed_row, failed_row
    assert all(len(line) <= 80 for line in lines)
    term.run("send-keys", "-t", "t", "clear", "Enter")
    term.type(cli_line(d, "stats"), '; echo "rc""=$?"')
    screen = wait_for(lambda: (lambda s: s if "\nrc=" in s and "WORKERS" in s else None)(term.screen()),
                      15, "stats to print")
    assert "ACK" not in screen and "HEARTBEAT" in screen, screen
    row = next(line for line in screen.splitlines() if line.startswith("! fail"))
    assert row.split()[2:] == ["0", "0", "0", "1", "0", "1"], row
    term.run("send-keys", "-t", "t", "clear", "Enter")
    term.type(cli_line(d, "--raw", "stats"))
    wait_for(lambda: "ACK {" in term.screen(), 15, "--raw to print the protocol line")


@SQLITE_ONLY
def test_top_shows_a_running_job_then_quits_on_q(make_daemon, term: Tmux) -> None:
    d = make_daemon(jobs=JOBS)
    try:
        jobid = d.submit("gate")
        wait_for(lambda: d.job(jobid)["state"] == "running", 15, "the gate job to run")
        term.type(cli_line(d, "top"), '; echo "top-exit""=$?"')
        screen = wait_for(lambda: (lambda s: s if "RUNNING (1)" in s else None)(term.screen()), 15,
                          "top to show the running job")
        assert any(line.split()[:2] == [str(jobid), "gate"] for line in screen.splitlines()), screen
        assert "upq top" in screen
        (d.dir / "gate.open").touch()
        wait_for(lambda: "RUNNING (0)" in term.screen(), 15, "top to refresh once the job ended")
        term.keys("q")
        wait_for(lambda: "top-exit=0" in term.screen(), 15, "top to quit on q")
    finally:
        (d.dir / "gate.open").touch()


@SQLITE_ONLY
def test_top_exits_2_with_a_message_when_the_daemon_goes_away(make_daemon, term: Tmux) -> None:
    d = make_daemon(jobs=JOBS)
    term.type(cli_line(d, "top"), '; echo "top-exit""=$?"')
    wait_for(lambda: "upq top" in term.screen(), 15, "top to start")
    d.stop()
    screen = wait_for(lambda: (lambda s: s if "\ntop-exit=" in s else None)(term.screen()), 15, "top to exit")
    assert "top-exit=2" in screen and "upq-cli.py top:" in screen, screen


@SQLITE_ONLY
def test_why_prints_its_sentence_on_a_terminal(make_daemon, term: Tmux) -> None:
    d = make_daemon(jobs=JOBS)
    jobid = d.submit("record @delay:600")
    term.type(cli_line(d, "why", str(jobid)))
    screen = wait_for(lambda: (lambda s: s if "not due yet" in s else None)(term.screen()), 15, "why to print")
    assert f"job {jobid} is not due yet" in screen.replace("\n", " ") or "not due" in screen, screen
    assert json.loads(d.ask(f"why {jobid}")[4:])["reason"] == "not_due"


@SQLITE_ONLY
def test_top_exits_cleanly_on_ctrl_c(make_daemon, term: Tmux) -> None:
    d = make_daemon(jobs=JOBS)
    term.type(cli_line(d, "top"), '; echo "top-exit""=$?"')
    wait_for(lambda: "upq top" in term.screen(), 15, "top to start")
    term.keys("C-c")
    screen = wait_for(lambda: (lambda s: s if "\ntop-exit=" in s else None)(term.screen()), 15, "top to exit")
    assert "top-exit=0" in screen and "Traceback" not in screen, screen
