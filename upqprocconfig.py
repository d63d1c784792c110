"""The [job] keys of process isolation and per-job logs (issue 13), read for parseconfig."""
from __future__ import annotations

import re
from typing import Any

from inifile import BadValue

ISOLATIONS = ("thread", "process")
DEFAULT_KILL_GRACE = 5.0
DEFAULT_LOG_LIMIT = 65536
PROCESS_ONLY_KEYS = ("max_memory", "max_cpu", "max_runs_per_process", "user")


def isolation_keys(s: Any) -> dict[str, Any]:
    """JobConfig's isolation fields from a [job] section (a parseconfig._Section); the limits
    need isolation = process, since a thread cannot be held to them."""
    isolation = s.choice("isolation", "thread", ISOLATIONS)
    if isolation == "thread":
        for key in PROCESS_ONLY_KEYS:
            if s.values.get(key, "").strip():
                s.problem(key, "needs isolation = process")
    return dict(
        isolation=isolation,
        kill_grace=s.number("kill_grace", DEFAULT_KILL_GRACE, minimum=0.0),
        max_memory=s.parsed("max_memory", 0, memory_size, "expected a size like 512M or 1G (K, M, G)"),
        max_cpu=s.number("max_cpu", None, above=0.0),
        max_runs_per_process=s.integer("max_runs_per_process", 0, minimum=0),
        user=s.text("user", ""),
        log_limit=s.integer("log_limit", DEFAULT_LOG_LIMIT, minimum=0),
    )


def memory_size(raw: str) -> int:
    """'1G' -> 1073741824; a plain number is bytes; at least 16M, so an interpreter fits."""
    m = re.fullmatch(r"(\d+)\s*([KMG]?)B?", raw.strip().upper())
    if not m:
        raise ValueError
    value = int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]
    if value < 16 << 20:
        raise BadValue("below 16M no Python interpreter starts")
    return value
