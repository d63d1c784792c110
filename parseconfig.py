"""Read upq.cfg into frozen, typed objects; every problem names file, section and key.

Rules the loader applies everywhere:
- an empty value (``key =``) means "not set": the default applies, except for
  required keys ([paths] socket and jobs_dir, [job x] enabled);
- a value that begins with ``./`` is resolved against the config file's folder
  for [logging] logfile, every [paths] value and a ``sqlite:///./x.db`` url;
  [job] values reach the job exactly as written;
- ``;`` and ``#`` start a comment only after whitespace, so write
  ``notify_fail = syslog; mail ops@example.org`` (no space before ``;``).
"""
from __future__ import annotations

import configparser
import logging.handlers
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, TypeVar

from inifile import (DEFAULT_SYSLOG_TAG, TARGETS_HELP, BadValue, NotifyTarget, duration, host_port, notify_targets,
                     octal_mode, port_number, read_ini, syslog_address)
from module_loader import job_name_problem
from upqerrors import ConfigError
from upqjobkeys import Periodic, periodic_from, priority_from, unique_from
from upqhttpconfig import HttpConfig, http_section
from upqprocconfig import DEFAULT_KILL_GRACE, DEFAULT_LOG_LIMIT, isolation_keys

__all__ = ["ConfigError", "Config", "JobConfig", "load_config"]

# Every default lives here, once.
DEFAULT_SOCKET_MODE = 0o660
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_NODE_TIMEOUT = 60.0
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_CONCURRENT = 1
DEFAULT_RETRY_DELAY = 30.0
DEFAULT_RETRIES = 0
DEFAULT_DB_URL = "sqlite:///./var/upq.db"
LOGLEVELS = ("debug", "info", "warning", "error")
DURABILITIES = ("full", "normal")


@dataclass(frozen=True)
class LoggingConfig:
    loglevel: str = "info"          # debug | info | warning | error
    logfile: str = "-"              # absolute path, "-" (stderr) or "syslog"


@dataclass(frozen=True)
class PathsConfig:
    socket: str                     # absolute path
    jobs_dir: str                   # absolute path
    extra: Mapping[str, str] = field(default_factory=dict)  # other keys, './' resolved


@dataclass(frozen=True)
class DbConfig:
    url: str                        # SQLAlchemy url; a sqlite './' path already resolved
    durability: str = "full"        # full | normal (SQLite synchronous)


@dataclass(frozen=True)
class ServerConfig:
    socket_mode: int = DEFAULT_SOCKET_MODE
    socket_group: str = ""
    listen: str = ""                # host:port or ""
    token: str = ""
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    allow_root: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    node_name: str = ""             # "" = host name and socket path
    node_timeout: float = DEFAULT_NODE_TIMEOUT
    poll_interval: float = DEFAULT_POLL_INTERVAL
    keep_done: float = 7 * 86400.0  # seconds an ended job is kept; 0 = forever (upqretention.py)
    keep_failed: float = 30 * 86400.0
    keep_cancelled: float = 7 * 86400.0
    max_interrupted: int = 3        # interrupted runs before a job ends failed; 0 = no cap


@dataclass(frozen=True)
class MailConfig:
    host: str = "localhost"
    port: int = 25
    sender: str = ""                # key "from"; "" = upq@<hostname>
    starttls: bool = False
    username: str = ""
    password: str = ""
    timeout: float = 10.0


@dataclass(frozen=True)
class NotifyConfig:
    syslog_address: str = "/dev/log"   # a path or host:port (UDP)
    syslog_facility: str = "user"


@dataclass(frozen=True)
class JobConfig:
    name: str
    enabled: bool
    concurrent: int = DEFAULT_CONCURRENT
    notify_fail: tuple[NotifyTarget, ...] = ()
    notify_success: tuple[NotifyTarget, ...] = ()
    retries: int = DEFAULT_RETRIES
    retry_delay: float = DEFAULT_RETRY_DELAY
    timeout: float | None = None
    keep_done: float | None = None          # None: [server]'s
    keep_failed: float | None = None
    keep_cancelled: float | None = None
    max_interrupted: int | None = None      # None: [server]'s
    max_queued: int = 0                     # queued jobs of the type at most; 0 = no cap
    options: Mapping[str, str] = field(default_factory=dict)  # the whole section as written (self.jobcfg)
    periodic: "Periodic | None" = None      # schedule, schedule_tz, schedule_params, schedule_overlap
    unique: tuple[str, ...] = ()            # param names that make a job a duplicate ("*" = all)
    priority: int = 0                       # default priority of the type's jobs
    isolation: str = "thread"       # thread | process (issue 13)
    kill_grace: float = DEFAULT_KILL_GRACE  # process: seconds between SIGTERM and SIGKILL
    max_memory: int = 0             # process: RLIMIT_AS in bytes; 0 = none
    max_cpu: float | None = None    # process: CPU seconds per run (RLIMIT_CPU)
    max_runs_per_process: int = 0   # process: replace a worker after that many runs; 0 = never
    user: str = ""                  # process, daemon running as root: run workers as this user
    log_limit: int = DEFAULT_LOG_LIMIT  # characters of log kept per attempt


@dataclass(frozen=True)
class Config:
    path: str                       # absolute path of the file read
    logging: LoggingConfig
    paths: PathsConfig
    db: DbConfig
    server: ServerConfig
    mail: MailConfig | None         # None when the section is absent
    notify: NotifyConfig
    jobs: Mapping[str, JobConfig]   # every [job x] section, enabled or not
    http: HttpConfig = HttpConfig()

    def enabled_jobs(self) -> dict[str, JobConfig]:
        """The job types upq loads and serves."""
        return {name: job for name, job in self.jobs.items() if job.enabled}


def load_config(path: str) -> Config:
    """Read and check the whole file at once, so one run lists every problem."""
    parser, problems = read_ini(path)
    if parser is None:
        raise ConfigError(problems)
    loader = _Loader(path, problems)
    config = loader.build(parser)
    if problems:
        raise ConfigError(problems, partial=config)
    return config


# ---------------------------------------------------------------- reading

_LOGGING_KEYS = {"loglevel", "logfile"}
_DB_KEYS = {"url", "durability"}
_SERVER_KEYS = {
    "socket_mode", "socket_group", "listen", "token", "shutdown_grace", "allow_root",
    "max_connections", "idle_timeout", "node_name", "node_timeout", "poll_interval",
    "keep_done", "keep_failed", "keep_cancelled", "max_interrupted",
}
_MAIL_KEYS = {"host", "port", "from", "starttls", "username", "password", "timeout"}
_NOTIFY_KEYS = {"syslog_address", "syslog_facility"}
_SIMPLE_SECTIONS = {"logging", "paths", "db", "server", "mail", "notify", "http"}
_DURATION = "expected a duration like 90s, 15m, 1h or 7d (0 = keep forever)"
_SQLITE_RELATIVE_RE = re.compile(r"^(sqlite(?:\+\w+)?:///)(\./.*)$")
T = TypeVar("T")


class _Loader:
    """Turns parsed sections into Config, noting problems instead of stopping at the first."""

    def __init__(self, path: str, problems: list[str]):
        self.label = path
        self.folder = os.path.dirname(os.path.abspath(path))
        self.problems = problems

    def build(self, parser: configparser.ConfigParser) -> Config:
        """Check every section, known or not, and assemble the Config."""
        sections = {name: dict(parser[name]) for name in parser.sections()}

        def section(name: str) -> _Section:
            return _Section(self, name, sections.get(name, {}))

        logging_config = self.logging_section(section("logging"))
        paths = self.paths_section(section("paths"))
        db = self.db_section(section("db"))
        server = self.server_section(section("server"))
        mail = self.mail_section(section("mail")) if "mail" in sections else None
        notify = self.notify_section(section("notify"))
        http = http_section(section("http"))
        jobs: dict[str, JobConfig] = {}
        for name, values in sections.items():
            if name == "job" or name.startswith("job "):
                job = self.job(name, values)
                if job is not None and job.name in jobs:
                    self.problems.append(f"{self.label}: [{name}]: job {job.name!r} is configured twice")
                elif job is not None:
                    jobs[job.name] = job
            elif name not in _SIMPLE_SECTIONS:
                self.problems.append(f"{self.label}: [{name}]: unknown section")
        return Config(path=os.path.abspath(self.label), logging=logging_config, paths=paths,
                      db=db, server=server, mail=mail, notify=notify, jobs=jobs, http=http)

    def resolve(self, value: str) -> str:
        """'./x' means next to the config file, whatever the working folder is."""
        if value.startswith("./"):
            return os.path.normpath(os.path.join(self.folder, value))
        return value

    def logging_section(self, s: _Section) -> LoggingConfig:
        s.reject_unknown(_LOGGING_KEYS)
        logfile = s.text("logfile", LoggingConfig.logfile)
        return LoggingConfig(
            loglevel=s.choice("loglevel", LoggingConfig.loglevel, LOGLEVELS),
            logfile=logfile if logfile in ("-", "syslog") else self.resolve(logfile),
        )

    def paths_section(self, s: _Section) -> PathsConfig:
        # Every key is allowed here: the others are handed to jobs as self.paths.
        resolved = {key: self.resolve(value) for key, value in s.values.items()}
        for key in ("socket", "jobs_dir"):
            if not resolved.get(key):
                s.problem(key, "is required")
        extra = {k: v for k, v in resolved.items() if k not in ("socket", "jobs_dir")}
        return PathsConfig(resolved.get("socket", ""), resolved.get("jobs_dir", ""), extra)

    def db_section(self, s: _Section) -> DbConfig:
        s.reject_unknown(_DB_KEYS)
        url = s.text("url", DEFAULT_DB_URL)
        if "://" not in url:
            s.problem("url", f"expected a database url like {DEFAULT_DB_URL}, got {url!r}")
        elif m := _SQLITE_RELATIVE_RE.match(url):
            # SQLAlchemy would resolve it against the working folder instead.
            url = m.group(1) + self.resolve(m.group(2))
        return DbConfig(url=url, durability=s.choice("durability", DbConfig.durability, DURABILITIES))

    def server_section(self, s: _Section) -> ServerConfig:
        s.reject_unknown(_SERVER_KEYS)
        d = ServerConfig()
        listen = s.parsed("listen", "", host_port, "expected host:port with a port 1..65535")
        token = s.text("token", d.token)
        if listen and not token:
            s.problem("token", "token is required when listen is set")
        return ServerConfig(
            socket_mode=s.parsed("socket_mode", d.socket_mode, octal_mode,
                                 "expected an octal file mode like 0660"),
            socket_group=s.text("socket_group", d.socket_group),
            listen=listen,
            token=token,
            shutdown_grace=s.number("shutdown_grace", d.shutdown_grace, minimum=0.0),
            allow_root=s.boolean("allow_root", d.allow_root),
            max_connections=s.integer("max_connections", d.max_connections, minimum=1),
            idle_timeout=s.number("idle_timeout", d.idle_timeout, above=0.0),
            node_name=s.text("node_name", d.node_name),
            node_timeout=s.number("node_timeout", d.node_timeout, above=0.0),
            poll_interval=s.number("poll_interval", d.poll_interval, above=0.0),
            keep_done=s.parsed("keep_done", d.keep_done, duration, _DURATION),
            keep_failed=s.parsed("keep_failed", d.keep_failed, duration, _DURATION),
            keep_cancelled=s.parsed("keep_cancelled", d.keep_cancelled, duration, _DURATION),
            max_interrupted=s.integer("max_interrupted", d.max_interrupted, minimum=0),
        )

    def mail_section(self, s: _Section) -> MailConfig:
        s.reject_unknown(_MAIL_KEYS)
        d = MailConfig()
        return MailConfig(
            host=s.text("host", d.host),
            port=s.parsed("port", d.port, port_number, "expected a port number 1..65535"),
            sender=s.text("from", d.sender),
            starttls=s.boolean("starttls", d.starttls),
            username=s.text("username", d.username),
            password=s.text("password", d.password),
            timeout=s.number("timeout", d.timeout, above=0.0),
        )

    def notify_section(self, s: _Section) -> NotifyConfig:
        s.reject_unknown(_NOTIFY_KEYS)
        d = NotifyConfig()
        facilities = tuple(logging.handlers.SysLogHandler.facility_names)
        return NotifyConfig(
            syslog_address=s.parsed("syslog_address", d.syslog_address, syslog_address,
                                    "expected an absolute socket path or host:port"),
            syslog_facility=s.choice("syslog_facility", d.syslog_facility, facilities),
        )

    def job(self, section: str, values: dict[str, str]) -> JobConfig | None:
        """One [job name] section; None when its name alone makes it unusable."""
        name = section[len("job"):].strip()
        if problem := job_name_problem(name):
            self.problems.append(f"{self.label}: [{section}]: {problem}")
            return None
        s = _Section(self, section, values)
        if not values.get("enabled", "").strip():
            s.problem("enabled", "is required (true or false)")
        return JobConfig(
            name=name,
            enabled=s.boolean("enabled", False),
            concurrent=s.integer("concurrent", DEFAULT_CONCURRENT, minimum=0),
            notify_fail=s.parsed("notify_fail", (), notify_targets, TARGETS_HELP),
            notify_success=s.parsed("notify_success", (), notify_targets, TARGETS_HELP),
            retries=s.integer("retries", DEFAULT_RETRIES, minimum=0),
            retry_delay=s.number("retry_delay", DEFAULT_RETRY_DELAY, minimum=0.0),
            timeout=s.number("timeout", None, above=0.0),
            keep_done=s.parsed("keep_done", None, duration, _DURATION),
            keep_failed=s.parsed("keep_failed", None, duration, _DURATION),
            keep_cancelled=s.parsed("keep_cancelled", None, duration, _DURATION),
            max_interrupted=s.integer("max_interrupted", None, minimum=0),  # type: ignore[arg-type]
            max_queued=s.integer("max_queued", JobConfig.max_queued, minimum=0),
            options=dict(values),
            periodic=periodic_from(values, s.problem),
            unique=unique_from(values, s.problem),
            priority=priority_from(values, s.problem),
            **isolation_keys(s),
        )


class _Section:
    """Typed reads from one section; a bad value is noted and its default returned."""

    def __init__(self, loader: _Loader, name: str, values: dict[str, str]):
        self.loader = loader
        self.name = name
        self.values = values

    def problem(self, key: str, what: str) -> None:
        self.loader.problems.append(f"{self.loader.label}: [{self.name}] {key}: {what}")

    def reject_unknown(self, known: set[str]) -> None:
        for key in self.values:
            if key not in known:
                self.problem(key, f"unknown key (known: {', '.join(sorted(known))})")

    def text(self, key: str, default: str) -> str:
        return self.values.get(key, "").strip() or default

    def parsed(self, key: str, default: T, parse: Callable[[str], T], expected: str) -> T:
        """Apply parse (which raises ValueError) to a set value; empty means default."""
        raw = self.values.get(key, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            detail = f" ({exc})" if isinstance(exc, BadValue) else ""
            self.problem(key, f"{expected}, got {raw!r}{detail}")
            return default

    def integer(self, key: str, default: int, minimum: int) -> int:
        def parse(raw: str) -> int:
            value = int(raw)
            if value < minimum:
                raise ValueError
            return value
        return self.parsed(key, default, parse, f"expected a whole number >= {minimum}")

    def number(self, key: str, default: T, minimum: float | None = None,
               above: float | None = None) -> float | T:
        def parse(raw: str) -> float:
            value = float(raw)
            if not math.isfinite(value) or (minimum is not None and value < minimum) \
                    or (above is not None and value <= above):
                raise ValueError
            return value
        bound = f">= {minimum:g}" if minimum is not None else f"> {above:g}"
        return self.parsed(key, default, parse, f"expected a number {bound}")

    def boolean(self, key: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            try:
                return configparser.ConfigParser.BOOLEAN_STATES[raw.lower()]
            except KeyError:
                raise ValueError from None
        return self.parsed(key, default, parse, "expected true or false (yes/no, on/off, 1/0)")

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        def parse(raw: str) -> str:
            if raw.lower() not in choices:
                raise ValueError
            return raw.lower()
        return self.parsed(key, default, parse, f"expected one of {' | '.join(choices)}")


# ---------------------------------------------------------------- values
