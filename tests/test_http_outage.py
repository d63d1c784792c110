"""/healthz and the database metrics through a MariaDB outage (issue 14), on a private mariadbd."""
from __future__ import annotations

import json
import signal
import tempfile
from pathlib import Path

from conftest import Daemon, wait_for
from helpers.http import TOKEN, Browser
from helpers.net import free_port
from test_http import samples
from test_outage import daemons, private_mariadb  # noqa: F401 - the fixtures

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_healthz_is_503_naming_the_database_while_it_is_down(private_mariadb, daemons) -> None:  # noqa: F811
    port = free_port()
    d = Daemon(Path(tempfile.mkdtemp(prefix="upq-", dir="/tmp")), private_mariadb.url("upq"),
               {"record": {}}, extra=f"[http]\nlisten = 127.0.0.1:{port}\ntoken = {TOKEN}\n")
    daemons.append(d)
    d.start()
    b = Browser(port)
    assert b.get("/healthz", headers=BEARER).status == 200
    private_mariadb.kill(signal.SIGKILL)
    r = wait_for(lambda: (lambda r: r if r.status == 503 else None)(b.get("/healthz", headers=BEARER)),
                 30, "/healthz to report the outage")
    health = json.loads(r.body)
    assert health["status"] == "unavailable" and "database unavailable" in health["problem"], health
    private_mariadb.start()
    wait_for(lambda: b.get("/healthz", headers=BEARER).status == 200, 60, "/healthz to recover")
    s = wait_for(lambda: (lambda s: s if s[("upq_db_outage_seconds_total", ())] > 0 else None)(
        samples(b.get("/metrics", headers=BEARER).body)), 30, "the outage to be counted")
    assert s[("upq_db_errors_total", ())] >= 1
