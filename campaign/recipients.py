"""Who a message is for: the recipient and their affected devices, as the store reads them and the templates see
them (plain values, no table)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipient:
    account_id: str
    email: str
    name: str
    locale: str
    timezone: str


@dataclass(frozen=True)
class DeviceView:
    device_id: str
    name: str
    model: str
    changed_at: dt.datetime | None = None  # when the campaign switched it (for `changed` waves)
