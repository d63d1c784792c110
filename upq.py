#!/usr/bin/env python3
"""upq, the job dispatcher daemon: wires config, database, queues and socket together."""
from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import stat
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from module_loader import ModuleLoadError, load_job_class
from parseconfig import Config, ConfigError, load_config
from upqjob import UpqJob

VERSION = "0.1.0"


class StartupError(Exception):
    """Start-up cannot go on; str() is the message for the terminal."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="upq.py",
        description="upq job dispatcher: stores jobs sent over a Unix socket in SQL and runs them "
                    "on worker threads. Runs in the foreground unless --daemon is given.")
    p.add_argument("-c", "--config", default="upq.cfg", help="config file (default: ./upq.cfg)")
    p.add_argument("--daemon", action="store_true", help="detach from the terminal (sysvinit)")
    p.add_argument("--pidfile", help="with --daemon: write the process id here")
    p.add_argument("--check-config", action="store_true",
                   help="check the config and import every enabled job, print all problems, exit 0/1")
    p.add_argument("--version", action="version", version=f"upq {VERSION}")
    return p.parse_args(argv)


def load_jobs(config: Config) -> tuple[dict[str, type[UpqJob]], list[str]]:
    """Import every enabled job module; collect every problem rather than stop at the first."""
    classes: dict[str, type[UpqJob]] = {}
    problems: list[str] = []
    for name in config.enabled_jobs():
        try:
            classes[name] = load_job_class(config.paths.jobs_dir, name)
        except ModuleLoadError as exc:
            problems.append(f"{config.path}: [job {name}]: {exc}")
    return classes, problems


def default_node_name(config: Config) -> str:
    return config.server.node_name or f"{socket.gethostname()}:{config.paths.socket}"


@dataclass
class Daemon:
    """The running pieces, built once here and passed to whoever needs them."""
    config: Config
    classes: dict[str, type[UpqJob]]
    log: logging.Logger
    db: Any = None
    manager: Any = None
    servers: list[Any] = field(default_factory=list)
    keeper: Any = None
    reload_lock: threading.Lock = field(default_factory=threading.Lock)
    notifier: Any = None
    pidfile: str | None = None      # --daemon: removed by _exit_now too (atexit does not run)


def prepare(d: Daemon) -> None:
    """Everything that can fail for a reason the admin must see, done before detaching:
    the socket (a live one is never stolen), the TCP listener and the database schema."""
    from sqlalchemy.exc import SQLAlchemyError

    from upqdb import Database, DatabaseUnavailable
    from upqserver import UpqTCPServer, UpqUnixServer, socket_in_use

    config, log = d.config, d.log
    path = config.paths.socket
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise StartupError(f"[paths] socket = {path} exists and is not a socket; "
                               f"not removing it (move it away or pick another path)")
        if socket_in_use(path):
            raise StartupError(f"another upq is already serving on {path}; not starting a second one")
        log.info("removing stale socket file %s", path)
        os.unlink(path)
    d.db = Database(config.db.url, log, config.db.durability)
    try:
        d.db.create_schema()
    except (SQLAlchemyError, DatabaseUnavailable) as exc:
        log.error("cannot open the database %s: %s", _safe_url(config.db.url), exc)
        raise StartupError(f"cannot open the database [db] url = {_safe_url(config.db.url)}: "
                           f"{getattr(exc, 'orig', None) or exc}") from exc
    finally:
        d.db.dispose()          # no connection may cross a fork (--daemon)
    srv = config.server
    try:
        d.servers.append(UpqUnixServer(path, None, max_connections=srv.max_connections,  # type: ignore[arg-type]
                                       idle_timeout=srv.idle_timeout, socket_mode=srv.socket_mode,
                                       socket_group=srv.socket_group, logger=log))
    except KeyError:
        raise StartupError(f"[server] socket_group = {srv.socket_group}: no such group") from None
    except OSError as exc:
        raise StartupError(f"cannot listen on [paths] socket = {path}: {exc.strerror or exc}") from exc
    if srv.listen:
        try:
            d.servers.append(UpqTCPServer(srv.listen, srv.token, None,  # type: ignore[arg-type]
                                          max_connections=srv.max_connections,
                                          idle_timeout=srv.idle_timeout, logger=log))
        except OSError as exc:
            raise StartupError(f"cannot listen on [server] listen = {srv.listen}: {exc.strerror or exc}") from exc


def start(d: Daemon) -> None:
    """Start the writer, recover this node's jobs, start workers; connections get answered."""
    from notify import Notifier, smtp_warnings
    from upqnodes import NodeKeeper
    from upqqueuemngr import QueueManager
    from upqserver import Protocol

    node = default_node_name(d.config)
    d.db.start()
    d.keeper = NodeKeeper(d.db, node, d.config.server.node_timeout, d.log,
                          on_requeue=lambda: d.manager.wake_all(),
                          on_cancel=lambda ids: d.manager.flag_cancelled(ids),
                          on_peers=lambda n: d.manager.set_peers(n))
    d.keeper.register()
    recovered = d.db.requeue_orphans(node)
    if recovered:
        d.log.warning("re-queued %d job(s) that this node left running", recovered)
    for warning in smtp_warnings(d.config):
        d.log.warning("%s", warning)
    d.notifier = Notifier(d.config.mail, d.config.notify, d.log, socket.gethostname())
    d.notifier.start()
    d.manager = QueueManager(d.config, d.db, d.classes, d.log, node, on_final=d.notifier.job_ended)
    protocol = Protocol(d.manager, d.log, reload=lambda: reload(d))
    for server in d.servers:
        server.protocol = protocol
    d.manager.start()
    d.keeper.start()


def reload(d: Daemon) -> list[str]:
    """SIGHUP / `reload`: apply [job] changes and reopen the log; a bad config keeps the old one."""
    from log import reopen_logs, setup_logging

    with d.reload_lock:
        try:
            config = load_config(d.config.path)
            classes, problems = load_jobs(config)
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            d.log.error("reload: the config does not load; keeping the running one:\n%s", exc)
            raise
        if config.logging != d.config.logging:
            d.log = setup_logging(config.logging, source=config.path)
        else:
            for problem in reopen_logs(d.log):
                d.log.error("reload: %s", problem)
        for what in _needs_restart(d.config, config):
            d.log.warning("reload: %s changed; that takes effect at the next restart", what)
        changes = d.manager.reconfigure(config, classes)
        d.classes = classes
        d.config = config
        d.log.info("reloaded %s: %s", config.path, "; ".join(changes) or "no job changes")
        return changes


def _needs_restart(old: Config, new: Config) -> list[str]:
    out = []
    if old.db != new.db:
        out.append("[db]")
    if old.paths.socket != new.paths.socket:
        out.append("[paths] socket")
    if old.server != new.server:
        out.append("[server]")
    if old.mail != new.mail or old.notify != new.notify:
        out.append("[mail] / [notify]")
    return out


def _safe_url(url: str) -> str:
    """The url without its password, for messages."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "<unparsable url>"


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


def serve(d: Daemon, sigs: Signals) -> int:
    """Serve until SIGTERM/SIGINT (SIGHUP reloads); then stop accepting, give running jobs the grace."""
    signals, wake_r = sigs.pending, sigs.wake_r
    for server in d.servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                         name=f"server-{type(server).__name__}", daemon=True).start()
    d.log.info("upq %s serving on %s, jobs: %s", VERSION,
               " and ".join([d.config.paths.socket] + ([d.config.server.listen] if d.config.server.listen else [])),
               ", ".join(sorted(d.manager.types)) or "none")
    sd_notify("READY=1")
    while True:
        select.select([wake_r], [], [], 5.0)
        if select.select([wake_r], [], [], 0)[0]:
            os.read(wake_r, 4096)
        while signals and signals[0] == signal.SIGHUP:
            signals.pop(0)
            try:
                reload(d)
            except ConfigError:
                pass
        if signals:
            break
    sd_notify("STOPPING=1")
    d.log.info("signal %s: stopping (grace %ss); send it again to exit at once",
               signal.Signals(signals[0]).name, d.config.server.shutdown_grace)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: _exit_now(d.log, pidfile=d.pidfile))
    for server in d.servers:
        server.shutdown()
        server.server_close()
    _unlink(d.config.paths.socket)
    all_ended = d.manager.stop(d.config.server.shutdown_grace)
    d.notifier.stop()       # sends what is pending for a few seconds, logs the rest as lost
    if not all_ended:
        d.log.warning("jobs still running after %ss; they will run again at the next start",
                      d.config.server.shutdown_grace)
    d.keeper.stop()
    d.db.close()            # the writer commits every outcome queued so far, then stops
    d.log.info("stopped")
    # a job may have left threads behind (non-daemon ones too): do not wait for them
    _exit_now(d.log, 0, pidfile=d.pidfile, why="")
    return 0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _exit_now(log: logging.Logger, code: int = 0, pidfile: str | None = None,
              why: str = "exiting now") -> None:
    """Python cannot stop running threads: flush the log and leave (removing our pidfile,
    which python-daemon's atexit release would have done)."""
    if why:
        log.warning(why)
    if pidfile:
        _unlink(pidfile)
    logging.shutdown()
    os._exit(code)


def detach(d: Daemon, pidfile: str | None) -> None:
    """--daemon: fork away from the terminal, keeping the sockets and log files open."""
    import daemon
    import daemon.pidfile

    lock = None
    if pidfile:
        pidfile = os.path.abspath(pidfile)
        _clear_stale_pidfile(pidfile, d.log)
        if not os.access(os.path.dirname(pidfile), os.W_OK):
            raise StartupError(f"--pidfile {pidfile}: its folder is missing or not writable")
        lock = daemon.pidfile.TimeoutPIDLockFile(pidfile, acquire_timeout=1)
    keep: list[Any] = [s.fileno() for s in d.servers]
    for handler in d.log.handlers:
        for attr in ("stream", "socket"):
            obj = getattr(handler, attr, None)
            if obj is not None and hasattr(obj, "fileno"):
                keep.append(obj.fileno())
    ctx = daemon.DaemonContext(working_directory="/", umask=0o027, pidfile=lock,
                               files_preserve=keep, signal_map={}, detach_process=True)
    ctx.open()
    d.pidfile = pidfile


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        problems = list(exc.problems)
        if args.check_config and exc.partial is not None and exc.partial.paths.jobs_dir:
            problems += load_jobs(exc.partial)[1]     # list module problems too
        print("upq: bad config:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    classes, problems = load_jobs(config)
    if args.pidfile and not args.daemon:
        print("upq: --pidfile needs --daemon", file=sys.stderr)
        return 2
    if args.check_config:
        from notify import smtp_warnings
        for line in problems + smtp_warnings(config):
            print(line, file=sys.stderr)
        print(f"{config.path}: {'OK' if not problems else f'{len(problems)} problem(s)'}",
              file=sys.stderr if problems else sys.stdout)
        return 1 if problems else 0
    if problems:
        print("upq: cannot start:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    if os.geteuid() == 0 and not config.server.allow_root:
        print(f"upq: refusing to run as root; run it as its own user, or set "
              f"[server] allow_root = true in {config.path}", file=sys.stderr)
        return 1
    from log import setup_logging
    try:
        log = setup_logging(config.logging, source=config.path)
    except ConfigError as exc:
        print(f"upq: cannot start:\n{exc}", file=sys.stderr)
        return 1
    d = Daemon(config, classes, log)
    try:
        prepare(d)
        if args.daemon:
            detach(d, args.pidfile)
    except StartupError as exc:
        for server in d.servers:
            server.server_close()
        if d.servers:
            _unlink(config.paths.socket)
        print(f"upq: cannot start: {exc}", file=sys.stderr)
        return 1
    sigs = Signals().install()      # before start: a SIGHUP meanwhile must not kill us
    try:
        start(d)
    except Exception as exc:  # noqa: BLE001 - after detaching, the log is the only witness
        log.error("cannot start: %s", exc)
        print(f"upq: cannot start: {exc}", file=sys.stderr)
        return 1
    return serve(d, sigs)


if __name__ == "__main__":
    sys.exit(main())
