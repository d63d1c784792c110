"""The job state machine's rules, in-process (upqstates.py): cancel, retry, and where a run's
outcome takes the job."""
from __future__ import annotations

import pytest

from upqstates import (FINAL, SHOWN, CancelEffect, Outcome, OutcomeKind, RetryPolicy, State, after_run,
                       can_retry, cancel_effect, final_state, is_final, shown)

DONE, FAILED, RETRY = (Outcome(k, "m") for k in (OutcomeKind.DONE, OutcomeKind.FAILED, OutcomeKind.RETRY))


def test_clients_see_five_states_and_three_are_final() -> None:
    assert [str(s) for s in SHOWN] == ["new", "running", "done", "failed", "cancelled"]
    assert {shown(s) for s in State} == set(SHOWN)
    assert shown("held") is State.NEW and shown("leased") is State.NEW
    assert {s for s in State if is_final(s)} == FINAL == {State.DONE, State.FAILED, State.CANCELLED}


@pytest.mark.parametrize("state, withdrawn, effect", [
    (State.NEW, False, CancelEffect.NOW), (State.HELD, False, CancelEffect.NOW),
    (State.LEASED, True, CancelEffect.NOW),      # taken out of this daemon's own queue: never starts
    (State.LEASED, False, CancelEffect.FLAG),    # a worker may be starting it: its holder cancels it
    (State.RUNNING, False, CancelEffect.FLAG), (State.RUNNING, True, CancelEffect.FLAG),
    (State.DONE, False, CancelEffect.NONE), (State.FAILED, True, CancelEffect.NONE),
    (State.CANCELLED, False, CancelEffect.NONE),
])
def test_what_cancel_does_in_each_state(state: State, withdrawn: bool, effect: CancelEffect) -> None:
    assert cancel_effect(state, withdrawn) is effect
    assert cancel_effect(str(state), withdrawn) is effect       # as the database returns it


def test_only_failed_and_cancelled_jobs_can_be_retried() -> None:
    assert {s for s in State if can_retry(s)} == {State.FAILED, State.CANCELLED}


def test_retry_delays_double_until_the_budget_is_spent() -> None:
    policy = RetryPolicy(retries=3, delay=10)
    assert [policy.next_delay(used) for used in range(5)] == [10, 20, 40, None, None]
    assert RetryPolicy().next_delay(0) is None


def test_done_ends_the_job() -> None:
    step = after_run(DONE, 0, False, RetryPolicy(retries=5))
    assert step.state is State.DONE and step.delay is None and not step.uses_retry


def test_a_failure_with_budget_left_runs_again_later_and_uses_a_retry() -> None:
    step = after_run(FAILED, 1, False, RetryPolicy(retries=2, delay=3))
    assert (step.state, step.delay, step.uses_retry) == (State.NEW, 6, True)
    assert after_run(FAILED, 2, False, RetryPolicy(retries=2, delay=3)).state is State.FAILED


def test_asking_to_run_again_is_not_a_failure() -> None:
    policy = RetryPolicy(retries=0, delay=30)
    step = after_run(RETRY, 0, False, policy)
    assert (step.state, step.delay, step.uses_retry) == (State.NEW, 30, False)     # the type's retry_delay
    step = after_run(Outcome(OutcomeKind.RETRY, "busy", delay=2.5), 9, False, policy)
    assert (step.state, step.delay, step.uses_retry) == (State.NEW, 2.5, False)


@pytest.mark.parametrize("outcome", [DONE, FAILED, RETRY])
def test_a_cancel_asked_during_the_run_wins_over_any_outcome(outcome: Outcome) -> None:
    assert after_run(outcome, 0, True, RetryPolicy(retries=3)).state is State.CANCELLED


def test_final_state_matches_after_run() -> None:
    policy = RetryPolicy(retries=1)
    assert final_state(DONE, 0, policy) and not final_state(FAILED, 0, policy) and final_state(FAILED, 1, policy)
    assert not final_state(RETRY, 1, policy)
