"""Registering campaigns from their definitions, and reading them back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, case, delete, func, insert, select, update

from campaign import audit, db
from campaign.definition import Definition, parse_definition
from campaign.errors import NotFound, StateError
from campaign.models import (
    CAMPAIGN,
    CANCELLED,
    CHANGED,
    DELIVERY,
    DRAFT,
    PAUSED,
    SCHEDULED,
    SENT,
    SETTING_CHANGE,
    SETTLED_STATES,
    STEP,
    WAVE,
)

C, W, D, S = CAMPAIGN, WAVE, DELIVERY, SETTING_CHANGE


@dataclass(frozen=True)
class CampaignRow:
    id: int
    slug: str
    name: str
    state: str
    state_reason: str | None
    cutoff: dt.datetime
    definition: Definition
    created_at: dt.datetime
    created_by: str
    scheduled_at: dt.datetime | None
    rolled_back_at: dt.datetime | None


def get(conn: Connection, slug: str) -> CampaignRow:
    """The campaign named `slug`, its definition parsed from the frozen text."""
    row = conn.execute(select(C).where(C.c.slug == slug)).mappings().first()
    if row is None:
        known = conn.execute(select(C.c.slug).order_by(C.c.slug)).scalars().all()
        hint = f" (known: {', '.join(known)})" if known else " (no campaign has been created yet)"
        raise NotFound(f"no campaign {slug!r}{hint}")
    definition = parse_definition(row["definition"], row["source"])
    return CampaignRow(id=row["id"], slug=row["slug"], name=row["name"], state=row["state"],
                       state_reason=row["state_reason"], cutoff=row["cutoff"], definition=definition,
                       created_at=row["created_at"], created_by=row["created_by"],
                       scheduled_at=row["scheduled_at"], rolled_back_at=row["rolled_back_at"])


Check = Callable[[Connection, Definition], None]


def create(engine: Engine, definition: Definition, actor: str, *, replace: bool = False,
           dry_run: bool = False, check: Check | None = None) -> dict[str, Any]:
    """Register the campaign. `check` runs inside the transaction (rendering every wave × locale);
    any error it raises leaves nothing written. `replace` swaps the definition of a draft."""
    with db.write(engine) as conn:
        existing = conn.execute(select(C.c.id, C.c.state).where(C.c.slug == definition.slug)).first()
        if existing is not None:
            if not replace:
                raise StateError(f"campaign {definition.slug!r} exists already (state {existing.state}); "
                                 "use --replace to change a campaign that is not scheduled yet")
            if existing.state != DRAFT:
                raise StateError(f"campaign {definition.slug!r} is {existing.state}: its definition is frozen")
            used = conn.execute(select(func.count()).select_from(D).where(D.c.campaign_id == existing.id)
                                ).scalar_one()
            used += conn.execute(select(func.count()).select_from(S)
                                 .where(S.c.campaign_id == existing.id)).scalar_one()
            if used:
                raise StateError(f"campaign {definition.slug!r} has already sent or changed something: "
                                 "its definition is frozen; create a new campaign instead")
            conn.execute(delete(STEP).where(STEP.c.campaign_id == existing.id))
            conn.execute(delete(W).where(W.c.campaign_id == existing.id))
            conn.execute(update(C).where(C.c.id == existing.id).values(**_campaign_values(definition)))
            campaign_id = existing.id
        else:
            campaign_id = conn.execute(insert(C).values(
                slug=definition.slug, state=DRAFT, created_at=db.utcnow(), created_by=actor,
                **_campaign_values(definition))).inserted_primary_key[0]  # type: ignore[index]
        for position, wave in enumerate(definition.waves):
            conn.execute(insert(W).values(campaign_id=campaign_id, name=wave.name, position=position,
                                          at=wave.at, audience=wave.audience, expires=wave.expires,
                                          state="waiting"))
        if check is not None:
            check(conn, definition)
        audit.record(conn, actor, "campaign.replace" if existing else "campaign.create", campaign_id,
                     source=definition.source, cutoff=definition.cutoff.isoformat(),
                     waves=[w.name for w in definition.waves])
        if dry_run:
            conn.rollback()
    return {"campaign": definition.slug, "id": campaign_id, "replaced": existing is not None,
            "dry_run": dry_run, "cutoff": definition.cutoff.isoformat(),
            "waves": [{"name": w.name, "at": w.at.isoformat(), "expires": w.expires.isoformat(),
                       "audience": w.audience} for w in definition.waves]}


def _campaign_values(d: Definition) -> dict[str, Any]:
    return {"name": d.name, "definition": d.text, "source": d.source, "template": d.template,
            "setting": d.setting, "from_value": d.from_value, "to_value": d.to_value, "cutoff": d.cutoff}


def list_campaigns(conn: Connection) -> list[dict[str, Any]]:
    """Every campaign with its state, cutoff and progress (deliveries settled of all, changes made)."""
    settled = func.sum(case((D.c.state.in_(SETTLED_STATES), 1), else_=0))
    sent = func.sum(case((D.c.state == SENT, 1), else_=0))
    progress = {r.campaign_id: (int(r.total), int(r.settled or 0), int(r.sent or 0)) for r in conn.execute(
        select(D.c.campaign_id, func.count().label("total"), settled.label("settled"), sent.label("sent"))
        .group_by(D.c.campaign_id)).all()}
    changes = {r.campaign_id: int(r.n) for r in conn.execute(
        select(S.c.campaign_id, func.count().label("n")).where(S.c.state == CHANGED)
        .group_by(S.c.campaign_id)).all()}
    out = []
    for row in conn.execute(select(C).order_by(C.c.cutoff, C.c.slug)).mappings():
        total, done, n_sent = progress.get(row["id"], (0, 0, 0))
        out.append({"campaign": row["slug"], "name": row["name"], "state": row["state"],
                    "cutoff": row["cutoff"].isoformat(), "deliveries": total, "settled": done, "sent": n_sent,
                    "devices_changed": changes.get(row["id"], 0)})
    return out


def set_state(conn: Connection, slug: str, action: str, actor: str) -> str:
    """pause | resume | cancel, with an audit event; returns what happened, in words."""
    c = get(conn, slug)
    if c.state == CANCELLED:
        raise StateError(f"campaign {slug!r} is cancelled: it cannot be {action}d")
    if action == "pause":
        if c.state == PAUSED:
            return f"{slug} is already paused"
        conn.execute(update(C).where(C.c.id == c.id).values(state=PAUSED, state_reason=f"paused by {actor}"))
        message = f"{slug} paused: sending stops after the batches in flight"
    elif action == "resume":
        paused_waves = conn.execute(update(W).where(W.c.campaign_id == c.id, W.c.state == "paused")
                                    .values(state="waiting", paused_reason=None)).rowcount
        if c.state != PAUSED and not paused_waves:
            return f"{slug} is not paused"
        back = SCHEDULED if c.scheduled_at is not None else DRAFT
        conn.execute(update(C).where(C.c.id == c.id).values(state=back, state_reason=None))
        message = f"{slug} resumed ({back})"
    elif action == "cancel":
        conn.execute(update(C).where(C.c.id == c.id).values(state=CANCELLED, state_reason=f"cancelled by {actor}"))
        conn.execute(update(STEP).where(STEP.c.campaign_id == c.id, STEP.c.state == "pending")
                     .values(state="cancelled"))
        message = f"{slug} cancelled: nothing more is sent, and the scheduled flip is removed"
    else:
        raise ValueError(action)
    audit.record(conn, actor, f"campaign.{action}", c.id)
    return message
