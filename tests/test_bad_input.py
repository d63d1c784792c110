"""Bad input of every kind gets one `ERR <reason>` line and never a crash (SPEC: the socket protocol).

All tests talk to one daemon per database (`shared_daemon`); after each bad line
the daemon must still answer `ping`, on the same connection whenever the bad line
could be framed (it ended in a newline).
"""
from __future__ import annotations

import json
import re

import pytest

from conftest import Conn, Daemon
from helpers.client import newest_jobid

DAEMON_JOBS = {
    "hello": {"concurrent": "2", "greeting": "Hi"},
    "record": {"concurrent": "2"},
    "checkraise": {},
    "checkrefuse": {},
    "enqueuerefuse": {},
    "disabled": {"enabled": "false"},
}
MAX_LINE = 64 * 1024


def ask_raw(conn: Conn, data: bytes) -> str:
    """Send raw bytes (ending in a newline) and return the one answer line."""
    conn.send(data)
    return conn.line()


def assert_err(answer: str) -> None:
    assert answer.startswith("ERR "), answer
    assert len(answer) > len("ERR "), "an ERR must carry a reason"
    assert "Traceback" not in answer and "\r" not in answer and "\0" not in answer, answer


def assert_still_serving(conn: Conn, daemon: Daemon) -> None:
    """The same connection answers ping (proves no stray answer lines either), and so does a new one."""
    assert conn.ask("ping") == "ACK pong"
    assert daemon.ask("ping") == "ACK pong"


def refused_without_storing(daemon: Daemon, data: bytes) -> str:
    """Send one bad line; it must be answered ERR, store nothing, and leave the connection usable."""
    before = newest_jobid(daemon)
    with daemon.connect() as conn:
        answer = ask_raw(conn, data)
        assert_err(answer)
        assert_still_serving(conn, daemon)
    assert newest_jobid(daemon) == before, f"{data[:80]!r} stored a job"
    return answer


# -- commands and job names ---------------------------------------------------------

def test_unknown_command_is_refused(shared_daemon: Daemon) -> None:
    answer = refused_without_storing(shared_daemon, b"nosuchjob name:x\n")
    assert "nosuchjob" in answer


def test_disabled_job_is_refused_and_never_runs(shared_daemon: Daemon) -> None:
    refused_without_storing(shared_daemon, b"disabled\n")
    refused_without_storing(shared_daemon, b"disabled x:1\n")
    assert not any("disabled-ran" in r for r in map(" ".join, shared_daemon.read_records()))
    help_ = json.loads(shared_daemon.ask("help")[4:])
    assert "disabled" not in help_.get("jobs", {}), help_


@pytest.mark.parametrize("command", [
    "../x", "..", "../jobs/hello", "/etc/passwd", "os", "sys", "json", "Hello", "HELLO", "hello.py",
    "jobs.hello", "upq_jobs.hello", "__init__", "_hello", "1hello", "hel-lo", "auth", "reload",
    "conftest", "upqdb", "record/../hello",
])
def test_names_outside_the_enabled_jobs_are_refused(shared_daemon: Daemon, command: str) -> None:
    refused_without_storing(shared_daemon, f"{command} name:x\n".encode())


def test_builtin_commands_refuse_job_params(shared_daemon: Daemon) -> None:
    for line in (b"status name:x\n", b"wait name:x\n", b"list name:x\n"):
        refused_without_storing(shared_daemon, line)


# -- framing: encoding, NUL, length ----------------------------------------------------

@pytest.mark.parametrize("data", [
    b"hello name:\xff\xfe\n",
    b"\xc3\x28 name:x\n",
    b"hello name:\xed\xa0\x80\n",          # an encoded surrogate is not UTF-8
    b"hello name:caf\xe9\n",               # latin-1
], ids=["ff-fe", "bad-lead-byte", "surrogate", "latin1"])
def test_non_utf8_line_is_refused(shared_daemon: Daemon, data: bytes) -> None:
    answer = refused_without_storing(shared_daemon, data)
    assert "utf" in answer.lower(), answer


@pytest.mark.parametrize("data", [b"hello name:a\x00b\n", b"\x00\n", b"ping\x00\n"],
                         ids=["in-value", "alone", "after-command"])
def test_nul_byte_is_refused(shared_daemon: Daemon, data: bytes) -> None:
    refused_without_storing(shared_daemon, data)


def test_line_over_64_kib_is_refused_and_never_stored(shared_daemon: Daemon) -> None:
    line = b"hello name:" + b"x" * (MAX_LINE + 1 - len(b"hello name:"))
    assert len(line) == MAX_LINE + 1
    before = newest_jobid(shared_daemon)
    with shared_daemon.connect() as conn:
        conn.send(line + b"\nping\n")
        assert_err(conn.line())
        # SPEC: the server skips to the next newline (or closes the connection)
        try:
            follow = conn.line()
        except (ConnectionError, OSError):
            follow = None
        assert follow in ("ACK pong", None), follow
    assert shared_daemon.ask("ping") == "ACK pong"
    assert newest_jobid(shared_daemon) == before
    rows = json.loads(shared_daemon.ask("list limit:1000")[4:])
    assert not any(len(r["params"].get("name", "")) > 60000 for r in rows)


def test_endless_line_is_refused_before_its_newline_arrives(shared_daemon: Daemon) -> None:
    before = newest_jobid(shared_daemon)
    with shared_daemon.connect() as conn:
        conn.send(b"hello name:" + b"y" * (3 * MAX_LINE))     # no newline yet
        assert_err(conn.line())                               # answered while the line still goes on
        try:
            conn.send(b"y" * MAX_LINE + b"\nping\n")
            follow = conn.line()
        except (ConnectionError, OSError):
            follow = None
        assert follow in ("ACK pong", None), follow
    assert shared_daemon.ask("ping") == "ACK pong"
    assert newest_jobid(shared_daemon) == before


def test_line_of_exactly_64_kib_is_accepted_whole(shared_daemon: Daemon) -> None:
    # upqserver counts the bytes before "\n": 65536 of them is the largest line it takes.
    value = "z" * (MAX_LINE - len("hello name:"))
    line = "hello name:" + value
    assert len(line.encode()) == MAX_LINE
    with shared_daemon.connect() as conn:
        answer = conn.ask(line)
        assert re.fullmatch(r"ACK \d+", answer), answer[:200]
        assert conn.ask("ping") == "ACK pong"
    job = shared_daemon.wait_job(int(answer.split()[1]))
    assert job["state"] == "done", job["msg"][:200]
    assert job["params"] == {"name": value}


# -- parameters --------------------------------------------------------------------

@pytest.mark.parametrize("line", ["hello :x", "hello =x", "hello name:x :y", 'hello :"a b"'])
def test_param_without_a_key_is_refused(shared_daemon: Daemon, line: str) -> None:
    refused_without_storing(shared_daemon, line.encode() + b"\n")


@pytest.mark.parametrize("line", ['hello name:"abc', 'hello name:"a b c', 'hello "', 'hello name:"x\\"'])
def test_unterminated_quote_is_refused(shared_daemon: Daemon, line: str) -> None:
    answer = refused_without_storing(shared_daemon, line.encode() + b"\n")
    assert "quote" in answer.lower(), answer


@pytest.mark.parametrize("line", ["hello name:a name:b", "hello name:a name=a", "hello name:a x x"])
def test_duplicate_param_is_refused(shared_daemon: Daemon, line: str) -> None:
    refused_without_storing(shared_daemon, line.encode() + b"\n")


# -- built-ins with bad arguments ----------------------------------------------------------

@pytest.mark.parametrize("line", [
    "status", "status 999999999", "status abc", "status -1", "status 0", "status 1.5",
    "status 99999999999999999999999999", "status 9223372036854775807", "status 9223372036854775808",
    "status 18446744073709551616", "status 1 2", "status id:1", "status ١٢",
    "wait", "wait 999999999", "wait abc", "wait -3", "wait 99999999999999999999999999",
])
def test_status_and_wait_of_missing_or_malformed_ids_are_refused(shared_daemon: Daemon, line: str) -> None:
    refused_without_storing(shared_daemon, line.encode() + b"\n")


@pytest.mark.parametrize("timeout", ["abc", "-1", "", "nan", "inf", "1e400", "1s", '"2 3"'])
def test_wait_with_bad_timeout_is_refused(shared_daemon: Daemon, timeout: str) -> None:
    jobid = shared_daemon.submit("hello name:t")
    answer = refused_without_storing(shared_daemon, f"wait {jobid} timeout:{timeout}\n".encode())
    assert not answer.startswith("ERR {"), answer      # refused as input, not answered with the job


def test_wait_with_unknown_option_is_refused(shared_daemon: Daemon) -> None:
    jobid = shared_daemon.submit("hello name:t")
    refused_without_storing(shared_daemon, f"wait {jobid} bogus:1\n".encode())


@pytest.mark.parametrize("line", ["list bogus", "list limit:0", "list limit:1001", "list limit:abc",
                                  "list limit:", "list limit:-5", "list done failed", "list_queue bogus",
                                  "list HELD", "list held"])
def test_list_with_bad_arguments_is_refused(shared_daemon: Daemon, line: str) -> None:
    refused_without_storing(shared_daemon, line.encode() + b"\n")


@pytest.mark.parametrize("data", [b"\n", b"   \n", b"\t \t\n", b"\r\n", b"  \r\n"],
                         ids=["empty", "spaces", "tabs", "cr", "spaces-cr"])
def test_empty_or_blank_line_is_refused(shared_daemon: Daemon, data: bytes) -> None:
    refused_without_storing(shared_daemon, data)


# -- jobs whose check() says no ------------------------------------------------------------

def test_check_that_raises_gets_err_naming_the_exception(shared_daemon: Daemon) -> None:
    answer = refused_without_storing(shared_daemon, b"checkraise why:because\n")
    assert "ValueError" in answer and "broken check" in answer, answer
    assert "\n" not in answer and "\r" not in answer
    assert shared_daemon.proc.poll() is None


def test_check_that_returns_false_gets_err_with_its_msg(shared_daemon: Daemon) -> None:
    answer = refused_without_storing(shared_daemon, b"checkrefuse why:weekend\n")
    assert "refused:" in answer and "not today weekend" in answer, answer


def test_hello_without_name_gets_its_check_msg(shared_daemon: Daemon) -> None:
    answer = refused_without_storing(shared_daemon, b"hello nom:x\n")
    assert answer == "ERR name missing", answer


def test_enqueue_in_check_then_false_removes_the_job(shared_daemon: Daemon) -> None:
    before = newest_jobid(shared_daemon)
    with shared_daemon.connect() as conn:
        answer = conn.ask("enqueuerefuse x:1")
        assert_err(answer)
        assert "changed my mind" in answer, answer
        assert conn.ask("ping") == "ACK pong"
    held = re.search(r"changed my mind about (\d+)", answer)
    assert held, answer
    held_id = int(held.group(1))
    assert shared_daemon.ask(f"status {held_id}").startswith("ERR "), "the refused job is still there"
    assert newest_jobid(shared_daemon) == before
    for state in ("", " new", " running", " done", " failed"):
        rows = json.loads(shared_daemon.ask(f"list{state} limit:1000")[4:])
        assert held_id not in [r["jobid"] for r in rows]
        assert "enqueuerefuse" not in [r["jobname"] for r in rows]
    # a later, good job still goes through and the refused one never ran
    ok = shared_daemon.submit("record")
    assert shared_daemon.wait_job(ok)["state"] == "done"
    assert not any("enqueuerefuse-ran" in " ".join(r) for r in shared_daemon.read_records())


def test_enqueue_in_check_then_raise_removes_the_job(shared_daemon: Daemon) -> None:
    before = newest_jobid(shared_daemon)
    answer = refused_without_storing(shared_daemon, b"enqueuerefuse raise\n")
    assert "RuntimeError" in answer and "blew up after enqueueing" in answer, answer
    held_id = int(re.search(r"enqueueing (\d+)", answer).group(1))
    assert shared_daemon.ask(f"status {held_id}").startswith("ERR ")
    assert newest_jobid(shared_daemon) == before


# -- what answers look like ------------------------------------------------------------------

def test_plain_answers_never_hold_line_breaks_and_are_cut_at_1_kib(shared_daemon: Daemon) -> None:
    with shared_daemon.connect() as conn:
        answer = conn.ask("checkrefuse why:" + "w" * 5000)
        assert_err(answer)
        assert len(answer.encode()) <= 1024, len(answer.encode())
        assert conn.ask("ping") == "ACK pong"


BAD_LINES = [
    b"nosuchjob\n", b"../x\n", b"os\n", b"Hello name:x\n", b"hello name:\xff\n", b"a\x00b\n",
    b"hello :x\n", b'hello name:"x\n', b"hello name:a name:b\n", b"status 999999999\n",
    b"status abc\n", b"status -1\n", b"status 123456789012345678901234567890\n", b"wait 1 timeout:x\n",
    b"list bogus\n", b"list limit:1001\n", b"\n", b"    \n", b"checkraise\n", b"checkrefuse\n",
    b"enqueuerefuse\n", b"disabled\n", b"hello\n",
]


def test_pipelined_bad_lines_get_one_clean_err_each_in_order(shared_daemon: Daemon) -> None:
    """All bad lines sent at once on one connection: one ERR line each, then ping still works."""
    with shared_daemon.connect() as conn:
        conn.send(b"".join(BAD_LINES) + b"ping\n")
        answers = [conn.line() for _ in BAD_LINES]
        assert conn.line() == "ACK pong"
    for data, answer in zip(BAD_LINES, answers):
        assert answer.startswith("ERR "), (data, answer)
        assert "Traceback" not in answer and "\r" not in answer, (data, answer)
    assert shared_daemon.proc.poll() is None
    assert "Traceback" not in shared_daemon.stderr()
