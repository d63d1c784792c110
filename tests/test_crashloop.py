"""The crash-loop cap: a job that kills its daemon ends failed after max_interrupted restarts."""
from __future__ import annotations

from conftest import SQLITE_ONLY, wait_for
from helpers.net import SyslogReceiver

MSG = "interrupted 3 times: the daemon or its worker died while it ran"


def test_job_killing_its_daemon_ends_failed_at_the_cap_and_retry_runs_it(make_daemon, db_url):
    syslog = SyslogReceiver()
    try:
        d = make_daemon({"killer": {"notify_fail": "syslog crashloop"}, "hello": {}},
                        extra=f"[notify]\nsyslog_address = 127.0.0.1:{syslog.port}\n")
        jobid = d.submit("killer")
        kills = 0
        while True:
            assert d.proc is not None
            d.proc.wait(timeout=30)              # the job killed its daemon
            kills += 1
            assert kills <= 3, "the job ran again past the cap"
            d.start()
            job = d.job(jobid)
            if job["state"] == "failed":
                break
            assert job["state"] in ("new", "running"), job
        assert kills == 3
        assert job["msg"] == MSG
        assert job["attempts"] == 3
        assert d.starts()[jobid] == [1, 2, 3]
        records = syslog.wait(1)
        assert any(f"killer {jobid} failed {MSG}" in r for r in records), records
        # the daemon stays up and the job does not run again by itself
        assert d.wait_job(d.submit("hello name:x"))["state"] == "done"
        assert d.job(jobid)["state"] == "failed"
        # retry: a fresh budget; this time it is spared and ends done
        (d.dir / "nokill").write_text("")
        assert d.ask(f"retry {jobid}").startswith("ACK {")
        assert d.wait_job(jobid)["state"] == "done"
        assert d.starts()[jobid] == [1, 2, 3, 4]
    finally:
        syslog.close()


@SQLITE_ONLY
def test_leases_of_a_crashed_daemon_do_not_count_as_interruptions(make_daemon):
    # max_interrupted = 1: a job whose recorded run was cut off once ends failed at once,
    # but jobs only leased (never started) when the daemon died go back and run
    d = make_daemon({"gate": {"concurrent": "1", "max_interrupted": "1"}, "hello": {}})
    first = d.submit("gate")
    wait_for(lambda: d.job(first)["state"] == "running", 15, "the gate job to run")
    queued = [d.submit("gate pass") for _ in range(3)]
    d.kill()
    d.start()
    assert d.job(first)["state"] == "failed"
    assert d.job(first)["msg"] == "interrupted 1 times: the daemon or its worker died while it ran"
    for jobid in queued:
        assert d.wait_job(jobid)["state"] == "done"


@SQLITE_ONLY
def test_a_clean_stop_past_shutdown_grace_is_no_interruption(make_daemon):
    d = make_daemon({"gate": {"concurrent": "1", "max_interrupted": "1"}, "hello": {}},
                    server={"shutdown_grace": "0.5"})
    jobid = d.submit("gate")
    wait_for(lambda: d.job(jobid)["state"] == "running", 15, "the gate job to run")
    assert d.stop() == 0                     # the run is left behind, still running
    d.start()
    wait_for(lambda: len(d.starts()[jobid]) == 2, 15, "the job to run again")
    assert d.job(jobid)["state"] == "running"
    (d.dir / "gate.open").write_text("")
    assert d.wait_job(jobid)["state"] == "done"
