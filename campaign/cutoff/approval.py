"""No one flips alone (`[approval] required = true`): `schedule`, `send` and `flip` wait until a person other than
the author of the definition — who created it, or last replaced it — has run `campaign approve`. Once a version
of the definition required it, every later version does (a replacement cannot drop the rule on its own).

Approvals are audit events (`campaign.approve`, `campaign.revoke_approval`), read back in the order they were
written with the definition's own events (`campaign.create`, `campaign.replace`): a replacement starts a new
version of the definition and voids every approval given before it. Each approval names the version and the
SHA-256 digest of the definition text it approved, and counts only while that is still the text the campaign holds.

With `[approval] verified = true` only a proven identity counts (`Approver.proof`): an SSH signature over a
statement naming the campaign, version and digest, checked against the definition's allowed signers (the principal
found there is who approved), or a sign-in the console verified. A typed name (`--actor`) is refused, and so is an
unsigned `create`: the author is proven the same way. The signature is kept with the audit event, for `campaign log
--verify` to check again, offline, years later.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import campaigns, db, signatures, versions
from campaign.campaigns import CampaignRow
from campaign.definition import Definition, load_definition
from campaign.errors import NotFound, StateError, UsageError
from campaign.models import CANCELLED
from campaign.signatures import NotVerified, Statement
from campaign.store import approvals as store

APPROVE, REVOKE = versions.APPROVED, "campaign.revoke_approval"
DEFINED = versions.DEFINED  # the events that start a version of the definition (numbered as versions counts them)
UNSCHEDULED = "campaign.unschedule"  # voids the approvals given before it, as a new version does
PROOFS = {"ssh": "SSH signature", "jwt": "the console's single sign-on"}  # Approver.proof -> how, in words


class NotApproved(StateError):
    """The definition requires a second person's approval, and it has not been given (or was voided)."""

    code = "not_approved"


def digest(text: str) -> str:
    """The definition's fingerprint, as approvals and `status` name it."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Approver:
    """Who approves (or authors a definition), and how that is proven. `proof` None: a typed name (`--actor`),
    which does not count under `[approval] verified = true`; "ssh": `signature` over `statement` (the exact text
    signed), whose signer's principal in the allowed signers becomes `identity` (leave it empty, or name whom you
    expect); "jwt": an identity the console verified, with `evidence` (issuer, token id, …) kept in the audit event."""

    identity: str
    proof: str | None = None
    signature: str | None = None
    statement: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def detail(self) -> dict[str, Any]:
        """What the audit event keeps of the proof (nothing for a typed name)."""
        if self.proof == "ssh":
            return {"proof": "ssh", "principal": self.identity, "signature": self.signature, "signed": self.statement}
        if self.proof == "jwt":
            return {"proof": "jwt", "evidence": dict(self.evidence)}
        return {}


@dataclass(frozen=True)
class Approval:
    by: str
    at: dt.datetime
    version: int
    digest: str
    proof: str | None = None  # how `by` was proven: ssh | jwt; None for a typed name

    @property
    def verified(self) -> bool:
        return self.proof is not None

    def words(self) -> str:
        how = f", verified by {PROOFS.get(self.proof, self.proof)}" if self.proof else ""
        return f"{self.by} at {self.at.isoformat(timespec='seconds')}{how}"

    def as_json(self) -> dict[str, Any]:
        return {"by": self.by, "at": self.at.isoformat(), "version": self.version, "digest": self.digest,
                "verified": self.verified, "proof": self.proof, "how": PROOFS.get(self.proof or "")}


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
    verified: bool = False  # only proven identities count ([approval] verified = true)
    allowed_signers: str | None = None  # whose SSH signatures count, as the version's definition named it
    defined_proof: str | None = None  # how the author was proven (ssh | jwt), None for a typed name

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
            who = ", ".join(a.words() for a in self.approvals)
            return f"approved by {who} (version {self.version}, {self.digest[:19]}…)"
        need = f"`campaign approve` by someone other than {self.defined_by}"
        if self.verified:
            need = (f"a verified approval (`campaign approve --sign KEY` with a key in {self.allowed_signers}, or "
                    f"the console) by someone other than {self.defined_by}")
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
                "voided": [a.as_json() for a in self.voided], "verified_only": self.verified,
                "allowed_signers": self.allowed_signers, "defined_proof": self.defined_proof}


def standing(conn: Connection, c: CampaignRow) -> Standing:
    """Replay the campaign's definition and approval events, oldest first. Once a version of the definition
    required an approval, every later one does: a replacement cannot drop the rule on its own."""
    current = digest(c.definition.text)
    version, defined_by, defined_at = 0, c.created_by, c.created_at
    once_required = once_verified = False
    signers, defined_proof = c.definition.allowed_signers, None
    given: dict[str, Approval] = {}  # by actor: an actor's approval counts once
    voided: list[Approval] = []
    for e in store.events(conn, c.id, (*DEFINED, APPROVE, REVOKE, UNSCHEDULED)):
        if e.action == UNSCHEDULED:
            voided += given.values()
            given = {}
        elif e.action in DEFINED:
            version += 1
            once_required = once_required or e.detail.get("approval_required") is True
            once_verified = once_verified or e.detail.get("approval_verified") is True
            defined_by, defined_at, defined_proof = e.actor, e.at, e.detail.get("proof")
            signers = e.detail.get("allowed_signers", signers)  # as resolved when that version was created
            voided += given.values()
            given = {}
        elif e.action == APPROVE:
            a = Approval(e.actor, e.at, int(e.detail.get("version", 0)), str(e.detail.get("digest", "")),
                         e.detail.get("proof"))
            if a.version == version:
                given[e.actor] = a
            else:  # given for the version before a replacement that committed meanwhile
                voided.append(a)
        elif e.action == REVOKE:
            given.pop(e.actor, None)
    verified = c.definition.approval_verified or once_verified
    valid = [a for a in given.values() if a.digest == current and a.by != defined_by and (a.verified or not verified)]
    voided += [a for a in given.values() if a not in valid]
    own = c.definition.approval_required
    return Standing(own or once_required, max(version, 1), current, defined_by, defined_at,
                    tuple(valid), tuple(voided), kept=once_required and not own, verified=verified,
                    allowed_signers=signers, defined_proof=defined_proof)


def require(conn: Connection, c: CampaignRow, what: str, dry_run: bool = False) -> Standing:
    """Refuse `what` (schedule, flip) when the definition requires an approval that has not been given. A dry
    run is not refused: it shows what would happen, and says that the real run would wait for an approval."""
    s = standing(conn, c)
    if not s.allowed and not dry_run:
        voided = (f" ({len(s.voided)} approval(s) given before were voided when the definition was replaced)"
                  if s.voided else "")
        how = " --sign KEY" if s.verified else ""
        raise NotApproved(f"campaign {c.slug!r} needs an approval before its {what}: its definition "
                          f"(version {s.version}, by {s.defined_by}) requires `campaign approve {c.slug}{how}` by "
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
    proof: str | None = None  # how `by` was proven (ssh | jwt), None for a typed name

    def as_json(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "action": self.action, "by": self.by, "dry_run": self.dry_run,
                "verified": self.proof is not None, "proof": self.proof, "approval": self.standing.as_json()}

    def words(self) -> str:
        s = self.standing
        would = "would be " if self.dry_run else ""
        how = f", verified by {PROOFS.get(self.proof, self.proof)}" if self.proof else ""
        if self.action == "approved":
            line = (f"{self.campaign}: {would}approved by {self.by}{how}: version {s.version} ({s.digest}) of the "
                    f"definition by {s.defined_by}")
            if not s.required:
                line += "; the definition does not require an approval (recorded all the same)"
            return line
        if self.action == "already":
            return f"{self.campaign}: already approved by {self.by} (version {s.version}); nothing recorded"
        if self.action == "revoked":
            return f"{self.campaign}: approval of {self.by} {would}withdrawn{how}; now {s.words()}"
        return f"{self.campaign}: {self.by} has no approval to withdraw; {s.words()}"


def statement_for(engine: Engine, slug: str, action: str) -> Statement:
    """The statement to sign for approving (or withdrawing an approval of) the campaign's current definition."""
    with db.read(engine) as conn:
        s = standing(conn, campaigns.get(conn, slug))
    return signatures.statement(action, slug, s.version, s.digest)


def _proven(who: Approver, allowed_signers: str | None, what: str) -> Approver:
    """An SSH approver checked: the signature verifies against `allowed_signers`, whose principal is `who` now."""
    if who.signature is None or who.statement is None:
        raise NotVerified(f"a signed {what} needs its signature and the statement it signs")
    if allowed_signers is None:
        raise UsageError(f"a signed {what} needs `[approval] allowed_signers` in the definition: the file (git's "
                         "format) naming whose SSH keys may sign")
    principal = signatures.signer(Path(allowed_signers), who.statement, who.signature)
    if who.identity and who.identity != principal:
        raise NotVerified(f"the signature is {principal}'s, not {who.identity}'s")
    return dataclasses.replace(who, identity=principal)


def _check_statement(who: Approver, action: str, slug: str, version: int, text_digest: str) -> None:
    """A signed statement names exactly this action, campaign, version and text: not one signed for another."""
    if who.proof != "ssh":
        return
    why = Statement.parse(who.statement or "").mismatch(action, slug, version, text_digest)
    if why:
        raise NotVerified(f"the signature is not for version {version} of {slug!r} as it stands: {why} (did the "
                          "definition change meanwhile? sign again)")


def approve(engine: Engine, slug: str, approver: Approver | str, *, revoke: bool = False,
            dry_run: bool = False) -> Outcome:
    """`campaign approve SLUG`: record the approver's approval of the campaign's current definition — refused to
    its author, and for a cancelled campaign; under `[approval] verified = true` refused to a typed name. `revoke`
    withdraws the approver's own approval: a scheduled flip then waits again until someone approves. A string is a
    typed name (`--actor`); the console passes an `Approver` with proof "jwt", `approve --sign` one with "ssh"."""
    who = approver if isinstance(approver, Approver) else Approver(approver)
    action = "revoke" if revoke else "approve"
    if who.proof == "ssh":  # ssh-keygen runs before the write transaction: the lock is not held meanwhile
        who = _proven(who, standing_of(engine, slug).allowed_signers, "approval")
    with db.transaction(engine, who.identity, dry_run=dry_run) as tx:
        c = campaigns.get(tx.conn, slug)
        tx.campaign_id = c.id
        before = standing(tx.conn, c)
        if before.verified and who.proof is None:
            raise NotApproved(f"{slug!r} counts only verified approvals ([approval] verified = true), and "
                              f"{who.identity} is a typed name: sign it — `campaign approve {slug} --sign "
                              f"~/.ssh/id_ed25519`{' --revoke' if revoke else ''} with a key listed in "
                              f"{before.allowed_signers} — or use the console")
        _check_statement(who, action, slug, before.version, before.digest)
        if who.statement is not None and who.statement in store.signed(tx.conn, c.id, (APPROVE, REVOKE)):
            raise NotVerified("this signature was recorded already: a signature counts once (sign again)")
        mine = any(a.by == who.identity for a in before.approvals)
        if revoke:
            if not mine:
                return Outcome(slug, "not_approved", who.identity, dry_run, before, who.proof)
            tx.action = REVOKE
            remaining = _without(before, who.identity)
            # required / approved: whether an approval is needed again now (the webhook event approval.needed)
            tx.note(version=before.version, digest=before.digest, required=before.required,
                    approved=remaining.approved, **who.detail())
            return Outcome(slug, "revoked", who.identity, dry_run, remaining, who.proof)
        if c.state == CANCELLED:
            raise StateError(f"campaign {slug!r} is cancelled: there is nothing to approve")
        if who.identity == before.defined_by:
            raise NotApproved(f"{who.identity} created or last replaced the definition of {slug!r} (version "
                              f"{before.version}): the approval must come from someone else (--actor or "
                              "CAMPAIGN_ACTOR names who acts" + (", a signature's principal under verified = true"
                                                                  if before.verified else "") + ")")
        if mine:
            return Outcome(slug, "already", who.identity, dry_run, before, who.proof)
        tx.action = APPROVE
        tx.note(version=before.version, digest=before.digest, defined_by=before.defined_by,
                required=before.required, **who.detail())
        # The event is recorded when the transaction ends: what it will count for, as `standing` will read it.
        after = Approval(who.identity, db.utcnow(), before.version, before.digest, who.proof)
        return Outcome(slug, "approved", who.identity, dry_run, _with(before, after), who.proof)


def approve_signed(engine: Engine, slug: str, key: Path, *, revoke: bool = False, dry_run: bool = False) -> Outcome:
    """`campaign approve SLUG --sign KEY`: sign the statement for the current definition with ssh-keygen, then
    approve (or withdraw) as the principal the allowed signers name for that key."""
    st = statement_for(engine, slug, "revoke" if revoke else "approve")
    signed = signatures.sign(key, st.text())
    return approve(engine, slug, Approver("", "ssh", signed, st.text()), revoke=revoke, dry_run=dry_run)


def _with(s: Standing, a: Approval) -> Standing:
    return dataclasses.replace(s, approvals=(*s.approvals, a))


def _without(s: Standing, actor: str) -> Standing:
    return dataclasses.replace(s, approvals=tuple(a for a in s.approvals if a.by != actor))


def standing_of(engine: Engine, slug: str) -> Standing:
    """For `create --replace`'s message and the report."""
    with db.read(engine) as conn:
        return standing(conn, campaigns.get(conn, slug))


# -- the author of a definition -----------------------------------------------------------------------------

def _history(conn: Connection, slug: str) -> tuple[int, bool]:
    """How many versions the campaign's definition has had, and whether one of them required verified approvals."""
    try:
        c = campaigns.get(conn, slug)
    except NotFound:
        return 0, False
    seen = [e.detail.get("approval_verified") is True for e in store.events(conn, c.id, DEFINED)]
    return len(seen), any(seen)


def authorship(author: Approver) -> Callable[[Connection, Definition], dict[str, Any]]:
    """What `create` runs inside its transaction: under `[approval] verified = true` (this version's or an
    earlier one's) the author must be proven, and the signature must be over this very text and version; returns
    what the create or replace event notes of it. An earlier version's verified = true cannot be dropped."""

    def check(conn: Connection, d: Definition) -> dict[str, Any]:
        before, was_verified = _history(conn, d.slug)
        if was_verified and not d.approval_verified:
            raise NotApproved(f"an earlier version of {d.slug!r} counts only verified approvals: a replacement "
                              "cannot drop the rule (keep `verified = true` under [approval])")
        if author.proof is None and d.approval_verified:
            raise NotApproved(f"the definition of {d.slug!r} says [approval] verified = true: its author must be "
                              f"proven too — `campaign create FILE{' --replace' if before else ''} --sign "
                              f"~/.ssh/id_ed25519` with a key listed in {d.allowed_signers}")
        _check_statement(author, "define", d.slug, before + 1, digest(d.text))
        note: dict[str, Any] = {"approval_verified": True} if d.approval_verified else {}
        if d.allowed_signers is not None:
            note["allowed_signers"] = d.allowed_signers
        if author.proof is not None:  # the text itself, for `log --verify` to recompute the digest signed
            note.update(author.detail(), definition=d.text)
        return note

    return check


def create(engine: Engine, path: Path, templates: Path, actor: str, *, sign: Path | None = None,
           replace: bool = False, dry_run: bool = False) -> campaigns.Created:
    """`campaign create FILE [--sign KEY]`: with a key, sign the statement for the version this definition will
    become, and register it as the principal the definition's allowed signers name for the key."""
    author = Approver(actor)
    if sign is not None:
        d = load_definition(path, templates)
        with db.read(engine) as conn:
            version = _history(conn, d.slug)[0] + 1
        st = signatures.statement("define", d.slug, version, digest(d.text))
        author = _proven(Approver("", "ssh", signatures.sign(sign, st.text()), st.text()), d.allowed_signers,
                         "definition")
    return campaigns.create_from_file(engine, path, templates, author.identity, replace=replace, dry_run=dry_run,
                                      authored=authorship(author))
