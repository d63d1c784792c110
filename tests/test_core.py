"""The core of upq as a user meets it: submit, status, wait, list, stats, help, the
parameter forms, pipelining, concurrency limits, inline jobs, and upq-cli.py —
against a real daemon over its socket, on SQLite and on MariaDB.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid

import pytest

from conftest import Daemon, wait_for
from helpers.records import max_overlap, runs

DAEMON_JOBS = {
    "hello": {"concurrent": "8", "greeting": "Hi"},
    "fail": {},
    "sleep": {"concurrent": "2"},
    "record": {"concurrent": "2"},
    "resize": {"concurrent": "3", "var": "big"},
    "stamp": {},
}
JOB_FIELDS = {"jobid", "jobname", "state", "params", "msg", "result", "attempts", "created",
              "started", "finished", "run_after"}
STATE_NAMES = {"new", "running", "done", "failed", "cancelled"}


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 UTC as SPEC allows it: a `Z` or `+00:00` suffix."""
    assert text.endswith(("Z", "+00:00")), text
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert t.utcoffset() == dt.timedelta(0), text
    return t


def payload(answer: str, kind: str = "ACK"):
    assert answer.startswith(kind + " "), answer[:300]
    return json.loads(answer[len(kind) + 1:])


def tag() -> str:
    return uuid.uuid4().hex[:10]


# -- submit, status, wait --------------------------------------------------------------

def test_submit_answers_ack_jobid_without_trailing_space(shared_daemon: Daemon) -> None:
    answer = shared_daemon.ask("hello name:x")
    assert re.fullmatch(r"ACK [1-9]\d*", answer), repr(answer)


def test_status_json_has_every_field_before_and_after_the_run(shared_daemon: Daemon) -> None:
    jobid = shared_daemon.submit("record sleep:0.5")
    early = shared_daemon.job(jobid)
    assert JOB_FIELDS <= set(early), early
    assert early["jobid"] == jobid and early["jobname"] == "record"
    assert early["state"] in ("new", "running")
    assert early["params"] == {"sleep": "0.5"}
    assert early["msg"] == "" and early["result"] is None
    assert early["finished"] is None and early["run_after"] is None
    parse_time(early["created"])

    job = shared_daemon.wait_job(jobid)
    assert JOB_FIELDS <= set(job), job
    assert job["state"] == "done"
    assert job["msg"] == f"recorded {jobid}"
    assert job["result"] == {"attempt": 1}
    assert job["attempts"] == 1
    assert job["run_after"] is None
    created, started, finished = (parse_time(job[k]) for k in ("created", "started", "finished"))
    assert created <= started <= finished
    assert finished - started >= dt.timedelta(seconds=0.4)
    assert abs(dt.datetime.now(dt.timezone.utc) - created) < dt.timedelta(minutes=5)
    again = shared_daemon.job(jobid)
    assert {k: again[k] for k in JOB_FIELDS} == {k: job[k] for k in JOB_FIELDS}


def test_wait_answers_ack_json_for_a_done_job(shared_daemon: Daemon) -> None:
    jobid = shared_daemon.submit("hello name:Ann")
    with shared_daemon.connect() as conn:
        job = payload(conn.ask(f"wait {jobid}"))
        again = payload(conn.ask(f"wait {jobid} timeout:0"))     # already ended: answered at once
    assert job["state"] == "done" and job["msg"] == "Hi Ann" and job["result"] == {"greeted": "Ann"}
    assert {k: again[k] for k in JOB_FIELDS} == {k: job[k] for k in JOB_FIELDS}


def test_wait_on_a_failed_job_answers_err_json(shared_daemon: Daemon) -> None:
    jobid = shared_daemon.submit('fail reason:"disk on fire"')
    with shared_daemon.connect() as conn:
        job = payload(conn.ask(f"wait {jobid} timeout:15"), "ERR")
    assert job["jobid"] == jobid and job["state"] == "failed"
    assert job["msg"] == "failed on purpose: disk on fire"
    assert job["finished"] is not None


def test_wait_with_timeout_on_a_long_job_answers_err_timeout(shared_daemon: Daemon) -> None:
    jobid = shared_daemon.submit("sleep seconds:3")
    t0 = time.monotonic()
    with shared_daemon.connect() as conn:
        answer = conn.ask(f"wait {jobid} timeout:0.3")
        elapsed = time.monotonic() - t0
        assert answer.startswith("ERR timeout"), answer
        assert 0.25 <= elapsed < 2.5, elapsed
        assert conn.ask("ping") == "ACK pong"
    assert shared_daemon.job(jobid)["state"] in ("new", "running")


def test_wait_answers_a_client_that_only_closed_its_sending_side(shared_daemon: Daemon) -> None:
    """`printf 'wait 7\\n' | nc -N -U upq.sock` half-closes after the request: that client has not
    gone away (it still reads), so it must get the job, not a timeout it never asked for."""
    import socket
    jobid = shared_daemon.submit("sleep seconds:1")
    with shared_daemon.connect(timeout=20) as conn:
        conn.send(f"wait {jobid}\n")
        conn.sock.shutdown(socket.SHUT_WR)
        answer = conn.line()
    assert answer.startswith("ACK {"), answer
    assert json.loads(answer[4:])["state"] == "done"


def test_half_closed_client_gets_every_pipelined_answer(shared_daemon: Daemon) -> None:
    import socket
    with shared_daemon.connect() as conn:
        conn.send("hello name:h\nping\nnosuch\n")
        conn.sock.shutdown(socket.SHUT_WR)
        answers = [conn.line() for _ in range(3)]
    assert re.fullmatch(r"ACK \d+", answers[0]) and answers[1] == "ACK pong" and answers[2].startswith("ERR ")


def test_status_of_a_running_job_says_running(shared_daemon: Daemon) -> None:
    jobid = shared_daemon.submit("sleep seconds:1")
    job = wait_for(lambda: (j := shared_daemon.job(jobid))["state"] == "running" and j, 5, "running")
    assert job["started"] is not None and job["finished"] is None and job["attempts"] == 1


# -- parameter forms -------------------------------------------------------------------

PARAM_FORMS = [
    ("name:x", {"name": "x"}),
    ("name=x", {"name": "x"}),
    ('name:"a b  c"', {"name": "a b  c"}),
    ('name="a b"', {"name": "a b"}),
    ("url:http://h:80/x", {"url": "http://h:80/x"}),
    ("eq=a=b:c", {"eq": "a=b:c"}),
    ("col:a=b", {"col": "a=b"}),
    ("bare", {"bare": ""}),
    ("empty:", {"empty": ""}),
    ("empty=", {"empty": ""}),
    ('empty:""', {"empty": ""}),
    (r'q:"say \"hi\""', {"q": 'say "hi"'}),
    (r'bs:"back\\slash"', {"bs": "back\\slash"}),
    ("uni:Zoë☃", {"uni": "Zoë☃"}),
    ('file:"a b.png"', {"file": "a b.png"}),
]


@pytest.mark.parametrize("text,expected", PARAM_FORMS, ids=[t for t, _ in PARAM_FORMS])
def test_param_form_is_stored_as_sent(shared_daemon: Daemon, text: str, expected: dict) -> None:
    jobid = shared_daemon.submit(f"record {text}")
    assert shared_daemon.job(jobid)["params"] == expected


def test_all_param_forms_on_one_line(shared_daemon: Daemon) -> None:
    forms = [(t, e) for t, e in PARAM_FORMS if t == "name:x" or not t.startswith(("name", "empty"))]
    line = " ".join(t for t, _ in forms) + " empty:"
    expected = {k: v for _, e in forms for k, v in e.items()} | {"empty": ""}
    jobid = shared_daemon.submit(f"hello   {line}  ")
    job = shared_daemon.wait_job(jobid)
    assert job["params"] == expected
    assert job["state"] == "done" and job["msg"] == "Hi x"


def test_trailing_carriage_return_is_stripped(shared_daemon: Daemon) -> None:
    with shared_daemon.connect() as conn:
        conn.send(b"ping\r\n")
        assert conn.line() == "ACK pong"
        conn.send(b"hello name:cr\r\n")
        answer = conn.line()
    assert re.fullmatch(r"ACK \d+", answer), repr(answer)
    assert shared_daemon.job(int(answer[4:]))["params"] == {"name": "cr"}


# -- pipelining ------------------------------------------------------------------------

def test_pipelining_1000_submissions_gets_1000_answers_in_order(shared_daemon: Daemon) -> None:
    n = 1000
    with shared_daemon.connect(timeout=60) as conn:
        conn.send("".join(f"hello name:n{i}\n" for i in range(n)) + "ping\n")
        answers = [conn.line() for _ in range(n)]
        assert conn.line() == "ACK pong"          # exactly n answers came before it
        assert all(re.fullmatch(r"ACK \d+", a) for a in answers), [a for a in answers if not a.startswith("ACK")][:5]
        ids = [int(a[4:]) for a in answers]
        assert ids == sorted(ids) and len(set(ids)) == n
        # all of them end done, and each id belongs to the line it answered
        conn.send("".join(f"wait {jobid} timeout:60\n" for jobid in ids))
        jobs = [payload(conn.line()) for _ in ids]
    assert [j["jobid"] for j in jobs] == ids
    assert all(j["state"] == "done" for j in jobs)
    assert [j["params"]["name"] for j in jobs] == [f"n{i}" for i in range(n)]
    assert [j["result"] for j in jobs] == [{"greeted": f"n{i}"} for i in range(n)]


def test_pipelined_mixed_requests_answer_in_order(shared_daemon: Daemon) -> None:
    with shared_daemon.connect() as conn:
        conn.send("ping\nhello name:a\nnosuch\nhello\nping\nhello name:b\nstats\n")
        answers = [conn.line() for _ in range(7)]
    assert answers[0] == "ACK pong" and answers[4] == "ACK pong"
    assert re.fullmatch(r"ACK \d+", answers[1]) and re.fullmatch(r"ACK \d+", answers[5])
    assert int(answers[5][4:]) > int(answers[1][4:])
    assert answers[2].startswith("ERR ") and answers[3] == "ERR name missing"
    assert "jobs" in payload(answers[6])


# -- list, stats, help -----------------------------------------------------------------

def test_list_is_newest_first_with_limit_and_state_filter(shared_daemon: Daemon) -> None:
    t = tag()
    ids = [shared_daemon.submit(f"hello name:{t}{i}") for i in range(3)]
    failed = shared_daemon.submit("fail")
    shared_daemon.wait_job(failed)
    for jobid in ids:
        shared_daemon.wait_job(jobid)
    newest = payload(shared_daemon.ask("list limit:4"))
    assert [j["jobid"] for j in newest] == [failed] + ids[::-1]
    assert all(JOB_FIELDS <= set(j) for j in newest)
    assert payload(shared_daemon.ask("list_queue limit:4")) == newest

    done = payload(shared_daemon.ask("list done limit:1000"))
    assert done and all(j["state"] == "done" for j in done)
    assert set(ids) <= {j["jobid"] for j in done} and failed not in {j["jobid"] for j in done}
    assert [j["jobid"] for j in done] == sorted((j["jobid"] for j in done), reverse=True)
    only_failed = payload(shared_daemon.ask("list failed"))
    assert only_failed[0]["jobid"] == failed and all(j["state"] == "failed" for j in only_failed)
    assert payload(shared_daemon.ask("list_queue failed limit:1"))[0]["jobid"] == failed
    assert payload(shared_daemon.ask("list cancelled")) == []


def test_list_limit_defaults_to_100_and_allows_1000_at_most(shared_daemon: Daemon) -> None:
    with shared_daemon.connect(timeout=60) as conn:
        conn.send("".join(f"hello name:l{i}\n" for i in range(101)))
        assert all(conn.line().startswith("ACK ") for _ in range(101))
    assert len(payload(shared_daemon.ask("list"))) == 100
    assert len(payload(shared_daemon.ask("list limit:1"))) == 1
    assert len(payload(shared_daemon.ask("list limit:1000"))) > 100
    assert shared_daemon.ask("list limit:1001").startswith("ERR ")
    assert shared_daemon.ask("list_queue limit:5000").startswith("ERR ")


def test_stats_counts_per_job_type_and_lists_this_node(make_daemon) -> None:
    d = make_daemon(jobs={"hello": {"concurrent": "3"}, "fail": {}, "record": {"concurrent": "0"}})
    empty = payload(d.ask("stats"))
    assert set(empty) >= {"jobs", "nodes"}
    zero = {"queued": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0}

    def shape(counts: dict) -> dict:
        return {k: counts[k] for k in (*zero, "workers")}
    assert set(empty["jobs"]) == {"hello", "fail", "record"}
    assert shape(empty["jobs"]["hello"]) == {**zero, "workers": 3}
    assert shape(empty["jobs"]["fail"]) == {**zero, "workers": 1}
    assert {k: empty["jobs"]["record"][k] for k in zero} == zero
    assert isinstance(empty["nodes"], list) and len(empty["nodes"]) == 1
    ids = [d.submit("hello name:s") for _ in range(2)]
    for jobid in ids + [d.submit("fail")]:
        d.wait_job(jobid)
    assert d.ask("record").startswith("ACK ")
    stats = payload(d.ask("stats"))
    assert shape(stats["jobs"]["hello"]) == {**zero, "done": 2, "workers": 3}
    assert shape(stats["jobs"]["fail"]) == {**zero, "failed": 1, "workers": 1}
    assert {k: stats["jobs"]["record"][k] for k in zero} == {**zero, "done": 1}
    assert len(stats["nodes"]) == 1


def test_help_lists_commands_and_enabled_jobs(shared_daemon: Daemon) -> None:
    help_ = payload(shared_daemon.ask("help"))
    text = json.dumps(help_)
    for command in ("ping", "status", "wait", "list", "stats", "help"):
        assert command in text, command
    jobs = help_.get("jobs")
    assert jobs is not None and set(DAEMON_JOBS) <= set(jobs), help_


def test_ping_answers_pong(shared_daemon: Daemon) -> None:
    assert shared_daemon.ask("ping") == "ACK pong"


# -- concurrency ---------------------------------------------------------------------

def test_concurrency_limit_is_held(make_daemon) -> None:
    d = make_daemon(jobs={"record": {"concurrent": "2"}})
    with d.connect() as conn:
        conn.send("record sleep:0.3\n" * 10)
        ids = [int(conn.line()[4:]) for _ in range(10)]
    for jobid in ids:
        assert d.wait_job(jobid)["state"] == "done"
    records = d.read_records()
    assert sorted(int(r[1]) for r in records if r[0] == "start") == ids
    assert sorted(int(r[1]) for r in records if r[0] == "end") == ids
    assert max_overlap(runs(records)) == 2, records


def test_only_jobs_actually_running_are_shown_running(make_daemon) -> None:
    """With concurrent = 2 and a backlog, `running` (status, list, stats) means the 2 runs in
    progress; the rest stay `new` with attempts 0 (SPEC: `attempts` counts runs started)."""
    d = make_daemon(jobs={"gate": {"concurrent": "2"}})
    with d.connect() as conn:
        conn.send("gate pass\n" * 4 + "gate\n" * 40)       # workers come back for more while a backlog waits
        passing = [int(conn.line()[4:]) for _ in range(4)]
        ids = [int(conn.line()[4:]) for _ in range(40)]
    for jobid in passing:
        assert d.wait_job(jobid)["state"] == "done"
    wait_for(lambda: len([r for r in d.read_records() if r[0] == "start"]) == 6, 10, "2 gate runs")
    started = {int(r[1]) for r in d.read_records()} - set(passing)
    # a start is committed a moment after run() begins (workers do not wait for it): poll
    wait_for(lambda: {j["jobid"] for j in payload(d.ask("list running"))} == started, 5,
             f"exactly the started jobs {sorted(started)} to show running")
    assert payload(d.ask("stats"))["jobs"]["gate"]["running"] == 2
    waiting = [d.job(jobid) for jobid in ids if jobid not in started]
    assert all(j["state"] == "new" and j["attempts"] == 0 and j["started"] is None for j in waiting), \
        [(j["jobid"], j["state"], j["attempts"]) for j in waiting if j["state"] != "new" or j["attempts"]][:10]
    (d.dir / "gate.open").touch()
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in
               [d.wait_job(jobid) for jobid in ids])


def test_concurrent_zero_runs_inline_and_answers_after_the_run(make_daemon) -> None:
    d = make_daemon(jobs={"record": {"concurrent": "0"}, "fail": {"concurrent": "0"}})
    t0 = time.monotonic()
    answer = d.ask("record sleep:0.3")
    assert time.monotonic() - t0 >= 0.3
    m = re.fullmatch(r"ACK (\d+) recorded (\d+)", answer)
    assert m and m.group(1) == m.group(2), answer
    jobid = int(m.group(1))
    # the run is over by the time the answer arrives
    assert [r[:3] for r in d.read_records()] == [["start", str(jobid), "1"], ["end", str(jobid), "1"]]
    job = d.job(jobid)
    assert job["state"] == "done" and job["attempts"] == 1 and job["result"] == {"attempt": 1}

    answer = d.ask("fail reason:inline")
    assert answer.startswith("ERR ") and "failed on purpose: inline" in answer, answer
    failed = payload(d.ask("list failed"))
    assert len(failed) == 1 and failed[0]["jobname"] == "fail" and failed[0]["msg"] == "failed on purpose: inline"
    assert payload(d.ask("stats"))["jobs"]["record"]["done"] == 1


def test_inline_jobs_run_side_by_side_on_separate_connections(make_daemon) -> None:
    d = make_daemon(jobs={"record": {"concurrent": "0"}})
    a, b = d.connect(), d.connect()
    try:
        a.send("record sleep:0.5\n")
        b.send("record sleep:0.5\n")
        assert a.line().startswith("ACK ") and b.line().startswith("ACK ")
    finally:
        a.close()
        b.close()
    assert max_overlap(d.runs()) == 2


# -- 2011-style jobs ---------------------------------------------------------------------

def test_job_that_enqueues_itself_in_check_runs_once(shared_daemon: Daemon) -> None:
    t = tag()
    answer = shared_daemon.ask(f"sleep seconds:0.1 tag:{t}")
    assert re.fullmatch(r"ACK \d+", answer), answer
    jobid = int(answer[4:])
    job = shared_daemon.wait_job(jobid)
    assert job["state"] == "done" and job["msg"] == "slept 0.1 s" and job["attempts"] == 1
    assert job["params"] == {"seconds": "0.1", "tag": t}
    mine = [j for j in payload(shared_daemon.ask("list limit:1000")) if j["params"].get("tag") == t]
    assert [j["jobid"] for j in mine] == [jobid], mine


def test_resize_job_from_the_issue_with_a_quoted_file_name(shared_daemon: Daemon) -> None:
    jobid = shared_daemon.submit('resize file:"a b.png"')
    job = shared_daemon.wait_job(jobid)
    assert job["state"] == "done", job
    assert job["params"] == {"file": "a b.png"}
    assert job["msg"] == "resized a b.png to big" and job["result"] == {"file": "a b.png", "size": "big"}
    assert shared_daemon.ask("resize").startswith("ERR file missing")


@pytest.mark.parametrize("line", ["stamp a:1 drop:x", "stamp a:1 drop:x early"], ids=["plain", "enqueued-in-check"])
def test_jobdata_is_stored_as_check_leaves_it(shared_daemon: Daemon, line: str) -> None:
    jobid = shared_daemon.submit(line)
    job = shared_daemon.wait_job(jobid)
    expected = {"a": "1", "stamped": "yes"} | ({"early": ""} if "early" in line else {})
    assert job["state"] == "done" and job["params"] == expected, job
    assert job["result"] == expected


def test_jobdata_is_stored_as_check_leaves_it_inline(make_daemon) -> None:
    d = make_daemon(jobs={"stamp": {"concurrent": "0"}})
    for line, extra in (("stamp a:1 drop:x", {}), ("stamp a:1 early", {"early": ""})):
        answer = d.ask(line)
        assert answer.startswith("ACK "), answer
        job = d.job(int(answer.split()[1]))
        assert job["state"] == "done" and job["attempts"] == 1, job
        assert job["params"] == job["result"] == {"a": "1", "stamped": "yes", **extra}, job
    assert [j["jobid"] for j in payload(d.ask("list"))] == [2, 1]


# -- upq-cli.py ----------------------------------------------------------------------------

def test_cli_submits_and_exits_0_on_ack(shared_daemon: Daemon) -> None:
    r = shared_daemon.cli("hello", "name:cli")
    assert r.returncode == 0, r
    assert re.fullmatch(r"ACK \d+\n", r.stdout), r.stdout
    r2 = shared_daemon.cli("hello name:cli")
    assert r2.returncode == 0 and re.fullmatch(r"ACK \d+\n", r2.stdout), r2
    assert shared_daemon.job(int(r.stdout.split()[1]))["params"] == {"name": "cli"}


def test_cli_finds_the_socket_through_the_config_file(shared_daemon: Daemon) -> None:
    import os
    import subprocess
    import sys
    from conftest import CLI
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPQ_")}
    r = subprocess.run([sys.executable, str(CLI), "-c", str(shared_daemon.cfg), "ping"], cwd="/",
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0 and r.stdout == "ACK pong\n", r
    r = subprocess.run([sys.executable, str(CLI), "ping"], cwd="/", capture_output=True, text=True,
                       timeout=30, env={**env, "UPQ_SOCKET": shared_daemon.socket})
    assert r.returncode == 0 and r.stdout == "ACK pong\n", r


def test_cli_exits_1_on_err(shared_daemon: Daemon) -> None:
    r = shared_daemon.cli("nosuchjob")
    assert r.returncode == 1 and r.stdout.startswith("ERR "), r
    r = shared_daemon.cli("status", "999999999")
    assert r.returncode == 1 and r.stdout.startswith("ERR "), r


def test_cli_exits_2_when_it_cannot_connect() -> None:
    import subprocess
    import sys
    from conftest import CLI
    missing = "/tmp/upq-no-such-dir/upq.sock"
    r = subprocess.run([sys.executable, str(CLI), "-s", missing, "ping"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2, r
    assert missing in r.stderr and "is upq running" in r.stderr, r.stderr


def test_cli_exits_2_on_usage_errors(shared_daemon: Daemon) -> None:
    r = shared_daemon.cli()
    assert r.returncode == 2, r
    r = shared_daemon.cli("--wait", "-", stdin="ping\n")
    assert r.returncode == 2, r


def test_cli_wait_prints_the_finished_job(shared_daemon: Daemon) -> None:
    r = shared_daemon.cli("--wait", "hello", "name:w")
    assert r.returncode == 0, r
    assert r.stdout.startswith("ACK {"), r.stdout
    job = json.loads(r.stdout[4:])
    assert job["state"] == "done" and job["msg"] == "Hi w"
    r = shared_daemon.cli("--wait", "fail", "reason:nope")
    assert r.returncode == 1, r
    assert json.loads(r.stdout[4:])["state"] == "failed"


def test_cli_json_prints_only_the_indented_payload(shared_daemon: Daemon) -> None:
    jobid = shared_daemon.submit("hello name:j")
    shared_daemon.wait_job(jobid)
    r = shared_daemon.cli("--json", "status", str(jobid))
    assert r.returncode == 0, r
    assert not r.stdout.startswith("ACK") and "\n  " in r.stdout, r.stdout
    assert json.loads(r.stdout)["jobid"] == jobid
    r = shared_daemon.cli("--json", "--wait", "hello", "name:jw")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "done", r
    r = shared_daemon.cli("--json", "stats")
    assert r.returncode == 0 and "hello" in json.loads(r.stdout)["jobs"], r


def test_cli_dash_pipelines_stdin_lines(shared_daemon: Daemon) -> None:
    lines = [f"hello name:p{i}" for i in range(50)] + ["ping"]
    r = shared_daemon.cli("-", stdin="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert len(out) == 51 and out[-1] == "ACK pong"
    ids = [int(a[4:]) for a in out[:-1]]
    assert ids == sorted(ids) and len(set(ids)) == 50
    r = shared_daemon.cli("-", stdin="ping\nnosuchjob\nping\n")
    assert r.returncode == 1 and r.stdout.splitlines()[0] == "ACK pong" \
        and r.stdout.splitlines()[1].startswith("ERR ") and r.stdout.splitlines()[2] == "ACK pong", r


@pytest.mark.parametrize("args", [
    ("resize", 'file:a b.png'),              # what the shell makes of: resize file:"a b.png"
    ("resize", 'file=a b.png'),
    ('resize file:"a b.png"',),              # the whole line as one argument
])
def test_cli_keeps_a_value_with_spaces_in_one_param(shared_daemon: Daemon, args: tuple) -> None:
    r = shared_daemon.cli("--wait", *args)
    assert r.returncode == 0, r
    job = json.loads(r.stdout[4:])
    assert job["params"] == {"file": "a b.png"} and job["msg"] == "resized a b.png to big", job


def test_cli_keeps_quotes_and_backslashes_in_values(shared_daemon: Daemon) -> None:
    r = shared_daemon.cli("record", 'note:say "hi" \\o/', "path:C:\\dir x")
    assert r.returncode == 0, r
    assert shared_daemon.job(int(r.stdout.split()[1]))["params"] == {"note": 'say "hi" \\o/',
                                                                      "path": "C:\\dir x"}
