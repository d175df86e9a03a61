"""Registering campaigns from their definitions, and reading them back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import db, preflight, rollout, versions
from campaign.definition import Definition, load_definition, parse_definition
from campaign.errors import NotFound, StateError
from campaign.models import CANCELLED, DONE, DRAFT, PAUSED, SCHEDULED, STAGE_FINISHED
from campaign.notices.rendering import Renderer
from campaign.results import Fields
from campaign.store import audience
from campaign.store import campaigns as store
from campaign.store import stages as stage_rows
from campaign.store import steps as step_rows


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
    row = store.row(conn, slug)
    if row is None:
        known = store.slugs(conn)
        hint = f" (known: {', '.join(known)})" if known else " (no campaign has been created yet)"
        raise NotFound(f"no campaign {slug!r}{hint}")
    definition = parse_definition(row["definition"], row["source"])
    return CampaignRow(id=row["id"], slug=row["slug"], name=row["name"], state=row["state"],
                       state_reason=row["state_reason"], cutoff=row["cutoff"], definition=definition,
                       created_at=row["created_at"], created_by=row["created_by"],
                       scheduled_at=row["scheduled_at"], rolled_back_at=row["rolled_back_at"])


Check = Callable[[Connection, Definition], Any]
Authored = Callable[[Connection, Definition], dict[str, Any]]  # the author's proof, for the event (approval)


def create(engine: Engine, definition: Definition, actor: str, *, replace: bool = False,
           dry_run: bool = False, check: Check | None = None, templates: Path | None = None,
           authored: Authored | None = None) -> dict[str, Any]:
    """Register the campaign. `check` runs inside the transaction (rendering every wave × locale);
    any error it raises leaves nothing written. `replace` swaps the definition of a draft. With `templates`,
    the new version's definition and templates are kept (`campaign.versions`). `authored` checks the author's
    proof (`[approval] verified`) in the same transaction and says what the event keeps of it."""
    with db.transaction(engine, actor, dry_run=dry_run) as tx:
        conn = tx.conn
        existing = store.row(conn, definition.slug)
        if existing is not None:
            if not replace and existing["state"] == CANCELLED:
                raise StateError(f"campaign {definition.slug!r} was cancelled: create it under a new slug")
            if not replace:
                raise StateError(f"campaign {definition.slug!r} exists already (state {existing['state']}); "
                                 "use --replace to change a campaign that is not scheduled yet")
            if existing["state"] == CANCELLED:
                raise StateError(f"campaign {definition.slug!r} was cancelled: create it under a new slug")
            if existing["state"] != DRAFT:
                raise StateError(f"campaign {definition.slug!r} is {existing['state']}: its definition is frozen"
                                 + (f" (`campaign unschedule {definition.slug}` first, to move its cutoff)"
                                    if existing["state"] == SCHEDULED else ""))
            if store.has_changes(conn, existing["id"]):
                raise StateError(f"campaign {definition.slug!r} has already switched devices: its definition is "
                                 "frozen; create a new campaign instead")
            campaign_id = int(existing["id"])
            store.update_campaign(conn, campaign_id, **_campaign_values(definition))
        else:
            campaign_id = store.insert_campaign(conn, {"slug": definition.slug, "state": DRAFT,
                                                       "created_at": db.utcnow(), "created_by": actor,
                                                       **_campaign_values(definition)})
        kept = store.replace_waves(conn, campaign_id, [
            {"name": w.name, "position": i, "at": w.at, "audience": w.audience, "expires": w.expires}
            for i, w in enumerate(definition.waves)])
        if kept:
            raise StateError(f"wave(s) {', '.join(kept)} of {definition.slug!r} went out already: keep them in the "
                             "definition (their ledger is the evidence of who was told what)")
        proof = authored(conn, definition) if authored is not None else {}
        checked = check(conn, definition) if check is not None else None
        version = versions.keep(conn, campaign_id, definition, templates) if templates is not None else None
        tx.action = "campaign.replace" if existing else "campaign.create"
        tx.campaign_id = campaign_id
        tx.note(source=definition.source, cutoff=definition.cutoff.isoformat(),
                waves=[w.name for w in definition.waves], approval_required=definition.approval_required,
                **({"version": version} if version is not None else {}), **proof)
    return {"campaign": definition.slug, "id": campaign_id, "replaced": existing is not None,
            "dry_run": dry_run, "cutoff": definition.cutoff.isoformat(), "checked": checked,
            "waves": [{"name": w.name, "at": w.at.isoformat(), "expires": w.expires.isoformat(),
                       "audience": w.audience} for w in definition.waves]}


def _campaign_values(d: Definition) -> dict[str, Any]:
    return {"name": d.name, "definition": d.text, "source": d.source, "template": d.template,
            "setting": d.setting, "from_value": d.from_value, "to_value": d.to_value, "cutoff": d.cutoff}


@dataclass(frozen=True)
class Listed(Fields):
    """One line of `campaign list`: a campaign, its state, cutoff and progress."""

    campaign: str
    name: str
    state: str
    cutoff: str
    deliveries: int
    settled: int
    sent: int
    devices_changed: int


def list_campaigns(conn: Connection, progress: Mapping[int, store.Progress] | None = None) -> list[Listed]:
    """Every campaign with its state, cutoff and progress (deliveries settled of all, changes made): as counted
    now, or as `progress` says (by campaign id; the console's last counts)."""
    if progress is None:
        progress = store.progress(conn)
    out = []
    for row in store.all_rows(conn):
        p = progress.get(row["id"], store.NO_PROGRESS)
        out.append(Listed(row["slug"], row["name"], row["state"], row["cutoff"].isoformat(), p.deliveries,
                          p.settled, p.sent, p.devices_changed))
    return out


def set_state(engine: Engine, slug: str, action: str, actor: str, dry_run: bool = False) -> str:
    """pause | resume | cancel, with an audit event; returns what happened, in words."""
    with db.transaction(engine, actor, f"campaign.{action}", dry_run=dry_run) as tx:
        conn = tx.conn
        c = get(conn, slug)
        tx.campaign_id = c.id
        if c.state == CANCELLED:
            raise StateError(f"campaign {slug!r} is cancelled: it cannot be {action}d (to run it again, create it "
                             "under a new slug)")
        if c.state == DONE:
            raise StateError(f"campaign {slug!r} is done: every step has run, there is nothing to {action}")
        if action == "pause":
            if c.state == PAUSED:
                tx.action = None
                return f"{slug} is already paused"
            store.update_campaign(conn, c.id, state=PAUSED, state_reason=f"paused by {actor}")
            message = f"{slug} paused: sending stops after the batches in flight"
        elif action == "resume":
            paused_waves = store.resume_waves(conn, c.id)
            halted = _resume_flip(conn, c, actor)
            if c.state != PAUSED and not paused_waves and halted is None:
                tx.action = None
                return f"{slug} is not paused"
            back = SCHEDULED if c.scheduled_at is not None else DRAFT
            store.update_campaign(conn, c.id, state=back, state_reason=None)
            message = f"{slug} resumed ({back})"
            if halted is not None:
                tx.note(flip_resumed={"stage": halted.number, "guard": halted.guard, "measured": halted.measured})
                message += (f"; the flip, halted at stage {halted.number} ({halted.percent}: {halted.guard}), goes "
                            "on: the scheduler runs its next step now (or `campaign flip` by hand)")
        elif action == "cancel":
            store.update_campaign(conn, c.id, state=CANCELLED, state_reason=f"cancelled by {actor}")
            steps = store.cancel_steps(conn, c.id)
            tx.note(steps_cancelled=steps)
            message = f"{slug} cancelled: nothing more is sent, and the scheduled flip is removed"
        else:
            raise ValueError(action)
    return f"would: {message}" if dry_run else message


def _resume_flip(conn: Connection, c: CampaignRow, actor: str) -> stage_rows.StageRow | None:
    """A staged flip halted by a guard goes on: the halted stage (were it still running) or the next is due now
    at the scheduler. None when the flip is not halted."""
    halted = stage_rows.resume(conn, c.id, actor, db.utcnow())
    if halted is not None:
        again = halted.number + (halted.halted_from == STAGE_FINISHED)
        if again <= len(c.definition.flip.stages):
            step_rows.reopen(conn, c.id, rollout.step_name(again), db.utcnow())
    return halted


@dataclass(frozen=True)
class Created:
    """What `campaign create` did: the campaign registered (or would be), its waves, and what the preflight
    found that does not refuse it."""

    campaign: str
    id: int
    replaced: bool
    dry_run: bool
    cutoff: str
    waves: tuple[dict[str, str], ...]
    rendered: int
    warnings: tuple[preflight.Finding, ...]

    def as_json(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "id": self.id, "replaced": self.replaced, "dry_run": self.dry_run,
                "cutoff": self.cutoff, "waves": list(self.waves), "rendered": self.rendered,
                "warnings": [w.as_json() for w in self.warnings]}


def unschedule(engine: Engine, slug: str, actor: str, dry_run: bool = False) -> str:
    """`campaign unschedule`: a scheduled campaign whose flip has not begun goes back to draft — its steps not
    yet run dropped, its approvals void, an audit event — so that `create --replace` may move its cutoff. The
    ledger stays: nobody is told twice."""
    with db.transaction(engine, actor, "campaign.unschedule", dry_run=dry_run) as tx:
        c = get(tx.conn, slug)
        tx.campaign_id = c.id
        if c.state == CANCELLED:
            raise StateError(f"campaign {slug!r} is cancelled: create it under a new slug")
        if c.scheduled_at is None or c.state not in (SCHEDULED, PAUSED):
            raise StateError(f"campaign {slug!r} is {c.state}, not scheduled: there is nothing to unschedule")
        if store.has_changes(tx.conn, c.id):
            raise StateError(f"the flip of {slug!r} has begun: its cutoff can no longer move (`campaign rollback "
                             f"{slug}` undoes the flip)")
        dropped = store.unschedule(tx.conn, c.id)
        tx.note(steps_dropped=dropped)
    verb = "would go" if dry_run else "went"
    return (f"{slug} {verb} back to draft: {dropped} step(s) not yet run dropped, approvals void; "
            f"`campaign create --replace FILE` may now move its cutoff, then `campaign schedule {slug}`")


def finish(engine: Engine, slug: str, actor: str) -> bool:
    """Mark a scheduled campaign whose every step has run `done` (the scheduler, once it sees so), with an audit
    event; False when it is no longer scheduled (paused, cancelled meanwhile)."""
    with db.transaction(engine, actor, "campaign.done") as tx:
        c = get(tx.conn, slug)
        tx.campaign_id = c.id
        if c.state != SCHEDULED:
            tx.action = None
            return False
        store.update_campaign(tx.conn, c.id, state=DONE, state_reason=None)
    return True


def create_from_file(engine: Engine, path: Path, templates: Path, actor: str, *, replace: bool = False,
                     dry_run: bool = False, authored: Authored | None = None) -> Created:
    """`campaign create`: load and check the definition, run the preflight (refusing on its errors: a template
    or data error with its file and line, a setting no device has, …), and register it."""
    definition = load_definition(path, templates)
    renderer = Renderer(definition, templates)

    def check(conn: Connection, d: Definition) -> preflight.Preflight:
        return preflight.refuse_on_errors(preflight.run(conn, d, renderer, preflight.CREATE))

    result = create(engine, definition, actor, replace=replace, dry_run=dry_run, check=check, templates=templates,
                    authored=authored)
    found: preflight.Preflight = result["checked"]
    return Created(result["campaign"], result["id"], result["replaced"], dry_run, result["cutoff"],
                   tuple(result["waves"]), found.rendered, found.warnings)


def listing(engine: Engine) -> list[Listed]:
    """`campaign list`."""
    with db.read(engine) as conn:
        return list_campaigns(conn)


@dataclass(frozen=True)
class AudienceReport:
    campaign: str
    setting: str
    from_value: str
    summary: audience.Summary

    def as_json(self) -> dict[str, Any]:
        """SPEC's `audience --json` object (`by` only when asked; `sample` beside it when asked)."""
        out: dict[str, Any] = {"campaign": self.campaign, "accounts": self.summary.accounts,
                               "devices": self.summary.devices}
        if self.summary.by is not None:
            out["by"] = self.summary.by
        if self.summary.sample:
            out["sample"] = self.summary.sample
        return out


def audience_of(engine: Engine, slug: str, by: str | None = None, sample: int = 0) -> AudienceReport:
    """`campaign audience`: who is affected now."""
    with db.read(engine) as conn:
        d = get(conn, slug).definition
        return AudienceReport(slug, d.setting, d.from_value, audience.summary(conn, d, by=by, sample=sample))


@dataclass(frozen=True)
class NotTold:
    """`campaign audience SLUG --not-told`: who a `not_told` wave would reach now, and why each (with `--why`)."""

    campaign: str
    accounts: int
    listed: list[tuple[str, str, str]]  # (account id, email, why), the first of them

    def as_json(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "accounts": self.accounts,
                "not_told": [{"account_id": a, "email": e, "why": w} for a, e, w in self.listed]}


def not_told_of(engine: Engine, slug: str, limit: int | None = 1000) -> NotTold:
    """Affected accounts never told (every earlier delivery bounced, failed or never went) at an address no earlier
    wave tried (a corrected one) or added after the earlier waves: a second chance's audience."""
    with db.read(engine) as conn:
        c = get(conn, slug)
        listed, total = audience.not_told_accounts(conn, c.definition, c.id, limit)
    return NotTold(slug, total, listed)
