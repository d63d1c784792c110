"""Group commit: one writer thread runs the writes waiting at that moment in one transaction.

Concurrent submissions, claims and outcomes share one commit (one fsync on
SQLite), and SQLite gets a single writing connection, so writers never fight
over its lock. Operations of one `Batchable` kind queued together (single-row
inserts, starts, finished runs) become one statement: the writer thread's CPU,
not the disk, is what limits a busy daemon, and one statement for many rows is
what saves it.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable, Generic, TypeVar

from sqlalchemy import Table, insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from upqerrors import DatabaseUnavailable

WRITE_BATCH = 1000              # most operations in one transaction
T = TypeVar("T")


class Pending(Generic[T]):
    """The result of a queued write, a lean stand-in for concurrent.futures.Future: every job
    makes three (store, start, outcome), and a Future's Condition and RLock cost more than the
    row's SQL. Waiters block on a latch released once; callbacks run in the writer thread."""

    __slots__ = ("_latch", "_lock", "_done", "_value", "_exc", "_callbacks", "_log")

    def __init__(self, logger: logging.Logger | None = None):
        self._latch = threading.Lock()
        self._latch.acquire()               # released when the result is in
        self._lock = threading.Lock()       # guards _done against add_done_callback
        self._done = False
        self._value: Any = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[["Pending[T]"], None]] = []
        self._log = logger

    def set_result(self, value: T) -> None:
        self._value = value
        self._finish()

    def set_exception(self, exc: BaseException) -> None:
        self._exc = exc
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            self._done = True
            callbacks, self._callbacks = self._callbacks, []
        self._latch.release()
        for fn in callbacks:
            self._call(fn)

    def _call(self, fn: Callable[["Pending[T]"], None]) -> None:
        try:
            fn(self)
        except Exception:  # noqa: BLE001 - one bad callback must not stop the writer
            (self._log or logging.getLogger("upq")).exception("a write's callback failed")

    def add_done_callback(self, fn: Callable[["Pending[T]"], None]) -> None:
        with self._lock:
            if not self._done:
                self._callbacks.append(fn)
                return
        self._call(fn)

    def done(self) -> bool:
        return self._done

    def _wait(self, timeout: float | None) -> None:
        if not self._done:
            if not self._latch.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                raise TimeoutError("the write was not committed in time")
            self._latch.release()           # let the next waiter through

    def result(self, timeout: float | None = None) -> T:
        """The value once committed; the write's exception, or TimeoutError, if not."""
        self._wait(timeout)
        if self._exc is not None:
            raise self._exc
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._exc

    @classmethod
    def resolved(cls, value: T) -> "Pending[T]":
        done: Pending[T] = cls()
        done.set_result(value)
        return done


class Mapped(Generic[T]):
    """fn applied to a Pending's value when it is read (no lock, no callback of its own)."""

    __slots__ = ("_inner", "_fn")

    def __init__(self, inner: Pending[Any], fn: Callable[[Any], T]):
        self._inner = inner
        self._fn = fn

    def result(self, timeout: float | None = None) -> T:
        return self._fn(self._inner.result(timeout))


class MergeMismatch(Exception):
    """A merged statement touched fewer rows than it had operations: run them one by one."""


class Batchable:
    """A write operation that runs with the others of its kind in the batch as one statement.

    The merged groups run first, before the batch's other operations, in the order of their
    kinds' `order` (a job's start before its outcome): only kinds whose order against
    concurrent work does not matter may be Batchable. `run_many` raises
    MergeMismatch when it cannot vouch for every result; the batch then runs again,
    unmerged, each operation through `__call__`."""

    order = 0

    def __call__(self, conn: Connection) -> Any:
        raise NotImplementedError

    @classmethod
    def run_many(cls, conn: Connection, ops: list[Any]) -> list[Any]:
        """The results of two or more operations of this kind, in their order."""
        raise NotImplementedError


class RowInsert(Batchable):
    """A write operation inserting one row; its result is the new primary key."""

    def __init__(self, table: Table, values: dict[str, Any]):
        self.table = table
        self.values = values

    def __call__(self, conn: Connection) -> int:
        return int(conn.execute(insert(self.table), self.values).inserted_primary_key[0])

    @classmethod
    def run_many(cls, conn: Connection, ops: list[Any]) -> list[Any]:
        if not conn.dialect.insert_executemany_returning_sort_by_parameter_order:
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


Op = Callable[[Connection], Any]
Retrying = Callable[[], bool]          # while it answers True, a write is retried through an outage
Item = tuple[Op, Pending[Any], "Retrying | None", float]     # op, its future, retry_while, next backoff
_NOTHING = object()


class DbHealth:
    """Database errors and outage time since start, for /metrics; fields under `_lock`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.errors = 0
        self._down_since: float | None = None
        self._down_total = 0.0

    def failed(self) -> None:
        with self._lock:
            self.errors += 1
            if self._down_since is None:
                self._down_since = time.monotonic()

    def worked(self) -> None:
        with self._lock:
            if self._down_since is not None:
                self._down_total += time.monotonic() - self._down_since
                self._down_since = None

    def snapshot(self) -> tuple[int, float]:
        """(errors, outage seconds so far, the current outage included)."""
        with self._lock:
            now = time.monotonic()
            return self.errors, self._down_total + (0.0 if self._down_since is None else now - self._down_since)


class Writer:
    """One thread, one connection: runs queued write operations in shared transactions.

    Every retry of a write happens here. A transaction that hit a deadlock, a lock wait
    or a busy file runs again at once (a few times, backing off). A write submitted with
    `retry_while` that failed because the database is away is queued again, backing off
    from RETRY_FIRST to RETRY_MAX seconds, for as long as `retry_while()` says so; at stop
    such writes fail with DatabaseUnavailable."""

    RETRY_FIRST, RETRY_MAX = 0.2, 5.0

    def __init__(self, engine: Engine, logger: logging.Logger):
        self.engine = engine
        self.log = logger
        self.queue: "queue.SimpleQueue[Item | None]" = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="db-writer", daemon=True)
        # writes waiting out an outage, as (due, seq, item); only the writer thread touches it
        self._later: list[tuple[float, int, Item]] = []
        self._seq = itertools.count()
        self.health = DbHealth()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join(timeout=10)

    def submit(self, fn: Callable[[Connection], T], retry_while: Retrying | None = None) -> Pending[T]:
        fut: Pending[T] = Pending(self.log)
        self.queue.put((fn, fut, retry_while, self.RETRY_FIRST))
        return fut

    def _loop(self) -> None:
        while True:
            timeout = max(0.0, self._later[0][0] - time.monotonic()) if self._later else None
            try:
                item: Any = self.queue.get(timeout=timeout)
            except queue.Empty:
                item = _NOTHING
            if item is None:
                self._drop_retries()
                return
            batch = self._due_retries()
            if item is not _NOTHING:
                batch.append(item)
            while batch and len(batch) < WRITE_BATCH:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                batch.append(nxt)
            if batch:
                self._run_batch(batch)

    def _due_retries(self) -> list[Item]:
        now = time.monotonic()
        out = []
        while self._later and self._later[0][0] <= now:
            out.append(heapq.heappop(self._later)[2])
        return out

    def _drop_retries(self) -> None:
        for _, _, (_, fut, _, _) in self._later:
            fut.set_exception(DatabaseUnavailable("database unavailable: upq stopped before the write "
                                                  "could be retried"))
        self._later.clear()

    def _fail(self, batch: list[Item], exc: BaseException) -> None:
        """Writes that may wait out the outage are queued again; the others fail."""
        err = DatabaseUnavailable(describe(exc)) if isinstance(exc, SQLAlchemyError) else exc
        self.health.failed()
        later = 0
        for fn, fut, retry_while, backoff in batch:
            if retry_while is not None and isinstance(err, DatabaseUnavailable) and retry_while():
                heapq.heappush(self._later, (time.monotonic() + backoff, next(self._seq),
                                             (fn, fut, retry_while, min(self.RETRY_MAX, backoff * 2))))
                later += 1
            else:
                fut.set_exception(err)
        if later:
            self.log.warning("%d write(s) will be retried in %.1f s or more", later, batch[0][3])

    def _run_batch(self, batch: list[Item]) -> None:
        for attempt in range(5):
            try:
                try:
                    results = self._transaction([item[0] for item in batch], merge=True)
                except MergeMismatch:
                    results = self._transaction([item[0] for item in batch], merge=False)
            except Exception as exc:  # noqa: BLE001 - the writer must never die
                if is_transient(exc) and attempt < 4:
                    time.sleep(0.05 * 2 ** attempt)
                    continue
                if isinstance(exc, DBAPIError) and exc.connection_invalidated and attempt == 0:
                    continue        # a connection the server dropped while idle: once more, afresh
                if is_connection_problem(exc) or len(batch) == 1:
                    self.log.warning("database write failed (%d operations): %s", len(batch), exc)
                    self._fail(batch, exc)
                    return
                # one bad operation must not sink the others: run each on its own
                for item in batch:
                    self._run_batch([item])
                return
            self.health.worked()
            for item, res in zip(batch, results):
                item[1].set_result(res)
            return

    def _transaction(self, ops: list[Op], merge: bool) -> list[Any]:
        results: list[Any] = [None] * len(ops)
        groups: dict[type, list[int]] = {}
        if merge:
            for i, op in enumerate(ops):
                if isinstance(op, Batchable):
                    groups.setdefault(type(op), []).append(i)
        with self.engine.begin() as conn:
            merged: set[int] = set()
            for kind, idx in sorted(groups.items(), key=lambda group: group[0].order):
                if len(idx) > 1:
                    for i, res in zip(idx, kind.run_many(conn, [ops[i] for i in idx])):
                        results[i] = res
                    merged.update(idx)
            for i, op in enumerate(ops):
                if i not in merged:
                    results[i] = op(conn)
        return results
