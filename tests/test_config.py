"""parseconfig.load_config: the SPEC's upq.cfg contract, defaults, and one clear line per problem."""
import os
from textwrap import dedent
from pathlib import Path

import pytest

from parseconfig import (
    DEFAULT_DB_URL, ConfigError, LoggingConfig, MailConfig, NotifyConfig, NotifyTarget,
    ServerConfig, load_config,
)

# The configuration block of SPEC.md, verbatim.
SPEC_EXAMPLE = """\
[logging]
loglevel = info            ; debug | info | warning | error
logfile = ./var/upq.log    ; a path, "-" for stderr, or "syslog"

[paths]
socket = ./var/upq.sock
jobs_dir = ./jobs
; any other key is passed to jobs as self.paths[key]

[db]
url = sqlite:///./var/upq.db          ; or mysql+pymysql://user:pw@host/db

[server]                   ; optional section, defaults shown
socket_mode = 0660
listen =                   ; host:port for an additional TCP listener, empty = none
token =                    ; required whenever listen is set, loopback too
shutdown_grace = 30        ; seconds SIGTERM waits for running jobs
allow_root = false         ; the demo upq.cfg sets true (see below)
max_connections = 256      ; more are answered ERR busy and closed
idle_timeout = 300         ; seconds before an idle connection is closed
node_name =                ; default: host name and socket path
node_timeout = 60          ; seconds without heartbeat before a node is dead

[mail]                     ; optional, for "mail" notifications
host = localhost
port = 25
from = upq@<hostname>
; starttls, username, password, timeout

[notify]                   ; optional, for "syslog" notifications
syslog_address = /dev/log  ; or host:port (UDP)
syslog_facility = user

[job hello]
enabled = true             ; required
concurrent = 2             ; worker threads; 0 = run inline in the connection
notify_fail = mail ops@example.org dev@example.org
notify_success = syslog hello
retries = 0                ; extra attempts after a failure
retry_delay = 30           ; seconds before the first retry, doubling each time
timeout =                  ; seconds a run may take; empty = no limit
greeting = Hi              ; any other key: self.jobcfg['greeting']
"""

MINIMAL = """\
[paths]
socket = /run/upq.sock
jobs_dir = /srv/jobs
"""


def write(folder: Path, text: str, name: str = "upq.cfg") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def problems_of(path: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def job_targets(tmp_path: Path, value: str) -> tuple:
    path = write(tmp_path, MINIMAL + f"[job hello]\nenabled = true\nnotify_fail = {value}\n")
    return load_config(path).jobs["hello"].notify_fail


# ---------------------------------------------------------------- the valid example

def test_spec_example_loads_with_every_value_typed(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    cfg = load_config(write(folder, SPEC_EXAMPLE))

    assert cfg.path == str(folder / "upq.cfg")
    assert cfg.logging == LoggingConfig(loglevel="info", logfile=str(folder / "var/upq.log"))
    assert cfg.paths.socket == str(folder / "var/upq.sock")
    assert cfg.paths.jobs_dir == str(folder / "jobs")
    assert dict(cfg.paths.extra) == {}
    assert cfg.db.url == f"sqlite:///{folder}/var/upq.db"
    assert cfg.db.durability == "full"
    assert cfg.server == ServerConfig()
    assert cfg.server.socket_mode == 0o660
    assert cfg.mail == MailConfig(host="localhost", port=25, sender="upq@<hostname>")
    assert cfg.notify == NotifyConfig(syslog_address="/dev/log", syslog_facility="user")

    hello = cfg.jobs["hello"]
    assert hello.enabled is True
    assert hello.concurrent == 2
    assert hello.notify_fail == (NotifyTarget("mail", addresses=("ops@example.org", "dev@example.org")),)
    assert hello.notify_success == (NotifyTarget("syslog", tag="hello"),)
    assert (hello.retries, hello.retry_delay, hello.timeout) == (0, 30.0, None)
    assert hello.options["greeting"] == "Hi"
    assert cfg.enabled_jobs() == {"hello": hello}


def test_job_options_are_the_whole_section_as_written_and_unresolved(tmp_path):
    path = write(tmp_path, MINIMAL + dedent("""\
        [job hello]
        enabled = yes
        Greeting = Hi there
        output = ./out
        """))
    options = load_config(path).jobs["hello"].options
    assert dict(options) == {"enabled": "yes", "greeting": "Hi there", "output": "./out"}


def test_every_default_applies_when_only_paths_are_given(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "[job a]\nenabled = false\n"))

    assert cfg.logging == LoggingConfig(loglevel="info", logfile="-")
    assert cfg.db.url == f"sqlite:///{tmp_path}/var/upq.db"
    assert DEFAULT_DB_URL == "sqlite:///./var/upq.db"
    assert cfg.db.durability == "full"
    assert cfg.server == ServerConfig(
        socket_mode=0o660, socket_group="", listen="", token="", shutdown_grace=30.0,
        allow_root=False, max_connections=256, idle_timeout=300.0, node_name="",
        node_timeout=60.0, poll_interval=1.0)
    assert cfg.mail is None
    assert cfg.notify == NotifyConfig(syslog_address="/dev/log", syslog_facility="user")
    job = cfg.jobs["a"]
    assert (job.enabled, job.concurrent, job.retries, job.retry_delay, job.timeout) == (False, 1, 0, 30.0, None)
    assert (job.notify_fail, job.notify_success) == ((), ())
    assert cfg.enabled_jobs() == {}


def test_empty_mail_section_gives_mail_defaults_not_none(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "[mail]\n"))
    assert cfg.mail == MailConfig()


def test_all_server_mail_notify_and_db_keys_are_parsed(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + dedent("""\
        [logging]
        loglevel = DEBUG
        logfile = syslog
        [db]
        url = mysql+pymysql://u:p@db/upq
        durability = normal
        [server]
        socket_mode = 0600
        socket_group = upq
        listen = 127.0.0.1:7000
        token = s3cret
        shutdown_grace = 0
        allow_root = on
        max_connections = 1
        idle_timeout = 0.5
        node_name = n1
        node_timeout = 5
        poll_interval = 0.1
        [mail]
        host = smtp.example.org
        port = 587
        from = upq@example.org
        starttls = 1
        username = u
        password = p
        timeout = 3
        [notify]
        syslog_address = logs.example.org:514
        syslog_facility = local3
        [job slow]
        enabled = true
        concurrent = 0
        retries = 3
        retry_delay = 0
        timeout = 2.5
        """)))
    assert cfg.logging == LoggingConfig(loglevel="debug", logfile="syslog")
    assert (cfg.db.url, cfg.db.durability) == ("mysql+pymysql://u:p@db/upq", "normal")
    assert cfg.server == ServerConfig(
        socket_mode=0o600, socket_group="upq", listen="127.0.0.1:7000", token="s3cret",
        shutdown_grace=0.0, allow_root=True, max_connections=1, idle_timeout=0.5,
        node_name="n1", node_timeout=5.0, poll_interval=0.1)
    assert cfg.mail == MailConfig(host="smtp.example.org", port=587, sender="upq@example.org",
                                  starttls=True, username="u", password="p", timeout=3.0)
    assert cfg.notify == NotifyConfig(syslog_address="logs.example.org:514", syslog_facility="local3")
    slow = cfg.jobs["slow"]
    assert (slow.concurrent, slow.retries, slow.retry_delay, slow.timeout) == (0, 3, 0.0, 2.5)


# ---------------------------------------------------------------- ./ resolution

def test_dot_slash_paths_resolve_against_config_folder_not_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write(folder, dedent("""\
        [logging]
        logfile = ./log/../var/upq.log
        [paths]
        socket = ./var/upq.sock
        jobs_dir = ./jobs
        uploads = ./data/uploads
        absolute = /srv/x
        plain = relative/x
        [db]
        url = sqlite:///./var/upq.db
        [job hello]
        enabled = true
        output = ./out
        """))
    monkeypatch.chdir(elsewhere)
    cfg = load_config(os.path.relpath(path))

    assert cfg.path == path
    assert cfg.logging.logfile == str(folder / "var/upq.log")
    assert cfg.paths.socket == str(folder / "var/upq.sock")
    assert cfg.paths.jobs_dir == str(folder / "jobs")
    assert dict(cfg.paths.extra) == {"uploads": str(folder / "data/uploads"),
                                     "absolute": "/srv/x", "plain": "relative/x"}
    assert cfg.db.url == f"sqlite:///{folder}/var/upq.db"
    assert cfg.jobs["hello"].options["output"] == "./out"


@pytest.mark.parametrize("url, expected", [
    ("sqlite:///./x.db", "sqlite:///{folder}/x.db"),
    ("sqlite+pysqlite:///./d/x.db", "sqlite+pysqlite:///{folder}/d/x.db"),
    ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
    ("sqlite://", "sqlite://"),
    ("mysql+pymysql://u@h/./db", "mysql+pymysql://u@h/./db"),
])
def test_only_a_relative_sqlite_file_url_is_resolved(tmp_path, url, expected):
    cfg = load_config(write(tmp_path, MINIMAL + f"[db]\nurl = {url}\n"))
    assert cfg.db.url == expected.format(folder=tmp_path)


# ---------------------------------------------------------------- problems

def test_unknown_key_is_reported_with_file_section_and_key(tmp_path):
    path = write(tmp_path, MINIMAL + "[server]\nlisten_port = 7000\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: [server] listen_port: unknown key")


def test_unknown_section_is_reported(tmp_path):
    path = write(tmp_path, MINIMAL + "[jobs hello]\nenabled = true\n[DEFAULT]\nx = 1\n")
    assert problems_of(path) == [f"{path}: [jobs hello]: unknown section",
                                 f"{path}: [DEFAULT]: unknown section"]


def test_every_bad_value_is_collected_into_one_error(tmp_path):
    path = write(tmp_path, dedent("""\
        [logging]
        loglevel = chatty
        [paths]
        socket = ./s
        [db]
        url = nonsense
        durability = maybe
        [server]
        socket_mode = 0999
        listen = 127.0.0.1:7000
        shutdown_grace = -1
        allow_root = perhaps
        max_connections = 0
        idle_timeout = 0
        node_timeout = inf
        poll_interval = fast
        [mail]
        port = 70000
        starttls = sure
        timeout = -2
        [notify]
        syslog_address = relative/log
        syslog_facility = kernel-ish
        [job hello]
        enabled = true
        concurrent = x
        retries = -1
        retry_delay = soon
        timeout = 0
        notify_fail = carrier-pigeon
        notify_success = mail
        [job broken]
        concurrent = 2
        """))
    problems = problems_of(path)
    expected = [
        "[logging] loglevel: expected one of debug | info | warning | error, got 'chatty'",
        "[paths] jobs_dir: is required",
        "[db] url: expected a database url",
        "[db] durability: expected one of full | normal, got 'maybe'",
        "[server] socket_mode: expected an octal file mode like 0660, got '0999'",
        "[server] token: token is required when listen is set",
        "[server] shutdown_grace: expected a number >= 0, got '-1'",
        "[server] allow_root: expected true or false",
        "[server] max_connections: expected a whole number >= 1, got '0'",
        "[server] idle_timeout: expected a number > 0, got '0'",
        "[server] node_timeout: expected a number > 0, got 'inf'",
        "[server] poll_interval: expected a number > 0, got 'fast'",
        "[mail] port: expected a port number 1..65535, got '70000'",
        "[mail] starttls: expected true or false",
        "[mail] timeout: expected a number > 0, got '-2'",
        "[notify] syslog_address: expected an absolute socket path or host:port, got 'relative/log'",
        "[notify] syslog_facility: expected one of ",
        "[job hello] concurrent: expected a whole number >= 0, got 'x'",
        "[job hello] retries: expected a whole number >= 0, got '-1'",
        "[job hello] retry_delay: expected a number >= 0, got 'soon'",
        "[job hello] timeout: expected a number > 0, got '0'",
        "[job hello] notify_fail: expected 'syslog [tag]' or 'mail <address> ...'",
        "[job hello] notify_success: expected 'syslog [tag]' or 'mail <address> ...'",
        "[job broken] enabled: is required",
    ]
    for fragment in expected:
        matching = [p for p in problems if p.startswith(f"{path}: {fragment}")]
        assert matching, f"no problem starting with {fragment!r} in:\n" + "\n".join(problems)
    assert len(problems) == len(expected), "\n".join(problems)


def test_required_paths_are_reported_when_paths_section_is_missing(tmp_path):
    path = write(tmp_path, "[logging]\nloglevel = info\n")
    assert problems_of(path) == [f"{path}: [paths] socket: is required",
                                 f"{path}: [paths] jobs_dir: is required"]


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_enabled_counts_as_missing(tmp_path, value):
    path = write(tmp_path, MINIMAL + f"[job hello]\nenabled ={value}\n")
    assert problems_of(path) == [f"{path}: [job hello] enabled: is required (true or false)"]


@pytest.mark.parametrize("section, reason", [
    ("job Hello", "must match ^[a-z][a-z0-9_]*$"),
    ("job a-b", "must match"),
    ("job ../x", "must match"),
    ("job", "must match"),
    ("job 1x", "must match"),
    ("job ping", "'ping' is a built-in command"),
    ("job reload", "'reload' is a built-in command"),
    ("job list_queue", "'list_queue' is a built-in command"),
])
def test_bad_or_reserved_job_name_is_reported_naming_the_section(tmp_path, section, reason):
    path = write(tmp_path, MINIMAL + f"[{section}]\nenabled = true\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: [{section}]: ")
    assert reason in problems[0]


def test_same_job_written_twice_with_different_spacing_is_reported(tmp_path):
    path = write(tmp_path, MINIMAL + "[job hello]\nenabled = true\n[job  hello]\nenabled = false\n")
    assert problems_of(path) == [f"{path}: [job  hello]: job 'hello' is configured twice"]


def test_listen_with_token_is_accepted(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "[server]\nlisten = 0.0.0.0:7000\ntoken = t\n"))
    assert (cfg.server.listen, cfg.server.token) == ("0.0.0.0:7000", "t")


@pytest.mark.parametrize("listen", ["7000", "host:", "host:0", "host:65536", "host:http"])
def test_bad_listen_address_is_reported(tmp_path, listen):
    path = write(tmp_path, MINIMAL + f"[server]\nlisten = {listen}\ntoken = t\n")
    assert problems_of(path) == [
        f"{path}: [server] listen: expected host:port with a port 1..65535, got '{listen}'"]


@pytest.mark.parametrize("word, value", [("true", True), ("Yes", True), ("on", True), ("1", True),
                                         ("false", False), ("no", False), ("OFF", False), ("0", False)])
def test_configparser_booleans_are_accepted(tmp_path, word, value):
    cfg = load_config(write(tmp_path, MINIMAL + f"[job a]\nenabled = {word}\n"))
    assert cfg.jobs["a"].enabled is value


# ---------------------------------------------------------------- notify targets

def test_syslog_and_mail_targets_separated_by_semicolon(tmp_path):
    assert job_targets(tmp_path, "syslog ops; mail a@b.org c@d.org") == (
        NotifyTarget("syslog", tag="ops"),
        NotifyTarget("mail", addresses=("a@b.org", "c@d.org")),
    )


def test_mail_addresses_may_be_separated_by_commas(tmp_path):
    assert job_targets(tmp_path, "mail a@b.org,c@d.org , e@f.org") == (
        NotifyTarget("mail", addresses=("a@b.org", "c@d.org", "e@f.org")),)


def test_syslog_without_tag_uses_upq(tmp_path):
    assert job_targets(tmp_path, "syslog") == (NotifyTarget("syslog", tag="upq"),)


@pytest.mark.parametrize("value, detail", [
    ("carrier-pigeon", "unknown target 'carrier-pigeon'"),
    ("mail", "mail needs at least one address"),
    ("mail ,", "mail needs at least one address"),
    ("mail ops", "'ops' is not a mail address"),
    ("mail a@b@c", "'a@b@c' is not a mail address"),
    ("mail @b.org", "'@b.org' is not a mail address"),
    ("mail a@", "'a@' is not a mail address"),
    ("syslog two words", "a syslog tag is one word"),
    ("syslog;pigeon x", "unknown target 'pigeon'"),
])
def test_bad_notify_target_is_reported_naming_section_and_key(tmp_path, value, detail):
    path = write(tmp_path, MINIMAL + f"[job hello]\nenabled = true\nnotify_fail = {value}\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: [job hello] notify_fail: expected 'syslog [tag]'")
    assert detail in problems[0]


def test_space_before_semicolon_that_would_drop_targets_is_reported(tmp_path):
    path = write(tmp_path, MINIMAL + "[job hello]\nenabled = true\nnotify_fail = syslog ; mail a@b.org\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: [job hello] notify_fail: line 6: a space before ';'")


# ---------------------------------------------------------------- unreadable files

def test_missing_file_is_a_config_error(tmp_path):
    path = str(tmp_path / "nope.cfg")
    assert problems_of(path) == [f"{path}: cannot read config: No such file or directory"]


def test_directory_instead_of_file_is_a_config_error(tmp_path):
    problems = problems_of(str(tmp_path))
    assert problems[0].startswith(f"{tmp_path}: cannot read config: ")


def test_ini_syntax_errors_name_the_line(tmp_path):
    path = write(tmp_path, "[paths]\nsocket = /s\njust some words\n")
    assert problems_of(path) == [f"{path}: line 3: expected 'key = value', got 'just some words'"]


def test_key_before_any_section_is_a_config_error(tmp_path):
    path = write(tmp_path, "socket = /s\n")
    problems = problems_of(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: line 1: a [section] header")


def test_duplicate_key_and_section_are_config_errors(tmp_path):
    key = write(tmp_path, MINIMAL + "socket = /other\n", name="a.cfg")
    assert problems_of(key) == [f"{key}: line 4: [paths] socket: appears twice"]
    section = write(tmp_path, MINIMAL + "[paths]\n", name="b.cfg")
    assert problems_of(section) == [f"{section}: line 4: [paths] appears twice"]


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "upq.cfg"
    path.write_bytes(b"[paths]\nsocket = /\xff\n")
    problems = problems_of(str(path))
    assert problems[0].startswith(f"{path}: cannot read config: not UTF-8")
