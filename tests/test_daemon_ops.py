"""Running upq under init systems: notify, --daemon, the init script, signals, reload, TCP
(SPEC: "The daemon", [server]; issue 5).

Real processes and real signals, on SQLite only (nothing here depends on the database).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CLI, ROOT, UPQ, Daemon, wait_for
from helpers.client import log_has, stats
from helpers.net import TcpConn, free_port

CONTRIB = ROOT / "contrib"
START_STOP_DAEMON = shutil.which("start-stop-daemon", path="/usr/sbin:/sbin:/usr/bin:/bin")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
JOBS = {"hello": {"concurrent": "2"}, "record": {"concurrent": "2"}, "gate": {"concurrent": "1"},
        "sleep": {"concurrent": "2"}}


@pytest.fixture
def db_url() -> str:
    """Overrides conftest's SQLite/MariaDB parametrization: these tests are about the process."""
    return "sqlite:///./upq.db"


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """Pids of detached daemons (not our children) to SIGKILL at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- helpers -------------------------------------------------------------------------------

def set_server(d: Daemon, **settings: object) -> None:
    """Rewrite keys of the config's [server] section; a value of None removes the key."""
    text = d.cfg.read_text()
    head, rest = text.split("[server]\n", 1)
    body, sep, tail = rest.partition("\n[")
    lines = [ln for ln in body.splitlines() if ln.split("=")[0].strip() not in settings]
    lines += [f"{k} = {v}" for k, v in settings.items() if v is not None]
    d.cfg.write_text(head + "[server]\n" + "\n".join(lines) + "\n" + sep + tail)


def run_upq(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(UPQ), *args], capture_output=True, text=True,
                          timeout=timeout, cwd="/", env=env)


def popen_upq(d: Daemon, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start upq in the foreground like Daemon.start, with an environment of our choice."""
    out = open(d.dir / "stderr.log", "ab")
    d.proc = subprocess.Popen([sys.executable, str(UPQ), "-c", str(d.cfg)], stdout=out, stderr=out,
                              cwd="/", env=env)
    out.close()
    return d.proc


def process_gone(pid: int) -> bool:
    """Dead, or a zombie nobody reaped (a detached daemon is not our child)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def pid_in(pidfile: Path) -> int:
    return int(pidfile.read_text().strip())


def read_pid(pidfile: Path) -> int:
    """The pid in pidfile; 0 while it is missing or not yet written (created empty, then written)."""
    try:
        text = pidfile.read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def wait_pidfile(pidfile: Path, timeout: float = 10, not_pid: int = 0) -> int:
    """The pid once the pidfile holds one (other than not_pid)."""
    return wait_for(lambda: read_pid(pidfile) not in (0, not_pid) and read_pid(pidfile), timeout,
                    f"a pid in {pidfile}")  # type: ignore[return-value]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen(["true"])
    p.wait(timeout=10)
    return p.pid


def help_jobs(d: Daemon) -> dict:
    answer = d.ask("help")
    assert answer.startswith("ACK "), answer
    return json.loads(answer[4:])["jobs"]


# -- systemd -------------------------------------------------------------------------------

def test_service_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    unit = (CONTRIB / "upq.service").read_text()
    assert re.search(r"^Type=notify$", unit, re.M)
    assert re.search(r"^User=upq$", unit, re.M)
    exec_start = re.search(r"^ExecStart=(\S+) (\S+) (.*)$", unit, re.M)
    assert exec_start and exec_start.group(1, 2) == ("/opt/upq/.venv/bin/python", "/opt/upq/upq.py")
    # /opt/upq is not installed here and verify would say so: point ExecStart at files that
    # exist, change nothing else.
    local = unit.replace(exec_start.group(0), f"ExecStart={sys.executable} {UPQ} {exec_start.group(3)}")
    (tmp_path / "upq.service").write_text(local)
    res = subprocess.run([SYSTEMD_ANALYZE, "verify", str(tmp_path / "upq.service")],
                         capture_output=True, text=True, timeout=60)
    # verify reports most problems as warnings and still exits 0: any output is a failure
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stdout + res.stderr


def test_ready_is_sent_once_serving_and_stopping_on_sigterm(make_daemon) -> None:
    d = make_daemon(jobs=JOBS, start=False)
    sockdir = tempfile.mkdtemp(prefix="upqn-", dir="/tmp")
    notify_path = os.path.join(sockdir, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(notify_path)
        listener.settimeout(20)
        try:
            popen_upq(d, env={**os.environ, "NOTIFY_SOCKET": notify_path})
            assert listener.recv(4096) == b"READY=1"
            assert d.answers_ping(), "READY=1 came before upq answered"
            d.proc.send_signal(signal.SIGTERM)
            assert listener.recv(4096) == b"STOPPING=1"
            assert d.proc.wait(timeout=20) == 0
        finally:
            shutil.rmtree(sockdir, ignore_errors=True)


# -- --daemon and the pidfile -------------------------------------------------------------------

def test_daemon_detaches_writes_the_pidfile_and_stops_on_sigterm(make_daemon, reap) -> None:
    d = make_daemon(jobs=JOBS, start=False)
    pidfile = d.dir / "run" / "upq.pid"
    pidfile.parent.mkdir()
    t0 = time.monotonic()
    launcher = subprocess.Popen([sys.executable, str(UPQ), "--daemon", "--pidfile", str(pidfile),
                                 "-c", str(d.cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd="/")
    out, err = launcher.communicate(timeout=20)
    assert launcher.returncode == 0, err
    assert time.monotonic() - t0 < 15
    assert out == "" and err == ""
    pid = wait_pidfile(pidfile)
    reap.append(pid)
    assert pid != launcher.pid and not process_gone(pid)
    assert os.getsid(pid) != os.getsid(0), "the daemon is still in the launcher's session"
    wait_for(d.answers_ping, 20, "the detached daemon to answer")
    assert d.wait_job(d.submit("hello name:daemon"))["state"] == "done"

    os.kill(pid_in(pidfile), signal.SIGTERM)
    wait_for(lambda: process_gone(pid), 20, "the daemon to exit on SIGTERM")
    assert not pidfile.exists()
    assert not os.path.exists(d.socket)
    assert "stopped" in d.log()


def test_stale_pidfile_is_replaced_and_logged(make_daemon, reap) -> None:
    d = make_daemon(jobs=JOBS, start=False)
    pidfile = d.dir / "upq.pid"
    gone = dead_pid()
    pidfile.write_text(f"{gone}\n")
    res = run_upq("--daemon", "--pidfile", str(pidfile), "-c", str(d.cfg))
    assert res.returncode == 0, res.stderr
    pid = wait_pidfile(pidfile, not_pid=gone)
    reap.append(pid)
    wait_for(d.answers_ping, 20, "the daemon to answer")
    assert re.search(rf"stale pidfile {re.escape(str(pidfile))}.*{gone}", d.log()), d.log()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: process_gone(pid), 20, "the daemon to exit")


def test_live_pidfile_and_live_socket_stop_a_second_start_with_a_message(make_daemon, reap) -> None:
    first = make_daemon(jobs=JOBS, start=False)
    pidfile = first.dir / "upq.pid"
    assert run_upq("--daemon", "--pidfile", str(pidfile), "-c", str(first.cfg)).returncode == 0
    pid = wait_pidfile(pidfile)
    reap.append(pid)
    wait_for(first.answers_ping, 20, "the first daemon")

    # same pidfile, another socket: the pidfile is what stops it
    other = make_daemon(jobs=JOBS, start=False, subdir="other")
    res = run_upq("--daemon", "--pidfile", str(pidfile), "-c", str(other.cfg))
    assert res.returncode != 0
    assert str(pidfile) in res.stderr and str(pid) in res.stderr, res.stderr
    assert not os.path.exists(other.socket)
    # same socket, another pidfile: the live socket is what stops it, before detaching
    res = run_upq("--daemon", "--pidfile", str(other.dir / "upq.pid"), "-c", str(first.cfg))
    assert res.returncode != 0
    assert "already" in res.stderr and first.socket in res.stderr, res.stderr
    assert not (other.dir / "upq.pid").exists()

    assert pid_in(pidfile) == pid and first.answers_ping()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: process_gone(pid), 20, "the daemon to exit")


def test_daemon_exiting_after_the_grace_removes_its_pidfile_too(make_daemon, reap) -> None:
    d = make_daemon(jobs=JOBS, start=False)
    set_server(d, shutdown_grace=1)
    pidfile = d.dir / "upq.pid"
    assert run_upq("--daemon", "--pidfile", str(pidfile), "-c", str(d.cfg)).returncode == 0
    pid = wait_pidfile(pidfile)
    reap.append(pid)
    wait_for(d.answers_ping, 20, "the daemon to answer")
    jobid = d.submit("gate")
    wait_for(lambda: d.starts()[jobid], 10, "the job to start")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: process_gone(pid), 10, "the daemon to exit after the grace")
    assert "jobs still running after" in d.log()
    assert not pidfile.exists(), "a pidfile left behind may name an unrelated process later"


def test_bad_config_with_daemon_is_reported_on_the_terminal(make_daemon) -> None:
    d = make_daemon(jobs=JOBS, start=False)
    d.cfg.write_text(d.cfg.read_text() + "\n[job nosuchjob]\nenabled = true\n")
    set_server(d, shutdown_grace="soon")
    res = run_upq("--daemon", "--pidfile", str(d.dir / "upq.pid"), "-c", str(d.cfg))
    assert res.returncode != 0
    assert "shutdown_grace" in res.stderr, res.stderr
    assert not (d.dir / "upq.pid").exists() and not os.path.exists(d.socket)


# -- the sysvinit script -----------------------------------------------------------------------

def test_init_script_starts_reports_reloads_and_stops(make_daemon, reap) -> None:
    if START_STOP_DAEMON is None:
        pytest.skip("start-stop-daemon is not installed (Debian package: dpkg)")
    d = make_daemon(jobs=JOBS, start=False)
    set_server(d, shutdown_grace=1)
    pidfile = d.dir / "run" / "upq.pid"        # the script creates the folder
    env = {**os.environ, "UPQ_DEFAULTS": "/dev/null", "UPQ_DIR": str(ROOT), "PYTHON": sys.executable,
           "CONFIG": str(d.cfg), "PIDFILE": str(pidfile), "SHUTDOWN_GRACE": "1",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    env.pop("UPQ_USER", None)

    def init(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(CONTRIB / "upq.init"), action], env=env, capture_output=True,
                              text=True, timeout=30)

    assert init("status").returncode == 3
    res = init("start")
    assert res.returncode == 0, res.stdout + res.stderr
    pid = wait_pidfile(pidfile)
    reap.append(pid)
    wait_for(d.answers_ping, 20, "upq started by the init script")
    res = init("status")
    assert res.returncode == 0 and str(pid) in res.stdout, res.stdout
    assert init("start").returncode == 0 and pid_in(pidfile) == pid, "a second start must not start another"

    assert init("reload").returncode == 0
    wait_for(log_has(d, r"reloaded "), 10, "the reload to be logged")

    res = init("stop")
    assert res.returncode == 0, res.stdout + res.stderr
    assert process_gone(pid)
    res = init("status")
    assert res.returncode == 3, res.stdout
    assert not pidfile.exists() and not os.path.exists(d.socket)


# -- SIGTERM and the grace ---------------------------------------------------------------------

def test_sigterm_lets_a_running_job_finish_and_exits_0(make_daemon) -> None:
    d = make_daemon(jobs=JOBS)                  # conftest: shutdown_grace = 5
    jobid = d.submit("record sleep:1.5")
    wait_for(lambda: d.starts()[jobid], 10, "the job to start")
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 5
    assert ["end", str(jobid), "1"] in [r[:3] for r in d.read_records()]
    d.start()
    job = d.job(jobid)
    assert (job["state"], job["attempts"]) == ("done", 1), job


def test_job_longer_than_the_grace_is_left_to_resume_at_the_next_start(make_daemon) -> None:
    d = make_daemon(jobs=JOBS, start=False)
    set_server(d, shutdown_grace=1)
    d.start()
    jobid = d.submit("gate")                    # waits until gate.open exists
    wait_for(lambda: d.starts()[jobid] == [1], 10, "the job to start")
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 1 + 4, "upq did not exit soon after the grace"
    assert "jobs still running after" in d.log()

    (d.dir / "gate.open").touch()
    d.start()
    job = d.wait_job(jobid)
    assert (job["state"], job["attempts"], job["msg"]) == ("done", 2, "passed"), job
    assert d.starts()[jobid] == [1, 2]


def test_second_sigterm_exits_at_once(make_daemon) -> None:
    d = make_daemon(jobs=JOBS, start=False)
    set_server(d, shutdown_grace=60)
    d.start()
    jobid = d.submit("gate")
    wait_for(lambda: d.starts()[jobid], 10, "the job to start")
    d.proc.send_signal(signal.SIGTERM)
    # the socket goes after the second-signal handler is in place
    wait_for(lambda: not os.path.exists(d.socket), 10, "upq to stop accepting")
    assert d.proc.poll() is None, "upq did not wait for the running job"
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 3
    assert "exiting now" in d.log()


# -- SIGHUP and `reload` -----------------------------------------------------------------------

def test_sighup_adds_and_removes_job_types_keeping_queued_jobs(make_daemon) -> None:
    d = make_daemon(jobs={"record": {}, "gate": {}})
    assert d.ask("hello name:x").startswith("ERR unknown job")

    d.write_config({"record": {}, "gate": {}, "hello": {}})
    d.kill(signal.SIGHUP)
    wait_for(lambda: d.ask("hello name:x").startswith("ACK "), 10, "hello to be accepted after SIGHUP")

    running = d.submit("gate")
    wait_for(lambda: d.starts()[running], 10, "the gate job to start")
    queued = [d.submit("gate") for _ in range(2)]      # concurrent 1: these wait
    d.write_config({"record": {}, "hello": {}})
    d.kill(signal.SIGHUP)
    wait_for(lambda: "gate" not in help_jobs(d), 10, "gate to be removed")
    assert d.ask("gate").startswith("ERR unknown job")
    (d.dir / "gate.open").touch()
    assert d.wait_job(running)["state"] == "done", "a removed type's running job must finish"
    time.sleep(0.6)     # a window (3 poll intervals) in which nothing may claim the queued ones
    assert [d.job(j)["state"] for j in queued] == ["new", "new"]
    assert "gate" not in stats(d)["jobs"] or stats(d)["jobs"]["gate"]["workers"] == 0

    d.write_config({"record": {}, "hello": {}, "gate": {}})
    d.kill(signal.SIGHUP)
    for jobid in queued:
        assert d.wait_job(jobid)["state"] == "done"
    assert d.proc.poll() is None


def test_sighup_resizes_a_type_and_keeps_the_old_config_when_the_new_one_is_broken(make_daemon) -> None:
    d = make_daemon(jobs=JOBS)
    assert stats(d)["jobs"]["sleep"]["workers"] == 2
    d.write_config({**JOBS, "sleep": {"concurrent": "5"}})
    d.kill(signal.SIGHUP)
    wait_for(lambda: stats(d)["jobs"]["sleep"]["workers"] == 5, 10, "sleep to get 5 workers")
    jobs = [d.submit("sleep seconds:1.5") for _ in range(5)]
    wait_for(lambda: stats(d)["jobs"]["sleep"]["running"] == 5, 10, "5 sleep jobs running at once")

    good = d.cfg.read_text()
    d.cfg.write_text(good.replace("concurrent = 5", "concurrent = many"))
    d.kill(signal.SIGHUP)
    wait_for(log_has(d, r"does not load; keeping the running one"), 10, "the bad reload to be logged")
    assert "concurrent" in d.log().split("does not load")[-1]
    assert d.proc.poll() is None
    assert stats(d)["jobs"]["sleep"]["workers"] == 5
    for jobid in jobs:
        assert d.wait_job(jobid)["state"] == "done"
    assert d.ask("hello name:still").startswith("ACK ")


def test_reload_command_answers_ack_or_err_like_sighup(make_daemon) -> None:
    d = make_daemon(jobs={"hello": {}})
    d.write_config({"hello": {}, "record": {}})
    answer = d.ask("reload")
    assert answer.startswith("ACK reloaded") and "added record" in answer, answer
    assert d.ask("record").startswith("ACK ")

    d.cfg.write_text(d.cfg.read_text().replace("[job record]\nenabled = true", "[job record]\nenabled = maybe"))
    answer = d.ask("reload")
    assert answer.startswith("ERR ") and "enabled" in answer, answer
    assert d.ask("record").startswith("ACK "), "the running config must be kept"

    d.write_config({"hello": {}})
    answer = d.ask("reload")
    assert answer.startswith("ACK ") and "removed record" in answer, answer
    assert d.ask("record").startswith("ERR unknown job")
    assert d.ask("reload now").startswith("ERR ")


def test_sighup_reopens_the_log_file_after_rotation(make_daemon) -> None:
    d = make_daemon(jobs={"hello": {}})
    wait_for(log_has(d, "serving on"), 10, "the start-up lines")   # ping can answer just before
    rotated = d.dir / "upq.log.1"
    d.logfile.rename(rotated)
    d.kill(signal.SIGHUP)
    wait_for(lambda: d.logfile.exists() and "reloaded" in d.log(), 10, "a fresh upq.log")
    assert d.ask("reload").startswith("ACK ")
    wait_for(lambda: d.log().count("reloaded") == 2, 10, "later lines in the fresh log too")
    assert "reloaded" not in rotated.read_text()
    assert "serving on" in rotated.read_text()


# -- the socket --------------------------------------------------------------------------------

def test_socket_mode_defaults_to_0660_and_socket_mode_is_honoured(make_daemon) -> None:
    d = make_daemon(jobs={"hello": {}})
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o660
    assert stat.S_ISSOCK(os.stat(d.socket).st_mode)
    assert d.stop() == 0
    assert not os.path.exists(d.socket)

    set_server(d, socket_mode="0600")
    d.start()
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600


def test_live_socket_is_not_stolen(make_daemon) -> None:
    first = make_daemon(jobs={"hello": {}})
    inode = os.stat(first.socket).st_ino
    res = run_upq("-c", str(first.cfg))
    assert res.returncode != 0
    assert first.socket in res.stderr and "already" in res.stderr, res.stderr
    assert os.stat(first.socket).st_ino == inode
    assert first.answers_ping()


# -- least privilege -------------------------------------------------------------------------

def test_root_is_refused_without_allow_root(make_daemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: refusing root can only be seen as root")
    d = make_daemon(jobs={"hello": {}}, start=False)
    set_server(d, allow_root=None)
    res = run_upq("-c", str(d.cfg))
    assert res.returncode != 0
    assert "allow_root" in res.stderr and "root" in res.stderr, res.stderr
    assert not os.path.exists(d.socket)
    set_server(d, allow_root="false")
    res = run_upq("-c", str(d.cfg))
    assert res.returncode != 0 and "allow_root" in res.stderr, res.stderr


# -- TCP ---------------------------------------------------------------------------------------

@pytest.fixture
def tcp_daemon(make_daemon) -> tuple[Daemon, int, str]:
    d = make_daemon(jobs={"hello": {}}, start=False)
    port, token = free_port(), "s3cret-token-" + os.urandom(4).hex()
    set_server(d, listen=f"127.0.0.1:{port}", token=token)
    d.start()
    return d, port, token


def test_tcp_requires_auth_first_and_closes_on_anything_else(tcp_daemon) -> None:
    d, port, token = tcp_daemon
    with TcpConn(port) as c:
        assert c.ask("ping") == "ERR auth required"
        assert c.closed()
    with TcpConn(port) as c:
        assert c.ask("auth wrong-" + token).startswith("ERR")
        assert c.closed()
    with TcpConn(port) as c:
        assert c.ask("auth " + token[:-1]).startswith("ERR")   # a prefix is not the token
        assert c.closed()
    assert "wrong auth token" in d.log()


def test_tcp_with_the_right_token_serves_commands(tcp_daemon) -> None:
    d, port, token = tcp_daemon
    with TcpConn(port) as c:
        assert c.ask("auth " + token) == "ACK"
        assert c.ask("ping") == "ACK pong"
        answer = c.ask("hello name:tcp")
        assert answer.startswith("ACK "), answer
        jobid = int(answer.split()[1])
        assert c.ask("auth " + token).startswith("ERR"), "auth is only the first line"
        assert c.ask("ping") == "ACK pong"
    assert d.wait_job(jobid)["state"] == "done"

    env = {**os.environ, "UPQ_TOKEN": token}
    res = subprocess.run([sys.executable, str(CLI), "-H", f"127.0.0.1:{port}", "ping"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert (res.returncode, res.stdout.strip()) == (0, "ACK pong"), res.stderr
    res = subprocess.run([sys.executable, str(CLI), "-H", f"127.0.0.1:{port}", "--wait", "hello", "name:cli"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([sys.executable, str(CLI), "-H", f"127.0.0.1:{port}", "ping"],
                         env={**os.environ, "UPQ_TOKEN": "nope"}, capture_output=True, text=True, timeout=30)
    assert res.returncode != 0


def test_listen_without_token_is_refused_at_start(make_daemon) -> None:
    d = make_daemon(jobs={"hello": {}}, start=False)
    set_server(d, listen=f"127.0.0.1:{free_port()}", token=None)
    res = run_upq("-c", str(d.cfg))
    assert res.returncode != 0
    assert "[server] token" in res.stderr, res.stderr
    assert not os.path.exists(d.socket)


# -- the command line ------------------------------------------------------------------------

def test_check_config_exits_0_on_a_good_config(make_daemon) -> None:
    d = make_daemon(jobs=JOBS, start=False)
    res = run_upq("--check-config", "-c", str(d.cfg))
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout
    assert not os.path.exists(d.socket) and not (d.dir / "upq.db").exists(), "--check-config must not start"


def test_check_config_lists_every_problem(make_daemon) -> None:
    d = make_daemon(jobs=JOBS, start=False)
    d.cfg.write_text(d.cfg.read_text().replace("[logging]\n", "[logging]\ncolour = blue\n"))
    set_server(d, max_connections="lots")
    res = run_upq("--check-config", "-c", str(d.cfg))
    assert res.returncode == 1
    assert "[logging] colour" in res.stderr and "[server] max_connections" in res.stderr, res.stderr

    d.write_config({**JOBS, "nosuchjob": {}, "alsomissing": {}})
    res = run_upq("--check-config", "-c", str(d.cfg))
    assert res.returncode == 1
    assert "nosuchjob" in res.stderr and "alsomissing" in res.stderr, res.stderr


def test_check_config_lists_key_value_and_module_problems_together(make_daemon) -> None:
    d = make_daemon(jobs={**JOBS, "nosuchjob": {}}, start=False)
    d.cfg.write_text(d.cfg.read_text().replace("[logging]\n", "[logging]\ncolour = blue\n"))
    set_server(d, max_connections="lots")
    res = run_upq("--check-config", "-c", str(d.cfg))
    assert res.returncode == 1
    for problem in ("[logging] colour", "[server] max_connections", "nosuchjob"):
        assert problem in res.stderr, res.stderr


def test_version_and_help() -> None:
    res = run_upq("--version")
    assert res.returncode == 0 and re.match(r"upq \d+\.\d+", res.stdout), res.stdout
    res = run_upq("--help")
    assert res.returncode == 0
    for option in ("-c", "--daemon", "--pidfile", "--check-config", "--version"):
        assert option in res.stdout, option
