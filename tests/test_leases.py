"""Leases: a daemon alone on its database reserves fast jobs ahead (dbqueue.py).

A leased job is shown as `new`; a cancel must still stop it from ever running, a
crash must not lose it or let `attempts` undercount its runs, and a second
daemon joining the database must end the leasing. The record job writes a line
when run() starts, so "never ran" is checked against what really happened.
"""
from __future__ import annotations

import json
import signal

import pytest

from conftest import Daemon, wait_for
from helpers.client import pipeline, submit_many, wait_all
from helpers.records import attempts_by_job

LEASING = "alone on the database: leasing jobs ahead"
SHARED = "other daemon(s) on the database: claiming one job per idle worker"


def cancel_many(d: Daemon, jobids: list[int]) -> dict[int, str]:
    return dict(zip(jobids, pipeline(d, [f"cancel {j}" for j in jobids])))


def check_cancels(answers: dict[int, str], jobs: dict[int, dict], runs: dict[int, list[int]]) -> int:
    """Each cancel answer against what happened; returns how many cancelled a job still queued."""
    queued_cancels = 0
    for jobid, answer in answers.items():
        if answer.startswith("ERR "):
            assert "has already ended (done)" in answer, answer
            assert jobs[jobid]["state"] == "done", (jobid, answer, jobs[jobid])
            continue
        assert answer.startswith("ACK {"), answer
        shown = json.loads(answer[4:])
        assert jobs[jobid]["state"] == "cancelled", (jobid, answer, jobs[jobid])
        if shown["state"] == "cancelled":       # it was queued (or leased): it must never run
            queued_cancels += 1
            assert not runs.get(jobid), f"job {jobid} was cancelled before it ran, yet ran: {runs[jobid]}"
            assert jobs[jobid]["attempts"] == 0 and jobs[jobid]["started"] is None, jobs[jobid]
        else:                                   # running, or being started: flagged
            assert shown["state"] in ("running", "new"), answer
    return queued_cancels


@pytest.mark.timeout(120)
def test_cancelled_jobs_never_run_while_leased_jobs_drain(make_daemon) -> None:
    """Cancels race the workers through a backlog of fast jobs, most of which are leased."""
    d = make_daemon(jobs={"record": {"concurrent": "4"}})
    warm = submit_many(d, ["record"] * 40)      # fast runs: the daemon starts leasing ahead
    wait_all(d, warm, timeout=60)
    jobids = submit_many(d, ["record sleep:0.01"] * 600)
    # oldest first, from just ahead of the workers: the cancels race them through the leases
    answers = cancel_many(d, jobids[60::2])
    jobs = wait_all(d, jobids, timeout=60)
    runs = d.starts()
    queued = check_cancels(answers, jobs, runs)
    assert queued >= 5, f"only {queued} cancels found their job queued: the race was not exercised"
    for jobid in set(jobids) - set(answers):
        assert jobs[jobid]["state"] == "done" and runs[jobid] == [1] and jobs[jobid]["attempts"] == 1, \
            (jobid, jobs[jobid], runs.get(jobid))
    assert LEASING in d.log()


@pytest.mark.timeout(120)
def test_kill_minus_nine_with_leases_loses_nothing_and_attempts_never_undercount(make_daemon) -> None:
    d = make_daemon(jobs={"record": {"concurrent": "2"}})
    wait_all(d, submit_many(d, ["record"] * 40), timeout=60)
    jobids = submit_many(d, ["record sleep:0.002"] * 400)
    wait_for(lambda: len(d.starts()) >= 80, 30, "some of the backlog to run")
    d.kill(signal.SIGKILL)
    d.start()
    jobs = wait_all(d, jobids, timeout=60)
    runs = d.starts()
    for jobid in jobids:
        job, attempts = jobs[jobid], runs.get(jobid, [])
        assert job["state"] == "done", job
        # a run started with attempt a; `attempts` counts at least the runs that started
        assert attempts == sorted(set(attempts)) and attempts[-1] == job["attempts"] == job["result"]["attempt"], \
            (jobid, attempts, job)


@pytest.mark.timeout(120)
def test_a_second_daemon_ends_leasing_and_its_cancels_stop_leased_jobs(make_daemon) -> None:
    a = make_daemon(jobs={"record": {"concurrent": "4"}}, subdir="a", server={"node_timeout": "4"})
    wait_all(a, submit_many(a, ["record"] * 40), timeout=60)
    assert LEASING in a.log()
    jobids = submit_many(a, ["record sleep:0.005"] * 400)
    b = make_daemon(jobs={"record": {"concurrent": "4"}}, subdir="b", server={"node_timeout": "4"}, start=False)
    b.db_url = a.db_url.replace("./upq.db", str(a.dir / "upq.db"))     # SQLite: the same file
    b.write_config({"record": {"concurrent": "4"}})
    b.start()
    answers = cancel_many(b, jobids[::-1][::2])
    jobs = wait_all(a, jobids, timeout=60)
    runs = attempts_by_job(a.read_records() + b.read_records())
    check_cancels(answers, jobs, runs)
    wait_for(lambda: SHARED in a.log(), 10, "the first daemon to see the second")
    for jobid in set(jobids) - set(answers):
        assert jobs[jobid]["state"] == "done" and len(runs[jobid]) == 1, (jobid, jobs[jobid], runs.get(jobid))
    # b stops: a is alone again and leases once more
    b.stop()
    wait_for(lambda: a.log().count(LEASING) >= 2, 15, "the first daemon to lease again")
