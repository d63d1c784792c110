"""Group commit: one writer thread runs the writes waiting at that moment in one transaction.

Concurrent submissions, claims and outcomes share one commit (one fsync on
SQLite), and SQLite gets a single writing connection, so writers never fight
over its lock. Operations of one `Batchable` kind queued together (single-row
inserts, finished runs) become one executemany: the writer thread's CPU, not
the disk, is what limits a busy daemon, and one statement for many rows is what
saves it.
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


class MergeMismatch(Exception):
    """A merged statement touched fewer rows than it had operations: run them one by one."""


class Batchable:
    """A write operation that runs with the others of its kind in the batch as one statement.

    The merged groups run first, before the batch's other operations: only kinds whose
    order against concurrent work does not matter may be Batchable. `run_many` raises
    MergeMismatch when it cannot vouch for every result; the batch then runs again,
    unmerged, each operation through `__call__`."""

    def __call__(self, conn: Connection) -> Any:
        raise NotImplementedError

    @classmethod
    def run_many(cls, conn: Connection, ops: list[Any]) -> list[Any]:
        return [op(conn) for op in ops]


class RowInsert(Batchable):
    """A write operation inserting one row; its result is the new primary key."""

    def __init__(self, table: Table, values: dict[str, Any]):
        self.table = table
        self.values = values

    def __call__(self, conn: Connection) -> int:
        return int(conn.execute(insert(self.table), self.values).inserted_primary_key[0])

    @classmethod
    def run_many(cls, conn: Connection, ops: list[Any]) -> list[Any]:
        if len(ops) == 1 or not conn.dialect.insert_executemany_returning_sort_by_parameter_order:
            return [op(conn) for op in ops]
        table = ops[0].table
        pk = list(table.primary_key.columns)[0]
        rows = conn.execute(insert(table).returning(pk, sort_by_parameter_order=True),
                            [op.values for op in ops])
        return [int(jobid) for (jobid,) in rows]


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
                try:
                    results = self._transaction([fn for fn, _ in batch], merge=True)
                except MergeMismatch:
                    results = self._transaction([fn for fn, _ in batch], merge=False)
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

    def _transaction(self, ops: list[Callable[[Connection], Any]], merge: bool) -> list[Any]:
        results: list[Any] = [None] * len(ops)
        groups: dict[type, list[int]] = {}
        if merge:
            for i, op in enumerate(ops):
                if isinstance(op, Batchable):
                    groups.setdefault(type(op), []).append(i)
        with self.engine.begin() as conn:
            merged: set[int] = set()
            for kind, idx in groups.items():
                if len(idx) > 1:
                    for i, res in zip(idx, kind.run_many(conn, [ops[i] for i in idx])):
                        results[i] = res
                    merged.update(idx)
            for i, op in enumerate(ops):
                if i not in merged:
                    results[i] = op(conn)
        return results
