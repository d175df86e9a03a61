"""`campaign bounces import PATH` and `campaign bounces fetch imaps://USER@HOST/FOLDER`: take in returned mail
that arrives after a message was accepted — bounces, delays, complaints — and act on it.

Messages are found in a Maildir or an mbox (`campaign.returns.mailboxes`) or an IMAP folder
(`campaign.returns.imap`); each is read (`campaign.returns.returned`), then matched to its delivery: by the
signed token of its return path (`campaign.verp`), else by the original Message-ID in the returned headers;
nothing is guessed. Then:

- a permanent failure (5.x.x) makes the delivery `bounced`, even after `sent` (so the notice no longer counts for
  `require_notice` or fair notice), and suppresses the address it went to;
- a relay that gave up (`Action: failed` with 4.x.x) makes it `failed`: not delivered, the address not at fault;
- a complaint (ARF) suppresses the address; the delivery stays `sent` (the person got it);
- a delay (4.x.x) and any other report are recorded only;
- a token whose signature does not verify is ignored (forged), and so is what matches no delivery: both are
  counted and listed. When the campaign signs its return path, a match by a Message-ID that anyone can work
  out (one sent before Message-IDs were keyed) takes the notice back but suppresses nothing: it is listed as
  `unsigned`.

A campaign that signs its return path also keys its Message-IDs (`campaign.notices.mime.unique_part`): a match by such a
Message-ID, verified with the key, proves as much as a token; one made with a key this process does not hold
is judged forged, like a token that does not verify.

Every message taken in is kept (`bounce` table) under its own Message-ID (or its digest), so taking in the same
mail again changes nothing — except mail judged forged, which is judged again each time it is met (a wrong or
missing key must not lose a bounce: with the right key it takes effect then). Messages are read in chunks,
bounded by count and by bytes (`Chunks`); each chunk is one transaction with its audit event (`--dry-run`: one
transaction for all, rolled back). Each message is parsed as it is read, outside the transaction, and only
what it says is kept. What cannot be read safely is listed, never read (`campaign.returns.mailboxes`).

Every text that comes from the returned mail or the IMAP server goes through `campaign.redaction` before it
is stored or shown.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from campaign import db, verp
from campaign.addresses import normalize as normalize_address
from campaign.definition import parse_definition
from campaign.errors import ConfigError
from campaign.models import BOUNCED, FAILED, SENT
from campaign.notices import mime
from campaign.results import Fields
from campaign.returns import imap, returned
from campaign.returns.imap import PROCESSED, TIMES, ImapTimes
from campaign.returns.mailboxes import NOT_A_FILE, TOO_LARGE, Found, Message, MiB, Unread, read_path
from campaign.store import audit
from campaign.store import bounces as store
from campaign.store import suppressions as suppression_rows

LISTED = 1000  # messages listed by origin in a result; the counts are always whole

# outcomes: of a message taken in, then of what was found and not read (listed, never kept)
APPLIED, RECORDED, UNSIGNED, UNMATCHED, FORGED, IGNORED = (
    "applied", "recorded", "unsigned", "unmatched", "forged", "ignored")
OUTCOMES = (APPLIED, RECORDED, UNSIGNED, UNMATCHED, FORGED, IGNORED, NOT_A_FILE, TOO_LARGE)
LISTED_OUTCOMES = (UNSIGNED, UNMATCHED, FORGED, IGNORED, NOT_A_FILE, TOO_LARGE)


@dataclass(frozen=True)
class Chunks:
    """How much one transaction takes in at most; the defaults are production's (tests pass smaller)."""

    max_messages: int = 500
    max_bytes: int = 32 * MiB  # read from (a chunk ends with the message that passes it)


CHUNKS = Chunks()


@dataclass
class ImportResult(Fields):
    """What an import or fetch did (or, under `dry_run`, would do); `as_json()` is its fields."""

    source: str
    dry_run: bool
    messages: int = 0  # found in the source (read, or listed as not_a_file or too_large)
    new: int = 0  # taken in now
    already: int = 0  # taken in before (or twice in this source): nothing changes
    judged_again: int = 0  # of `new`: judged forged before, judged otherwise now (the right key at last)
    kinds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(returned.KINDS, 0))
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    bounced: int = 0  # deliveries made `bounced`
    failed: int = 0  # deliveries made `failed` (the relay gave up)
    suppressed: int = 0  # addresses newly suppressed
    listed: list[dict[str, Any]] = field(default_factory=list)  # unsigned, unmatched, forged, ignored: the first
    moved: int = 0  # IMAP: messages moved to the processed folder
    campaigns: dict[str, dict[str, int]] = field(default_factory=dict)  # per campaign: bounced, failed, suppressed

    def add(self, other: ImportResult) -> None:
        for key in ("messages", "new", "already", "judged_again", "bounced", "failed", "suppressed", "moved"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for mine, theirs in ((self.kinds, other.kinds), (self.outcomes, other.outcomes)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        for slug, counts in other.campaigns.items():
            into = self.campaigns.setdefault(slug, dict.fromkeys(counts, 0))
            for k, v in counts.items():
                into[k] = into.get(k, 0) + v
        self.listed.extend(other.listed[:max(LISTED - len(self.listed), 0)])


# -- taking messages in ------------------------------------------------------------------------------------

class _Keys:
    """The bounce keys, read from the environment when the first token or keyed Message-ID needs them."""

    def __init__(self) -> None:
        self._keys: tuple[bytes, ...] | None = None

    def get(self) -> tuple[bytes, ...]:
        if self._keys is None:
            self._keys = verp.keys("returned mail names its delivery by a signed return path token or a keyed "
                                   "Message-ID, and verifying either needs the key it was made with; what was "
                                   "taken in so far stays, and importing again changes nothing for it")
        return self._keys


@dataclass
class _Campaigns:
    """Slug, whether it signs its return path and its waves' names, per campaign, read once per import."""

    slugs: dict[int, str] = field(default_factory=dict)
    signs: dict[int, bool] = field(default_factory=dict)
    waves: dict[int, str] = field(default_factory=dict)  # wave id → name

    def load(self, conn: Connection, ids: Iterable[int]) -> None:
        new = [i for i in set(ids) if i not in self.slugs]
        for cid, (slug, text, source) in store.definitions(conn, new).items():
            self.slugs[cid] = slug
            self.signs[cid] = parse_definition(text, source).return_path is not None
        self.waves.update(store.wave_names(conn, new))


Tx = Callable[[], AbstractContextManager[db.Tx]]


@dataclass(frozen=True)
class _Read:
    """A message read and parsed: where it lies (its bytes are let go at once) and what it says. `vouched`: a
    mail provider's verified signature stands behind it (`campaign.returns.providers`), so a match by Message-ID
    proves as much as a token."""

    message: Message
    report: returned.Report
    vouched: bool = False


def take_in(engine: Engine, found: Iterable[Found], actor: str, source: str, dry_run: bool = False,
            after_chunk: Callable[[list[Message]], int] | None = None, chunks: Chunks = CHUNKS) -> ImportResult:
    """Take in what was `found` chunk by chunk, each at most `chunks` (what was not read is counted and listed);
    `after_chunk` (not under a dry run) runs once a chunk is committed — the IMAP fetch moves the chunk's
    messages away there — and returns how many it moved."""
    result = ImportResult(source, dry_run)
    keys, campaigns = _Keys(), _Campaigns()
    with contextlib.ExitStack() as stack:
        if dry_run:
            tx_all = stack.enter_context(db.transaction(engine, actor, "bounces.import", dry_run=True))

            @contextmanager
            def same() -> Iterator[db.Tx]:
                yield tx_all
            chunk_tx: Tx = same
        else:
            def chunk_tx() -> AbstractContextManager[db.Tx]:
                return db.transaction(engine, actor, "bounces.import")
        chunk: list[_Read] = []
        size = 0
        for item in found:
            if isinstance(item, Unread):
                _unread(item, result)
                continue
            # Parsed as it is read, outside any transaction; only what it says is kept, not its bytes.
            chunk.append(_Read(Message(item.origin, b"", item.uid), returned.read(item.raw)))
            size += len(item.raw)
            if len(chunk) >= chunks.max_messages or size >= chunks.max_bytes:
                _chunk(chunk_tx, chunk, actor, source, keys, campaigns, result, after_chunk, dry_run)
                chunk, size = [], 0
        if chunk:
            _chunk(chunk_tx, chunk, actor, source, keys, campaigns, result, after_chunk, dry_run)
        if dry_run:
            tx_all.note(**_note(result))
    return result


def _unread(item: Unread, result: ImportResult) -> None:
    result.messages += 1
    result.outcomes[item.outcome] += 1
    if len(result.listed) < LISTED:
        result.listed.append({"origin": returned.safe(item.origin, 1024), "kind": None, "outcome": item.outcome,
                              "why": item.why, "status": None, "recipient": None})


def _note(r: ImportResult) -> dict[str, Any]:
    return {"source": r.source, "messages": r.messages, "new": r.new, "already": r.already,
            "judged_again": r.judged_again,
            "kinds": {k: v for k, v in r.kinds.items() if v}, "outcomes": {k: v for k, v in r.outcomes.items() if v},
            "bounced": r.bounced, "failed": r.failed, "suppressed": r.suppressed}


def _chunk(chunk_tx: Tx, chunk: list[_Read], actor: str, source: str, keys: _Keys, campaigns: _Campaigns,
           result: ImportResult, after_chunk: Callable[[list[Message]], int] | None, dry_run: bool) -> None:
    part = ImportResult(source, dry_run, messages=len(chunk))
    with chunk_tx() as tx:
        _apply(tx.conn, chunk, actor, keys, campaigns, part)
        if not dry_run:
            tx.note(**_note(part))
            if not part.new:
                tx.action = None  # mail taken in before: nothing changes, not even the audit log
    if after_chunk is not None and not dry_run and chunk:
        part.moved = after_chunk([r.message for r in chunk])
    result.add(part)


@dataclass
class _Writes:
    """What a chunk changes, written together at its end: one UPDATE (executemany) for the deliveries, one INSERT
    for the new suppressions. A delivery's state and an address's suppression are known from the chunk's reads
    (its transaction holds them: BEGIN IMMEDIATE on SQLite; on PostgreSQL the moves re-check the state)."""

    actor: str
    now: dt.datetime
    suppressed_before: set[str]
    moves: dict[int, dict[str, Any]] = field(default_factory=dict)  # delivery id → its new state and why
    suppressions: dict[str, dict[str, Any]] = field(default_factory=dict)  # lower-cased address → its row

    def move(self, delivery: Any, to_state: str, why: str) -> bool:
        """Move a `sent` delivery to `to_state`; False when it is not `sent` (or moves already)."""
        if delivery.state != SENT or delivery.id in self.moves:
            return False
        self.moves[delivery.id] = {"d_id": delivery.id, "d_state": to_state, "d_error": why[:1024]}
        return True

    def suppress(self, delivery: Any, reason: str, source: str) -> bool:
        """Suppress the address the delivery went to; False when it is suppressed already."""
        if not delivery.email:
            return False
        try:
            address = normalize_address(delivery.email)
        except ValueError:
            return False
        lower = address.lower()
        if lower in self.suppressed_before or lower in self.suppressions:
            return False
        self.suppressions[lower] = {"email": address, "reason": " ".join(reason.split())[:1024], "source": source,
                                    "campaign_id": delivery.campaign_id, "created_at": self.now,
                                    "created_by": self.actor}
        return True

    def write(self, conn: Connection) -> None:
        store.move(conn, list(self.moves.values()), SENT, self.now)
        suppression_rows.add(conn, self.suppressions.values())


@dataclass
class _Match:
    message: Message
    report: returned.Report
    ref: str | None = None
    via: str | None = None
    message_id: str | None = None  # matched by Message-ID: the one it must equal
    outcome: str | None = None  # decided before matching: forged, unmatched, ignored
    why: str = ""
    proven: bool = False  # matched by a Message-ID made with a bounce key held: as good as a token
    forged_before: int | None = None  # the id of its row when it was taken in before and judged forged


def _apply(conn: Connection, items: list[_Read], actor: str, keys: _Keys, campaigns: _Campaigns,
           out: ImportResult) -> None:
    store.take_turn(conn)
    before = store.known(conn, [i.report.key for i in items])
    taken: set[str] = set()
    todo: list[_Match] = []
    for item in items:
        key = item.report.key
        was = before.get(key)
        if key in taken or (was is not None and was[1] != FORGED):
            out.already += 1
            continue
        taken.add(key)
        m = _reference(item.message, item.report, keys)
        m.proven = item.vouched
        m.forged_before = was[0] if was is not None else None  # judged again: the key may be the right one now
        todo.append(m)
    found = store.deliveries(conn, [m.ref for m in todo if m.ref is not None and m.outcome is None])
    campaigns.load(conn, [row.campaign_id for rows in found.values() for row in rows])
    now = db.utcnow()
    writes = _Writes(actor, now, suppression_rows.suppressed(
        conn, [row.email for rows in found.values() for row in rows if row.email]))
    rows: list[dict[str, Any]] = []
    again: list[dict[str, Any]] = []
    per_campaign: dict[int, dict[str, int]] = {}
    for m in todo:
        r = m.report
        delivery = None
        if m.outcome is None:
            candidates = found.get(m.ref or "", [])
            if m.message_id is not None:
                candidates = [c for c in candidates if c.message_id == m.message_id]
            if len(candidates) == 1:
                delivery = candidates[0]
            else:
                m.outcome = UNMATCHED
                m.why = ("matches no delivery" if not candidates else
                         f"matches {len(candidates)} deliveries: none is guessed") + \
                    (" (by its return path token)" if m.message_id is None else
                     f" (Message-ID {returned.safe(m.message_id, 300)})")
        if delivery is not None and m.via == "message_id" and not m.proven:
            _prove(m, delivery, campaigns, keys)
            if m.outcome == FORGED:
                delivery = None
        if m.forged_before is not None and m.outcome == FORGED:
            out.already += 1  # judged forged again: nothing changes
            continue
        out.new += 1
        out.judged_again += m.forged_before is not None
        out.kinds[r.kind] += 1
        if delivery is not None:
            counts = per_campaign.setdefault(delivery.campaign_id, {"bounced": 0, "failed": 0, "suppressed": 0})
            _effect(writes, m, delivery, campaigns.signs.get(delivery.campaign_id, False), out, counts)
        outcome = m.outcome or RECORDED
        out.outcomes[outcome] += 1
        origin = returned.safe(m.message.origin, 1024)
        if outcome in LISTED_OUTCOMES and len(out.listed) < LISTED:
            out.listed.append({"origin": origin, "kind": r.kind, "outcome": outcome, "why": m.why,
                               "status": r.status, "recipient": r.recipient})
        email = delivery.email if delivery else r.recipient or None
        row = {"kind": r.kind, "outcome": outcome, "matched_by": m.via if delivery else None,
               "delivery_id": delivery.id if delivery else None,
               "campaign_id": delivery.campaign_id if delivery else None,
               "email": email[:254] if email is not None else None,
               "status": r.status, "detail": ("; ".join(p for p in (m.why, r.detail) if p))[:1024] or None,
               "origin": origin, "reported_at": r.reported_at, "imported_at": now, "imported_by": actor}
        if m.forged_before is None:
            rows.append({"key": r.key, **row})
        else:
            again.append({"id": m.forged_before, **row})
    writes.write(conn)
    store.record(conn, rows)
    store.judge_again(conn, again, FORGED)
    for cid, counts in per_campaign.items():
        slug = campaigns.slugs.get(cid, str(cid))
        audit.record(conn, actor, "bounces.import", cid, source=out.source, **counts)
        into = out.campaigns.setdefault(slug, dict.fromkeys(counts, 0))
        for k, v in counts.items():
            into[k] += v


def _reference(message: Message, report: returned.Report, keys: _Keys) -> _Match:
    """Which delivery the message names, before looking: by a token whose signature verifies, else by a
    Message-ID of ours; a token that does not verify makes it forged."""
    m = _Match(message, report)
    if report.kind == returned.UNRECOGNIZED:
        m.outcome, m.why = IGNORED, "not a bounce or complaint report"
        return m
    if report.tokens:
        for token in report.tokens:
            ref = verp.verify(token, keys.get())
            if ref is not None:
                m.ref, m.via = ref, "token"
                return m
        m.outcome, m.why = FORGED, ("its return path token does not verify (forged or damaged, or signed with a key "
                                    f"this import does not hold: see {verp.KEY_ENV}): ignored, and judged again "
                                    "when met again")
        return m
    for mid in report.message_ids:
        ref = verp.reference(mid)
        if ref is not None:
            m.ref, m.via, m.message_id = ref, "message_id", mid
            return m
    m.outcome = UNMATCHED
    m.why = ("no return path token and no Message-ID of ours in the returned headers" if not report.message_ids
             else f"the returned Message-ID {returned.safe(report.message_ids[0], 300)} is not one of ours")
    return m


def _prove(m: _Match, delivery: Any, campaigns: _Campaigns, keys: _Keys) -> None:
    """A match by Message-ID, for a campaign that signs its return path: proven (as good as a token) when the
    delivery's Message-ID was made with a bounce key held; the plain digest (a Message-ID from before they were
    keyed) proves nothing and leaves the match unsigned; made with another key, it is judged forged, as a token
    that does not verify."""
    if not campaigns.signs.get(delivery.campaign_id, False):
        return
    slug, wave = campaigns.slugs[delivery.campaign_id], campaigns.waves[delivery.wave_id]
    unique = str(delivery.message_id)[1:33]
    if any(hmac.compare_digest(unique, mime.unique_part(slug, wave, delivery.account_id, key))
           for key in keys.get()):
        m.proven = True
    elif unique != mime.unique_part(slug, wave, delivery.account_id):
        m.outcome, m.why = FORGED, ("its Message-ID is one of ours but does not verify with the bounce keys this "
                                    f"import holds (see {verp.KEY_ENV}): ignored, and judged again when met again")


def _effect(writes: _Writes, m: _Match, delivery: Any, signs: bool, out: ImportResult,
            counts: dict[str, int]) -> None:
    """What a matched report does to its delivery and its address; sets the match's outcome."""
    r = m.report
    signed = m.via == "token" or m.proven or not signs
    what = f"{r.status} {r.detail}".strip() if r.status else r.detail
    bounced = failed = suppressed = False
    if r.kind == returned.BOUNCE:
        bounced = writes.move(delivery, BOUNCED, f"returned after it was sent: {what}")
        suppressed = signed and writes.suppress(delivery, f"bounced after it was sent: {what}", "bounce")
    elif r.kind == returned.EXPIRED:
        failed = writes.move(delivery, FAILED, f"the relay gave up after it was sent: {what}")
    elif r.kind == returned.COMPLAINT:
        suppressed = signed and writes.suppress(delivery, what, "complaint")  # "complaint (abuse) reported by …"
    for name, done in (("bounced", bounced), ("failed", failed), ("suppressed", suppressed)):
        setattr(out, name, getattr(out, name) + done)
        counts[name] += done
    changed = bounced or failed or suppressed
    if not signed and r.kind in (returned.BOUNCE, returned.COMPLAINT):
        m.outcome = UNSIGNED
        m.why = ("matched by a Message-ID that anyone can work out (sent before Message-IDs were keyed) while the "
                 "campaign signs its return path: "
                 + ("the notice no longer counts as delivered, but " if changed else "")
                 + "the address is not suppressed (`campaign suppress add` if it should be)")
        return
    m.outcome = APPLIED if changed else RECORDED


def take_vouched(conn: Connection, reports: list[tuple[str, returned.Report]], actor: str,
                 source: str) -> ImportResult:
    """Reports a mail provider sent, its signature verified (`campaign.returns.providers.take`): matched and applied
    exactly as an import's, in the caller's transaction. Taken in twice, a report changes nothing (its key)."""
    result = ImportResult(source, False, messages=len(reports))
    _apply(conn, [_Read(Message(origin, b""), report, vouched=True) for origin, report in reports], actor, _Keys(),
           _Campaigns(), result)
    return result


def import_path(engine: Engine, path: Path | str, actor: str, dry_run: bool = False,
                chunks: Chunks = CHUNKS) -> ImportResult:
    """`campaign bounces import PATH`: a Maildir folder or an mbox file of returned mail."""
    path = Path(path)
    messages = read_path(path)
    return take_in(engine, messages, actor, str(path), dry_run=dry_run, chunks=chunks)


def fetch(engine: Engine, url: str, actor: str, move_to: str = PROCESSED, dry_run: bool = False,
          times: ImapTimes = TIMES, chunks: Chunks = CHUNKS) -> ImportResult:
    """`campaign bounces fetch URL`: take in the messages of an IMAP folder, then move each chunk taken in to
    `move_to` (nothing moves under a dry run: the folder is opened read-only)."""
    parsed = imap.parse_imap_url(url)
    if not imap.plain_folder(move_to):
        raise ConfigError(f"--move-to {move_to[:80]!r}: use a plain ASCII folder name")
    password = imap.password()
    with imap.session(parsed, password, move_to, readonly=dry_run, times=times) as session:
        return take_in(engine, session.messages(), actor, str(parsed), dry_run=dry_run, after_chunk=session.move,
                       chunks=chunks)
