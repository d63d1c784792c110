"""A throw-away MariaDB server of a test's own, to kill or freeze without touching the shared one."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import wait_for
from helpers.net import free_port

MARIADBD = "/usr/sbin/mariadbd"


def _missing_tool_means_skip(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


class PrivateMariaDB:
    """A throw-away mariadbd on its own data dir and port; root has no password."""

    def __init__(self, base: Path):
        self.base = base
        self.datadir = base / "data"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def install(self) -> None:
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if install is None or not os.access(MARIADBD, os.X_OK):
            _missing_tool_means_skip(f"{MARIADBD} or mariadb-install-db is not installed")
        res = subprocess.run([install, "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                              "--auth-root-authentication-method=normal", "--skip-test-db"],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

    def start(self) -> None:
        log = open(self.base / "mariadbd.out", "ab")
        self.proc = subprocess.Popen(
            [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.base / 'm.sock'}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root",
             f"--pid-file={self.base / 'm.pid'}", f"--log-error={self.base / 'mariadbd.err'}",
             "--innodb-buffer-pool-size=32M"],
            stdout=log, stderr=log)
        log.close()
        try:
            wait_for(self.answers, 60, f"the private mariadbd on port {self.port} to answer")
        except AssertionError as exc:
            err = self.base / "mariadbd.err"
            tail = err.read_text(errors="replace")[-1500:] if err.exists() else ""
            raise AssertionError(f"{exc}; its log ends: {tail}") from None

    def answers(self) -> bool:
        import pymysql
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"mariadbd exited with {self.proc.returncode}")
        try:
            pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
            return True
        except pymysql.err.MySQLError:
            return False

    def execute(self, sql: str) -> None:
        import pymysql
        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=3)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
            conn.commit()
        finally:
            conn.close()

    def url(self, database: str) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}"

    def kill(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.wait(timeout=60)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)
