"""Reading the records the test jobs append to [paths] records (tests/jobs).

Each line is `<event> <jobid> <attempt> <time>`: `start`/`end` from the record job,
`start` from gate, `flaky`, `slowstart`/`slowend`, `coop`/`coopsaw`,
`lendstart`/`lendbusy`/`lendend`, `selfretry` from the others. `Daemon.read_records`
gives the lines split into fields; these functions give them meaning.
"""
from __future__ import annotations

from dataclasses import dataclass

Records = list[list[str]]


class AttemptsByJob(dict[int, list[int]]):
    """jobid -> attempt numbers, in file order; a job with none reads as [] (and is not added)."""

    def __missing__(self, jobid: int) -> list[int]:
        return []


def attempts_by_job(records: Records, event: str = "start") -> AttemptsByJob:
    """jobid -> the attempt numbers of its `event` lines, in file order (runs started, by default)."""
    out = AttemptsByJob()
    for r in records:
        if r[0] == event:
            out.setdefault(int(r[1]), []).append(int(r[2]))
    return out


def attempt_times(records: Records, event: str, jobid: int) -> dict[int, float]:
    """{attempt: time} of jobid's `event` lines (when each attempt got there, wall clock)."""
    return {int(r[2]): float(r[3]) for r in records
            if len(r) == 4 and r[0] == event and r[1] == str(jobid)}


@dataclass(frozen=True)
class Run:
    """One recorded run of the `record` job: its start, and its end if it got there."""
    jobid: int
    attempt: int
    start: float
    end: float | None


def runs(records: Records, where: str = "") -> list[Run]:
    """The record job's runs, ends paired with starts, by (jobid, attempt); a start or an end
    logged twice fails the test (`where` names the daemon in the message)."""
    starts: dict[tuple[int, int], float] = {}
    ends: dict[tuple[int, int], float] = {}
    for event, jobid, attempt, when in records:
        key = (int(jobid), int(attempt))
        target = starts if event == "start" else ends
        assert key not in target, f"{where}: {event} of job {jobid} attempt {attempt} logged twice"
        target[key] = float(when)
    return [Run(j, a, t, ends.get((j, a))) for (j, a), t in sorted(starts.items())]


def max_overlap(rs: list[Run]) -> int:
    """Most runs in progress at one instant (an end at t frees its slot before a start at t)."""
    events = sorted([(r.start, 1) for r in rs] + [(r.end, -1) for r in rs if r.end is not None])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most
