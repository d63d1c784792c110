"""NodeKeeper: this daemon's entry in upq_nodes, its heartbeat, and the rescue of dead nodes' jobs.

Several daemons may share one database. Each holds its node name (MySQL: a
server-side GET_LOCK that dies with its connection) and refreshes a heartbeat
in the database's clock. A node whose heartbeat is `node_timeout` seconds old is
declared dead by whichever survivor's conditional update wins, and its running
jobs go back to `new` once. A node that was only paused finds its outcomes
fenced out (they must match node and attempt), so a job never ends twice.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable

from upqdb import Database, DatabaseUnavailable


class NodeNameTaken(Exception):
    """Another live daemon uses this node name."""


class NodeKeeper:
    """Registers, heartbeats and reaps; one per daemon."""

    def __init__(self, db: Database, node: str, timeout: float, logger: logging.Logger,
                 on_requeue: Callable[[], None] = lambda: None):
        self.db = db
        self.node = node
        self.timeout = timeout
        self.log = logger
        self.on_requeue = on_requeue
        self.interval = max(0.2, timeout / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def register(self) -> None:
        """Claim the node name; NodeNameTaken if a live daemon holds it."""
        if not self.db.hold_node_name(self.node):
            raise NodeNameTaken(f"node name {self.node!r} is held by a live upq on this database; "
                                f"set a different [server] node_name")
        old = self.db.register_node(self.node, socket.gethostname(), os.getpid())
        if self.db.is_sqlite and old and old["state"] == "alive" and old["pid"] != os.getpid() \
                and old["host"] == socket.gethostname() and _pid_alive(old["pid"]):
            raise NodeNameTaken(f"node name {self.node!r} is used by pid {old['pid']} on this host")
        if old and old["state"] == "alive":
            self.log.info("node %s: taking over from an earlier run (pid %s) that did not stop cleanly",
                          self.node, old["pid"])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Leave the database saying this node stopped on purpose."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.db.heartbeat(self.node, state="stopped")
        except DatabaseUnavailable as exc:
            self.log.warning("could not mark node %s stopped: %s", self.node, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        """One heartbeat and one look for dead nodes; never raises."""
        try:
            before = self.db.heartbeat(self.node)
            if before == "dead":
                self.log.warning("node %s was declared dead (paused or cut off for over %gs); its "
                                 "running jobs were re-queued and any late outcome of them is discarded",
                                 self.node, self.timeout)
            for name, moved in self.db.reap_dead_nodes(self.node, self.timeout):
                self.log.warning("node %s is dead (no heartbeat for %gs): re-queued its %d running job(s)",
                                 name, self.timeout, moved)
                if moved:
                    self.on_requeue()
        except DatabaseUnavailable as exc:
            self.log.warning("heartbeat failed: %s", exc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
