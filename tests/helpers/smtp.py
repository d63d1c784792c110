"""A real SMTP server on loopback (aiosmtpd) and the mailbox it delivers to."""
from __future__ import annotations

import email
import email.message
import email.policy

from aiosmtpd.controller import Controller

from conftest import wait_for
from helpers.net import free_port


class Mailbox:
    """aiosmtpd handler: keeps every message; can refuse the first `refuse` deliveries."""

    def __init__(self, refuse: int = 0, code: str = "451 try again later"):
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.attempts = 0
        self.refuse = refuse
        self.code = code

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.attempts += 1
        if self.attempts <= self.refuse:
            return self.code
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"

    def wait(self, count: int = 1, timeout: float = 20.0) -> list:
        wait_for(lambda: len(self.messages) >= count, timeout, f"{count} mail(s)")
        return self.messages

    def about(self, jobid: int) -> list:
        return [m for m in self.messages if f"#{jobid} " in m[2]["Subject"]]


class SmtpServer:
    """`with SmtpServer(mailbox) as server:` an SMTP server on 127.0.0.1:server.port."""

    def __init__(self, handler: Mailbox, **kw):
        self.handler = handler
        self.kw = kw

    def __enter__(self) -> "SmtpServer":
        for _ in range(5):      # the free port may be taken by a parallel test run meanwhile
            self.port = free_port()
            self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **self.kw)
            try:
                self.controller.start()
                return self
            except Exception:  # noqa: BLE001 - aiosmtpd wraps bind errors in several types
                continue
        raise AssertionError("could not start the test SMTP server")

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
