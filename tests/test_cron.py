"""upqcron: cron expressions against expected next due times, DST rules, bad input (in-process)."""

from datetime import datetime, timedelta, timezone

import pytest

from upqcron import CronError, EverySchedule, latest_due, parse_schedule

UTC = timezone.utc


def u(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


# (expression, after, expected next) all in UTC
TABLE = [
    ("0 3 * * *", u(2026, 1, 1, 2, 59), u(2026, 1, 1, 3, 0)),
    ("0 3 * * *", u(2026, 1, 1, 3, 0), u(2026, 1, 2, 3, 0)),  # strictly after
    ("*/15 * * * *", u(2026, 1, 1, 10, 1), u(2026, 1, 1, 10, 15)),
    ("*/15 * * * *", u(2026, 1, 1, 10, 59, 30), u(2026, 1, 1, 11, 0)),
    ("10-20/5 * * * *", u(2026, 1, 1, 10, 16), u(2026, 1, 1, 10, 20)),
    ("10-20/5 * * * *", u(2026, 1, 1, 10, 21), u(2026, 1, 1, 11, 10)),
    ("5/20 * * * *", u(2026, 1, 1, 10, 30), u(2026, 1, 1, 10, 45)),
    ("0 9-17 * * mon-fri", u(2026, 1, 2, 17, 30), u(2026, 1, 5, 9, 0)),  # Fri -> Mon
    ("0 0 29 2 *", u(2026, 1, 1), u(2028, 2, 29)),  # Feb 29, next leap year
    ("0 0 29 2 *", u(2028, 2, 29), u(2032, 2, 29)),
    ("0 0 13 * 5", u(2026, 1, 1), u(2026, 1, 2)),  # dom OR dow: Fri Jan 2 before the 13th
    ("0 0 13 * 5", u(2026, 1, 3), u(2026, 1, 9)),
    ("0 0 13 * *", u(2026, 1, 3), u(2026, 1, 13)),
    ("0 0 * * 7", u(2026, 1, 1), u(2026, 1, 4)),  # 7 is Sunday too
    ("0 0 1,15 jan,jul *", u(2026, 1, 16), u(2026, 7, 1)),
    ("59 23 31 12 *", u(2026, 6, 1), u(2026, 12, 31, 23, 59)),
    ("@weekly", u(2026, 1, 1), u(2026, 1, 4)),  # Thursday -> Sunday 00:00
    ("@daily", u(2026, 1, 1, 0, 0), u(2026, 1, 2)),
    ("@hourly", u(2026, 1, 1, 5, 30), u(2026, 1, 1, 6)),
    ("@monthly", u(2026, 1, 31), u(2026, 2, 1)),
    ("every 30s", u(2026, 1, 1, 0, 0, 10), u(2026, 1, 1, 0, 0, 30)),
    ("every 5m", u(2026, 1, 1, 0, 5), u(2026, 1, 1, 0, 10)),
    ("every 2h", u(2026, 1, 1, 1, 0), u(2026, 1, 1, 2, 0)),
]


@pytest.mark.parametrize("expr,after,expected", TABLE)
def test_next_due_time_table(expr, after, expected):
    assert parse_schedule(expr).next_after(after) == expected


def run_times(expr, tz, start, end):
    """Every due time in (start, end], walking with an injected clock."""
    s, out, t = parse_schedule(expr, tz), [], start
    while True:
        t = s.next_after(t)
        if t > end:
            return out
        out.append(t)


def test_berlin_spring_forward_runs_at_first_minute_after_the_change():
    # 2026-03-29: 02:00 CET -> 03:00 CEST (01:00 UTC); 02:30 does not exist
    times = run_times("30 2 * * *", "Europe/Berlin", u(2026, 3, 27), u(2026, 3, 31))
    assert times == [u(2026, 3, 27, 1, 30), u(2026, 3, 28, 1, 30), u(2026, 3, 29, 1, 0),
                     u(2026, 3, 30, 0, 30)]


def test_berlin_gap_with_several_minutes_runs_once():
    times = run_times("*/20 2 * * *", "Europe/Berlin", u(2026, 3, 29, 0), u(2026, 3, 29, 2))
    assert times == [u(2026, 3, 29, 1, 0)]


def test_berlin_fall_back_runs_once_at_first_occurrence():
    # 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens at 00:30 and 01:30 UTC
    times = run_times("30 2 * * *", "Europe/Berlin", u(2026, 10, 24), u(2026, 10, 26, 12))
    assert times == [u(2026, 10, 24, 0, 30), u(2026, 10, 25, 0, 30), u(2026, 10, 26, 1, 30)]


def test_new_york_spring_forward():
    # 2026-03-08: 02:00 EST -> 03:00 EDT (07:00 UTC)
    times = run_times("15 2 * * *", "America/New_York", u(2026, 3, 7), u(2026, 3, 9, 12))
    assert times == [u(2026, 3, 7, 7, 15), u(2026, 3, 8, 7, 0), u(2026, 3, 9, 6, 15)]


def test_new_york_fall_back():
    # 2026-11-01: 02:00 EDT -> 01:00 EST; 01:30 happens at 05:30 and 06:30 UTC
    times = run_times("30 1 * * *", "America/New_York", u(2026, 10, 31), u(2026, 11, 2, 12))
    assert times == [u(2026, 10, 31, 5, 30), u(2026, 11, 1, 5, 30), u(2026, 11, 2, 6, 30)]


def test_new_york_hourly_across_fall_back_has_no_repeat():
    times = run_times("0 * * * *", "America/New_York", u(2026, 11, 1, 3), u(2026, 11, 1, 8))
    assert times == [u(2026, 11, 1, 4), u(2026, 11, 1, 5), u(2026, 11, 1, 7), u(2026, 11, 1, 8)]
    assert len(set(times)) == len(times)


def test_every_ignores_zones_and_counts_real_seconds():
    times = run_times("every 1h", "Europe/Berlin", u(2026, 10, 24, 23), u(2026, 10, 25, 3))
    assert [b - a for a, b in zip(times, times[1:])] == [timedelta(hours=1)] * 3


@pytest.mark.parametrize("expr,fragment", [
    ("", "empty"), ("* * * *", "5 fields"), ("60 * * * *", "out of range"),
    ("* 24 * * *", "out of range"), ("* * 0 * *", "out of range"), ("*/0 * * * *", "step"),
    ("5-1 * * * *", "backwards"), ("x * * * *", "bad minute"), ("@sometimes", "unknown"),
    ("0 0 30 2 *", "never due"), ("every 0s", "positive"), ("* * * 13 *", "out of range"),
])
def test_bad_schedules_say_why(expr, fragment):
    with pytest.raises(CronError, match=fragment):
        parse_schedule(expr)


def test_unknown_zone_is_named():
    with pytest.raises(CronError, match="Mars/Olympus"):
        parse_schedule("0 3 * * *", "Mars/Olympus")


def test_latest_due_collapses_missed_runs():
    s = parse_schedule("*/10 * * * *")
    last, count = latest_due(s, u(2026, 1, 1, 0, 0), u(2026, 1, 1, 0, 35))
    assert (last, count) == (u(2026, 1, 1, 0, 30), 3)
    last, count = latest_due(s, u(2026, 1, 1), u(2026, 3, 1, 0, 5))
    assert last == u(2026, 3, 1, 0, 0) and count >= 2
    assert latest_due(s, u(2026, 1, 1, 0, 30), u(2026, 1, 1, 0, 35)) == (None, 0)
    e = EverySchedule("every 2s", 2)
    assert latest_due(e, u(2026, 1, 1), u(2026, 1, 1, 0, 0, 9)) == (u(2026, 1, 1, 0, 0, 8), 4)


def test_scheduler_plan_fills_recent_slots_and_collapses_stale_ones():
    from upqjobkeys import Periodic
    from upqschedule import plan
    p = Periodic(parse_schedule("every 2s"))
    t = u(2026, 1, 1, 12, 0, 0)
    assert plan(p, t, t + timedelta(seconds=1)) == []
    assert plan(p, t, t + timedelta(seconds=5)) == [(t + timedelta(seconds=2), ""), (t + timedelta(seconds=4), "")]
    (only,) = plan(p, t, t + timedelta(minutes=5, seconds=1))
    assert only == (t + timedelta(minutes=5), "catch-up of 150 missed")
    daily = Periodic(parse_schedule("0 3 * * *", "Europe/Berlin"), "Europe/Berlin")
    (late,) = plan(daily, u(2026, 3, 20, 2), u(2026, 3, 30, 12))
    assert late[0] == u(2026, 3, 30, 1) and late[1].startswith("catch-up of ")
