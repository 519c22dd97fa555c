"""Engine, sessions and schema migrations (Alembic) for any SQLAlchemy URL; SQLite by default.

Every process that opens the database brings the schema to the newest revision first. Several replicas of
the service may start at the same moment, so the upgrade runs under a lock that all of them share: a
PostgreSQL advisory lock held for the migration's transaction, or a file lock next to a SQLite file. The
first one in migrates; the others then find the schema at head and do nothing.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mmrag.errors import MmragError
from mmrag.store.revision import MIGRATIONS_DIR, head_revision

# Key of the PostgreSQL advisory lock taken around migrations ("mmrag" + 1, as a signed 64-bit int):
# any process that migrates this database must use the same key.
MIGRATION_LOCK_KEY = 0x6D6D726167_000001


class DatabaseError(MmragError):
    """The database cannot be reached or its URL cannot work."""


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _without_nul(value: Any) -> Any:
    return value.replace("\x00", "") if isinstance(value, str) and "\x00" in value else value


def _strip_nul_characters(
    _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, executemany: bool
) -> tuple[str, Any]:
    """PostgreSQL text cannot hold a NUL character, and SQLite stores it: text extracted from a PDF can
    carry one, which would fail the whole document on PostgreSQL only. NUL means nothing in text, so it is
    dropped from every string parameter (bytes, such as vectors, are left alone)."""

    def clean(params: Any) -> Any:
        if isinstance(params, dict):
            return {key: _without_nul(value) for key, value in params.items()}
        if isinstance(params, (list, tuple)):
            return type(params)(_without_nul(value) for value in params)
        return params

    if executemany and isinstance(parameters, (list, tuple)):
        return statement, [clean(params) for params in parameters]
    return statement, clean(parameters)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_pre_ping=True)
    if parsed.get_backend_name() == "postgresql":
        event.listen(engine, "before_cursor_execute", _strip_nul_characters, retval=True)
    return engine


@contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """pysqlite autocommits DDL outside SQLite's write lock, so two processes could both find an empty
    schema and both create it: serialise them on a lock file next to the database file."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).expanduser().with_name(Path(database).name + ".migrate-lock")
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while another process migrates, which is quick
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _postgres_migration_lock(connection: Connection) -> None:
    """Held until the migration's transaction ends (commit or rollback): a crash cannot leave it held."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def schema_is_current(engine: Engine) -> bool:
    """One query: is the database at the newest revision already? (Importing Alembic and its migration
    scripts costs most of a second, paid by every command otherwise.)"""
    try:
        with engine.connect() as connection:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:  # no schema yet
        return False
    return current == head_revision()


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision; safe when several processes do it at once."""
    if schema_is_current(engine):
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with _sqlite_migration_lock(engine), engine.begin() as connection:
        _postgres_migration_lock(connection)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


class Database:
    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = url
        try:
            self.engine = make_engine(url)
        except ImportError as exc:  # the URL names a driver that is not installed
            raise DatabaseError(
                f"database URL {safe_url(url)} needs a driver that is not installed ({exc}); for PostgreSQL: "
                "pip install 'mmrag[postgres]'"
            ) from exc
        except (ArgumentError, NoSuchModuleError) as exc:
            raise DatabaseError(f"database URL {safe_url(url)} cannot be used: {exc}") from exc
        if migrate:
            try:
                upgrade_schema(self.engine)
            except (OperationalError, InterfaceError) as exc:  # unreachable, refused, bad credentials
                self.engine.dispose()
                reason = str(exc.orig or exc).strip().splitlines()[0]
                raise DatabaseError(f"cannot open the database {safe_url(url)}: {reason}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
