"""A job's life: failures, retries with backoff, timeouts, cancel/retry, sub-jobs, due times.

Every test runs a real daemon on SQLite and on a fresh MariaDB database (SPEC: "Writing
a job", "The socket protocol", "Durability and resumption"). Jobs from tests/jobs record
their attempt start times (wall clock) in [paths] records, so schedules are measured
where they happen: in the job.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Callable

from conftest import Daemon, wait_for
from helpers.client import log_has, newest_jobid

MakeDaemon = Callable[..., Daemon]
EARLY = 0.05          # a due time may be met this much early (clock and rounding)
LATE = 0.6            # ... and this much late (claim, poll, commit)


# -- helpers ----------------------------------------------------------------------------

def epoch(iso: str | None) -> float:
    """A job JSON time (ISO 8601 UTC, `Z` or `+00:00`) as a Unix timestamp."""
    assert iso, "expected a time, got null"
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def iso_utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ask_ok(daemon: Daemon, line: str) -> str:
    answer = daemon.ask(line)
    assert answer.startswith("ACK"), f"{line!r} -> {answer}"
    return answer


def ask_err(daemon: Daemon, line: str) -> str:
    answer = daemon.ask(line)
    assert answer.startswith("ERR ") and len(answer) > 4, f"{line!r} -> {answer}"
    return answer


def ended(daemon: Daemon, jobid: int, state: str, timeout: float = 15.0) -> dict:
    job = daemon.wait_job(jobid, timeout)
    assert job["state"] == state, job
    return job


def waiting_for_retry(daemon: Daemon, jobid: int, timeout: float = 5.0) -> dict:
    """The job once a failed attempt has put it back to `new` with a due time."""
    return wait_for(lambda: (j := daemon.job(jobid))["state"] == "new" and j["run_after"] and j,
                    timeout, f"job {jobid} to wait for its retry")


def assert_serving(daemon: Daemon) -> None:
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.stderr()[-2000:]
    assert daemon.ask("ping") == "ACK pong"


# -- failure kinds ----------------------------------------------------------------------

def test_run_that_raises_exits_or_returns_a_non_bool_fails_with_the_reason(make_daemon: MakeDaemon) -> None:
    d = make_daemon(jobs={"raiser": {"concurrent": "1"}, "exiter": {"concurrent": "1"},
                          "nonbool": {"concurrent": "1"}, "hello": {"concurrent": "1"}})
    raised = d.submit("raiser why:disk-on-fire")
    exited = d.submit("exiter code:7")
    nonbool = {kind: d.submit(f"nonbool kind:{kind}") for kind in ("str", "none", "int")}

    job = ended(d, raised, "failed")
    assert "ValueError" in job["msg"] and "raiser blew up: disk-on-fire" in job["msg"], job
    assert "Traceback" not in job["msg"], "the traceback belongs in the log, not in msg"
    log = wait_for(lambda: (text := d.log()) and "raiser blew up: disk-on-fire" in text and text, 5,
                   "the exception in the log")
    assert re.search(r"Traceback \(most recent call last\):(.|\n)*ValueError: raiser blew up: disk-on-fire",
                     log), log[-3000:]
    assert_serving(d)

    job = ended(d, exited, "failed")
    assert "exit" in job["msg"].lower() and "7" in job["msg"], job
    assert_serving(d)

    for kind, shown in (("str", "'yes'"), ("none", "None"), ("int", "1")):
        job = ended(d, nonbool[kind], "failed")
        assert job["msg"] and job["msg"] != "this msg must not count as success", job
        assert shown in job["msg"], job
    assert_serving(d)

    # the workers of each type survived: the same (concurrent = 1) types still take jobs
    again = [d.submit("raiser why:twice"), d.submit("exiter"), d.submit("nonbool")]
    for jobid in again:
        ended(d, jobid, "failed", timeout=10)
    ended(d, d.submit("hello name:still-here"), "done")
    assert_serving(d)


def test_run_raising_a_base_exception_fails_the_job_and_keeps_the_worker(make_daemon: MakeDaemon) -> None:
    """KeyboardInterrupt (a BaseException, not an Exception) raised inside run() is still
    "an exception in run()": the job fails and the type's only worker goes on."""
    d = make_daemon(jobs={"raiser": {"concurrent": "1"}})
    interrupted = d.submit("raiser kind:base why:ctrl-c")
    after = d.submit("raiser why:next")
    job = ended(d, interrupted, "failed", timeout=3)
    assert "KeyboardInterrupt" in job["msg"] and "ctrl-c" in job["msg"], job
    assert "raiser blew up: next" in ended(d, after, "failed", timeout=3)["msg"]
    assert_serving(d)


def test_timed_out_run_fails_at_the_deadline_and_its_late_result_is_discarded(make_daemon: MakeDaemon) -> None:
    """concurrent = 1: the one abandoned thread stops the type claiming until it ends (SPEC)."""
    d = make_daemon(jobs={"hang": {"concurrent": "1", "timeout": "0.4"}})
    t_submit = time.monotonic()
    slow = d.submit("hang seconds:2")
    queued = d.submit("hang seconds:0")

    job = ended(d, slow, "failed", timeout=10)
    t_failed = time.monotonic()
    assert "timeout" in job["msg"].lower() and "woke up" not in job["msg"], job
    took = epoch(job["finished"]) - epoch(job["started"])
    assert 0.4 - EARLY <= took <= 0.4 + LATE, f"failed {took:.3f}s after it started, timeout is 0.4s"
    assert t_failed - t_submit < 1.6, "the failure waited for the thread instead of the deadline"
    assert_serving(d)

    # the abandoned thread still runs: the type's only slot is not reused until it ends (logged)
    assert d.job(queued)["state"] == "new"
    wait_for(log_has(d, r"hang.*(still alive|not start|stop\w* claim)"), 5,
             "a log line saying the type stops claiming")
    after = ended(d, queued, "done", timeout=10)
    assert epoch(after["started"]) >= epoch(job["started"]) + 2.0 - EARLY, (job, after)

    # the late True / "woke up" of the abandoned run was thrown away
    final = d.job(slow)
    assert final["state"] == "failed" and final["msg"] == job["msg"] and final["result"] is None, final
    assert final["attempts"] == 1, final
    assert_serving(d)


def test_timed_out_run_leaves_the_other_slots_working_and_its_retry_waits_for_the_thread(
        make_daemon: MakeDaemon) -> None:
    """concurrent = 2, one abandoned thread: the other slot keeps taking jobs."""
    d = make_daemon(jobs={"slowpoke": {"concurrent": "2", "timeout": "0.4", "retries": "1",
                                       "retry_delay": "0.1"}})
    slow = d.submit("slowpoke seconds:2")
    first = waiting_for_retry(d, slow)          # attempt 1 timed out, retry due in 0.1 s
    assert "timeout" in first["msg"].lower(), first
    t1 = d.attempt_times("slowstart", slow)[1]

    quick = d.submit("slowpoke seconds:0")
    done = ended(d, quick, "done", timeout=5)
    assert d.attempt_times("slowstart", quick)[1] < t1 + 1.5, "the free slot waited for the abandoned thread"
    assert done["result"] == {"late": True}

    # the late outcome of attempt 1 never lands, and its retry only starts once its thread ended
    wait_for(lambda: 1 in d.attempt_times("slowend", slow), 5, "the abandoned run to end")
    row = d.job(slow)
    assert row["state"] != "done" and row["result"] is None and "woke up" not in row["msg"], row
    wait_for(lambda: 2 in d.attempt_times("slowstart", slow), 5, "the retry of the timed-out job")
    assert d.attempt_times("slowstart", slow)[2] >= d.attempt_times("slowend", slow)[1] - EARLY, \
        "the retry ran while the timed-out run's thread was still alive"
    final = ended(d, slow, "failed", timeout=5)
    assert final["attempts"] == 2 and "timeout" in final["msg"].lower(), final
    assert_serving(d)


# -- retries ------------------------------------------------------------------------------

def test_failed_attempts_are_retried_on_the_backoff_schedule(make_daemon: MakeDaemon) -> None:
    d = make_daemon(jobs={"flaky": {"concurrent": "1", "retries": "2", "retry_delay": "0.5"}})
    always = d.submit("flaky")
    wait_for(lambda: d.attempt_times("flaky", always).get(1), 5, "attempt 1")

    # waiting for the retry: `new`, due later, the last error kept
    pending = waiting_for_retry(d, always)
    assert pending["msg"] == "flaky failure on attempt 1" and pending["attempts"] == 1, pending
    assert epoch(pending["run_after"]) >= d.attempt_times("flaky", always)[1] + 0.5 - EARLY, pending

    # the backoff holds no worker: with concurrent = 1 another job runs meanwhile
    other = d.submit("flaky succeed_on:1")
    assert ended(d, other, "done", timeout=5)["attempts"] == 1
    flaky = d.submit("flaky succeed_on:2")

    job = ended(d, always, "failed", timeout=10)
    assert job["attempts"] == 3 and job["msg"] == "flaky failure on attempt 3", job
    t = d.attempt_times("flaky", always)
    assert sorted(t) == [1, 2, 3], t
    assert 0.5 - EARLY <= t[2] - t[1] <= 0.5 + LATE, f"first retry after {t[2] - t[1]:.3f}s, want 0.5s"
    assert 1.0 - EARLY <= t[3] - t[2] <= 1.0 + LATE, f"second retry after {t[3] - t[2]:.3f}s, want 1.0s"
    assert d.attempt_times("flaky", other)[1] < t[2], "the other job waited for the backoff"

    job = ended(d, flaky, "done", timeout=10)
    assert job["attempts"] == 2 and job["msg"] == "succeeded on attempt 2" and job["result"] == {"attempt": 2}, job
    assert job["run_after"] is None or epoch(job["run_after"]) <= epoch(job["started"]) + EARLY, job


def test_retry_that_falls_due_while_the_daemon_is_down_runs_after_restart(make_daemon: MakeDaemon) -> None:
    # 2 s: room for the daemon to stop (SIGTERM, exit 0) before the retries fall due
    d = make_daemon(jobs={"flaky": {"concurrent": "2", "retries": "1", "retry_delay": "2.0"}})
    heals = d.submit("flaky succeed_on:2")
    never = d.submit("flaky")
    dues = [epoch(waiting_for_retry(d, jobid)["run_after"]) for jobid in (heals, never)]
    assert d.stop() == 0
    assert time.time() < min(dues), "the daemon took longer to stop than the retry delay"
    time.sleep(max(0.0, max(dues) - time.time()) + 0.3)   # let the retries fall due while it is down
    t_launch = time.time()
    d.start()
    t_up = time.time()

    job = ended(d, heals, "done", timeout=10)
    assert job["attempts"] == 2 and job["msg"] == "succeeded on attempt 2", job
    job = ended(d, never, "failed", timeout=10)
    assert job["attempts"] == 2 and job["msg"] == "flaky failure on attempt 2", job
    for jobid in (heals, never):
        t = d.attempt_times("flaky", jobid)
        assert sorted(t) == [1, 2], t
        assert t_launch <= t[2], "attempt 2 must run after the restart"
        assert t[2] - t_up < 3.0, f"attempt 2 ran {t[2] - t_up:.2f}s after the restarted daemon answered"
    assert_serving(d)


def test_job_asking_for_a_retry_does_not_use_up_the_retries_budget(make_daemon: MakeDaemon) -> None:
    d = make_daemon(jobs={"selfretry": {"concurrent": "1", "retries": "1", "retry_delay": "0.2"}})
    busy = d.submit("selfretry busy:2 delay:0.3")
    pending = waiting_for_retry(d, busy)
    assert pending["msg"] == "busy on attempt 1", pending

    job = ended(d, busy, "done", timeout=10)
    assert job["attempts"] == 3 and job["msg"] == "done on attempt 3", job
    t = d.attempt_times("selfretry", busy)
    assert 0.3 - EARLY <= t[2] - t[1] <= 0.3 + LATE and 0.3 - EARLY <= t[3] - t[2] <= 0.3 + LATE, t

    # two asked-for retries, then a real failure still gets the full budget (1 retry after 0.2 s)
    failing = d.submit("selfretry busy:2 delay:0.3 fail")
    job = ended(d, failing, "failed", timeout=10)
    assert job["attempts"] == 4 and job["msg"] == "real failure on attempt 4", job
    t = d.attempt_times("selfretry", failing)
    assert sorted(t) == [1, 2, 3, 4], t
    assert 0.2 - EARLY <= t[4] - t[3] <= 0.2 + LATE, \
        f"first real retry after {t[4] - t[3]:.3f}s; retry_delay is 0.2s (the budget was untouched)"


# -- cancel and retry commands ---------------------------------------------------------------

def test_cancel_queued_and_running_jobs(make_daemon: MakeDaemon) -> None:
    d = make_daemon(jobs={"coop": {"concurrent": "1"}, "record": {"concurrent": "2"}})
    busy = d.submit("coop")
    wait_for(lambda: d.attempt_times("coop", busy), 5, "the coop job to start")
    queued = d.submit("coop max:0")          # waits behind `busy` (concurrent = 1)
    delayed = d.submit("record @delay:60")

    for jobid in (queued, delayed):
        answer = ask_ok(d, f"cancel {jobid}")
        assert json.loads(answer[4:])["state"] == "cancelled", answer
        job = d.job(jobid)
        assert job["state"] == "cancelled" and job["attempts"] == 0 and job["started"] is None, job
        wait_answer = d.ask(f"wait {jobid} timeout:5")
        assert wait_answer.startswith("ERR {") and json.loads(wait_answer[4:])["state"] == "cancelled"

    # a running job is told through self.cancelled; the answer does not wait for it
    t0 = time.monotonic()
    ask_ok(d, f"cancel {busy}")
    assert time.monotonic() - t0 < 1.0
    job = ended(d, busy, "cancelled", timeout=5)
    assert job["attempts"] == 1 and d.attempt_times("coopsaw", busy), job

    # a running job that ignores the flag still ends cancelled, not done
    stubborn = d.submit("record sleep:0.5")
    wait_for(lambda: any(r[:2] == ["start", str(stubborn)] for r in d.read_records()), 5, "record to start")
    ask_ok(d, f"cancel {stubborn}")
    ended(d, stubborn, "cancelled", timeout=5)

    # the freed slot takes the next job, and the cancelled ones never ran
    ended(d, d.submit("coop max:0"), "done", timeout=5)
    assert not d.attempt_times("coop", queued)
    assert not any(r[1] == str(delayed) for r in d.read_records())

    # ended or unknown jobs: ERR
    done = d.submit("record")
    ended(d, done, "done")
    for jobid in (done, busy, queued):
        ask_err(d, f"cancel {jobid}")
    assert d.job(done)["state"] == "done"
    ask_err(d, "cancel 999999")
    assert_serving(d)


def test_retry_command_requeues_failed_and_cancelled_jobs_only(make_daemon: MakeDaemon) -> None:
    d = make_daemon(jobs={"flaky": {"concurrent": "1", "retries": "1", "retry_delay": "0.1"},
                          "record": {"concurrent": "1"}})
    heals = d.submit("flaky succeed_on:3")
    never = d.submit("flaky")
    delayed = d.submit("record @delay:60")

    ask_err(d, f"retry {delayed}")                   # new: nothing to retry
    assert d.job(delayed)["state"] == "new"
    for jobid in (heals, never):
        assert ended(d, jobid, "failed")["attempts"] == 2

    # same jobid, attempts keep counting, a fresh retries budget
    answer = ask_ok(d, f"retry {heals}")
    row = json.loads(answer[4:])
    assert row["jobid"] == heals and row["state"] in ("new", "running"), row
    job = ended(d, heals, "done")
    assert job["jobid"] == heals and job["attempts"] == 3 and job["msg"] == "succeeded on attempt 3", job
    ask_ok(d, f"retry {never}")
    job = ended(d, never, "failed")
    assert job["attempts"] == 4 and sorted(d.attempt_times("flaky", never)) == [1, 2, 3, 4], job

    # a cancelled job runs when retried (at once: the old due time is gone)
    ask_ok(d, f"cancel {delayed}")
    ask_ok(d, f"retry {delayed}")
    job = ended(d, delayed, "done", timeout=5)
    assert job["attempts"] == 1, job

    for jobid in (heals, delayed):                   # done: ERR, and it does not run again
        ask_err(d, f"retry {jobid}")
        assert d.job(jobid)["state"] == "done"
    ask_err(d, "retry 999999")
    assert_serving(d)


# -- sub-jobs ---------------------------------------------------------------------------------

def test_sub_job_of_another_type_returns_its_result_and_shows_in_status(make_daemon: MakeDaemon) -> None:
    d = make_daemon(jobs={"parent": {"concurrent": "1"}, "hello": {"concurrent": "1", "greeting": "Hi"}})
    parent = d.submit("parent child:hello child.name:kid wait:8")
    job = ended(d, parent, "done", timeout=10)
    child = job["result"]["child"]
    assert job["result"]["child_result"] == {"greeted": "kid"} and job["result"]["child_msg"] == "Hi kid", job

    status = d.job(parent)
    assert [c["jobid"] for c in status["children"]] == [child], status
    assert status["children"][0]["jobname"] == "hello", status
    row = d.job(child)
    assert row["parent"] == parent and row["state"] == "done" and row["jobname"] == "hello", row


def test_sub_jobs_of_the_same_concurrent_1_type_do_not_deadlock(make_daemon: MakeDaemon) -> None:
    d = make_daemon(jobs={"parent": {"concurrent": "1"}, "hello": {"concurrent": "1", "greeting": "Hi"}})
    # parent -> parent -> hello, all parents on the one slot of type `parent`
    t0 = time.monotonic()
    one = d.submit("parent child:parent child.child:hello child.child.name:a wait:8 child.wait:8")
    job = ended(d, one, "done", timeout=15)
    assert time.monotonic() - t0 < 5.0, "same-type sub-job took too long"
    assert job["result"]["child_result"]["child_result"] == {"greeted": "a"}, job

    # two levels of same-type nesting: parent -> parent -> parent -> hello
    t0 = time.monotonic()
    top = d.submit("parent child:parent child.child:parent child.child.child:hello child.child.child.name:deep "
                   "wait:8 child.wait:8 child.child.wait:8")
    job = ended(d, top, "done", timeout=15)
    assert time.monotonic() - t0 < 5.0, "nested same-type sub-jobs took too long"
    assert job["result"]["child_result"]["child_result"]["child_result"] == {"greeted": "deep"}, job

    # the tree: each level's status names its child, each child names its parent
    level, chain = top, []
    for _ in range(3):
        status = d.job(level)
        kids = [c["jobid"] for c in status["children"]]
        assert len(kids) == 1, status
        assert d.job(kids[0])["parent"] == level
        chain.append(kids[0])
        level = kids[0]
    assert d.job(chain[-1])["jobname"] == "hello" and d.job(chain[-1])["children"] == []
    assert_serving(d)



def test_concurrent_bounds_the_runs_that_are_not_waiting_on_a_child(make_daemon: MakeDaemon) -> None:
    """SPEC: "`concurrent` bounds the runs of a type that are not waiting on a child": a lent
    slot lets another run start, but two runs must not both be working once their children end."""
    d = make_daemon(jobs={"lender": {"concurrent": "1"}, "hello": {"concurrent": "2", "greeting": "Hi"}})
    jobids = [d.submit("lender work:0.5") for _ in range(3)]
    for jobid in jobids:
        ended(d, jobid, "done", timeout=15)
    busy = []
    for jobid in jobids:
        b, e = d.attempt_times("lendbusy", jobid)[1], d.attempt_times("lendend", jobid)[1]
        busy.append((b, e))
    busy.sort()
    overlaps = [(a, b) for a, b in zip(busy, busy[1:]) if b[0] < a[1] - 0.01]
    assert not overlaps, f"runs of a concurrent = 1 type worked at the same time: {overlaps}"


# -- due times ----------------------------------------------------------------------------------

def test_delayed_jobs_run_no_sooner_than_due_and_soon_after(make_daemon: MakeDaemon) -> None:
    d = make_daemon(jobs={"record": {"concurrent": "2"}})
    t0 = time.time()
    delayed = d.submit("record @delay:0.5")
    past = d.submit(f"record @at:{iso_utc(t0 - 3600)}")
    at = t0 + 0.8
    future = d.submit(f"record @at:{iso_utc(at)}")
    plain = d.submit("record delay:5")                # no @: an ordinary param

    ended(d, past, "done", timeout=5)
    assert d.attempt_times("start", past)[1] - t0 < 1.0, "a due time in the past must run at once"
    job = ended(d, plain, "done", timeout=5)
    assert job["params"] == {"delay": "5"} and job["run_after"] is None, job
    assert d.attempt_times("start", plain)[1] - t0 < 1.0

    time.sleep(max(0.0, t0 + 0.3 - time.time()))      # let time pass; not yet due
    row = d.job(delayed)
    assert row["state"] == "new" and row["run_after"] and not d.attempt_times("start", delayed), row
    assert epoch(row["run_after"]) >= t0 + 0.5 - EARLY, row
    assert row["params"] == {}, row

    ended(d, delayed, "done", timeout=5)
    ran = d.attempt_times("start", delayed)[1]
    assert 0.5 - EARLY <= ran - t0 <= 0.5 + LATE + 0.4, f"@delay:0.5 ran after {ran - t0:.3f}s"
    ended(d, future, "done", timeout=5)
    ran = d.attempt_times("start", future)[1]
    assert at - EARLY <= ran <= at + LATE + 0.4, f"@at ran {ran - at:+.3f}s from its time"


def test_bad_submission_options_are_refused_and_store_nothing(make_daemon: MakeDaemon) -> None:
    d = make_daemon(jobs={"record": {"concurrent": "1"}})
    before = newest_jobid(d)
    for line in ("record @delay:x", "record @delay:-1", "record @delay:", "record @delay",
                 "record @bogus:1", "record @at:yesterday", "record @at:2030-13-45T00:00:00Z",
                 "record @delay:1 @at:2030-01-01T00:00:00Z", "record @delay:1 @delay:2",
                 "record @delay:nan", "record @delay:inf"):
        answer = ask_err(d, line)
        assert "Traceback" not in answer, answer
    assert newest_jobid(d) == before
    assert not d.read_records()
    assert_serving(d)
