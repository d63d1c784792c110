"""Schedules: 5-field cron, @macros and `every <n>s|m|h`, and their next due time.

Pure and zone-aware, so it is tested with an injected clock. Due times are aware
UTC datetimes. Cron fields are read in the schedule's IANA zone; a local time that
does not exist (spring forward) is due at the first minute after the change, and a
local time that occurs twice (fall back) is due once, at its first occurrence.
`every` schedules count real seconds from the Unix epoch and ignore zones, so every
daemon computes the same due times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
SEARCH_YEARS = 9  # Feb 29 on a given weekday can be 28 years away, but alone it is <= 8

MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
DAYS = "sun mon tue wed thu fri sat".split()
EVERY = re.compile(r"every\s+(\d{1,7})\s*([smh])", re.IGNORECASE)
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


class CronError(ValueError):
    """A schedule or zone that cannot be used; the message says why."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone, or CronError naming it."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise CronError(f"unknown time zone {name!r}") from e


def parse_schedule(text: str, tz: str = "UTC") -> "CronSchedule | EverySchedule":
    """Parse a `schedule =` value read in zone `tz`; CronError says what is wrong."""
    spec = " ".join(text.split())
    if not spec:
        raise CronError("empty schedule")
    m = EVERY.fullmatch(spec)
    if m:
        seconds = int(m.group(1)) * UNIT_SECONDS[m.group(2).lower()]
        if seconds <= 0:
            raise CronError(f"schedule {spec!r}: the interval must be positive")
        return EverySchedule(spec, seconds)
    if spec.startswith("@"):
        if spec.lower() not in MACROS:
            raise CronError(f"unknown schedule {spec!r} (known: {', '.join(sorted(MACROS))})")
        fields_text = MACROS[spec.lower()]
    else:
        fields_text = spec
    parts = fields_text.split(" ")
    if len(parts) != 5:
        raise CronError(f"schedule {spec!r}: want 5 fields (minute hour day-of-month month "
                        f"day-of-week), @hourly/@daily/@weekly/@monthly or 'every 30s'")
    sched = CronSchedule(
        text=spec, tz=zone(tz),
        minutes=_field(parts[0], 0, 59, None, "minute"),
        hours=_field(parts[1], 0, 23, None, "hour"),
        doms=_field(parts[2], 1, 31, None, "day-of-month"),
        months=_field(parts[3], 1, 12, MONTHS, "month"),
        dows=frozenset(d % 7 for d in _field(parts[4], 0, 7, DAYS, "day-of-week")),
        dom_any=parts[2].startswith("*"), dow_any=parts[4].startswith("*"))
    if sched.next_after(datetime(2000, 1, 1, tzinfo=UTC)) is None:
        raise CronError(f"schedule {spec!r} is never due")
    return sched


def _value(text: str, lo: int, names: list[str] | None, what: str) -> int:
    """One number or name (jan, mon) of a field."""
    if names and text.lower() in names:
        return names.index(text.lower()) + (1 if lo == 1 else 0)
    if not text.isdigit():
        raise CronError(f"bad {what} value {text!r}")
    return int(text)


def _field(text: str, lo: int, hi: int, names: list[str] | None, what: str) -> frozenset[int]:
    """The set of values a cron field allows: *, a, a-b, */n, a-b/n, a/n, lists."""
    out: set[int] = set()
    for item in text.split(","):
        rng, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"bad {what} step in {item!r}")
            step = int(step_text)
        if rng == "*":
            first, last = lo, hi
        elif "-" in rng:
            a, _, b = rng.partition("-")
            first, last = _value(a, lo, names, what), _value(b, lo, names, what)
        else:
            first = _value(rng, lo, names, what)
            last = hi if step_text else first
        if not lo <= first <= hi or not lo <= last <= hi:
            raise CronError(f"{what} {item!r} out of range {lo}-{hi}")
        if first > last:
            raise CronError(f"{what} range {item!r} runs backwards")
        out.update(range(first, last + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class EverySchedule:
    """Every n real seconds, on multiples of n since the Unix epoch."""

    text: str
    seconds: int

    def next_after(self, after: datetime) -> datetime:
        """The first due time strictly after `after`."""
        ts = int(after.timestamp() // self.seconds + 1) * self.seconds
        return datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class CronSchedule:
    """A 5-field cron expression read in one zone (Vixie rules: day-of-month OR
    day-of-week when both are restricted)."""

    text: str
    tz: ZoneInfo
    minutes: frozenset[int]
    hours: frozenset[int]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]
    dom_any: bool
    dow_any: bool

    def _day_matches(self, d: date) -> bool:
        """Whether a local calendar day is one the expression runs on."""
        if d.month not in self.months:
            return False
        dom_ok = d.day in self.doms
        dow_ok = (d.weekday() + 1) % 7 in self.dows
        if self.dom_any or self.dow_any:
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    def _resolve(self, local: datetime) -> datetime:
        """UTC of a naive local time: first occurrence if repeated, the first
        existing minute after the gap if it does not exist."""
        while True:
            u = local.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
            if u.astimezone(self.tz).replace(tzinfo=None) == local:
                return u
            local += MINUTE

    def next_after(self, after: datetime) -> datetime | None:
        """The first due time strictly after `after` (None if never, in 9 years)."""
        start = after.astimezone(self.tz).replace(tzinfo=None)
        day = start.date()
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        for _ in range(366 * SEARCH_YEARS):
            if self._day_matches(day):
                for h in hours:
                    if (day, h) < (start.date(), start.hour):
                        continue
                    for mi in minutes:
                        local = datetime(day.year, day.month, day.day, h, mi)
                        if local <= start:
                            continue
                        due = self._resolve(local)
                        if due > after:
                            return due
            day += timedelta(days=1)
        return None


def latest_due(sched: "CronSchedule | EverySchedule", since: datetime,
               now: datetime) -> tuple[datetime | None, int]:
    """The last due time in (since, now] and how many there were (capped), cheaply."""
    if isinstance(sched, EverySchedule):
        last = datetime.fromtimestamp(int(now.timestamp() // sched.seconds) * sched.seconds, UTC)
        if last <= since:
            return None, 0
        first = sched.next_after(since)
        count = int((last - first).total_seconds() // sched.seconds) + 1
        return last, count
    found: datetime | None = None
    count = 0
    for window in (timedelta(hours=1), timedelta(days=1), timedelta(days=32),
                   timedelta(days=366), timedelta(days=366 * SEARCH_YEARS)):
        start = max(since, now - window)
        due = sched.next_after(start)
        while due is not None and due <= now:
            found, count = due, count + 1
            due = sched.next_after(due)
        if found is not None or start == since:
            break
    if found is not None and start > since:
        count += 1  # at least one more before the window; exact count is not needed
    return found, count
