"""A transport that keeps what it is given and sends nothing: for dry runs and tests."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

from campaign.delivery.envelope import Envelope, Gate, Outcome

__all__ = ["RecordingTransport"]


class RecordingTransport:
    """Keeps every envelope in `self.envelopes`; for dry runs and tests. `respond` may script outcomes."""

    def __init__(self, respond: Callable[[Envelope], Outcome] | None = None, concurrency: int = 1) -> None:
        self.envelopes: list[Envelope] = []
        self.respond = respond
        self._concurrency = concurrency
        self.opened = 0

    def __repr__(self) -> str:
        return f"RecordingTransport({len(self.envelopes)} envelopes)"

    @property
    def concurrency(self) -> int:
        return self._concurrency

    async def __aenter__(self) -> Self:
        self.opened += 1
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    async def send(self, envelope: Envelope, gate: Gate | None = None) -> Outcome:
        if gate is not None:
            await gate()
        self.envelopes.append(envelope)
        return self.respond(envelope) if self.respond else Outcome("sent", None, "recorded")
