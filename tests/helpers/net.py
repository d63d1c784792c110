"""Loopback network peers: a free port, a TCP client for the line protocol, a syslog
receiver and a server that never answers."""
from __future__ import annotations

import socket
import time

from conftest import Conn


def free_port() -> int:
    """A port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpConn(Conn):
    """Conn over TCP to [server] listen on 127.0.0.1."""

    def __init__(self, port: int, timeout: float = 10.0):  # noqa: super().__init__ is Unix-only
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def closed(self) -> bool:
        """Nothing more was sent and the server hung up."""
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return self.buf == b""


class SyslogReceiver:
    """A UDP socket on 127.0.0.1 that collects records."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.records: list[str] = []

    def wait(self, count: int = 1, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.records) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {count} syslog record(s); got {self.records}")
            self.sock.settimeout(left)
            try:
                self.records.append(self.sock.recv(65536).decode())
            except socket.timeout:
                pass
        return self.records

    def close(self) -> None:
        self.sock.close()


class Silent:
    """A TCP server that accepts and never says a word: a hung SMTP server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()
