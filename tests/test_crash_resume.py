"""Jobs survive kill -9 and restarts; start-up refuses what it must (SPEC: durability, the daemon).

Real daemon processes on SQLite and on a fresh MariaDB database; histories come
from the `record` and `gate` test jobs' start/end lines.
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path

import pytest

from conftest import Conn, Daemon, wait_for
from helpers.client import pipeline, stats, wait_all


# -- kill -9 ---------------------------------------------------------------------------

def test_kill_minus_nine_loses_no_acked_job_and_reruns_only_the_interrupted_one(make_daemon) -> None:
    d = make_daemon(jobs={"record": {"concurrent": "1"}})
    done_before = [d.submit("record") for _ in range(3)]
    for jobid in done_before:
        assert d.wait_job(jobid)["state"] == "done"
    running = d.submit("record sleep:1")
    queued = [d.submit("record") for _ in range(8)]
    wait_for(lambda: running in d.starts(), 10, "the long job to start")
    assert d.job(running)["state"] == "running"
    d.kill(signal.SIGKILL)
    before = d.starts()
    assert before[running] == [1]
    assert not any(jobid in before for jobid in queued), "queued jobs ran while one was running"

    d.start()
    jobs = list(wait_all(d, done_before + [running] + queued).values())
    assert all(j["state"] == "done" for j in jobs), [(j["jobid"], j["state"], j["msg"]) for j in jobs]
    after = d.starts()
    for jobid in done_before:
        assert after[jobid] == [1], f"job {jobid} was done before the kill and ran again: {after[jobid]}"
    assert after[running] == [1, 2]
    assert d.job(running)["attempts"] == 2 and d.job(running)["result"] == {"attempt": 2}
    for jobid in queued:
        assert after[jobid] == [1], (jobid, after[jobid])
        assert d.job(jobid)["attempts"] == 1
    assert set(after) == set(done_before + [running] + queued)


def test_kill_minus_nine_during_submissions_keeps_every_acked_job(make_daemon) -> None:
    d = make_daemon(jobs={"record": {"concurrent": "2"}})
    acked: list[int] = []
    stop = threading.Event()

    def submitter() -> None:
        try:
            with Conn(d.socket, timeout=10) as conn:
                while not stop.is_set():
                    conn.send("record\nrecord\nrecord\nrecord\n")
                    for _ in range(4):
                        answer = conn.line()
                        if answer.startswith("ACK "):
                            acked.append(int(answer.split()[1]))
        except (OSError, ConnectionError):
            pass                                  # the daemon died under us: expected

    t = threading.Thread(target=submitter, daemon=True)
    t.start()
    wait_for(lambda: len(acked) >= 200, 20, "200 ACKs")
    d.kill(signal.SIGKILL)
    stop.set()
    t.join(15)
    assert not t.is_alive()
    ids = list(acked)
    d.start()
    jobs = list(wait_all(d, ids).values())
    assert all(j["state"] == "done" for j in jobs), [(j["jobid"], j["state"]) for j in jobs if j["state"] != "done"]
    history = d.starts()
    assert set(ids) <= set(history)
    # besides the ACKed jobs, only lines still in flight at the kill may have been stored
    assert all(jobid > max(ids) for jobid in set(history) - set(ids)), sorted(set(history) - set(ids))
    for jobid, attempts in history.items():
        # at most one re-run, for a job the kill interrupted ([2] alone: claimed, killed before
        # run() wrote its start line)
        assert attempts in ([1], [1, 2], [2]), (jobid, attempts)


def test_restart_with_a_2000_job_backlog_resumes_them_all(make_daemon) -> None:
    n = 2000
    d = make_daemon(jobs={"gate": {"concurrent": "16"}})
    answers = pipeline(d, [f"gate i:{i}" for i in range(n)])
    assert all(re.fullmatch(r"ACK \d+", a) for a in answers)
    ids = [int(a[4:]) for a in answers]
    assert len(set(ids)) == n
    wait_for(lambda: len(d.starts()) == 16, 10, "16 gate jobs to block their workers")
    d.kill(signal.SIGKILL)
    interrupted = set(d.starts())

    (d.dir / "gate.open").touch()
    d.start()

    def all_done() -> bool:
        counts = stats(d)["jobs"]["gate"]
        assert counts["failed"] == 0 and counts["cancelled"] == 0, counts
        return counts["done"] == n
    wait_for(all_done, 60, f"{n} gate jobs to end done")
    history = d.starts()
    assert set(history) == set(ids)
    assert {jobid for jobid, a in history.items() if a == [1, 2]} == interrupted
    # every worker was blocked in a run at the kill, so no other job had been started: each ran
    # once, as attempt 1 (SPEC: `attempts` counts runs started)
    odd = {jobid: a for jobid, a in history.items() if jobid not in interrupted and a != [1]}
    assert not odd, (f"{len(odd)} jobs that had not started before the kill ran with these attempt "
                     f"numbers: {dict(list(odd.items())[:10])}")
    assert len(json.loads(d.ask("list done limit:1000")[4:])) == 1000


def test_kill_minus_nine_during_an_inline_run_reruns_it_at_start(make_daemon) -> None:
    """SPEC: at start upq re-runs every job its previous run left `running`; concurrent = 0 too."""
    d = make_daemon(jobs={"record": {"concurrent": "0"}})
    conn = d.connect()
    try:
        conn.send("record sleep:1\n")
        wait_for(d.starts, 10, "the inline job to start")
        d.kill(signal.SIGKILL)
    finally:
        conn.close()
    (jobid,) = d.starts()
    d.start()
    with d.connect() as c:
        answer = c.ask(f"wait {jobid} timeout:5")
    assert answer.startswith("ACK {"), f"{answer}; status: {d.ask(f'status {jobid}')}"
    job = json.loads(answer[4:])
    assert job["state"] == "done" and job["attempts"] == 2, job
    assert d.starts()[jobid] == [1, 2]


# -- clean stop and start-up refusals ----------------------------------------------------

def test_sigterm_exits_0_and_removes_the_socket(make_daemon) -> None:
    d = make_daemon(jobs={"hello": {}})
    assert d.wait_job(d.submit("hello name:x"))["state"] == "done"
    assert os.path.exists(d.socket)
    assert d.stop() == 0
    assert not os.path.exists(d.socket)
    d.start()                                     # and it starts again on the same files
    assert d.ask("ping") == "ACK pong"


def test_second_daemon_on_a_live_socket_refuses_and_leaves_it_alone(make_daemon, db_url) -> None:
    first = make_daemon(jobs={"hello": {}})
    inode = os.stat(first.socket).st_ino
    second = make_daemon(jobs={"hello": {}}, start=False, subdir="second")
    second.cfg.write_text(second.cfg.read_text().replace("socket = ./upq.sock", f"socket = {first.socket}"))
    second.start(expect_ok=False)
    code = second.proc.wait(timeout=30)
    assert code != 0
    message = second.stderr()
    assert first.socket in message and re.search(r"already|in use|another", message, re.I), message
    assert "Traceback" not in message, message
    assert os.stat(first.socket).st_ino == inode
    node = stats(first)["nodes"][0]
    if "pid" in node:                             # SPEC leaves a node's fields open
        assert node["pid"] == first.proc.pid
    assert first.wait_job(first.submit("hello name:still"))["state"] == "done"


def test_stale_socket_file_left_by_kill_minus_nine_is_replaced(make_daemon) -> None:
    d = make_daemon(jobs={"hello": {}})
    d.kill(signal.SIGKILL)
    assert os.path.exists(d.socket), "kill -9 should leave the socket file behind"
    d.start()
    assert d.wait_job(d.submit("hello name:again"))["state"] == "done"


BAD_CONFIGS = [
    ("shutdown_grace = 5", "shutdown_grace = soon", "[server]", "shutdown_grace"),
    ("[db]\n", "[db]\ncolour = blue\n", "[db]", "colour"),
    ("[job hello]\nenabled = true\n", "[job hello]\nenabled = true\nconcurrent = -1\n", "[job hello]", "concurrent"),
    ("[job hello]\nenabled = true\n", "[job hello]\nenabled = maybe\n", "[job hello]", "enabled"),
    ("[job hello]\nenabled = true\n", "[job hello]\nconcurrent = 1\n", "[job hello]", "enabled"),
    ("[logging]\nloglevel = debug", "[logging]\nloglevel = chatty", "[logging]", "loglevel"),
    ("[job hello]", "[job nosuchmodule]", "[job nosuchmodule]", "nosuchmodule"),
    ("[job hello]", "[job ping]", "[job ping]", "ping"),
    ("[job hello]", "[bogus]", "[bogus]", "bogus"),
]


@pytest.mark.parametrize("old,new,section,key", BAD_CONFIGS, ids=[c[3] + "-" + c[1].split()[-1] for c in BAD_CONFIGS])
def test_bad_config_exits_non_zero_naming_section_and_key(workdir: Path, sqlite_url: str, old: str, new: str,
                                                          section: str, key: str) -> None:
    d = Daemon(workdir, sqlite_url, {"hello": {}})
    text = d.cfg.read_text()
    assert old in text
    d.cfg.write_text(text.replace(old, new, 1))
    code, message = start_and_expect_refusal(d)
    assert code != 0
    assert str(d.cfg) in message and section in message and key in message, message
    assert "Traceback" not in message, message
    assert not os.path.exists(d.socket)


def start_and_expect_refusal(d: Daemon) -> tuple[int, str]:
    """Start a daemon that must refuse; its exit status and stderr."""
    d.start(expect_ok=False)
    try:
        code = d.proc.wait(timeout=30)
    finally:
        d.kill_if_running()
    return code, d.stderr()


@pytest.mark.parametrize("socket_path", ["./nodir/upq.sock", "./" + "s" * 150 + ".sock"],
                         ids=["missing-folder", "path-too-long"])
def test_unusable_socket_path_stops_the_start_with_a_clear_message(workdir: Path, sqlite_url: str,
                                                                  socket_path: str) -> None:
    d = Daemon(workdir, sqlite_url, {"hello": {}})
    d.cfg.write_text(d.cfg.read_text().replace("socket = ./upq.sock", f"socket = {socket_path}"))
    code, message = start_and_expect_refusal(d)
    assert code != 0
    assert "[paths] socket" in message and "Traceback" not in message, message


def test_socket_path_holding_a_regular_file_is_not_deleted(workdir: Path, sqlite_url: str) -> None:
    """Only a stale *socket* is replaced; a mistyped `socket =` must not destroy a user's file."""
    d = Daemon(workdir, sqlite_url, {"hello": {}})
    Path(d.socket).write_text("precious\n")
    d.start(expect_ok=False)
    try:
        wait_for(lambda: d.proc.poll() is not None or not Path(d.socket).is_file(), 20,
                 "upq to exit or to touch the file")
    finally:
        d.kill_if_running()
    assert Path(d.socket).is_file() and Path(d.socket).read_text() == "precious\n", \
        "upq deleted a regular file that sat at its socket path"
    message = d.stderr()
    assert d.proc.returncode != 0 and d.socket in message and "Traceback" not in message, message


def test_socket_path_holding_a_directory_stops_the_start_with_a_clear_message(workdir: Path,
                                                                             sqlite_url: str) -> None:
    d = Daemon(workdir, sqlite_url, {"hello": {}})
    os.mkdir(d.socket)
    code, message = start_and_expect_refusal(d)
    assert code != 0
    assert os.path.isdir(d.socket)
    assert d.socket in message and "Traceback" not in message, message
