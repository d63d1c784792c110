"""A database outage: every request is answered, never with a false ACK, and nothing
ACKed is lost (SPEC: durability; the socket protocol, "while the database is unreachable").

MariaDB: the tests start a private `mariadbd` on a temp data dir and a spare port
(the shared server is untouched), then kill it, or freeze it with SIGSTOP, while
record jobs are running, and bring it back on the same data dir and port.
SQLite: the database sits on a tiny tmpfs that is filled up (the test needs
root and may mount, as on these machines; otherwise it is skipped), or hits a
file size limit (RLIMIT_FSIZE set on the running daemon with prlimit, which needs
no mount), or its files turn unwritable (chattr +i; a mounted filesystem cannot
be remounted read-only while the daemon holds the file open for writing), or it
sits on a read-only tmpfs from the start, or another process holds its write lock
(every pipelined request must still be answered within 10 s).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import UPQ, Conn, Daemon, wait_for
from helpers.client import AMBIGUOUS
from helpers.mariadb import PrivateMariaDB
from helpers.outage import ANSWER_BOUND, OutageProbe, timed_ask
from helpers.records import attempts_by_job


@pytest.fixture
def private_mariadb() -> Iterator[PrivateMariaDB]:
    base = Path(tempfile.mkdtemp(prefix="upqm-", dir="/tmp"))
    db = PrivateMariaDB(base)
    try:
        db.install()
        db.start()
        db.execute("CREATE DATABASE upq")
        yield db
    finally:
        db.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test builds by hand; killed at the end, their folders removed."""
    made: list[Daemon] = []
    yield made
    for d in made:
        d.kill_if_running()
        shutil.rmtree(d.dir, ignore_errors=True)


def new_daemon(daemons: list[Daemon], url: str, jobs: dict[str, dict[str, str]]) -> Daemon:
    d = Daemon(Path(tempfile.mkdtemp(prefix="upq-", dir="/tmp")), url, jobs)
    daemons.append(d)
    return d


def ends(d: Daemon) -> set[int]:
    """The jobs whose record run got to its end here."""
    return set(attempts_by_job(d.read_records(), "end"))


def stored_tags(d: Daemon) -> dict[str, int]:
    """params `tag` -> jobid, for every stored job (the tests stay under list's 1000)."""
    rows = json.loads(d.ask("list limit:1000")[4:])
    return {r["params"]["tag"]: r["jobid"] for r in rows if "tag" in r["params"]}


def run_mariadb_outage(private_mariadb: PrivateMariaDB, daemons: list[Daemon], stop_sig: int) -> None:
    d = new_daemon(daemons, private_mariadb.url("upq"), {"record": {"concurrent": "2"}})
    d.start()
    assert d.proc is not None
    pid = d.proc.pid
    before = [d.submit(f"record tag:before-{i}") for i in range(5)]
    for jobid in before:
        assert d.wait_job(jobid)["state"] == "done"
    running = [d.submit(f"record tag:running-{i} sleep:3") for i in range(2)]
    queued = [d.submit(f"record tag:queued-{i}") for i in range(3)]
    wait_for(lambda: set(running) <= set(d.starts()), 15, "the two long jobs to start")

    private_mariadb.kill(stop_sig)
    probe = OutageProbe(d)
    t_down = time.monotonic()
    # ask until the running jobs have ended during the outage, and a few seconds beyond
    while not (set(running) <= ends(d) and time.monotonic() - t_down > 4):
        probe.round(before[0])
        assert d.proc.poll() is None, f"upq died during the outage: {d.stderr()[-2000:]}"
        assert time.monotonic() - t_down < 60, "the running jobs did not end during the outage"
    assert not probe.false_acks, f"ACK while the database was down: {probe.false_acks[:5]}"

    if stop_sig == signal.SIGSTOP:
        private_mariadb.kill(signal.SIGCONT)
    else:
        private_mariadb.start()
    t_up = time.monotonic()
    after: list[int] = []

    def acks_again() -> bool:
        answer, _ = timed_ask(d, f"record tag:after-{len(after)}")
        if answer.startswith("ACK "):
            after.append(int(answer.split()[1]))
            return True
        return False

    wait_for(acks_again, 30, "submissions to be ACKed again once the database is back")
    after += [d.submit(f"record tag:after-{i}") for i in range(1, 4)]
    recovered = time.monotonic() - t_up

    for jobid in before + running + queued + after:
        job = d.wait_job(jobid, timeout=30)
        assert job["state"] == "done", (jobid, job["state"], job["msg"])
    # the running jobs' outcomes were written, once: each ran exactly once, as attempt 1
    history = d.starts()
    for jobid in running:
        assert history[jobid] == [1], (jobid, history[jobid])
        assert d.job(jobid)["attempts"] == 1 and d.job(jobid)["result"] == {"attempt": 1}
    for jobid in before + queued + after:
        assert history[jobid] == [1], (jobid, history.get(jobid))
    assert d.proc.pid == pid and d.proc.poll() is None, "the daemon restarted or died"
    # what was refused during the outage is not stored, unless the ERR said it might be
    tags = stored_tags(d)
    stored_refused = {t: a for t, a in probe.refused.items() if t in tags}
    for tag, answer in stored_refused.items():
        assert AMBIGUOUS in answer, f"{tag} was refused ({answer}) yet stored as job {tags[tag]}"
    print(f"\noutage ({signal.Signals(stop_sig).name}): {probe.asked} requests during "
          f"{t_up - t_down:.0f}s down, {len(probe.refused)} submissions "
          f"refused ({len(stored_refused)} stored after an ambiguous ERR), ACKs again "
          f"{recovered:.1f}s after the server returned")
    probe.verdict()                   # slow answers: reported after the recovery was checked too


@pytest.mark.timeout(180)
def test_mariadb_killed_mid_run_gets_err_and_loses_nothing(private_mariadb, daemons) -> None:
    run_mariadb_outage(private_mariadb, daemons, signal.SIGKILL)


@pytest.mark.timeout(180)
def test_mariadb_frozen_mid_run_answers_within_ten_seconds(private_mariadb, daemons) -> None:
    """SIGSTOP: connections hang instead of failing; read/connect timeouts must bound every answer."""
    run_mariadb_outage(private_mariadb, daemons, signal.SIGSTOP)


# -- SQLite on a full or read-only filesystem ---------------------------------------

@pytest.fixture
def tiny_fs() -> Iterator[Path]:
    """An 8 MiB tmpfs under /tmp; skipped where mounting is not permitted."""
    mnt = Path(tempfile.mkdtemp(prefix="upqfs-", dir="/tmp"))
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "upqtest", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); the RLIMIT_FSIZE test covers "
                    "a full disk")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)


def fill(path: Path) -> Path:
    """Write a filler file until the filesystem is full."""
    filler = path / "filler"
    chunk = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, chunk)
    except OSError:
        pass                            # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def submit_until_refused(d: Daemon, tag: str, limit: int = 400) -> tuple[list[int], list[str]]:
    """Submit 32 KiB jobs until one is refused; every answer bounded and ACK or ERR naming the
    database. Returns (ACKed ids, ERR lines)."""
    acked, refused = [], []
    pad = "p" * 32_000
    for i in range(limit):
        answer, took = timed_ask(d, f"hello name:{tag}-{i} pad:{pad}")
        assert took < ANSWER_BOUND, (answer, took)
        if answer.startswith("ACK "):
            acked.append(int(answer.split()[1]))
            continue
        assert answer.startswith("ERR ") and "database" in answer, answer
        refused.append(answer)
        if len(refused) >= 3:
            break
    assert refused, f"{limit} submissions of 32 KiB were all ACKed; the disk never filled"
    return acked, refused


def assert_serving_without_db(d: Daemon) -> None:
    assert d.proc is not None and d.proc.poll() is None, f"upq died: {d.stderr()[-2000:]}"
    answer, took = timed_ask(d, "ping")
    assert answer == "ACK pong" and took < 2, (answer, took)


def recover_and_check(d: Daemon, acked: list[int]) -> None:
    """Submissions ACK again; every ACKed job is done, also after a kill -9 and restart."""
    wait_for(lambda: timed_ask(d, "hello name:back")[0].startswith("ACK "), 20,
             "submissions to be ACKed again")
    for jobid in acked:
        assert d.wait_job(jobid, timeout=30)["state"] == "done"
    d.kill(signal.SIGKILL)
    d.start()
    for jobid in acked:
        job = d.job(jobid)
        assert job["state"] == "done", (jobid, job["state"])


def test_sqlite_on_a_full_filesystem_gets_err_not_a_crash(tiny_fs: Path, daemons) -> None:
    d = new_daemon(daemons, f"sqlite:///{tiny_fs}/upq.db", {"hello": {}})
    d.start()
    acked = [d.submit(f"hello name:ok-{i}") for i in range(5)]
    filler = fill(tiny_fs)
    more, refused = submit_until_refused(d, "full")
    print(f"\nfull tmpfs: {len(more)} more ACKed, then {refused[0]!r}")
    assert_serving_without_db(d)
    assert "full" in refused[0] or "disk" in refused[0], refused[0]
    filler.unlink()
    recover_and_check(d, acked + more)


def test_sqlite_at_its_file_size_limit_gets_err_not_a_crash(daemons) -> None:
    """RLIMIT_FSIZE on the running daemon (writes fail with EFBIG); needs no mount. Only the soft
    limit is lowered, so it can be lifted again without CAP_SYS_RESOURCE."""
    d = new_daemon(daemons, "sqlite:///./upq.db", {"hello": {}})
    d.start()
    assert d.proc is not None
    acked = [d.submit(f"hello name:ok-{i}") for i in range(5)]
    sizes = [p.stat().st_size for p in d.dir.iterdir() if p.is_file()]
    limit = max(sizes) + 512 * 1024
    resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        more, refused = submit_until_refused(d, "fsize")
        print(f"\nRLIMIT_FSIZE: {len(more)} more ACKed, then {refused[0]!r}")
        assert_serving_without_db(d)
    finally:
        resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    recover_and_check(d, acked + more)


def test_sqlite_files_turned_unwritable_mid_run_get_err_not_a_crash(daemons) -> None:
    """A filesystem cannot be remounted read-only while the daemon holds the database open for
    writing (EBUSY), so the files are made immutable (chattr +i): writes through the open
    descriptors then fail with EPERM, as they would on a read-only filesystem."""
    d = new_daemon(daemons, "sqlite:///./upq.db", {"hello": {}})
    d.start()
    acked = [d.submit(f"hello name:ok-{i}") for i in range(5)]
    for jobid in acked:
        assert d.wait_job(jobid)["state"] == "done"
    # not the -shm file: SQLite maps it into memory, and a connection opened after it turned
    # immutable (the daemon's reader threads open them at any time) dies of SIGBUS on its
    # mapping, which a filesystem gone read-only under a running daemon does not do
    files = [str(p) for p in d.dir.glob("upq.db*") if not p.name.endswith("-shm")]
    res = subprocess.run(["chattr", "+i", *files], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {res.stderr.strip()}")
    try:
        for i in range(5):
            answer, took = timed_ask(d, f"hello name:ro-{i}")
            assert took < ANSWER_BOUND, (answer, took)
            assert answer.startswith("ERR ") and "database" in answer, answer
        assert_serving_without_db(d)
    finally:
        subprocess.run(["chattr", "-i", *files], capture_output=True)
    recover_and_check(d, acked)


def test_sqlite_on_a_read_only_filesystem_refuses_to_start_with_a_clear_message(tiny_fs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="upq-", dir="/tmp"))
    try:
        d = Daemon(work, f"sqlite:///{tiny_fs}/upq.db", {"hello": {}})
        res = subprocess.run([sys.executable, str(UPQ), "-c", str(d.cfg)], capture_output=True,
                             text=True, timeout=30, cwd="/")
        assert res.returncode != 0
        assert "database" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_sqlite_locked_by_another_process_answers_pipelined_requests_within_ten_seconds(daemons) -> None:
    """Another process holds SQLite's write lock (a backup, a shell left in BEGIN IMMEDIATE): the
    daemon's commits wait (busy_timeout), and every request must still be answered within 10 s --
    each line of a pipeline too, not 9 s per line one after the other."""
    import sqlite3
    d = new_daemon(daemons, "sqlite:///./upq.db", {"hello": {}})
    d.start()
    acked = [d.submit(f"hello name:ok-{i}") for i in range(3)]
    locker = sqlite3.connect(d.dir / "upq.db", isolation_level=None, timeout=10)
    locker.execute("BEGIN IMMEDIATE")
    try:
        assert_serving_without_db(d)
        patience = float(os.environ.get("UPQ_LOCKED_PATIENCE", ANSWER_BOUND + 2))
        with Conn(d.socket, timeout=patience) as c:
            t0 = time.monotonic()
            c.send("".join(f"hello name:piped-{i}\n" for i in range(4)))
            answers: list[str] = []
            try:
                for _ in range(4):
                    answers.append(c.line())
                    answers[-1] += f"  <- after {time.monotonic() - t0:.1f}s"
            except TimeoutError:
                pytest.fail(f"{4 - len(answers)} of 4 pipelined submissions unanswered after "
                            f"{time.monotonic() - t0:.1f}s while another process held the write lock; "
                            f"answered: {answers}")
        took = time.monotonic() - t0
        print(f"\nlocked SQLite, 4 pipelined submissions: {answers}")
        for a in answers:
            assert a.startswith("ERR ") and "database" in a, a
        assert took < ANSWER_BOUND, f"4 pipelined submissions answered after {took:.1f}s: {answers}"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    recover_and_check(d, acked)
