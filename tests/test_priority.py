"""Priorities on a real daemon: a backlog of mixed priorities and delayed jobs starts highest
priority first, then delayed jobs fallen due, then oldest first; jobs not due stay queued."""

import json

import pytest

from conftest import SQLITE_ONLY, wait_for

import upqproto
from upqerrors import BadRequest


@pytest.mark.parametrize("db_url", ["sqlite", "mysql"], indirect=True)
def test_backlog_starts_by_priority_then_due_then_age(make_daemon):
    d = make_daemon(jobs={"sleep": {"concurrent": "1", "priority": "2"}})
    blocker = d.submit("sleep seconds:4")
    wait_for(lambda: d.job(blocker)["state"] == "running", timeout=15, what="the blocker to run")
    lines = {
        "d1": "sleep seconds:0 n:d1 @delay:1", "d2": "sleep seconds:0 n:d2 @delay:1 @priority:5",
        "a": "sleep seconds:0 n:a @priority:0", "b": "sleep seconds:0 n:b @priority:5",
        "c": "sleep seconds:0 n:c", "e": "sleep seconds:0 n:e @priority:-3",
        "f": "sleep seconds:0 n:f @priority:5", "z": "sleep seconds:0 n:z @delay:120 @priority:100",
    }
    ids = {name: d.submit(line) for name, line in lines.items()}
    assert d.job(ids["c"])["priority"] == 2 and d.job(ids["e"])["priority"] == -3
    assert d.job(ids["d1"])["priority"] == 2  # no @priority: the type's
    ran = [n for n in ids if n != "z"]
    for n in ran:
        d.wait_job(ids[n], timeout=30)
    order = sorted(ran, key=lambda n: d.job(ids[n])["started"])
    # d1 has the type's priority 2, like c; delayed jobs fallen due go first within a priority
    assert order == ["d2", "b", "f", "d1", "c", "a", "e"], order
    assert d.job(ids["z"])["state"] == "new"
    # a delayed job keeps showing when it was due, after the claim promoted and ran it
    assert d.job(ids["d1"])["run_after"] is not None and d.job(ids["a"])["run_after"] is None
    listed = json.loads(d.ask("list new")[4:])
    assert [(j["jobid"], j["priority"]) for j in listed] == [(ids["z"], 100)]


def test_priority_option_grammar():
    opts, _ = upqproto.split_options([("@priority", "7"), ("@delay", "3"), ("x", "1")])
    assert upqproto.parse_priority(opts) == 7 and upqproto.parse_delay(opts) == 3
    assert upqproto.parse_priority({}) is None
    for bad in ("101", "-101", "x", "1.5", ""):
        with pytest.raises(BadRequest, match="@priority"):
            upqproto.parse_priority({"@priority": bad})
    with pytest.raises(BadRequest, match="once"):
        upqproto.split_options([("@priority", "1"), ("@priority", "2")])


@SQLITE_ONLY
def test_bad_priorities_get_err(daemon):
    assert daemon.ask("hello name:x @priority:1000").startswith("ERR @priority")
    assert daemon.ask("hello name:x @priority").startswith("ERR")
