"""The daemon's dealings with the operating system: detaching, the pidfile, systemd's
notify socket, signals turned into a queue, and the exit that does not wait for threads."""
from __future__ import annotations

import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

from upqerrors import StartupError


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) how we are; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError:
        pass


@dataclass
class Signals:
    """Signals only queue up here (and wake the main loop through a pipe); the loop acts."""
    pending: list[int] = field(default_factory=list)
    wake_r: int = -1

    def install(self) -> "Signals":
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: self.pending.append(signum))
        return self


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def exit_now(log: logging.Logger, code: int = 0, pidfile: str | None = None,
              why: str = "exiting now") -> None:
    """Python cannot stop running threads: flush the log and leave (removing our pidfile,
    which python-daemon's atexit release would have done)."""
    if why:
        log.warning(why)
    if pidfile:
        unlink(pidfile)
    logging.shutdown()
    os._exit(code)


def detach(listeners: list[socket.socket], log: logging.Logger, pidfile: str | None) -> str | None:
    """--daemon: fork away from the terminal, keeping the sockets and log files open; returns
    the pidfile's absolute path."""
    import daemon
    import daemon.pidfile

    lock = None
    if pidfile:
        pidfile = os.path.abspath(pidfile)
        _clear_stale_pidfile(pidfile, log)
        if not os.access(os.path.dirname(pidfile), os.W_OK):
            raise StartupError(f"--pidfile {pidfile}: its folder is missing or not writable")
        lock = daemon.pidfile.TimeoutPIDLockFile(pidfile, acquire_timeout=1)
    keep: list[Any] = [s.fileno() for s in listeners]
    for handler in log.handlers:
        for attr in ("stream", "socket"):
            obj = getattr(handler, attr, None)
            if obj is not None and hasattr(obj, "fileno"):
                keep.append(obj.fileno())
    ctx = daemon.DaemonContext(working_directory="/", umask=0o027, pidfile=lock,
                               files_preserve=keep, signal_map={}, detach_process=True)
    ctx.open()
    return pidfile


def _clear_stale_pidfile(path: str, log: logging.Logger) -> None:
    """A pidfile left by kill -9 is replaced; one whose process lives stops the start."""
    try:
        pid = int(open(path).read().strip() or 0)
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        pid = 0
    if pid > 0:
        try:
            os.kill(pid, 0)
            raise StartupError(f"--pidfile {path}: upq already runs as pid {pid}")
        except ProcessLookupError:
            pass
        except PermissionError:
            raise StartupError(f"--pidfile {path}: process {pid} is alive (not ours)") from None
    log.warning("replacing stale pidfile %s (pid %s is gone)", path, pid or "unreadable")
    os.unlink(path)
