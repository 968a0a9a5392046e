"""Connection-URL helpers shared by the service, its CLIs, alembic and the dev launcher."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from app.config import DatabaseSettings


def with_user(url: str, user: str, password: str | None = None) -> str:
    """Return `url` with its user (and password) replaced, keeping host, port, db and query."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    credentials = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}"))


def with_database(url: str, database: str) -> str:
    """Return `url` pointing at another database on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def sqlalchemy_url(url: str) -> str:
    """Turn a libpq-style URL into one for SQLAlchemy's asyncpg dialect."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def database_name(url: str) -> str:
    """The database a URL names (`postgres` when it names none)."""
    return urlsplit(url).path.lstrip("/") or "postgres"


def runtime_url(db: DatabaseSettings) -> str:
    """The runtime (non-owner) role's connection string: `app_url`, else `url` as `app_role`.

    Raises:
        RuntimeError: No database is configured.
    """
    if db.app_url:
        return db.app_url
    if not db.url:
        raise RuntimeError("no database configured: set DATABASE_URL (or run `bulkhead dev`)")
    return with_user(db.url, db.app_role)
