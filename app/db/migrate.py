"""Running the alembic migrations (the schema's only source of truth) from the CLI and tests."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command, context
from app.db.urls import sqlalchemy_url

_REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(owner_url: str, *, app_role: str) -> Config:
    """Alembic config for `owner_url`, found in the working directory or beside the package.

    Raises:
        FileNotFoundError: No `alembic.ini` in either place.
    """
    for root in (Path.cwd(), _REPO_ROOT):
        ini = root / "alembic.ini"
        if ini.is_file():
            config = Config(str(ini))
            config.set_main_option("script_location", str(root / "alembic"))
            config.set_main_option("sqlalchemy.url", sqlalchemy_url(owner_url).replace("%", "%%"))
            config.attributes["app_role"] = app_role
            return config
    raise FileNotFoundError("alembic.ini not found in the working directory or the install root")


def upgrade(owner_url: str, *, app_role: str, revision: str = "head") -> None:
    """Upgrade the database to `revision` as the owner role."""
    command.upgrade(alembic_config(owner_url, app_role=app_role), revision)


def app_role() -> str:
    """Inside a migration: the runtime role to grant to (`app_role` attribute or `-x` arg).

    Raises:
        ValueError: The name is not a plain identifier (it is spliced into GRANT statements).
    """
    role = (
        context.config.attributes.get("app_role")
        or context.get_x_argument(as_dictionary=True).get("app_role")
        or "bulkhead_app"
    )
    if not role.replace("_", "").isalnum():
        raise ValueError(f"invalid app role name: {role!r}")
    return str(role)
