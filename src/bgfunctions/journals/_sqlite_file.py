"""The file of a :class:`~bgfunctions.journals.sqlite.SQLiteJournal`: what is checked before
anything writes to it, its schema and migrations, and its connections."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from bgfunctions.errors import JournalError
from bgfunctions.journals._sql import SCHEMA_VERSION, check_version

__all__ = ["APPLICATION_ID", "SQLiteFile"]

APPLICATION_ID = 0x62676631
"""``PRAGMA application_id`` of a journal file (ASCII ``bgf1``)."""

_MAGIC = b"SQLite format 3\x00"


def _move_bodies(conn: sqlite3.Connection) -> None:
    """Schema 2: each row's body moves from its JSON to the ``body`` column, a few rows at a
    time (a backlog's bodies are never all in memory at once)."""
    conn.execute("ALTER TABLE invocations ADD COLUMN body BLOB")
    last = -1
    while True:
        rows = conn.execute(
            "SELECT rowid, record FROM invocations WHERE rowid > ? ORDER BY rowid LIMIT 64",
            (last,),
        ).fetchall()
        if not rows:
            return
        for rowid, text in rows:
            data = json.loads(text)
            body = base64.b64decode(data.pop("body", ""))
            data["body_size"] = len(body)
            conn.execute(
                "UPDATE invocations SET record = ?, body = ? WHERE rowid = ?",
                (json.dumps(data, separators=(",", ":"), allow_nan=False), body, rowid),
            )
        last = rows[-1][0]


# _MIGRATIONS[n] takes a file from user_version n to n + 1, inside one transaction: SQL
# statements separated by semicolons, or a function of the connection.
_MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    """
    CREATE TABLE invocations (
        request_id    TEXT PRIMARY KEY NOT NULL,
        function      TEXT NOT NULL,
        state         TEXT NOT NULL,
        attempts      INTEGER NOT NULL,
        accepted_at   REAL NOT NULL,
        next_run_at   REAL,
        finished_at   REAL,
        lease_owner   TEXT,
        lease_expires REAL,
        record        TEXT NOT NULL
    );
    CREATE INDEX invocations_state_next ON invocations (state, next_run_at);
    CREATE INDEX invocations_function_accepted ON invocations (function, accepted_at);
    CREATE INDEX invocations_finished ON invocations (finished_at);
    """,
    _move_bodies,
    "ALTER TABLE invocations ADD COLUMN steps TEXT",
    "ALTER TABLE invocations ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


class SQLiteFile:
    """Opens the journal file at ``path``: refuses one that is not ours (or is newer), creates
    or migrates the schema, switches it to WAL, and makes its connections."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["FULL", "NORMAL"],
        busy_timeout: float,
        max_size_bytes: int | None,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.max_size_bytes = max_size_bytes

    def refuse(self, why: str) -> JournalError:
        return JournalError(f"SQLiteJournal: refusing {str(self.path)!r}: {why}")

    def refuse_read_only(self, cause: str) -> JournalError:
        return self.refuse(
            f"it is read-only for this process ({cause}); bgfunctions records every "
            "invocation in it, so make the file and its directory writable, or read it with "
            "SQLiteJournal(path, read_only=True), as `bgfunctions invocations` does"
        )

    def open_reader_only(self) -> sqlite3.Connection:
        """For ``read_only``: check that the file is a journal this code reads; a connection."""
        if not self.path.is_file():
            raise self.refuse("expected an existing journal file to read; found none")
        with open(self.path, "rb") as f:
            head = f.read(100)
        if not head.startswith(_MAGIC):
            raise self.refuse(
                f"expected a SQLite database (header {_MAGIC!r}), found {head[:16]!r}"
            )
        conn = self.connect_read_only()
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            self.check_identity(app_id, version, objects)
            if version < SCHEMA_VERSION:
                raise self.refuse(
                    f"expected schema version {SCHEMA_VERSION} to read it read-only, found "
                    f"{version}: open it once for writing (bgfunctions serve) to migrate it"
                )
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self.refuse(f"it is not a readable SQLite database ({exc})") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def connect_read_only(self) -> sqlite3.Connection:
        """A connection that writes nothing, not even WAL's shared-memory file. Where that file
        cannot be made (a read-only directory) and no WAL file holds commits, all the data is
        in the database file, which is then read as immutable."""
        uri = self.path.resolve().as_uri()
        conn = self.connect_uri(f"{uri}?mode=ro")
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            wal = Path(f"{self.path}-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise self.refuse(
                    f"cannot read it read-only ({exc}), and its WAL file holds commits that "
                    "only a connection able to create its -shm file can read"
                ) from exc
        return self.connect_uri(f"{uri}?mode=ro&immutable=1")

    def connect_uri(self, uri: str) -> sqlite3.Connection:
        return sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
        )

    def inspect(self) -> None:
        """Refuse a file that is not ours before anything could write to it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise self.refuse(f"cannot create it ({exc.strerror})") from exc
        else:
            os.close(fd)  # new and empty; SQLite gives -wal/-shm the db file's permissions
            return
        if not os.access(self.path, os.W_OK):
            raise self.refuse_read_only("no write permission on the file")
        with open(self.path, "rb") as f:
            head = f.read(100)
        if not head:
            return  # empty: created by us (or touched); SQLite treats it as a new database
        if not head.startswith(_MAGIC):
            raise self.refuse(
                f"expected a SQLite database (header {_MAGIC!r}), found {head[:16]!r}"
            )
        # Read-only: a refused file must stay byte for byte as it was.
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise self.refuse(f"cannot open it read-only ({exc})") from exc
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            if "readonly" in str(exc):  # WAL's -shm file cannot be made: a read-only directory
                raise self.refuse_read_only(str(exc)) from exc
            raise self.refuse(f"it is not a readable SQLite database ({exc})") from exc
        finally:
            conn.close()
        self.check_identity(app_id, version, objects)
        if problems != ["ok"]:
            raise self.refuse(f"PRAGMA quick_check found damage: {'; '.join(problems)}")

    def check_identity(self, app_id: int, version: int, objects: int) -> None:
        if app_id != APPLICATION_ID and (app_id != 0 or objects):
            raise self.refuse(
                f"expected a bgfunctions journal (application_id {APPLICATION_ID:#x}), found "
                f"application_id {app_id:#x} with {objects} schema objects: another "
                "application's database"
            )
        check_version(version, self.refuse)

    def open_writer(self) -> sqlite3.Connection:
        conn = self.connect()
        try:
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # The schema is created in rollback mode, so the main file holds it from the start
            # (a header check of the bare file then sees our application_id).
            conn.execute("BEGIN IMMEDIATE")
            try:
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                self.check_identity(app_id, version, objects)
                for step in range(version, SCHEMA_VERSION):
                    migration = _MIGRATIONS[step]
                    if callable(migration):
                        migration(conn)
                        continue
                    for statement in migration.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                if version < SCHEMA_VERSION or app_id != APPLICATION_ID:
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise self.refuse(f"expected to switch it to WAL mode, SQLite answered {mode!r}")
            if self.max_size_bytes is not None:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                pages = max(1, self.max_size_bytes // page_size)
                conn.execute(f"PRAGMA max_page_count = {pages}")
        except sqlite3.Error as exc:
            conn.close()
            if "readonly" in str(exc):
                raise self.refuse_read_only(str(exc)) from exc
            raise self.refuse(f"cannot open it for writing ({exc})") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        return conn
