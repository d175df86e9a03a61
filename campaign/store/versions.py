"""The files of each version of a campaign's definition (`version_file`). The caller owns the transaction."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, func, insert, select

from campaign.models import VERSION_FILE

V = VERSION_FILE


def add(conn: Connection, campaign_id: int, version: int, files: Mapping[str, tuple[str, str]]) -> int:
    """Store `files` (path -> (sha256, body)) as the campaign's version `version`; returns how many."""
    rows = [{"campaign_id": campaign_id, "version": version, "path": path, "sha256": digest, "body": body}
            for path, (digest, body) in sorted(files.items())]
    if rows:
        conn.execute(insert(V), rows)
    return len(rows)


def files(conn: Connection, campaign_id: int, version: int) -> dict[str, tuple[str, str]]:
    """The version's files: path -> (sha256, body); empty when that version was not kept."""
    return {r.path: (r.sha256, r.body) for r in conn.execute(
        select(V.c.path, V.c.sha256, V.c.body).where(V.c.campaign_id == campaign_id, V.c.version == version))}


def latest(conn: Connection, campaign_id: int) -> int | None:
    """The campaign's newest version with its files kept, if any."""
    return conn.execute(select(func.max(V.c.version)).where(V.c.campaign_id == campaign_id)).scalar()
