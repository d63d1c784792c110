"""`every 1s` on three daemons sharing MariaDB for 10 minutes makes exactly 600 jobs
(issue 15). Long: runs only with UPQ_SCHEDULE_SOAK=1 (`make schedule-soak`);
UPQ_SCHEDULE_SOAK_SECONDS shortens it."""

import datetime as dt
import os
import time

import pytest

from conftest import MYSQL_ONLY, wait_for
from test_schedule import periodic_jobs

SECONDS = int(os.environ.get("UPQ_SCHEDULE_SOAK_SECONDS", "600"))
pytestmark = pytest.mark.skipif(os.environ.get("UPQ_SCHEDULE_SOAK") != "1",
                                reason="long: set UPQ_SCHEDULE_SOAK=1 (make schedule-soak)")


@pytest.mark.timeout(SECONDS + 300)
@MYSQL_ONLY
def test_every_1s_on_three_daemons_for_ten_minutes(make_daemon):
    cfg = {"hello": {"schedule": "every 1s", "schedule_params": "name:soak", "concurrent": "2"}}
    daemons = [make_daemon(jobs=cfg, subdir=name) for name in ("a", "b", "c")]
    wait_for(lambda: periodic_jobs(daemons[0]), timeout=20, what="the first periodic run")
    start = periodic_jobs(daemons[0])[0]["due"] + dt.timedelta(seconds=5)
    time.sleep(SECONDS + 10)
    for d in daemons:
        d.stop()
    dues = [r["due"] for r in periodic_jobs(daemons[0])]
    assert len(dues) == len(set(dues)), "a due time was submitted twice"
    window = [t for t in dues if start <= t < start + dt.timedelta(seconds=SECONDS)]
    assert len(window) == SECONDS, (len(window), window[:3], window[-3:])
