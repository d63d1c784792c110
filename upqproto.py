"""The line protocol, pure: the grammar of a request, the answer lines, and the command table.

No sockets and no state here (README, "The socket protocol"): upqserver.py frames
the lines, upqcommands.py carries the commands out. The reserved job names are
derived from COMMANDS, so a command added here can never be shadowed by a job.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from inifile import duration
from upqerrors import BadRequest
from upqschema import iso
from upqstates import SHOWN, State, shown

if TYPE_CHECKING:
    from upqschema import JobRow

MAX_LINE = 64 * 1024
MAX_ANSWER = 1024
LIST_DEFAULT, LIST_MAX = 100, 1000
MAX_DELAY = 366 * 86400
MAX_WAIT = 10 ** 7
KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
JOB_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
TOO_LONG = object()            # marks a framed line that exceeded MAX_LINE


@dataclass(frozen=True)
class Command:
    """A built-in command: its name, how it is used and what it does (for `help`)."""
    name: str
    usage: str
    help: str
    listed: bool = True          # shown by `help`


COMMANDS: tuple[Command, ...] = (
    Command("ping", "ping", "ACK pong"),
    Command("status", "status <jobid>", "the job as JSON"),
    Command("wait", "wait <jobid> [timeout:<seconds>]", "block until the job has ended"),
    Command("list", "list [state] [limit:<n>]", "newest jobs first (list_queue is the old name)"),
    Command("list_queue", "list_queue [state] [limit:<n>]", "the old name of list", listed=False),
    Command("cancel", "cancel <jobid>", "a queued job never runs; a running one is told to stop; "
            "cancel type:<jobname> cancels every queued job of the type"),
    Command("retry", "retry <jobid>", "queue a failed or cancelled job again; "
            "retry type:<jobname> re-queues every failed job of the type"),
    Command("stats", "stats", "counts per job type and state"),
    Command("help", "help", "this text"),
    Command("reload", "reload", "re-read the [job] sections and reopen the log (like SIGHUP)"),
    Command("schedules", "schedules", "periodic job types: schedule, zone, next and last due time"),
    Command("pause", "pause <jobname>", "no daemon starts jobs of the type; submissions are still taken"),
    Command("resume", "resume <jobname>", "end a pause"),
    Command("purge", "purge <done|failed|cancelled> older:<duration> [type:<jobname>]",
            "delete ended jobs now; durations take s, m, h, d"),
    Command("why", "why <jobid>", "why the job is not running yet, or where it runs: a reason and a sentence"),
    Command("log", "log <jobid> [attempt:<n>]", "what a run wrote (default: the latest attempt)"),
    Command("auth", "auth <token>", "TCP only: the first line of a connection", listed=False),
)
COMMAND_NAMES: frozenset[str] = frozenset(c.name for c in COMMANDS)
RESERVED_NAMES = COMMAND_NAMES          # no job may be named like a command
USAGE = {c.name: c.usage for c in COMMANDS}


@dataclass(frozen=True)
class Request:
    command: str
    args: list[tuple[str, str | None]]   # (key, value); value None for a bare word

    def params(self) -> dict[str, str]:
        """Job parameters: a bare word is a key with an empty value; duplicates are refused."""
        out: dict[str, str] = {}
        for key, value in self.args:
            if not key:
                raise BadRequest(f"param without a key: {':' + (value or '')!r:.60}")
            if not KEY_RE.match(key):
                raise BadRequest(f"bad param name {key!r:.60}: use letters, digits, _ . -")
            if key in out:
                raise BadRequest(f"param {key!r} given twice")
            out[key] = value or ""
        return out


def decode_line(raw: Any) -> str:
    """A framed request (bytes, or TOO_LONG) as text; BadRequest when it cannot be one."""
    if raw is TOO_LONG:
        raise BadRequest(f"line longer than {MAX_LINE} bytes; not stored")
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if b"\0" in raw:
        raise BadRequest("NUL byte in request")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request is not valid UTF-8") from None


def tokenize(line: str) -> list[tuple[str, int | None]]:
    """Split on whitespace outside double quotes; each token with the index of its first unquoted ':' or '='."""
    tokens: list[tuple[str, int | None]] = []
    buf: list[str] = []
    sep: int | None = None
    in_token = quoted = False
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if quoted:
            if c == "\\" and i + 1 < n and line[i + 1] in '"\\':
                buf.append(line[i + 1])
                i += 1
            elif c == '"':
                quoted = False
            else:
                buf.append(c)
        elif c.isspace():
            if in_token:
                tokens.append(("".join(buf), sep))
                buf, sep, in_token = [], None, False
        else:
            in_token = True
            if c == '"':
                quoted = True
            else:
                if c in ":=" and sep is None:
                    sep = len(buf)
                buf.append(c)
        i += 1
    if quoted:
        raise BadRequest("unterminated double quote")
    if in_token:
        tokens.append(("".join(buf), sep))
    return tokens


def parse_request(line: str) -> Request:
    """`<command> [key:value | key=value | "quoted value" | bare] ...`"""
    tokens = tokenize(line)
    if not tokens:
        raise BadRequest("empty request (try 'help')")
    command = tokens[0][0]
    args = [(tok, None) if sep is None else (tok[:sep], tok[sep + 1:]) for tok, sep in tokens[1:]]
    return Request(command, args)


def check_job_name(command: str) -> None:
    """A line that is not a built-in command must name a job."""
    if not JOB_NAME_RE.match(command):
        raise BadRequest(f"invalid command name {command!r:.60}")


def split_options(args: list[tuple[str, str | None]]) -> tuple[dict[str, str], list[tuple[str, str | None]]]:
    """Submission options start with '@' (job params cannot), e.g. @delay:60."""
    options: dict[str, str] = {}
    rest = []
    for key, value in args:
        if key == "@priority" and value is not None:
            if key in options:
                raise BadRequest("give @priority once")
            options[key] = value
        elif key.startswith("@"):
            if key not in ("@delay", "@at") or value is None:
                raise BadRequest(f"unknown option {key!r:.40}: use @delay:<seconds>, @at:<ISO time> "
                                 f"or @priority:<n>")
            if "@delay" in options or "@at" in options:
                raise BadRequest("give one of @delay and @at, once")
            options[key] = value
        else:
            rest.append((key, value))
    return options, rest


def parse_priority(options: dict[str, str]) -> int | None:
    """@priority:<n>, -100..100, higher first; None when not given (the type's default)."""
    if "@priority" not in options:
        return None
    raw = options["@priority"]
    if not re.fullmatch(r"[+-]?\d{1,4}", raw) or not -100 <= int(raw) <= 100:
        raise BadRequest(f"@priority must be a whole number from -100 to 100, got {raw!r:.40}")
    return int(raw)


def parse_delay(options: dict[str, str], now: dt.datetime | None = None) -> float | None:
    """Seconds from `now` until the job is due, from @delay or @at (naive times are UTC)."""
    if "@delay" in options:
        try:
            delay = float(options["@delay"])
        except ValueError:
            raise BadRequest(f"@delay must be a number of seconds, got {options['@delay']!r:.40}") from None
        if not 0 <= delay <= MAX_DELAY:
            raise BadRequest(f"@delay must be between 0 and {MAX_DELAY} seconds")
        return delay
    if "@at" in options:
        try:
            when = dt.datetime.fromisoformat(options["@at"].replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"@at must be an ISO 8601 time like 2030-01-31T12:00:00Z, "
                             f"got {options['@at']!r:.40}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        delay = (when - (now or dt.datetime.now(dt.timezone.utc))).total_seconds()
        if delay > MAX_DELAY:
            raise BadRequest("@at is too far in the future (at most a year)")
        return max(0.0, delay)
    return None


def int_arg(text: str | None, what: str, low: int = 1, high: int = 2 ** 63 - 1) -> int:
    if text is None or not text.isascii() or not text.isdigit():
        raise BadRequest(f"{what} must be a whole number, got {text!r:.40}")
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(f"{what} must be between {low} and {high}")
    return value


def jobid_arg(req: Request, alone: bool = True) -> int:
    """The jobid that starts the arguments (and, with `alone`, is all of them)."""
    if not req.args or req.args[0][1] is not None or (alone and len(req.args) != 1):
        raise BadRequest(f"usage: {USAGE[req.command]}")
    return int_arg(req.args[0][0], "jobid")


def wait_args(req: Request) -> tuple[int, float | None]:
    """`wait <jobid> [timeout:<seconds>]`"""
    jobid = jobid_arg(req, alone=False)
    timeout: float | None = None
    for key, value in req.args[1:]:
        if key != "timeout" or value is None:
            raise BadRequest(f"usage: {USAGE['wait']}")
        try:
            timeout = float(value)
        except ValueError:
            raise BadRequest(f"timeout must be a number of seconds, got {value!r:.40}") from None
        if not 0 <= timeout < MAX_WAIT:
            raise BadRequest(f"timeout must be between 0 and {MAX_WAIT} seconds")
    return jobid, timeout


def list_args(req: Request) -> tuple[State | None, int]:
    """`list [state] [limit:<n>]`: a state as clients see it, and how many rows."""
    state, limit = None, LIST_DEFAULT
    for key, value in req.args:
        if value is None and key in SHOWN and state is None:
            state = State(key)
        elif key == "limit" and value is not None:
            limit = int_arg(value, "limit", 1, LIST_MAX)
        else:
            raise BadRequest(f"usage: list [{'|'.join(SHOWN)}] [limit:<1..{LIST_MAX}>]")
    return state, limit


def type_arg(req: Request) -> str | None:
    """The jobname of `<command> type:<jobname>` (a bulk action), or None for other arguments."""
    if not req.args or req.args[0][0] != "type":
        return None
    if len(req.args) != 1 or not req.args[0][1]:
        raise BadRequest(f"usage: {USAGE[req.command]}")
    check_job_name(req.args[0][1])
    return req.args[0][1]


def jobname_arg(req: Request) -> str:
    """`pause <jobname>`, `resume <jobname>`: one bare job type name."""
    if len(req.args) != 1 or req.args[0][1] is not None:
        raise BadRequest(f"usage: {USAGE[req.command]}")
    check_job_name(req.args[0][0])
    return req.args[0][0]


def purge_args(req: Request) -> tuple[State, float, str | None]:
    """`purge <final state> older:<duration> [type:<jobname>]`"""
    usage = BadRequest(f"usage: {USAGE['purge']}")
    state, older, jobname = None, None, None
    for key, value in req.args:
        if value is None and state is None:
            if key not in (State.DONE, State.FAILED, State.CANCELLED):
                raise BadRequest(f"purge: {key!r:.40} is not a final state (done, failed or cancelled)")
            state = State(key)
        elif key == "older" and value is not None and older is None:
            try:
                older = duration(value)
            except ValueError:
                raise BadRequest(f"older must be a duration like 90s, 15m, 1h or 7d, got {value!r:.40}") from None
        elif key == "type" and value and jobname is None:
            check_job_name(value)
            jobname = value
        else:
            raise usage
    if state is None or older is None:
        raise usage
    return state, older, jobname


def no_args(req: Request) -> None:
    if req.args:
        raise BadRequest(f"usage: {USAGE[req.command]}")


# -- answers --------------------------------------------------------------
def clean(text: str) -> str:
    """One safe answer line: no CR, LF or NUL, at most MAX_ANSWER bytes."""
    text = text.replace("\r", " ").replace("\n", " ").replace("\0", " ")
    raw = text.encode("utf-8", "replace")
    if len(raw) > MAX_ANSWER:
        text = raw[:MAX_ANSWER].decode("utf-8", "ignore")
    return text


def ack(text: str = "") -> str:
    return clean(f"ACK {text}" if text else "ACK")


def err(text: str) -> str:
    return clean(f"ERR {text}")


def ack_json(payload: Any, kind: str = "ACK") -> str:
    return f"{kind} {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}"


def job_json(row: "JobRow") -> dict[str, Any]:
    """The job as clients see it (SPEC: the job JSON)."""
    return {
        "jobid": row.jobid, "jobname": row.jobname, "state": shown(row.state),
        "params": row.params, "msg": row.msg, "result": row.result,
        "attempts": row.attempts, "created": iso(row.created),
        "started": iso(row.started), "finished": iso(row.finished),
        "run_after": iso(row.run_after), "node": row.node, "parent": row.parent,
        "due": iso(row.due), "priority": row.priority,
    }


def job_answer(row: "JobRow", **extra: Any) -> str:
    return ack_json({**job_json(row), **extra})


def wait_answer(row: "JobRow") -> str:
    """`wait` answers ACK only for done, ERR with the job for failed or cancelled."""
    return ack_json(job_json(row), "ACK" if row.state == State.DONE else "ERR")


def accepted_answer(jobid: int, msg: str, ok: bool) -> str:
    """A submission's answer once committed (ok=False: its inline run failed)."""
    if ok:
        return ack(f"{jobid} {msg}" if msg else str(jobid))
    return err(f"{jobid} failed: {msg}")


def help_answer(jobs: dict[str, int]) -> str:
    """`help`: the commands and the enabled job types with their `concurrent`."""
    commands = {"<job> [key:value ...]": "submit a job; answers ACK <jobid> [msg]"}
    commands.update({c.usage: c.help for c in COMMANDS if c.listed})
    commands["<job> ... @delay:<seconds> | @at:<ISO time>"] = "run the job no sooner than then"
    commands["<job> ... @priority:<n>"] = "-100..100, higher starts first (default: the type's priority)"
    return ack_json({"commands": commands,
                     "jobs": {name: {"concurrent": n} for name, n in sorted(jobs.items())}})


def log_args(req: Request) -> tuple[int, int | None]:
    """`log <jobid> [attempt:<n>]`"""
    jobid = jobid_arg(req, alone=False)
    attempt: int | None = None
    for key, value in req.args[1:]:
        if key != "attempt" or value is None or attempt is not None:
            raise BadRequest(f"usage: {USAGE['log']}")
        attempt = int_arg(value, "attempt")
    return jobid, attempt
