"""Schema migrations (Alembic) run from the installed package, and the check that the schema is current.

Every command checks the schema, so that check does not import Alembic (a third of a second of start-up):
the head is read off the revision files (`head()`, proven equal to Alembic's own in the tests) and the
current revision off the `alembic_version` table. Alembic itself is loaded only to upgrade.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from campaign.config import redact_url
from campaign.errors import CampaignError
from campaign.store import schema

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
_REVISION = re.compile(r'^(down_revision|revision)\s*(?::[^=]*)?=\s*(?:"([^"]*)"|\'([^\']*)\'|None)', re.MULTILINE)


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@cache
def head() -> str:
    """The newest revision: the one no other revision names as its `down_revision`."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for kind, double, single in _REVISION.findall(path.read_text(encoding="utf-8")):
            value = double or single
            if value:
                (revisions if kind == "revision" else parents).add(value)
    heads = revisions - parents
    if len(heads) != 1:
        raise CampaignError(f"the migrations in {MIGRATIONS} have {len(heads)} heads ({', '.join(sorted(heads))})")
    return heads.pop()


def current(engine: Engine) -> str | None:
    """The database's revision (None before the first `init`)."""
    with engine.connect() as conn:
        return schema.revision(conn)


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Create or upgrade the schema to head; returns (revision before, revision after)."""
    from alembic import command

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
