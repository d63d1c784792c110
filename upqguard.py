"""PartitionGuard: a process job never runs on two daemons at once, even across a partition.

Other daemons declare this one dead once its heartbeat is `node_timeout` old (by the
database's clock) and run its jobs again. So once this daemon has gone `node_timeout / 2`
without renewing its heartbeat (on its own monotonic clock, from when it *sent* the last
heartbeat that committed), it SIGKILLs its process runs, before anyone else may start them.
Their outcome is a retry: fenced out if another daemon took the jobs over, else they run again.
Thread runs cannot be stopped; they are not guarded.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from upqprocexec import ProcessExecutor


class PartitionGuard:
    """Owns the `partition-guard` thread (started by upq.start, lives as long as the daemon)."""

    def __init__(self, renewed_at: Callable[[], float], limit: float, manager: Any, logger: logging.Logger):
        self.renewed_at = renewed_at        # monotonic time the last committed heartbeat was sent
        self.limit = limit
        self.manager = manager
        self.log = logger
        self.tick = max(0.02, min(0.25, limit / 10))
        self._thread = threading.Thread(target=self._loop, name="partition-guard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        cut = False
        while True:
            time.sleep(self.tick)
            stale = time.monotonic() - self.renewed_at()
            if stale < self.limit:
                if cut:
                    self.log.warning("heartbeat renewed again: process runs may start")
                cut = False
                continue
            why = (f"stopped: this daemon had not renewed its heartbeat for {stale:.1f} s "
                   f"(node_timeout / 2 = {self.limit:g} s); it runs again")
            killed = sum(jt.executor.fence(why) for jt in list(self.manager.types.values())
                         if isinstance(jt.executor, ProcessExecutor))
            if killed or not cut:
                self.log.error("no heartbeat committed for %.1fs (limit %gs): SIGKILLed %d process run(s) "
                               "so that no other daemon runs them twice", stale, self.limit, killed)
            cut = True
