#!/usr/bin/env python3
"""upq, the job dispatcher daemon: wires config, database, queues and socket together."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import select
import signal
import socket
import stat
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cfgpath import DEFAULT_CONFIG_HELP, config_or_default
from module_loader import load_job_class
from parseconfig import Config, load_config
from upqdaemon import Signals, detach, exit_now, sd_notify, unlink
from upqerrors import ConfigError, DatabaseUnavailable, ModuleLoadError, StartupError
from upqjob import UpqJob

if TYPE_CHECKING:
    from notify import Notifier
    from upqdb import Database
    from upqengine import NodeNameLock
    from upqnodes import NodeKeeper
    from upqqueuemngr import QueueManager
    from upqschedule import Scheduler
    from upqserver import UpqServer
    from upqpause import Pauses
    from upqretention import Retention

VERSION = "0.1.0"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) or "upq",
        description="upq job dispatcher: stores jobs sent over a Unix socket in SQL and runs them "
                    "on worker threads. Runs in the foreground unless --daemon is given.")
    p.add_argument("-c", "--config", help=f"config file (default: {DEFAULT_CONFIG_HELP})")
    p.add_argument("--daemon", action="store_true", help="detach from the terminal (sysvinit)")
    p.add_argument("--pidfile", help="with --daemon: write the process id here")
    p.add_argument("--check-config", action="store_true",
                   help="check the config and import every enabled job, print all problems, exit 0/1")
    p.add_argument("--version", action="version", version=f"upq {VERSION}")
    args = p.parse_args(argv)
    args.config = config_or_default(args.config)
    return args


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
    """What prepare() makes before detaching: the config, the job classes, the log, the bound
    sockets and the database (schema checked, no connection open). The main thread owns it."""
    config: Config
    classes: dict[str, type[UpqJob]]
    log: logging.Logger
    listeners: list[socket.socket] = field(default_factory=list)
    db: "Database | None" = None
    pidfile: str | None = None      # --daemon: removed by _exit_now too (atexit does not run)
    http_listener: "socket.socket | None" = None     # [http] listen, bound before detaching


@dataclass(frozen=True)
class Running:
    """What start() builds after detaching, once, in order."""
    db: "Database"
    name_lock: "NodeNameLock"
    notifier: "Notifier"
    manager: "QueueManager"
    keeper: "NodeKeeper"
    servers: "list[UpqServer]"
    reloader: "Reloader"
    scheduler: "Scheduler | None" = None
    pauses: "Pauses | None" = None
    retention: "Retention | None" = None
    http: "HttpServer | None" = None


def prepare(d: Daemon) -> None:
    """Everything that can fail for a reason the admin must see, done before detaching:
    the socket (a live one is never stolen), the TCP listener and the database schema."""
    from sqlalchemy.exc import SQLAlchemyError

    from upqdb import Database
    from upqserver import bind_tcp, bind_unix, socket_in_use

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
    db = Database(config.db.url, log, config.db.durability)
    try:
        db.create_schema()
    except (SQLAlchemyError, DatabaseUnavailable) as exc:
        log.error("cannot open the database %s: %s", _safe_url(config.db.url), exc)
        raise StartupError(f"cannot open the database [db] url = {_safe_url(config.db.url)}: "
                           f"{getattr(exc, 'orig', None) or exc}") from exc
    finally:
        db.dispose()          # no connection may cross a fork (--daemon)
    d.db = db
    srv = config.server
    try:
        d.listeners.append(bind_unix(path, srv.socket_mode, srv.socket_group))
    except KeyError:
        raise StartupError(f"[server] socket_group = {srv.socket_group}: no such group") from None
    except OSError as exc:
        raise StartupError(f"cannot listen on [paths] socket = {path}: {exc.strerror or exc}") from exc
    if srv.listen:
        try:
            d.listeners.append(bind_tcp(srv.listen))
        except OSError as exc:
            raise StartupError(f"cannot listen on [server] listen = {srv.listen}: {exc.strerror or exc}") from exc
    if config.http.listen:
        try:
            d.http_listener = bind_tcp(config.http.listen)
        except OSError as exc:
            raise StartupError(f"cannot listen on [http] listen = {config.http.listen}: "
                               f"{exc.strerror or exc}") from exc


def start(d: Daemon) -> Running:
    """Build the daemon's pieces in order and start them: the writer, the node name, this
    node's jobs recovered, the notifier, the workers, the heartbeat; then connections are served."""
    from notify import Notifier, smtp_warnings
    from upqcommands import Dispatcher
    from upqcontrol import Completions, Control
    from upqengine import NodeNameLock
    from upqnodes import NodeKeeper
    from upqbulk import Admin
    from upqpause import Pauses, register_types
    from upqqueuemngr import QueueManager
    from upqschedule import Scheduler
    from upqretention import Retention
    from upqserver import UpqServer
    from upqsubmit import Submitter

    config, log, db = d.config, d.log, d.db
    assert db is not None, "prepare() opens the database"
    node = default_node_name(config)
    srv = config.server
    db.start()
    for warning in smtp_warnings(config):
        log.warning("%s", warning)
    notifier = Notifier(config.mail, config.notify, log, socket.gethostname())
    completions = Completions()
    manager = QueueManager(config, db, d.classes, log, node, hooks=[completions.on_ended, notifier.on_ended])
    metrics = None
    if d.http_listener is not None:
        from upqmetrics import Metrics
        metrics = Metrics(manager, db)
        manager.add_hook(metrics.on_ended)
    control = Control(manager, db, completions, srv.poll_interval)
    submitter = Submitter(manager, db, control.wait)
    pauses = Pauses(db, log, srv.poll_interval, manager.set_paused)
    manager.is_paused = pauses.is_paused
    reloader = Reloader(d, manager)
    scheduler = Scheduler(db, submitter, manager, log, node)
    dispatcher = Dispatcher(submitter, control, manager, reloader.reload, Admin(db, manager, pauses),
                            schedules=scheduler.describe,
                            on_submit=metrics.submitted if metrics else lambda: None)
    servers = [UpqServer(sock, dispatcher, max_connections=srv.max_connections, idle_timeout=srv.idle_timeout,
                         logger=log, token="" if sock.family == socket.AF_UNIX else srv.token,
                         on_answers=metrics.answered if metrics else lambda lines: None)
               for sock in d.listeners]
    name_lock = NodeNameLock(config.db.url, db.read_engine)
    keeper = NodeKeeper(db, name_lock, node, srv.node_timeout, log, on_requeue=manager.wake_all,
                        on_cancel=control.flag_cancelled, on_peers=manager.set_peers)
    keeper.register()
    from upqcrashloop import interrupt_cap, interrupt_failed
    db.nodes.cap_for = lambda name: interrupt_cap(manager.config, name)
    db.nodes.on_interrupt_failed = lambda rows: interrupt_failed(manager, notifier, completions, rows)
    notifier.start()
    recovered = db.nodes.requeue_orphans(node, crashed=keeper.previous_state != "stopped")
    if recovered:
        log.warning("re-queued %d job(s) that this node left running", recovered)
    register_types(db, config.enabled_jobs())
    pauses.refresh()
    manager.start(host=submitter)
    pauses.start()
    db.nodes.set_jobs(node, manager.concurrent())
    keeper.start()
    scheduler.start()
    retention = Retention(db, lambda: manager.config, log)
    retention.start()
    http = None
    if d.http_listener is not None and metrics is not None:
        from upqdashboard import add_dashboard
        from upqhttp import HttpApp, HttpServer
        app = HttpApp(config.http.token, manager, db, metrics, log)
        add_dashboard(app, control)
        http = HttpServer(d.http_listener, app)
    from upqguard import PartitionGuard
    PartitionGuard(lambda: keeper.renewed_at, srv.node_timeout / 2, manager, log).start()
    return Running(db, name_lock, notifier, manager, keeper, servers, reloader, scheduler, pauses, retention,
                   http)


class Reloader:
    """SIGHUP / `reload`: apply [job] changes and reopen the log; a bad config keeps the old one.
    Runs on the main thread (SIGHUP) or a connection's (`reload`), one at a time."""

    def __init__(self, d: Daemon, manager: "QueueManager"):
        self.d = d
        self.manager = manager
        self._lock = threading.Lock()

    def reload(self) -> list[str]:
        from log import reopen_logs, setup_logging

        d = self.d
        with self._lock:
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
            from upqpause import register_types
            register_types(self.manager.db, config.enabled_jobs())
            changes = self.manager.reconfigure(config, classes)
            try:
                self.manager.db.nodes.set_jobs(self.manager.node, self.manager.concurrent())
            except DatabaseUnavailable as exc:
                d.log.warning("reload: could not record this node's job types for `why`: %s", exc)
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
    # retention and the crash-loop cap read these anew: they apply at reload
    live = {k: getattr(new.server, k) for k in ("keep_done", "keep_failed", "keep_cancelled", "max_interrupted")}
    if dataclasses.replace(old.server, **live) != new.server:
        out.append("[server]")
    if old.mail != new.mail or old.notify != new.notify:
        out.append("[mail] / [notify]")
    if old.http != new.http:
        out.append("[http]")
    return out


def _safe_url(url: str) -> str:
    """The url without its password, for messages."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "<unparsable url>"


def serve(d: Daemon, r: Running, sigs: Signals) -> int:
    """Serve until SIGTERM/SIGINT (SIGHUP reloads); then stop accepting, give running jobs the grace."""
    signals, wake_r = sigs.pending, sigs.wake_r
    for server in r.servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                         name=f"server-{server.socket.family.name}", daemon=True).start()
    if r.http is not None:
        r.http.start()
    d.log.info("upq %s serving on %s, jobs: %s", VERSION,
               " and ".join([d.config.paths.socket] + ([d.config.server.listen] if d.config.server.listen else [])),
               ", ".join(sorted(r.manager.types)) or "none")
    sd_notify("READY=1")
    while True:
        select.select([wake_r], [], [], 5.0)
        if select.select([wake_r], [], [], 0)[0]:
            os.read(wake_r, 4096)
        while signals and signals[0] == signal.SIGHUP:
            signals.pop(0)
            try:
                r.reloader.reload()
            except ConfigError:
                pass
        if signals:
            break
    sd_notify("STOPPING=1")
    d.log.info("signal %s: stopping (grace %ss); send it again to exit at once",
               signal.Signals(signals[0]).name, d.config.server.shutdown_grace)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: exit_now(d.log, pidfile=d.pidfile))
    for server in r.servers:
        server.shutdown()
        server.server_close()
    if r.http is not None:
        r.http.stop()
    unlink(d.config.paths.socket)
    for worker in (r.scheduler, r.retention, r.pauses):
        if worker is not None:
            worker.stop()
    all_ended = r.manager.stop(d.config.server.shutdown_grace)
    r.notifier.stop()       # sends what is pending for a few seconds, logs the rest as lost
    if not all_ended:
        d.log.warning("jobs still running after %ss; they will run again at the next start",
                      d.config.server.shutdown_grace)
    r.keeper.stop()
    r.db.close()            # the writer commits every outcome queued so far, then stops
    r.name_lock.close()     # only now may another daemon take this node's name
    d.log.info("stopped")
    # a job may have left threads behind (non-daemon ones too): do not wait for them
    exit_now(d.log, 0, pidfile=d.pidfile, why="")
    return 0


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
            d.pidfile = detach(d.listeners + ([d.http_listener] if d.http_listener else []), log, args.pidfile)
    except StartupError as exc:
        for sock in d.listeners:
            sock.close()
        if d.listeners:
            unlink(config.paths.socket)
        print(f"upq: cannot start: {exc}", file=sys.stderr)
        return 1
    sigs = Signals().install()      # before start: a SIGHUP meanwhile must not kill us
    try:
        running = start(d)
    except Exception as exc:  # noqa: BLE001 - after detaching, the log is the only witness
        log.error("cannot start: %s", exc)
        print(f"upq: cannot start: {exc}", file=sys.stderr)
        return 1
    return serve(d, running, sigs)


if __name__ == "__main__":
    sys.exit(main())
