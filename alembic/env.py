"""Alembic environment: runs Bulkhead's raw-SQL migrations through SQLAlchemy's asyncpg dialect.

SQLAlchemy lives only here; the service itself talks to Postgres through asyncpg.
"""

import asyncio

from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from app.db.urls import sqlalchemy_url


def _url() -> str:
    configured = context.config.get_main_option("sqlalchemy.url")
    if configured:
        return configured
    from app.config import get_settings

    owner = get_settings().db.url
    if not owner:
        raise SystemExit("no database: set DATABASE_URL or BULKHEAD_DB__URL")
    return sqlalchemy_url(owner)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
