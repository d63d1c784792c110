"""Set up the "upq" logger from [logging]; callable again on reload, reopenable on SIGHUP."""
from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys

from parseconfig import ConfigError, LoggingConfig

LOGGER_NAME = "upq"
FILE_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
# syslog stamps time and host itself.
SYSLOG_FORMAT = "%(levelname)s %(threadName)s %(name)s: %(message)s"
SYSLOG_IDENT = "upq: "
SYSLOG_ADDRESS = "/dev/log"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
          "warning": logging.WARNING, "error": logging.ERROR}


def setup_logging(cfg: LoggingConfig, source: str = "") -> logging.Logger:
    """Point the "upq" logger at cfg.logfile, replacing what an earlier call installed.

    source (the config file's path) prefixes the error line, if given. The new
    handler is built before the old one is removed, so a failed reload keeps logging.
    """
    handler = _make_handler(cfg.logfile, source)
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(LEVELS.get(cfg.loglevel, logging.INFO))
    logger.propagate = False    # upq's records go to upq's log only, not to the root logger
    return logger


def reopen_logs(logger: logging.Logger) -> list[str]:
    """Close and reopen log files (SIGHUP after logrotate); returns problems, [] if none."""
    problems = []
    for handler in logger.handlers:
        if not isinstance(handler, logging.FileHandler):
            continue
        handler.acquire()
        try:
            if handler.stream is not None:
                handler.stream.close()
            handler.stream = None   # if reopening fails, FileHandler.emit retries later
            handler.stream = handler._open()
        except OSError as exc:
            problems.append(f"cannot reopen log file {handler.baseFilename}: {exc.strerror or exc}")
        finally:
            handler.release()
    return problems


def _make_handler(logfile: str, source: str) -> logging.Handler:
    """The handler for '-', 'syslog' or a path; failure is a config problem, not a traceback."""
    handler: logging.Handler
    try:
        if logfile == "-":
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(FILE_FORMAT))
        elif logfile == "syslog":
            _probe_unix_socket(SYSLOG_ADDRESS)
            handler = logging.handlers.SysLogHandler(address=SYSLOG_ADDRESS)
            handler.ident = SYSLOG_IDENT
            handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
        else:
            folder = os.path.dirname(os.path.abspath(logfile))
            if not os.path.lexists(folder):    # else opening the file says what is wrong with it
                os.makedirs(folder, exist_ok=True)
            # Watched: reopens by itself when logrotate moves the file away.
            handler = logging.handlers.WatchedFileHandler(logfile, encoding="utf-8")
            handler.setFormatter(logging.Formatter(FILE_FORMAT))
    except OSError as exc:
        prefix = f"{source}: " if source else ""
        target = SYSLOG_ADDRESS if logfile == "syslog" else logfile
        raise ConfigError([f"{prefix}[logging] logfile: cannot open {target}: "
                           f"{exc.strerror or exc}"]) from exc
    return handler


def _probe_unix_socket(address: str) -> None:
    """Raise the OSError SysLogHandler would swallow, so a missing /dev/log is seen at start."""
    for socktype in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, socktype) as probe:
            try:
                probe.connect(address)
                return
            except OSError:
                if socktype == socket.SOCK_STREAM:
                    raise
