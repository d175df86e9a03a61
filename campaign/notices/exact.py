"""The exact words of one message: what its bytes depend on besides the definition version and its templates
(`Inputs`: the Date, the recipient, their devices as they were), recorded with each delivery at send, and the one
function that builds the bytes from them (`build`), which the send and the rebuild (`report --message`) both call.

The Message-ID is the ledger's own column, and everything else a message holds comes from the version: the sender,
the headers, the boundary, the campaign's context and times. So the same version and the same inputs give the same
bytes, whatever became of the account since (a new name, a renamed device, another zone)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from campaign.definition import WaveDef
from campaign.notices.mime import MessageBuilder, Parts
from campaign.notices.rendering import Rendered, Renderer
from campaign.recipients import DeviceView, Recipient

MAX_INPUTS = 1 << 20  # characters of recorded inputs read back: more is not what the send wrote


class BadInputs(ValueError):
    """Recorded inputs that cannot be read back (not what the send wrote)."""


@dataclass(frozen=True)
class Inputs:
    """What one message depends on that can change after it was sent."""

    date: dt.datetime  # its Date header (the instant it was built)
    recipient: Recipient
    devices: tuple[DeviceView, ...]

    def as_json(self) -> dict[str, Any]:
        r = self.recipient
        return {"date": self.date.isoformat(), "email": r.email, "name": r.name, "locale": r.locale,
                "timezone": r.timezone,
                "devices": [{"id": v.device_id, "name": v.name, "model": v.model,
                             "changed_at": v.changed_at.isoformat() if v.changed_at is not None else None}
                            for v in self.devices]}

    def dumps(self) -> str:
        """As recorded in `delivery.message_inputs` (a few microseconds: the send calls it for every message)."""
        return json.dumps(self.as_json(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def loads(cls, account_id: str, text: str) -> Inputs:
        """The inputs recorded for `account_id`'s message; BadInputs when they are not what the send wrote."""
        if len(text) > MAX_INPUTS:
            raise BadInputs(f"{len(text):,} characters, more than a send records ({MAX_INPUTS:,})")
        try:
            v = json.loads(text)
            devices = tuple(DeviceView(str(x["id"]), str(x["name"]), str(x["model"]),
                                       _instant(x["changed_at"]) if x["changed_at"] is not None else None)
                            for x in v["devices"])
            recipient = Recipient(account_id, str(v["email"]), str(v["name"]), str(v["locale"]), str(v["timezone"]))
            return cls(_instant(v["date"]), recipient, devices)
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInputs(f"not the inputs a send records ({type(exc).__name__}: {str(exc)[:200]})") from None


def _instant(value: Any) -> dt.datetime:
    t = dt.datetime.fromisoformat(str(value))
    if t.tzinfo is None:
        raise ValueError(f"{value!r} has no offset")
    return t


def build(renderer: Renderer, builder: MessageBuilder, wave: WaveDef, inputs: Inputs,
          message_id: str) -> tuple[Rendered, bytes]:
    """The message's rendered parts and its bytes. Raises what rendering and building raise."""
    person = inputs.recipient
    rendered = renderer.render(wave, person, inputs.devices)
    data = builder.build(Parts(person.name, person.email, rendered.subject, rendered.text, rendered.html,
                               message_id, inputs.date))
    return rendered, data


def sha256(data: bytes) -> str:
    """The digest a delivery records: of the bytes handed to the relay (before SMTP's dot-stuffing)."""
    return hashlib.sha256(data).hexdigest()
