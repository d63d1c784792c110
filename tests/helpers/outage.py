"""Talking to a daemon whose database is down: every request answered in time, never a false ACK."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait

from conftest import Conn, Daemon

ANSWER_BOUND = 10.0            # SPEC: every request answered within 10 s, database or not


def timed_ask(d: Daemon, line: str) -> tuple[str, float]:
    """The answer to one request on a fresh connection, and how long it took."""
    t0 = time.monotonic()
    with Conn(d.socket, timeout=ANSWER_BOUND + 20) as c:
        answer = c.ask(line)
    return answer, time.monotonic() - t0


class OutageProbe:
    """Keeps asking during an outage and checks every answer against the SPEC."""

    def __init__(self, d: Daemon, what: str = "database"):
        self.d = d
        self.what = what
        self.seq = 0
        self.refused: dict[str, str] = {}     # tag -> ERR line
        self.false_acks: list[str] = []
        self.slow: list[tuple[str, float]] = []
        self.asked = 0

    def round(self, jobid: int) -> None:
        """At once: a submission, a pipelined burst of five, a status; then pings meanwhile.
        Every answer bounded."""
        self.seq += 1
        seq = self.seq
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(self._submission, seq), pool.submit(self._burst, seq),
                       pool.submit(self._status, jobid)]
            while not all(f.done() for f in futures):
                answer, took = timed_ask(self.d, "ping")
                assert answer == "ACK pong" and took < 2.0, (answer, took)
                self.asked += 1
                wait(futures, timeout=0.5)
            for f in futures:
                f.result()
        self.asked += 7

    def _submission(self, seq: int) -> None:
        tag = f"out-{seq}"
        answer, took = timed_ask(self.d, f"record tag:{tag}")
        self._check_submission(tag, answer, took)

    def _burst(self, seq: int) -> None:
        tags = [f"out-{seq}-{i}" for i in range(5)]
        t0 = time.monotonic()
        with Conn(self.d.socket, timeout=ANSWER_BOUND + 20) as c:
            c.send("".join(f"record tag:{t}\n" for t in tags))
            for t in tags:
                self._check_submission(t, c.line(), time.monotonic() - t0)

    def _status(self, jobid: int) -> None:
        answer, took = timed_ask(self.d, f"status {jobid}")
        self._bounded(f"status {jobid}", took)
        assert answer.startswith("ERR ") and self.what in answer, f"status during the outage: {answer}"

    def _check_submission(self, tag: str, answer: str, took: float) -> None:
        self._bounded(tag, took)
        if answer.startswith("ACK"):
            self.false_acks.append(f"{tag}: {answer}")
            return
        assert answer.startswith("ERR ") and self.what in answer, f"{tag}: {answer}"
        self.refused[tag] = answer

    def _bounded(self, what: str, took: float) -> None:
        if took > ANSWER_BOUND:
            self.slow.append((what, round(took, 1)))

    def verdict(self) -> None:
        assert not self.false_acks, f"ACK while the database was down: {self.false_acks[:5]}"
        assert not self.slow, f"answers slower than {ANSWER_BOUND}s during the outage: {self.slow[:10]}"
