"""The socket server and its line protocol (README, "The socket protocol").

One request is one UTF-8 line; each gets exactly one answer line, in order.
Lines that arrive together are processed together: their submissions are
stored in one group commit, and each ACK is written only after that commit.
"""
from __future__ import annotations

import datetime as dt
import grp
import hmac
import json
import logging
import os
import re
import select
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from module_loader import JOB_NAME_RE, RESERVED_NAMES
from parseconfig import ConfigError
from upqdb import DatabaseUnavailable
from upqschema import STATES, JobRow, shown_state
from upqqueuemngr import JobRejected, QueueManager, Submitted, UnknownJob

MAX_LINE = 64 * 1024
MAX_ANSWER = 1024
ANSWER_TIMEOUT = 9.0           # SPEC: every request is answered within 10 s, database or not
MAX_PENDING = 1000             # submissions in flight per connection before answering
LIST_DEFAULT, LIST_MAX = 100, 1000
MAX_DELAY = 366 * 86400
KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
TOO_LONG = object()            # marks a line that exceeded MAX_LINE
JOB_STATES = tuple(s for s in STATES if s == shown_state(s))


class BadRequest(Exception):
    """The line cannot be understood; str() is the reason for the client."""


@dataclass(frozen=True)
class Request:
    command: str
    args: list[tuple[str, str | None]]   # (key, value); value None for a bare word

    def params(self) -> dict[str, str]:
        """Job parameters: a bare word is a key with an empty value; duplicates are refused."""
        out: dict[str, str] = {}
        for key, value in self.args:
            if not key:
                raise BadRequest(f"param without a key: {':' + (value or '')!r:.60}")
            if not KEY_RE.match(key):
                raise BadRequest(f"bad param name {key!r:.60}: use letters, digits, _ . -")
            if key in out:
                raise BadRequest(f"param {key!r} given twice")
            out[key] = value or ""
        return out


def tokenize(line: str) -> list[tuple[str, int | None]]:
    """Split on whitespace outside double quotes; each token with the index of its first unquoted ':' or '='."""
    tokens: list[tuple[str, int | None]] = []
    buf: list[str] = []
    sep: int | None = None
    in_token = quoted = False
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if quoted:
            if c == "\\" and i + 1 < n and line[i + 1] in '"\\':
                buf.append(line[i + 1])
                i += 1
            elif c == '"':
                quoted = False
            else:
                buf.append(c)
        elif c.isspace():
            if in_token:
                tokens.append(("".join(buf), sep))
                buf, sep, in_token = [], None, False
        else:
            in_token = True
            if c == '"':
                quoted = True
            else:
                if c in ":=" and sep is None:
                    sep = len(buf)
                buf.append(c)
        i += 1
    if quoted:
        raise BadRequest("unterminated double quote")
    if in_token:
        tokens.append(("".join(buf), sep))
    return tokens


def parse_request(line: str) -> Request:
    """`<command> [key:value | key=value | "quoted value" | bare] ...`"""
    tokens = tokenize(line)
    if not tokens:
        raise BadRequest("empty request (try 'help')")
    command = tokens[0][0]
    args = [(tok, None) if sep is None else (tok[:sep], tok[sep + 1:]) for tok, sep in tokens[1:]]
    return Request(command, args)


def split_options(args: list[tuple[str, str | None]]) -> tuple[dict[str, str], list[tuple[str, str | None]]]:
    """Submission options start with '@' (job params cannot), e.g. @delay:60."""
    options: dict[str, str] = {}
    rest = []
    for key, value in args:
        if key.startswith("@"):
            if key not in ("@delay", "@at") or value is None:
                raise BadRequest(f"unknown option {key!r:.40}: use @delay:<seconds> or @at:<ISO time>")
            if options:
                raise BadRequest("give one of @delay and @at, once")
            options[key] = value
        else:
            rest.append((key, value))
    return options, rest


def parse_delay(options: dict[str, str]) -> float | None:
    """Seconds from now until the job is due, from @delay or @at (naive times are UTC)."""
    if "@delay" in options:
        try:
            delay = float(options["@delay"])
        except ValueError:
            raise BadRequest(f"@delay must be a number of seconds, got {options['@delay']!r:.40}") from None
        if not 0 <= delay <= MAX_DELAY:
            raise BadRequest(f"@delay must be between 0 and {MAX_DELAY} seconds")
        return delay
    if "@at" in options:
        try:
            when = dt.datetime.fromisoformat(options["@at"].replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"@at must be an ISO 8601 time like 2030-01-31T12:00:00Z, "
                             f"got {options['@at']!r:.40}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        delay = (when - dt.datetime.now(dt.timezone.utc)).total_seconds()
        if delay > MAX_DELAY:
            raise BadRequest("@at is too far in the future (at most a year)")
        return max(0.0, delay)
    return None


def clean(text: str) -> str:
    """One safe answer line: no CR, LF or NUL, at most MAX_ANSWER bytes."""
    text = text.replace("\r", " ").replace("\n", " ").replace("\0", " ")
    raw = text.encode("utf-8", "replace")
    if len(raw) > MAX_ANSWER:
        text = raw[:MAX_ANSWER].decode("utf-8", "ignore")
    return text


def ack(text: str = "") -> str:
    return clean(f"ACK {text}" if text else "ACK")


def err(text: str) -> str:
    return clean(f"ERR {text}")


def ack_json(kind: str, payload: Any) -> str:
    return f"{kind} {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}"


def _int_arg(text: str | None, what: str, low: int = 1, high: int = 2 ** 63 - 1) -> int:
    if text is None or not text.isascii() or not text.isdigit():
        raise BadRequest(f"{what} must be a whole number, got {text!r:.40}")
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(f"{what} must be between {low} and {high}")
    return value


class Protocol:
    """Turns request lines into answer lines; one instance per daemon, shared by connections."""

    def __init__(self, manager: QueueManager, logger: logging.Logger,
                 reload: Callable[[], list[str]] | None = None):
        self.manager = manager
        self.reload = reload
        self.db = manager.db
        self.log = logger
        self.commands: dict[str, Callable[[Request, Callable[[], bool]], str]] = {
            "ping": self.cmd_ping, "status": self.cmd_status, "wait": self.cmd_wait,
            "list": self.cmd_list, "list_queue": self.cmd_list, "stats": self.cmd_stats,
            "help": self.cmd_help, "cancel": self.cmd_cancel, "retry": self.cmd_retry,
            "reload": self.cmd_reload,
        }

    def answer(self, line: str, gone: Callable[[], bool]) -> "str | Submitted":
        """One request line -> an answer line, or a future for a submission still committing."""
        try:
            req = parse_request(line)
            handler = self.commands.get(req.command)
            if handler is not None:
                return handler(req, gone)
            if req.command in RESERVED_NAMES:
                return err(f"{req.command}: not available on this connection")
            if not JOB_NAME_RE.match(req.command):
                raise BadRequest(f"invalid command name {req.command!r:.60}")
            options, args = split_options(req.args)
            return self.manager.submit(req.command, Request(req.command, args).params(),
                                       delay=parse_delay(options))
        except (BadRequest, UnknownJob, JobRejected, DatabaseUnavailable) as exc:
            return err(str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the connection
            self.log.exception("request %r failed", line[:200])
            return err(f"internal error: {type(exc).__name__}")

    @staticmethod
    def settle(item: "str | Submitted", deadline: float) -> str:
        """The answer line for a submission once its commit is done (or failed)."""
        if isinstance(item, str):
            return item
        try:
            acc = item.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return err("database unavailable: no commit within 9 s; the job may or may not be stored")
        except (DatabaseUnavailable, JobRejected, UnknownJob) as exc:
            return err(str(exc))
        if acc.ok:
            return ack(f"{acc.jobid} {acc.msg}" if acc.msg else str(acc.jobid))
        return err(f"{acc.jobid} failed: {acc.msg}")

    # -- built-in commands -------------------------------------------------
    def cmd_ping(self, req: Request, gone: Callable[[], bool]) -> str:
        return ack("pong")

    @staticmethod
    def _jobid(req: Request, usage: str) -> int:
        if not req.args or req.args[0][1] is not None:
            raise BadRequest(f"usage: {usage}")
        return _int_arg(req.args[0][0], "jobid")

    def _job(self, req: Request, usage: str) -> JobRow:
        jobid = self._jobid(req, usage)
        row = self.db.get_job(jobid)
        if row is None:
            raise UnknownJob(f"no job {jobid}")
        return row

    def cmd_status(self, req: Request, gone: Callable[[], bool]) -> str:
        if len(req.args) != 1:
            raise BadRequest("usage: status <jobid>")
        row = self._job(req, "status <jobid>")
        return ack_json("ACK", {**row.to_json(), "children": self.db.children(row.jobid)})

    def cmd_cancel(self, req: Request, gone: Callable[[], bool]) -> str:
        if len(req.args) != 1:
            raise BadRequest("usage: cancel <jobid>")
        return ack_json("ACK", self.manager.cancel(self._jobid(req, "cancel <jobid>")).to_json())

    def cmd_retry(self, req: Request, gone: Callable[[], bool]) -> str:
        if len(req.args) != 1:
            raise BadRequest("usage: retry <jobid>")
        return ack_json("ACK", self.manager.retry(self._jobid(req, "retry <jobid>")).to_json())

    def cmd_wait(self, req: Request, gone: Callable[[], bool]) -> str:
        usage = "wait <jobid> [timeout:<seconds>]"
        jobid = self._jobid(req, usage)
        timeout: float | None = None
        for key, value in req.args[1:]:
            if key != "timeout" or value is None:
                raise BadRequest(f"usage: {usage}")
            try:
                timeout = float(value)
            except ValueError:
                raise BadRequest(f"timeout must be a number of seconds, got {value!r:.40}") from None
            if not 0 <= timeout < 10 ** 7:
                raise BadRequest("timeout must be between 0 and 10000000 seconds")
        final = self.manager.wait(jobid, timeout, gone)
        if final is None:
            return err(f"timeout: job {jobid} has not ended")
        return ack_json(final.wait_answer, final.to_json())

    def cmd_list(self, req: Request, gone: Callable[[], bool]) -> str:
        state, limit = None, LIST_DEFAULT
        for key, value in req.args:
            if value is None and key in JOB_STATES and state is None:
                state = key
            elif key == "limit" and value is not None:
                limit = _int_arg(value, "limit", 1, LIST_MAX)
            else:
                raise BadRequest(f"usage: list [{'|'.join(JOB_STATES)}] [limit:<1..{LIST_MAX}>]")
        return ack_json("ACK", [row.to_json() for row in self.db.list_jobs(state, limit)])

    def cmd_stats(self, req: Request, gone: Callable[[], bool]) -> str:
        return ack_json("ACK", {"jobs": self.manager.stats(), "nodes": self.db.list_nodes()})

    def cmd_reload(self, req: Request, gone: Callable[[], bool]) -> str:
        if req.args:
            raise BadRequest("usage: reload")
        if self.reload is None:
            raise BadRequest("reload is not available")
        try:
            changes = self.reload()
        except ConfigError as exc:
            return err(f"reload failed, the running config is kept: {'; '.join(exc.problems)}")
        return ack("reloaded: " + ("; ".join(changes) if changes else "no job changes"))

    def cmd_help(self, req: Request, gone: Callable[[], bool]) -> str:
        return ack_json("ACK", {
            "commands": {
                "<job> [key:value ...]": "submit a job; answers ACK <jobid> [msg]",
                "ping": "ACK pong", "status <jobid>": "the job as JSON",
                "wait <jobid> [timeout:<seconds>]": "block until the job has ended",
                "list [state] [limit:<n>]": "newest jobs first (list_queue is the old name)",
                "cancel <jobid>": "a queued job never runs; a running one is told to stop",
                "retry <jobid>": "queue a failed or cancelled job again",
                "stats": "counts per job type and state", "help": "this text",
                "reload": "re-read the [job] sections and reopen the log (like SIGHUP)",
                "<job> ... @delay:<seconds> | @at:<ISO time>": "run the job no sooner than then"},
            "jobs": {name: {"concurrent": jt.config.concurrent}
                     for name, jt in sorted(self.manager.types.items())}})


class LineHandler(socketserver.BaseRequestHandler):
    """Reads lines, answers each in order; pipelined submissions share a commit."""

    server: "UpqUnixServer"

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
                    lines.append(TOO_LONG if nl > MAX_LINE else bytes(buf[:nl]))
                del buf[:nl + 1]
            if len(buf) > MAX_LINE:
                if not skipping:
                    lines.append(TOO_LONG)
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
                self._send(sock, [err(f"line not finished within {self.server.idle_timeout:g} s")])
                return

    def _answer(self, sock: socket.socket, lines: list[Any]) -> bool:
        protocol = self.server.protocol
        out: list[Any] = []
        for raw in lines:
            if not self.authed:
                if not self._authenticate(raw):
                    self._send(sock, out + [err("auth required")])
                    return False
                out.append(ack())
                continue
            try:
                item = protocol.answer(decode_line(raw), self._gone)
            except BadRequest as exc:
                item = err(str(exc))
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
        payload = "".join(Protocol.settle(item, deadline) + "\n" for item in out).encode("utf-8")
        out.clear()
        try:
            sock.sendall(payload)
        except OSError:
            return False
        return True

    def _authenticate(self, raw: Any) -> bool:
        """`auth <token>`, compared in constant time."""
        if raw is TOO_LONG or not raw.startswith(b"auth "):
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


def decode_line(raw: Any) -> str:
    """A framed request as text; BadRequest when it cannot be one."""
    if raw is TOO_LONG:
        raise BadRequest(f"line longer than {MAX_LINE} bytes; not stored")
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if b"\0" in raw:
        raise BadRequest("NUL byte in request")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request is not valid UTF-8") from None


class _CappedThreadingServer(socketserver.ThreadingMixIn):
    """A thread per connection, capped at max_connections; shared by the Unix and TCP servers."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = socket.SOMAXCONN     # a burst of clients queues; the cap answers ERR busy
    token = ""

    def _setup_cap(self, protocol: Protocol, max_connections: int, idle_timeout: float,
                   logger: logging.Logger) -> None:
        self.protocol = protocol
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.log = logger
        self._active = 0
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
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        super().process_request(request, client_address)  # type: ignore[misc]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.log.exception("connection handler failed")


class UpqUnixServer(_CappedThreadingServer, socketserver.UnixStreamServer):
    """The Unix socket: access is controlled by the file's mode and group."""

    def __init__(self, path: str, protocol: Protocol, *, max_connections: int,
                 idle_timeout: float, socket_mode: int, socket_group: str = "",
                 logger: logging.Logger):
        self._setup_cap(protocol, max_connections, idle_timeout, logger)
        self.path = path
        socketserver.UnixStreamServer.__init__(self, path, LineHandler)
        os.chmod(path, socket_mode)
        if socket_group:
            os.chown(path, -1, grp.getgrnam(socket_group).gr_gid)


class UpqTCPServer(_CappedThreadingServer, socketserver.TCPServer):
    """The optional TCP listener: every connection starts with `auth <token>`."""

    allow_reuse_address = True

    def __init__(self, listen: str, token: str, protocol: Protocol, *, max_connections: int,
                 idle_timeout: float, logger: logging.Logger):
        self._setup_cap(protocol, max_connections, idle_timeout, logger)
        self.token = token
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socketserver.TCPServer.__init__(self, (host, int(port)), LineHandler)


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
