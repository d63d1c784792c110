"""upqcli: send one request (or many, from stdin) to a running upq and print the answers.

Standard library only, so any python3 runs it. Exit status: 0 when every answer
is ACK, 1 when any is ERR (or a waited-for job did not end done), 2 for usage or
connection errors.
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import queue
import socket
import sys
import threading
from typing import BinaryIO, Iterable, Mapping, NoReturn

from cfgpath import DEFAULT_CONFIG_HELP, SYSTEM_CONFIG, default_config
from upqclilog import show_log

PROG = "upq-cli"
CONNECT_TIMEOUT = 5.0       # seconds; a daemon that is up accepts at once
WAIT_MARGIN = 15.0          # seconds past --timeout before we stop listening for `wait`
NEEDS_QUOTES = frozenset('"\\')

EXIT_ACK, EXIT_ERR, EXIT_USAGE = 0, 1, 2

EPILOG = """\
examples:
  upq-cli.py ping                          is upq up?  -> ACK pong
  upq-cli.py hello name:you                submit a job -> ACK <jobid> <msg>
  upq-cli.py "hello name:you"              the same request, written as one line
  upq-cli.py hello 'file:a b.png'          values with spaces are quoted for you
  upq-cli.py --wait sleep seconds:3        submit, wait for the job to end, print it
  upq-cli.py --json status 42              only the job's JSON, indented (for jq)
  upq-cli.py --json help                   the commands and job types upq offers
  printf 'ping\\nstats\\n' | upq-cli.py -   one request per input line, pipelined

the socket: -s, else $UPQ_SOCKET, else [paths] socket of -c CONFIG, else of ./upq.cfg
if it exists, else of /etc/upq/upq.cfg ("./" there: relative to that file's folder).
-H HOST:PORT talks TCP to upq's [server] listen address and sends
"auth $UPQ_TOKEN" first.

exit status: 0 every answer was ACK, 1 some answer was ERR (or the waited job
failed), 2 bad usage or no connection (the message says what to do).
"""


class CliError(Exception):
    """A usage or connection problem: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    """Run the client with argv (default sys.argv[1:]) and return the exit status."""
    parser = build_parser()
    opts = parser.parse_intermixed_args(argv)
    try:
        return run(opts, os.environ)
    except CliError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Our stdout was closed (e.g. `| head`): nothing more to say to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    """The command line, with a --help a newcomer can follow."""
    parser = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) or PROG,
        description="Talk to a running upq: submit jobs, ask their status, wait for them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-s", "--socket", metavar="SOCKET",
                       help="path of upq's Unix socket")
    where.add_argument("-c", "--config", metavar="CONFIG",
                       help=f"read the socket path from this upq.cfg (default: {DEFAULT_CONFIG_HELP})")
    where.add_argument("-H", "--host", metavar="HOST:PORT",
                       help="talk TCP to upq's [server] listen address; needs $UPQ_TOKEN")
    parser.add_argument("--wait", action="store_true",
                        help="after submitting a job, wait until it ends and print its JSON; "
                             "exit 0 only if it ended done")
    parser.add_argument("--json", action="store_true",
                        help="print only the JSON after ACK/ERR, indented")
    parser.add_argument("--raw", action="store_true", help="print the protocol line even on a terminal")
    parser.add_argument("-f", "--follow", action="store_true", help="log: follow a running job until it ends")
    parser.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                        help="give up waiting for an answer after SECONDS (with --wait: "
                             "how long the job may take); default: wait as long as it takes")
    parser.add_argument("command", metavar="COMMAND",
                        help='a built-in command (ping, status, wait, list, help, ...) '
                             'or a job name; "-" reads request lines from standard input')
    parser.add_argument("args", nargs="*", metavar="ARG",
                        help="the command's arguments, e.g. name:you or 42; "
                             "put -- before any that starts with a dash")
    return parser


def positive_seconds(text: str) -> float:
    """argparse type for --timeout: a number of seconds above zero."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above zero: {text!r}")
    return seconds


def run(opts: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Connect as the options say, send the request(s) and print the answers."""
    pipelined = opts.command == "-" and not opts.args
    if pipelined and opts.wait:
        raise CliError('--wait needs one job submission, not "-" (stdin)')
    line = "" if pipelined else build_request([opts.command, *opts.args])
    if not pipelined:
        check_request(line)
    conn = connect(opts, environ)
    try:
        if opts.command == "top" and not opts.args:
            return __import__("upqtop").top(conn.ask, CliError)
        if pipelined:
            return send_pipelined(conn, sys.stdin.buffer, opts.json)
        if opts.wait:
            return submit_and_wait(conn, line, opts)
        if opts.command == "log" and not opts.json:
            return show_log(conn.ask, line, opts.follow)
        return print_answer(conn.ask(line), opts.json, None if opts.raw else opts.command)
    finally:
        conn.close()


# --- building the request line -------------------------------------------------

def build_request(words: list[str]) -> str:
    """Join the command-line words into one request line, quoting where the server needs it."""
    if len(words) == 1:
        return words[0]     # the user already wrote the whole line, quotes and all
    return " ".join(quote_word(word) for word in words)


def quote_word(word: str) -> str:
    """Quote one argument: the value of key:value / key=value, else the whole word."""
    if not needs_quotes(word):
        return word
    cut = separator_index(word)
    if cut > 0 and not needs_quotes(word[:cut]):
        return word[:cut + 1] + quoted(word[cut + 1:])
    return quoted(word)


def needs_quotes(text: str) -> bool:
    """True when text holds whitespace, a double quote or a backslash."""
    return any(ch.isspace() or ch in NEEDS_QUOTES for ch in text)


def separator_index(word: str) -> int:
    """Index of the first ':' or '=' in word (the key/value separator), or -1."""
    found = [i for i in (word.find(":"), word.find("=")) if i >= 0]
    return min(found, default=-1)


def quoted(text: str) -> str:
    """text in double quotes, with " and \\ escaped by a backslash."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_request(line: str) -> None:
    """Refuse a request the protocol cannot frame (it is one line)."""
    if "\n" in line or "\r" in line:
        raise CliError("a request is one line: remove the newline from the arguments "
                       '(use "-" to send several lines from standard input)')


# --- finding upq ---------------------------------------------------------------

def resolve_socket(socket_opt: str | None, config_opt: str | None,
                   environ: Mapping[str, str]) -> str:
    """The Unix socket path: -s, else $UPQ_SOCKET, else [paths] socket of -c, ./upq.cfg or /etc/upq/upq.cfg."""
    if socket_opt:
        return socket_opt
    if environ.get("UPQ_SOCKET"):
        return environ["UPQ_SOCKET"]
    if config_opt:
        return socket_from_config(config_opt)
    if os.path.exists(config := default_config()):
        return socket_from_config(config)
    raise CliError("which upq? no socket given: use -s SOCKET, set $UPQ_SOCKET, "
                   f"or -c CONFIG (there is no ./upq.cfg here, nor {SYSTEM_CONFIG})")


def socket_from_config(path: str) -> str:
    """[paths] socket of the config file at path; a leading ./ is relative to its folder."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise CliError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise CliError(f"cannot parse config {path}: {one_line(str(exc))}") from None
    value = parser.get("paths", "socket", fallback="").strip()
    if not value:
        raise CliError(f"{path}: [paths] socket is not set; use -s SOCKET")
    if value.startswith("./"):
        return os.path.join(os.path.dirname(path) or ".", value[2:])
    return value


def parse_host_port(text: str) -> tuple[str, int]:
    """Split HOST:PORT (or [IPv6]:PORT) for -H."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"-H wants HOST:PORT, e.g. 127.0.0.1:7777 (got {text!r})")
    return host, int(port)


def connect(opts: argparse.Namespace, environ: Mapping[str, str]) -> "Connection":
    """Open the connection the options name; TCP connections are authenticated first."""
    if opts.host:
        token = environ.get("UPQ_TOKEN", "")
        if not token:
            raise CliError("-H needs the server's token: set $UPQ_TOKEN to [server] token")
        conn = Connection(open_tcp(opts.host), opts.host, answer_timeout(opts))
        authenticate(conn, token)
        return conn
    path = resolve_socket(opts.socket, opts.config, environ)
    return Connection(open_unix(path), path, answer_timeout(opts))


def answer_timeout(opts: argparse.Namespace) -> float | None:
    """How long to wait for one answer: None (forever) unless --timeout says otherwise."""
    if opts.timeout is None:
        return None
    return opts.timeout + WAIT_MARGIN if opts.wait else opts.timeout


def open_unix(path: str) -> socket.socket:
    """Connect to upq's Unix socket, failing fast with a hint when it is not there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(path)
    except PermissionError as exc:
        sock.close()
        raise CliError(f"cannot connect to {path}: you may not use this socket; run as "
                       f"upq's user or a member of its group ({exc.strerror})") from None
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CliError(f"cannot connect to {path}: is upq running? ({reason})") from None
    return sock


def open_tcp(address: str) -> socket.socket:
    """Connect to upq's TCP listener, failing fast with a hint."""
    host, port = parse_host_port(address)
    try:
        return socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CliError(f"cannot connect to {address}: is upq listening there "
                       f"([server] listen)? ({reason})") from None


def authenticate(conn: "Connection", token: str) -> None:
    """Send `auth <token>`; anything but ACK ends the run."""
    if needs_quotes(token):
        raise CliError("$UPQ_TOKEN must not hold whitespace, quotes or backslashes")
    answer = conn.ask(f"auth {token}")
    if not is_ack(answer):
        raise CliError(f"{conn.name} refused the token: {answer} "
                       "(check $UPQ_TOKEN against [server] token)")


# --- talking -------------------------------------------------------------------

class Connection:
    """One connection to upq: send request lines, read answer lines in order."""

    def __init__(self, sock: socket.socket, name: str, timeout: float | None):
        self.sock = sock
        self.name = name
        sock.settimeout(timeout)
        self.reader = sock.makefile("rb")

    def send(self, line: str | bytes) -> None:
        """Send one request line (the newline is added here)."""
        data = line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")
        try:
            self.sock.sendall(data + b"\n")
        except OSError as exc:
            self.lost(exc)

    def receive(self) -> str:
        """Read the next answer line, without its newline."""
        try:
            raw = self.reader.readline()
        except TimeoutError:
            raise CliError(f"no answer from {self.name} within "
                           f"{self.sock.gettimeout():g} s; giving up") from None
        except OSError as exc:
            self.lost(exc)
        if not raw.endswith(b"\n"):
            self.lost(None)
        return raw.rstrip(b"\r\n").decode("utf-8", errors="replace")

    def ask(self, line: str) -> str:
        """Send one request and return its answer."""
        self.send(line)
        return self.receive()

    def lost(self, exc: OSError | None) -> NoReturn:
        """The connection ended before the answer came: say so and stop."""
        reason = f" ({exc.strerror or exc})" if exc else ""
        raise CliError(f"{self.name} closed the connection before answering{reason}; "
                       "is upq still running? its log says why")

    def close(self) -> None:
        """Close the reader and the socket."""
        self.reader.close()
        self.sock.close()


def submit_and_wait(conn: Connection, line: str, opts: argparse.Namespace) -> int:
    """Submit a job, then `wait` for it on the same connection and print the job."""
    answer = conn.ask(line)
    if not is_ack(answer):
        return print_answer(answer, opts.json)
    jobid = job_id_of(answer)
    request = f"wait {jobid}"
    if opts.timeout is not None:
        request += f" timeout:{opts.timeout:g}"
    return print_answer(conn.ask(request), opts.json)


def job_id_of(answer: str) -> int:
    """The jobid in `ACK <jobid> [msg]`; a usage error when there is none."""
    words = answer.split(maxsplit=2)
    if len(words) < 2 or not words[1].isdigit() or int(words[1]) < 1:
        raise CliError(f"--wait needs a job submission, but the answer has no job id: {answer}")
    return int(words[1])


def send_pipelined(conn: Connection, lines: BinaryIO, as_json: bool) -> int:
    """Send every input line without waiting, print each answer in order."""
    sent: queue.Queue[bool] = queue.Queue()   # one True per line sent, then False
    writer = threading.Thread(target=feed_lines, args=(conn, lines, sent),
                              name="upq-cli-writer", daemon=True)
    writer.start()
    status = EXIT_ACK
    while sent.get():
        status = max(status, print_answer(conn.receive(), as_json))
    writer.join()
    return status


def feed_lines(conn: Connection, lines: Iterable[bytes], sent: "queue.Queue[bool]") -> None:
    """Writer thread: send each input line as it is read, counting it in `sent`."""
    try:
        for raw in lines:
            conn.send(raw.rstrip(b"\n"))
            sent.put(True)
    except CliError:
        pass  # the reader meets the same broken connection and reports it
    finally:
        sent.put(False)


# --- printing ------------------------------------------------------------------

def print_answer(answer: str, as_json: bool, table: str | None = None) -> int:
    """Print one answer (its JSON indented, or as the table of command `table`: upqtables) and
    return the exit status."""
    import upqtables
    if table and not as_json and upqtables.printed(table, answer, sys.stdout.isatty()):
        return EXIT_ACK
    print(json_payload(answer) if as_json else answer, flush=True)
    return EXIT_ACK if is_ack(answer) else EXIT_ERR


def json_payload(answer: str) -> str:
    """The JSON object/array after ACK/ERR, indented; the answer as is when it has none."""
    _, _, payload = answer.partition(" ")
    if not payload.lstrip().startswith(("{", "[")):
        return answer
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except ValueError:
        return answer


def is_ack(answer: str) -> bool:
    """True for a success answer: `ACK` or `ACK ...`."""
    return answer == "ACK" or answer.startswith("ACK ")


def one_line(text: str) -> str:
    """text with its line breaks turned into spaces, for one-line messages."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
