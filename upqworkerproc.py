"""A worker process as the daemon sees it (isolation = process): its socket, its exit, how
its death reads in a job's msg, and the calls (sub-jobs) its run makes of the daemon."""
from __future__ import annotations

import json
import os
import pwd
import select
import signal
import socket
import subprocess
import threading
import time
from typing import Any

from parseconfig import JobConfig
from upqerrors import ConfigError
from upqjob import UpqJob
from upqworker import memory_text

START_TIMEOUT = 30.0        # seconds a fresh worker may take to import its job module


class WorkerGone(Exception):
    """The worker closed its socket: it has died, or is about to."""


class WorkerProc:
    """One worker process and the daemon's end of its socketpair; used by one run at a time."""

    def __init__(self, proc: subprocess.Popen, sock: socket.socket, generation: int):
        self.proc = proc
        self.sock = sock
        self.generation = generation
        self.ready = False
        self.fenced = ""            # why the partition guard killed it (its run is retried)
        self.runs = 0
        self._buf = b""
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._send_lock = threading.Lock()      # the run's thread and its child-wait threads send

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, **msg: Any) -> None:
        try:
            with self._send_lock:
                self.sock.sendall((json.dumps(msg, default=str) + "\n").encode())
        except OSError as exc:
            raise WorkerGone(str(exc)) from exc

    def receive(self, timeout: float) -> dict | None:
        """The next message, None if none came within `timeout`; WorkerGone at EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self._poll.poll(left * 1000):    # poll, not select: the daemon's fds may pass 1024
                return None
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError as exc:
                raise WorkerGone(str(exc)) from exc
            if not chunk:
                raise WorkerGone("EOF")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def exit_status(self, wait: float) -> tuple[int, int] | None:
        """(si_code, si_status) once the process has exited, without reaping it (its pid, and so
        its process group id, stay reserved until `reap`); None if still alive after `wait`."""
        deadline = time.monotonic() + wait
        while True:
            try:
                res = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return (os.CLD_EXITED, self.proc.returncode or 0)
            if res is not None:
                return (res.si_code, res.si_status)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def kill_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self) -> None:
        """SIGKILL what is left of the group (programs the job started), then reap the leader."""
        self.kill_group(signal.SIGKILL)
        self.sock.close()
        self.proc.wait()


def death_message(status: tuple[int, int], config: JobConfig) -> str:
    """How a worker process ended, in the words a user reads in the job's msg."""
    code, value = status
    if code == os.CLD_EXITED:
        return f"worker process died: exit code {value}"
    try:
        name = signal.Signals(value).name
    except ValueError:
        name = "unknown signal"
    if value == signal.SIGXCPU and config.max_cpu:
        return f"cpu limit {config.max_cpu:g} s exceeded (worker process got signal {value} ({name}))"
    text = f"worker process died: signal {value} ({name})"
    if config.max_memory and value in (signal.SIGKILL, signal.SIGABRT):
        text += f"; memory limit {memory_text(config.max_memory)} may have been exceeded"
    return text


def worker_user(name: str) -> tuple[int, int] | None:
    """`user = name`: (uid, gid) to run a type's workers as; only a daemon running as root can."""
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError([f"user = {name}: no such user"]) from None
    if os.geteuid() != 0:
        raise ConfigError([f"user = {name}: the daemon must run as root to run workers as another user"])
    return entry.pw_uid, entry.pw_gid


def wait_ready(w: WorkerProc) -> str:
    """'' once the worker has imported its module, else why it cannot run jobs."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        msg = w.receive(deadline - time.monotonic())
        if msg is None:
            break
        if msg.get("op") == "ready":
            w.ready = True
            return ""
        if msg.get("op") == "error":
            return f"worker process could not start: {msg.get('msg')}"
    return f"worker process did not start within {START_TIMEOUT:g} s"


def serve_call(w: WorkerProc, job: UpqJob, msg: dict, jobname: str) -> None:
    """A sub-job request of the run: submitted here; a wait on one (which lends the run's
    slot, as in a thread) in a thread of its own, so the deadline and cancel still apply."""
    children: dict[int, UpqJob] = job.__dict__.setdefault("_upq_children", {})
    call = msg.get("call")
    if msg["op"] == "submit":
        try:
            child = job.submit(str(msg.get("jobname")), dict(msg.get("params") or {}))
        except Exception as exc:  # noqa: BLE001 - the refusal goes back to the job, as in a thread
            w.send(op="reply", call=call, error=getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}")
            return
        assert child.jobid is not None
        children[child.jobid] = child
        w.send(op="reply", call=call, jobid=child.jobid)
        return
    child = children.get(int(msg.get("jobid") or 0))
    if child is None:
        w.send(op="reply", call=call, ended=False)
        return
    timeout = msg.get("timeout")

    def wait() -> None:
        ended = child.finished.wait(None if timeout is None else float(timeout))
        try:
            w.send(op="reply", call=call, ended=ended, msg=child.msg, result=child.result,
                   state=getattr(child, "state", None))
        except WorkerGone:
            pass            # the run has ended meanwhile
    threading.Thread(target=wait, name=f"{jobname}-childwait-{child.jobid}", daemon=True).start()
