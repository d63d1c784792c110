"""Jobs per (type, state) without scanning: the table upq_counts, kept by database triggers on
upq_jobs, so every insert, state change and delete updates it in the same transaction, on
every daemon and whatever module writes (SQLite and MariaDB/MySQL alike).

`stats`, `/metrics` and the dashboard read these few rows instead of a GROUP BY over the
jobs table (with 1,000,000 jobs that took far more than the 10 ms these must answer in).
The counts are rebuilt once, by one GROUP BY, when the triggers are created (a database from
before this table, or one whose triggers were dropped). Where triggers cannot be created
(no TRIGGER privilege), upq logs it and counts with GROUP BY as before.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, MetaData, PrimaryKeyConstraint, String, Table, select, text
from sqlalchemy.engine import Connection

counts = Table(
    "upq_counts", MetaData(),
    Column("jobname", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("n", BigInteger().with_variant(Integer(), "sqlite"), nullable=False),
    PrimaryKeyConstraint("jobname", "state"),
)

TRIGGERS = ("upq_jobs_count_ins", "upq_jobs_count_upd", "upq_jobs_count_del")

_SQLITE = (
    """CREATE TRIGGER upq_jobs_count_ins AFTER INSERT ON upq_jobs BEGIN
         INSERT INTO upq_counts (jobname, state, n) VALUES (NEW.jobname, NEW.state, 1)
           ON CONFLICT (jobname, state) DO UPDATE SET n = n + 1;
       END""",
    """CREATE TRIGGER upq_jobs_count_upd AFTER UPDATE OF state, jobname ON upq_jobs
         WHEN OLD.state IS NOT NEW.state OR OLD.jobname IS NOT NEW.jobname BEGIN
         UPDATE upq_counts SET n = n - 1 WHERE jobname = OLD.jobname AND state = OLD.state;
         INSERT INTO upq_counts (jobname, state, n) VALUES (NEW.jobname, NEW.state, 1)
           ON CONFLICT (jobname, state) DO UPDATE SET n = n + 1;
       END""",
    """CREATE TRIGGER upq_jobs_count_del AFTER DELETE ON upq_jobs BEGIN
         UPDATE upq_counts SET n = n - 1 WHERE jobname = OLD.jobname AND state = OLD.state;
       END""",
)

_MYSQL = (
    """CREATE TRIGGER upq_jobs_count_ins AFTER INSERT ON upq_jobs FOR EACH ROW
         INSERT INTO upq_counts (jobname, state, n) VALUES (NEW.jobname, NEW.state, 1)
           ON DUPLICATE KEY UPDATE n = n + 1""",
    """CREATE TRIGGER upq_jobs_count_upd AFTER UPDATE ON upq_jobs FOR EACH ROW
       BEGIN
         IF NOT (OLD.state <=> NEW.state) OR NOT (OLD.jobname <=> NEW.jobname) THEN
           UPDATE upq_counts SET n = n - 1 WHERE jobname = OLD.jobname AND state = OLD.state;
           INSERT INTO upq_counts (jobname, state, n) VALUES (NEW.jobname, NEW.state, 1)
             ON DUPLICATE KEY UPDATE n = n + 1;
         END IF;
       END""",
    """CREATE TRIGGER upq_jobs_count_del AFTER DELETE ON upq_jobs FOR EACH ROW
         UPDATE upq_counts SET n = n - 1 WHERE jobname = OLD.jobname AND state = OLD.state""",
)


def _present(conn: Connection) -> set[str]:
    if conn.dialect.name == "sqlite":
        rows = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
    else:
        rows = conn.execute(text("SELECT trigger_name FROM information_schema.triggers "
                                 "WHERE trigger_schema = DATABASE() AND event_object_table = 'upq_jobs'"))
    return {r[0] for r in rows} & set(TRIGGERS)


def ensure_counts(conn: Connection) -> bool:
    """Create upq_counts and its triggers where missing (then count once); False when the
    database refuses triggers. Called by create_schema, inside its transaction."""
    counts.create(conn, checkfirst=True)
    have = _present(conn)
    if have == set(TRIGGERS):
        return True
    statements = _SQLITE if conn.dialect.name == "sqlite" else _MYSQL
    try:
        for name in have:               # a partial set (an interrupted upgrade): start afresh
            conn.exec_driver_sql(f"DROP TRIGGER {name}")
        for sql in statements:
            conn.exec_driver_sql(sql)
    except Exception:  # noqa: BLE001 - e.g. no TRIGGER privilege: count the slow way
        return False
    conn.execute(counts.delete())
    conn.execute(text("INSERT INTO upq_counts (jobname, state, n) "
                      "SELECT jobname, state, COUNT(*) FROM upq_jobs GROUP BY jobname, state"))
    return True


def read_counts(conn: Connection) -> list[tuple[str, str, int]]:
    """(jobname, state, n) for every pair with jobs: a read of a few rows."""
    return [(r.jobname, r.state, int(r.n)) for r in conn.execute(
        select(counts.c.jobname, counts.c.state, counts.c.n).where(counts.c.n > 0))]
