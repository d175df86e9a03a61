"""Each version of a campaign's definition, kept whole: the definition's TOML and every template of its folder,
stored when the version is created (`create`, `create --replace`). What changed since the version last approved
is then a diff anyone can read (the console's review packet shows it): the words people will be sent are the
words someone approved, or the difference is on the page.

Versions are numbered as approvals count them: 1 as created, one more for each replacement (the campaign's
`campaign.create` / `campaign.replace` audit events)."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import Connection

from campaign.definition import Definition
from campaign.errors import TemplateProblem
from campaign.results import Fields
from campaign.store import approvals as approval_events
from campaign.store import versions as store

DEFINITION = "definition.toml"
DEFINED = ("campaign.create", "campaign.replace")
APPROVED = "campaign.approve"
MAX_FILE_BYTES = 1 << 20  # a template larger than this is not a template
MAX_VERSION_BYTES = 16 << 20
MAX_DIFF_LINES = 2000  # a diff longer than this is cut, and says so


def _sha256(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def text_sha256(body: str) -> str:
    """A kept file's SHA-256 (of its UTF-8 text), as `version_file.sha256` holds it."""
    return _sha256(body)


def manifest_sha256(shas: Mapping[str, str]) -> str:
    """The digest of a set of files (path -> SHA-256): the SHA-256 of the lines `sha256sum` prints for them
    (`HEX  PATH`, one a line, sorted by path), so that anyone can check it from the files as kept."""
    return hashlib.sha256("".join(f"{shas[p]}  {p}\n" for p in sorted(shas)).encode("utf-8")).hexdigest()


def template_files(d: Definition, templates: Path) -> dict[str, str]:
    """Every template of the definition's folder (`*.j2`, subfolders included), path -> text: what the renderer
    can load. A file that is not UTF-8 text, too large, or a link out of the folder is refused by name."""
    root = (templates / d.template).resolve()
    out: dict[str, str] = {}
    total = 0
    for path in sorted(root.rglob("*.j2")):
        rel = path.relative_to(root).as_posix()
        if not path.resolve().is_relative_to(root) or not path.is_file():
            raise TemplateProblem(f"{path}: not a file inside the template folder {root}")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise TemplateProblem(f"{path}: {size:,} bytes; a template may have at most {MAX_FILE_BYTES:,}")
        total += size
        if total > MAX_VERSION_BYTES:
            raise TemplateProblem(f"{root}: the templates add up to more than {MAX_VERSION_BYTES:,} bytes")
        try:
            out[f"templates/{rel}"] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TemplateProblem(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return out


def next_version(conn: Connection, campaign_id: int) -> int:
    """The number the version being written now will have (before its audit event is recorded)."""
    return sum(1 for _ in approval_events.events(conn, campaign_id, DEFINED)) + 1


def keep(conn: Connection, campaign_id: int, d: Definition, templates: Path) -> int:
    """Store the version being created (inside `create`'s transaction): its definition and templates. Returns the
    version number."""
    version = next_version(conn, campaign_id)
    bodies = {DEFINITION: d.text, **template_files(d, templates)}
    store.add(conn, campaign_id, version, {path: (_sha256(body), body) for path, body in bodies.items()})
    return version


@dataclass(frozen=True)
class FileChange(Fields):
    """One file that differs between two versions: added, removed or changed, with a unified diff."""

    path: str
    status: Literal["added", "removed", "changed"]
    diff: str  # unified diff (for a changed file; the whole text, as added or removed lines, for the others)


@dataclass(frozen=True)
class Changes(Fields):
    """What differs between the version last approved and the current one. `approved_version` is None when no
    version was ever approved (then there is nothing to compare with: `files` is empty), `kept` False when the
    files of one of the two versions were not kept (a campaign created before versions were kept)."""

    current_version: int
    approved_version: int | None
    kept: bool
    files: tuple[FileChange, ...]

    @property
    def unchanged(self) -> bool:
        return self.kept and self.approved_version is not None and not self.files


def _diff(path: str, old: str, new: str) -> str:
    lines = list(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                      fromfile=f"a/{path}", tofile=f"b/{path}"))
    if len(lines) > MAX_DIFF_LINES:
        cut = len(lines) - MAX_DIFF_LINES
        lines = [*lines[:MAX_DIFF_LINES], f"… {cut:,} more diff line(s) not shown\n"]
    return "".join(x if x.endswith("\n") else x + "\n\\ No newline at end of file\n" for x in lines)


def _changes(before: Mapping[str, str], after: Mapping[str, str]) -> tuple[FileChange, ...]:
    """The files that differ from `before` to `after` (path -> text), the definition first."""
    out = []
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            out.append(FileChange(path, "removed", _diff(path, before[path], "")))
        elif path not in before:
            out.append(FileChange(path, "added", _diff(path, "", after[path])))
        elif before[path] != after[path]:
            out.append(FileChange(path, "changed", _diff(path, before[path], after[path])))
    out.sort(key=lambda f: (f.path != DEFINITION, f.path))
    return tuple(out)


def _bodies(conn: Connection, campaign_id: int, version: int) -> dict[str, str]:
    return {path: body for path, (_digest, body) in store.files(conn, campaign_id, version).items()}


def compare(conn: Connection, campaign_id: int, old: int, new: int) -> tuple[FileChange, ...] | None:
    """The files that differ from version `old` to `new`; None when either was not kept."""
    before, after = _bodies(conn, campaign_id, old), _bodies(conn, campaign_id, new)
    return _changes(before, after) if before and after else None


def current_version(conn: Connection, campaign_id: int) -> int:
    return max(1, next_version(conn, campaign_id) - 1)


def last_approved(conn: Connection, campaign_id: int) -> int | None:
    """The newest version anyone approved (withdrawn or voided since or not): what a reviewer saw last."""
    versions = [int(e.detail.get("version", 0)) for e in approval_events.events(conn, campaign_id, (APPROVED,))]
    return max((v for v in versions if v > 0), default=None)


def since_approved(conn: Connection, campaign_id: int) -> Changes:
    """What changed in the definition and each template since the version last approved."""
    current = current_version(conn, campaign_id)
    approved = last_approved(conn, campaign_id)
    if approved is None:
        return Changes(current, None, store.latest(conn, campaign_id) == current, ())
    found = compare(conn, campaign_id, approved, current)
    return Changes(current, approved, found is not None, found or ())


def drift(conn: Connection, campaign_id: int, d: Definition, templates: Path) -> tuple[int, tuple[FileChange, ...]]:
    """How the template folder on disk now differs from the campaign's current version as it was kept (an edit
    after `create`, which no approval saw): (the version, the files that differ); nothing when the version's files
    were not kept."""
    version = current_version(conn, campaign_id)
    kept = _bodies(conn, campaign_id, version)
    kept.pop(DEFINITION, None)
    return version, (_changes(kept, template_files(d, templates)) if kept else ())
