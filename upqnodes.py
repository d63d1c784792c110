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
import time
from typing import Callable

from upqdb import Database
from upqengine import NodeNameLock
from upqerrors import DatabaseUnavailable, NodeNameTaken


class NodeKeeper:
    """Registers, heartbeats and reaps; one per daemon."""

    def __init__(self, db: Database, name_lock: NodeNameLock, node: str, timeout: float,
                 logger: logging.Logger, on_requeue: Callable[[], None] = lambda: None,
                 on_cancel: Callable[[list[int]], None] = lambda ids: None,
                 on_peers: Callable[[int], None] = lambda n: None):
        self.db = db
        self.name_lock = name_lock
        self.node = node
        self.timeout = timeout
        self.log = logger
        self.on_requeue = on_requeue
        self.on_cancel = on_cancel          # cancels sent to another daemon reach our runs
        self.on_peers = on_peers            # how many other daemons are alive, at every beat
        self.interval = min(1.0, timeout / 4)     # beats are cheap; frequent ones tell the living apart
        self.renewed_at = time.monotonic()  # when the last heartbeat that committed was sent (PartitionGuard)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self.previous_state: str | None = None      # of this node's row before register()

    def register(self) -> None:
        """Claim the node name; NodeNameTaken if a live daemon holds it."""
        taken = NodeNameTaken(f"[server] node_name {self.node!r} is in use by a live upq on this "
                              f"database; give this daemon another node_name")
        if not self.name_lock.hold(self.node):
            raise taken
        seen = self.db.nodes.node_heartbeat(self.node)
        if self.name_lock.can_drop_while_alive and seen and seen[0] == "alive" and seen[2] < self.timeout:
            # The lock was free but the name beat recently: its holder died a moment ago, or
            # it lives and only lost its lock connection. A live one keeps beating: look again.
            wait = 2.5 * self.interval
            self.log.info("node %s beat %.1fs ago; waiting %.1fs to be sure it is gone", self.node, seen[2], wait)
            time.sleep(wait)
            again = self.db.nodes.node_heartbeat(self.node)
            if again and again[1] != seen[1]:
                self.name_lock.release()
                raise taken
        old = self.db.nodes.register_node(self.node, socket.gethostname(), os.getpid())
        self.previous_state = None if old is None else old["state"]     # "stopped": a clean stop
        if old and old["state"] == "alive":
            self.log.info("node %s: taking over from an earlier run (pid %s) that did not stop cleanly",
                          self.node, old["pid"])

    def start(self) -> None:
        self.beat()             # the first count of peers now, not a beat later
        self._thread.start()

    def stop(self) -> None:
        """Leave the database saying this node stopped on purpose."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.db.nodes.heartbeat(self.node, state="stopped")
        except DatabaseUnavailable as exc:
            self.log.warning("could not mark node %s stopped: %s", self.node, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        """One heartbeat and one look for dead nodes; never raises."""
        try:
            if not self.name_lock.still_held():
                # keep beating: the newcomer sees this node is alive and gives the name back
                self.log.error("node name %r: its lock connection was cut and another daemon "
                               "holds the lock now; retrying", self.node)
            sent = time.monotonic()
            before, peers = self.db.nodes.heartbeat(self.node)
            self.renewed_at = sent
            self.on_peers(peers)
            if before == "dead":
                self.log.warning("node %s was declared dead (paused or cut off for over %gs); its "
                                 "running jobs were re-queued and any late outcome of them is discarded",
                                 self.node, self.timeout)
            cancelled = self.db.cancel_requests(self.node)
            if cancelled:
                self.on_cancel(cancelled)
            for name, moved in self.db.nodes.reap_dead_nodes(self.node, self.timeout):
                self.log.warning("node %s is dead (no heartbeat for %gs): re-queued its %d running job(s)",
                                 name, self.timeout, moved)
                if moved:
                    self.on_requeue()
        except DatabaseUnavailable as exc:
            self.log.warning("heartbeat failed: %s", exc)
