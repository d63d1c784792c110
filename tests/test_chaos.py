"""Kill -9 under load: no ACKed job is lost, no done job runs again (SPEC: durability).

Jepsen-style: client threads submit `record` jobs continuously and log every line
they sent and every answer they got; the daemon is SIGKILLed at random moments
and restarted. At the end the history -- the clients' logs, the record job's
start/end lines (with the test's kill markers between them) and the stored jobs --
is checked against the promise:

- every ACKed id is `done`, and it is the job of the line that was ACKed;
- a job that reached `done` never started again, attempts strictly increase, and
  a job starts again after an `end` only when a kill came in between (its outcome
  was not committed yet);
- what is stored and was never ACKed came from a line whose answer was lost in a
  kill (allowed; counted and printed).

`make test` runs the fast variant (5 kills, 3 clients); `make soak` (UPQ_SOAK=1)
the long one (25 kills, 8 clients). UPQ_CHAOS_SEED=<n> replays a run's timing choices.
"""
from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import pytest

from conftest import Conn, Daemon, wait_for
from helpers.client import AMBIGUOUS, newest_jobid, stats

SOAK = os.environ.get("UPQ_SOAK") == "1"
KILLS = 25 if SOAK else 5
CLIENTS = 8 if SOAK else 3
UPTIME = (0.5, 3.0) if SOAK else (0.3, 1.2)     # seconds the daemon serves between kills


@dataclass
class Client:
    """One submitting thread and everything it was told."""
    cid: int
    rng: random.Random
    sent: list[str] = field(default_factory=list)          # tags, in order
    acked: dict[str, int] = field(default_factory=dict)    # tag -> jobid
    refused: dict[str, str] = field(default_factory=dict)  # tag -> ERR line
    unanswered: set[str] = field(default_factory=set)      # the connection died first
    timeouts: int = 0                                       # a live daemon did not answer in 15 s

    def run(self, socket_path: str, stop: threading.Event) -> None:
        seq = 0
        while not stop.is_set():
            try:
                conn = Conn(socket_path, timeout=15)
            except OSError:
                stop.wait(0.02)              # daemon down or restarting
                continue
            batch: list[str] = []
            try:
                while not stop.is_set():
                    batch = []
                    lines = []
                    for _ in range(self.rng.randint(1, 10)):
                        seq += 1
                        tag = f"{self.cid}-{seq}"
                        sleep = "0.1" if self.rng.random() < 0.1 else "0"
                        batch.append(tag)
                        lines.append(f"record c:{self.cid} n:{seq} sleep:{sleep}\n")
                    self.sent.extend(batch)
                    conn.send("".join(lines))
                    while batch:
                        answer = conn.line()
                        tag = batch.pop(0)
                        if answer.startswith("ACK "):
                            self.acked[tag] = int(answer.split()[1])
                        else:
                            self.refused[tag] = answer
                    stop.wait(self.rng.uniform(0.02, 0.15))
            except TimeoutError:
                self.timeouts += 1
            except (OSError, ConnectionError):
                pass                         # killed under us: expected
            finally:
                self.unanswered.update(batch)
                conn.close()


def fetch_all_jobs(d: Daemon) -> dict[int, dict]:
    """Every stored job, through the protocol: `status` for each id up to the newest."""
    top = newest_jobid(d)
    out: dict[int, dict] = {}
    with d.connect(timeout=60) as conn:
        for start in range(1, top + 1, 500):
            ids = range(start, min(top, start + 499) + 1)
            conn.send("".join(f"status {i}\n" for i in ids))
            for i in ids:
                answer = conn.line()
                if answer.startswith("ACK {"):
                    out[i] = json.loads(answer[4:])
                else:
                    assert answer.startswith("ERR no job"), answer
    return out


def all_ended(d: Daemon) -> bool:
    counts = stats(d)["jobs"].get("record", {})
    return counts.get("queued", 1) == 0 and counts.get("running", 1) == 0


def check_history(records: list[list[str]], jobs: dict[int, dict]) -> int:
    """The record lines, in file order, against the stored outcomes. Returns how many jobs ran
    to their end and yet ran again (killed before the outcome was committed: allowed)."""
    per_job: dict[int, list[tuple[str, int, int]]] = defaultdict(list)   # (event, attempt, kills so far)
    kills = 0
    for r in records:
        if r[0] == "kill":
            kills += 1
        elif r[0] in ("start", "end"):
            per_job[int(r[1])].append((r[0], int(r[2]), kills))
    assert set(per_job) <= set(jobs), f"records for jobs not stored: {sorted(set(per_job) - set(jobs))[:20]}"
    ended_then_rerun: set[int] = set()
    for jobid, job in jobs.items():
        events = per_job.get(jobid)
        assert events, f"job {jobid} is {job['state']} but never ran"
        starts = [a for e, a, _ in events if e == "start"]
        assert starts == sorted(set(starts)), f"job {jobid}: attempts not strictly increasing: {events}"
        last_end_kills = None
        for event, attempt, k in events:
            if event == "end":
                last_end_kills = k
            elif last_end_kills is not None:
                ended_then_rerun.add(jobid)
                assert k > last_end_kills, (f"job {jobid} started again after it ended, with no kill in "
                                            f"between (ran twice while the daemon lived): {events}")
        final = job["result"]["attempt"] if isinstance(job["result"], dict) else None
        assert final == starts[-1] == job["attempts"], (
            f"job {jobid}: the done outcome is from attempt {final}, the last run was attempt "
            f"{starts[-1]}, attempts={job['attempts']}: {events}")
        assert events[-1] == ("end", final, events[-1][2]), f"job {jobid}: ran after it was done: {events}"
    return len(ended_then_rerun)


@pytest.mark.timeout(1200 if SOAK else 120)
def test_kill_minus_nine_under_load_loses_no_acked_job(make_daemon, db_url) -> None:
    seed = int(os.environ.get("UPQ_CHAOS_SEED", time.time_ns() % 2 ** 32))
    print(f"\nchaos seed {seed} (UPQ_CHAOS_SEED={seed} replays the timing choices), "
          f"{KILLS} kills, {CLIENTS} clients")
    rng = random.Random(seed)
    d = make_daemon(jobs={"record": {"concurrent": "4"}})
    clients = [Client(cid, random.Random(rng.random())) for cid in range(1, CLIENTS + 1)]
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(d.socket, stop), daemon=True, name=f"client-{c.cid}")
               for c in clients]
    for t in threads:
        t.start()

    def acks() -> int:
        return sum(len(c.acked) for c in clients)

    t_start = time.monotonic()
    try:
        for kill in range(1, KILLS + 1):
            floor = acks() + 10 * CLIENTS
            wait_for(lambda: acks() >= floor, 20, f"clients to get ACKs before kill {kill}")
            time.sleep(rng.uniform(*UPTIME))          # a random moment under load, not a condition
            d.kill(signal.SIGKILL)
            with open(d.records, "a") as f:          # the daemon is dead: no other writer now
                f.write(f"kill {kill} {time.time():.6f}\n")
            d.start()
        floor = acks() + 10 * CLIENTS
        wait_for(lambda: acks() >= floor, 20, "ACKs after the last restart")
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    load_seconds = time.monotonic() - t_start
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert sum(c.timeouts for c in clients) == 0, "a live daemon left a request unanswered for 15 s"

    wait_for(lambda: all_ended(d), 300 if SOAK else 60, "every stored job to end")
    jobs = fetch_all_jobs(d)

    acked = {tag: jobid for c in clients for tag, jobid in c.acked.items()}
    unanswered = set().union(*(c.unanswered for c in clients))
    refused = {tag: a for c in clients for tag, a in c.refused.items()}
    sent = sum(len(c.sent) for c in clients)
    assert len(set(acked.values())) == len(acked), "two request lines were ACKed with the same jobid"

    # every ACKed id is done, and is the job of the line that got the ACK
    for tag, jobid in acked.items():
        job = jobs.get(jobid)
        assert job is not None, f"ACKed job {jobid} ({tag}) is lost"
        assert job["state"] == "done", (jobid, job["state"], job["msg"])
        assert f"{job['params']['c']}-{job['params']['n']}" == tag, (jobid, tag, job["params"])

    # what is stored came from a sent line, once; never from a line refused outright
    stored_tags: dict[str, int] = {}
    for jobid, job in jobs.items():
        assert job["jobname"] == "record" and job["state"] == "done", (jobid, job["state"], job["msg"])
        tag = f"{job['params']['c']}-{job['params']['n']}"
        assert tag not in stored_tags, f"line {tag} stored twice: jobs {stored_tags[tag]} and {jobid}"
        stored_tags[tag] = jobid
        if tag in refused:
            assert AMBIGUOUS in refused[tag], f"line {tag} was answered {refused[tag]!r} yet stored as {jobid}"
    unacked_done = set(stored_tags) - set(acked)
    assert unacked_done <= unanswered | set(refused), \
        f"stored without an ACK although answered: {sorted(unacked_done - unanswered)[:10]}"

    ended_then_rerun = check_history(d.read_records(), jobs)
    reruns = sum(1 for j in jobs.values() if j["attempts"] > 1)
    print(f"chaos on {db_url.split(':')[0]}: {KILLS} kills in {load_seconds:.0f}s, {sent} lines sent, "
          f"{len(acked)} ACKed, {len(refused)} ERR, {len(unanswered)} unanswered (killed mid-request), "
          f"{len(unacked_done)} done but never ACKed (allowed), {reruns} jobs re-run after a kill "
          f"({ended_then_rerun} of them after their run had ended, before its outcome was committed)")
    assert len(acked) > 0 and len(unacked_done) <= len(unanswered)
