"""The suppression list: addresses that must never be mailed (hard bounce, complaint, manual)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import db
from campaign.addresses import normalize as normalize_address
from campaign.errors import InputError, Problem, UsageError
from campaign.intake.readers import RecordReader
from campaign.models import SUPPRESSION
from campaign.redaction import redact
from campaign.results import Fields
from campaign.store import suppressions as store
from campaign.validation import unprintable

SOURCES = ("manual", "import", "bounce", "complaint")
_T = SUPPRESSION


def add(conn: Connection, email: str, reason: str, actor: str, source: str = "manual",
        campaign_id: int | None = None) -> bool:
    """Suppress one address; True when it was not suppressed before."""
    try:
        address = normalize_address(email.strip())
    except ValueError as exc:
        raise UsageError(f"cannot suppress {email!r}: {exc}") from None
    reason = redact(reason, limit=1024)  # one printable line, whatever the SMTP reply looked like
    if not reason:
        raise UsageError("a reason is needed (--reason)")
    new = store.add(conn, [{"email": address, "reason": reason, "source": source,
                            "campaign_id": campaign_id, "created_at": db.utcnow(), "created_by": actor}])
    return new == 1


def add_one(engine: Engine, email: str, reason: str, actor: str, dry_run: bool = False) -> bool:
    """`suppress add EMAIL --reason R`: a reason typed by a person is one printable line, or refused."""
    problem = unprintable(reason.strip())
    if problem:
        raise UsageError(f"--reason must be one printable line: it {problem}")
    with db.transaction(engine, actor, "suppress.add", dry_run=dry_run) as tx:
        new = add(tx.conn, email, reason, actor)
        tx.note(email=normalize_address(email.strip()), reason=reason, new=new)
    return new


@dataclass
class SuppressImport(Fields):
    records: int
    added: int
    already: int
    dry_run: bool


def import_file(engine: Engine, path: Path | str, actor: str, dry_run: bool = False,
                default_reason: str = "imported") -> SuppressImport:
    """CSV or JSON Lines with a column `email` and optionally `reason`; all or nothing."""
    path = Path(path)
    problems: list[Problem] = []
    total_problems = 0
    records = added = 0
    with RecordReader(path, text_keys=("email", "reason")) as reader, \
            db.transaction(engine, actor, "suppress.import", dry_run=dry_run) as tx:
        conn = tx.conn
        header = reader.header()
        if header and ("email" not in header or set(header) - {"email", "reason"}):
            raise InputError(str(path), [Problem(1, "expected the columns email and (optionally) reason, "
                                                    f"found {', '.join(header)}")])
        batch: list[dict[str, Any]] = []
        now = db.utcnow()
        for rec in reader:
            records += 1
            msg = rec.problem
            values = rec.as_dict(header)
            if msg is None:
                unknown = set(values) - {"email", "reason"}
                if unknown:
                    msg = f"unknown field {', '.join(sorted(unknown))} (expected email, reason)"
            if msg is None:
                try:
                    email = normalize_address(values.get("email", "").strip())
                except ValueError as exc:
                    msg = f"email: {exc}"
            reason = values.get("reason", "").strip() or default_reason
            problem = unprintable(reason)
            if msg is None and problem:
                msg = f"reason: must be one printable line ({problem})"
            if msg is not None:
                total_problems += 1
                if len(problems) < 20:
                    problems.append(Problem(rec.line, msg))
                continue
            batch.append({"email": email, "reason": reason[:1024], "source": "import", "campaign_id": None,
                          "created_at": now, "created_by": actor})
            if len(batch) >= 5000 and not total_problems:
                added += store.add(conn, batch)
                batch.clear()
        if total_problems:
            raise InputError(str(path), problems, total_problems)
        added += store.add(conn, batch)
        tx.note(file=str(path), records=records, added=added)
    return SuppressImport(records, added, records - added, dry_run)


@dataclass(frozen=True)
class Suppressed(Fields):
    """One line of `campaign suppress list`."""

    email: str
    reason: str
    source: str
    created_at: str
    created_by: str


def list_all(engine: Engine) -> list[Suppressed]:
    """`campaign suppress list`: every suppressed address, oldest first."""
    with db.read(engine) as conn:
        return [Suppressed(r.email, r.reason, r.source, r.created_at.isoformat(), r.created_by)
                for r in store.entries(conn)]
