"""Looking at processes from a test: alive or not (a zombie counts as gone), and the
runs of the `crasher` job (tests/jobs/crasher.py) with the pid each ran in."""
from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def crasher_runs(records: list[list[str]], jobid: int | None = None) -> list[dict]:
    """The crasher job's recorded starts: {jobid, attempt, time, pid}, in order."""
    return [{"jobid": int(r[1]), "attempt": int(r[2]), "time": float(r[3]), "pid": int(r[4])}
            for r in records if r[0] == "crasher" and (jobid is None or int(r[1]) == jobid)]


def spawned_children(records: list[list[str]], jobid: int) -> list[int]:
    """Pids of programs the crasher job started (how:spawn), as it recorded them."""
    return [int(r[0][5:]) for r in records if r[0].startswith("child") and int(r[1]) == jobid]
