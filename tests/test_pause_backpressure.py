"""Pause and resume of a job type (stored, on every daemon, across restarts) and max_queued."""
from __future__ import annotations

import json
import threading

from conftest import MYSQL_ONLY, SQLITE_ONLY, wait_for
from helpers.client import stats

GATE_JOBS = {"record": {"concurrent": "2"}, "hello": {}, "gate": {"concurrent": "1"}}


def _state(d, jobid: int) -> str:
    return d.job(jobid)["state"]


def test_paused_type_accepts_but_runs_nothing_until_resumed(make_daemon):
    d = make_daemon(GATE_JOBS)
    assert d.ask("pause record") == "ACK"
    assert stats(d)["jobs"]["record"]["paused"] is True
    assert stats(d)["jobs"]["hello"]["paused"] is False
    ids = [d.submit("record") for _ in range(5)]
    hello = d.submit("hello name:x")
    assert d.wait_job(hello)["state"] == "done"          # other types run on
    # the record workers are idle and were woken by the submissions, yet nothing started
    assert d.wait_job(d.submit("hello name:again"))["state"] == "done"
    assert all(_state(d, i) == "new" for i in ids)
    assert d.starts() == {}
    why = json.loads(d.ask(f"why {ids[0]}").split(" ", 1)[1])
    assert why["reason"] == "paused" and "resume record" in why["text"], why
    assert d.ask("resume record") == "ACK"
    for i in ids:
        assert d.wait_job(i)["state"] == "done"
    assert stats(d)["jobs"]["record"]["paused"] is False


@SQLITE_ONLY
def test_running_jobs_finish_while_paused(make_daemon):
    d = make_daemon(GATE_JOBS)
    first = d.submit("gate")
    wait_for(lambda: _state(d, first) == "running", 15, "the gate job to run")
    second = d.submit("gate")
    assert d.ask("pause gate") == "ACK"
    (d.dir / "gate.open").write_text("")
    assert d.wait_job(first)["state"] == "done"
    assert d.wait_job(d.submit("hello name:x"))["state"] == "done"
    assert _state(d, second) == "new" and d.starts()[second] == []
    assert d.ask("resume gate") == "ACK"
    assert d.wait_job(second)["state"] == "done"


@SQLITE_ONLY
def test_pause_bad_names_get_err(daemon):
    assert daemon.ask("pause nosuchtype").startswith("ERR unknown job type")
    assert daemon.ask("resume nosuchtype").startswith("ERR unknown job type")
    assert daemon.ask("pause").startswith("ERR usage: pause")
    assert daemon.ask("pause ../x").startswith("ERR invalid")
    assert daemon.ask("pause a b").startswith("ERR usage")


def test_pause_survives_restart(make_daemon):
    d = make_daemon(GATE_JOBS)
    assert d.ask("pause record") == "ACK"
    d.restart()
    assert stats(d)["jobs"]["record"]["paused"] is True
    jobid = d.submit("record")
    assert d.wait_job(d.submit("hello name:x"))["state"] == "done"
    assert _state(d, jobid) == "new" and d.starts() == {}
    assert d.ask("resume record") == "ACK"
    assert d.wait_job(jobid)["state"] == "done"


@MYSQL_ONLY
def test_pause_on_one_daemon_holds_on_another(make_daemon):
    a = make_daemon(GATE_JOBS, subdir="a")
    b = make_daemon(GATE_JOBS, subdir="b")
    assert a.ask("pause record") == "ACK"
    # B learns it within a poll_interval (0.2 s here)
    wait_for(lambda: stats(b)["jobs"]["record"]["paused"] is True, 5, "B to see the pause")
    ids = [b.submit("record") for _ in range(4)]
    hello = b.submit("hello name:y")
    assert b.wait_job(hello)["state"] == "done"
    assert all(_state(b, i) == "new" for i in ids)
    assert a.starts() == {} and b.starts() == {}
    b.restart()                              # a restarted daemon reads the pause at start
    assert stats(b)["jobs"]["record"]["paused"] is True
    assert all(_state(b, i) == "new" for i in ids)
    assert b.ask("resume record") == "ACK"   # resumed on B, so A runs its share too
    for i in ids:
        assert a.wait_job(i)["state"] == "done"


def test_max_queued_is_exact_under_concurrent_clients(make_daemon):
    cap = 30
    d = make_daemon({"record": {"concurrent": "1", "max_queued": str(cap)}, "hello": {}})
    assert d.ask("pause record") == "ACK"          # nothing leaves the queue meanwhile
    answers: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with d.connect() as c:
            mine = [c.ask("record") for _ in range(15)]
        with lock:
            answers.extend(mine)
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    acks = [a for a in answers if a.startswith("ACK ")]
    errs = [a for a in answers if a.startswith("ERR ")]
    assert len(answers) == 120
    assert len(acks) == cap, answers
    assert set(errs) == {f"ERR queue full: {cap} record jobs queued"}
    assert stats(d)["jobs"]["record"]["queued"] == cap
    # delayed submissions count and are refused too; another type is not affected
    assert d.ask("record @delay:60") == f"ERR queue full: {cap} record jobs queued"
    assert d.ask("hello name:z").startswith("ACK ")
    assert d.ask("resume record") == "ACK"
    wait_for(lambda: stats(d)["jobs"]["record"]["done"] == cap, 30, "the queue to drain")
    assert d.ask("record").startswith("ACK ")


@SQLITE_ONLY
def test_paused_inline_type_queues_instead_of_running(make_daemon):
    d = make_daemon({"record": {"concurrent": "0"}, "hello": {}})
    assert d.ask("pause record") == "ACK"
    jobid = d.submit("record")
    assert d.wait_job(d.submit("hello name:x"))["state"] == "done"
    assert d.job(jobid)["state"] == "new" and d.starts() == {}
    assert d.ask("resume record") == "ACK"
    assert d.wait_job(jobid)["state"] == "done"
