#!/usr/bin/env python3
"""upq, the job dispatcher daemon: wires config, database, queues and socket together."""
from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
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
    log: logging.Logger
    db: Any
    manager: Any
    server: Any


def build(config: Config, classes: dict[str, type[UpqJob]], log: logging.Logger) -> Daemon:
    """Open the database, recover this node's jobs, start workers and bind the socket."""
    from sqlalchemy.exc import SQLAlchemyError

    from upqdb import Database, DatabaseUnavailable
    from upqqueuemngr import QueueManager
    from upqserver import Protocol, UpqUnixServer, socket_in_use

    node = default_node_name(config)
    path = config.paths.socket
    if os.path.exists(path):
        if socket_in_use(path):
            raise StartupError(f"another upq is already serving on {path}; not starting a second one")
        log.info("removing stale socket file %s", path)
        os.unlink(path)
    db = Database(config.db.url, log, config.db.durability)
    try:
        db.create_schema()
    except (SQLAlchemyError, DatabaseUnavailable) as exc:
        log.error("cannot open the database %s: %s", config.db.url, exc)
        raise StartupError(f"cannot open the database [db] url = {_safe_url(config.db.url)}: "
                           f"{getattr(exc, 'orig', None) or exc}") from exc
    db.start()
    recovered = db.requeue_orphans(node)
    if recovered:
        log.warning("re-queued %d job(s) that this node left running", recovered)
    manager = QueueManager(config, db, classes, log, node)
    node_info = {"node": node, "host": socket.gethostname(), "pid": os.getpid(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        server = UpqUnixServer(path, Protocol(manager, node_info, log),
                               max_connections=config.server.max_connections,
                               idle_timeout=config.server.idle_timeout,
                               socket_mode=config.server.socket_mode, logger=log)
    except OSError as exc:
        db.close()
        raise StartupError(f"cannot listen on [paths] socket = {path}: {exc.strerror or exc}") from exc
    manager.start()
    return Daemon(config, log, db, manager, server)


def _safe_url(url: str) -> str:
    """The url without its password, for messages."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "<unparsable url>"


def serve(d: Daemon) -> int:
    """Serve until SIGTERM/SIGINT; then stop accepting, give running jobs the grace period."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signals: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signals.append(signum))
    t = threading.Thread(target=d.server.serve_forever, kwargs={"poll_interval": 0.5},
                         name="socket-server", daemon=True)
    t.start()
    d.log.info("upq %s serving on %s, jobs: %s", VERSION, d.config.paths.socket,
               ", ".join(sorted(d.manager.types)) or "none")
    while not signals:
        select.select([wake_r], [], [], 5.0)
        os.read(wake_r, 4096) if select.select([wake_r], [], [], 0)[0] else None
    d.log.info("signal %s: stopping (grace %ss); send it again to exit at once",
               signal.Signals(signals[0]).name, d.config.server.shutdown_grace)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: _exit_now(d.log))
    d.server.shutdown()
    d.server.server_close()
    _unlink(d.config.paths.socket)
    if not d.manager.stop(d.config.server.shutdown_grace):
        d.log.warning("jobs still running after %ss; they will run again at the next start",
                      d.config.server.shutdown_grace)
        _exit_now(d.log, 0)
    d.db.close()
    d.log.info("stopped")
    logging.shutdown()
    return 0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _exit_now(log: logging.Logger, code: int = 0) -> None:
    """Python cannot stop running threads: flush the log and leave."""
    log.warning("exiting now")
    logging.shutdown()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"upq: bad config:\n{exc}", file=sys.stderr)
        return 1
    classes, problems = load_jobs(config)
    if args.check_config:
        for line in problems:
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
        log = setup_logging(config.logging)
    except ConfigError as exc:
        print(f"upq: cannot start:\n{exc}", file=sys.stderr)
        return 1
    try:
        daemon = build(config, classes, log)
    except StartupError as exc:
        print(f"upq: cannot start: {exc}", file=sys.stderr)
        return 1
    return serve(daemon)


if __name__ == "__main__":
    sys.exit(main())
