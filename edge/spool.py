"""The edge's durable spool: where pushes wait while core is unreachable.

SQLite with `synchronous=FULL` in WAL mode: once `put` returns, the message survives a
crash or power loss, so the edge may tell WeChat `success`. If the write fails (disk
full, the configured size cap reached, I/O error) `put` raises `SpoolUnavailable` and the
edge does not acknowledge the push, so WeChat retries it. SQLite calls are blocking, so
they run on one dedicated thread that owns the connection.

The worker processes of one edge share the file (SQLite locks it; a writer waits up to
`_BUSY_MS` for another): each spools into it, and each replays from it, taking due
entries with a lease (`claim`) so that two workers do not replay the same entry at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Spool", "SpoolConflict", "SpoolEntry", "SpoolUnavailable"]

T = TypeVar("T")

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS spool (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id      TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    received_at REAL    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL    NOT NULL,
    message     BLOB    NOT NULL,
    signed      TEXT    NOT NULL DEFAULT '',
    body_sha256 TEXT    NOT NULL DEFAULT ''
)
""",
    "CREATE INDEX IF NOT EXISTS spool_due ON spool (next_try_at, id)",
)
# Columns added after the first release: a spool file written by it lacks them. They hold
# the push's signed "timestamp:nonce" and its message digest, so that a replay of a
# spooled push's URL with another message is refused (`conflicts`, `put`).
_ADDED_COLUMNS = {"signed": "TEXT NOT NULL DEFAULT ''", "body_sha256": "TEXT NOT NULL DEFAULT ''"}
_SIGNED_INDEX = "CREATE INDEX IF NOT EXISTS spool_signed ON spool (app_id, signed)"
_CONFLICT = "SELECT 1 FROM spool WHERE app_id = ? AND signed = ? AND body_sha256 != ? LIMIT 1"

_BUSY_MS = 5000  # how long a write waits for another process's write to finish
_CLAIM_BUSY_MS = 500  # the replayer's writes wait less: pushes queue behind them


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction, taken at once; any failure, the COMMIT's own included (a busy
    database without WAL), rolls it back, so the connection is never left inside one."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class SpoolUnavailable(Exception):
    """The spool cannot store a message (full, or a disk error)."""


class SpoolConflict(Exception):
    """A spooled push of the app has this "timestamp:nonce" with another message."""


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled push."""

    id: int
    app_id: str
    request_id: str
    received_at: float
    attempts: int
    message: bytes


class Spool:
    """A durable FIFO of serialized `InboundMessage`s."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-spool")
        # Reads (depth, conflicts) on a connection and thread of their own: in WAL mode
        # they never wait for a write, so a push's check does not queue behind a claim
        # that waits for another worker's write lock.
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-spool-read")
        self._db: sqlite3.Connection | None = None
        self._read_db: sqlite3.Connection | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _read(self, sql: str, args: tuple[Any, ...]) -> Any:
        def query() -> Any:
            if self._read_db is None:
                raise SpoolUnavailable("spool is not open")
            return self._read_db.execute(sql, args).fetchone()

        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, query)
        except sqlite3.Error as exc:
            raise SpoolUnavailable(f"spool read failed: {exc.__class__.__name__}") from exc

    async def open(self) -> None:
        """Create or open the database file (and bring an older one's schema up to date)."""
        await self._run(self._open)
        await asyncio.get_running_loop().run_in_executor(self._reader, self._open_reader)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")  # other edge workers share the file
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # durable before we acknowledge WeChat
        # Workers starting together: one at a time creates or upgrades the schema.
        try:
            with _immediate(db):
                for statement in _SCHEMA:
                    db.execute(statement)
                columns = {row[1] for row in db.execute("PRAGMA table_info(spool)")}
                for name, declaration in _ADDED_COLUMNS.items():
                    if name not in columns:
                        db.execute(f"ALTER TABLE spool ADD COLUMN {name} {declaration}")
                db.execute(_SIGNED_INDEX)
        except BaseException:
            db.close()
            raise
        # The cap comes after the schema: an old spool filled up to it during an outage
        # must still get its new index, or its pushes could never be replayed.
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        # SQLite itself refuses writes past this size ("database or disk is full").
        db.execute(f"PRAGMA max_page_count={max(self.max_bytes // page_size, 16)}")
        self._db = db

    def _open_reader(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        self._read_db = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolUnavailable("spool is not open")
        return self._db

    async def put(
        self,
        app_id: str,
        request_id: str,
        received_at: float,
        message: bytes,
        *,
        signed: str = "",
        body_sha256: str = "",
        deadline: float | None = None,
    ) -> int:
        """Store a message durably; raises `SpoolUnavailable` when it cannot.

        `signed` (the push's "timestamp:nonce") and `body_sha256` are what `conflicts`
        looks up; `SpoolConflict` when a spooled push has the same `signed` and another
        message (checked and stored in one transaction). `deadline` (`time.monotonic()`)
        bounds the whole write, waiting for the spool's thread and for another worker's
        write lock included (the push's budget); past it, `SpoolUnavailable`.
        """
        row = (app_id, request_id, received_at, received_at, message, signed, body_sha256)
        try:
            row_id: int = await self._run(self._put, row, deadline)
        except sqlite3.Error as exc:
            raise SpoolUnavailable(f"spool write failed: {exc.__class__.__name__}") from exc
        return row_id

    def _put(self, row: tuple[Any, ...], deadline: float | None) -> int:
        db = self._conn()
        app_id, signed, body_sha256 = row[0], row[5], row[6]
        busy_ms = _BUSY_MS
        if deadline is not None:  # measured here: the wait for this thread counts too
            busy_ms = int((deadline - time.monotonic()) * 1000)
            if busy_ms <= 0:
                raise SpoolUnavailable("no time left to write the spool")
        db.execute(f"PRAGMA busy_timeout={busy_ms}")
        try:
            with _immediate(db):  # the check and the insert as one, across workers
                if signed and db.execute(_CONFLICT, (app_id, signed, body_sha256)).fetchone():
                    raise SpoolConflict(signed)
                cursor = db.execute(
                    "INSERT INTO spool (app_id, request_id, received_at, next_try_at, message,"
                    " signed, body_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
        finally:
            db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        return int(cursor.lastrowid or 0)

    async def conflicts(self, app_id: str, signed: str, body_sha256: str) -> bool:
        """Whether a spooled push of the app has this "timestamp:nonce" but another message.

        Raises `SpoolUnavailable` when the spool cannot tell.
        """
        return await self._read(_CONFLICT, (app_id, signed, body_sha256)) is not None

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[SpoolEntry]:
        """Due entries, oldest first, leased until `now + lease_seconds`.

        Until the lease runs out (or the entry is removed, postponed or released) no
        other process sharing the spool gets it from `claim`.
        """
        try:
            rows = await self._run(self._claim, now, limit, now + lease_seconds)
        except sqlite3.Error as exc:
            raise SpoolUnavailable(f"spool claim failed: {exc.__class__.__name__}") from exc
        return [SpoolEntry(*row) for row in rows]

    def _claim(self, now: float, limit: int, leased_until: float) -> list[tuple[Any, ...]]:
        db = self._conn()
        # Briefly: pushes to spool wait behind a claim on this thread; it can try later.
        db.execute(f"PRAGMA busy_timeout={_CLAIM_BUSY_MS}")
        try:
            with _immediate(db):  # one claimant at a time across processes
                rows = db.execute(
                    "SELECT id, app_id, request_id, received_at, attempts, message FROM spool"
                    " WHERE next_try_at <= ? ORDER BY id LIMIT ?",
                    (now, limit),
                ).fetchall()
                db.executemany(
                    "UPDATE spool SET next_try_at = ? WHERE id = ?",
                    [(leased_until, row[0]) for row in rows],
                )
        finally:
            db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        return rows

    async def release(self, entry_ids: list[int], now: float) -> None:
        """Give back claimed entries that were not attempted: due again at once."""
        await self._bookkeep(
            "UPDATE spool SET next_try_at = ? WHERE id = ?", [(now, i) for i in entry_ids]
        )

    async def remove(self, entry_id: int) -> None:
        """Forget a delivered (or dropped) entry."""
        await self._bookkeep("DELETE FROM spool WHERE id = ?", [(entry_id,)])

    async def postpone(self, entry_id: int, attempts: int, next_try_at: float) -> None:
        """Record a failed attempt and when to try again."""
        await self._bookkeep(
            "UPDATE spool SET attempts = ?, next_try_at = ? WHERE id = ?",
            [(attempts, next_try_at, entry_id)],
        )

    async def _bookkeep(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """The replayer's writes: like its claim, they wait briefly for another worker's
        lock (pushes to spool queue behind them on this thread) and fail as
        `SpoolUnavailable`; the replayer tries again later (a leased entry comes back)."""

        def write() -> None:
            db = self._conn()
            db.execute(f"PRAGMA busy_timeout={_CLAIM_BUSY_MS}")
            try:
                db.executemany(sql, rows)
            finally:
                db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")

        try:
            await self._run(write)
        except sqlite3.Error as exc:
            raise SpoolUnavailable(f"spool write failed: {exc.__class__.__name__}") from exc

    async def depth(self) -> int:
        """How many entries wait; raises `SpoolUnavailable` when the spool cannot tell."""
        return int((await self._read("SELECT COUNT(*) FROM spool", ()))[0])

    async def close(self) -> None:
        """Close the database and its thread."""
        loop = asyncio.get_running_loop()
        if self._read_db is not None:
            await loop.run_in_executor(self._reader, self._read_db.close)
            self._read_db = None
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._reader.shutdown(wait=True)
        self._executor.shutdown(wait=True)
