"""`why <jobid>` (issue 14): each reason a job is not running, told by a real daemon."""
from __future__ import annotations

import json

import pytest

from conftest import MYSQL_ONLY, SQLITE_ONLY, Daemon, wait_for


def why(d: Daemon, jobid: int) -> dict:
    answer = d.ask(f"why {jobid}")
    assert answer.startswith("ACK {"), answer
    return json.loads(answer[4:])


def test_a_delayed_job_is_not_due_yet_and_says_when(make_daemon) -> None:
    d = make_daemon(jobs={"record": {}})
    jobid = d.submit("record @delay:3600")
    w = why(d, jobid)
    assert w["reason"] == "not_due", w
    assert w["due"] and 3500 < w["seconds"] <= 3600, w
    assert "not due yet" in w["text"] and w["due"] in w["text"]


@SQLITE_ONLY
def test_a_failed_attempt_waits_for_its_retry_attempt_n_of_m(make_daemon) -> None:
    d = make_daemon(jobs={"flaky": {"retries": "2", "retry_delay": "3600"}})
    jobid = d.submit("flaky")
    w = wait_for(lambda: (lambda w: w if w["reason"] == "retry_wait" else None)(why(d, jobid)),
                 15, "the first attempt to fail")
    assert w["attempt"] == 1 and w["attempts"] == 3, w
    assert "attempt 1 of 3" in w["text"] and w["seconds"] > 3000, w


@SQLITE_ONLY
def test_every_worker_busy_names_the_running_jobs(make_daemon) -> None:
    d = make_daemon(jobs={"gate": {"concurrent": "1"}})
    try:
        first = d.submit("gate")
        wait_for(lambda: d.job(first)["state"] == "running", 15, "the first gate job to run")
        second = d.submit("gate")
        w = why(d, second)
        assert w["reason"] == "workers_busy", w
        assert [r["jobid"] for r in w["running"]] == [first] and w["jobids"] == [first], w
        assert w["state"] == "new"
        assert str(first) in w["text"]
        r = why(d, first)
        assert r["reason"] == "running" and r["node"] in r["text"], r
    finally:
        (d.dir / "gate.open").touch()
    d.wait_job(second)
    done = why(d, second)
    assert done["reason"] == "done" and "ended done" in done["text"], done


@SQLITE_ONLY
def test_a_type_held_back_by_a_timed_out_run(make_daemon) -> None:
    d = make_daemon(jobs={"hang": {"concurrent": "1", "timeout": "0.3"}})
    first = d.submit("hang seconds:30")
    assert d.wait_job(first)["state"] == "failed"
    second = d.submit("hang seconds:0")
    w = why(d, second)
    assert w["reason"] == "held_back" and w["abandoned"] == 1, w


@MYSQL_ONLY
def test_a_type_enabled_only_on_a_stopped_daemon_names_the_live_ones(make_daemon) -> None:
    fast = {"node_timeout": "2"}
    a = make_daemon(jobs={"record": {}}, subdir="a", server={"node_name": "node-a", **fast})
    b = make_daemon(jobs={"hello": {}}, subdir="b", server={"node_name": "node-b", **fast})
    jobid = a.submit("record @delay:3")     # stored while a runs `record`, due once a has stopped
    assert a.stop() == 0
    w = wait_for(lambda: (lambda w: w if w["reason"] != "not_due" else None)(why(b, jobid)),
                 15, "the job to be due")
    assert w["reason"] == "not_enabled", w
    assert w["live"] == [{"node": "node-b", "jobs": ["hello"]}], w
    assert w["enabled_on"] == ["node-a"], w
    assert "node-b runs hello" in w["text"] and "node-a" in w["text"], w["text"]


def test_why_of_an_unknown_job_and_bad_arguments(make_daemon) -> None:
    d = make_daemon(jobs={"record": {}})
    assert d.ask("why 999999").startswith("ERR no job 999999")
    assert d.ask("why").startswith("ERR usage: why <jobid>")
    assert d.ask("why abc").startswith("ERR ")
    assert d.ask("why 1 2").startswith("ERR usage")
