"""Who a campaign speaks to: the one definition of "affected" (owns a device whose setting still equals
`from`, within the audience filters), of "changed" (had a device flipped by the campaign) and of "not told" (affected,
never told by the campaign, and at an address no earlier wave tried, or added after the earlier waves)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, distinct, exists, func, select, union

from campaign.definition import Definition
from campaign.models import ACCOUNT, CHANGED, DELIVERY, DEVICE, DEVICE_SETTING, PENDING, SENDING, SENT, SETTING_CHANGE
from campaign.recipients import DeviceView, Recipient
from campaign.store._lists import among
from campaign.store.suppressions import matches  # one rule for a suppressed address

A, D, S, SC, DL = ACCOUNT, DEVICE, DEVICE_SETTING, SETTING_CHANGE, DELIVERY
RULES = ("affected", "changed", "all", "not_told")
BY_COLUMNS = {"locale": A.c.locale, "country": A.c.country, "model": D.c.model}

_FROM = S.join(D, D.c.id == S.c.device_id).join(A, A.c.id == D.c.account_id)


def affected_where(d: Definition) -> list[ColumnElement[bool]]:
    """The conditions (over devices, their settings and accounts) of "still affected now"."""
    conds: list[ColumnElement[bool]] = [S.c.key == d.setting, S.c.value == d.from_value]
    if d.countries:
        conds.append(A.c.country.in_(list(d.countries)))
    if d.device_models:
        conds.append(D.c.model.in_(list(d.device_models)))
    return conds


def affected(d: Definition, *columns: Any) -> Select[Any]:
    """A select of `columns` (default: the account id) over every affected device."""
    return select(*(columns or (A.c.id,))).select_from(_FROM).where(*affected_where(d))


def changed(campaign_id: int) -> Select[Any]:
    """The account ids that had a device flipped (and not rolled back) by the campaign."""
    return select(SC.c.account_id).where(SC.c.campaign_id == campaign_id, SC.c.state == CHANGED)


def _earlier(campaign_id: int, wave_id: int | None) -> list[ColumnElement[bool]]:
    """An account's deliveries of the campaign, but for those of wave `wave_id` (the `not_told` wave's own)."""
    conds = [DL.c.campaign_id == campaign_id, DL.c.account_id == A.c.id]
    return conds + ([DL.c.wave_id != wave_id] if wave_id is not None else [])


def not_told(d: Definition, campaign_id: int, wave_id: int | None = None) -> Select[Any]:
    """The account ids of a `not_told` wave: affected now; no delivery of the campaign's other waves `sent` (a
    bounce reported later makes one `bounced`) or still under way; and none of them tried the current address —
    the address changed since (a re-import corrected it), or there was none: the account came late."""
    earlier = _earlier(campaign_id, wave_id)
    told = exists().where(*earlier, DL.c.state.in_((SENT, PENDING, SENDING))).correlate(A)
    tried = exists().where(*earlier, func.lower(DL.c.email) == func.lower(A.c.email)).correlate(A)
    return affected(d).where(~told, ~tried)


def accounts(d: Definition, campaign_id: int, rule: str, wave_id: int | None = None) -> Any:
    """A select of the account ids of a wave's audience rule: affected | changed | all | not_told (`wave_id`: the
    wave's own deliveries do not count as earlier ones)."""
    if rule == "affected":
        return affected(d)
    if rule == "changed":
        return changed(campaign_id)
    if rule == "all":
        return union(affected(d), changed(campaign_id))
    if rule == "not_told":
        return not_told(d, campaign_id, wave_id)
    raise ValueError(f"unknown audience rule {rule!r}")


# The latest earlier delivery's state, in the words of `audience --not-told --why` (none: the account came late).
UNTOLD_WORDS = {None: "never sent, added late", "bounced": "bounced, address changed",
                "failed": "failed, address changed", "suppressed": "suppressed, address changed",
                "expired": "never sent (expired), address changed", "skipped": "never sent (skipped), address changed"}


def not_told_accounts(conn: Connection, d: Definition, campaign_id: int,
                      limit: int | None = None) -> tuple[list[tuple[str, str, str]], int]:
    """(account id, email, why) of the accounts a `not_told` wave would reach now, in account order (the first
    `limit`), and how many there are."""
    ids = not_told(d, campaign_id)
    total = int(conn.execute(select(func.count()).select_from(A).where(A.c.id.in_(ids))).scalar_one())
    last = (select(DL.c.state).where(*_earlier(campaign_id, None)).order_by(DL.c.id.desc()).limit(1)
            .correlate(A).scalar_subquery())
    stmt = select(A.c.id, A.c.email, last).where(A.c.id.in_(ids)).order_by(A.c.id)
    rows = conn.execute(stmt.limit(limit) if limit is not None else stmt).all()
    return [(r[0], r[1], UNTOLD_WORDS.get(r[2], f"{r[2]}, address changed")) for r in rows], total


@dataclass
class Summary:
    accounts: int
    devices: int
    by: dict[str, dict[str, int]] | None
    sample: list[dict[str, Any]]


def summary(conn: Connection, d: Definition, by: str | None = None, sample: int = 0) -> Summary:
    """Who is affected now: counts, optionally by locale, country or model, and the first `sample` accounts."""
    n_acc, n_dev = conn.execute(affected(d, func.count(distinct(A.c.id)), func.count())).one()
    groups = None
    if by is not None:
        col = BY_COLUMNS[by]
        rows = conn.execute(affected(d, col, func.count(distinct(A.c.id)), func.count())
                            .group_by(col).order_by(col)).all()
        groups = {key: {"accounts": int(a), "devices": int(n)} for key, a, n in rows}
    picked: list[dict[str, Any]] = []
    if sample > 0:
        cols = (A.c.id, A.c.email, A.c.locale, A.c.timezone, A.c.country)
        rows = conn.execute(affected(d, *cols, func.count()).group_by(*cols).order_by(A.c.id).limit(sample)).all()
        picked = [{"account_id": r[0], "email": r[1], "locale": r[2], "timezone": r[3], "country": r[4],
                   "devices": int(r[5])} for r in rows]
    return Summary(int(n_acc), int(n_dev), groups, picked)


def iter_affected(conn: Connection, d: Definition, account_ids: Iterable[str] | None = None,
                  locale: str | None = None, after: str | None = None, upto: str | None = None
                  ) -> Iterator[tuple[Recipient, list[DeviceView]]]:
    """Each affected account with its affected devices, in account order: the whole audience streamed from the
    database (or its accounts with an id in (`after`, `upto`]: a share of `account_bounds`), or the accounts
    `account_ids` names (a batch) fetched at once."""
    stmt = affected(d, A.c.id, A.c.email, A.c.name, A.c.locale, A.c.timezone, D.c.id, D.c.name, D.c.model)
    stmt = stmt.order_by(A.c.id, D.c.id)
    if locale is not None:
        stmt = stmt.where(A.c.locale == locale)
    if after is not None:  # on the device's column too: the planner then ranges over the device index
        stmt = stmt.where(A.c.id > after, D.c.account_id > after)
    if upto is not None:
        stmt = stmt.where(A.c.id <= upto, D.c.account_id <= upto)
    if account_ids is not None:  # a batch: fetched at once, in one round trip, by a statement prepared once
        result = conn.execute(stmt.where(among(conn, A.c.id, account_ids)))
    else:
        # Options on the statement, not the connection: they would stick to the connection for what follows.
        result = conn.execute(stmt.execution_options(stream_results=True, yield_per=2000))
    current: Recipient | None = None
    devices: list[DeviceView] = []
    for row in result:
        if current is None or row[0] != current.account_id:
            if current is not None:
                yield current, devices
            current = Recipient(row[0], row[1], row[2], row[3], row[4])
            devices = []
        devices.append(DeviceView(row[5], row[6], row[7]))
    if current is not None:
        yield current, devices


def account_bounds(conn: Connection, shares: int) -> list[tuple[str | None, str | None]]:
    """Ranges (after, upto] of account id (None: unbounded) that split the accounts into about `shares` parts of
    equal size, in order, together covering every id: each a share of the audience a process can read on its own.
    One pass over the account key."""
    total = int(conn.execute(select(func.count()).select_from(A)).scalar_one())
    if shares <= 1 or total < 2 * shares:
        return [(None, None)]
    step = -(-total // shares)
    numbered = select(A.c.id, func.row_number().over(order_by=A.c.id).label("n")).subquery()
    cuts: list[str | None] = list(conn.scalars(select(numbered.c.id).where(numbered.c.n % step == 0)
                                               .order_by(numbered.c.id)))
    edges = [None, *cuts, None]
    return list(itertools.pairwise(edges))


def changed_devices(conn: Connection, campaign_id: int, account_ids: Iterable[str]) -> list[tuple[str, DeviceView]]:
    """(account id, device with its switch time) for each device the campaign flipped (and did not roll back) of
    these accounts."""
    rows = conn.execute(select(SC.c.account_id, D.c.id, D.c.name, D.c.model, SC.c.flipped_at)
                        .select_from(SC.join(D, D.c.id == SC.c.device_id))
                        .where(SC.c.campaign_id == campaign_id, SC.c.state == CHANGED,
                               among(conn, SC.c.account_id, account_ids))
                        .order_by(SC.c.account_id, D.c.id)).all()
    return [(r[0], DeviceView(r[1], r[2], r[3], r[4])) for r in rows]


def locales(conn: Connection, d: Definition) -> list[tuple[str, int, str]]:
    """(locale, accounts, first account id) for each locale in the audience now."""
    rows = conn.execute(affected(d, A.c.locale, func.count(distinct(A.c.id)), func.min(A.c.id))
                        .group_by(A.c.locale).order_by(A.c.locale)).all()
    return [(r[0], int(r[1]), r[2]) for r in rows]


def recipients(conn: Connection, account_ids: Iterable[str]) -> dict[str, Recipient]:
    """The accounts with these ids, as recipients (missing ids are simply absent)."""
    rows = conn.execute(select(A.c.id, A.c.email, A.c.name, A.c.locale, A.c.timezone)
                        .where(among(conn, A.c.id, account_ids))).all()
    return {r[0]: Recipient(r[0], r[1], r[2], r[3], r[4]) for r in rows}


def recipient(conn: Connection, account_id: str) -> Recipient | None:
    return recipients(conn, [account_id]).get(account_id)


def suppressed_devices(conn: Connection, d: Definition) -> int:
    """Affected devices whose owner's address is suppressed: never notified, so held back by `require_notice`."""
    return int(conn.execute(affected(d, func.count()).where(matches(A.c.email))).scalar_one())


def setting_keys(conn: Connection) -> dict[str, int]:
    """Every setting key the imported devices hold, with how many devices hold it."""
    rows = conn.execute(select(S.c.key, func.count()).group_by(S.c.key).order_by(S.c.key)).all()
    return {r[0]: int(r[1]) for r in rows}


def setting_values(conn: Connection, key: str) -> dict[str, int]:
    """Every value of setting `key` among the imported devices, with how many devices hold it."""
    rows = conn.execute(select(S.c.value, func.count()).where(S.c.key == key)
                        .group_by(S.c.value).order_by(func.count().desc(), S.c.value)).all()
    return {r[0]: int(r[1]) for r in rows}
