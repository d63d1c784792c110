"""`upq-cli schedules`: the periodic job types as an aligned table (`--json` for scripts)."""
from __future__ import annotations

import json
from typing import Any

COLUMNS = ("jobname", "schedule", "tz", "next", "last", "last_jobid", "last_state", "last_note")


def schedules_table(answer: str) -> str | None:
    """The table for an `ACK [...]` answer of `schedules`; None if the answer is not one."""
    kind, _, payload = answer.partition(" ")
    try:
        rows: list[dict[str, Any]] = json.loads(payload) if kind == "ACK" else None
    except ValueError:
        return None
    if not isinstance(rows, list):
        return None
    if not rows:
        return "no periodic job types enabled"
    cells = [list(COLUMNS)] + [["-" if r.get(c) in (None, "") else str(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)
