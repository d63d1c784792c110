"""upq_counts (issue 14): the per (type, state) counts kept by triggers match the jobs table
after every kind of change, on SQLite and MariaDB, and a database from before them is counted."""
from __future__ import annotations

from sqlalchemy import create_engine, func, select, text

from conftest import wait_for
from helpers.client import stats
from upqcounts import TRIGGERS, counts
from upqschema import jobs
from upqstates import shown


def real_url(d) -> str:
    """The daemon's database url, a SQLite './' resolved against its folder."""
    return d.db_url.replace("sqlite:///./", f"sqlite:///{d.dir}/")


def truth(url: str) -> dict[tuple[str, str], int]:
    """The counts by a GROUP BY over the jobs table, as `stats` shows states."""
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            out: dict[tuple[str, str], int] = {}
            for name, state, n in conn.execute(select(jobs.c.jobname, jobs.c.state, func.count())
                                               .group_by(jobs.c.jobname, jobs.c.state)):
                key = (name, "queued" if shown(state) == "new" else str(shown(state)))
                out[key] = out.get(key, 0) + n
            return out
    finally:
        eng.dispose()


def shown_counts(d) -> dict[tuple[str, str], int]:
    return {(name, state): n for name, per in stats(d)["jobs"].items() for state, n in per.items()
            if state != "workers" and n}


def test_counts_follow_every_change(make_daemon, db_url) -> None:
    d = make_daemon(jobs={"record": {"concurrent": "2"}, "fail": {}, "flaky": {"retries": "1", "retry_delay": "0.2"},
                          "gate": {"concurrent": "1"}})
    url = real_url(d)
    try:
        done = [d.submit("record") for _ in range(5)]
        failed = d.submit("fail")
        flaky = d.submit("flaky succeed_on:2")
        running = d.submit("gate")
        queued = d.submit("gate")
        delayed = d.submit("record @delay:3600")
        cancelled = d.submit("record @delay:3600")
        assert d.ask(f"cancel {cancelled}").startswith("ACK ")
        for jobid in done + [failed, flaky]:
            d.wait_job(jobid)
        wait_for(lambda: d.job(running)["state"] == "running", 15, "the gate job to run")
        assert d.ask(f"retry {failed}").startswith("ACK ")
        d.wait_job(failed)
        assert shown_counts(d) == truth(url)
        got = shown_counts(d)
        assert got[("record", "done")] == 5 and got[("flaky", "done")] == 1 and got[("fail", "failed")] == 1
        assert got[("gate", "running")] == 1 and got[("gate", "queued")] == 1
        assert got[("record", "queued")] == 1 and got[("record", "cancelled")] == 1, (delayed, queued)
    finally:
        (d.dir / "gate.open").touch()
    wait_for(lambda: shown_counts(d).get(("gate", "done")) == 2, 15, "the gate jobs to end")
    assert shown_counts(d) == truth(url)


def test_a_database_without_counts_is_counted_at_start(make_daemon, db_url) -> None:
    d = make_daemon(jobs={"record": {}})
    ids = [d.submit("record") for _ in range(4)]
    for jobid in ids:
        d.wait_job(jobid)
    d.stop()
    eng = create_engine(real_url(d))
    with eng.begin() as conn:               # as a database made before upq_counts existed
        for name in TRIGGERS:
            conn.execute(text(f"DROP TRIGGER {name}"))
        counts.drop(conn)
    eng.dispose()
    d.start()
    assert shown_counts(d) == {("record", "done"): 4} == truth(real_url(d))
    d.submit("record @delay:600")
    assert shown_counts(d) == {("record", "done"): 4, ("record", "queued"): 1}
