"""The claim queue, outcome fencing and the queue manager's slots, in-process on a temp SQLite
file: no daemon, no socket (dbqueue.py, upqdb.py, upqruns.py, upqqueuemngr.py, upqslots.py)."""
from __future__ import annotations

import threading

import pytest

from conftest import InProcess, wait_for
from dbqueue import DBQueue
from upqerrors import QueueStopped
from upqslots import Run, Slots
from upqstates import Outcome, OutcomeKind, RetryPolicy, State
from upqjob import UpqJob

NODE = "n1"
DONE = Outcome(OutcomeKind.DONE, "ok")


def queue(core: InProcess, node: str = NODE, slots: int = 2) -> DBQueue:
    return DBQueue(core.db, "hello", node, core.log, poll_interval=0.05, slots=slots)


def as_if_runs_were_fast(q: DBQueue) -> None:
    """Leases reach ahead by how fast runs are (a moving average that starts slow)."""
    for _ in range(40):
        q.ran(0.0001)


def leave_after(calls: int):
    """A `leave` for DBQueue.get: let the worker look `calls` times, then leave."""
    seen = []

    def leave() -> bool:
        seen.append(1)
        return len(seen) > calls
    return leave


def test_a_stored_job_is_claimed_once_and_started(inproc: InProcess) -> None:
    q, other = queue(inproc), queue(inproc, node="n2")
    jobid = q.put_async({"name": "x"}).result(5)
    row = q.get(leave_after(20))
    assert (row.jobid, row.state, row.attempts, row.node) == (jobid, State.RUNNING, 1, NODE)
    stored = inproc.db.get_job(jobid)
    assert stored is not None and (stored.state, stored.attempts, stored.node) == (State.RUNNING, 1, NODE)
    with pytest.raises(QueueStopped):
        other.get(leave_after(3))           # nothing left for another node


def test_leases_are_reserved_shown_new_and_started_one_by_one(inproc: InProcess) -> None:
    q = queue(inproc)
    q.set_leasing(True)
    as_if_runs_were_fast(q)
    ids = [inproc.db.insert_job_async("hello", {"n": str(i)}).result(5) for i in range(10)]
    first = q.get(leave_after(20))
    assert first.jobid == ids[0] and first.state == State.RUNNING and first.attempts == 1
    wait_for(lambda: inproc.db.get_job(ids[0]).state == State.RUNNING, 5, "the start to be committed")
    states = {i: inproc.db.get_job(i).state for i in ids[1:]}
    assert set(states.values()) == {State.LEASED}          # reserved for n1, not started
    assert {r.jobid: r.state for r in inproc.db.list_jobs(State.NEW, 100)}.keys() == set(ids[1:])
    q.stop()                                                # leases not started go back
    assert {inproc.db.get_job(i).state for i in ids[1:]} == {State.NEW}
    assert {inproc.db.get_job(i).attempts for i in ids[1:]} == {0}


def test_a_withdrawn_lease_is_cancelled_and_never_started(inproc: InProcess) -> None:
    q = queue(inproc)
    q.set_leasing(True)
    as_if_runs_were_fast(q)
    ids = [inproc.db.insert_job_async("hello", {}).result(5) for _ in range(3)]
    q.get(leave_after(20))                 # leases the other two
    row = q.withdraw(ids[2])
    assert row is not None and row.jobid == ids[2]
    before, after = inproc.db.cancel(ids[2], NODE, withdrawn=True)
    assert before == State.LEASED and after.state == State.CANCELLED
    assert q.get(leave_after(20)).jobid == ids[1]
    with pytest.raises(QueueStopped):
        q.get(leave_after(3))


def test_an_outcome_of_a_run_that_was_taken_over_is_fenced_out(inproc: InProcess) -> None:
    q = queue(inproc)
    jobid = q.put_async({}).result(5)
    stale = q.get(leave_after(20))
    assert inproc.db.nodes.requeue_orphans(NODE) == 1            # as after a crash: back to new
    fresh = q.get(leave_after(20))
    assert (fresh.jobid, fresh.attempts) == (jobid, 2)
    policy = RetryPolicy()
    assert inproc.db.record_outcome_async(stale, DONE, NODE, policy, lambda: False).result(5) is None
    assert inproc.db.record_outcome_async(fresh, DONE, "n2", policy, lambda: False).result(5) is None
    stored = inproc.db.record_outcome_async(fresh, DONE, NODE, policy, lambda: False).result(5)
    assert stored is not None and stored.state == State.DONE and stored.attempts == 2
    assert inproc.db.get_job(jobid).state == State.DONE


def test_a_failed_run_with_retries_left_is_queued_again_with_its_delay(inproc: InProcess) -> None:
    q = queue(inproc)
    jobid = q.put_async({}).result(5)
    row = q.get(leave_after(20))
    failed = Outcome(OutcomeKind.FAILED, "boom")
    stored = inproc.db.record_outcome_async(row, failed, NODE, RetryPolicy(1, 60), lambda: False).result(5)
    assert stored.jobid == jobid and stored.state == State.NEW and stored.retries_used == 1 and stored.msg == "boom"
    assert stored.run_after is not None and stored.finished is None
    with pytest.raises(QueueStopped):
        q.get(leave_after(3))              # not due for a minute: not claimed


def test_a_sub_job_of_the_same_type_at_concurrent_1_does_not_deadlock(inproc: InProcess) -> None:
    inproc.start({"parent": {"concurrent": "1"}, "hello": {}})
    acc = inproc.submitter.submit("parent", {"child": "parent", "child.child": "hello",
                                             "child.child.name": "x"}).result(5)
    row = inproc.control.wait(acc.jobid, 20)
    assert row is not None and row.state == State.DONE, row
    grandchild = inproc.db.get_job(row.result["child_result"]["child"])
    assert grandchild.state == State.DONE and grandchild.jobname == "hello"


def test_cancel_of_a_running_job_is_seen_by_the_run(inproc: InProcess) -> None:
    inproc.start({"coop": {"concurrent": "1"}})
    acc = inproc.submitter.submit("coop", {"seconds": "20"}).result(5)
    wait_for(lambda: inproc.manager.runs.get(acc.jobid), 10, "the job to run")
    assert inproc.control.cancel(acc.jobid).state == State.RUNNING
    row = inproc.control.wait(acc.jobid, 20)
    assert row is not None and row.state == State.CANCELLED


def run_of(slots: Slots) -> Run:
    slots.acquire(lambda: False)
    return Run(UpqJob("x", {}, {}, {}), slots, holds_slot=True)


def test_a_lending_run_frees_its_slot_and_takes_one_back_when_free() -> None:
    slots = Slots(1)
    slots.live = 1
    parent = run_of(slots)
    assert slots.lend(parent) == (True, True)           # its slot is free; a worker must be added
    assert (slots.active, slots.lent) == (0, 1) and not parent.holds_slot
    child = run_of(slots)                               # the child's worker runs in the lent slot
    back = threading.Thread(target=slots.unlend, args=(parent, lambda: False))
    back.start()
    back.join(0.3)
    assert back.is_alive()                              # waits: the slot is busy
    slots.finish(child)
    back.join(5)
    assert not back.is_alive() and parent.holds_slot and (slots.active, slots.lent) == (1, 0)
    slots.finish(parent)
    assert slots.active == 0 and parent.ended


def test_an_extra_worker_retires_once_its_lender_is_back() -> None:
    slots = Slots(1)
    slots.live = 2                                      # one added while a run lent its slot
    slots.lent = 1
    assert not slots.try_retire()
    slots.lent = 0
    assert slots.try_retire() and slots.live == 1
    assert not slots.try_retire()
