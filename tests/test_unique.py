"""Unique jobs on real daemons: one stored job under concurrent submitters on two daemons,
a new job once the first ended, retry of a job whose twin is active refused by name."""

import threading

from sqlalchemy import create_engine, select

from conftest import MYSQL_ONLY, SQLITE_ONLY, wait_for
from upqschema import jobs

UNIQUE_SLEEP = {"sleep": {"concurrent": "1", "unique": "seconds"}}


@MYSQL_ONLY
def test_eight_submitters_on_two_daemons_store_one_job(make_daemon):
    a = make_daemon(jobs=UNIQUE_SLEEP, subdir="a")
    b = make_daemon(jobs=UNIQUE_SLEEP, subdir="b")
    answers: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(8)

    def client(d):
        with d.connect() as conn:
            go.wait()
            # pipelined: all five lines sent before reading an answer
            conn.send("".join(f"sleep seconds:6 who:{i}\n" for i in range(5)))
            got = [conn.line() for _ in range(5)]
        with lock:
            answers.extend(got)

    threads = [threading.Thread(target=client, args=(a if i % 2 else b,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 40 and all(x.startswith("ACK ") for x in answers), answers
    ids = {x.split()[1] for x in answers}
    assert len(ids) == 1, answers
    assert sum(1 for x in answers if x.endswith(" duplicate")) == 39
    with create_engine(a.db_url).connect() as conn:
        stored = conn.execute(select(jobs.c.jobid, jobs.c.state)).all()
    assert len(stored) == 1, stored  # no second job, no held row left behind


@SQLITE_ONLY
def test_a_new_job_once_the_first_ended(make_daemon):
    d = make_daemon(jobs={"hello": {"unique": "name"}})
    first = d.submit("hello name:x")
    assert d.ask("hello name:y").split()[1] != str(first)  # other values: another job
    d.wait_job(first)
    again = d.ask("hello name:x extra:1")  # extra is not a unique param
    assert again.startswith("ACK ") and again.split()[1] != str(first) and "duplicate" not in again


@SQLITE_ONLY
def test_duplicate_answers_the_twin_and_stores_nothing(make_daemon):
    d = make_daemon(jobs={"sleep": {"concurrent": "1", "unique": "*"}})
    first = d.submit("sleep seconds:20")
    assert d.ask("sleep seconds:20") == f"ACK {first} duplicate"
    assert d.ask("sleep seconds:20 @delay:5") == f"ACK {first} duplicate"
    assert d.ask("sleep seconds:19").split()[1] != str(first)
    assert d.ask(f"cancel {first}").startswith("ACK")


@SQLITE_ONLY
def test_retry_with_an_active_twin_names_it(make_daemon):
    d = make_daemon(jobs={"sleep": {"concurrent": "1", "unique": "seconds"}})
    first = d.submit("sleep seconds:30")
    wait_for(lambda: d.job(first)["state"] == "running", timeout=15, what="the first to run")
    d.ask(f"cancel {first}")
    wait_for(lambda: d.job(first)["state"] == "cancelled", timeout=15, what="the cancel")
    twin = d.submit("sleep seconds:30")
    assert twin != first
    answer = d.ask(f"retry {first}")
    assert answer.startswith("ERR") and f"job {twin}" in answer, answer
    d.ask(f"cancel {twin}")
    wait_for(lambda: d.job(twin)["state"] == "cancelled", timeout=15, what="the twin's cancel")
    assert d.ask(f"retry {first}").startswith("ACK")
    assert d.ask("sleep seconds:30") == f"ACK {first} duplicate"  # retried: active again
    d.ask(f"cancel {first}")


@SQLITE_ONLY
def test_pipelined_twins_in_one_commit_store_one_job(make_daemon):
    d = make_daemon(jobs={"sleep": {"concurrent": "1", "unique": "seconds"}})
    blocker = d.submit("sleep seconds:8")
    wait_for(lambda: d.job(blocker)["state"] == "running", timeout=15, what="the blocker to run")
    with d.connect() as conn:
        conn.send("".join(f"sleep seconds:{10 + i % 3} i:{i}\n" for i in range(30)))
        answers = [conn.line() for _ in range(30)]
    ids: dict[int, set[str]] = {}
    for i, answer in enumerate(answers):
        assert answer.startswith("ACK "), answer
        ids.setdefault(i % 3, set()).add(answer.split()[1])
    assert all(len(v) == 1 for v in ids.values()), answers
    assert len({next(iter(v)) for v in ids.values()}) == 3
    assert [a for a in answers if not a.endswith(" duplicate")] == answers[:3]
    for jobid in [blocker] + [int(next(iter(v))) for v in ids.values()]:
        d.ask(f"cancel {jobid}")
