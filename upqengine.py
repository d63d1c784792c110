"""The database underneath: engines, the schema, the database's clock and the node-name lock.

upqdb.py runs the reads and writes on what this module opens; nothing else
here knows about jobs. SQLite and MySQL/MariaDB differ mostly in this module.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import time
from typing import Any

from sqlalchemy import create_engine, event, func, insert, inspect, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateColumn

from groupcommit import describe
from upqerrors import DatabaseUnavailable
from upqschema import SCHEMA_VERSION, meta, metadata, utcnow


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, durability: str, writer: bool) -> Engine:
    """The writer's engine (one connection) or the readers' pool, tuned for a job queue."""
    if is_sqlite(url):
        engine = create_engine(url, connect_args={"timeout": 30},
                               pool_size=1 if writer else 5, max_overflow=0 if writer else 10)
        sync = "FULL" if durability == "full" else "NORMAL"

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None      # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        if writer:
            @event.listens_for(engine, "begin")
            def _begin(conn: Connection) -> None:
                # a write transaction takes the lock up front: no upgrade, no SQLITE_BUSY mid-way
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        # reads stay in autocommit: each statement sees the latest commit, no BEGIN/ROLLBACK
        return engine
    # No pre-ping (a frozen server would cost a full read timeout before the query even
    # starts): a dropped connection fails fast and is retried once on a fresh one. Reads
    # get shorter timeouts so every answer, connect included, stays within 10 s.
    io_timeout = 5 if writer else 3
    engine = create_engine(
        url, pool_pre_ping=False, pool_recycle=1800, isolation_level="READ COMMITTED",
        pool_size=1 if writer else 5, max_overflow=0 if writer else 10, pool_timeout=5,
        connect_args={"connect_timeout": 2, "read_timeout": io_timeout, "write_timeout": io_timeout})

    @event.listens_for(engine, "connect")
    def _session(dbapi_conn: Any, _record: Any) -> None:
        # a lock wait must end (error 1205, retried) well before the 5 s read timeout
        cur = dbapi_conn.cursor()
        cur.execute("SET SESSION innodb_lock_wait_timeout = 2")
        cur.close()
    return engine


def create_schema(engine: Engine) -> bool:
    """Create missing tables, columns and indexes and record the schema version; safe when
    daemons race (a lost race fails one attempt, and the next finds the work done). True
    when upq_counts is kept by triggers (upqcounts.py)."""
    from upqcounts import ensure_counts
    for attempt in range(3):
        try:
            with engine.begin() as conn:
                metadata.create_all(conn, checkfirst=True)
                counted = ensure_counts(conn)
                _add_missing_columns(conn)
                for table in metadata.sorted_tables:
                    for index in table.indexes:      # an index added since the table was made
                        index.create(conn, checkfirst=True)
                have = conn.execute(select(meta.c.value).where(meta.c.name == "schema_version")).scalar()
                if have is None:
                    conn.execute(insert(meta).values(name="schema_version", value=str(SCHEMA_VERSION)))
                elif int(have) > SCHEMA_VERSION:
                    raise DatabaseUnavailable(
                        f"database schema version {have} is newer than this upq understands ({SCHEMA_VERSION})")
            return counted
        except SQLAlchemyError:
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _add_missing_columns(conn: Connection) -> None:
    """A column added to upqschema since the table was made is added to it (it must be nullable
    or have a server_default). Names come from upqschema, never from input."""
    present = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in present.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                ddl = CreateColumn(column).compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")


class Clock:
    """The database's clock (MySQL), so hosts with skewed clocks agree on ages and due times.

    An exact reading costs a round trip; an inexact one is this host's clock plus the
    offset of the last exact reading (taken at every heartbeat), which spares the claim a
    round trip. SQLite lives on this host: its clock is ours. The offset is one reference
    swapped whole, so readers on any thread see an old or a new value, never half of one."""

    def __init__(self, url: str):
        self._local = is_sqlite(url)
        self._offset: dt.timedelta | None = None

    def now(self, conn: Connection, exact: bool = True) -> dt.datetime:
        if self._local:
            return utcnow()
        offset = self._offset
        if not exact and offset is not None:
            return utcnow() + offset
        now = conn.execute(select(func.utc_timestamp(6))).scalar_one()
        self._offset = now - utcnow()
        return now


class NodeNameLock:
    """The lock that says a node name is alive. MySQL: a server-side GET_LOCK held by one
    connection of ours; SQLite: flock on a file beside the database. Both die with us.

    `can_drop_while_alive`: a lock held through a connection (MySQL) can be lost while its
    holder lives (the connection was cut), so a free lock alone does not prove a name dead.
    Used by the heartbeat thread and, before it starts, by the main thread."""

    def __init__(self, url: str, read_engine: Engine):
        self.url = url
        self.engine = read_engine
        self.can_drop_while_alive = not is_sqlite(url)
        self._conn: Connection | None = None
        self._name = ""
        self._fd: int | None = None

    def hold(self, node: str) -> bool:
        """Take the lock for `node`; False if a live daemon holds it."""
        digest = hashlib.sha1(node.encode()).hexdigest()
        if not self.can_drop_while_alive:
            path = make_url(self.url).database
            if not path or path == ":memory:":
                return True
            fd = os.open(f"{path}-node-{digest[:16]}.lock", os.O_RDWR | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            return True
        self._name = "upq:" + digest
        return self._take()

    def _take(self) -> bool:
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.execute(select(func.get_lock(self._name, 0))).scalar()
        except SQLAlchemyError:
            conn.close()
            raise
        if got != 1:
            conn.close()
            return False
        if self._conn is not None:
            self._conn.close()
        self._conn = conn
        return True

    def still_held(self) -> bool:
        """Heartbeat check (and keep-alive) of the MySQL lock, retaken when its connection was
        cut. False only when another daemon holds the name now."""
        if self._conn is None:
            return True
        try:
            if self._conn.execute(select(func.is_used_lock(self._name) == func.connection_id())).scalar():
                return True
        except SQLAlchemyError:
            pass
        try:
            return self._take()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(describe(exc)) from exc

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.release()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
