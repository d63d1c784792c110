"""A tiny HTTP client for the daemon's [http] side: real requests over TCP, a cookie kept by hand."""
from __future__ import annotations

import http.client
import re
import urllib.parse
from dataclasses import dataclass, field

from conftest import Daemon
from helpers.net import free_port

TOKEN = "s3cret-dashboard-token"


def http_daemon(make_daemon, jobs: dict | None = None, **kw) -> tuple[Daemon, int]:
    """A daemon with [http] listen on a free port and TOKEN."""
    port = free_port()
    d = make_daemon(jobs=jobs, extra=f"[http]\nlisten = 127.0.0.1:{port}\ntoken = {TOKEN}\n", **kw)
    return d, port


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: str


@dataclass
class Browser:
    """Requests to one daemon; keeps the session cookie the login sets."""
    port: int
    cookie: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict | None = None, headers: dict | None = None) -> Resp:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        hdrs = {**self.extra, **(headers or {})}
        if self.cookie:
            hdrs["Cookie"] = self.cookie
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace"))
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Resp:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict, **kw) -> Resp:
        return self.request("POST", path, form=form, **kw)

    def login(self, token: str = TOKEN) -> Resp:
        r = self.post("/login", {"token": token})
        if r.status == 303:
            self.cookie = r.headers["set-cookie"].split(";")[0]
        return r

    def csrf(self) -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', self.get("/").body)
        assert m, "no CSRF token on the overview"
        return m.group(1)
