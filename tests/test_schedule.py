"""Periodic jobs on real daemons: exactly once across two daemons, catch-up once, overlap skip,
`due` in the job JSON, the `schedules` command and its table, config errors."""

import datetime as dt
import json
import subprocess
import sys
import time

from sqlalchemy import create_engine, insert, select

from conftest import MYSQL_ONLY, SQLITE_ONLY, UPQ, wait_for
from upqschema import jobs, schedule_runs

EVERY2 = {"hello": {"schedule": "every 2s", "schedule_params": "name:tick"}}


def engine_of(d):
    url = d.db_url.replace("sqlite:///./", f"sqlite:///{d.dir}/")
    return create_engine(url)


def periodic_jobs(d, name="hello"):
    with engine_of(d).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(jobs.c.jobid, jobs.c.due, jobs.c.state).where(jobs.c.jobname == name, jobs.c.due.is_not(None))
            .order_by(jobs.c.due))]


def parse_iso(text):
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@MYSQL_ONLY
def test_every_2s_on_two_daemons_is_exactly_once(make_daemon):
    a = make_daemon(jobs=EVERY2, subdir="a")
    b = make_daemon(jobs=EVERY2, subdir="b")
    wait_for(lambda: len(periodic_jobs(a)) >= 12, timeout=40, what="12 periodic runs")
    a.stop()
    b.stop()
    rows = periodic_jobs(a)
    dues = [r["due"] for r in rows]
    assert len(dues) == len(set(dues)), "a due time was submitted twice"
    steps = {(y - x).total_seconds() for x, y in zip(dues, dues[1:])}
    assert steps == {2.0}, f"due times missing or off the 2 s grid: {steps}"
    assert all(d.microsecond == 0 and d.second % 2 == 0 for d in dues)
    log = a.log() + b.log()
    assert "Traceback" not in log and "IntegrityError" not in log and "Duplicate" not in log
    # every stored run was logged by the one daemon that won it; the losers spoke at debug level
    won = [line for line in log.splitlines() if " INFO " in line and "periodic hello due" in line]
    assert len(won) >= len(rows)
    assert not [line for line in log.splitlines() if "periodic" in line and (" WARNING " in line or " ERROR " in line)]


@SQLITE_ONLY
def test_due_in_job_json_and_schedules_command(make_daemon):
    d = make_daemon(jobs={**EVERY2, "fail": {}})
    wait_for(lambda: periodic_jobs(d), timeout=15, what="a periodic run")
    job = d.wait_job(periodic_jobs(d)[0]["jobid"])
    assert job["state"] == "done" and job["msg"].endswith("tick")
    assert parse_iso(job["due"]).second % 2 == 0
    plain = d.job(d.submit("hello name:x"))
    assert plain["due"] is None
    answer = d.ask("schedules")
    assert answer.startswith("ACK ")
    (entry,) = json.loads(answer[4:])
    assert entry["jobname"] == "hello" and entry["schedule"] == "every 2s" and entry["tz"] == "UTC"
    assert parse_iso(entry["next"]) > parse_iso(entry["last"])
    assert entry["last_jobid"] is not None
    table = d.cli("schedules")
    assert table.returncode == 0 and "hello" in table.stdout and "every 2s" in table.stdout
    assert table.stdout.split()[:3] == ["jobname", "schedule", "tz"] and "ACK" not in table.stdout
    assert json.loads(d.cli("--json", "schedules").stdout)[0]["jobname"] == "hello"
    assert d.ask("schedules now").startswith("ERR")


@SQLITE_ONLY
def test_missed_runs_are_made_up_once(make_daemon):
    cfg = {"hello": {"schedule": "every 1h", "schedule_params": "name:late"}}
    d = make_daemon(jobs=cfg, start=False)
    d.start()
    d.stop()  # the schema exists now; pretend the last run was 5 hours ago
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, minute=0, second=0, microsecond=0)
    with engine_of(d).begin() as conn:
        conn.execute(insert(schedule_runs).values(jobname="hello", due=now - dt.timedelta(hours=5), note=""))
    d.start()
    wait_for(lambda: periodic_jobs(d), timeout=15, what="the catch-up run")
    time.sleep(2.5)  # more looks of the scheduler must not make up the missed runs again
    rows = periodic_jobs(d)
    assert rows[0]["due"] >= now and len(rows) <= 2  # (a second only if an hour began meanwhile)
    with engine_of(d).connect() as conn:
        notes = [r.note for r in conn.execute(select(schedule_runs.c.note).where(schedule_runs.c.jobid.is_not(None)))]
    assert [n for n in notes if n.startswith("catch-up")] == ["catch-up of 5 missed"], notes
    assert "catch-up" in d.log()


@SQLITE_ONLY
def test_overlap_skip_while_previous_run_is_active(make_daemon):
    cfg = {"sleep": {"schedule": "every 1s", "schedule_params": "seconds:3", "concurrent": "2"}}
    d = make_daemon(jobs=cfg)
    wait_for(lambda: periodic_jobs(d, "sleep"), timeout=15, what="a periodic run")
    first = periodic_jobs(d, "sleep")[0]
    done = d.wait_job(first["jobid"], timeout=20)
    wait_for(lambda: len(periodic_jobs(d, "sleep")) >= 2, timeout=10, what="the next run")
    second = d.job(periodic_jobs(d, "sleep")[1]["jobid"])
    d.kill()
    # one run at a time: 3 s runs on a 1 s schedule; the next is queued only after the first
    # ended, and the due times skipped meanwhile are noted and logged
    assert parse_iso(second["created"]) >= parse_iso(done["finished"])
    assert "skipped: its previous run is still queued or running" in d.log()
    with engine_of(d).connect() as conn:
        skipped = conn.execute(select(schedule_runs.c.due).where(schedule_runs.c.note.like("skipped%"))).all()
    assert len(skipped) >= 2


@SQLITE_ONLY
def test_overlap_allow_queues_anyway(make_daemon):
    cfg = {"sleep": {"schedule": "every 1s", "schedule_params": "seconds:5", "concurrent": "1",
                     "schedule_overlap": "allow"}}
    d = make_daemon(jobs=cfg)
    wait_for(lambda: len(periodic_jobs(d, "sleep")) >= 3, timeout=15, what="3 overlapping runs")
    assert "skipped" not in d.log()


def check_config(tmp_path, body):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[paths]\nsocket = ./s.sock\njobs_dir = ./jobs\n[db]\nurl = sqlite:///./x.db\n"
                   "[server]\nallow_root = true\n" + body)
    return subprocess.run([sys.executable, str(UPQ), "-c", str(cfg), "--check-config"],
                          capture_output=True, text=True, timeout=60)


def test_bad_schedule_and_zone_are_config_errors(tmp_path):
    out = check_config(tmp_path, "[job hello]\nenabled = true\nschedule = 61 * * * *\n"
                                 "[job sleep]\nenabled = true\nschedule = @daily\nschedule_tz = Mars/Base\n"
                                 "[job fail]\nenabled = true\nschedule = every 5m\nschedule_overlap = maybe\n"
                                 "[job record]\nenabled = true\npriority = 500\nunique = a/b\n")
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "bad.cfg" in text and "[job hello] schedule" in text and "out of range" in text
    assert "[job sleep] schedule_tz" in text and "Mars/Base" in text
    assert "[job fail] schedule_overlap" in text
    assert "[job record] priority" in text and "[job record] unique" in text
