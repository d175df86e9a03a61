"""The tables. Every timestamp is an aware UTC datetime (`UTCDateTime`).

The schema covers the whole product (SPEC §3, §6–§8): people and their devices, campaigns and
their waves, the send ledger, suppressions, the setting changes made by a flip (the audit trail,
never deleted), audit events, scheduler steps claimed exactly once, leases and live workers.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint, func
from sqlmodel import Field, SQLModel

from campaign.clock import UTCDateTime

metadata = SQLModel.metadata
# Stable constraint names, so that migrations name the same things on SQLite and PostgreSQL.
metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Delivery states (SPEC §6).
PENDING, SENDING, SENT, FAILED, BOUNCED, SUPPRESSED, SKIPPED, EXPIRED = (
    "pending", "sending", "sent", "failed", "bounced", "suppressed", "skipped", "expired")
DELIVERY_STATES = (PENDING, SENDING, SENT, FAILED, BOUNCED, SUPPRESSED, SKIPPED, EXPIRED)
SETTLED_STATES = (SENT, FAILED, BOUNCED, SUPPRESSED, SKIPPED, EXPIRED)

# Campaign states.
DRAFT, SCHEDULED, PAUSED, CANCELLED, DONE = "draft", "scheduled", "paused", "cancelled", "done"
CAMPAIGN_STATES = (DRAFT, SCHEDULED, PAUSED, CANCELLED, DONE)

# Setting change states (the flip and its rollback). `waiting`: fair notice — the device is flipped at `due_at`.
CHANGED, HELD_BACK, WAITING, ROLLED_BACK, LEFT = "changed", "held_back", "waiting", "rolled_back", "left"
CHANGE_STATES = (CHANGED, HELD_BACK, WAITING, ROLLED_BACK, LEFT)

# With `[apply] kind = "http"` (SPEC G14) a change row also passes through these states, kept apart from
# CHANGE_STATES (whose counts `status` and the HTML report show as they are): `applying`, the flip recorded and
# sent (or about to be) to the settings service, not yet confirmed; `undoing`, the same for its rollback;
# `unknown`, the service answered `unknown_device`: it does not know the device.
APPLYING, UNDOING, UNKNOWN = "applying", "undoing", "unknown"
APPLY_STATES = (APPLYING, UNDOING, UNKNOWN)
# An apply batch: `waiting` until the service has answered for each of its changes (`done`); `paused` after a
# 4xx for the whole batch, until a person fixes the cause and runs the flip (or rollback) again.
BATCH_WAITING, BATCH_PAUSED, BATCH_DONE = "waiting", "paused", "done"


def _ts(nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def _fk(target: str, nullable: bool = False, index: bool = True, type_: Any = None) -> Any:
    return Field(default=None, sa_column=Column(type_ or Integer, ForeignKey(target), nullable=nullable,
                                                index=index))


# People, devices and settings are keyed by their own ids: on SQLite they are WITHOUT ROWID tables, so an
# import writes one B-tree per table instead of two.
class Account(SQLModel, table=True):
    __tablename__ = "account"
    __table_args__ = {"sqlite_with_rowid": False}

    id: str = Field(primary_key=True, max_length=128)
    email: str = Field(max_length=254)
    name: str = Field(max_length=256)
    locale: str = Field(max_length=35)
    timezone: str = Field(max_length=64)
    country: str = Field(max_length=2)
    created_at: dt.datetime = _ts()
    updated_at: dt.datetime = _ts()


class Device(SQLModel, table=True):
    __tablename__ = "device"
    __table_args__ = {"sqlite_with_rowid": False}

    id: str = Field(primary_key=True, max_length=128)
    account_id: str = Field(sa_column=Column(String(128), ForeignKey("account.id"), nullable=False,
                                             index=True))
    name: str = Field(max_length=256)
    model: str = Field(max_length=256)
    created_at: dt.datetime = _ts()
    updated_at: dt.datetime = _ts()


class DeviceSetting(SQLModel, table=True):
    """One setting of one device. `change_id` is set when a campaign wrote this value, and cleared
    when the person set it themselves (an import with a different value): rollback relies on it."""

    __tablename__ = "device_setting"
    # No index on (key, value): the audience is selected a few times per campaign by one scan, while
    # such an index would cost every import as much again as the table itself.
    __table_args__ = {"sqlite_with_rowid": False}

    device_id: str = Field(sa_column=Column(String(128), ForeignKey("device.id"), primary_key=True))
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=128)
    changed_at: dt.datetime = _ts()
    change_id: int | None = _fk("setting_change.id", nullable=True, index=False)


class Campaign(SQLModel, table=True):
    __tablename__ = "campaign"

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=64, unique=True)
    name: str = Field(max_length=256)
    definition: str = Field(sa_column=Column(Text, nullable=False))  # the TOML as given, frozen
    source: str = Field(max_length=1024)  # where the definition was read from
    template: str = Field(max_length=128)
    setting: str = Field(max_length=64)
    from_value: str = Field(max_length=128)
    to_value: str = Field(max_length=128)
    cutoff: dt.datetime = _ts()
    state: str = Field(default=DRAFT, max_length=16)
    state_reason: str | None = Field(default=None, max_length=1024)
    created_at: dt.datetime = _ts()
    created_by: str = Field(max_length=128)
    scheduled_at: dt.datetime | None = _ts(nullable=True)
    rolled_back_at: dt.datetime | None = _ts(nullable=True)


class Wave(SQLModel, table=True):
    __tablename__ = "wave"
    __table_args__ = (UniqueConstraint("campaign_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = _fk("campaign.id")
    name: str = Field(max_length=64)
    position: int
    at: dt.datetime = _ts()
    audience: str = Field(max_length=16)  # affected | changed | all
    expires: dt.datetime = _ts()
    state: str = Field(default="waiting", max_length=16)  # waiting | sending | paused | done | cancelled
    paused_reason: str | None = Field(default=None, max_length=1024)
    materialized_at: dt.datetime | None = _ts(nullable=True)
    finished_at: dt.datetime | None = _ts(nullable=True)


class Delivery(SQLModel, table=True):
    """The send ledger: exactly one row per (campaign, wave, account)."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("campaign_id", "wave_id", "account_id"),
        Index("ix_delivery_claim", "wave_id", "state", "next_attempt_at"),
        Index("ix_delivery_account", "account_id"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger().with_variant(Integer, "sqlite"),
                                                          primary_key=True, autoincrement=True))
    campaign_id: int = _fk("campaign.id", index=False)
    wave_id: int = _fk("wave.id", index=False)
    account_id: str = Field(sa_column=Column(String(128), ForeignKey("account.id"), nullable=False))
    state: str = Field(default=PENDING, max_length=12)
    email: str | None = Field(default=None, max_length=254)  # the address it went to, kept as evidence
    locale: str | None = Field(default=None, max_length=35)  # the template locale it was rendered in
    attempts: int = Field(default=0)
    not_before: dt.datetime | None = _ts(nullable=True)  # opening of the recipient's send window
    next_attempt_at: dt.datetime | None = _ts(nullable=True)
    expires_at: dt.datetime = _ts()
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: dt.datetime | None = _ts(nullable=True)
    message_id: str | None = Field(default=None, max_length=255)
    sent_at: dt.datetime | None = _ts(nullable=True)
    last_error: str | None = Field(default=None, max_length=1024)
    updated_at: dt.datetime = _ts()
    # What the mail provider reported (issue 25 item 3, `POST /events/{provider}`): when the recipient's mail
    # server accepted the message, and which server that was (as the provider names it) — stronger evidence than
    # our relay's acceptance (`sent_at`).
    delivered_at: dt.datetime | None = _ts(nullable=True)
    accepted_by: str | None = Field(default=None, max_length=255)
    # The proof of the exact words (docs/reports.md): the SHA-256 of the message bytes handed to the relay, the
    # definition version whose kept files built it (None: built from the templates folder, no version kept) and
    # the digest of those files, and the per-delivery inputs that rebuild it (JSON: date, name, address, ...).
    message_sha256: str | None = Field(default=None, max_length=64)
    version: int | None = Field(default=None)
    version_sha256: str | None = Field(default=None, max_length=64)
    message_inputs: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class Suppression(SQLModel, table=True):
    """An address never to be mailed. Matched without regard to case: mail systems fold the local part
    too in practice, and a missed match here would mail someone who asked not to be."""

    __tablename__ = "suppression"

    email: str = Field(primary_key=True, max_length=254)  # normalized: domain lower-cased
    reason: str = Field(max_length=1024)
    source: str = Field(max_length=16)  # manual | import | bounce | complaint
    campaign_id: int | None = _fk("campaign.id", nullable=True, index=False)
    created_at: dt.datetime = _ts()
    created_by: str = Field(max_length=128)


# Suppression looks addresses up by lower(email) (store/suppressions.py): one address, one row, any case.
Index("ix_suppression_email_lower", func.lower(Suppression.__table__.c.email), unique=True)  # type: ignore[attr-defined]


class Bounce(SQLModel, table=True):
    """One returned message taken in by `campaign bounces` (a bounce, a delay, a complaint, or mail that is none
    of these): kept as evidence, and so that taking in the same message again changes nothing."""

    __tablename__ = "bounce"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=255, unique=True)  # mid:<its own Message-ID>, or sha256:<digest of its bytes>
    kind: str = Field(max_length=16)  # bounce | expired | delay | complaint | other | unrecognized
    outcome: str = Field(max_length=16)  # applied | recorded | unsigned | unmatched | forged | ignored
    matched_by: str | None = Field(default=None, max_length=16)  # token | message_id
    delivery_id: int | None = Field(default=None, sa_column=Column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("delivery.id"), nullable=True, index=True))
    campaign_id: int | None = _fk("campaign.id", nullable=True, index=False)
    email: str | None = Field(default=None, max_length=254)  # the delivery's address, else the one reported
    status: str | None = Field(default=None, max_length=16)  # the enhanced status code, e.g. 5.1.1
    detail: str | None = Field(default=None, max_length=1024)  # the diagnostic, or why it matched nothing
    origin: str = Field(max_length=1024)  # where it was read: file (and line), or IMAP folder and UID
    reported_at: dt.datetime | None = _ts(nullable=True)  # its Date header
    imported_at: dt.datetime = _ts()
    imported_by: str = Field(max_length=128)


class ProviderEvent(SQLModel, table=True):
    """One event a mail provider reported at `POST /events/{provider}` (delivered, bounced, complained, delayed),
    its signature verified: kept as evidence, so that the same event sent again changes nothing, and so that the
    provider's own message id, once an event names it beside our Message-ID, finds the delivery for the events
    that name only it."""

    __tablename__ = "provider_event"
    __table_args__ = (UniqueConstraint("provider", "key"),
                      Index("ix_provider_event_message", "provider", "provider_message_id"))

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(max_length=16)  # ses | sendgrid | postmark | mailgun
    key: str = Field(max_length=255)  # the event's own id with the provider (or what identifies it)
    kind: str = Field(max_length=16)  # delivered | bounce | expired | delay | complaint | other
    outcome: str = Field(max_length=16)  # applied | recorded | unmatched | unsigned
    delivery_id: int | None = Field(default=None, sa_column=Column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("delivery.id"), nullable=True, index=True))
    campaign_id: int | None = _fk("campaign.id", nullable=True, index=False)
    provider_message_id: str | None = Field(default=None, max_length=255)
    message_id: str | None = Field(default=None, max_length=255)  # ours, as the event gave it (or found by the other)
    recipient: str | None = Field(default=None, max_length=254)
    detail: str | None = Field(default=None, max_length=1024)  # what the provider said, redacted
    occurred_at: dt.datetime | None = _ts(nullable=True)  # when the provider says it happened
    received_at: dt.datetime = _ts()


class ProviderNonce(SQLModel, table=True):
    """A one-time value of a signed request (Mailgun's token), kept while a request carrying it could still be
    accepted: a request that repeats one is a replay, refused."""

    __tablename__ = "provider_nonce"

    provider: str = Field(primary_key=True, max_length=16)
    nonce: str = Field(primary_key=True, max_length=255)
    seen_at: dt.datetime = _ts(index=True)


class SettingChange(SQLModel, table=True):
    """One device's setting switched (or held back) by a campaign: the audit trail, kept forever."""

    __tablename__ = "setting_change"
    __table_args__ = (UniqueConstraint("campaign_id", "device_id"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = _fk("campaign.id", index=False)
    device_id: str = Field(sa_column=Column(String(128), ForeignKey("device.id"), nullable=False))
    account_id: str = Field(sa_column=Column(String(128), ForeignKey("account.id"), nullable=False,
                                             index=True))
    setting: str = Field(max_length=64)
    from_value: str = Field(max_length=128)
    to_value: str = Field(max_length=128)
    state: str = Field(max_length=12)  # changed | held_back | waiting | rolled_back | left; APPLY_STATES
    actor: str = Field(default="", sa_column=Column(String(128), nullable=False, server_default=""))
    decided_at: dt.datetime = _ts()  # when the flip looked at this device
    notice_at: dt.datetime | None = _ts(nullable=True)  # the account's first delivered notice, as the flip saw it
    due_at: dt.datetime | None = _ts(nullable=True)  # waiting: the instant fair notice allows the flip
    flipped_at: dt.datetime | None = _ts(nullable=True)
    rolled_back_at: dt.datetime | None = _ts(nullable=True)
    note: str | None = Field(default=None, max_length=1024)  # why held back, or why rollback left it
    stage: int | None = Field(default=None)  # `[flip] stages`: the stage of its account (None: not a staged flip)


# A stage of a staged flip (`[flip] stages`): `running` from its first run until a run of it goes to its end
# (`finished`); `halted` when a guard tripped, until `campaign resume` (back to where it was) or a rollback.
STAGE_RUNNING, STAGE_FINISHED, STAGE_HALTED = "running", "finished", "halted"


class FlipStage(SQLModel, table=True):
    """One stage of a staged flip that has begun: when, what its runs asked of the settings service, and why a
    guard halted it (the stage's counts are its change rows', by their `stage`)."""

    __tablename__ = "flip_stage"
    __table_args__ = (UniqueConstraint("campaign_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = _fk("campaign.id", index=False)
    number: int  # 1-based, as `[flip] stages` lists them
    percent: str = Field(max_length=16)  # its share, as the definition says it ("10%")
    state: str = Field(default=STAGE_RUNNING, max_length=12)  # running | finished | halted
    started_at: dt.datetime = _ts()
    finished_at: dt.datetime | None = _ts(nullable=True)
    requests: int = Field(default=0)  # batches sent to the settings service (answered, or given up on)
    errors: int = Field(default=0)  # of them, without a usable answer after every retry, or refused
    halted_at: dt.datetime | None = _ts(nullable=True)
    halted_from: str | None = Field(default=None, max_length=12)  # running | finished: where resume goes back to
    guard: str | None = Field(default=None, max_length=32)  # conflict_rate | error_rate | complaints
    measured: float | None = Field(default=None)
    threshold: float | None = Field(default=None)
    resumed_at: dt.datetime | None = _ts(nullable=True)  # a person looked: its guards are not checked again
    resumed_by: str | None = Field(default=None, max_length=128)


class ApplyBatch(SQLModel, table=True):
    """One batch of changes sent to the settings service (`[apply] kind = "http"`): recorded before it is
    sent, and sent again with the same Idempotency-Key until the service has answered for every change."""

    __tablename__ = "apply_batch"

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = _fk("campaign.id")
    operation: str = Field(max_length=16)  # flip | rollback
    idempotency_key: str = Field(max_length=200, unique=True)
    state: str = Field(default=BATCH_WAITING, max_length=12)  # waiting | paused | done
    changes: int
    # The change rows it carries (setting_change.id, a JSON list, in the order sent): kept here rather than as
    # a column of the change rows, which recording a batch would then have to update one by one.
    change_ids: str = Field(sa_column=Column(Text, nullable=False))
    attempts: int = Field(default=0)  # requests sent for it, retries included
    created_at: dt.datetime = _ts()
    sent_at: dt.datetime | None = _ts(nullable=True)  # the last request
    done_at: dt.datetime | None = _ts(nullable=True)
    error: str | None = Field(default=None, max_length=1024)  # why it is paused, or the last failed attempt


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    at: dt.datetime = _ts(index=True)
    actor: str = Field(max_length=128)
    campaign_id: int | None = _fk("campaign.id", nullable=True)
    action: str = Field(max_length=64)
    detail: str = Field(default="{}", sa_column=Column(Text, nullable=False))  # JSON
    # The process's own login name and host, when the login differs from the declared actor (--actor is a
    # claim; these say where it was made).
    login: str | None = Field(default=None, max_length=128)
    host: str | None = Field(default=None, max_length=255)


class VersionFile(SQLModel, table=True):
    """A file of one version of a campaign's definition, as it was when that version was created (`create`,
    `create --replace`): the definition's TOML and every template of its folder, so that what changed since an
    approved version can be shown, and what people were sent can be traced to the words approved."""

    __tablename__ = "version_file"
    __table_args__ = (UniqueConstraint("campaign_id", "version", "path"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = _fk("campaign.id", index=False)
    version: int  # 1 as created; each `create --replace` adds one (as approvals count them)
    path: str = Field(max_length=512)  # "definition.toml", or "templates/<locale>/<file>" in the template folder
    sha256: str = Field(max_length=64)
    body: str = Field(sa_column=Column(Text, nullable=False))


class Step(SQLModel, table=True):
    """A scheduled step of a campaign (a wave, the flip), claimed exactly once before it runs."""

    __tablename__ = "step"
    __table_args__ = (UniqueConstraint("campaign_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = _fk("campaign.id", index=False)
    name: str = Field(max_length=64)  # wave:<name> | flip
    due_at: dt.datetime = _ts()
    state: str = Field(default="pending", max_length=12)  # pending | running | done | failed | cancelled
    owner: str | None = Field(default=None, max_length=128)
    started_at: dt.datetime | None = _ts(nullable=True)
    finished_at: dt.datetime | None = _ts(nullable=True)
    error: str | None = Field(default=None, max_length=1024)


class Lease(SQLModel, table=True):
    """A named lease (scheduler leadership on SQLite); expires unless renewed."""

    __tablename__ = "lease"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: dt.datetime = _ts()


class Worker(SQLModel, table=True):
    """A live sending process; its heartbeat lets others reclaim its deliveries when it dies."""

    __tablename__ = "worker"

    id: str = Field(primary_key=True, max_length=128)  # host:pid:nonce
    host: str = Field(max_length=255)
    pid: int
    campaign_id: int | None = _fk("campaign.id", nullable=True, index=False)
    wave_id: int | None = _fk("wave.id", nullable=True, index=False)
    started_at: dt.datetime = _ts()
    heartbeat_at: dt.datetime = _ts()


class CountSnapshot(SQLModel, table=True):
    """The figures of a campaign's `status` that scan its ledger and change rows, as last counted (JSON), and when:
    the console shows them at once and counts again in the background, one count per campaign for every console
    process (at a million accounts a count takes seconds; a page must not wait for it)."""

    __tablename__ = "count_snapshot"

    campaign_id: int = Field(sa_column=Column(Integer, ForeignKey("campaign.id"), primary_key=True,
                                              autoincrement=False))
    taken_at: dt.datetime = _ts()
    body: str = Field(sa_column=Column(Text, nullable=False))  # JSON: status.Counted


class WebhookEvent(SQLModel, table=True):
    """The webhook outbox (issue 25 item 2): one row per campaign event that is also a webhook event, written in
    the transaction of its audit event (so an event rolled back is never announced), with the exact body every
    endpoint is sent. Which endpoints get it is decided when it is delivered (`webhook_delivery`)."""

    __tablename__ = "webhook_event"

    id: int | None = Field(default=None, primary_key=True)
    audit_event_id: int = _fk("audit_event.id", index=False)
    campaign_id: int | None = _fk("campaign.id", nullable=True, index=False)
    type: str = Field(max_length=64)  # wave.finished, flip.halted, approval.needed, ...
    msg_id: str = Field(max_length=64, unique=True)  # the Standard Webhooks `webhook-id`, the same on every retry
    at: dt.datetime = _ts(index=True)
    payload: str = Field(sa_column=Column(Text, nullable=False))  # the JSON body, as sent


class WebhookDelivery(SQLModel, table=True):
    """One event to one configured endpoint (`[[webhooks]]` by name): tried until the endpoint answers 2xx
    (`delivered`), or given up after its attempts or the maximum age (`failed`)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (UniqueConstraint("event_id", "endpoint"),
                      Index("ix_webhook_delivery_next", "endpoint", "state", "event_id"))

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = _fk("webhook_event.id", index=False)
    endpoint: str = Field(max_length=128)  # the endpoint's name in campaign.toml
    state: str = Field(default="pending", max_length=12)  # pending | delivered | failed
    attempts: int = Field(default=0)
    next_attempt_at: dt.datetime | None = _ts(nullable=True)
    last_attempt_at: dt.datetime | None = _ts(nullable=True)
    last_status: int | None = Field(default=None)  # the HTTP status of the last answer, if one came
    last_error: str | None = Field(default=None, max_length=1024)  # redacted
    delivered_at: dt.datetime | None = _ts(nullable=True)
    created_at: dt.datetime = _ts()


def _table(model: type[SQLModel]) -> Table:
    return model.__table__  # type: ignore[attr-defined]


# The Core tables, for set-based SQL on hot paths (STYLE: ORM objects only for the few rows a command touches).
ACCOUNT, DEVICE, DEVICE_SETTING = _table(Account), _table(Device), _table(DeviceSetting)
CAMPAIGN, WAVE, DELIVERY, SUPPRESSION = _table(Campaign), _table(Wave), _table(Delivery), _table(Suppression)
SETTING_CHANGE, AUDIT_EVENT, STEP = _table(SettingChange), _table(AuditEvent), _table(Step)
BOUNCE = _table(Bounce)
LEASE, WORKER = _table(Lease), _table(Worker)
APPLY_BATCH = _table(ApplyBatch)
VERSION_FILE = _table(VersionFile)
COUNT_SNAPSHOT = _table(CountSnapshot)
FLIP_STAGE = _table(FlipStage)
PROVIDER_EVENT, PROVIDER_NONCE = _table(ProviderEvent), _table(ProviderNonce)
WEBHOOK_EVENT, WEBHOOK_DELIVERY = _table(WebhookEvent), _table(WebhookDelivery)
