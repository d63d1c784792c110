"""The [http] section: the dashboard, /metrics and /healthz (upqhttp.py); off while listen is empty."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inifile import host_port

HTTP_KEYS = {"listen", "token"}


@dataclass(frozen=True)
class HttpConfig:
    listen: str = ""                # host:port or "" (the default: no HTTP at all)
    token: str = ""                 # required when listen is set


def http_section(s: Any) -> HttpConfig:
    """[http] from a parseconfig._Section; problems are noted on it."""
    s.reject_unknown(HTTP_KEYS)
    listen = s.parsed("listen", "", host_port, "expected host:port with a port 1..65535")
    token = s.text("token", "")
    if listen and not token:
        s.problem("token", "token is required when listen is set")
    return HttpConfig(listen=listen, token=token)
