"""Hostile input over real connections: the daemon answers, stays up and stays small
(SPEC: the socket protocol; [server] idle_timeout and max_connections).

One daemon (SQLite) serves the whole module, with a small idle_timeout and
connection cap so both are exercised. After every test: it answers `ping`, its
thread count and RSS are back near the baseline, its log holds no unhandled
request error, and `list` shows only valid jobs. Every answer seen is checked to
be one line that starts with ACK or ERR and holds no traceback.

Hypothesis runs derandomized (the same examples every run); UPQ_FUZZ_EXAMPLES
raises the number of examples per property.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import Conn, Daemon, wait_for
from helpers.client import newest_jobid

JOBS = {"hello": {"concurrent": "2", "greeting": "Hi"}, "fail": {}}
IDLE_TIMEOUT = 2.0
MAX_CONNECTIONS = 20
MAX_LINE = 64 * 1024
EXAMPLES = int(os.environ.get("UPQ_FUZZ_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
SEED = 20240611                 # the plain-random tests' seed
RSS_MARGIN_KB = 96 * 1024
THREAD_MARGIN = 3
CASES: dict[str, int] = {}      # test -> fuzz cases sent, printed at the end of the module


class Fuzzed:
    """The module's daemon, its baseline, and checks shared by every test."""

    def __init__(self, daemon: Daemon):
        self.d = daemon
        self.threads0 = 0
        self.rss0 = 0

    def proc(self, key: str) -> int:
        assert self.d.proc is not None
        for line in Path(f"/proc/{self.d.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {key} in /proc status")

    def baseline(self) -> None:
        self.threads0 = self.proc("Threads")
        self.rss0 = self.proc("VmRSS")

    def pings(self) -> bool:
        return self.d.answers_ping(timeout=5)

    def assert_healthy(self, what: str) -> None:
        assert self.d.proc is not None and self.d.proc.poll() is None, \
            f"upq died during {what}: {self.d.stderr()[-3000:]}"
        wait_for(self.pings, 10, f"ping after {what}")
        # idle connections must have timed out: handler threads back to the baseline
        wait_for(lambda: self.proc("Threads") <= self.threads0 + THREAD_MARGIN, IDLE_TIMEOUT + 10,
                 f"thread count back near {self.threads0} after {what} (now {self.proc('Threads')})")
        rss = self.proc("VmRSS")
        assert rss <= self.rss0 + RSS_MARGIN_KB, f"RSS grew from {self.rss0} kB to {rss} kB during {what}"
        log = self.d.log()
        for bad in ("connection handler failed", "failed\nTraceback", "internal error"):
            assert bad not in log, f"{bad!r} in the daemon's log after {what}"
        assert_valid_jobs(self.d)


def assert_answer(answer: str) -> None:
    """One protocol answer line: ACK or ERR, no traceback, no CR/NUL, no internal error."""
    assert answer == "ACK" or answer.startswith(("ACK ", "ERR ")), repr(answer[:200])
    assert "Traceback" not in answer and "\r" not in answer and "\0" not in answer, repr(answer[:200])
    assert "internal error" not in answer, answer[:300]
    if not answer.startswith(("ACK {", "ACK [", "ERR {")):
        assert len(answer.encode()) <= 1024, f"plain answer over 1 KiB: {len(answer.encode())} bytes"


def assert_valid_jobs(d: Daemon) -> None:
    """Only enabled job types, with params a dict of str to str, in a known state."""
    answer = d.ask("list limit:1000")
    assert answer.startswith("ACK ["), answer[:200]
    for job in json.loads(answer[4:]):
        assert job["jobname"] in JOBS, job
        assert job["state"] in ("new", "running", "done", "failed", "cancelled"), job
        params = job["params"]
        assert isinstance(params, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in params.items()), job
        if job["jobname"] == "hello":
            assert "name" in params, f"hello stored although check() refuses it: {job}"


def exchange(d: Daemon, payload: bytes, answers: int, timeout: float = 15) -> list[str]:
    """Send raw bytes, read `answers` lines, then prove the connection still works."""
    with Conn(d.socket, timeout=timeout) as c:
        c.send(payload)
        out = [c.line() for _ in range(answers)]
        for a in out:
            assert_answer(a)
        assert c.ask("ping") == "ACK pong", "the connection is out of step after a fuzzed line"
    return out


def framed_lines(blob: bytes) -> int:
    """How many answers a blob ending in a newline gets: one per newline-terminated line."""
    return blob.count(b"\n")


@pytest.fixture(scope="module")
def fz() -> Iterator[Fuzzed]:
    d = Daemon(Path(tempfile.mkdtemp(prefix="upq-", dir="/tmp")), "sqlite:///./upq.db", JOBS,
               server={"idle_timeout": str(IDLE_TIMEOUT), "max_connections": str(MAX_CONNECTIONS)})
    try:
        d.start()
        f = Fuzzed(d)
        jobid = d.submit("hello name:warmup")
        assert d.wait_job(jobid, timeout=60)["state"] == "done"
        wait_for(lambda: f.proc("Threads") > 0, 5, "proc status")
        f.baseline()
        yield f
        print(f"\nfuzz cases sent (hypothesis derandomize=True, random.Random({SEED})): {CASES} "
              f"(total {sum(CASES.values())}); threads {f.threads0} -> {f.proc('Threads')}, "
              f"RSS {f.rss0} -> {f.proc('VmRSS')} kB")
        assert d.stop() == 0
    finally:
        d.kill_if_running()
        shutil.rmtree(d.dir, ignore_errors=True)


@pytest.fixture
def f(fz: Fuzzed) -> Iterator[Fuzzed]:
    fz.assert_healthy("the previous test")
    yield fz
    fz.assert_healthy("this test")


def count(name: str, n: int = 1) -> None:
    CASES[name] = CASES.get(name, 0) + n


# -- hypothesis: text lines --------------------------------------------------------

NAMES = ["hello", "fail", "ping", "status", "cancel", "retry", "list", "list_queue", "stats", "help",
         "auth", "reload", "wait", "nosuchjob", "disabled", "os", "sys", "__init__", "upqjob",
         "Hello", "HELLO", "hello.py", "jobs/hello", "../../etc/passwd", "/etc/passwd", "..",
         "hello-x", "héllo", "h" * 70, "", "@delay:1", "key:value"]
KEYS = ["name", "a", "b", "x.y", "-k", "_", "@delay", "@at", "@nope", "timeout", "limit", "ké", "",
        "1", "new", "done", "a b", '"', "name"]
PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126)
ANY_CHAR = st.characters(exclude_characters="\n", exclude_categories=("Cs",))


@st.composite
def tokens(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return str(draw(st.integers(-3, 10 ** 20)))
    value = draw(st.text(ANY_CHAR if kind == 1 else PRINTABLE, max_size=40))
    if kind == 2:
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif kind == 3:
        value = '"' * draw(st.integers(0, 7)) + value + '\\' * draw(st.integers(0, 3))
    sep = draw(st.sampled_from([":", "=", "", "::", ":="]))
    return draw(st.sampled_from(KEYS)) + sep + value


@st.composite
def request_lines(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:
        line = draw(st.text(ANY_CHAR, max_size=300))          # anything at all
    else:
        cmd = draw(st.one_of(st.sampled_from(NAMES), st.text(PRINTABLE, max_size=12)))
        args = draw(st.lists(tokens(), max_size=8))
        spaces = draw(st.sampled_from([" ", "  ", "\t", " \t "]))
        line = spaces.join([cmd] + args) + draw(st.sampled_from(["", "\r", " ", "\r\r"]))
    if line.split(maxsplit=1)[:1] == ["wait"]:
        line += " timeout:0.2"          # an unbounded wait is correct, and would block the test
    return line


@SETTINGS
@given(line=request_lines())
def test_fuzzed_request_lines_get_one_answer_each(f: Fuzzed, line: str) -> None:
    count("text lines")
    exchange(f.d, line.encode("utf-8") + b"\n", 1)


@SETTINGS
@given(lines=st.lists(request_lines(), min_size=2, max_size=25))
def test_fuzzed_pipelines_get_their_answers_in_order(f: Fuzzed, lines: list[str]) -> None:
    count("pipelines")
    count("text lines", len(lines))
    marker = random.Random(len(lines)).randrange(10 ** 9)
    payload = "".join(line + "\n" for line in lines) + f"status {marker}\n"
    answers = exchange(f.d, payload.encode("utf-8"), len(lines) + 1)
    # the last answer is the marker's: every fuzzed line got exactly one answer, none got two
    assert answers[-1] == f"ERR no job {marker}", answers[-1]


@SETTINGS
@given(raw=st.binary(max_size=400))
def test_fuzzed_bytes_get_one_answer_per_line(f: Fuzzed, raw: bytes) -> None:
    count("byte lines")
    line = raw.replace(b"\n", b"")
    if line.split(maxsplit=1)[:1] == [b"wait"]:
        line += b" timeout:0.2"
    exchange(f.d, line + b"\n", 1)


# -- random bytes in bulk ------------------------------------------------------------

def test_random_byte_streams_with_long_and_short_lines(f: Fuzzed) -> None:
    rng = random.Random(SEED)
    for i in range(20):
        pieces = []
        for _ in range(rng.randint(1, 12)):
            size = rng.choice([0, 1, 10, 100, 4000, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, 200_000])
            piece = bytes(rng.getrandbits(8) for _ in range(min(size, 300))) * (size // 300 + 1)
            pieces.append(piece[:size].replace(b"\n", b"\0"))
        blob = b"\n".join(pieces) + b"\n"
        answers = exchange(f.d, blob, framed_lines(blob), timeout=30)
        assert all(a.startswith("ERR ") for a in answers), [a[:80] for a in answers]
        count("random byte streams")


def test_invalid_utf8_and_nul_are_refused_on_a_usable_connection(f: Fuzzed) -> None:
    before = newest_jobid(f.d)
    bad = [b"hello name:\xff", b"\xc3\x28", b"hello name:\xed\xa0\x80", b"hello \xf0\x28\x8c\xbc",
           b"hello name:a\0b", b"\0", b"ping\0", b"\xef\xbb\xbfhello name:bom", b"hello name:\xc0\xaf"]
    answers = exchange(f.d, b"".join(b + b"\n" for b in bad), len(bad))
    assert all(a.startswith("ERR ") for a in answers), answers
    assert newest_jobid(f.d) == before, "a bad line was stored"
    count("invalid utf-8 / NUL", len(bad))


def test_one_mebibyte_lines_are_refused_and_never_stored(f: Fuzzed) -> None:
    before = newest_jobid(f.d)
    mib = 1 << 20
    payloads = [b"x" * mib, b"hello name:" + b"a" * mib, b"hello " + b"k:v " * (mib // 4),
                b"\xff" * mib, b"\0" * mib]
    for p in payloads:
        a = exchange(f.d, p + b"\n", 1, timeout=30)
        assert a[0].startswith("ERR ") and "long" in a[0], a[0][:200]
    # and one sent in small pieces, and one the client never finishes
    with Conn(f.d.socket, timeout=30) as c:
        for i in range(0, mib, 8192):
            c.send(b"y" * 8192)
        c.send(b"\nping\n")
        first = c.line()
        assert first.startswith("ERR "), first
        assert c.line() == "ACK pong"
    with Conn(f.d.socket, timeout=30) as c:
        c.send(b"z" * mib)
        assert c.line().startswith("ERR ")       # answered as soon as it is over the limit
    assert newest_jobid(f.d) == before, "an over-long line was stored"
    count("1 MiB lines", len(payloads) + 2)


def test_ten_thousand_params(f: Fuzzed) -> None:
    # 10,000 bare-word params fit in 64 KiB: stored as 10,000 keys with empty values
    words = " ".join(f"p{i:x}" for i in range(10_000))
    [a] = exchange(f.d, f"hello name:many {words}\n".encode(), 1)
    assert a.startswith("ACK "), a[:200]
    job = f.d.job(int(a.split()[1]))
    assert len(job["params"]) == 10_001 and job["params"]["p0"] == ""
    # 10,000 key:value params are over 64 KiB; 10,000 duplicates are refused
    answers = exchange(f.d, ("hello name:x " + " ".join(f"key{i}:value{i}" for i in range(10_000)) + "\n"
                             + "hello name:x " + " a:1" * 10_000 + "\n").encode(), 2)
    assert answers[0].startswith("ERR ") and answers[1].startswith("ERR "), answers
    count("10,000 params", 3)


def test_deep_quoting(f: Fuzzed) -> None:
    cases = {
        'hello name:"' + '\\"' * 20_000 + '"': "ACK",
        'hello name:"' + "\\\\" * 10_000 + '"': "ACK",
        'hello name:' + '""' * 20_000: "ACK",
        'hello name:' + '"' * 20_001: "ERR",
        '"' * 50_000: "ERR",
        'hello name:"a ' + '\\' * 30_001: "ERR",
        'hello "name":"x" "' + 'a " b ' * 5000 + '"': "",          # ACK or ERR: one line
    }
    for line, expect in cases.items():
        [a] = exchange(f.d, line.encode() + b"\n", 1)
        assert a.startswith(expect), (line[:40], a[:200])
        assert_answer(a)
    count("deep quoting", len(cases))


def test_unknown_reserved_and_path_like_names(f: Fuzzed) -> None:
    before = newest_jobid(f.d)
    refused = ["nosuchjob", "auth", "auth secret", "disabled", "os", "sys", "upqjob", "__init__",
               "../../etc/passwd", "../../etc/passwd name:x", "jobs/hello", "jobs/hello name:x",
               "hello.py", "hello.py name:x", "/etc/passwd", "..", ".", "Hello name:x", "HELLO name:x",
               "hello/../hello name:x", "hello\\x name:x", "héllo name:x", "h" * 70, "-hello", "_hello",
               "hello;ls", "$(id)", "`id`", "list bogus", "list limit:0",
               "list limit:1001", "status", "status x", "status -1", "status 1 2", "cancel", "retry x",
               "wait", "wait x", "wait 1 timeout:-1", "wait 1 timeout:nan", "hello name:x @delay:-1",
               "hello name:x @delay:1e99", "hello name:x @at:yesterday", "hello name:x @nope:1"]
    answers = exchange(f.d, "".join(line + "\n" for line in refused).encode(), len(refused))
    for line, a in zip(refused, answers):
        assert a.startswith("ERR "), (line, a)
    assert newest_jobid(f.d) == before, "a refused line was stored"
    # built-ins answer whatever trailing words they get (ACK or ERR, one line)
    others = ["ping x y", "ping", "help me", "stats x", "reload now", "reload", "list_queue new"]
    for line, a in zip(others, exchange(f.d, "".join(x + "\n" for x in others).encode(), len(others))):
        assert_answer(a)
    count("names", len(refused) + len(others))


# -- connections -----------------------------------------------------------------

def test_connections_abandoned_half_way_are_released(f: Fuzzed) -> None:
    rng = random.Random(SEED)
    before = newest_jobid(f.d)
    for i in range(300):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(f.d.socket)
            s.sendall(rng.choice([b"hello name:x", b"hel", b"ping", b"hello name:\"unterminated",
                                  b"x" * 70_000, b"\xff\xfe", b"status 1"]))
            if i % 3 == 0:
                s.shutdown(socket.SHUT_WR)          # half-close: the server sees EOF mid-line
        except OSError:
            pass                                    # ERR busy and closed: fine for this test
        finally:
            s.close()
    wait_for(f.pings, 10, "ping after the storm")
    # a few more that stay open, silent, mid-line: the idle timeout must close them
    silent = []
    for _ in range(5):
        c = Conn(f.d.socket, timeout=IDLE_TIMEOUT + 5)
        c.send(b"hello name:half")
        silent.append(c)
    t0 = time.monotonic()
    for c in silent:
        with pytest.raises(ConnectionError):
            c.line()
        c.close()
    assert time.monotonic() - t0 < IDLE_TIMEOUT + 4, "idle connections were not closed in time"
    assert newest_jobid(f.d) == before, "a line without its newline was stored"
    count("abandoned connections", 305)


def test_slow_loris_clients_are_answered_and_do_not_starve_others(f: Fuzzed) -> None:
    answers: list[list[str]] = [[] for _ in range(5)]
    errors: list[BaseException] = []

    def loris(i: int) -> None:
        try:
            with Conn(f.d.socket, timeout=15) as c:
                for _ in range(2):
                    for byte in b"ping\n":
                        c.send(bytes([byte]))
                        time.sleep(0.2)             # the trickle itself, not a wait for a condition
                    answers[i].append(c.line())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=loris, args=(i,), daemon=True) for i in range(5)]
    for t in threads:
        t.start()
    # meanwhile normal clients are served promptly
    for _ in range(10):
        t0 = time.monotonic()
        assert f.d.ask("ping") == "ACK pong"
        assert time.monotonic() - t0 < 2.0
    for t in threads:
        t.join(20)
    assert not errors, errors
    assert answers == [["ACK pong", "ACK pong"]] * 5
    # one that sends a byte and then goes quiet is closed after idle_timeout
    with Conn(f.d.socket, timeout=IDLE_TIMEOUT + 5) as c:
        c.send(b"p")
        t0 = time.monotonic()
        with pytest.raises(ConnectionError):
            c.line()
        assert IDLE_TIMEOUT - 0.5 < time.monotonic() - t0 < IDLE_TIMEOUT + 3
    count("slow-loris clients", 6)


def test_a_line_trickled_forever_is_cut_off_after_idle_timeout(f: Fuzzed) -> None:
    """A byte every 0.2 s never trips the per-read timeout; the line's own deadline does."""
    with Conn(f.d.socket, timeout=IDLE_TIMEOUT + 5) as c:
        t0 = time.monotonic()
        answer = None
        while time.monotonic() - t0 < IDLE_TIMEOUT + 4:
            try:
                c.send(b"x")
            except OSError:
                break
            c.sock.settimeout(0.2)              # the trickle's pace, and a bounded look for the answer
            try:
                answer = c.line()
                break
            except (TimeoutError, socket.timeout):
                continue
            except ConnectionError:
                break
        elapsed = time.monotonic() - t0
    assert answer is not None and answer.startswith("ERR line not finished"), answer
    assert IDLE_TIMEOUT - 0.5 < elapsed < IDLE_TIMEOUT + 3, elapsed
    assert f.d.ask("ping") == "ACK pong"


def test_more_than_max_connections_get_err_busy(f: Fuzzed) -> None:
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            c = Conn(f.d.socket, timeout=10)
            assert c.ask("ping") == "ACK pong"      # its handler thread is running
            held.append(c)
        for _ in range(5):
            with Conn(f.d.socket, timeout=10) as extra:
                answer = extra.line()
                assert answer.startswith("ERR busy"), answer
                with pytest.raises(ConnectionError):
                    extra.line()                    # and closed
        assert f.proc("Threads") <= f.threads0 + MAX_CONNECTIONS + THREAD_MARGIN
        for c in held:
            assert c.ask("ping") == "ACK pong"      # the admitted ones still work
            assert c.ask("hello name:capped").startswith("ACK ")
    finally:
        for c in held:
            c.close()
    wait_for(f.pings, 10, "a new connection to be admitted once the others closed")
    count("connections over the cap", 5)


def test_a_burst_of_simultaneous_connections_below_the_cap_is_served(f: Fuzzed) -> None:
    """Clients connect with a timeout (upq-cli does): a full listen backlog fails them with
    EAGAIN at once, with no answer at all -- neither served nor told ERR busy."""
    n = MAX_CONNECTIONS - 4
    barrier = threading.Barrier(n)
    results: list[str] = []

    def client() -> None:
        barrier.wait(5)
        try:
            with Conn(f.d.socket, timeout=10) as c:
                results.append(c.ask("ping"))
        except OSError as exc:
            results.append(f"{type(exc).__name__}: {exc}")

    for attempt in range(5):
        results.clear()
        barrier.reset()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        count("connection bursts")
        failed = [r for r in results if r != "ACK pong"]
        assert not failed and len(results) == n, \
            f"burst {attempt + 1}: {len(failed)} of {n} simultaneous clients not served: {failed[:3]}"
        wait_for(lambda: f.proc("Threads") <= f.threads0 + THREAD_MARGIN, 10, "handlers to end")
