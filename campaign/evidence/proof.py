"""`campaign report SLUG --account ID --message WAVE [--eml FILE]`: one person's message rebuilt from what its send
recorded — the definition version's kept files and the message's own inputs (`campaign.notices.exact`) — and proven
byte-identical to the message handed to the relay (its SHA-256 equal to the one recorded then), or why not.

A regulator asks for the words a person received, not the template: this is them, with the proof that they are."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from importlib.metadata import version as installed
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import campaigns, db, outfiles
from campaign.definition import Definition, parse_definition
from campaign.errors import CampaignError, NotFound, UsageError
from campaign.models import SENT
from campaign.notices import exact, kept
from campaign.notices.mime import message_id
from campaign.notices.proofs import builder_for
from campaign.results import Fields
from campaign.store import evidence as store
from campaign.validation import escape_controls

__all__ = ["Proven", "prove", "proven_text"]


@dataclass(frozen=True)
class Proven(Fields):
    """One message rebuilt and compared. `identical`: the rebuilt bytes have the SHA-256 recorded at send;
    `proven`: identical, and the kept files it was rebuilt from are those recorded (untouched since). `why` says
    what stands in the way when not proven; `since` what changed about the person after the send, which the
    rebuild does not use (it uses the values recorded then)."""

    campaign: str
    account_id: str
    wave: str
    state: str
    message_id: str | None
    sent_at: str | None
    version: int | None  # the definition version whose kept files built it; None: the templates folder
    version_sha256: str | None  # recorded at send
    recorded_sha256: str | None
    rebuilt_sha256: str | None
    size: int  # bytes of the rebuilt message (0: none)
    identical: bool
    proven: bool
    why: tuple[str, ...]
    since: tuple[str, ...]
    inputs: dict[str, Any] | None
    eml: str | None = None  # where the rebuilt message was written


def prove(engine: Engine, slug: str, account_id: str, wave: str, templates: Path, eml: Path | None = None) -> Proven:
    """Rebuild `account_id`'s message of `wave` and compare it with what was recorded; with `eml`, write the
    rebuilt message there (created without following a link: `campaign.outfiles`)."""
    with db.read(engine) as conn:
        found, data = _prove(conn, slug, account_id, wave, templates)
    if eml is not None and data is not None:
        with outfiles.binary(eml) as f:
            f.write(data)
        return dataclasses.replace(found, eml=str(eml))
    return found


def _prove(conn: Connection, slug: str, account_id: str, wave: str, templates: Path) -> tuple[Proven, bytes | None]:
    c = campaigns.get(conn, slug)
    row = store.message_proof(conn, c.id, account_id, wave)
    if row is None:
        if wave not in {w.name for w in c.definition.waves}:
            raise UsageError(f"no wave {wave!r} in {slug} (waves: {', '.join(w.name for w in c.definition.waves)})")
        raise NotFound(f"account {account_id!r} has no delivery in wave {wave!r} of {slug}")
    base: dict[str, Any] = {
        "campaign": slug, "account_id": account_id, "wave": wave, "state": row.state, "message_id": row.message_id,
        "sent_at": row.sent_at.isoformat() if row.sent_at is not None else None, "version": row.version,
        "version_sha256": row.version_sha256, "recorded_sha256": row.message_sha256, "rebuilt_sha256": None,
        "size": 0, "identical": False, "proven": False, "since": (), "inputs": None}
    if row.message_sha256 is None or row.message_inputs is None or row.message_id is None:
        reason = (f"no message was handed to the relay (the delivery is {row.state})" if row.message_id is None
                  else "no digest was recorded: the message was sent before its proof was kept (migration 0011)")
        return Proven(**base, why=(reason,)), None
    why: list[str] = []
    try:
        inputs = exact.Inputs.loads(account_id, row.message_inputs)
    except exact.BadInputs as exc:
        return Proven(**base, why=(f"the recorded inputs cannot be read: {exc}",)), None
    base["inputs"] = inputs.as_json()
    base["since"] = _since(conn, inputs)
    files, d = _template_set(conn, c, row.version, templates, why)
    if files is None or d is None:
        return Proven(**base, why=tuple(why)), None
    if files.sha256 != row.version_sha256:
        why.append(_files_differ(row.version, files.sha256, row.version_sha256))
    try:
        w = d.wave(wave)
        _rendered, data = exact.build(files.renderer(d, templates), builder_for(d, w), w, inputs, row.message_id)
    except (CampaignError, ValueError, KeyError) as exc:
        why.append(f"the message does not build again: {exc}")
        return Proven(**base, why=tuple(why)), None
    rebuilt = exact.sha256(data)
    identical = rebuilt == row.message_sha256
    if not identical:
        why += _inputs_questioned(d, c.slug, account_id, wave, row, inputs) or [
            f"the rebuilt message (sha256 {rebuilt}) is not the one recorded (sha256 {row.message_sha256}): the "
            "recorded digest or the recorded inputs were changed after the send, or the libraries that render "
            f"it differ from those that sent it (Jinja2 {installed('jinja2')}, Babel {installed('babel')} here)"]
    proven = identical and not why
    return Proven(**{**base, "rebuilt_sha256": rebuilt, "size": len(data), "identical": identical, "proven": proven},
                  why=tuple(why)), data


def _template_set(conn: Connection, c: campaigns.CampaignRow, version: int | None, templates: Path,
                  why: list[str]) -> tuple[kept.TemplateSet | None, Definition | None]:
    """The files the message was built from, and their definition; None (with why) when they cannot be had."""
    if version is None:  # built from the folder: a campaign with no version kept
        return kept.from_folder(c.definition, templates), c.definition
    files = kept.of_version(conn, c.id, version)
    if files is None:
        why.append(f"the files of definition version {version} are not kept")
        return None, None
    why += [f"{path} of version {version} was changed after it was kept (its text no longer has the SHA-256 kept "
            "with it)" for path in files.damaged]
    try:
        return files, parse_definition(files.definition, c.definition.source)
    except CampaignError as exc:
        why.append(f"the definition of version {version} as kept does not read: {exc}")
        return None, None


def _files_differ(version: int | None, now: str, recorded: str | None) -> str:
    if version is None:
        return (f"the templates folder is not as it was at the send (sha256 {now}, then {recorded}): the campaign "
                "kept no version of its files, so the message was built from the folder, which has changed since")
    return (f"the files of definition version {version} (sha256 {now}) are not those the message was built from "
            f"(sha256 {recorded}, recorded at the send)")


def _inputs_questioned(d: Definition, slug: str, account_id: str, wave: str, row: Any,
                       inputs: exact.Inputs) -> list[str]:
    """Recorded inputs that contradict what else the ledger knows of the delivery (which input differs)."""
    out = []
    if d.return_path is None:  # without a bounce key the Message-ID is a plain digest, checked here
        expected = message_id(slug, wave, account_id, d.sender_domain)
        if row.message_id != expected:
            out.append(f"the recorded Message-ID {row.message_id} is not this delivery's ({expected})")
    if row.state == SENT and row.sent_at is not None and not (
            row.sent_at - dt.timedelta(hours=1) <= inputs.date <= row.sent_at):
        out.append(f"the recorded Date ({inputs.date.isoformat()}) does not fit the send "
                   f"({row.sent_at.isoformat()})")
    if row.email is not None and row.email.lower() != inputs.recipient.email.lower():
        out.append(f"the recorded address {inputs.recipient.email} is not the ledger's ({row.email})")
    return out


def _since(conn: Connection, inputs: exact.Inputs) -> tuple[str, ...]:
    """What differs now from the person and devices recorded with the message."""
    then = inputs.recipient
    now = store.person(conn, account_id=then.account_id)
    out = []
    if not now:
        out.append("the account is gone")
    else:
        p = now[0]
        for what, old, new in (("name", then.name, p.name), ("address", then.email, p.email),
                               ("locale", then.locale, p.locale), ("time zone", then.timezone, p.timezone)):
            if old != new:
                out.append(f"{what}: {old!r} then, {new!r} now")
    devices = store.devices_of(conn, then.account_id)
    for v in inputs.devices:
        if v.device_id not in devices:
            out.append(f"device {v.device_id} ({v.name!r}): no longer the account's")
            continue
        name, model = devices[v.device_id]
        if (name, model) != (v.name, v.model):
            out.append(f"device {v.device_id}: {v.name!r} ({v.model}) then, {name!r} ({model}) now")
    return tuple(out)


def proven_text(p: Proven) -> str:
    """The proof as readable lines."""
    built = (f"definition version {p.version} as kept" if p.version is not None
             else "the templates folder (no version was kept)")
    out = [f"{p.campaign} · {p.account_id} · {p.wave} ({p.state})",
           f"  Message-ID  {p.message_id or '—'}",
           f"  sent        {p.sent_at or '—'}" + (f" to {p.inputs['email']}" if p.inputs else ""),
           f"  built from  {built}" + (f", sha256 {p.version_sha256}" if p.version_sha256 else ""),
           f"  recorded    sha256 {p.recorded_sha256 or '—'}",
           f"  rebuilt     sha256 {p.rebuilt_sha256 or '—'}" + (f" ({p.size:,} bytes)" if p.size else "")]
    if p.proven:
        out.append("  PROVEN: the rebuilt message is byte-identical to the one handed to the relay")
    else:
        out.append("  NOT PROVEN" + (" (the digests are equal, but see why)" if p.identical else "") + ":")
        out += [f"    - {w}" for w in p.why]
    if p.since:
        out.append("  changed since the send (the rebuild uses what was recorded then):")
        out += [f"    - {s}" for s in p.since]
    if p.eml:
        out.append(f"  the rebuilt message is written to {p.eml}")
    return "\n".join(escape_controls(line) for line in out)  # names and paths are data: no line breaks, no escapes
