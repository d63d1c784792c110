"""The partition guard (issue 13): a daemon cut off from MariaDB (a proxy that stops forwarding
while keeping the connections open) SIGKILLs its process runs once it has not renewed its
heartbeat for node_timeout / 2, so the other daemon, which takes the job over after
node_timeout, never runs it while it still runs on the cut-off one."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from conftest import Daemon, wait_for
from helpers.dbproxy import FreezableProxy
from helpers.procs import crasher_runs

JOBS = {"crasher": {"isolation": "process", "kill_grace": "1"}}
SERVER = {"node_timeout": "4"}


def alive_times(d: Daemon, jobid: int) -> list[float]:
    return [float(r[3]) for r in d.read_records() if r[0] == "alive" and int(r[1]) == jobid]


def test_a_cut_off_daemon_stops_its_process_runs_before_another_may_start_them(fresh_mysql_url: str) -> None:
    url = make_url(fresh_mysql_url)
    proxy = FreezableProxy((url.host or "127.0.0.1", url.port or 3306))
    root = Path(tempfile.mkdtemp(prefix="upq-", dir="/tmp"))
    (root / "a").mkdir()
    (root / "b").mkdir()
    cut = Daemon(root / "a", url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
                 JOBS, server={**SERVER, "node_name": "cut"})
    other = Daemon(root / "b", fresh_mysql_url, JOBS, server={**SERVER, "node_name": "other"})
    try:
        cut.start()
        jobid = cut.submit("crasher how:alive")
        wait_for(lambda: alive_times(cut, jobid), 20, "the run to be alive on the first daemon")
        other.start()
        proxy.freeze()
        wait_for(lambda: "SIGKILLed 1 process run(s)" in cut.log(), 15, "the guard to stop the run")
        started = wait_for(lambda: crasher_runs(other.read_records(), jobid), 30, "the job to run on the other")
        last_alive_on_cut = max(alive_times(cut, jobid))
        assert last_alive_on_cut < started[0]["time"], (last_alive_on_cut, started)
        assert other.job(jobid)["state"] == "running"
    finally:
        proxy.thaw()
        for d in (cut, other):
            d.kill_if_running()
        proxy.close()
        shutil.rmtree(root, ignore_errors=True)
