"""Schema migrations (Alembic) run from the installed package, and the check that the schema is current."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from campaign.config import redact_url
from campaign.errors import CampaignError

MIGRATIONS = Path(__file__).parent / "migrations"


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Create or upgrade the schema to head; returns (revision before, revision after)."""
    before = current(engine)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return before, head()


def require_current(engine: Engine) -> None:
    """Raise a clear error when the database has no schema or an older one."""
    rev = current(engine)
    if rev == head():
        return
    where = redact_url(str(engine.url.render_as_string(hide_password=True)))
    if rev is None:
        raise CampaignError(f"the database {where} has no campaign schema yet: run `campaign db upgrade`")
    raise CampaignError(f"the database {where} is at schema {rev}, this campaign needs {head()}: "
                        "run `campaign db upgrade`")
