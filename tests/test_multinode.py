"""Several daemons, one database (SPEC: "Several daemons, one database"; issue 7).

Real daemon processes, each in its own folder with its own socket, config and
`records.log`, all on the test's database: a fresh MariaDB database for the
multi-host behaviour, one SQLite file for the single-host case. Which daemon ran
a job is read from the records file it wrote to; `list`/`stats` show the database's view.
"""
from __future__ import annotations

import hashlib
import json
import re
import signal
import threading
import time
from collections import Counter

from conftest import MYSQL_ONLY, SQLITE_ONLY, Daemon, wait_for
from helpers.client import job_ids, pipeline, stats, submit_many
from helpers.records import max_overlap

FAST_NODES = {"node_timeout": "2"}


# -- helpers ----------------------------------------------------------------------------

def ended_count(d: Daemon, jobname: str) -> int:
    counts = stats(d)["jobs"].get(jobname, {})
    return sum(counts.get(s, 0) for s in ("done", "failed", "cancelled"))


def all_jobs(d: Daemon) -> dict[int, dict]:
    """jobid -> job JSON for up to 1000 jobs (`list`'s maximum)."""
    answer = d.ask("list limit:1000")
    assert answer.startswith("ACK ["), answer
    return {j["jobid"]: j for j in json.loads(answer[4:])}


def wait_all_ended(d: Daemon, jobname: str, n: int, timeout: float) -> dict[int, dict]:
    wait_for(lambda: ended_count(d, jobname) >= n, timeout, f"{n} {jobname} jobs to end")
    return all_jobs(d)


def node_of(d: Daemon) -> str:
    """This daemon's entry in `stats.nodes`, found by its pid."""
    mine = [n for n in stats(d)["nodes"] if n["pid"] == d.proc.pid]
    assert len(mine) == 1, stats(d)["nodes"]
    return mine[0]["node"]


def three_daemons(make_daemon, concurrent: tuple[int, int, int], **server: str) -> list[Daemon]:
    return [make_daemon(jobs={"record": {"concurrent": str(c)}}, subdir=name, server=server or None)
            for name, c in zip("abc", concurrent)]


def exited_or_up(d: Daemon) -> bool:
    if d.proc.poll() is not None:
        return True
    try:
        return d._up()
    except AssertionError:                  # exited meanwhile
        return True


def outcome(job: dict) -> tuple:
    return tuple(job[k] for k in ("state", "attempts", "node", "msg", "result", "started", "finished"))


def started_jobs(d: Daemon) -> set[int]:
    return {r.jobid for r in d.runs()}


# -- spreading the work -------------------------------------------------------------------

@MYSQL_ONLY
def test_submissions_to_one_daemon_spread_across_all_three(make_daemon) -> None:
    daemons = three_daemons(make_daemon, (2, 2, 2))
    ids = submit_many(daemons[0], ["record sleep:0.02"] * 300)
    jobs = wait_all_ended(daemons[1], "record", 300, 60)

    assert sorted(jobs) == sorted(ids)
    assert all(j["state"] == "done" for j in jobs.values()), \
        Counter((j["state"], j["msg"]) for j in jobs.values())
    per_daemon = {d.dir.name: started_jobs(d) for d in daemons}
    assert all(per_daemon.values()), {k: len(v) for k, v in per_daemon.items()}
    assert sum(len(v) for v in per_daemon.values()) == 300
    assert set().union(*per_daemon.values()) == set(ids)

    nodes = stats(daemons[2])["nodes"]
    assert len(nodes) == 3 and all(n["state"] == "alive" for n in nodes), nodes
    assert sorted(n["pid"] for n in nodes) == sorted(d.proc.pid for d in daemons)
    # `list` says which node ran each job, and it is the daemon whose records hold it
    names = {d.dir.name: node_of(d) for d in daemons}
    for dirname, ran in per_daemon.items():
        for jobid in ran:
            assert jobs[jobid]["node"] == names[dirname], (jobid, jobs[jobid]["node"], dirname)


@MYSQL_ONLY
def test_no_job_runs_twice_and_runs_never_overlap_across_daemons(make_daemon) -> None:
    daemons = three_daemons(make_daemon, (2, 2, 2))
    ids: list[int] = []
    for d in daemons:                       # submissions to every daemon at once
        ids += submit_many(d, ["record sleep:0.01"] * 100)
    jobs = wait_all_ended(daemons[0], "record", 300, 60)
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in jobs.values())

    everything = [r for d in daemons for r in d.runs()]
    starts = Counter(r.jobid for r in everything)
    assert set(starts) == set(ids)
    assert [j for j, n in starts.items() if n != 1] == [], "jobs started more than once"
    assert {r.attempt for r in everything} == {1}
    assert all(r.end is not None for r in everything)


@MYSQL_ONLY
def test_each_daemon_respects_its_own_concurrent(make_daemon) -> None:
    daemons = three_daemons(make_daemon, (1, 2, 3))
    submit_many(daemons[0], ["record sleep:0.05"] * 120)
    wait_all_ended(daemons[0], "record", 120, 60)
    overlap = {d.dir.name: max_overlap(d.runs()) for d in daemons}
    ran = {d.dir.name: len(d.runs()) for d in daemons}
    assert sum(ran.values()) == 120, ran
    assert overlap["a"] <= 1 and overlap["b"] <= 2 and overlap["c"] <= 3, overlap
    # and the busy ones really used their slots (so the bound above was tested)
    assert overlap["c"] >= 2, (overlap, ran)


# -- a daemon dies or pauses ------------------------------------------------------------

@MYSQL_ONLY
def test_sigkill_of_one_daemon_reruns_its_jobs_once_on_the_others(make_daemon) -> None:
    victim = make_daemon(jobs={"gate": {"concurrent": "2"}}, subdir="a", server=FAST_NODES)
    held = [victim.submit("gate") for _ in range(2)]      # its gate stays shut: both keep running
    wait_for(lambda: set(held) <= set(victim.starts()), 10, "the victim to start both jobs")
    survivors = [make_daemon(jobs={"gate": {"concurrent": "2"}}, subdir=name, server=FAST_NODES, start=False)
                 for name in "bc"]
    for d in survivors:
        (d.dir / "gate.open").touch()
        d.start()
    others = [survivors[0].submit("gate") for _ in range(4)]
    for jobid in others:
        assert survivors[0].wait_job(jobid)["state"] == "done"
    victim_node = node_of(victim)
    assert {j: victim.job(j)["state"] for j in held} == {j: "running" for j in held}

    victim.kill(signal.SIGKILL)
    killed = time.monotonic()
    for jobid in held:
        job = survivors[1].wait_job(jobid, timeout=2 + 10)
        assert job["state"] == "done", job
        assert job["attempts"] == 2, job
        assert job["node"] in {node_of(d) for d in survivors}, job
    assert time.monotonic() - killed < 2 + 10

    reruns = Counter(int(r[1]) for d in survivors for r in d.read_records() if r[0] == "start")
    assert {j: reruns[j] for j in held} == {j: 1 for j in held}, "each re-run exactly once"
    assert all(int(r[2]) == 2 for d in survivors for r in d.read_records() if int(r[1]) in held)
    requeue = re.compile(rf"node {re.escape(victim_node)} is dead .*re-queued its 2 running job")
    reapers = [d.dir.name for d in survivors if requeue.search(d.log())]
    assert len(reapers) == 1, f"re-queue logged by {reapers}"
    nodes = {n["node"]: n["state"] for n in stats(survivors[0])["nodes"]}
    assert nodes[victim_node] == "dead", nodes
    assert all(j["attempts"] == 1 for j in map(survivors[0].job, others))


@MYSQL_ONLY
def test_sigstop_past_the_lease_then_sigcont_records_no_second_outcome(make_daemon) -> None:
    paused = make_daemon(jobs={"record": {"concurrent": "2"}}, subdir="a", server=FAST_NODES)
    # short: re-run elsewhere ends before the paused one resumes; long: the paused run ends
    # (and tries to record) while its re-run is still running elsewhere
    short, long_ = paused.submit("record sleep:3"), paused.submit("record sleep:12")
    wait_for(lambda: {short, long_} <= started_jobs(paused), 10, "both jobs to start on a")
    other = make_daemon(jobs={"record": {"concurrent": "2"}}, subdir="b", server=FAST_NODES)
    paused_node, other_node = node_of(paused), node_of(other)
    paused.kill(signal.SIGSTOP)
    try:
        done = other.wait_job(short, timeout=2 + 3 + 10)
        assert (done["state"], done["attempts"], done["node"]) == ("done", 2, other_node), done
        rerun_long = wait_for(lambda: (j := other.job(long_))["attempts"] == 2 and j, 5,
                              "the long job to be re-run on b")
        assert (rerun_long["state"], rerun_long["node"]) == ("running", other_node), rerun_long
    finally:
        paused.kill(signal.SIGCONT)

    discarded = re.compile(rf"job {short}: outcome \w+ discarded")
    try:
        wait_for(lambda: discarded.search(paused.log()), 10, "the resumed daemon to discard its late outcome")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- a's log:\n{paused.log()[-4000:]}\n--- b's log:\n{other.log()[-3000:]}"
                             f"\n--- job: {other.job(short)}") from None
    assert outcome(other.job(short)) == outcome(done), "the late outcome changed the job"
    wait_for(lambda: "was declared dead" in paused.log(), 5, "the resumed daemon to learn it was declared dead")

    # the long one: the paused run ends while the re-run is in progress on b
    wait_for(lambda: re.search(rf"job {long_}: outcome \w+ discarded", paused.log()), 15,
             "the resumed daemon to discard the long job's outcome")
    mid = other.job(long_)
    assert (mid["state"], mid["attempts"], mid["node"]) == ("running", 2, other_node), mid
    final = other.wait_job(long_, timeout=20)
    assert (final["state"], final["attempts"], final["node"]) == ("done", 2, other_node), final

    a_runs = {r.jobid: r for r in paused.runs()}
    b_runs = {r.jobid: r for r in other.runs()}
    assert a_runs[short].attempt == 1 and b_runs[short].attempt == 2
    assert a_runs[short].end > b_runs[short].end, "the paused run should end after the re-run"
    assert a_runs[long_].end < b_runs[long_].end
    for jobid in (short, long_):                       # and nothing flips back afterwards
        assert paused.job(jobid)["state"] == "done"
        assert paused.job(jobid)["node"] == other_node
    nodes = {n["node"]: n["state"] for n in stats(other)["nodes"]}
    assert nodes == {paused_node: "alive", other_node: "alive"}, nodes


# -- node names -----------------------------------------------------------------------------

@MYSQL_ONLY
def test_second_daemon_with_a_live_node_name_refuses_to_start_on_mariadb(make_daemon) -> None:
    first = make_daemon(jobs={"record": {}}, subdir="a", server={"node_name": "twin"})
    running = first.submit("record sleep:2")
    wait_for(lambda: running in started_jobs(first), 10, "the job to start")
    second = make_daemon(jobs={"record": {}}, subdir="b", server={"node_name": "twin"}, start=False)
    second.start(expect_ok=False)
    assert second.proc.wait(timeout=30) != 0
    message = second.stderr()
    assert "node_name" in message and "twin" in message, message
    assert "Traceback" not in message, message
    job = first.wait_job(running)
    assert (job["state"], job["attempts"]) == ("done", 1), job
    assert [n["pid"] for n in stats(first)["nodes"]] == [first.proc.pid]
    assert started_jobs(second) == set()


@MYSQL_ONLY
def test_node_name_stays_held_when_the_lock_connection_is_cut(make_daemon, db_url: str) -> None:
    """The GET_LOCK connection sits idle for the daemon's lifetime: MariaDB's wait_timeout
    (8 h by default), a proxy or a failover cuts it, and the lock goes with it. Killing
    that connection stands in for all of those; the live daemon must still own its name."""
    from sqlalchemy import create_engine, text
    first = make_daemon(jobs={"record": {}}, subdir="a", server={"node_name": "twin"})
    running = first.submit("record sleep:4")
    wait_for(lambda: running in started_jobs(first), 10, "the job to start")
    admin = create_engine(db_url)
    try:
        with admin.connect() as conn:
            holder = conn.execute(text("SELECT IS_USED_LOCK(:n)"),
                                  {"n": "upq:" + hashlib.sha1(b"twin").hexdigest()}).scalar()
            assert holder, "the node name lock is not held"
            conn.execute(text(f"KILL CONNECTION {int(holder)}"))
    finally:
        admin.dispose()
    assert first.ask("ping") == "ACK pong"
    second = make_daemon(jobs={"record": {}}, subdir="b", server={"node_name": "twin"}, start=False)
    second.start(expect_ok=False)
    wait_for(lambda: exited_or_up(second), 20, "the second daemon to refuse or start")
    job = first.wait_job(running)
    reruns = [r.attempt for r in second.runs()]
    assert second.proc.poll() is not None, \
        f"a second daemon took the live node name 'twin' (it re-ran job {running}: attempts {reruns})"
    assert (job["state"], job["attempts"]) == ("done", 1), job


@SQLITE_ONLY
def test_second_daemon_with_a_live_node_name_refuses_to_start_on_sqlite(make_daemon) -> None:
    """SQLite has no GET_LOCK: register() refuses when the row's pid is alive on this host.

    A refused start must leave the live daemon's registration alone, so a third try
    is refused too and never re-queues the live daemon's running jobs."""
    first = make_daemon(jobs={"record": {}}, subdir="a", server={"node_name": "twin"})
    share = first.db_url.replace("./upq.db", str(first.dir / "upq.db"))
    running = first.submit("record sleep:3")
    wait_for(lambda: running in started_jobs(first), 10, "the job to start")
    pids: dict[str, list[int]] = {}
    for name in "bc":
        again = make_daemon(jobs={"record": {}}, subdir=name, server={"node_name": "twin"}, start=False)
        again.db_url = share
        again.write_config({"record": {}})
        again.start(expect_ok=False)
        wait_for(lambda: exited_or_up(again), 20, f"daemon {name} to refuse or start")
        assert again.proc.poll() is not None, f"daemon {name} started with node name 'twin' held by a live one"
        assert again.proc.returncode != 0
        assert "twin" in again.stderr() and "Traceback" not in again.stderr(), again.stderr()
        pids[name] = [n["pid"] for n in stats(first)["nodes"]]
    job = first.wait_job(running)
    assert (job["state"], job["attempts"]) == ("done", 1), job
    assert [r.attempt for r in first.runs()] == [1]
    assert pids == {"b": [first.proc.pid], "c": [first.proc.pid]}, "a refused start rewrote the node row"


@SQLITE_ONLY
def test_two_daemons_on_one_sqlite_file_share_the_work_safely(make_daemon) -> None:
    a = make_daemon(jobs={"record": {"concurrent": "2"}}, subdir="a")
    b = make_daemon(jobs={"record": {"concurrent": "2"}}, subdir="b", start=False)
    b.db_url = a.db_url.replace("./upq.db", str(a.dir / "upq.db"))
    b.write_config({"record": {"concurrent": "2"}})
    b.start()
    ids = submit_many(a, ["record sleep:0.01"] * 100) + submit_many(b, ["record sleep:0.01"] * 100)
    jobs = wait_all_ended(b, "record", 200, 60)
    assert sorted(jobs) == sorted(ids)
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in jobs.values())
    per = {d.dir.name: [r.jobid for r in d.runs()] for d in (a, b)}
    starts = Counter(per["a"] + per["b"])
    assert set(starts) == set(ids) and set(starts.values()) == {1}
    assert per["a"] and per["b"], {k: len(v) for k, v in per.items()}
    assert len(stats(a)["nodes"]) == 2


# -- contention -------------------------------------------------------------------------------

@MYSQL_ONLY
def test_burst_on_three_daemons_loses_and_duplicates_nothing(make_daemon) -> None:
    daemons = three_daemons(make_daemon, (4, 4, 4))
    answers: dict[str, list[str]] = {}

    def burst(d: Daemon, n: int) -> None:
        answers[d.dir.name] = pipeline(d, ["record"] * n, chunk=50)

    threads = [threading.Thread(target=burst, args=(d, n)) for d, n in zip(daemons, (334, 333, 333))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "submissions hung"
    ids = [i for d in daemons for i in job_ids(answers[d.dir.name])]
    assert len(set(ids)) == 1000
    jobs = wait_all_ended(daemons[0], "record", 1000, 60)
    assert sorted(jobs) == sorted(ids)
    assert Counter(j["state"] for j in jobs.values()) == {"done": 1000}
    assert {j["attempts"] for j in jobs.values()} == {1}
    starts = Counter(r.jobid for d in daemons for r in d.runs())
    assert set(starts) == set(ids) and set(starts.values()) == {1}
    for d in daemons:
        assert d.proc.poll() is None
        assert "Traceback" not in d.log(), d.log()[-3000:]


@MYSQL_ONLY
def test_cancel_sent_to_another_daemon_reaches_the_running_job(make_daemon) -> None:
    """The cancel flag is in the database; the daemon running the job sees it at its heartbeat."""
    a = make_daemon(jobs={"coop": {}}, subdir="a")
    b = make_daemon(jobs={"hello": {}}, subdir="b")
    jobid = a.submit("coop max:20")
    wait_for(lambda: any(r[0] == "coop" for r in a.read_records()), 10, "the coop job to start on a")
    answer = b.ask(f"cancel {jobid}")
    assert answer.startswith("ACK {"), answer
    job = b.wait_job(jobid, 10)
    assert job["state"] == "cancelled" and job["msg"] == "saw self.cancelled", job
    assert any(r[0] == "coopsaw" for r in a.read_records())
