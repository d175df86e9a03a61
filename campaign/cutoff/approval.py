"""No one flips alone (`[approval] required = true`): `schedule`, `send` and `flip` wait until a person other than
the author of the definition — who created it, or last replaced it — has run `campaign approve`. Once a version
of the definition required it, every later version does (a replacement cannot drop the rule on its own).

Approvals are audit events (`campaign.approve`, `campaign.revoke_approval`), read back in the order they were
written with the definition's own events (`campaign.create`, `campaign.replace`): a replacement starts a new
version of the definition and voids every approval given before it. Each approval names the version and the
SHA-256 digest of the definition text it approved, and counts only while that is still the text the campaign holds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import campaigns, db
from campaign.campaigns import CampaignRow
from campaign.errors import StateError
from campaign.models import CANCELLED
from campaign.store import approvals as store

APPROVE, REVOKE = "campaign.approve", "campaign.revoke_approval"
DEFINED = ("campaign.create", "campaign.replace")
UNSCHEDULED = "campaign.unschedule"  # voids the approvals given before it, as a new version does


class NotApproved(StateError):
    """The definition requires a second person's approval, and it has not been given (or was voided)."""

    code = "not_approved"


def digest(text: str) -> str:
    """The definition's fingerprint, as approvals and `status` name it."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Approval:
    by: str
    at: dt.datetime
    version: int
    digest: str

    def as_json(self) -> dict[str, Any]:
        return {"by": self.by, "at": self.at.isoformat(), "version": self.version, "digest": self.digest}


@dataclass(frozen=True)
class Standing:
    """Where a campaign's approval stands now."""

    required: bool
    version: int  # 1 as created; each `create --replace` adds one
    digest: str
    defined_by: str  # who created or last replaced the definition: they cannot approve it
    defined_at: dt.datetime
    approvals: tuple[Approval, ...] = ()  # those that count: this version, not revoked
    voided: tuple[Approval, ...] = field(default=())  # given for an earlier version (or another text)
    kept: bool = False  # required because an earlier version required it (this one says it is not)

    @property
    def approved(self) -> bool:
        return bool(self.approvals)

    @property
    def allowed(self) -> bool:
        """Whether schedule and flip may go."""
        return self.approved or not self.required

    def words(self) -> str:
        """One line for `status` and the refusals."""
        if self.approvals:
            who = ", ".join(f"{a.by} at {a.at.isoformat(timespec='seconds')}" for a in self.approvals)
            return f"approved by {who} (version {self.version}, {self.digest[:19]}…)"
        need = f"`campaign approve` by someone other than {self.defined_by}"
        voided = f"; {len(self.voided)} earlier approval(s) voided by a replacement" if self.voided else ""
        if not self.required:
            return f"not required by the definition (not given){voided}"
        kept = "; an earlier version required it, so it stays required" if self.kept else ""
        return f"required, not given: {need} (version {self.version}, {self.digest[:19]}…){voided}{kept}"

    def as_json(self) -> dict[str, Any]:
        return {"required": self.required, "required_by_earlier_version": self.kept,
                "approved": self.approved, "allowed": self.allowed,
                "version": self.version, "digest": self.digest, "defined_by": self.defined_by,
                "defined_at": self.defined_at.isoformat(), "approvals": [a.as_json() for a in self.approvals],
                "voided": [a.as_json() for a in self.voided]}


def standing(conn: Connection, c: CampaignRow) -> Standing:
    """Replay the campaign's definition and approval events, oldest first. Once a version of the definition
    required an approval, every later one does: a replacement cannot drop the rule on its own."""
    current = digest(c.definition.text)
    version, defined_by, defined_at = 0, c.created_by, c.created_at
    once_required = False
    given: dict[str, Approval] = {}  # by actor: an actor's approval counts once
    voided: list[Approval] = []
    for e in store.events(conn, c.id, (*DEFINED, APPROVE, REVOKE, UNSCHEDULED)):
        if e.action == UNSCHEDULED:
            voided += given.values()
            given = {}
        elif e.action in DEFINED:
            version += 1
            once_required = once_required or e.detail.get("approval_required") is True
            defined_by, defined_at = e.actor, e.at
            voided += given.values()
            given = {}
        elif e.action == APPROVE:
            a = Approval(e.actor, e.at, int(e.detail.get("version", 0)), str(e.detail.get("digest", "")))
            if a.version == version:
                given[e.actor] = a
            else:  # given for the version before a replacement that committed meanwhile
                voided.append(a)
        elif e.action == REVOKE:
            given.pop(e.actor, None)
    valid = [a for a in given.values() if a.digest == current and a.by != defined_by]
    voided += [a for a in given.values() if a not in valid]
    own = c.definition.approval_required
    return Standing(own or once_required, max(version, 1), current, defined_by, defined_at,
                    tuple(valid), tuple(voided), kept=once_required and not own)


def require(conn: Connection, c: CampaignRow, what: str, dry_run: bool = False) -> Standing:
    """Refuse `what` (schedule, flip) when the definition requires an approval that has not been given. A dry
    run is not refused: it shows what would happen, and says that the real run would wait for an approval."""
    s = standing(conn, c)
    if not s.allowed and not dry_run:
        voided = (f" ({len(s.voided)} approval(s) given before were voided when the definition was replaced)"
                  if s.voided else "")
        raise NotApproved(f"campaign {c.slug!r} needs an approval before its {what}: its definition "
                          f"(version {s.version}, by {s.defined_by}) requires `campaign approve {c.slug}` by "
                          f"someone other than {s.defined_by}{voided}")
    return s


@dataclass(frozen=True)
class Outcome:
    """What `approve` did (or would do)."""

    campaign: str
    action: str  # approved | already | revoked | not_approved
    by: str
    dry_run: bool
    standing: Standing

    def as_json(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "action": self.action, "by": self.by, "dry_run": self.dry_run,
                "approval": self.standing.as_json()}

    def words(self) -> str:
        s = self.standing
        would = "would be " if self.dry_run else ""
        if self.action == "approved":
            line = (f"{self.campaign}: {would}approved by {self.by}: version {s.version} ({s.digest}) of the "
                    f"definition by {s.defined_by}")
            if not s.required:
                line += "; the definition does not require an approval (recorded all the same)"
            return line
        if self.action == "already":
            return f"{self.campaign}: already approved by {self.by} (version {s.version}); nothing recorded"
        if self.action == "revoked":
            return f"{self.campaign}: approval of {self.by} {would}withdrawn; now {s.words()}"
        return f"{self.campaign}: {self.by} has no approval to withdraw; {s.words()}"


def approve(engine: Engine, slug: str, actor: str, *, revoke: bool = False, dry_run: bool = False) -> Outcome:
    """`campaign approve SLUG`: record `actor`'s approval of the campaign's current definition — refused to its
    author, and for a cancelled campaign. `revoke` withdraws the actor's own approval: a scheduled flip then
    waits again until someone approves."""
    with db.transaction(engine, actor, dry_run=dry_run) as tx:
        c = campaigns.get(tx.conn, slug)
        tx.campaign_id = c.id
        before = standing(tx.conn, c)
        mine = any(a.by == actor for a in before.approvals)
        if revoke:
            if not mine:
                return Outcome(slug, "not_approved", actor, dry_run, before)
            tx.action = REVOKE
            tx.note(version=before.version, digest=before.digest)
            return Outcome(slug, "revoked", actor, dry_run, _without(before, actor))
        if c.state == CANCELLED:
            raise StateError(f"campaign {slug!r} is cancelled: there is nothing to approve")
        if actor == before.defined_by:
            raise NotApproved(f"{actor} created or last replaced the definition of {slug!r} (version "
                              f"{before.version}): the approval must come from someone else (--actor or "
                              "CAMPAIGN_ACTOR names who acts)")
        if mine:
            return Outcome(slug, "already", actor, dry_run, before)
        tx.action = APPROVE
        tx.note(version=before.version, digest=before.digest, defined_by=before.defined_by,
                required=before.required)
        # The event is recorded when the transaction ends: what it will count for, as `standing` will read it.
        after = Approval(actor, db.utcnow(), before.version, before.digest)
        return Outcome(slug, "approved", actor, dry_run, _with(before, after))


def _with(s: Standing, a: Approval) -> Standing:
    return Standing(s.required, s.version, s.digest, s.defined_by, s.defined_at, (*s.approvals, a), s.voided)


def _without(s: Standing, actor: str) -> Standing:
    return Standing(s.required, s.version, s.digest, s.defined_by, s.defined_at,
                    tuple(a for a in s.approvals if a.by != actor), s.voided)


def standing_of(engine: Engine, slug: str) -> Standing:
    """For `create --replace`'s message and the report."""
    with db.read(engine) as conn:
        return standing(conn, campaigns.get(conn, slug))
