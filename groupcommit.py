"""Group commit: one writer thread runs the writes waiting at that moment in one transaction.

Concurrent submissions, claims and outcomes share one commit (one fsync on
SQLite), and SQLite gets a single writing connection, so writers never fight
over its lock. Single-row inserts queued together become one executemany.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

from sqlalchemy import Table, insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

WRITE_BATCH = 1000              # most operations in one transaction
T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """The database cannot be reached or refused the work; str() is the reason."""


class RowInsert:
    """A write operation inserting one row; neighbours in a batch become one executemany."""

    def __init__(self, table: Table, values: dict[str, Any]):
        self.table = table
        self.values = values

    def __call__(self, conn: Connection) -> int:
        return int(conn.execute(insert(self.table), self.values).inserted_primary_key[0])


def is_transient(exc: BaseException) -> bool:
    """Deadlock, lock wait timeout (MySQL) or a busy SQLite file: worth retrying."""
    orig = getattr(exc, "orig", None)
    code = orig.args[0] if orig is not None and orig.args else None
    return code in (1213, 1205) or "database is locked" in str(exc)


def is_connection_problem(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or type(exc).__name__ in ("OperationalError", "InterfaceError"))


def describe(exc: BaseException) -> str:
    """A one-line reason for the client, without SQL or parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return f"database unavailable: {text.splitlines()[0] if text else type(exc).__name__}"


class Writer:
    """One thread, one connection: runs queued write operations in shared transactions."""

    def __init__(self, engine: Engine, logger: logging.Logger):
        self.engine = engine
        self.log = logger
        self.queue: "queue.SimpleQueue[tuple[Callable[[Connection], Any], Future[Any]] | None]" = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="db-writer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join(timeout=10)

    def submit(self, fn: Callable[[Connection], T]) -> "Future[T]":
        fut: Future[T] = Future()
        self.queue.put((fn, fut))
        return fut

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < WRITE_BATCH:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                batch.append(nxt)
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[Callable[[Connection], Any], "Future[Any]"]]) -> None:
        for attempt in range(5):
            try:
                results = self._transaction([fn for fn, _ in batch])
            except Exception as exc:  # noqa: BLE001 - the writer must never die
                if is_transient(exc) and attempt < 4:
                    time.sleep(0.05 * 2 ** attempt)
                    continue
                if isinstance(exc, DBAPIError) and exc.connection_invalidated and attempt == 0:
                    continue        # a connection the server dropped while idle: once more, afresh
                if is_connection_problem(exc) or len(batch) == 1:
                    self.log.warning("database write failed (%d operations): %s", len(batch), exc)
                    err = DatabaseUnavailable(describe(exc)) if isinstance(exc, SQLAlchemyError) else exc
                    for _, fut in batch:
                        fut.set_exception(err)
                    return
                # one bad operation must not sink the others: run each on its own
                for pair in batch:
                    self._run_batch([pair])
                return
            for (_, fut), res in zip(batch, results):
                fut.set_result(res)
            return

    def _transaction(self, ops: list[Callable[[Connection], Any]]) -> list[Any]:
        results: list[Any] = [None] * len(ops)
        with self.engine.begin() as conn:
            bulk = [i for i, op in enumerate(ops) if isinstance(op, RowInsert)]
            if len(bulk) > 1 and conn.dialect.insert_executemany_returning_sort_by_parameter_order:
                table = ops[bulk[0]].table  # type: ignore[attr-defined]
                pk = list(table.primary_key.columns)[0]
                rows = conn.execute(insert(table).returning(pk, sort_by_parameter_order=True),
                                    [ops[i].values for i in bulk])  # type: ignore[attr-defined]
                for i, (jobid,) in zip(bulk, rows):
                    results[i] = int(jobid)
                merged = set(bulk)
            else:
                merged = set()
            for i, op in enumerate(ops):
                if i not in merged:
                    results[i] = op(conn)
        return results
