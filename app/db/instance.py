"""`--data-dir` for operator commands, and the settings of the instance it names.

Operator commands (`keys`, `audit verify`, `export`, `forget`, `tenants`, `secrets`) act on a
configured deployment when `DATABASE_URL` is set, and otherwise on the dev instance whose data
dir they find (see `app/db/discovery.py`): running or stopped, no environment needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from app.db.discovery import NoDevDatabase, dev_database, locate_data_dir

if TYPE_CHECKING:
    from app.config import Settings

F = TypeVar("F", bound=Callable[..., object])


def data_dir_option(command: F) -> F:
    """Add `--data-dir` (passed as `data_dir`, None when not given) to a command."""
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The instance's state dir (default: $BULKHEAD_DATA_DIR, else .bulkhead here or in"
        " the nearest parent directory that has one).",
    )(command)


def instance_settings(data_dir: Path | None, *, database: bool = True) -> Settings:
    """The settings with the data dir located and, when `database`, a database to talk to.

    A configured database wins; otherwise the dev instance's in the data dir is used, started
    for this command if it is stopped (said on stderr, since stdout may carry a key).

    Raises:
        click.ClickException: `database` is asked for and there is none to find.
    """
    # Imported here: `bulkhead --help` loads this module for `--data-dir` and must not pay
    # for pydantic-settings (a tenth of a second).
    from app.config import get_settings

    settings = get_settings()
    located = locate_data_dir(data_dir, settings)
    settings = settings.model_copy(update={"data_dir": located})
    if not database or settings.db.url or settings.db.app_url:
        return settings
    try:
        found = dev_database(located)
    except NoDevDatabase as exc:
        raise click.ClickException(str(exc)) from exc
    if found.started:
        click.echo(
            f"the dev instance in {located} is stopped: its Postgres runs for this command",
            err=True,
        )
    db = settings.db.model_copy(update={"url": found.url})
    return settings.model_copy(update={"db": db})
