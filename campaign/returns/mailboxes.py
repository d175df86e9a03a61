"""Returned mail as found where it lies: a Maildir folder (new/ and cur/) or an mbox file, read a message at a
time; what is found but cannot be read safely is listed (`Unread`), never read — in a Maildir anything that is
not a regular file (a symlink is not followed, a FIFO not waited on), and any message above `MAX_MESSAGE_BYTES`.

`campaign.returns.imap` finds messages in an IMAP folder in the same shapes; `campaign.returns.bounces` takes
them in. Nothing here looks at the database.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from campaign.errors import InputError, Problem, UsageError

MiB = 1024 * 1024
MAX_MESSAGE_BYTES = 10 * MiB  # a returned message larger than this is listed as too large, never read whole
MBOX_PIECE = 64 * 1024  # an mbox is read a line at a time, a long line in pieces of this size

# what was found and not read (listed, never kept)
NOT_A_FILE, TOO_LARGE = "not_a_file", "too_large"


@dataclass(frozen=True)
class Message:
    """One message as found: where (for the listing), its bytes, and its IMAP UID (to move it once taken in)."""

    origin: str
    raw: bytes
    uid: str | None = None


@dataclass(frozen=True)
class Unread:
    """Something found where messages are and not read: not a regular file, or too large. Listed, not kept."""

    origin: str
    outcome: str  # NOT_A_FILE | TOO_LARGE
    why: str


Found = Message | Unread


def read_path(path: Path) -> Iterator[Found]:
    """The messages of a Maildir folder (new/ and cur/) or of an mbox file, in order; what is not read listed
    (`Unread`)."""
    if path.is_dir():
        if not (path / "cur").is_dir() and not (path / "new").is_dir():
            raise UsageError(f"{path}: not a Maildir (it has no cur/ or new/ folder), nor an mbox file")
        return _maildir(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder (give a Maildir folder or an mbox file)")
    if not path.is_file():  # a FIFO would wait for a writer, a device never ends
        raise UsageError(f"{path}: not a regular file (give a Maildir folder or an mbox file)")
    return _mbox(path)


def _maildir(path: Path) -> Iterator[Found]:
    for sub in ("new", "cur"):
        folder = path / sub
        if not folder.is_dir():
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith("."):
                continue
            found = _read_file(folder / name)
            if found is not None:
                yield found


def _kind_of(mode: int) -> str:
    for test, what in ((stat.S_ISLNK, "a symbolic link: not followed"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return what
    return "not a regular file"


def why_too_large(size: int | str) -> str:
    return f"larger than {MAX_MESSAGE_BYTES // MiB} MiB ({size} bytes): not read"


def _read_file(file: Path) -> Found | None:
    """One file of a Maildir, read only if it is a regular file (never through a symlink, never waiting on a
    FIFO) of at most MAX_MESSAGE_BYTES; None when it went away meanwhile (a mail reader moved it)."""
    origin = str(file)
    try:
        st = os.lstat(file)
        if not stat.S_ISREG(st.st_mode):
            return Unread(origin, NOT_A_FILE, _kind_of(st.st_mode))
        if st.st_size > MAX_MESSAGE_BYTES:
            return Unread(origin, TOO_LARGE, why_too_large(st.st_size))
        # O_NOFOLLOW, O_NONBLOCK: what was swapped in since the lstat is not followed, and does not hang the open
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Unread(origin, NOT_A_FILE, f"cannot be opened ({exc.strerror or exc}): not read")
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return Unread(origin, NOT_A_FILE, _kind_of(st.st_mode))
        want = min(st.st_size, MAX_MESSAGE_BYTES) + 1
        raw = f.read(want)
        if len(raw) == want and want <= MAX_MESSAGE_BYTES:  # it grew since: read on, up to the cap
            raw += f.read(MAX_MESSAGE_BYTES + 1 - want)
    if len(raw) > MAX_MESSAGE_BYTES:
        return Unread(origin, TOO_LARGE, why_too_large(f"over {MAX_MESSAGE_BYTES}"))
    return Message(origin, raw)


_FROM_QUOTED = re.compile(rb"^>+From ")


def _mbox(path: Path) -> Iterator[Found]:
    """An mbox: each message starts with a `From ` line at the start of the file or after an empty line
    (`>From ` lines are unquoted once, as mboxrd writes them). Origins are PATH:LINE of the `From ` line. Read
    a line at a time, a long line in pieces; a message is kept in memory only up to MAX_MESSAGE_BYTES (a
    larger one is passed over to its end and listed as too large)."""
    with path.open("rb") as f:
        first = f.readline(MBOX_PIECE)
        if not first:
            return
        if not first.startswith(b"From "):
            raise InputError(str(path), [Problem(1, "not an mbox: its first line should start with 'From ' "
                                                    "(or give a Maildir folder)")])
        start, n, blank = 1, 1, False
        in_from = not first.endswith(b"\n")  # the rest of a long `From ` line is no part of the message
        line_start = not in_from
        pieces: list[bytes] = []
        size = 0
        for piece in iter(lambda: f.readline(MBOX_PIECE), b""):
            if in_from:
                in_from = not piece.endswith(b"\n")
                line_start = not in_from
                continue
            if line_start:
                n += 1
                if blank and piece.startswith(b"From "):
                    yield _mbox_message(path, start, pieces[:-1], size)
                    start, pieces, size, blank = n, [], 0, False
                    in_from = not piece.endswith(b"\n")
                    line_start = not in_from
                    continue
                blank = piece in (b"\n", b"\r\n")
                if _FROM_QUOTED.match(piece):
                    piece = piece[1:]
            else:
                blank = False  # the rest of a long line
            line_start = piece.endswith(b"\n")
            size += len(piece)
            if size <= MAX_MESSAGE_BYTES + 2:  # (+ the empty line before the next `From `, no part of it)
                pieces.append(piece)
            else:
                pieces.clear()  # too large: nothing of it is kept
        yield _mbox_message(path, start, pieces, size)


def _mbox_message(path: Path, start: int, pieces: list[bytes], size: int) -> Found:
    origin = f"{path}:{start}"
    raw = b"".join(pieces)
    if size > MAX_MESSAGE_BYTES + 2 or len(raw) > MAX_MESSAGE_BYTES:
        return Unread(origin, TOO_LARGE, why_too_large(size))
    return Message(origin, raw)
