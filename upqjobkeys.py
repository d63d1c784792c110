"""The [job x] keys of schedules (and later unique jobs and priorities), read from a section.

Kept out of parseconfig.py so that module stays small; problems are reported through the
section's `problem(key, what)`, which names the file, the section and the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from upqcron import CronError, CronSchedule, EverySchedule, parse_schedule

OVERLAP = ("skip", "allow")
SCHEDULE_KEYS = ("schedule", "schedule_tz", "schedule_params", "schedule_overlap")  # JobConfig.periodic
Problem = Callable[[str, str], None]


@dataclass(frozen=True)
class Periodic:
    """A job type's schedule: when, in which zone, with which params, and overlap."""
    schedule: "CronSchedule | EverySchedule"
    tz: str = "UTC"
    params: Mapping[str, str] = field(default_factory=dict)
    overlap: str = "skip"

    @property
    def text(self) -> str:
        return self.schedule.text


def parse_params(raw: str) -> dict[str, str]:
    """`schedule_params`: the protocol's param syntax (key:value, key=value, quoted values)."""
    from upqproto import Request, tokenize
    args = [(tok, None) if sep is None else (tok[:sep], tok[sep + 1:]) for tok, sep in tokenize(raw)]
    if any(key.startswith("@") for key, _ in args):
        raise ValueError("options like @delay are not params")
    return Request("schedule", args).params()


def periodic_from(values: Mapping[str, str], problem: Problem) -> Periodic | None:
    """The schedule keys of one [job] section; None when `schedule` is unset or bad."""
    raw = values.get("schedule", "").strip()
    tz = values.get("schedule_tz", "").strip() or "UTC"
    if not raw:
        for key in ("schedule_tz", "schedule_params", "schedule_overlap"):
            if values.get(key, "").strip():
                problem(key, "has no effect without schedule")
        return None
    ok = True
    try:
        sched = parse_schedule(raw, tz)
    except CronError as exc:
        problem("schedule_tz" if "time zone" in str(exc) else "schedule", str(exc))
        return None
    try:
        params = parse_params(values.get("schedule_params", ""))
    except Exception as exc:  # noqa: BLE001 - BadRequest or ValueError: say what is wrong
        problem("schedule_params", f"expected key:value ..., {getattr(exc, 'reason', exc)}")
        ok = False
    overlap = values.get("schedule_overlap", "").strip().lower() or "skip"
    if overlap not in OVERLAP:
        problem("schedule_overlap", f"expected one of {' | '.join(OVERLAP)}, got {overlap!r}")
        ok = False
    return Periodic(sched, tz, params, overlap) if ok else None


def unique_from(values: Mapping[str, str], problem: Problem) -> tuple[str, ...]:
    """`unique`: the param names that make two jobs of a type the same ("*" = all); () = off."""
    from upqproto import KEY_RE
    names = tuple(values.get("unique", "").replace(",", " ").split())
    if names == ("*",):
        return names
    bad = [n for n in names if not KEY_RE.match(n)]
    if bad:
        problem("unique", f"expected param names or *, got {' '.join(bad)!r}")
        return ()
    return tuple(sorted(set(names)))


PRIORITY_MIN, PRIORITY_MAX = -100, 100


def priority_value(raw: str) -> int:
    """A priority, -100..100 (higher runs first); ValueError if not."""
    value = int(raw.strip())
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValueError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
    return value


def priority_from(values: Mapping[str, str], problem: Problem) -> int:
    """`priority`: the type's default priority for its jobs (0)."""
    raw = values.get("priority", "").strip()
    if not raw:
        return 0
    try:
        return priority_value(raw)
    except ValueError:
        problem("priority", f"expected a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}, got {raw!r}")
        return 0
