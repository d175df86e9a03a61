"""Audit events: who did what, when, to which campaign. Written in the caller's transaction."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, insert

from campaign.db import utcnow
from campaign.models import AUDIT_EVENT


def record(conn: Connection, actor: str, action: str, campaign_id: int | None = None,
           **detail: Any) -> None:
    conn.execute(insert(AUDIT_EVENT).values(
        at=utcnow(), actor=actor, campaign_id=campaign_id, action=action,
        detail=json.dumps(detail, sort_keys=True, default=str, ensure_ascii=False)))
