"""Notifications against a real SMTP server (aiosmtpd) and a real syslog receiver (UDP)."""
from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import pytest

from conftest import SQLITE_ONLY, UPQ, wait_for
from helpers.net import Silent, SyslogReceiver, free_port
from helpers.smtp import Mailbox, SmtpServer
from notify import Notifier, check_smtp, smtp_warnings
from parseconfig import JobConfig, MailConfig, NotifyConfig, load_config
from upqschema import JobRow

LOCAL0, LOCAL3, USER = 16, 19, 1
INFO, ERR = 6, 3


# ---------------------------------------------------------------- fixtures

class Records(logging.Handler):
    """Collects log records from a Notifier under test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))

    def at(self, level: int) -> list[str]:
        return [m for lvl, m in self.lines if lvl == level]


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    with SmtpServer(box) as server:
        box.port = server.port   # type: ignore[attr-defined]
        yield box


@pytest.fixture
def syslog() -> Iterator[SyslogReceiver]:
    r = SyslogReceiver()
    yield r
    r.close()


@pytest.fixture
def records() -> Iterator[Records]:
    h = Records()
    yield h


@pytest.fixture
def notifier(records: Records) -> Iterator:
    """make(mail_port, syslog_port, **kw): a started Notifier with fast backoff, stopped after."""
    made: list[Notifier] = []
    log = logging.getLogger(f"upq.test.notify.{id(records)}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(records)

    def make(mail_port: int = 25, syslog_port: int = 514, facility: str = "local0", start: bool = True,
             **kw) -> Notifier:
        kw.setdefault("backoff", 0.05)
        n = Notifier(MailConfig(host="127.0.0.1", port=mail_port, timeout=kw.pop("timeout", 5.0)),
                     NotifyConfig(syslog_address=f"127.0.0.1:{syslog_port}", syslog_facility=facility),
                     log, "testhost", **kw)
        if start:
            n.start()
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop(1.0)
    log.removeHandler(records)


def row(jobid: int = 42, state: str = "failed", msg: str = "failed on purpose: x",
        jobname: str = "hello", attempts: int = 1) -> JobRow:
    t = dt.datetime(2024, 5, 6, 7, 8, 9)
    return JobRow(jobid=jobid, jobname=jobname, state=state, params={"reason": "x", "who": "Zoë"},
                  msg=msg, result=None, attempts=attempts, retries_used=0, created=t, started=t,
                  finished=t + dt.timedelta(seconds=2), run_after=None, node="n1", parent=None)


def job(fail: str = "", success: str = "") -> JobConfig:
    from inifile import notify_targets as _notify_targets
    return JobConfig(name="hello", enabled=True, notify_fail=_notify_targets(fail) if fail else (),
                     notify_success=_notify_targets(success) if success else ())


# ---------------------------------------------------------------- the Notifier itself

def test_failed_job_mails_all_addresses_once_with_subject_and_body(mailbox, notifier):
    n = notifier(mail_port=mailbox.port)
    n.job_ended(job(fail="mail ops@example.org, dev@example.org"), row(attempts=3))
    [(sender, rcpts, msg)] = mailbox.wait(1)
    assert sender == "upq@testhost" and msg["From"] == "upq@testhost"
    assert sorted(rcpts) == ["dev@example.org", "ops@example.org"]
    assert msg["To"] == "ops@example.org, dev@example.org"
    assert msg["Subject"] == "[upq] hello #42 failed"
    body = msg.get_content()
    for part in ("failed on purpose: x", '"reason": "x"', "Zoë", "attempts: 3",
                 "created:  2024-05-06T07:08:09", "finished: 2024-05-06T07:08:11", "node:     n1",
                 "host:     testhost"):
        assert part in body, (part, body)


def test_done_job_sends_one_syslog_record_with_pri_tag_and_fields(syslog, notifier):
    n = notifier(syslog_port=syslog.port, facility="local3")
    n.job_ended(job(success="syslog mytag", fail="mail x@example.org"), row(state="done", msg="Hi you"))
    assert syslog.wait(1) == [f"<{LOCAL3 * 8 + INFO}>mytag: hello 42 done Hi you"]


def test_failed_syslog_record_has_err_priority_and_a_one_line_capped_msg(syslog, notifier):
    n = notifier(syslog_port=syslog.port, facility="user")
    n.job_ended(job(fail="syslog"), row(msg="line1\nline2\r\x00" + "y" * 5000))
    [record] = syslog.wait(1)
    assert record.startswith(f"<{USER * 8 + ERR}>upq: hello 42 failed line1 line2  ")
    assert "\n" not in record and "\x00" not in record and len(record) < 1100


def test_cancelled_job_and_jobs_without_targets_notify_nothing(syslog, notifier, records):
    n = notifier(syslog_port=syslog.port)
    n.job_ended(job(fail="syslog", success="syslog"), row(jobid=1, state="cancelled"))
    n.job_ended(job(), row(jobid=2, state="failed"))
    n.job_ended(job(fail="syslog"), row(jobid=3, state="failed"))
    assert syslog.wait(1) == [f"<{LOCAL0 * 8 + ERR}>upq: hello 3 failed failed on purpose: x"]
    assert n.stop(5) == 0
    assert len(syslog.records) == 1


def test_combined_targets_each_fire(mailbox, syslog, notifier):
    n = notifier(mail_port=mailbox.port, syslog_port=syslog.port)
    n.job_ended(job(fail="syslog ops; mail a@b.org"), row(jobid=7))
    assert syslog.wait(1)[0].endswith("ops: hello 7 failed failed on purpose: x")
    [(_, rcpts, msg)] = mailbox.wait(1)
    assert rcpts == ["a@b.org"] and msg["Subject"] == "[upq] hello #7 failed"


def test_configured_from_address_is_used(mailbox, records):
    log = logging.getLogger("upq.test.notify.from")
    n = Notifier(MailConfig(host="127.0.0.1", port=mailbox.port, sender="jobs@example.org"),
                 NotifyConfig(), log, "testhost")
    n.start()
    try:
        n.job_ended(job(fail="mail a@b.org"), row())
        [(sender, _, msg)] = mailbox.wait(1)
        assert sender == "jobs@example.org" and msg["From"] == "jobs@example.org"
    finally:
        n.stop(1)


def test_smtp_answering_4xx_is_retried_with_backoff_then_delivered(notifier, records):
    box = Mailbox(refuse=2, code="451 busy, try later")
    with SmtpServer(box) as server:
        n = notifier(mail_port=server.port, tries=3)
        n.job_ended(job(fail="mail a@b.org"), row())
        box.wait(1)
        assert box.attempts == 3
    wait_for(lambda: records.at(logging.INFO) and "notified job 42" in records.at(logging.INFO)[-1],
             5, "the success log line")
    assert [m for m in records.at(logging.INFO) if "attempt" in m and "451 busy" in m]
    assert not records.at(logging.ERROR)


def test_smtp_refusing_with_5xx_is_not_retried_and_is_logged(notifier, records):
    box = Mailbox(refuse=99, code="554 no thanks")
    with SmtpServer(box) as server:
        n = notifier(mail_port=server.port, tries=3)
        n.job_ended(job(fail="mail a@b.org"), row())
        wait_for(lambda: records.at(logging.ERROR), 20, "the error log line")
        assert box.attempts == 1
    [line] = records.at(logging.ERROR)
    assert "job 42" in line and "a@b.org" in line and "554 no thanks" in line and "1 attempt" in line


def test_smtp_down_is_retried_then_logged_at_error_with_the_job_id(notifier, records, syslog):
    n = notifier(mail_port=free_port(), syslog_port=syslog.port, tries=3, backoff=0.05)
    n.job_ended(job(fail="mail a@b.org"), row(jobid=5))
    wait_for(lambda: records.at(logging.ERROR), 20, "the error log line")
    [line] = records.at(logging.ERROR)
    assert "job 5" in line and "3 attempt(s)" in line and "refused" in line.lower()
    # the thread is still alive and delivering
    n.job_ended(job(fail="syslog"), row(jobid=6))
    assert syslog.wait(1)[0].startswith(f"<{LOCAL0 * 8 + ERR}>upq: hello 6 failed")


def test_hung_smtp_attempts_are_bounded_by_timeout_and_syslog_keeps_flowing(notifier, records, syslog):
    hung = Silent()
    try:
        n = notifier(mail_port=hung.port, syslog_port=syslog.port, timeout=0.5, tries=3, backoff=1.0)
        n.job_ended(job(fail="mail a@b.org"), row(jobid=1))
        n.job_ended(job(fail="syslog"), row(jobid=2))
        syslog.wait(1, timeout=5)
        # sent while the mail waits for its retry, not after the mail gave up
        assert not records.at(logging.ERROR)
        assert len([m for m in records.at(logging.INFO) if "attempt" in m]) <= 2
        wait_for(lambda: records.at(logging.ERROR), 15, "the error log line")
        [line] = records.at(logging.ERROR)
        assert "job 1" in line and "3 attempt(s)" in line and "timed out" in line
    finally:
        hung.close()


def test_job_ended_never_blocks_and_drops_with_a_warning_when_the_queue_is_full(notifier, records):
    n = notifier(start=False, queue_size=2)
    t0 = time.monotonic()
    for jobid in (1, 2, 3):
        n.job_ended(job(fail="mail a@b.org"), row(jobid=jobid))
    assert time.monotonic() - t0 < 2
    [warning] = records.at(logging.WARNING)
    assert "job 3" in warning and "dropped" in warning


def test_job_ended_does_not_raise_on_a_broken_row(notifier, records):
    n = notifier(start=False)
    n.job_ended(job(fail="syslog"), None)  # type: ignore[arg-type]
    assert records.at(logging.ERROR)


def test_stop_sends_what_is_pending_first(syslog, notifier, records):
    n = notifier(syslog_port=syslog.port)
    for jobid in range(1, 21):
        n.job_ended(job(fail="syslog"), row(jobid=jobid))
    assert n.stop(5) == 0
    assert len(syslog.wait(20, timeout=1)) == 20
    assert not records.at(logging.WARNING)


def test_stop_logs_each_notification_it_could_not_send_as_lost(notifier, records):
    hung = Silent()
    try:
        n = notifier(mail_port=hung.port, timeout=5.0)
        for jobid in (11, 12, 13):
            n.job_ended(job(fail="mail a@b.org"), row(jobid=jobid))
        t0 = time.monotonic()
        assert n.stop(0.3) == 3
        assert time.monotonic() - t0 < 3
        lost = records.at(logging.WARNING)
        for jobid in (11, 12, 13):
            assert any(f"notification for job {jobid} (mail a@b.org) not sent: daemon stopping" in m
                       for m in lost), lost
        # after stop, a late job is reported as lost at once
        n.job_ended(job(fail="mail a@b.org"), row(jobid=14))
        assert any("job 14" in m and "daemon stopping" in m for m in records.at(logging.WARNING))
    finally:
        hung.close()


def test_syslog_to_a_unix_datagram_socket(notifier, records):
    folder = tempfile.mkdtemp(dir="/tmp")
    path = os.path.join(folder, "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
        rx.bind(path)
        rx.settimeout(10)
        log = logging.getLogger("upq.test.notify.unix")
        n = Notifier(None, NotifyConfig(syslog_address=path, syslog_facility="daemon"), log, "h")
        n.start()
        try:
            n.job_ended(job(success="syslog"), row(state="done", msg="ok"))
            assert rx.recv(4096) == f"<{3 * 8 + INFO}>upq: hello 42 done ok".encode()
        finally:
            n.stop(1)
    shutil.rmtree(folder)


def test_syslog_to_a_unix_stream_socket_is_newline_framed(notifier):
    folder = tempfile.mkdtemp(dir="/tmp")
    path = os.path.join(folder, "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as rx:
        rx.bind(path)
        rx.listen(1)
        rx.settimeout(10)
        n = Notifier(None, NotifyConfig(syslog_address=path), logging.getLogger("upq.test.notify.s"), "h")
        n.start()
        try:
            n.job_ended(job(fail="syslog t"), row(msg="bad"))
            conn, _ = rx.accept()
            with conn:
                conn.settimeout(10)
                data = b""
                while not data.endswith(b"\n"):
                    data += conn.recv(4096)
            assert data == f"<{USER * 8 + ERR}>t: hello 42 failed bad\n".encode()
        finally:
            n.stop(1)
    shutil.rmtree(folder)


class Accept:
    """aiosmtpd authenticator: one user."""

    def __call__(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"upq", b"s3cret")
        return AuthResult(success=ok, handled=False)


@pytest.mark.parametrize("password, delivered", [("s3cret", True), ("wrong", False)])
def test_smtp_login_when_configured(records, password, delivered):
    box = Mailbox()
    server = SmtpServer(box, authenticator=Accept(), auth_require_tls=False).__enter__()
    port = server.port
    log = logging.getLogger(f"upq.test.notify.login.{password}")
    log.addHandler(records)
    n = Notifier(MailConfig(host="127.0.0.1", port=port, username="upq", password=password),
                 NotifyConfig(), log, "h", backoff=0.05)
    n.start()
    try:
        n.job_ended(job(fail="mail a@b.org"), row())
        if delivered:
            box.wait(1)
        else:
            wait_for(lambda: records.at(logging.ERROR), 20, "the login failure")
            assert "535" in records.at(logging.ERROR)[0] and "1 attempt" in records.at(logging.ERROR)[0]
            assert box.messages == []
    finally:
        n.stop(1)
        server.__exit__()
        log.removeHandler(records)


def test_starttls_against_a_server_without_it_is_an_error_not_a_plain_text_send(mailbox, records):
    log = logging.getLogger("upq.test.notify.tls")
    log.addHandler(records)
    n = Notifier(MailConfig(host="127.0.0.1", port=mailbox.port, starttls=True), NotifyConfig(), log, "h")
    n.start()
    try:
        n.job_ended(job(fail="mail a@b.org"), row())
        wait_for(lambda: records.at(logging.ERROR), 20, "the STARTTLS failure")
        assert "STARTTLS" in records.at(logging.ERROR)[0]
        assert mailbox.messages == []
    finally:
        n.stop(1)
        log.removeHandler(records)


def test_check_smtp_probe(mailbox):
    assert check_smtp(MailConfig(host="127.0.0.1", port=mailbox.port)) is None
    assert "refused" in check_smtp(MailConfig(host="127.0.0.1", port=free_port())).lower()


def test_smtp_warnings_name_the_job_key_and_mail_section(tmp_path):
    port = free_port()
    cfg = tmp_path / "upq.cfg"
    cfg.write_text(f"[paths]\nsocket = ./s\njobs_dir = ./jobs\n[mail]\nhost = 127.0.0.1\nport = {port}\n"
                   "[job hello]\nenabled = true\nnotify_fail = mail a@b.org\nnotify_success = syslog\n"
                   "[job other]\nenabled = false\nnotify_fail = mail a@b.org\n")
    [line] = smtp_warnings(load_config(str(cfg)))
    assert "[job hello] notify_fail" in line and f"[mail] host = 127.0.0.1, port = {port}" in line
    assert "warning" in line


# ---------------------------------------------------------------- through the real daemon

def notify_extra(mail_port: int, syslog_port: int, facility: str = "local0") -> str:
    return (f"[mail]\nhost = 127.0.0.1\nport = {mail_port}\ntimeout = 5\n"
            f"[notify]\nsyslog_address = 127.0.0.1:{syslog_port}\nsyslog_facility = {facility}\n")


@SQLITE_ONLY
def test_daemon_failed_job_mails_both_addresses(make_daemon, mailbox, syslog):
    d = make_daemon(jobs={"fail": {"notify_fail": "mail ops@example.org dev@example.org"}},
                    extra=notify_extra(mailbox.port, syslog.port))
    jobid = d.submit('fail reason:"disk on fire" extra:1')
    assert d.wait_job(jobid)["state"] == "failed"
    [(sender, rcpts, msg)] = mailbox.wait(1)
    assert sorted(rcpts) == ["dev@example.org", "ops@example.org"]
    assert msg["Subject"] == f"[upq] fail #{jobid} failed"
    body = msg.get_content()
    assert "failed on purpose: disk on fire" in body and '"extra": "1"' in body
    assert "attempts: 1" in body and f"host:     {socket.gethostname()}" in body
    assert re.search(r"started:  \d{4}-\d\d-\d\dT", body) and re.search(r"finished: \d{4}-", body)
    assert sender == f"upq@{socket.gethostname()}"


@SQLITE_ONLY
def test_daemon_done_job_sends_a_syslog_record(make_daemon, mailbox, syslog):
    d = make_daemon(jobs={"hello": {"greeting": "Hi", "notify_success": "syslog hellotag",
                                    "notify_fail": "mail ops@example.org"}},
                    extra=notify_extra(mailbox.port, syslog.port, facility="local3"))
    jobid = d.submit("hello name:you")
    assert d.wait_job(jobid)["state"] == "done"
    assert syslog.wait(1) == [f"<{LOCAL3 * 8 + INFO}>hellotag: hello {jobid} done Hi you"]
    assert mailbox.messages == []


@SQLITE_ONLY
def test_daemon_combined_targets_both_fire(make_daemon, mailbox, syslog):
    d = make_daemon(jobs={"fail": {"notify_fail": "syslog ops; mail a@b.org"}},
                    extra=notify_extra(mailbox.port, syslog.port))
    jobid = d.submit("fail reason:both")
    d.wait_job(jobid)
    assert syslog.wait(1) == [f"<{LOCAL0 * 8 + ERR}>ops: fail {jobid} failed failed on purpose: both"]
    [(_, rcpts, msg)] = mailbox.wait(1)
    assert rcpts == ["a@b.org"] and msg["Subject"] == f"[upq] fail #{jobid} failed"


@SQLITE_ONLY
def test_daemon_retried_job_notifies_once_after_the_last_retry(make_daemon, mailbox, syslog):
    d = make_daemon(jobs={"fail": {"retries": "2", "retry_delay": "0", "notify_fail": "mail a@b.org"},
                          "hello": {"notify_success": "mail marker@b.org"}},
                    extra=notify_extra(mailbox.port, syslog.port))
    jobid = d.submit("fail reason:again")
    assert d.wait_job(jobid)["attempts"] == 3
    mailbox.wait(1)
    # notifications go out in order: once the marker's mail is in, any duplicate would be too
    marker = d.submit("hello name:marker")
    wait_for(lambda: mailbox.about(marker), 20, "the marker mail")
    [(_, _, msg)] = mailbox.about(jobid)
    assert "attempts: 3" in msg.get_content()


@SQLITE_ONLY
def test_daemon_with_smtp_down_keeps_running_jobs_and_logs_the_failure(make_daemon, syslog):
    down = free_port()
    d = make_daemon(jobs={"fail": {"notify_fail": "mail ops@example.org"},
                          "hello": {"notify_success": "syslog"}},
                    extra=notify_extra(down, syslog.port))
    assert "cannot reach the SMTP server" in d.log() and "[job fail] notify_fail" in d.log()
    failed = d.submit("fail reason:smtp-down")
    oks = [d.submit(f"hello name:n{i}") for i in range(3)]
    job = d.wait_job(failed)
    assert (job["state"], job["msg"]) == ("failed", "failed on purpose: smtp-down")
    assert all(d.wait_job(j)["state"] == "done" for j in oks)
    assert len(syslog.wait(3)) == 3
    wait_for(lambda: re.search(rf"ERROR .*notification for job {failed} \(mail ops@example.org\) "
                               rf"not sent after 3 attempt", d.log()), 20, "the SMTP failure in the log")
    assert d.ask("ping") == "ACK pong"
    assert d.job(failed)["state"] == "failed"
    assert d.stop() == 0


@SQLITE_ONLY
def test_daemon_logs_pending_notifications_as_lost_when_stopping(make_daemon, syslog):
    hung = Silent()
    try:
        d = make_daemon(jobs={"fail": {"notify_fail": "mail ops@example.org"}},
                        extra=notify_extra(hung.port, syslog.port).replace("timeout = 5", "timeout = 30"))
        jobid = d.submit("fail reason:x")
        d.wait_job(jobid)
        t0 = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - t0 < 20
        assert f"notification for job {jobid} (mail ops@example.org) not sent: daemon stopping" in d.log()
    finally:
        hung.close()


@pytest.mark.parametrize("value", ["carrier-pigeon", "mail"])
def test_bad_target_stops_the_start_and_check_config_names_section_and_key(workdir, sqlite_url, value):
    from conftest import Daemon
    d = Daemon(workdir, sqlite_url, {"fail": {"notify_fail": value}})
    check = subprocess.run([sys.executable, str(UPQ), "-c", str(d.cfg), "--check-config"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 1
    assert "[job fail] notify_fail" in check.stderr and "expected 'syslog [tag]'" in check.stderr
    d.start(expect_ok=False)
    assert d.proc.wait(timeout=30) == 1
    assert "[job fail] notify_fail" in d.stderr()


def test_check_config_warns_about_an_unreachable_smtp_server_but_passes(workdir, sqlite_url):
    from conftest import Daemon
    port = free_port()
    d = Daemon(workdir, sqlite_url, {"fail": {"notify_fail": "mail a@b.org"}},
               extra=f"[mail]\nhost = 127.0.0.1\nport = {port}\n")
    check = subprocess.run([sys.executable, str(UPQ), "-c", str(d.cfg), "--check-config"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert "[job fail] notify_fail: warning: cannot reach the SMTP server" in check.stderr
    assert f"port = {port}" in check.stderr
