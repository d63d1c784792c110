"""A job's states, how a run can end, and the rules for moving between them.

This is the only module that spells the states out; everything else says
`State.RUNNING`. The states are StrEnums, so they bind into SQL and compare
with what the database returns as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class State(StrEnum):
    """Where a job is. HELD and LEASED are internal: clients see both as NEW."""
    HELD = "held"            # stored by enqueue_job() inside check(), not accepted yet
    LEASED = "leased"        # reserved by the daemon in `node`, to be started soon
    NEW = "new"              # queued: due now, delayed, or waiting for a retry
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({State.DONE, State.FAILED, State.CANCELLED})
QUEUED = (State.NEW, State.HELD, State.LEASED)       # every state shown as NEW
SHOWN = (State.NEW, State.RUNNING, State.DONE, State.FAILED, State.CANCELLED)


def shown(state: str) -> State:
    """The state as clients see it."""
    return State.NEW if state in QUEUED else State(state)


def is_final(state: str) -> bool:
    return state in FINAL


class CancelEffect(StrEnum):
    """What `cancel` does to a job in a given state."""
    NOW = "now"              # it never runs: cancelled at once
    FLAG = "flag"            # it may be running: flagged, and it ends cancelled when run() returns
    NONE = "none"            # it has ended: nothing to cancel


def cancel_effect(state: str, leased_here_and_withdrawn: bool) -> CancelEffect:
    """A leased job is cancelled at once only when the asking daemon took it out of its own
    queue; otherwise a worker may be starting it, so it is flagged and its holder cancels it."""
    if state in (State.NEW, State.HELD):
        return CancelEffect.NOW
    if state == State.LEASED:
        return CancelEffect.NOW if leased_here_and_withdrawn else CancelEffect.FLAG
    if state == State.RUNNING:
        return CancelEffect.FLAG
    return CancelEffect.NONE


def can_retry(state: str) -> bool:
    """`retry` queues a job again only once it has failed or been cancelled."""
    return state in (State.FAILED, State.CANCELLED)


class OutcomeKind(StrEnum):
    """How one run ended."""
    DONE = "done"
    FAILED = "failed"
    RETRY = "retry"          # the job asked to run again later (UpqJob.retry); not a failure


@dataclass(frozen=True)
class Outcome:
    """How one run ended; `delay` is for RETRY only (None: the type's retry_delay)."""
    kind: OutcomeKind
    msg: str = ""
    result: Any = None
    delay: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """A job type's retries: failed attempt k (1-based) waits delay * 2**(k-1) seconds."""
    retries: int = 0
    delay: float = 30.0

    def next_delay(self, retries_used: int) -> float | None:
        """Seconds until the next try, or None when the budget is spent."""
        if retries_used >= self.retries:
            return None
        return self.delay * 2 ** retries_used


@dataclass(frozen=True)
class Transition:
    """Where a run's outcome takes the job: `state`, and for NEW how long until it is due."""
    state: State
    delay: float | None = None
    uses_retry: bool = False         # a failure that spends one of the type's retries


def after_run(outcome: Outcome, retries_used: int, cancel_requested: bool, policy: RetryPolicy) -> Transition:
    """The job's next state once a run has ended."""
    if cancel_requested:
        return Transition(State.CANCELLED)
    if outcome.kind == OutcomeKind.DONE:
        return Transition(State.DONE)
    if outcome.kind == OutcomeKind.RETRY:
        return Transition(State.NEW, policy.delay if outcome.delay is None else outcome.delay)
    delay = policy.next_delay(retries_used)
    if delay is None:
        return Transition(State.FAILED)
    return Transition(State.NEW, delay, uses_retry=True)


def final_state(outcome: Outcome, retries_used: int, policy: RetryPolicy) -> State | None:
    """The state the outcome ends the job in, unless a cancel was asked meanwhile; None when
    the job runs again."""
    state = after_run(outcome, retries_used, False, policy).state
    return state if state in FINAL else None
