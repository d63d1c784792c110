"""Report jobs that ended for good to syslog and by mail, off the worker threads.

`Notifier.on_ended` is one of the queue manager's after-outcome hooks: it only puts one
notification per target on a bounded in-memory queue and returns. One
background thread sends them in order. A failed send (SMTP down, slow or
answering 4xx; a syslog socket that is missing) is retried after 1 s, then 2 s
(`tries` attempts in all) and then logged at ERROR with the job id; meanwhile
the thread goes on with the other notifications. An SMTP answer of 5xx is
final at once. A notification never changes the job's state.

Notifications are not stored. On shutdown `stop(timeout)` keeps sending for up
to `timeout` seconds; each one still pending after that is logged at WARNING,
"notification for job N (mail a@b.org) not sent: daemon stopping", and is not
sent at the next start. When the queue is full (`queue_size`, 10,000 by
default) a new notification is dropped with a WARNING naming the job.
"""
from __future__ import annotations

import dataclasses
import errno
import heapq
import itertools
import json
import logging
import logging.handlers
import smtplib
import socket
import ssl
import threading
import time
from collections import deque
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING

from parseconfig import Config, JobConfig, MailConfig, NotifyConfig, NotifyTarget
from upqschema import JobRow, iso
from upqstates import State

if TYPE_CHECKING:
    from upqqueuemngr import Ended

QUEUE_SIZE = 10_000
TRIES = 3                       # attempts per notification
BACKOFF = 1.0                   # seconds before the 2nd attempt, doubling after
STOP_TIMEOUT = 5.0              # how long shutdown waits for pending notifications
SYSLOG_MSG_MAX = 1000           # characters of msg in a syslog record
MAIL_FIELD_MAX = 10_000         # characters of msg / params / result in a mail body
PROBE_TIMEOUT = 3.0             # cap on the start-up SMTP probe
SEVERITY = {State.DONE: 6, State.FAILED: 3}     # syslog info / err
# A body that is not plain short ASCII lines gets quoted-printable, so no server needs 8BITMIME.
MAIL_POLICY = email_policy.default.clone(cte_type="7bit")
_CONTROL = {c: " " for c in range(32)} | {127: " "}


@dataclasses.dataclass(frozen=True)
class Notification:
    """One target to tell about one ended job."""
    target: NotifyTarget
    row: JobRow

    def describe(self) -> str:
        where = f"syslog {self.target.tag}" if self.target.kind == "syslog" \
            else "mail " + ", ".join(self.target.addresses)
        return f"job {self.row.jobid} ({where})"


class PermanentFailure(Exception):
    """A send that retrying cannot fix (the SMTP server refused with 5xx)."""


@dataclasses.dataclass(order=True)
class _Retry:
    due: float
    seq: int
    item: Notification = dataclasses.field(compare=False)
    tries: int = dataclasses.field(compare=False)


class Notifier:
    """Sends notifications for ended jobs on one background thread."""

    def __init__(self, mail: MailConfig | None, notify: NotifyConfig, logger: logging.Logger,
                 hostname: str | None = None, *, tries: int = TRIES, backoff: float = BACKOFF,
                 queue_size: int = QUEUE_SIZE):
        self.mail = mail or MailConfig()
        self.notify = notify
        self.log = logger
        self.hostname = hostname or socket.gethostname()
        self.tries = max(1, tries)
        self.backoff = backoff
        self.queue_size = queue_size
        self.facility = logging.handlers.SysLogHandler.facility_names[notify.syslog_facility]
        self._cond = threading.Condition()
        self._pending: deque[Notification] = deque()     # in arrival order
        self._retries: list[_Retry] = []                 # heap, soonest first
        self._seq = itertools.count()
        self._current: Notification | None = None        # being sent right now
        self._stopping = False       # finish what is queued, then end
        self._abandoned = False      # stop() gave up: report the rest as lost
        self._thread: threading.Thread | None = None

    # -- the hook and its lifecycle ------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._drain, name="notifier", daemon=True)
        self._thread.start()

    def on_ended(self, ended: "Ended") -> None:
        """The after-outcome hook: a job that ended for good is reported."""
        if ended.stored is not None and ended.stored.is_final:
            self.job_ended(ended.config, ended.stored)

    def job_ended(self, job_cfg: JobConfig, row: JobRow) -> None:
        """Queue one notification per target; never blocks, never raises."""
        try:
            targets = {State.DONE: job_cfg.notify_success, State.FAILED: job_cfg.notify_fail}.get(row.state, ())
            for target in targets:
                self._enqueue(Notification(target, row))
        except Exception:  # noqa: BLE001 - a report must never break job processing
            self.log.exception("job %s: could not queue its notifications", getattr(row, "jobid", "?"))

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Send what is pending for up to `timeout` s; log the rest as lost. Returns how many."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                return 0
        with self._cond:
            self._abandoned = True
            lost = ([self._current] if self._current else []) + list(self._pending) \
                + [r.item for r in sorted(self._retries)]
            self._pending.clear()
            self._retries.clear()
            self._cond.notify_all()
        for item in lost:
            self.log.warning("notification for %s not sent: daemon stopping", item.describe())
        return len(lost)

    def _enqueue(self, item: Notification) -> None:
        with self._cond:
            stopping, full = self._stopping, len(self._pending) >= self.queue_size
            if not (stopping or full):
                self._pending.append(item)
                self._cond.notify()
                return
        if stopping:
            self.log.warning("notification for %s not sent: daemon stopping", item.describe())
        else:
            self.log.warning("notification for %s dropped: %d notifications are already waiting",
                             item.describe(), self.queue_size)

    # -- the background thread ----------------------------------------------
    def _drain(self) -> None:
        while (taken := self._take()) is not None:
            item, tries = taken
            try:
                self._send(item)
                error, final = None, False
            except PermanentFailure as exc:
                error, final = exc, True
            except OSError as exc:      # smtplib's errors are OSErrors too
                error, final = exc, tries >= self.tries
            except Exception:  # noqa: BLE001 - a bad notification must not end the thread
                self.log.exception("notification for %s not sent: unexpected error", item.describe())
                error, final = None, True
            self._done(item, tries, error, final)

    def _take(self) -> tuple[Notification, int] | None:
        """The next notification to try and its attempt number; None when the thread should end."""
        with self._cond:
            while not self._abandoned:
                now = time.monotonic()
                if self._retries and self._retries[0].due <= now:
                    retry = heapq.heappop(self._retries)
                    item, tries = retry.item, retry.tries
                elif self._pending:
                    item, tries = self._pending.popleft(), 1
                elif self._stopping and not self._retries:
                    return None
                else:
                    self._cond.wait(self._retries[0].due - now if self._retries else None)
                    continue
                self._current = item
                return item, tries
            return None

    def _done(self, item: Notification, tries: int, error: Exception | None, final: bool) -> None:
        with self._cond:
            self._current = None
            if self._abandoned:
                return              # stop() has already reported it
            if error is not None and not final:
                delay = self.backoff * 2 ** (tries - 1)
                heapq.heappush(self._retries, _Retry(time.monotonic() + delay, next(self._seq),
                                                     item, tries + 1))
        if error is None and final:
            return                  # already logged with its traceback
        if error is None:
            self.log.info("notified %s: %s %s", item.describe(), item.row.jobname, item.row.state)
        elif final:
            self.log.error("notification for %s not sent after %d attempt(s): %s",
                           item.describe(), tries, _reason(error))
        else:
            self.log.info("notification for %s: attempt %d failed (%s); trying again in %gs",
                          item.describe(), tries, _reason(error), delay)

    def _send(self, item: Notification) -> None:
        if item.target.kind == "syslog":
            self.send_syslog(item.target.tag, item.row)
        else:
            self.send_mail(item.target.addresses, item.row)

    # -- syslog ----------------------------------------------------------------
    def syslog_record(self, tag: str, row: JobRow) -> bytes:
        """`<PRI>TAG: <jobname> <jobid> <state> <msg>`, one line."""
        pri = self.facility * 8 + SEVERITY.get(row.state, 5)
        msg = one_line(row.msg)[:SYSLOG_MSG_MAX]
        return f"<{pri}>{tag}: {row.jobname} {row.jobid} {row.state} {msg}".rstrip().encode()

    def send_syslog(self, tag: str, row: JobRow) -> None:
        record = self.syslog_record(tag, row)
        address = self.notify.syslog_address
        if address.startswith("/"):
            _send_unix(address, record)
            return
        host, _, port = address.rpartition(":")
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.sendto(record, sockaddr)

    # -- mail ------------------------------------------------------------------
    @property
    def sender(self) -> str:
        return self.mail.sender or f"upq@{self.hostname}"

    def mail_message(self, addresses: tuple[str, ...], row: JobRow) -> EmailMessage:
        msg = EmailMessage(policy=MAIL_POLICY)
        msg["Subject"] = f"[upq] {row.jobname} #{row.jobid} {row.state}"
        msg["From"] = self.sender
        msg["To"] = ", ".join(addresses)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid("upq", domain=self.hostname)
        lines = [
            f"Job {row.jobname} #{row.jobid} {row.state} on {self.hostname}.",
            "",
            f"msg:      {_cut(row.msg)}",
            f"params:   {_cut(json.dumps(row.params, ensure_ascii=False))}",
        ]
        if row.result is not None:
            lines.append(f"result:   {_cut(json.dumps(row.result, ensure_ascii=False))}")
        lines += [
            f"attempts: {row.attempts}",
            f"created:  {iso(row.created)}",
            f"started:  {iso(row.started)}",
            f"finished: {iso(row.finished)}",
            f"node:     {row.node or ''}",
            f"host:     {self.hostname}",
        ]
        msg.set_content("\n".join(lines) + "\n")
        return msg

    def send_mail(self, addresses: tuple[str, ...], row: JobRow) -> None:
        message = self.mail_message(addresses, row)
        try:
            with smtp_session(self.mail) as smtp:
                refused = smtp.send_message(message, self.sender, list(addresses))
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPAuthenticationError,
                smtplib.SMTPNotSupportedError) as exc:
            raise PermanentFailure(_reason(exc)) from exc
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                raise PermanentFailure(_reason(exc)) from exc
            raise
        if refused:
            self.log.warning("job %d: mail refused for %s", row.jobid,
                             ", ".join(f"{a} ({c} {m.decode(errors='replace')})"
                                       for a, (c, m) in refused.items()))


def smtp_session(mail: MailConfig) -> smtplib.SMTP:
    """A connected SMTP session, after STARTTLS and login when configured."""
    smtp = smtplib.SMTP(mail.host, mail.port, timeout=mail.timeout)
    try:
        if mail.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if mail.username:
            smtp.login(mail.username, mail.password)
    except BaseException:
        smtp.close()
        raise
    return smtp


def check_smtp(mail: MailConfig | None) -> str | None:
    """Can we reach the SMTP server? None if so, else the reason (a start-up warning)."""
    mail = mail or MailConfig()
    try:
        smtp = smtplib.SMTP(mail.host, mail.port, timeout=min(mail.timeout, PROBE_TIMEOUT))
        try:
            smtp.noop()
        finally:
            smtp.close()
    except OSError as exc:
        return _reason(exc)
    return None


def smtp_warnings(config: Config) -> list[str]:
    """One line per enabled job key that mails, when the SMTP server does not answer."""
    keys = [f"[job {name}] {key}" for name, job in config.enabled_jobs().items()
            for key, targets in (("notify_fail", job.notify_fail), ("notify_success", job.notify_success))
            if any(t.kind == "mail" for t in targets)]
    if not keys:
        return []
    problem = check_smtp(config.mail)
    if problem is None:
        return []
    mail = config.mail or MailConfig()
    where = f"[mail] host = {mail.host}, port = {mail.port}" + ("" if config.mail else " (defaults)")
    return [f"{config.path}: {key}: warning: cannot reach the SMTP server ({where}): {problem}; "
            f"mails will be tried when jobs end" for key in keys]


def one_line(text: str) -> str:
    """Control characters (CR, LF, NUL, ...) become spaces."""
    return text.translate(_CONTROL)


def _cut(text: str) -> str:
    return text if len(text) <= MAIL_FIELD_MAX else text[:MAIL_FIELD_MAX] + " [...]"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error
        return f"{exc.smtp_code} {text.decode(errors='replace') if isinstance(text, bytes) else text}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "all recipients refused: " + ", ".join(
            f"{a} ({c} {m.decode(errors='replace')})" for a, (c, m) in exc.recipients.items())
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _send_unix(path: str, record: bytes) -> None:
    """To a local syslog socket: datagram as usual, stream (LF-framed) if that is what it is."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
        except OSError as exc:
            if exc.errno != errno.EPROTOTYPE:
                raise
        else:
            s.send(record)
            return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(path)
        s.sendall(record + b"\n")
