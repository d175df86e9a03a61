"""`campaign log SLUG --verify`: every signed approval, withdrawal and definition in a campaign's audit log checked
again with ssh-keygen, from what its event keeps (the statement signed, the signature, the principal), an allowed
signers file (the definition's, or `--allowed-signers`: a regulator's own copy) and the digest of the definition
recomputed from its stored text — so that it can be re-run years later without trusting anything else we hold."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from campaign import campaigns, db, signatures
from campaign.cutoff import approval
from campaign.results import Fields
from campaign.signatures import NotVerified, Statement
from campaign.store import approvals as store
from campaign.store.audit import Event
from campaign.validation import escape_controls

ACTIONS = {approval.APPROVE: "approve", approval.REVOKE: "revoke", "campaign.create": "define",
           "campaign.replace": "define"}


@dataclass(frozen=True)
class Checked(Fields):
    """One event's signature, checked again: `verified` is None when there is nothing to check offline (a typed
    name, or a sign-in the console verified)."""

    at: str
    action: str
    by: str
    version: int
    proof: str | None
    verified: bool | None
    why: str

    def line(self) -> str:
        verdict = {True: "verified", False: "FAILED", None: "not signed"}[self.verified]
        return escape_controls(f"{self.at}  {self.action:<24} version {self.version}  {self.by}: {verdict} — "
                               f"{self.why}")


@dataclass(frozen=True)
class Verification:
    """`campaign log SLUG --verify`: each signed event's verdict, oldest first."""

    campaign: str
    allowed_signers: str | None  # the file given, or None: each version's own
    checks: tuple[Checked, ...]

    @property
    def failed(self) -> int:
        return sum(1 for c in self.checks if c.verified is False)

    def as_json(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "allowed_signers": self.allowed_signers, "failed": self.failed,
                "verified": sum(1 for c in self.checks if c.verified), "checks": [c.as_json() for c in self.checks]}

    def text(self) -> str:
        ok = sum(1 for c in self.checks if c.verified)
        lines = [c.line() for c in self.checks] or ["no approvals or definitions in the log"]
        lines.append(f"{self.campaign}: {ok} signature(s) verified, {self.failed} FAILED")
        return "\n".join(lines)


def _check(e: Event, slug: str, version: int, text: str | None, signers: str | None) -> tuple[bool | None, str]:
    """Whether the event's signature is its principal's, over a statement naming this campaign, version and text."""
    proof = e.detail.get("proof")
    if proof == "jwt":
        issuer = dict(e.detail.get("evidence") or {}).get("issuer", "?")
        return None, f"verified by {approval.PROOFS[proof]} when given (issuer {issuer}): no signature to check offline"
    if proof != "ssh":
        return None, "a typed name (--actor): nothing to check"
    principal, signed, signature = (str(e.detail.get(k, "")) for k in ("principal", "signed", "signature"))
    # The digest signed must be that of the version's text as stored; without the text, the one the event names.
    want = approval.digest(text) if text is not None else str(e.detail.get("digest", ""))
    try:
        why = Statement.parse(signed).mismatch(ACTIONS[e.action], slug, version, want)
        if why:
            return False, f"the signed statement does not match: {why}"
        if principal != e.actor:
            return False, f"the event names {e.actor}, the signature's principal is {principal}"
        if signers is None:
            return False, "no allowed signers file to check against (--allowed-signers FILE)"
        signatures.verify(Path(signers), principal, signed, signature)
    except NotVerified as exc:
        return False, str(exc)
    stored = "" if text is not None else " (the text of this version is not stored: its digest as recorded)"
    return True, f"SSH signature of {principal} by {signers}{stored}"


def verify(engine: Engine, slug: str, allowed_signers: Path | None = None) -> Verification:
    """Replay the campaign's definitions and approvals, oldest first, checking every signature again."""
    given = str(signatures.regular_file(allowed_signers, "the allowed signers file")) if allowed_signers else None
    with db.read(engine) as conn:
        c = campaigns.get(conn, slug)
        events = list(store.events(conn, c.id, tuple(ACTIONS)))
    last = max((i for i, e in enumerate(events) if ACTIONS[e.action] == "define"), default=-1)
    version, text, signers, out = 0, None, c.definition.allowed_signers, []
    for i, e in enumerate(events):
        if ACTIONS[e.action] == "define":
            version += 1
            # The text in force is the campaign's (the last version's); an earlier one's is kept in its event
            # when it was signed.
            stored = e.detail.get("definition")
            text = c.definition.text if i == last else stored if isinstance(stored, str) else None
            signers = e.detail.get("allowed_signers", signers)
        ok, why = _check(e, slug, version, text, given or signers)
        out.append(Checked(at=e.at.astimezone(dt.UTC).isoformat(), action=e.action, by=e.actor, version=version,
                           proof=e.detail.get("proof"), verified=ok, why=why))
    return Verification(slug, given, tuple(out))
