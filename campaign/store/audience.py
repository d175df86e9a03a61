"""Who a campaign speaks to: the one definition of "affected" (owns a device whose setting still equals
`from`, within the audience filters) and of "changed" (had a device flipped by the campaign)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, distinct, func, select, union

from campaign.definition import Definition
from campaign.models import ACCOUNT, CHANGED, DEVICE, DEVICE_SETTING, SETTING_CHANGE
from campaign.recipients import DeviceView, Recipient
from campaign.store._lists import among
from campaign.store.suppressions import matches  # one rule for a suppressed address

A, D, S, SC = ACCOUNT, DEVICE, DEVICE_SETTING, SETTING_CHANGE
RULES = ("affected", "changed", "all")
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


def accounts(d: Definition, campaign_id: int, rule: str) -> Any:
    """A select of the account ids of a wave's audience rule: affected | changed | all."""
    if rule == "affected":
        return affected(d)
    if rule == "changed":
        return changed(campaign_id)
    if rule == "all":
        return union(affected(d), changed(campaign_id))
    raise ValueError(f"unknown audience rule {rule!r}")


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
                  locale: str | None = None) -> Iterator[tuple[Recipient, list[DeviceView]]]:
    """Each affected account with its affected devices, in account order: the whole audience streamed from the
    database, or the accounts `account_ids` names (a batch) fetched at once."""
    stmt = affected(d, A.c.id, A.c.email, A.c.name, A.c.locale, A.c.timezone, D.c.id, D.c.name, D.c.model)
    stmt = stmt.order_by(A.c.id, D.c.id)
    if locale is not None:
        stmt = stmt.where(A.c.locale == locale)
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
