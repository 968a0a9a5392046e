"""`bulkhead export` and `bulkhead forget`: a user's stored data, for GDPR requests.

Both run as the runtime role inside the user's tenant, so Row-Level Security confines them to
it even when the owner role is a superuser. They need the master key (or the Transit KEK) to
open sealed messages.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from app.chat import repository
from app.chat.conversations import user_export
from app.chat.crypto import ConversationCipher
from app.config import Settings
from app.db.instance import data_dir_option, instance_settings
from app.db.pool import Connection
from app.identity.cli import in_tenant
from app.secrets.kek import MasterKeyError, load_master_key
from app.secrets.local import TenantKeyMissing


def _cipher(settings: Settings) -> ConversationCipher:
    try:
        return ConversationCipher.from_settings(settings, load_master_key(settings))
    except MasterKeyError as exc:
        raise click.ClickException(str(exc)) from exc


def _write(records: list[dict[str, Any]], fmt: str, out: TextIO) -> None:
    if fmt == "ndjson":
        for record in records:
            out.write(json.dumps(record, default=str) + "\n")
        return
    header, rest = records[0], records[1:]
    document = {
        **{k: v for k, v in header.items() if k != "type"},
        "conversations": [r for r in rest if r["type"] == "conversation"],
        "usage": [r for r in rest if r["type"] == "usage"],
    }
    out.write(json.dumps(document, default=str, indent=2) + "\n")


@click.command("export")
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--user", "user_id", required=True, help="The user's subject (JWT `sub`).")
@click.option(
    "--format", "fmt", type=click.Choice(["ndjson", "json"]), default="ndjson", show_default=True
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file (created 0600) instead of stdout.",
)
@data_dir_option
def export(tenant: str, user_id: str, fmt: str, output: Path | None, data_dir: Path | None) -> None:
    """Export a user's conversations (decrypted) and usage rows."""
    settings = instance_settings(data_dir)
    cipher = _cipher(settings)

    async def work(connection: Connection) -> list[dict[str, Any]]:
        try:
            return [
                r
                async for r in user_export(
                    connection, cipher=cipher, tenant_id=tenant, user_id=user_id
                )
            ]
        except TenantKeyMissing as exc:
            raise click.ClickException(str(exc)) from exc

    records = in_tenant(settings, tenant, work)
    if output is None:
        _write(records, fmt, sys.stdout)
        return
    # Personal data: readable by the operator only.
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        _write(records, fmt, out)
    click.echo(f"{output}: {len(records) - 1} records", err=True)


@click.command("forget")
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--user", "user_id", required=True, help="The user's subject (JWT `sub`).")
@click.option("--yes", is_flag=True, help="Confirm: the conversations cannot be recovered.")
@data_dir_option
def forget(tenant: str, user_id: str, yes: bool, data_dir: Path | None) -> None:
    """Delete every conversation (messages, retrieved context) of a user."""
    if not yes:
        raise click.ClickException("this deletes the user's conversations for good: add --yes")

    async def work(connection: Connection) -> int:
        return await repository.delete_user_conversations(connection, user_id=user_id)

    deleted = in_tenant(instance_settings(data_dir), tenant, work)
    click.echo(f"{tenant}/{user_id}: {deleted} conversations deleted")
