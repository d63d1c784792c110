"""The ini file's syntax and plain values: reading the file with clear errors, and the
parsers of ports, addresses, modes and notify targets. parseconfig.py turns what this reads into Config."""
from __future__ import annotations

import configparser
import re
from dataclasses import dataclass

HEADER_RE = re.compile(r"^\s*\[(.+)\]")
# A ";" or "#" after whitespace starts an inline comment, silently cutting a target list.
CUT_TARGETS_RE = re.compile(r"^\s*(notify_fail|notify_success)\s*[=:].*\s[;#]\s*(mail|syslog)\b", re.I)


class BadValue(ValueError):
    """A ValueError whose message is worth showing to the person editing the file."""


def read_ini(path: str) -> tuple[configparser.ConfigParser | None, list[str]]:
    """Parse the ini syntax; a file that cannot be read or parsed gets a clear line."""
    # A private default section makes a stray [DEFAULT] an ordinary, unknown section
    # instead of keys silently copied into every other section.
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), default_section="\0default"
    )
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        return None, [f"{path}: cannot read config: {exc.strerror or exc}"]
    except UnicodeDecodeError as exc:
        return None, [f"{path}: cannot read config: not UTF-8 ({exc.reason} at byte {exc.start})"]
    lines = text.splitlines()
    try:
        parser.read_string(text, source=path)
    except configparser.MissingSectionHeaderError as exc:
        return None, [f"{path}: line {exc.lineno}: a [section] header must come first, got {exc.line.strip()!r}"]
    except configparser.DuplicateSectionError as exc:
        return None, [f"{path}: line {exc.lineno}: [{exc.section}] appears twice"]
    except configparser.DuplicateOptionError as exc:
        return None, [f"{path}: line {exc.lineno}: [{exc.section}] {exc.option}: appears twice"]
    except configparser.ParsingError as exc:
        return None, [f"{path}: line {n}: expected 'key = value', got {lines[n - 1].strip()!r}"
                      for n, _ in exc.errors]
    except configparser.Error as exc:
        return None, [f"{path}: {' '.join(str(exc).split())}"]
    return parser, cut_target_lists(path, text)


def cut_target_lists(path: str, text: str) -> list[str]:
    """Catch 'syslog ; mail x@y' where configparser took '; mail x@y' for a comment."""
    problems, section = [], ""
    for number, line in enumerate(text.splitlines(), 1):
        if header := HEADER_RE.match(line):
            section = header.group(1).strip()
        elif cut := CUT_TARGETS_RE.match(line):
            problems.append(f"{path}: [{section}] {cut.group(1).lower()}: line {number}: a space before "
                            f"';' or '#' starts a comment and drops the targets after it; "
                            f"write 'syslog; mail ...'")
    return problems


def host_port(raw: str) -> str:
    host, colon, port_text = raw.rpartition(":")
    if not colon or not host.strip():
        raise ValueError
    port_number(port_text)
    return raw


def port_number(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 65535:
        raise ValueError
    return value


def octal_mode(raw: str) -> int:
    value = int(raw, 8)
    if not 0 <= value <= 0o7777:
        raise ValueError
    return value


def syslog_address(raw: str) -> str:
    return raw if raw.startswith("/") else host_port(raw)


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(raw: str) -> float:
    """'90', '90s', '15m', '1h', '7d' -> seconds; ValueError for anything else or a negative."""
    text = raw.strip().lower()
    unit = DURATION_UNITS.get(text[-1:], 0)
    number = float(text[:-1] if unit else text)
    if number != number or number < 0 or number in (float("inf"),):
        raise ValueError
    return number * (unit or 1)


DEFAULT_SYSLOG_TAG = "upq"


@dataclass(frozen=True)
class NotifyTarget:
    """One place a finished job is reported to."""
    kind: str                       # "syslog" or "mail"
    tag: str = DEFAULT_SYSLOG_TAG   # syslog only
    addresses: tuple[str, ...] = () # mail only


TARGETS_HELP = "expected 'syslog [tag]' or 'mail <address> ...', several separated by ';'"


def notify_targets(raw: str) -> tuple[NotifyTarget, ...]:
    """'syslog ops; mail a@b.org, c@d.org' -> targets; ValueError names the bad one."""
    targets = []
    for piece in raw.split(";"):
        words = piece.split()
        if not words:
            continue
        kind, rest = words[0].lower(), piece.strip()[len(words[0]):]
        if kind == "syslog":
            if len(words) > 2:
                raise BadValue(f"a syslog tag is one word: {piece.strip()!r}")
            targets.append(NotifyTarget("syslog", tag=words[1] if len(words) == 2 else DEFAULT_SYSLOG_TAG))
        elif kind == "mail":
            addresses = tuple(a for a in re.split(r"[\s,]+", rest) if a)
            if not addresses:
                raise BadValue("mail needs at least one address")
            for address in addresses:
                if not looks_like_address(address):
                    raise BadValue(f"{address!r} is not a mail address")
            targets.append(NotifyTarget("mail", addresses=addresses))
        else:
            raise BadValue(f"unknown target {words[0]!r}")
    return tuple(targets)


def looks_like_address(address: str) -> bool:
    local, at, domain = address.partition("@")
    return bool(at and local and domain and "@" not in domain)
