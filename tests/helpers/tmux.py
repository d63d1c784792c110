"""A real terminal for client tests: a private tmux server, one 80x24 window, send-keys and
capture-pane."""
from __future__ import annotations

import shlex
import subprocess
import uuid

from conftest import need_tool


class Tmux:
    """One detached session on its own server socket; close() kills the server."""

    def __init__(self, width: int = 80, height: int = 24):
        self.tmux = need_tool("tmux", "tmux")
        self.name = f"upq-{uuid.uuid4().hex[:8]}"
        self.run("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), "sh")
        self.run("set-option", "-g", "remain-on-exit", "on")

    def run(self, *args: str) -> str:
        return subprocess.run([self.tmux, "-L", self.name, *args], capture_output=True, text=True,
                              check=True, timeout=15).stdout

    def type(self, command: list[str], then: str = "") -> None:
        """Type a command line (its words quoted, `then` as it is, e.g. '; echo rc=$?') and Enter."""
        self.run("send-keys", "-t", "t", " ".join(shlex.quote(w) for w in command) + then, "Enter")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "t", *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def close(self) -> None:
        subprocess.run([self.tmux, "-L", self.name, "kill-server"], capture_output=True, timeout=15)
