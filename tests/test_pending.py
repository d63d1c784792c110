"""groupcommit.Pending: the lean future every write returns (one per store, start and outcome)."""
from __future__ import annotations

import threading

import pytest

from groupcommit import Mapped, Pending


def test_result_waits_for_the_writer_and_every_waiter_gets_it() -> None:
    p: Pending[int] = Pending()
    got: list[int] = []
    waiters = [threading.Thread(target=lambda: got.append(p.result(timeout=10))) for _ in range(5)]
    for t in waiters:
        t.start()
    p.set_result(42)
    for t in waiters:
        t.join(10)
    assert got == [42] * 5 and p.done()


def test_a_missing_commit_is_a_timeout_and_a_failed_one_raises_its_error() -> None:
    p: Pending[int] = Pending()
    with pytest.raises(TimeoutError):
        p.result(timeout=0.05)
    assert not p.done()
    p.set_exception(ValueError("disk full"))
    assert isinstance(p.exception(), ValueError)
    with pytest.raises(ValueError, match="disk full"):
        p.result()


def test_callbacks_run_once_whether_added_before_or_after_and_a_bad_one_is_contained() -> None:
    p: Pending[str] = Pending()
    seen: list[str] = []
    p.add_done_callback(lambda f: seen.append("before " + f.result()))
    p.add_done_callback(lambda f: 1 / 0)          # logged, and the others still run
    p.add_done_callback(lambda f: seen.append("also " + f.result()))
    p.set_result("x")
    p.add_done_callback(lambda f: seen.append("after " + f.result()))
    assert seen == ["before x", "also x", "after x"]


def test_mapped_applies_its_function_when_read() -> None:
    p: Pending[int] = Pending()
    m = Mapped(p, lambda v: v * 2)
    with pytest.raises(TimeoutError):
        m.result(timeout=0.01)
    p.set_result(21)
    assert m.result() == 42 and Pending.resolved(7).result(timeout=0) == 7
