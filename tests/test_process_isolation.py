"""isolation = process (issue 13): runs in pre-started, reused worker processes; every way a
worker can die, a hard timeout, the memory and CPU limits, cancel of a job that ignores it,
programs a job starts, and kill -9 of the daemon end as clear outcomes, with no process left.

Real daemons over the real socket; jobs from tests/jobs/crasher.py record the pid they ran in.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Callable

import pytest

from conftest import SQLITE_ONLY, Daemon, wait_for
from helpers.procs import alive, crasher_runs, spawned_children

MakeDaemon = Callable[..., Daemon]
PROC = {"isolation": "process", "concurrent": "2", "kill_grace": "1"}


def crasher(make_daemon: MakeDaemon, **opts: str) -> Daemon:
    return make_daemon({"crasher": {**PROC, **opts}, "parent": {}, "hello": {}})


def run(d: Daemon, how: str, timeout: float = 30.0, **params: str) -> dict:
    extra = "".join(f" {k}:{v}" for k, v in params.items())
    return d.wait_job(d.submit(f"crasher how:{how}{extra}"), timeout)


def started(d: Daemon, jobid: int, n: int = 1) -> list[dict]:
    return wait_for(lambda: len(r := crasher_runs(d.read_records(), jobid)) >= n and r, 20,
                    f"job {jobid} to start {n} time(s)")


@SQLITE_ONLY
def test_outcomes_come_back_as_with_threads_and_workers_are_reused(make_daemon: MakeDaemon) -> None:
    d = crasher(make_daemon)
    first = run(d, "ok")
    assert first["state"] == "done" and first["result"]["pid"] != d.proc.pid, first
    assert first["msg"] == f"ran in {first['result']['pid']} uid 0"
    again = run(d, "retry")         # attempt 1 asks self.retry(delay=0), attempt 2 is done
    assert again["state"] == "done" and again["result"]["attempt"] == 2, again
    pids = {r["pid"] for r in crasher_runs(d.read_records())}
    assert len(pids) <= 2, f"4 runs at concurrent = 2 used {len(pids)} worker processes"


@SQLITE_ONLY
def test_max_runs_per_process_replaces_the_worker(make_daemon: MakeDaemon) -> None:
    d = crasher(make_daemon, concurrent="1", max_runs_per_process="2")
    for _ in range(4):
        assert run(d, "ok")["state"] == "done"
    pids = [r["pid"] for r in crasher_runs(d.read_records())]
    assert pids[0] == pids[1] != pids[2] == pids[3], pids


@SQLITE_ONLY
@pytest.mark.parametrize(("how", "msg"), [
    ("segv", "worker process died: signal 11 (SIGSEGV)"),
    ("exit", "worker process died: exit code 3"),
])
def test_a_run_that_kills_its_process_fails_and_the_daemon_carries_on(
        make_daemon: MakeDaemon, how: str, msg: str) -> None:
    d = crasher(make_daemon)
    job = run(d, how)
    assert job["state"] == "failed" and job["msg"] == msg, job
    assert d.answers_ping()
    assert run(d, "ok")["state"] == "done"


@SQLITE_ONLY
def test_kill_9_of_a_worker_fails_the_run_and_a_retry_runs_in_a_fresh_worker(make_daemon: MakeDaemon) -> None:
    d = crasher(make_daemon, retries="1", retry_delay="0")
    jobid = d.submit("crasher how:sleep seconds:300")
    pid = started(d, jobid)[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(crasher_runs(d.read_records(), jobid)) == 2, 10, "the retry to start")
    d.ask(f"cancel {jobid}")
    job = d.wait_job(jobid, 15)
    assert job["state"] == "cancelled", job
    assert "worker process died: signal 9 (SIGKILL)" in d.log()
    assert crasher_runs(d.read_records(), jobid)[1]["pid"] != pid


@SQLITE_ONLY
def test_memory_limit(make_daemon: MakeDaemon) -> None:
    d = crasher(make_daemon, max_memory="200M")
    job = run(d, "alloc")
    assert job["state"] == "failed" and job["msg"].startswith("memory limit 200M exceeded"), job
    assert run(d, "ok")["state"] == "done"


@SQLITE_ONLY
def test_cpu_limit(make_daemon: MakeDaemon) -> None:
    d = crasher(make_daemon, max_cpu="1")
    job = run(d, "spin", timeout=30)
    assert job["state"] == "failed" and job["msg"].startswith("cpu limit 1 s exceeded"), job


@SQLITE_ONLY
def test_hard_timeout_frees_the_slot_and_the_retry_starts_at_once(make_daemon: MakeDaemon) -> None:
    d = crasher(make_daemon, concurrent="1", timeout="1", retries="1", retry_delay="0")
    jobid = d.submit("crasher how:sleep seconds:300")
    runs = started(d, jobid, 2)
    # the deadline is 1 s after the first start; the retry must begin within kill_grace + 2 s of it
    assert runs[1]["time"] - (runs[0]["time"] + 1.0) < 1 + 2, runs
    assert runs[1]["pid"] != runs[0]["pid"]
    wait_for(lambda: not alive(runs[0]["pid"]), 5, "the timed-out worker to be stopped")
    job = d.wait_job(jobid, 15)
    assert job["state"] == "failed" and job["msg"].startswith("timeout: run() took longer than 1 s"), job


@SQLITE_ONLY
def test_cancel_of_a_job_that_ignores_it_stops_its_process(make_daemon: MakeDaemon) -> None:
    d = crasher(make_daemon)
    jobid = d.submit("crasher how:ignorecancel")
    pid = started(d, jobid)[0]["pid"]
    t0 = time.monotonic()
    assert d.ask(f"cancel {jobid}").startswith("ACK")
    job = d.wait_job(jobid, 15)
    assert job["state"] == "cancelled", job
    assert time.monotonic() - t0 < 1 + 3, "cancel took longer than kill_grace + 3 s"
    wait_for(lambda: not alive(pid), 5, "the worker that ignores SIGTERM to be killed")


@SQLITE_ONLY
def test_a_program_the_job_started_that_ignores_sigterm_is_not_left_behind(make_daemon: MakeDaemon) -> None:
    d = crasher(make_daemon, timeout="4")     # time for the job to start its child on a busy machine
    jobid = d.submit("crasher how:spawn")
    child = wait_for(lambda: spawned_children(d.read_records(), jobid), 20, "the job's child")[0]
    assert d.wait_job(jobid, 15)["state"] == "failed"
    wait_for(lambda: not alive(child), 1 + 5, f"child {child} (ignores SIGTERM) to be killed")


def test_kill_9_of_the_daemon_leaves_no_worker_and_the_jobs_run_again(make_daemon: MakeDaemon) -> None:
    d = crasher(make_daemon)
    jobs = [d.submit("crasher how:spawn"), d.submit("crasher how:sleep seconds:300")]
    pids = [started(d, j)[0]["pid"] for j in jobs]
    child = wait_for(lambda: spawned_children(d.read_records(), jobs[0]), 20, "the job's child")[0]
    d.kill(signal.SIGKILL)
    for pid in (*pids, child):
        wait_for(lambda: not alive(pid), 10, f"process {pid} to exit after the daemon's kill -9")
    d.write_config({"crasher": {**PROC, "timeout": "1"}})
    d.start()
    for j in jobs:
        wait_for(lambda: len(crasher_runs(d.read_records(), j)) >= 2, 30, f"job {j} to run again")


@SQLITE_ONLY
def test_sigterm_lets_running_workers_finish_within_shutdown_grace(make_daemon: MakeDaemon) -> None:
    d = crasher(make_daemon)
    jobid = d.submit("crasher how:sleep seconds:1")
    started(d, jobid)
    assert d.stop() == 0
    d.start()
    job = d.job(jobid)
    assert job["state"] == "done" and len(crasher_runs(d.read_records(), jobid)) == 1, job


@SQLITE_ONLY
def test_sigterm_stops_workers_still_busy_after_shutdown_grace(make_daemon: MakeDaemon) -> None:
    d = make_daemon({"crasher": PROC}, server={"shutdown_grace": "1"})
    jobid = d.submit("crasher how:ignorecancel")
    pid = started(d, jobid)[0]["pid"]
    assert d.stop() == 0
    wait_for(lambda: not alive(pid), 10, "the busy worker to be stopped")


@pytest.mark.parametrize(("opts", "problem"), [
    ({"max_memory": "1G"}, "max_memory: needs isolation = process"),
    ({"isolation": "process", "max_memory": "lots"}, "max_memory: expected a size"),
    ({"isolation": "fork"}, "isolation: expected one of thread | process"),
])
@SQLITE_ONLY
def test_bad_isolation_settings_are_refused_at_start(make_daemon: MakeDaemon, opts: dict, problem: str) -> None:
    d = make_daemon({"crasher": opts}, start=False)
    d.start(expect_ok=False)
    assert d.proc.wait(timeout=30) != 0
    assert problem in d.stderr(), d.stderr()


@SQLITE_ONLY
def test_sub_jobs_from_a_process_job_at_concurrent_1(make_daemon: MakeDaemon) -> None:
    d = make_daemon({"parentp": {"isolation": "process", "concurrent": "1"}, "hello": {}}, start=False)
    src = (d.dir / "jobs" / "parent.py").read_text()
    (d.dir / "jobs" / "parentp.py").write_text(src.replace("class Parent(", "class Parentp("))
    d.start()
    # a parentp whose child is a parentp (same type, one slot: the waiting parent must lend it)
    job = d.wait_job(d.submit("parentp child:parentp child.child:hello child.child.name:you"), 40)
    assert job["state"] == "done", job
    inner = d.job(job["result"]["child"])
    assert inner["state"] == "done" and inner["result"]["child_msg"] == job["result"]["child_result"]["child_msg"]
    assert "you" in inner["result"]["child_msg"], inner
    refused = d.wait_job(d.submit("parentp child:nosuchjob"), 20)
    assert refused["state"] == "failed" and "nosuchjob" in refused["msg"], refused


WHOAMI = '''import os
from upqjob import UpqJob


class Whoami(UpqJob):
    def run(self):
        self.result = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
        return True
'''


@SQLITE_ONLY
def test_user_runs_the_workers_as_that_user(make_daemon: MakeDaemon) -> None:
    import pwd
    import subprocess
    import sys
    if os.geteuid() != 0:
        pytest.skip("needs a daemon running as root")
    nobody = pwd.getpwnam("nobody")
    d = make_daemon({"whoami": {"isolation": "process", "user": "nobody"}}, start=False)
    (d.dir / "jobs" / "whoami.py").write_text(WHOAMI)
    os.chmod(d.dir, 0o755)
    can_run = subprocess.run(["su", "-s", "/bin/sh", "nobody", "-c", f"{sys.executable} -c pass"],
                             capture_output=True).returncode == 0
    d.start()
    job = d.wait_job(d.submit("whoami"), 30)
    if can_run:
        assert job["state"] == "done", job
        assert job["result"] == {"uid": nobody.pw_uid, "gid": nobody.pw_gid, "groups": []}, job
    else:       # this machine's interpreter is out of nobody's reach: a clear failure, not a hang
        assert job["state"] == "failed" and job["msg"].startswith("worker process could not start"), job


VERSIONED = '''import os
import time

from upqjob import UpqJob


class Ver(UpqJob):
    def run(self):
        time.sleep(float(self.jobdata.get("seconds", "0")))
        self.result = {{"pid": os.getpid(), "version": {version}}}
        return True
'''


@SQLITE_ONLY
def test_reload_replaces_idle_workers_now_and_busy_ones_after_their_run(make_daemon: MakeDaemon) -> None:
    d = make_daemon({"ver": {"isolation": "process", "concurrent": "2"}}, start=False)
    code = d.dir / "jobs" / "ver.py"
    code.write_text(VERSIONED.format(version=1))
    d.start()
    first = d.wait_job(d.submit("ver"), 20)["result"]
    busy = d.submit("ver seconds:3")
    wait_for(lambda: d.job(busy)["state"] == "running", 10, "the long run to start")
    code.write_text(VERSIONED.format(version=2))
    assert d.ask("reload").startswith("ACK"), d.log()[-2000:]
    after = d.wait_job(d.submit("ver"), 20)["result"]
    assert after["version"] == 2 and after["pid"] != first["pid"], (first, after)
    old = d.wait_job(busy, 20)
    assert old["state"] == "done" and old["result"]["version"] == 1, old
    wait_for(lambda: not alive(old["result"]["pid"]), 10, "the busy worker to be replaced after its run")
    assert not alive(first["pid"])
