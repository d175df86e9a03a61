"""A Maildir as the mail system: each message written into a directory (`maildir:PATH`), nothing sent."""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from campaign.delivery.envelope import Envelope, Gate, Outcome

__all__ = ["MaildirTransport"]


class MaildirTransport:
    """Writes each message into a Maildir (tmp/, then renamed into new/) and sends nothing."""

    def __init__(self, path: str | os.PathLike[str], fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._counter = itertools.count(1)
        self._host = socket.gethostname().replace("/", r"\057").replace(":", r"\072") or "localhost"
        self._ready = False

    def __repr__(self) -> str:
        return f"MaildirTransport({str(self.path)!r})"

    @property
    def concurrency(self) -> int:
        return 1

    async def __aenter__(self) -> Self:
        self._prepare()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    def _prepare(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self._ready = True

    async def send(self, envelope: Envelope, gate: Gate | None = None) -> Outcome:
        if gate is not None:
            await gate()
        if not self._ready:
            self._prepare()
        now = time.time()
        name = f"{int(now)}.M{int(now % 1 * 1_000_000)}P{os.getpid()}Q{next(self._counter)}.{self._host}"
        tmp = self.path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(envelope.data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.rename(tmp, self.path / "new" / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Outcome("sent", None, f"new/{name}")
