"""Shared fixtures: a real upq daemon process on a temp dir, on SQLite or MariaDB."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers.records import AttemptsByJob, Run, attempt_times, attempts_by_job, runs

ROOT = Path(__file__).resolve().parent.parent
UPQ = ROOT / "upq.py"
CLI = ROOT / "upq-cli.py"
TEST_JOBS = Path(__file__).resolve().parent / "jobs"
MYSQL_URL = os.environ.get("UPQ_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1/test")
START_TIMEOUT = 20.0


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll until condition() is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(0.1, delay * 2)


def need_tool(path: str, package: str) -> str:
    """The path of an outside tool a test needs: a skip with the package to install, a failure under CI."""
    found = shutil.which(path)
    if found:
        return found
    reason = f"{path} is not installed (Debian package {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


class Conn:
    """One client connection speaking the line protocol; every read is bounded."""

    def __init__(self, path: str, timeout: float = 15.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self) -> str:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unread: {self.buf[:200]!r}")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\n", 1)
        return raw.decode("utf-8")

    def ask(self, line: str) -> str:
        self.send(line + "\n")
        return self.line()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Daemon:
    """A real upq process on its own folder, config and socket."""

    def __init__(self, workdir: Path, db_url: str, jobs: dict[str, dict[str, str]], extra: str = "",
                 server: dict[str, str] | None = None):
        self.dir = workdir
        self.db_url = db_url
        self.socket = str(workdir / "upq.sock")
        self.records = workdir / "records.log"
        self.cfg = workdir / "upq.cfg"
        self.logfile = workdir / "upq.log"
        self.proc: subprocess.Popen | None = None
        jobs_dir = workdir / "jobs"
        jobs_dir.mkdir(exist_ok=True)
        for src in list((ROOT / "jobs").glob("*.py")) + list(TEST_JOBS.glob("*.py")):
            shutil.copy(src, jobs_dir / src.name)
        self.server = dict(server or {})
        self.write_config(jobs, extra)

    def write_config(self, jobs: dict[str, dict[str, str]], extra: str = "",
                     server: dict[str, str] | None = None) -> None:
        """`server` adds or overrides [server] keys (default: those given at construction)."""
        if server is not None:
            self.server = dict(server)
        srv = {"allow_root": "true", "shutdown_grace": "5", "poll_interval": "0.2", **self.server}
        sections = [
            "[logging]\nloglevel = debug\nlogfile = ./upq.log\n",
            "[paths]\nsocket = ./upq.sock\njobs_dir = ./jobs\nrecords = ./records.log\n",
            f"[db]\nurl = {self.db_url}\n",
            "[server]\n" + "".join(f"{k} = {v}\n" for k, v in srv.items()),
        ]
        for name, opts in jobs.items():
            body = "".join(f"{k} = {v}\n" for k, v in {"enabled": "true", **opts}.items())
            sections.append(f"[job {name}]\n{body}")
        text = "\n".join(sections) + "\n" + extra
        self.cfg.write_text(text)

    # -- process control ---------------------------------------------------
    def start(self, expect_ok: bool = True) -> "Daemon":
        out = open(self.dir / "stderr.log", "ab")
        self.proc = subprocess.Popen([sys.executable, str(UPQ), "-c", str(self.cfg)],
                                     stdout=out, stderr=out, cwd="/")
        out.close()
        if expect_ok:
            wait_for(self._up, START_TIMEOUT, f"upq to answer ping ({self.stderr()[-2000:]})")
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"upq exited with {self.proc.returncode}: {self.stderr()[-3000:]}")
        return self.answers_ping()

    def answers_ping(self, timeout: float = 2.0) -> bool:
        """The socket answers `ping` (whoever started the process: also a detached daemon)."""
        try:
            with Conn(self.socket, timeout=timeout) as c:
                return c.ask("ping") == "ACK pong"
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self.proc.wait(timeout=30)

    def kill_if_running(self) -> None:
        """Teardown: SIGKILL the process if it still runs, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError("upq did not exit within 30 s of SIGTERM")

    def restart(self) -> "Daemon":
        self.stop()
        return self.start()

    # -- talking -----------------------------------------------------------
    def ask(self, line: str) -> str:
        with Conn(self.socket) as c:
            return c.ask(line)

    def connect(self, timeout: float = 15.0) -> Conn:
        return Conn(self.socket, timeout)

    def submit(self, line: str) -> int:
        answer = self.ask(line)
        assert answer.startswith("ACK "), answer
        return int(answer.split()[1])

    def job(self, jobid: int) -> dict:
        import json
        answer = self.ask(f"status {jobid}")
        assert answer.startswith("ACK "), answer
        return json.loads(answer[4:])

    def wait_job(self, jobid: int, timeout: float = 15.0) -> dict:
        """The job once it has ended (via the `wait` command, bounded)."""
        import json
        with Conn(self.socket, timeout=timeout + 5) as c:
            answer = c.ask(f"wait {jobid} timeout:{timeout}")
        assert answer.startswith(("ACK {", "ERR {")), answer
        return json.loads(answer[4:])

    def cli(self, *args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(CLI), "-s", self.socket, *args], input=stdin,
                              capture_output=True, text=True, timeout=timeout)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stderr(self) -> str:
        p = self.dir / "stderr.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def read_records(self) -> list[list[str]]:
        """Lines the test jobs appended: [event, jobid, attempt, time] (tests/helpers/records.py)."""
        if not self.records.exists():
            return []
        return [line.split() for line in self.records.read_text().splitlines() if line.strip()]

    def starts(self) -> AttemptsByJob:
        """jobid -> the attempt numbers of its runs that started here, in order ([] for none)."""
        return attempts_by_job(self.read_records())

    def attempt_times(self, event: str, jobid: int) -> dict[int, float]:
        """{attempt: time} of jobid's `event` records (`start`, `flaky`, `slowend`, ...)."""
        return attempt_times(self.read_records(), event, jobid)

    def runs(self) -> list[Run]:
        """The record job's runs here, each start paired with its end."""
        return runs(self.read_records(), self.dir.name)


def _mysql_reachable(url: str) -> str | None:
    """None when the server answers, else the reason."""
    from sqlalchemy import create_engine, text
    try:
        eng = create_engine(url, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def mysql_base_url() -> str:
    problem = _mysql_reachable(MYSQL_URL)
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but MariaDB/MySQL at {MYSQL_URL} is unreachable: {problem}")
        pytest.skip(f"no MariaDB/MySQL at {MYSQL_URL}: {problem}")
    return MYSQL_URL


@contextmanager
def _fresh_database(base_url: str) -> Iterator[str]:
    """The URL of a new, empty database on base_url's server, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    name = f"upq_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture
def fresh_mysql_url(mysql_base_url: str) -> Iterator[str]:
    """A database of its own for one test, dropped afterwards."""
    with _fresh_database(mysql_base_url) as url:
        yield url


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short folder under /tmp (Unix socket paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="upq-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["sqlite", "mysql"])
def db_url(request: pytest.FixtureRequest, workdir: Path) -> str:
    if request.param == "sqlite":
        return "sqlite:///./upq.db"
    return request.getfixturevalue("fresh_mysql_url")


SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
MYSQL_ONLY = pytest.mark.parametrize("db_url", ["mysql"], indirect=True)


@pytest.fixture
def sqlite_url() -> str:
    return "sqlite:///./upq.db"


DEFAULT_JOBS = {"hello": {"concurrent": "2", "greeting": "Hi"}, "fail": {}, "sleep": {"concurrent": "2"},
                "record": {"concurrent": "2"}}


@pytest.fixture
def make_daemon(workdir: Path, db_url: str) -> Iterator[Callable[..., Daemon]]:
    """Build (and by default start) daemons on the test's db; all are stopped at the end."""
    made: list[Daemon] = []

    def factory(jobs: dict[str, dict[str, str]] | None = None, extra: str = "", start: bool = True,
                subdir: str = "", server: dict[str, str] | None = None) -> Daemon:
        d = workdir / subdir if subdir else workdir
        d.mkdir(exist_ok=True)
        daemon = Daemon(d, db_url, DEFAULT_JOBS if jobs is None else jobs, extra, server)
        made.append(daemon)
        return daemon.start() if start else daemon

    yield factory
    for daemon in made:
        daemon.kill_if_running()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A running daemon with the example jobs and the test jobs enabled."""
    return make_daemon()


@pytest.fixture(scope="module", params=["sqlite", "mysql"])
def shared_daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """One daemon shared by a module's tests, on SQLite or a fresh MariaDB database.

    For tests that do not depend on what other tests stored (no "the queue is
    empty" assumptions). Its job types are the module's `DAEMON_JOBS`, else
    DEFAULT_JOBS.
    """
    jobs = getattr(request.module, "DAEMON_JOBS", DEFAULT_JOBS)
    d = Path(tempfile.mkdtemp(prefix="upq-", dir="/tmp"))
    try:
        with ExitStack() as stack:
            if request.param == "sqlite":
                url = "sqlite:///./upq.db"
            else:
                url = stack.enter_context(_fresh_database(request.getfixturevalue("mysql_base_url")))
            daemon = Daemon(d, url, jobs)
            stack.callback(daemon.kill_if_running)
            yield daemon.start()
    finally:
        shutil.rmtree(d, ignore_errors=True)


class InProcess:
    """upq's core built in this process on a temp SQLite file, as upq.start() wires it, without
    sockets or heartbeat: for tests of the queue, the manager and the commands."""

    def __init__(self, workdir: Path):
        import logging

        from upqdb import Database
        self.dir = workdir
        self.log = logging.getLogger(f"upq.inprocess.{workdir.name}")
        self.db = Database(f"sqlite:///{workdir / 'upq.db'}", self.log)
        self.db.create_schema()
        self.db.start()
        self.manager = None
        jobs_dir = workdir / "jobs"
        jobs_dir.mkdir(exist_ok=True)
        for src in list((ROOT / "jobs").glob("*.py")) + list(TEST_JOBS.glob("*.py")):
            shutil.copy(src, jobs_dir / src.name)

    def start(self, jobs: dict[str, dict[str, str]], node: str = "inproc"):
        """Load a config with these [job] sections and start the manager's workers."""
        from module_loader import load_job_class
        from parseconfig import load_config
        from upqcontrol import Completions, Control
        from upqqueuemngr import QueueManager
        from upqsubmit import Submitter
        sections = "".join(f"[job {name}]\nenabled = true\n" + "".join(f"{k} = {v}\n" for k, v in opts.items())
                           for name, opts in jobs.items())
        cfg = self.dir / "upq.cfg"
        cfg.write_text(f"[paths]\nsocket = ./upq.sock\njobs_dir = ./jobs\nrecords = ./records.log\n"
                       f"[db]\nurl = sqlite:///./upq.db\n[server]\npoll_interval = 0.1\n{sections}")
        self.config = load_config(str(cfg))
        classes = {name: load_job_class(self.config.paths.jobs_dir, name) for name in jobs}
        self.completions = Completions()
        self.manager = QueueManager(self.config, self.db, classes, self.log, node,
                                    hooks=[self.completions.on_ended])
        self.control = Control(self.manager, self.db, self.completions, 0.1)
        self.submitter = Submitter(self.manager, self.db, self.control.wait)
        self.manager.start(host=self.submitter)
        return self

    def close(self) -> None:
        if self.manager is not None:
            self.manager.stop(5)
        self.db.close()


@pytest.fixture
def inproc(workdir: Path) -> Iterator[InProcess]:
    core = InProcess(workdir)
    yield core
    core.close()
