"""The daemon's HTTP side ([http] listen): /healthz, /metrics and the dashboard, served by an
http.server ThreadingHTTPServer in the daemon's own threads (started and stopped by upq.py).

Security: every path but /login needs a dashboard session or `Authorization: Bearer <token>`
(GET only: actions need a session). A session comes from the login form (POST /login with the
token) as an HttpOnly, SameSite=Strict cookie; every POST needs the session's CSRF token and,
when the browser sends one, an Origin matching the Host. Sessions live in memory (under a lock)
and die with the daemon or after SESSION_SECONDS.
"""
from __future__ import annotations

import hmac
import json
import logging
import secrets
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import text

from upqerrors import DatabaseUnavailable

if TYPE_CHECKING:
    from upqdb import Database
    from upqmetrics import Metrics
    from upqqueuemngr import QueueManager

SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000
MAX_BODY = 64 * 1024
COOKIE = "upq_session"


@dataclass(frozen=True)
class Reply:
    """One HTTP answer."""
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, (json.dumps(payload) + "\n").encode(), "application/json")


@dataclass
class Session:
    csrf: str
    expires: float


class Sessions:
    """Logged-in browsers: cookie value -> Session, under `_lock`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def new(self) -> tuple[str, Session]:
        sid, s = secrets.token_urlsafe(32), Session(secrets.token_urlsafe(24), time.monotonic() + SESSION_SECONDS)
        with self._lock:
            now = time.monotonic()
            for k in [k for k, v in self._by_id.items() if v.expires < now]:
                del self._by_id[k]
            if len(self._by_id) >= MAX_SESSIONS:
                self._by_id.pop(next(iter(self._by_id)))
            self._by_id[sid] = s
        return sid, s

    def get(self, sid: str) -> Session | None:
        with self._lock:
            s = self._by_id.get(sid)
            if s is None or s.expires < time.monotonic():
                return None
            return s

    def drop(self, sid: str) -> None:
        with self._lock:
            self._by_id.pop(sid, None)


class Request:
    """What a route sees of one HTTP request."""

    def __init__(self, handler: "Handler", method: str, path: str, query: dict[str, str],
                 form: dict[str, str], session: Session | None, sid: str):
        self.handler = handler
        self.method = method
        self.path = path
        self.query = query
        self.form = form
        self.session = session
        self.sid = sid


Route = Callable[[Request], Reply]


class HttpApp:
    """Routes and their guards; the dashboard adds its routes through `pages`."""

    def __init__(self, token: str, manager: "QueueManager", db: "Database", metrics: "Metrics",
                 logger: logging.Logger):
        self.token = token
        self.manager = manager
        self.db = db
        self.metrics = metrics
        self.log = logger
        self.sessions = Sessions()
        self.pages: dict[tuple[str, str], Route] = {}       # (method, path) -> route, session needed
        self.public: dict[str, Reply] = {}                  # GET path -> fixed reply (CSS, JS)
        self.login_page: Callable[[str], Reply] = lambda error: Reply(200, b"login")

    # -- the open routes -----------------------------------------------------
    def healthz(self) -> Reply:
        """200 when the daemon serves and its database answers; 503 naming the problem."""
        if self.manager.stopping:
            return json_reply(503, {"status": "unavailable", "problem": "upq is stopping"})
        try:
            started = time.monotonic()
            self.db.read(lambda conn: conn.execute(text("SELECT 1")).scalar())
            ms = (time.monotonic() - started) * 1000
        except DatabaseUnavailable as exc:
            return json_reply(503, {"status": "unavailable", "problem": exc.reason})
        return json_reply(200, {"status": "ok", "node": self.manager.node, "db_ms": round(ms, 2),
                                "jobs": sorted(self.manager.types)})

    def bearer_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token.encode())


class Handler(BaseHTTPRequestHandler):
    """One request: authenticate, check CSRF and Origin on POST, route, answer."""

    server: "HttpServer"
    protocol_version = "HTTP/1.1"
    server_version = "upq"
    sys_version = ""
    timeout = 30            # a client that stops sending does not keep its thread
    wbufsize = -1           # headers and body leave in one write (flushed after each request) ...
    disable_nagle_algorithm = True      # ... and at once: no 40 ms Nagle / delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        self.server.app.log.debug("http %s: %s", self.client_address[0], format % args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def _serve(self, method: str) -> None:
        app = self.server.app
        try:
            reply = self._route(app, method)
        except DatabaseUnavailable as exc:
            reply = Reply(503, f"database unavailable: {exc.reason}\n".encode())
        except Exception:  # noqa: BLE001 - one bad request must not end the server
            app.log.exception("http %s %s failed", method, self.path[:200])
            reply = Reply(500, b"internal error\n")
        self._send(reply)

    def _route(self, app: HttpApp, method: str) -> Reply:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        sid = self._cookie(COOKIE)
        session = app.sessions.get(sid) if sid else None
        if url.path in ("/healthz", "/metrics") and method == "GET":
            if session is None and not app.bearer_ok(self.headers.get("Authorization")):
                return Reply(401, b"unauthorized: send Authorization: Bearer <token>\n",
                             headers=(("WWW-Authenticate", 'Bearer realm="upq"'),))
            if url.path == "/healthz":
                return app.healthz()
            from upqmetrics import CONTENT_TYPE
            return Reply(200, app.metrics.render(), CONTENT_TYPE)
        form: dict[str, str] = {}
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_BODY:
                return Reply(413, b"request body too large\n")
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode("utf-8", "replace")))
            if not self._same_origin():
                return Reply(403, b"forbidden: the Origin of this request is not this dashboard\n")
        if url.path == "/login":
            return self._login(app, method, form)
        if method == "GET" and (session is not None or app.bearer_ok(self.headers.get("Authorization"))):
            if url.path in app.public:
                return app.public[url.path]
            if url.path.startswith("/jobs/"):           # /jobs/<jobid>
                query["id"] = url.path[len("/jobs/"):]
                url = url._replace(path="/jobs/")
            route = app.pages.get(("GET", url.path))
            return route(Request(self, method, url.path, query, form, session, sid)) if route \
                else Reply(404, b"not found\n")
        if session is None:
            if method == "GET":
                return Reply(303, b"", headers=(("Location", "/login"),))
            return Reply(401, b"unauthorized: log in first\n")
        if method == "POST" and not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
            return Reply(403, b"forbidden: missing or wrong CSRF token; reload the page\n")
        if url.path == "/logout" and method == "POST":
            app.sessions.drop(sid)
            return Reply(303, b"", headers=(("Location", "/login"), ("Set-Cookie", self._cookie_header("", 0))))
        route = app.pages.get((method, url.path))
        if route is None:
            return Reply(404, b"not found\n")
        return route(Request(self, method, url.path, query, form, session, sid))

    def _login(self, app: HttpApp, method: str, form: dict[str, str]) -> Reply:
        if method == "GET":
            return app.login_page("")
        if not app.token_ok(form.get("token", "")):
            app.log.warning("dashboard: wrong token from %s", self.client_address[0])
            page = app.login_page("wrong token")
            return Reply(401, page.body, page.content_type)
        sid, _ = app.sessions.new()
        return Reply(303, b"", headers=(("Location", "/"),
                                        ("Set-Cookie", self._cookie_header(sid, SESSION_SECONDS))))

    def _cookie_header(self, value: str, max_age: int) -> str:
        return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"

    def _cookie(self, name: str) -> str:
        for part in (self.headers.get("Cookie") or "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return ""

    def _same_origin(self) -> bool:
        """A POST's Origin (when sent) must be this server as the browser reached it."""
        origin = self.headers.get("Origin")
        if origin is None:
            return True
        host = self.headers.get("Host", "")
        return origin in (f"http://{host}", f"https://{host}")

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status, HTTPStatus(reply.status).phrase)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        for key, value in reply.headers:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(reply.body)


class HttpServer(ThreadingHTTPServer):
    """Serves the bound listener (from prepare()) with a thread per connection."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, listener: socket.socket, app: HttpApp):
        self.address_family = listener.family
        super().__init__(listener.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.app = app

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5}, name="http", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
