"""log.setup_logging / reopen_logs: where upq's log goes, and that it survives rotation and reload."""
import logging
import logging.handlers
import re
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pytest

import log
from parseconfig import ConfigError, LoggingConfig

LINE_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) (\S+) (upq[\w.]*): (.*)$")


@pytest.fixture(autouse=True)
def restore_upq_logger():
    """Each test starts and ends with the "upq" logger as it found it."""
    logger = logging.getLogger("upq")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers = []
    yield
    for handler in logger.handlers:
        handler.close()
    logger.handlers, logger.level, logger.propagate = saved


@pytest.fixture
def short_dir():
    """Unix socket paths must stay under 107 bytes; tmp_path can be longer."""
    path = tempfile.mkdtemp(dir="/tmp", prefix="upqlog")
    yield Path(path)
    shutil.rmtree(path)


def flush(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        handler.flush()


def test_dash_logs_to_stderr_in_the_documented_format(capsys):
    logger = log.setup_logging(LoggingConfig(loglevel="info", logfile="-"))
    assert logger is logging.getLogger("upq")
    assert logger.propagate is False
    logger.info("hello there")
    logger.getChild("db").warning("careful")
    logger.debug("not shown at info")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert LINE_RE.match(lines[0]).groups() == ("INFO", "MainThread", "upq", "hello there")
    assert LINE_RE.match(lines[1]).groups() == ("WARNING", "MainThread", "upq.db", "careful")


def test_root_logger_is_left_alone(capsys):
    root = logging.getLogger()
    before = list(root.handlers)
    log.setup_logging(LoggingConfig(logfile="-"))
    assert root.handlers == before


@pytest.mark.parametrize("level, shown", [
    ("debug", ["DEBUG", "INFO", "WARNING", "ERROR"]),
    ("info", ["INFO", "WARNING", "ERROR"]),
    ("warning", ["WARNING", "ERROR"]),
    ("error", ["ERROR"]),
])
def test_loglevel_filters_records(tmp_path, level, shown):
    logfile = tmp_path / "upq.log"
    logger = log.setup_logging(LoggingConfig(loglevel=level, logfile=str(logfile)))
    for name in ("debug", "info", "warning", "error"):
        getattr(logger, name)("m")
    flush(logger)
    assert [LINE_RE.match(line).group(1) for line in logfile.read_text().splitlines()] == shown


def test_file_log_creates_missing_folders_and_names_the_thread(tmp_path):
    logfile = tmp_path / "var" / "log" / "upq.log"
    logger = log.setup_logging(LoggingConfig(logfile=str(logfile)))
    worker = threading.Thread(target=lambda: logger.info("from a worker"), name="hello-1")
    worker.start()
    worker.join()
    flush(logger)
    assert isinstance(logger.handlers[0], logging.handlers.WatchedFileHandler)
    match = LINE_RE.match(logfile.read_text().strip())
    assert match.groups() == ("INFO", "hello-1", "upq", "from a worker")


def test_calling_again_replaces_the_previous_handler(tmp_path):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    logger = log.setup_logging(LoggingConfig(logfile=str(first)))
    old_handler = logger.handlers[0]
    log.setup_logging(LoggingConfig(logfile=str(second)))
    logger.info("only in second")
    flush(logger)
    assert len(logger.handlers) == 1
    assert old_handler.stream is None      # closed
    assert first.read_text() == ""
    assert "only in second" in second.read_text()


def test_moved_log_file_is_reopened_by_itself(tmp_path):
    logfile = tmp_path / "upq.log"
    logger = log.setup_logging(LoggingConfig(logfile=str(logfile)))
    logger.info("before rotation")
    logfile.rename(tmp_path / "upq.log.1")
    logger.info("after rotation")
    flush(logger)
    assert "before rotation" in (tmp_path / "upq.log.1").read_text()
    assert "after rotation" in logfile.read_text()
    assert "before rotation" not in logfile.read_text()


def test_reopen_logs_starts_a_fresh_file_after_it_was_moved(tmp_path):
    logfile = tmp_path / "upq.log"
    logger = log.setup_logging(LoggingConfig(logfile=str(logfile)))
    logger.info("old")
    flush(logger)
    logfile.rename(tmp_path / "upq.log.1")
    assert log.reopen_logs(logger) == []
    assert logfile.exists()
    logger.info("new")
    flush(logger)
    assert "new" in logfile.read_text() and "old" not in logfile.read_text()


def test_reopen_logs_reports_a_file_that_cannot_be_reopened(tmp_path):
    folder = tmp_path / "logs"
    logger = log.setup_logging(LoggingConfig(logfile=str(folder / "upq.log")))
    shutil.rmtree(folder)
    folder.write_text("now a file, not a folder")
    problems = log.reopen_logs(logger)
    assert len(problems) == 1
    assert problems[0].startswith(f"cannot reopen log file {folder}/upq.log: ")


def test_reopen_logs_ignores_stderr_handler(capsys):
    logger = log.setup_logging(LoggingConfig(logfile="-"))
    assert log.reopen_logs(logger) == []
    logger.info("still here")
    assert "still here" in capsys.readouterr().err


def test_unwritable_logfile_is_a_config_error_naming_section_and_key(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:
        log.setup_logging(LoggingConfig(logfile=str(blocker / "upq.log")), source="upq.cfg")
    assert info.value.problems == [
        f"upq.cfg: [logging] logfile: cannot open {blocker}/upq.log: Not a directory"]


def test_logfile_that_is_a_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        log.setup_logging(LoggingConfig(logfile=str(tmp_path)))
    assert info.value.problems == [f"[logging] logfile: cannot open {tmp_path}: Is a directory"]


def test_failed_setup_keeps_the_previous_handler(tmp_path):
    good = tmp_path / "good.log"
    logger = log.setup_logging(LoggingConfig(logfile=str(good)))
    with pytest.raises(ConfigError):
        log.setup_logging(LoggingConfig(logfile=str(tmp_path)))
    logger.info("still logging")
    flush(logger)
    assert "still logging" in good.read_text()


def test_syslog_sends_records_with_the_upq_ident(short_dir, monkeypatch):
    address = str(short_dir / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(5)
        monkeypatch.setattr(log, "SYSLOG_ADDRESS", address)
        logger = log.setup_logging(LoggingConfig(logfile="syslog"))
        assert isinstance(logger.handlers[0], logging.handlers.SysLogHandler)
        logger.warning("disk nearly full")
        record = server.recv(4096).decode()
    assert re.fullmatch(r"<12>upq: WARNING MainThread upq: disk nearly full\x00", record), record


def test_missing_syslog_socket_is_a_config_error(short_dir, monkeypatch):
    address = str(short_dir / "no-such-log")
    monkeypatch.setattr(log, "SYSLOG_ADDRESS", address)
    with pytest.raises(ConfigError) as info:
        log.setup_logging(LoggingConfig(logfile="syslog"), source="/etc/upq.cfg")
    assert info.value.problems == [
        f"/etc/upq.cfg: [logging] logfile: cannot open {address}: No such file or directory"]
