"""[http] (issue 14): /healthz, /metrics and the dashboard over real HTTP from a real daemon."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse

from prometheus_client.parser import text_string_to_metric_families

from conftest import SQLITE_ONLY, UPQ, wait_for
from helpers.http import TOKEN, Browser, http_daemon

JOBS = {"record": {"concurrent": "2"}, "fail": {}}
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Samples(dict):
    """(sample name, labels as pairs in any order) -> value."""

    def __getitem__(self, key: tuple[str, tuple]) -> float:
        return super().__getitem__((key[0], frozenset(key[1])))

    def get(self, key: tuple[str, tuple], default: float | None = None) -> float | None:
        return super().get((key[0], frozenset(key[1])), default)


def samples(text: str) -> Samples:
    """The samples of a /metrics page, parsed with prometheus_client's parser."""
    out = Samples()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            dict.__setitem__(out, (s.name, frozenset(s.labels.items())), s.value)
    return out


def listening_tcp_ports(pid: int) -> list[int]:
    """The TCP ports process `pid` listens on (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:         # LISTEN
                ports.append(int(f[1].rsplit(":", 1)[1], 16))
    return ports


@SQLITE_ONLY
def test_http_is_off_by_default(make_daemon) -> None:
    d = make_daemon(jobs=JOBS)
    assert d.ask("ping") == "ACK pong"
    assert listening_tcp_ports(d.proc.pid) == []


@SQLITE_ONLY
def test_http_listen_without_token_is_a_config_error(make_daemon) -> None:
    d = make_daemon(jobs=JOBS, extra="[http]\nlisten = 127.0.0.1:1\n", start=False)
    r = subprocess.run([sys.executable, str(UPQ), "--check-config", "-c", str(d.cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "[http] token: token is required when listen is set" in r.stderr, r.stderr


def test_healthz_and_metrics_need_the_token(make_daemon) -> None:
    d, port = http_daemon(make_daemon, JOBS)
    b = Browser(port)
    for path in ("/healthz", "/metrics"):
        assert b.get(path).status == 401
        assert b.get(path, headers={"Authorization": "Bearer wrong"}).status == 401
        assert b.get(path, headers={"Authorization": TOKEN}).status == 401
    r = b.get("/healthz", headers=BEARER)
    assert r.status == 200 and r.headers["content-type"] == "application/json", r
    health = json.loads(r.body)
    assert health["status"] == "ok" and health["jobs"] == ["fail", "record"], health


def test_metrics_count_the_jobs_the_test_ran(make_daemon) -> None:
    d, port = http_daemon(make_daemon, JOBS)
    ok = [d.submit("record") for _ in range(3)]
    bad = d.submit("fail")
    for jobid in ok + [bad]:
        d.wait_job(jobid)
    assert d.ask("status 999999").startswith("ERR ")
    assert d.ask("nosuchjob").startswith("ERR ")
    delayed = d.submit("record @delay:3600")
    b = Browser(port)

    def scraped():
        s = samples(b.get("/metrics", headers=BEARER).body)
        return s if s.get(("upq_job_runs_total", (("outcome", "failed"), ("jobname", "fail"))), 0) >= 1 else None
    s = wait_for(scraped, 15, "the failed run to be counted")
    assert s[("upq_jobs", (("state", "done"), ("jobname", "record")))] == 3
    assert s[("upq_jobs", (("state", "failed"), ("jobname", "fail")))] == 1
    assert s[("upq_jobs", (("state", "new"), ("jobname", "record")))] == 1, delayed
    assert s[("upq_jobs", (("state", "running"), ("jobname", "record")))] == 0
    assert s[("upq_job_runs_total", (("outcome", "done"), ("jobname", "record")))] == 3
    assert s[("upq_job_duration_seconds_count", (("jobname", "record"),))] == 3
    assert s[("upq_job_duration_seconds_bucket", (("le", "+Inf"), ("jobname", "record")))] == 3
    assert s[("upq_submissions_total", ())] == 6        # 5 accepted, and the unknown type
    assert s[("upq_err_answers_total", ())] == 3        # the two bad requests, and `wait` of the failed job
    assert s[("upq_workers", (("jobname", "record"),))] == 2
    assert s[("upq_workers_busy", (("jobname", "record"),))] == 0
    assert s[("upq_oldest_due_seconds", (("jobname", "record"),))] == 0      # the delayed one is not due
    assert s[("upq_db_errors_total", ())] == 0
    assert s[("process_resident_memory_bytes", ())] > 0
    overview = b.get("/", headers=BEARER).body          # jobs ended here in the last minute / hour
    row = overview[overview.index('<a href="/jobs?type=record">'):]
    assert "<td>3 / 3</td>" in row[:row.index("</tr>")], row[:600]


def test_a_due_job_waiting_shows_its_age(make_daemon) -> None:
    d, port = http_daemon(make_daemon, {"gate": {"concurrent": "1"}})
    try:
        first = d.submit("gate")
        wait_for(lambda: d.job(first)["state"] == "running", 15, "the gate job to run")
        d.submit("gate")
        b = Browser(port)
        s = wait_for(lambda: (lambda s: s if s[("upq_oldest_due_seconds", (("jobname", "gate"),))] > 0.2 else None)(
            samples(b.get("/metrics", headers=BEARER).body)), 15, "the queued job to age")
        assert s[("upq_workers_busy", (("jobname", "gate"),))] == 1
        assert s[("upq_jobs", (("state", "running"), ("jobname", "gate")))] == 1
    finally:
        (d.dir / "gate.open").touch()


def test_the_overview_marks_a_paused_type(make_daemon) -> None:
    d, port = http_daemon(make_daemon, JOBS)
    b = Browser(port)

    def record_row() -> str:
        page = b.get("/", headers=BEARER).body
        return page[page.index('<a href="/jobs?type=record">'):].split("</tr>")[0]
    assert "paused" not in record_row()
    assert d.ask("pause record") == "ACK"
    wait_for(lambda: "<strong>paused</strong>" in record_row(), 15, "the overview to show the pause")
    assert d.ask("resume record") == "ACK"
    wait_for(lambda: "paused" not in record_row(), 15, "the overview to show the pause ended")


@SQLITE_ONLY
def test_dashboard_login_sets_a_strict_httponly_cookie(make_daemon) -> None:
    d, port = http_daemon(make_daemon, JOBS)
    b = Browser(port)
    r = b.get("/")
    assert r.status == 303 and r.headers["location"] == "/login"
    assert b.get("/jobs").status == 303
    assert b.post("/action", {"action": "retry", "id": "1"}).status == 401
    assert b.get("/static/upq.js").status == 303
    assert b.get("/", headers=BEARER).status == 200       # GET pages take the Bearer token too (SPEC)
    assert b.post("/action", {"action": "retry", "id": "1"}, headers=BEARER).status == 401   # actions need a session
    assert b.login("wrong").status == 401 and not b.cookie
    r = b.login()
    assert r.status == 303, r
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    page = b.get("/")
    assert page.status == 200 and "record" in page.body and "Nodes" in page.body
    assert "<td>fail, record</td>" in page.body         # the node's row names the types it runs
    assert b.get("/metrics").status == 200          # a session is good for /metrics too
    assert b.get("/static/upq.js").status == 200 and "http" not in b.get("/static/upq.js").body
    assert b.get("/jobs/999999").status == 404 and b.get("/jobs/abc").status == 400


@SQLITE_ONLY
def test_actions_need_the_csrf_token_and_our_origin(make_daemon) -> None:
    d, port = http_daemon(make_daemon, JOBS)
    bad = d.submit("fail")
    d.wait_job(bad)
    b = Browser(port)
    b.login()
    csrf = b.csrf()
    form = {"action": "retry", "id": str(bad)}
    assert b.post("/action", form).status == 403
    assert b.post("/action", {**form, "csrf": "nope"}).status == 403
    assert b.post("/action", {**form, "csrf": csrf}, headers={"Origin": "http://evil.example"}).status == 403
    assert d.job(bad)["state"] == "failed"
    confirm = b.get(f"/confirm?action=retry&id={bad}")
    assert confirm.status == 200 and f"Retry job {bad}?" in confirm.body
    r = b.post("/action", {**form, "csrf": csrf}, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert r.status == 200 and f"job {bad} is queued again" in r.body, r.body
    assert d.wait_job(bad)["state"] == "failed"         # it ran again (and failed again)
    assert d.job(bad)["attempts"] == 2
    r = b.post("/action", {"action": "retry_all", "type": "fail", "csrf": csrf})
    assert "1 failed job(s) of type fail queued again" in r.body, r.body
    wait_for(lambda: d.job(bad)["attempts"] == 3 and d.job(bad)["state"] == "failed", 15, "the third run")


@SQLITE_ONLY
def test_html_is_escaped_everywhere(make_daemon) -> None:
    d, port = http_daemon(make_daemon, JOBS)
    jobid = d.submit('record evil:"<script>alert(1)</script>"')
    d.wait_job(jobid)
    b = Browser(port)
    b.login()
    page = b.get(f"/jobs/{jobid}")
    assert page.status == 200 and "<script>alert" not in page.body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.body
    for query in ("q", "type", "node", "state"):            # filters are echoed back escaped
        page = b.get(f"/jobs?{query}=" + urllib.parse.quote('"><script>x</script>'))
        assert page.status == 200
        assert "<script>x" not in page.body, query
    listing = b.get("/jobs?q=" + urllib.parse.quote("<script>")).body
    assert re.findall(r'<a href="/jobs/(\d+)">', listing) == [str(jobid)]


@SQLITE_ONLY
def test_jobs_are_paged_by_jobid_and_filtered(make_daemon) -> None:
    d, port = http_daemon(make_daemon, JOBS)
    ids = [d.submit(f"record n:{i}") for i in range(120)]
    bad = d.submit("fail marker:needle")
    d.wait_job(bad)
    b = Browser(port)
    b.login()
    seen, path = [], "/jobs?type=record"
    while path:
        page = b.get(path)
        assert page.status == 200, (path, page.status)
        seen += [int(x) for x in re.findall(r'<a href="/jobs/(\d+)">\d+</a>', page.body)]
        m = re.search(r'<a href="([^"]+)">older', page.body)
        path = m.group(1).replace("&amp;", "&") if m else ""
    assert seen == sorted(ids, reverse=True)
    found = b.get("/jobs?q=needle").body
    assert re.findall(r'<a href="/jobs/(\d+)">', found) == [str(bad)]
    failed = b.get("/jobs?state=failed").body
    assert re.findall(r'<a href="/jobs/(\d+)">', failed) == [str(bad)]
    job = b.get(f"/jobs/{bad}").body
    assert "needle" in job and "has ended failed" in job
