"""The line protocol's grammar and answers, in-process (upqproto.py, no socket, no daemon).

The end-to-end fuzzing over real sockets is tests/test_protocol_fuzz.py; these pin the
rules down one by one and let hypothesis look for lines that break them.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, settings, strategies as st

import upqproto as proto
from upqerrors import BadRequest
from upqschema import JobRow
from upqstates import SHOWN, State

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None)
KEYS = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.\-]{0,15}\Z")
VALUES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
NAMES = st.from_regex(r"\A[a-z][a-z0-9_]{0,15}\Z")


def quoted(value: str) -> str:
    """What a client sends to carry any value: double quotes, with \\ and " escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@SETTINGS
@given(NAMES, st.dictionaries(KEYS, VALUES, max_size=8))
def test_any_params_survive_quoting_and_parsing(name: str, params: dict[str, str]) -> None:
    line = " ".join([name] + [f"{k}:{quoted(v)}" for k, v in params.items()])
    req = proto.parse_request(line)
    assert req.command == name
    assert req.params() == params


@SETTINGS
@given(KEYS, st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc"), blacklist_characters='"\\'),
                     min_size=1, max_size=30))
def test_a_value_is_everything_after_the_first_separator(key: str, value: str) -> None:
    for sep in ":=":
        assert proto.parse_request(f"job {key}{sep}{value}").params() == {key: value}


def canonical(req: proto.Request) -> str:
    """The request written back with every token quoted."""
    args = [quoted(k) if v is None else f"{quoted(k)}:{quoted(v)}" for k, v in req.args]
    return " ".join([quoted(req.command)] + args)


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_parses_to_a_request_that_reads_back_the_same_or_is_refused(line: str) -> None:
    try:
        req = proto.parse_request(line)
    except BadRequest as exc:
        assert exc.reason in ("unterminated double quote", "empty request (try 'help')")
        return
    assert proto.parse_request(canonical(req)) == req
    try:
        params = req.params()
    except BadRequest as exc:
        assert exc.reason.startswith(("param without a key", "bad param name", "param "))
        return
    assert len(params) == len(req.args)


@SETTINGS
@given(st.text(max_size=3000))
def test_answer_lines_are_one_line_and_at_most_1k(text: str) -> None:
    for line in (proto.ack(text), proto.err(text)):
        assert not {"\r", "\n", "\0"} & set(line)
        assert len(line.encode("utf-8")) <= proto.MAX_ANSWER
        assert line.startswith(("ACK", "ERR"))


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_text_or_bad_request(raw: bytes) -> None:
    try:
        text = proto.decode_line(raw)
    except BadRequest as exc:
        assert b"\0" in raw or "UTF-8" in exc.reason
        return
    assert "\0" not in text and not text.endswith("\r") or raw.endswith(b"\r\r")


def test_bare_words_and_empty_values_are_keys_with_empty_values() -> None:
    assert proto.parse_request("job flag k: x=").params() == {"flag": "", "k": "", "x": ""}


def test_url_keeps_its_colons() -> None:
    assert proto.parse_request("job url:http://h:80/x").params() == {"url": "http://h:80/x"}


@pytest.mark.parametrize("line, reason", [
    ("", "empty request"), ("   \t ", "empty request"), ('job a:"open', "unterminated double quote"),
    ("job a:1 a:2", "given twice"), ("job ../x:1", "bad param name"), ("job :v", "param without a key"),
])
def test_bad_lines_are_refused_with_a_reason(line: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        proto.parse_request(line).params()


def test_over_long_and_nul_lines_are_refused() -> None:
    with pytest.raises(BadRequest, match="longer than 65536"):
        proto.decode_line(proto.TOO_LONG)
    with pytest.raises(BadRequest, match="NUL"):
        proto.decode_line(b"ping\0")
    with pytest.raises(BadRequest, match="UTF-8"):
        proto.decode_line(b"\xff\xfe")
    assert proto.decode_line(b"ping\r") == "ping"


@pytest.mark.parametrize("name", ["../x", "os.path", "Hello", "9lives", "a-b"])
def test_names_that_cannot_be_jobs_are_refused(name: str) -> None:
    with pytest.raises(BadRequest, match="invalid command name"):
        proto.check_job_name(name)


def test_reserved_names_come_from_the_command_table() -> None:
    assert proto.RESERVED_NAMES == {c.name for c in proto.COMMANDS}
    assert {"ping", "status", "wait", "cancel", "retry", "list", "list_queue", "stats", "help",
            "auth", "reload"} <= proto.RESERVED_NAMES
    assert all(proto.JOB_NAME_RE.match(name) for name in proto.RESERVED_NAMES)


def test_options_delay_and_at() -> None:
    opts, rest = proto.split_options([("@delay", "5"), ("k", "v")])
    assert rest == [("k", "v")] and proto.parse_delay(opts) == 5.0
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    assert proto.parse_delay({"@at": "2030-01-01T00:01:00Z"}, now) == 60.0
    assert proto.parse_delay({"@at": "2029-01-01T00:00:00"}, now) == 0.0      # naive is UTC; past is now
    for opts_in, reason in [({"@delay": "x"}, "number of seconds"), ({"@delay": "-1"}, "between"),
                            ({"@at": "tomorrow"}, "ISO 8601"), ({"@at": "2032-01-01T00:00:00Z"}, "too far")]:
        with pytest.raises(BadRequest, match=reason):
            proto.parse_delay(opts_in, now)
    for args, reason in [([("@later", "1")], "unknown option"), ([("@delay", None)], "unknown option"),
                         ([("@delay", "1"), ("@at", "x")], "once")]:
        with pytest.raises(BadRequest, match=reason):
            proto.split_options(args)


@pytest.mark.parametrize("line, reason", [
    ("status", "usage: status <jobid>"), ("status 1 2", "usage: status"), ("status x", "whole number"),
    ("status 0", "between 1"), ("cancel a:b", "usage: cancel"), ("wait 1 timeout:x", "number of seconds"),
    ("wait 1 later:3", "usage: wait"), ("wait 1 timeout:-1", "between 0"), ("list bogus", "usage: list"),
    ("list limit:0", "between 1 and 1000"), ("list limit:1001", "between 1 and 1000"), ("list new done", "usage"),
])
def test_command_arguments_are_checked(line: str, reason: str) -> None:
    req = proto.parse_request(line)
    parse = {"status": proto.jobid_arg, "cancel": proto.jobid_arg, "wait": proto.wait_args,
             "list": proto.list_args}[req.command]
    with pytest.raises(BadRequest, match=reason):
        parse(req)


def test_command_arguments_that_are_fine() -> None:
    assert proto.jobid_arg(proto.parse_request("status 42")) == 42
    assert proto.wait_args(proto.parse_request("wait 7 timeout:2.5")) == (7, 2.5)
    assert proto.wait_args(proto.parse_request("wait 7")) == (7, None)
    assert proto.list_args(proto.parse_request("list")) == (None, proto.LIST_DEFAULT)
    for state in SHOWN:
        assert proto.list_args(proto.parse_request(f"list {state} limit:5")) == (state, 5)


def row(state: State, **kw: object) -> JobRow:
    t = dt.datetime(2030, 1, 2, 3, 4, 5, 600000)
    values = dict(jobid=9, jobname="hello", state=state, params={"a": "<b>"}, msg="m", result={"r": 1},
                  attempts=1, retries_used=0, created=t, started=None, finished=None, run_after=None,
                  node="n1", parent=None)
    values.update(kw)
    return JobRow(**values)  # type: ignore[arg-type]


def test_job_json_shows_internal_states_as_new_and_times_in_utc() -> None:
    for internal in (State.HELD, State.LEASED, State.NEW):
        assert proto.job_json(row(internal))["state"] == "new"
    out = proto.job_json(row(State.RUNNING))
    assert out["created"] == "2030-01-02T03:04:05.600000Z" and out["started"] is None
    assert set(out) >= {"jobid", "jobname", "state", "params", "msg", "result", "attempts", "created",
                        "started", "finished", "run_after"}


def test_wait_answers_ack_only_for_done() -> None:
    assert proto.wait_answer(row(State.DONE)).startswith("ACK {")
    for state in (State.FAILED, State.CANCELLED):
        answer = proto.wait_answer(row(state))
        assert answer.startswith("ERR {") and json.loads(answer[4:])["state"] == state


def test_submission_answers() -> None:
    assert proto.accepted_answer(5, "", True) == "ACK 5"
    assert proto.accepted_answer(5, "hi there", True) == "ACK 5 hi there"
    assert proto.accepted_answer(5, "boom\nline", False) == "ERR 5 failed: boom line"


def test_help_lists_the_commands_and_jobs() -> None:
    payload = json.loads(proto.help_answer({"hello": 2})[4:])
    assert payload["jobs"] == {"hello": {"concurrent": 2}}
    assert "ping" in payload["commands"] and "cancel <jobid>" in payload["commands"]
    assert not any(k.startswith("auth") for k in payload["commands"])
