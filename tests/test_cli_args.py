"""upq-cli.py on its own: request lines, socket choice, exit codes; no daemon needed.

Where a server is needed, a tiny echo peer stands in for upq: it answers each line
`ACK echo <line>` (or `ERR echo <line>` for lines starting with "bad").
"""
from __future__ import annotations

import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CLI


import upqcli as cli


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A folder with a short path: Unix socket paths are limited to 107 bytes."""
    path = tempfile.mkdtemp(prefix="upqcli", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_cli(*args: str, stdin: str = "", cwd: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run upq-cli.py as a user would, with no UPQ_* variables unless given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("UPQ_")}
    return subprocess.run([sys.executable, str(CLI), *args], input=stdin, text=True,
                          capture_output=True, cwd=cwd or "/", env={**base, **(env or {})},
                          timeout=60)


# --- request lines -------------------------------------------------------------

def test_single_argument_is_sent_as_written():
    assert cli.build_request(['hello name:x file:"a b.png"']) == 'hello name:x file:"a b.png"'


def test_several_arguments_join_with_spaces():
    assert cli.build_request(["hello", "name:x"]) == "hello name:x"


def test_one_line_and_split_arguments_send_the_same_request():
    assert cli.build_request(["hello name:x"]) == cli.build_request(["hello", "name:x"])


def test_value_with_space_is_double_quoted():
    assert cli.build_request(["hello", "file:a b.png"]) == 'hello file:"a b.png"'


def test_equals_separator_quotes_the_value_too():
    assert cli.build_request(["hello", "file=a b.png"]) == 'hello file="a b.png"'


def test_value_is_everything_after_the_first_separator():
    assert cli.quote_word("url:http://h:80/a b") == 'url:"http://h:80/a b"'
    assert cli.quote_word("k=v:w x") == 'k="v:w x"'


def test_quotes_and_backslashes_in_a_value_are_escaped():
    assert cli.quote_word('msg:say "hi"') == r'msg:"say \"hi\""'
    assert cli.quote_word("path:C:\\temp") == r'path:"C:\\temp"'


def test_bare_word_with_whitespace_is_quoted_whole():
    assert cli.build_request(["hello", "two words"]) == 'hello "two words"'


def test_key_with_whitespace_quotes_the_whole_word():
    assert cli.quote_word("a key:v") == '"a key:v"'


def test_plain_words_are_left_alone():
    assert cli.build_request(["status", "42"]) == "status 42"
    assert cli.quote_word("name:") == "name:"


def test_newline_in_request_is_a_usage_error(short_dir):
    result = run_cli("-s", os.path.join(short_dir, "x.sock"), "hello", "name:a\nb")
    assert result.returncode == 2
    assert "one line" in result.stderr


# --- which socket --------------------------------------------------------------

def write_config(folder: str, socket_value: str) -> str:
    """A minimal upq.cfg in folder with [paths] socket set; returns its path."""
    path = os.path.join(folder, "upq.cfg")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"[paths]\nsocket = {socket_value}   ; inline comment\njobs_dir = ./jobs\n")
    return path


def test_socket_option_comes_first(short_dir):
    config = write_config(short_dir, "/from/config.sock")
    env = {"UPQ_SOCKET": "/from/env.sock"}
    assert cli.resolve_socket("/from/option.sock", config, env) == "/from/option.sock"


def test_environment_comes_before_config(short_dir):
    config = write_config(short_dir, "/from/config.sock")
    assert cli.resolve_socket(None, config, {"UPQ_SOCKET": "/from/env.sock"}) == "/from/env.sock"


def test_config_socket_is_used_last(short_dir):
    config = write_config(short_dir, "/from/config.sock")
    assert cli.resolve_socket(None, config, {}) == "/from/config.sock"


def test_dot_slash_in_config_is_relative_to_its_folder(short_dir):
    config = write_config(short_dir, "./var/upq.sock")
    assert cli.resolve_socket(None, config, {}) == os.path.join(short_dir, "var", "upq.sock")


def test_default_config_is_upq_cfg_in_current_folder(short_dir, monkeypatch):
    write_config(short_dir, "./var/upq.sock")
    monkeypatch.chdir(short_dir)
    assert cli.resolve_socket(None, None, {}) == "./var/upq.sock"


def test_no_socket_anywhere_says_what_to_do(short_dir, monkeypatch):
    monkeypatch.chdir(short_dir)
    with pytest.raises(cli.CliError, match="-s SOCKET"):
        cli.resolve_socket(None, None, {})


def test_config_without_socket_names_the_file(short_dir):
    config = os.path.join(short_dir, "upq.cfg")
    Path(config).write_text("[paths]\njobs_dir = ./jobs\n")
    with pytest.raises(cli.CliError, match=r"upq\.cfg: \[paths\] socket"):
        cli.resolve_socket(None, config, {})


def test_missing_socket_exits_2_and_suggests_upq_is_down(short_dir):
    path = os.path.join(short_dir, "upq.sock")
    result = run_cli("-s", path, "ping")
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"cannot connect to {path}: is upq running?" in result.stderr


def test_missing_socket_from_config_shows_the_configured_path(short_dir):
    write_config(short_dir, "./var/upq.sock")
    result = run_cli("hello", "name:x", cwd=short_dir)
    assert result.returncode == 2
    assert "cannot connect to ./var/upq.sock: is upq running? (No such file" in result.stderr


def test_tcp_without_token_is_a_usage_error():
    result = run_cli("-H", "127.0.0.1:9", "ping")
    assert result.returncode == 2
    assert "UPQ_TOKEN" in result.stderr


def test_wait_and_stdin_do_not_mix(short_dir):
    result = run_cli("-s", os.path.join(short_dir, "x.sock"), "--wait", "-")
    assert result.returncode == 2


# --- against a stand-in server -------------------------------------------------

def echo_answer(line: str) -> str | None:
    """The stand-in's rules: a few canned answers, else echo; None closes the connection."""
    if line == "close":
        return None
    if line == "hello name:x":
        return "ACK 7 queued"
    if line.startswith("wait 7"):
        return 'ACK {"jobid": 7, "state": "done", "params": {"name": "x"}}'
    if line == "status 8":
        return 'ERR {"jobid": 8, "state": "failed"}'
    verdict = "ERR" if line.startswith("bad") else "ACK"
    return f"{verdict} echo {line}"


class EchoHandler(socketserver.StreamRequestHandler):
    """Answers every request line in order, as upq would; TCP peers must auth first."""
    def handle(self) -> None:
        authed = isinstance(self.server, socketserver.UnixStreamServer)
        for raw in self.rfile:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not authed:
                if line != "auth s3cret":
                    self.wfile.write(b"ERR auth required\n")
                    return
                authed = True
                self.wfile.write(b"ACK\n")
                continue
            answer = echo_answer(line)
            if answer is None:
                return
            self.wfile.write(answer.encode() + b"\n")


class ThreadingUnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class ThreadingTCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True


@pytest.fixture
def echo_socket(short_dir) -> Iterator[str]:
    """Path of a Unix socket served by the echo stand-in."""
    path = os.path.join(short_dir, "echo.sock")
    with ThreadingUnixServer(path, EchoHandler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        yield path
        server.shutdown()


@pytest.fixture
def echo_tcp() -> Iterator[str]:
    """host:port of a TCP echo stand-in that wants `auth s3cret` first."""
    with ThreadingTCPServer(("127.0.0.1", 0), EchoHandler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        yield f"127.0.0.1:{server.server_address[1]}"
        server.shutdown()


def test_answer_is_printed_and_ack_exits_0(echo_socket):
    result = run_cli("-s", echo_socket, "ping")
    assert (result.returncode, result.stdout) == (0, "ACK echo ping\n")


def test_split_arguments_arrive_quoted(echo_socket):
    result = run_cli("-s", echo_socket, "hi", "file:a b.png")
    assert result.stdout == 'ACK echo hi file:"a b.png"\n'


def test_err_answer_exits_1(echo_socket):
    result = run_cli("-s", echo_socket, "bad", "thing")
    assert (result.returncode, result.stdout) == (1, "ERR echo bad thing\n")


def test_environment_socket_is_used(echo_socket):
    result = run_cli("ping", env={"UPQ_SOCKET": echo_socket})
    assert result.returncode == 0


def test_stdin_lines_are_pipelined_and_answered_in_order(echo_socket):
    lines = [f"job n:{i}" for i in range(1000)]
    result = run_cli("-s", echo_socket, "-", stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"ACK echo {line}" for line in lines]


def test_one_err_among_pipelined_lines_exits_1(echo_socket):
    result = run_cli("-s", echo_socket, "-", stdin="ping\nbad one\nping\n")
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["ACK echo ping", "ERR echo bad one", "ACK echo ping"]


def test_empty_stdin_lines_are_sent_too(echo_socket):
    result = run_cli("-s", echo_socket, "-", stdin="a\n\nb")
    assert result.stdout.splitlines() == ["ACK echo a", "ACK echo ", "ACK echo b"]


def test_connection_closed_before_answer_exits_2(echo_socket):
    result = run_cli("-s", echo_socket, "close")
    assert result.returncode == 2
    assert "closed the connection before answering" in result.stderr


def test_wait_submits_then_prints_the_finished_job(echo_socket):
    result = run_cli("-s", echo_socket, "--wait", "hello", "name:x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('ACK {"jobid": 7, "state": "done"')


def test_wait_without_job_id_is_a_usage_error(echo_socket):
    result = run_cli("-s", echo_socket, "--wait", "ping")
    assert result.returncode == 2
    assert "no job id" in result.stderr


def test_json_prints_the_payload_indented(echo_socket):
    result = run_cli("-s", echo_socket, "--json", "--wait", "hello name:x")
    assert result.returncode == 0
    assert result.stdout.startswith('{\n  "jobid": 7,\n  "state": "done"')


def test_json_of_an_err_answer_exits_1(echo_socket):
    result = run_cli("-s", echo_socket, "--json", "status", "8")
    assert result.returncode == 1
    assert '"state": "failed"' in result.stdout


def test_json_leaves_plain_answers_alone(echo_socket):
    result = run_cli("-s", echo_socket, "--json", "ping")
    assert result.stdout == "ACK echo ping\n"


def test_tcp_sends_the_token_first(echo_tcp):
    result = run_cli("-H", echo_tcp, "ping", env={"UPQ_TOKEN": "s3cret"})
    assert (result.returncode, result.stdout) == (0, "ACK echo ping\n")


def test_tcp_wrong_token_exits_2_with_the_answer(echo_tcp):
    result = run_cli("-H", echo_tcp, "ping", env={"UPQ_TOKEN": "wrong"})
    assert result.returncode == 2
    assert "ERR auth required" in result.stderr
