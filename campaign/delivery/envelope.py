"""What a transport is: one message in (`Envelope`), what became of it out (`Outcome`), and the interface every
outside mail system is kept behind (`Transport`): SMTP (`campaign.delivery.smtp`), a Maildir, a recording.

A transport is an async context manager with one method, `send(envelope) -> Outcome`. It never raises
for what happened to one message — that is classified as "sent", "transient" (try again later) or
"permanent" (the recipient's server refused it). It raises `TransportError` only for what no retry
can fix (a refused login, a server that cannot do the TLS the URL asks for), once, to stop the run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol, Self

from campaign.errors import CampaignError
from campaign.redaction import redact

__all__ = ["MAX_DETAIL", "Envelope", "Gate", "Outcome", "Status", "Transport", "TransportError"]

# "failed": this relay cannot take this message (e.g. an RFC 6531 address without SMTPUTF8); the address is
# not at fault, so it is not suppressed, and retrying the same relay would not help.
Status = Literal["sent", "transient", "permanent", "failed"]

MAX_DETAIL = 500


class TransportError(CampaignError):
    """The mail system cannot be used at all (login refused, TLS impossible): stop, fix, run again."""


class LoginFailed(TransportError):
    """The relay did not take our login: refused, not on offer, or not over an encrypted connection."""


@dataclass(frozen=True)
class Envelope:
    """One message on its way: SMTP envelope addresses and the complete message (CRLF line endings)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes = field(repr=False)
    message_id: str = ""
    wire: bool = False  # `data` is known to be in wire form (`wire_ready`): MessageBuilder made it

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("an envelope needs at least one recipient")
        if isinstance(self.recipients, str):
            raise TypeError("recipients must be a tuple of addresses, not a string")


@dataclass(frozen=True)
class Outcome:
    """What became of one message. `detail` is one line of at most 500 characters."""

    status: Status
    code: int | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        # What a relay said goes through the one redaction step before anything stores or shows it (G11).
        object.__setattr__(self, "detail", redact(self.detail, MAX_DETAIL))

    @property
    def ok(self) -> bool:
        return self.status == "sent"


Gate = Callable[[], Awaitable[None]]


class Transport(Protocol):
    """Opens connections on enter, closes them on exit, and sends; `send` may run concurrently."""

    @property
    def concurrency(self) -> int:
        """How many `send` calls make progress at once; more simply wait their turn."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    async def send(self, envelope: Envelope, gate: Gate | None = None) -> Outcome:
        """Send one message. `gate`, when given, is awaited once just before the message can be accepted
        (on SMTP: after the server said 354, before the data goes): the caller's chance to make sure it can
        record the outcome (see `campaign.delivery.recorder`). An exception from it abandons the message unsent."""
        ...
