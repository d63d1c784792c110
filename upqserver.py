"""The sockets: frames request lines and writes the answers back, in order.

One request is one UTF-8 line; each gets exactly one answer line. Lines that
arrive together are answered together: their submissions are stored in one
group commit, and each ACK is written only after that commit. This is the one
place where an UpqError becomes `ERR <reason>` (`answered`). What a line means
is upqcommands.py's business; its grammar is upqproto.py's.
"""
from __future__ import annotations

import grp
import hmac
import logging
import os
import select
import socket
import socketserver
import threading
import time
from typing import Any, Callable, Protocol, TypeVar

import upqproto as proto
from upqerrors import NoCommit, UpqError

ANSWER_TIMEOUT = 9.0           # SPEC: every request is answered within 10 s, database or not
MAX_PENDING = 1000             # submissions in flight per connection before answering
T = TypeVar("T")


class Settling(Protocol):
    """A submission whose answer waits for its commit (upqsubmit.Submitted)."""

    def result(self, timeout: float | None = None) -> Any: ...


class Answers(Protocol):
    """What serves the lines (upqcommands.Dispatcher)."""

    def answer(self, line: str, gone: Callable[[], bool]) -> "str | Settling": ...


def answered(produce: Callable[[], T], log: logging.Logger, what: str) -> "T | str":
    """produce(), or the ERR line for why it failed: the protocol's one error edge."""
    try:
        return produce()
    except UpqError as exc:
        return proto.err(exc.reason)
    except Exception as exc:  # noqa: BLE001 - one bad request must not end the connection
        log.exception("request %r failed", what[:200])
        return proto.err(f"internal error: {type(exc).__name__}")


def settled(item: Settling, deadline: float) -> str:
    """The answer line of a submission once its commit is done; raises why it is not."""
    try:
        acc = item.result(timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise NoCommit("database unavailable: no commit within 9 s; the job may or may not be stored") from None
    return proto.accepted_answer(acc.jobid, acc.msg, acc.ok)


class LineHandler(socketserver.BaseRequestHandler):
    """Reads lines, answers each in order; pipelined submissions share a commit."""

    server: "UpqServer"

    def setup(self) -> None:
        self.authed = not self.server.token      # TCP: the first line must be `auth <token>`

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(self.server.idle_timeout)
        buf = bytearray()
        skipping = False            # inside an over-long line: drop bytes up to the next \n
        partial_since: float | None = None   # a line must be complete within idle_timeout
        while True:
            try:
                data = sock.recv(65536)
            except (socket.timeout, OSError):
                return
            if not data:
                return
            buf += data
            lines: list[Any] = []
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                if skipping:
                    skipping = False
                else:
                    lines.append(proto.TOO_LONG if nl > proto.MAX_LINE else bytes(buf[:nl]))
                del buf[:nl + 1]
            if len(buf) > proto.MAX_LINE:
                if not skipping:
                    lines.append(proto.TOO_LONG)
                    skipping = True
                buf.clear()
            elif skipping:
                buf.clear()
            if lines and not self._answer(sock, lines):
                return
            if not (buf or skipping):
                partial_since = None
            elif partial_since is None or lines:
                partial_since = time.monotonic()
            elif time.monotonic() - partial_since > self.server.idle_timeout:
                # a client trickling one line byte by byte (slow loris) does not keep a thread
                self._send(sock, [proto.err(f"line not finished within {self.server.idle_timeout:g} s")])
                return

    def _answer(self, sock: socket.socket, lines: list[Any]) -> bool:
        answers, log = self.server.answers, self.server.log
        out: list[Any] = []
        for raw in lines:
            if not self.authed:
                if not self._authenticate(raw):
                    self._send(sock, out + [proto.err("auth required")])
                    return False
                out.append(proto.ack())
                continue
            item = answered(lambda: answers.answer(proto.decode_line(raw), self._gone), log,
                            raw if raw is proto.TOO_LONG else repr(raw))
            if not isinstance(item, str):      # a submission waiting for its commit
                out.append(item)
                if len(out) >= MAX_PENDING and not self._send(sock, out):
                    return False
            else:
                if any(not isinstance(o, str) for o in out) and not self._send(sock, out):
                    return False
                out.append(item)
        return self._send(sock, out)

    def _send(self, sock: socket.socket, out: list[Any]) -> bool:
        deadline = time.monotonic() + ANSWER_TIMEOUT      # one deadline for the whole batch
        log = self.server.log
        lines = [item if isinstance(item, str) else answered(lambda: settled(item, deadline), log, "a submission")
                 for item in out]
        self.server.on_answers(lines)
        payload = "".join(line + "\n" for line in lines).encode("utf-8")
        out.clear()
        try:
            sock.sendall(payload)
        except OSError:
            return False
        return True

    def _authenticate(self, raw: Any) -> bool:
        """`auth <token>`, compared in constant time."""
        if raw is proto.TOO_LONG or not raw.startswith(b"auth "):
            return False
        given = raw[5:].rstrip(b"\r").strip()
        self.authed = hmac.compare_digest(given, self.server.token.encode())
        if not self.authed:
            self.server.log.warning("TCP client %s: wrong auth token", self.client_address)
        return self.authed

    def _gone(self) -> bool:
        """Has the client hung up? (checked while `wait` blocks). A client that only closed its
        sending side still reads its answer: Unix sockets tell the two apart by POLLHUP."""
        poller = select.poll()
        poller.register(self.request, select.POLLHUP | select.POLLERR)
        try:
            return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in poller.poll(0))
        except OSError:
            return True


def bind_unix(path: str, mode: int, group: str = "") -> socket.socket:
    """The Unix socket, bound and listening; access is controlled by the file's mode and group.
    KeyError for an unknown group, OSError when it cannot be bound."""
    gid = grp.getgrnam(group).gr_gid if group else -1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        if gid >= 0:
            os.chown(path, -1, gid)
        sock.listen(socket.SOMAXCONN)   # a burst of clients queues; the cap answers ERR busy
    except OSError:
        sock.close()
        raise
    return sock


def bind_tcp(listen: str) -> socket.socket:
    """The optional TCP listener (`host:port`, IPv6 in brackets), bound and listening."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


class UpqServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """Serves one bound socket (Unix or TCP) with a thread per connection, at most
    max_connections of them; with a token, every connection starts with `auth <token>`."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, listener: socket.socket, answers: Answers, *, max_connections: int,
                 idle_timeout: float, logger: logging.Logger, token: str = "",
                 on_answers: Callable[[list[str]], None] = lambda lines: None):
        self.address_family = listener.family
        super().__init__(listener.getsockname(), LineHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.answers = answers
        self.token = token
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.log = logger
        self.on_answers = on_answers          # every batch of answer lines sent (for /metrics)
        self._active = 0                      # connections being served, under _active_lock
        self._active_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._active_lock:
            busy = self._active >= self.max_connections
            if not busy:
                self._active += 1
        if busy:
            try:
                request.sendall(b"ERR busy: too many connections, try again later\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.log.exception("connection handler failed")


def socket_in_use(path: str) -> bool:
    """True if a live daemon answers on this socket file; a stale file is not in use."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
