"""Bash completion for upq-cli offers options, the commands and job types a running upq
names in `help`, and falls back to the built-in commands when no upq answers."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import CLI, ROOT, SQLITE_ONLY, Daemon

COMPLETION = ROOT / "contrib" / "upq-cli.bash-completion"


def complete(*words: str) -> set[str]:
    """What the completion function offers for the last of words (words[0] is the program)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    array = " ".join(f"'{w}'" for w in words)
    script = (f"source {COMPLETION}; COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; "
              f"_upq_cli; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    proc = subprocess.run([bash, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_options_complete() -> None:
    assert {"--wait", "--json", "--socket"} <= complete("upq-cli", "--")


def test_without_a_daemon_the_builtin_commands_complete() -> None:
    offered = complete(str(CLI), "-s", "/nonexistent/upq.sock", "")
    assert {"ping", "status", "wait", "list", "stats"} <= offered


@SQLITE_ONLY
def test_a_running_daemon_offers_its_job_types_and_commands(daemon: Daemon) -> None:
    offered = complete(str(CLI), "-s", daemon.socket, "")
    assert {"hello", "fail", "sleep", "record", "ping", "reload"} <= offered, offered
    assert complete(str(CLI), "-s", daemon.socket, "he") == {"hello", "help"}


def test_list_completes_states() -> None:
    assert {"failed", "done", "limit:"} <= complete("upq-cli", "list", "")
