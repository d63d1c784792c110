"""What tests ask a daemon again and again, over its socket; every read is bounded."""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from conftest import Daemon

AMBIGUOUS = "may or may not be stored"      # the one ERR that does not mean "not stored"


def stats(d: Daemon) -> dict:
    """The `stats` answer: {"jobs": {jobname: counts}, "nodes": [...]}."""
    answer = d.ask("stats")
    assert answer.startswith("ACK {"), answer
    return json.loads(answer[4:])


def newest_jobid(d: Daemon) -> int:
    """The highest stored jobid; 0 while nothing is stored."""
    answer = d.ask("list limit:1")
    assert answer.startswith("ACK ["), answer
    rows = json.loads(answer[4:])
    return rows[0]["jobid"] if rows else 0


def pipeline(d: Daemon, lines: list[str], chunk: int = 200, timeout: float = 60) -> list[str]:
    """Send request lines on one connection, `chunk` at a time; every answer line, in order."""
    answers: list[str] = []
    with d.connect(timeout=timeout) as conn:
        for i in range(0, len(lines), chunk):
            part = lines[i:i + chunk]
            conn.send("".join(line + "\n" for line in part))
            answers += [conn.line() for _ in part]
    return answers


def job_ids(answers: list[str]) -> list[int]:
    """The jobids of submission answers, which must all be ACKs."""
    bad = [a for a in answers if not a.startswith("ACK ")]
    assert not bad, f"{len(bad)} submissions not ACKed, e.g. {bad[:3]}"
    return [int(a.split()[1]) for a in answers]


def submit_many(d: Daemon, lines: list[str]) -> list[int]:
    """Pipeline the submissions on one connection; every one must be ACKed."""
    return job_ids(pipeline(d, lines))


def wait_all(d: Daemon, jobids: list[int], timeout: float = 30) -> dict[int, dict]:
    """jobid -> the job once it has ended, in the order given (pipelined `wait`s, each bounded)."""
    answers = pipeline(d, [f"wait {jobid} timeout:{timeout}" for jobid in jobids], timeout=timeout + 10)
    for answer in answers:
        assert answer.startswith(("ACK {", "ERR {")), answer
    return {jobid: json.loads(a[4:]) for jobid, a in zip(jobids, answers)}


def log_has(d: Daemon, pattern: str) -> Callable[[], bool]:
    """A wait_for condition: the daemon's log matches the regular expression."""
    return lambda: re.search(pattern, d.log()) is not None
