"""Alembic migrations of the plans database; `alembic upgrade head` from the project root."""

from importlib.resources import files

from alembic import command
from alembic.config import Config


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration without alembic.ini, so it works from an installed package too."""
    config = Config()
    config.set_main_option("script_location", str(files(__package__)))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    # Leave the application's logging alone when migrating from inside it.
    config.attributes["configure_logging"] = False
    return config


def upgrade_to_head(url: str) -> None:
    command.upgrade(alembic_config(url), "head")
