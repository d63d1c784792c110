"""The man pages render without warnings and stay complete: upq.cfg(5) names every key that
parseconfig.py accepts, upq-cli(1) every built-in command."""
from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

import parseconfig
import upqhttpconfig
import upqjobkeys
from conftest import ROOT, need_tool
from upqproto import COMMAND_NAMES

MAN = ROOT / "man"
PAGES = ["upq.8", "upq-cli.1", "upq.cfg.5"]
SECTION_RE = re.compile(r'^\.SS\s+"?\[(\w+)')
# dataclass fields that are not keys of their section
NOT_KEYS = {"name", "options", "extra", "sender"}


@pytest.mark.parametrize("page", PAGES)
def test_man_page_renders_without_warnings(page: str) -> None:
    groff = need_tool("groff", "groff-base")
    proc = subprocess.run([groff, "-ww", "-z", "-man", str(MAN / page)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr


def accepted_keys() -> dict[str, set[str]]:
    """section -> keys, from parseconfig itself: its _<SECTION>_KEYS sets, [paths]' required
    keys and [job x]'s JobConfig fields, so a key added there must be added to the page."""
    keys: dict[str, set[str]] = {}
    for name, value in vars(parseconfig).items():
        if m := re.fullmatch(r"_([A-Z]+)_KEYS", name):
            keys[m.group(1).lower()] = set(value)
    keys["http"] = set(upqhttpconfig.HTTP_KEYS)         # [http] is read by upqhttpconfig.py
    keys["paths"] = {f.name for f in dataclasses.fields(parseconfig.PathsConfig)} - NOT_KEYS
    keys["job"] = {f.name for f in dataclasses.fields(parseconfig.JobConfig)} - NOT_KEYS - {"periodic"}
    keys["job"] |= set(upqjobkeys.SCHEDULE_KEYS)        # JobConfig.periodic holds these four
    return keys


def documented_keys(text: str) -> dict[str, set[str]]:
    """section -> keys the page lists: `.SS [section]`, then `.TP` / `.B "key = default"`."""
    found: dict[str, set[str]] = {}
    section, lines = None, text.splitlines()
    for previous, line in zip([""] + lines, lines):
        if m := SECTION_RE.match(line):
            section = m.group(1)
            found.setdefault(section, set())
        elif section and previous == ".TP" and line.startswith(".B "):
            found[section].add(line[3:].strip('"').split()[0])
    return found


def test_config_page_names_every_key_parseconfig_accepts() -> None:
    accepted = accepted_keys()
    assert {"server", "db", "logging", "mail", "notify"} <= accepted.keys()
    assert accepted["job"] >= {"enabled", "concurrent", "timeout"}, accepted["job"]
    documented = documented_keys((MAN / "upq.cfg.5").read_text())
    missing = {s: sorted(k - documented.get(s, set())) for s, k in accepted.items() if k - documented.get(s, set())}
    assert not missing, f"man/upq.cfg.5 lacks these keys (section: keys): {missing}"
    unknown = {s: sorted(k - accepted.get(s, set())) for s, k in documented.items() if k - accepted.get(s, set())}
    assert not unknown, f"man/upq.cfg.5 lists keys parseconfig does not accept: {unknown}"


def test_cli_page_names_every_command() -> None:
    text = (MAN / "upq-cli.1").read_text()
    section = text.split(".SH COMMANDS", 1)[1].split("\n.SH ", 1)[0]
    listed = {m.group(1) for m in re.finditer(r'^\.BI?\s+"?([a-z_]+)', section, re.M)}
    missing = sorted(COMMAND_NAMES - listed)
    assert not missing, f"man/upq-cli.1 COMMANDS lacks: {missing}"
