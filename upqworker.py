"""The runner a process-isolated job type's worker process executes (isolation = process).

Started by upqprocexec.ProcessExecutor as `python upqworker.py <fd> <init-json>`: a fresh
interpreter, never a fork of the threaded daemon, so it inherits no database connection,
socket or lock. It imports the job module once, then runs one job at a time as the daemon
asks over the socketpair `fd` (newline-delimited JSON), and answers with the outcome.

It is the leader of its own process group (the daemon starts it in a new session), so
stopping the group also stops programs the job started. When the daemon dies (even by
kill -9) the socket reaches EOF and the reader thread SIGKILLs the whole group: no orphans.
"""
from __future__ import annotations

import array
import fcntl
import json
import logging
import os
import queue
import resource
import select
import signal
import socket
import sys
import termios
import threading
from typing import Any

if __name__ == "__main__":      # run as a script: the project folder is sys.path[0] already
    sys.modules.setdefault("upqworker", sys.modules["__main__"])

from module_loader import load_job_class  # noqa: E402
from upqerrors import ModuleLoadError  # noqa: E402
from upqexec import run_job  # noqa: E402
from upqjob import UpqJob  # noqa: E402
from upqstates import OutcomeKind  # noqa: E402


def memory_text(limit: int) -> str:
    """1073741824 -> '1G': a byte count as the config file would write it."""
    for suffix, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if limit % size == 0:
            return f"{limit // size}{suffix}"
    return str(limit)


class Channel:
    """The worker's end of the socketpair: lines of JSON; sends from any thread."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._send_lock = threading.Lock()
        self._rfile = sock.makefile("rb")

    def send(self, **msg: Any) -> None:
        data = (json.dumps(msg, default=str, ensure_ascii=False) + "\n").encode("utf-8", "replace")
        with self._send_lock:
            self.sock.sendall(data)

    def receive(self) -> dict | None:
        """The next message, None at EOF (the daemon is gone)."""
        line = self._rfile.readline()
        return json.loads(line) if line else None


class ChannelLog(logging.Handler):
    """A run's self.logger in the worker: each record goes to the daemon as a log line."""

    def __init__(self, chan: Channel):
        super().__init__(logging.DEBUG)
        self.chan = chan
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.chan.send(op="log", text=self.format(record))
        except Exception:  # noqa: BLE001 - a log line must never break the job
            self.handleError(record)


SENTINEL = b"\0upq-run-end\0\n"


class Output:
    """The worker's stdout and stderr (fds 1 and 2, so programs the job starts write there too)
    go to a pipe; the `worker-output` thread sends what arrives to the daemon as log lines."""

    def __init__(self, chan: Channel):
        self.chan = chan
        self.drained = threading.Event()
        self.lock = threading.Lock()    # guards busy, and the pump's reads
        self.busy = False               # the pump holds bytes it has not sent yet
        r, w = os.pipe()
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
        self.fd = r
        sys.stdout = open(1, "w", buffering=1, closefd=False, errors="replace")
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="replace")
        threading.Thread(target=self._pump, name="worker-output", daemon=True).start()

    def _pump(self) -> None:
        buf = b""
        poll = select.poll()
        poll.register(self.fd, select.POLLIN)
        while True:
            poll.poll()
            with self.lock:         # read and busy together: drain() sees the bytes in one or the other
                chunk = os.read(self.fd, 1 << 16)
                self.busy = True
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            if len(buf) > 8192:                 # a very long line without a newline: send it in parts
                lines.append(buf)
                buf = b""
            text = []
            for line in lines:
                if line + b"\n" == SENTINEL:
                    self.drained.set()
                else:
                    text.append(line.decode("utf-8", "replace"))
            if text:
                self.chan.send(op="log", text="\n".join(text))
            with self.lock:
                self.busy = bool(buf)

    def drain(self) -> None:
        """Wait (briefly) until what the run wrote so far has been sent."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        pending = array.array("i", [0])
        with self.lock:
            fcntl.ioctl(self.fd, termios.FIONREAD, pending)
            idle = not pending[0] and not self.busy
        if idle:
            return              # nothing written, nothing on its way: no round trip
        self.drained.clear()
        os.write(1, SENTINEL)
        self.drained.wait(2.0)


class RemoteFinished(threading.Event):
    """`child.finished` in a worker: waiting asks the daemon, which lends the parent's slot."""

    def __init__(self, worker: "Worker", child: "RemoteChild"):
        super().__init__()
        self._worker, self._child = worker, child

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        reply = self._worker.call("wait_child", jobid=self._child.jobid, timeout=timeout)
        if not reply.get("ended"):
            return False
        self._child.msg, self._child.result, self._child.state = reply["msg"], reply["result"], reply["state"]
        self.set()
        return True


class RemoteChild:
    """A sub-job started from a worker process: what UpqJob.submit returns there."""

    def __init__(self, worker: "Worker", jobname: str, jobid: int):
        self.jobname, self.jobid = jobname, jobid
        self.msg, self.result, self.state = "", None, None
        self.finished = RemoteFinished(worker, self)

    def __repr__(self) -> str:
        return f"<sub-job {self.jobname} #{self.jobid}>"


class WorkerHost:
    """The JobHost of a job in a worker process: sub-jobs are asked of the daemon."""

    def __init__(self, worker: "Worker"):
        self.worker = worker

    def enqueue_from_check(self, job: UpqJob) -> int:
        raise RuntimeError("enqueue_job() is for check(), which runs in the daemon")

    def submit_child(self, parent: UpqJob, jobname: str, params: Any) -> RemoteChild:
        reply = self.worker.call("submit", jobname=jobname, params=dict(params))
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return RemoteChild(self.worker, jobname, int(reply["jobid"]))


class Worker:
    """One worker process: the job class, the run queue, and the job now running."""

    def __init__(self, chan: Channel, init: dict):
        self.chan = chan
        self.init = init
        self.runs: queue.Queue[dict] = queue.Queue()
        self.current: UpqJob | None = None      # set and read under the GIL only (a reference)
        self.cancels: set[int] = set()          # jobids the daemon asked to cancel (reader thread adds)
        self.output: Output | None = None
        self._calls: dict[int, tuple[threading.Event, list[dict]]] = {}     # under _calls_lock
        self._calls_lock = threading.Lock()
        self._next_call = 0
        self.job_log = logging.Logger(f"upq.job.{init['name']}")
        self.job_log.addHandler(ChannelLog(chan))
        self.job_log.propagate = False
        self.log = logging.getLogger(f"upq.worker.{init['name']}")

    def reader(self) -> None:
        """Daemon -> worker messages; at EOF the daemon has died: stop the whole group."""
        while True:
            try:
                msg = self.chan.receive()
            except (OSError, ValueError):
                msg = None
            if msg is None:
                os.killpg(os.getpgid(0), signal.SIGKILL)
                os._exit(1)      # not reached unless killpg was refused
            if msg.get("op") == "run":
                self.runs.put(msg)
            elif msg.get("op") == "cancel":
                self.cancels.add(msg.get("jobid"))      # the job may not be built yet
                job = self.current
                if job is not None and job.jobid == msg.get("jobid"):
                    job.cancelled = True
            elif msg.get("op") == "reply":
                with self._calls_lock:
                    waiting = self._calls.pop(int(msg.get("call", -1)), None)
                if waiting is not None:
                    waiting[1].append(msg)
                    waiting[0].set()
            elif msg.get("op") == "exit":
                os._exit(0)

    def call(self, op: str, **args: Any) -> dict:
        """Ask the daemon something on behalf of the running job and wait for its reply."""
        done: threading.Event = threading.Event()
        box: list[dict] = []
        with self._calls_lock:
            self._next_call += 1
            n = self._next_call
            self._calls[n] = (done, box)
        self.chan.send(op=op, call=n, **args)
        done.wait()
        return box[0]

    def serve(self, cls: type[UpqJob]) -> None:
        """Run jobs one at a time until told to exit (or a memory error leaves it suspect)."""
        init = self.init
        max_memory, max_cpu = int(init.get("max_memory") or 0), init.get("max_cpu")
        while True:
            req = self.runs.get()
            if max_cpu:
                used = resource.getrusage(resource.RUSAGE_SELF)
                soft = int(used.ru_utime + used.ru_stime + float(max_cpu)) + 1
                resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))
            try:
                job = cls(init["name"], init["options"], req["params"], req["paths"], host=WorkerHost(self),
                          logger=self.job_log,
                          jobid=req["jobid"], attempt=req["attempt"])
                self.current = job
                job.cancelled = job.jobid in self.cancels
                outcome = run_job(job, self.job_log)     # a traceback goes to the job's log
            except BaseException as exc:  # noqa: BLE001 - the constructor's bug is the run's failure
                self.chan.send(op="outcome", kind=OutcomeKind.FAILED, msg=f"{type(exc).__name__}: {exc}",
                               result=None, delay=None)
                continue
            finally:
                self.current = None
                self.cancels.clear()
                if self.output is not None:
                    self.output.drain()
            memory_error = max_memory and outcome.kind == OutcomeKind.FAILED and \
                outcome.msg.startswith("MemoryError")
            msg = f"memory limit {memory_text(max_memory)} exceeded" if memory_error else outcome.msg
            del job
            try:
                json.dumps(outcome.result, default=str)
                result = outcome.result
            except (TypeError, ValueError) as exc:
                result = {"error": f"result is not JSON: {exc}"}
            self.chan.send(op="outcome", kind=outcome.kind, msg=msg, result=result, delay=outcome.delay,
                           retire=bool(memory_error))
            if memory_error:
                os._exit(0)     # the interpreter may be in a bad state: the daemon starts a fresh one


def main(argv: list[str]) -> int:
    """Import the job, set the limits, say ready, serve."""
    fd, init = int(argv[1]), json.loads(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the daemon decides when a worker stops
    chan = Channel(socket.socket(fileno=fd))
    own_err = os.fdopen(os.dup(2), "w", buffering=1)     # the worker's own diagnostics
    logging.basicConfig(level=logging.INFO, stream=own_err,
                        format=f"%(asctime)s upq-worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s")
    worker = Worker(chan, init)
    if init.get("capture"):
        worker.output = Output(chan)
    try:
        cls = load_job_class(init["jobs_dir"], init["name"])
    except ModuleLoadError as exc:
        chan.send(op="error", msg=exc.reason)
        return 2
    threading.Thread(target=worker.reader, name="worker-reader", daemon=True).start()
    if init.get("max_memory"):
        # after start-up, so the interpreter and the reader thread's stack fit
        limit = int(init["max_memory"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    chan.send(op="ready", pid=os.getpid())
    worker.serve(cls)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
