"""Files written where the user says (`report --out FILE`, `preview --out DIR`), without touching anything
else on the way.

A regular file (or a name with nothing at it) is replaced whole at the end: written into a new file beside
it, created exclusively under an unpredictable name (never through a link planted there), renamed over it
when everything is written, removed when something failed. A FIFO or a character device (`/dev/null`, a
terminal) is written straight through, never replaced. A symbolic link at the name is not followed — refused
— unless it leads to the command's own standard output (`/dev/stdout`) or to a pipe (`/dev/fd/N` of a
shell's process substitution). A directory, a socket or a block device is refused. Refusals are usage errors
(exit 2) naming the path; nothing is written then.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, TextIO, cast

from campaign.errors import CampaignError, UsageError

# The temporary file's name is unpredictable; 64 random bits, then another try if taken (by anyone).
TRIES = 100
NAME_KEPT = 48  # characters of the target's name kept in the temporary one (a name has at most 255 bytes)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_STREAM_FLAGS = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC  # no O_CREAT, no O_TRUNC: it exists, it is not a file


def _fdopen(fd: int, binary: bool) -> IO[Any]:
    return os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")


def _token() -> str:
    return secrets.token_hex(8)


def _temp_name(name: str) -> str:
    return f".{name[:NAME_KEPT]}.{_token()}.partial"


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"))


def _what(mode: int) -> str:
    """What a file of `mode` is, in words, when it is not a regular file."""
    return next((words for kind, words in _KINDS if kind(mode)), "not a regular file")


def _refuse_directory(shown: str) -> UsageError:
    return UsageError(f"{shown} is a directory: --out names the file to write")


def _refuse_link(shown: str) -> UsageError:
    return UsageError(f"{shown} is a symbolic link: campaign does not write through links (other than to its "
                      "standard output or a pipe); name the file itself")


def _refuse(shown: str, mode: int) -> UsageError:
    if stat.S_ISDIR(mode):
        return _refuse_directory(shown)
    return UsageError(f"{shown} is {_what(mode)}: --out writes a regular file, a FIFO or a character device")


def _cannot(shown: str, exc: OSError) -> UsageError:
    return UsageError(f"{shown}: cannot write there: {exc.strerror or exc}")


def _not_written(shown: str, exc: OSError, after: str) -> BaseException:
    """A write that failed, in words; a reader gone away (a pipe closed) is left for the CLI to end quietly."""
    if isinstance(exc, BrokenPipeError):
        return exc
    return CampaignError(f"{shown}: could not write it ({exc.strerror or exc}); {after}")


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_parent(path: Path, shown: str) -> int:
    """The directory that holds `path`, opened: every name below is looked up in it, whatever happens to the
    path meanwhile. The directories on the way may be links (the user's own layout); only the last name is
    never followed."""
    parent = path.parent
    try:
        return os.open(parent, _DIR_FLAGS)
    except FileNotFoundError:
        raise UsageError(f"{shown}: no directory {parent}") from None
    except NotADirectoryError:
        raise UsageError(f"{shown}: {parent} is not a directory") from None
    except OSError as exc:
        raise _cannot(shown, exc) from None


def _stat_or_refuse(path: Path, shown: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise _cannot(shown, exc) from None


def same_file(path: Path, stream: TextIO) -> bool:
    """Whether `path` leads to the file `stream` writes to (`--out /dev/stdout`)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(stream.fileno()))
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


@contextmanager
def _replacing(dir_fd: int, name: str, shown: str, binary: bool) -> Iterator[IO[Any]]:
    """A new file beside `name`, created exclusively (never through a link) under an unpredictable name with the
    mode a new file gets (0666 less the umask), renamed over `name` when the block ends well, removed when it
    does not."""
    for _ in range(TRIES):
        temp = _temp_name(name)
        try:
            fd = os.open(temp, _NEW_FLAGS, 0o666, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise _cannot(shown, exc) from None
    else:
        raise UsageError(f"{shown}: cannot create a temporary file beside it ({TRIES} names taken)")
    done = False
    try:
        try:
            with _fdopen(fd, binary) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise _not_written(shown, exc, "it is as it was before") from None
        now = _lstat(name, dir_fd)  # it may have changed while the file was being written
        if now is not None and not stat.S_ISREG(now.st_mode):
            raise UsageError(f"{shown} became {_what(now.st_mode)} while it was being written: it was left as "
                             "it is")
        try:
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # a rename never follows a link
        except IsADirectoryError:
            raise _refuse_directory(shown) from None
        except OSError as exc:
            raise _cannot(shown, exc) from None
        done = True
        with suppress(OSError):
            os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        if not done:
            with suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dir_fd)


@contextmanager
def _stream(dir_fd: int, name: str, shown: str, binary: bool, through_link: bool) -> Iterator[IO[Any]]:
    """An existing FIFO or character device, opened and written as it is. Through a link only to a FIFO."""
    flags = _STREAM_FLAGS if through_link else _STREAM_FLAGS | os.O_NOFOLLOW
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)  # a FIFO: waits for its reader, as a shell's `>` does
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link put there since it was looked at
            raise _refuse_link(shown) from None
        raise _cannot(shown, exc) from None
    try:
        with _fdopen(fd, binary) as f:
            mode = os.fstat(fd).st_mode  # what was opened, not what was looked at before
            if not (stat.S_ISFIFO(mode) or (stat.S_ISCHR(mode) and not through_link)):
                raise _refuse_link(shown) if through_link else _refuse(shown, mode)
            yield f
    except OSError as exc:
        raise _not_written(shown, exc, "what went before was written") from None


@contextmanager
def _opened(path: Path, binary: bool) -> Iterator[IO[Any]]:
    shown = str(path)
    if path.name in ("", ".", ".."):
        raise _refuse_directory(shown)
    dir_fd = _open_parent(path, shown)
    try:
        st = _lstat(path.name, dir_fd)
        if st is None or stat.S_ISREG(st.st_mode):
            opened = _replacing(dir_fd, path.name, shown, binary)
        elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
            opened = _stream(dir_fd, path.name, shown, binary, through_link=False)
        elif stat.S_ISLNK(st.st_mode):
            try:
                behind = os.stat(path.name, dir_fd=dir_fd).st_mode
            except OSError:
                raise _refuse_link(shown) from None
            if not stat.S_ISFIFO(behind):
                raise _refuse_link(shown)
            opened = _stream(dir_fd, path.name, shown, binary, through_link=True)
        else:
            raise _refuse(shown, st.st_mode)
        with opened as f:
            yield f
    finally:
        os.close(dir_fd)


@contextmanager
def text(path: Path) -> Iterator[TextIO]:
    """`path` opened to write UTF-8 text, newlines as written (see the module's docstring for what it may be)."""
    with _opened(path, binary=False) as f:
        yield cast(TextIO, f)


@contextmanager
def binary(path: Path) -> Iterator[IO[bytes]]:
    """`path` opened to write bytes as they are (a message: `report --message --eml`), by the same rules as `text`."""
    with _opened(path, binary=True) as f:
        yield cast(IO[bytes], f)


class Directory:
    """A directory to write regular files into, opened once: each file replaced whole (as `text` does), none
    written through a link, a FIFO or a device found at its name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shown = str(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _cannot(self.shown, exc) from None
        st = _stat_or_refuse(path, self.shown)
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{self.shown} is a symbolic link: campaign does not write through links; name the "
                             "directory itself")
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{self.shown} is {_what(st.st_mode)}, not a directory")
        try:
            self.fd = os.open(path, _DIR_FLAGS | os.O_NOFOLLOW)
        except OSError as exc:
            raise _cannot(self.shown, exc) from None

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def check(self, names: Iterable[str]) -> None:
        """Refuse, before anything is written, if one of `names` is there and not a regular file."""
        for name in names:
            st = _lstat(name, self.fd)
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{self.path / name} is {_what(st.st_mode)}: only regular files are written into "
                                 f"{self.shown} (links are not followed); remove it or name another directory")

    def write(self, name: str, data: bytes) -> Path:
        """`data` as the file `name` of the directory, replaced whole."""
        shown = str(self.path / name)
        self.check([name])
        with _replacing(self.fd, name, shown, binary=True) as f:
            f.write(data)
        return self.path / name
