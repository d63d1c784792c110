"""Poison jobs neither take the daemon down nor bloat the database (SPEC: writing a job).

The caps are upqdb's: a `msg` is cut to MAX_MSG_CHARS (ending in "..."); a
`result` whose JSON is over MAX_RESULT_CHARS, or that is not JSON at all, is
stored as {"error": "..."} instead (values JSON cannot hold, like sets or
datetimes, are stored as their str()). A job whose constructor raises is refused
at submission, or fails when a worker builds it. A job that leaks non-daemon
threads does not keep the daemon from stopping on SIGTERM.
"""
from __future__ import annotations

import json
import signal
import time

import pytest

from conftest import Daemon, wait_for
from helpers.client import newest_jobid
from upqschema import MAX_MSG_CHARS, MAX_RESULT_CHARS

DAEMON_JOBS = {"hugemsg": {}, "hugeresult": {}, "oddresult": {}, "initraiser": {}, "hello": {}}
SMALL_ANSWER = 8 * 1024 + MAX_MSG_CHARS * 4      # a status line of a capped job (msg may be UTF-8)


def status_line(d: Daemon, jobid: int) -> str:
    answer = d.ask(f"status {jobid}")
    assert answer.startswith("ACK {"), answer[:300]
    return answer


def ended(d: Daemon, line: str, state: str = "done") -> dict:
    jobid = d.submit(line)
    job = d.wait_job(jobid, timeout=60)
    assert job["state"] == state, (line, job["state"], job["msg"][:300])
    assert d.ask("ping") == "ACK pong"
    return job


def reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def strict_json(text: str) -> object:
    """Parse as standard JSON: NaN and Infinity are refused (jq, browsers, Go refuse them too)."""
    return json.loads(text, parse_constant=reject_constant)


def test_a_huge_msg_is_cut_to_the_cap(shared_daemon: Daemon) -> None:
    for line, state in (("hugemsg mb:10", "done"), ("hugemsg mb:10 fail:1", "failed")):
        job = ended(shared_daemon, line, state)
        assert len(job["msg"]) <= MAX_MSG_CHARS and job["msg"].endswith("..."), len(job["msg"])
        assert job["msg"].startswith("mmmm")
        assert len(status_line(shared_daemon, job["jobid"]).encode()) < SMALL_ANSWER


def test_a_huge_result_is_replaced_by_an_error_note(shared_daemon: Daemon) -> None:
    job = ended(shared_daemon, "hugeresult mb:50")
    assert set(job["result"]) == {"error"} and "too large" in job["result"]["error"], job["result"]
    assert str(MAX_RESULT_CHARS) in job["result"]["error"]
    assert len(status_line(shared_daemon, job["jobid"]).encode()) < SMALL_ANSWER
    # one just under the cap is kept whole
    kb = MAX_RESULT_CHARS // 1024 - 8
    job = ended(shared_daemon, f"hugeresult kb:{kb}")
    assert job["result"] == {"blob": "r" * (kb << 10)}


@pytest.mark.parametrize("kind, stored", [
    ("object", lambda r: r["o"].startswith("<object object at")),
    ("set", lambda r: r == {"s": "{1, 2, 3}"}),
    ("bytes", lambda r: r["b"].startswith("b'")),
    ("datetime", lambda r: r == {"t": "2030-01-02 03:04:05"}),
    ("circular", lambda r: set(r) == {"error"} and "not JSON" in r["error"]),
    ("tuplekey", lambda r: set(r) == {"error"} and "not JSON" in r["error"]),
])
def test_a_result_json_cannot_hold_is_stored_as_text_or_an_error_note(shared_daemon: Daemon, kind: str,
                                                                      stored) -> None:
    job = ended(shared_daemon, f"oddresult kind:{kind}")
    assert stored(job["result"]), job["result"]
    strict_json(status_line(shared_daemon, job["jobid"])[4:])


def test_nan_in_a_result_does_not_make_answers_invalid_json(shared_daemon: Daemon) -> None:
    """float('nan') / inf serialise as NaN / Infinity in Python, which is not JSON: one such job
    would make every `status`, `wait` and `list` answer that includes it unparsable by
    standard JSON parsers."""
    job = ended(shared_daemon, "oddresult kind:nan")
    strict_json(status_line(shared_daemon, job["jobid"])[4:])
    strict_json(shared_daemon.ask("list limit:5")[4:])


def test_a_constructor_that_raises_is_refused_or_fails_the_job(shared_daemon: Daemon) -> None:
    before = newest_jobid(shared_daemon)
    answer = shared_daemon.ask("initraiser")
    assert answer.startswith("ERR ") and "RuntimeError" in answer and "poison" in answer, answer
    assert newest_jobid(shared_daemon) == before, "a refused job was stored"
    # accepted at submission, then a worker cannot build it: the job fails, the worker lives on
    job = ended(shared_daemon, "initraiser where:worker", "failed")
    assert "RuntimeError" in job["msg"] and "poison" in job["msg"], job["msg"]
    assert ended(shared_daemon, "hello name:after")["msg"]


def test_leaked_non_daemon_threads_do_not_stop_sigterm(make_daemon) -> None:
    grace = 2
    d = make_daemon(jobs={"leaker": {}, "hello": {}}, server={"shutdown_grace": str(grace)})
    assert d.proc is not None
    threads_before = _threads(d.proc.pid)
    job = ended(d, "leaker threads:50")
    assert job["msg"] == "leaked 50 threads"
    assert _threads(d.proc.pid) >= threads_before + 50 - 3     # a start-up thread may have ended
    assert ended(d, "hello name:still-here")["state"] == "done"
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    try:
        code = d.proc.wait(timeout=grace + 10)
    except Exception:
        d.proc.kill()
        d.proc.wait(10)
        pytest.fail(f"upq did not exit within {grace + 10}s of SIGTERM with 50 leaked non-daemon "
                    f"threads (shutdown_grace = {grace}); log tail:\n{d.log()[-1500:]}")
    assert code == 0, code
    assert time.monotonic() - t0 < grace + 10
    # the leaker was done: it never runs again
    d.start()
    assert d.job(job["jobid"])["attempts"] == 1
    assert ended(d, "hello name:again")["state"] == "done"
    wait_for(lambda: d.job(job["jobid"])["attempts"] == 1, 1, "the done leaker to stay done")


def _threads(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")
