"""The words a campaign sends: the template set of its current definition version as kept when that version was
created (table `version_file`), not the templates folder as it is now. An edit of the folder after `create` (and
after its approval) then changes nothing that is sent, nor what the evidence shows, until `create --replace` makes
it a version of its own, which needs approving again. A campaign created before versions were kept (migration
0007) has none: it is sent from the folder, and its deliveries say so (no version).

`schedule`, `send`, `check SLUG` and the rebuild of a message (`report --message`) render from a `TemplateSet`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection

from campaign import versions
from campaign.definition import Definition
from campaign.notices.rendering import Renderer
from campaign.store import versions as store

TEMPLATES = "templates/"  # the prefix of a kept template's path (`versions.template_files`)


@dataclass(frozen=True)
class TemplateSet:
    """One version's definition and templates, ready to render from. Picklable: a send hands it to its workers."""

    version: int | None  # the definition version whose kept files these are; None: the folder (none were kept)
    sha256: str  # `versions.manifest_sha256` of the definition and every template, over their texts as used here
    definition: str  # the definition's text
    templates: dict[str, str] | None  # path under the template folder -> text; None: read the folder on disk
    damaged: tuple[str, ...] = ()  # kept files whose text no longer matches the SHA-256 kept beside it

    @property
    def kept(self) -> bool:
        return self.version is not None

    def renderer(self, d: Definition, templates: Path) -> Renderer:
        """A renderer of these files (the folder's, for a set that was not kept)."""
        return Renderer(d, templates, self.templates)

    def words(self) -> str:
        """Which set, for an audit event or a person: `version 2 (sha256 1f2e…)` or the folder."""
        if self.version is None:
            return f"the templates folder (no version kept; sha256 {self.sha256[:12]}…)"
        return f"version {self.version} as kept (sha256 {self.sha256[:12]}…)"


def of_version(conn: Connection, campaign_id: int, version: int) -> TemplateSet | None:
    """Version `version`'s kept files; None when that version was not kept."""
    files = store.files(conn, campaign_id, version)
    if not files:
        return None
    used = {path: versions.text_sha256(body) for path, (_sha, body) in files.items()}
    damaged = tuple(path for path, (sha, _body) in sorted(files.items()) if used[path] != sha)
    definition = files.get(versions.DEFINITION, ("", ""))[1]
    templates = {path.removeprefix(TEMPLATES): body for path, (_sha, body) in files.items()
                 if path.startswith(TEMPLATES)}
    return TemplateSet(version, versions.manifest_sha256(used), definition, templates, damaged)


def from_folder(d: Definition, templates: Path) -> TemplateSet:
    """The definition and the templates folder as they are now (a campaign with no version kept)."""
    bodies = {versions.DEFINITION: d.text, **versions.template_files(d, templates)}
    return TemplateSet(None, versions.manifest_sha256({p: versions.text_sha256(b) for p, b in bodies.items()}),
                       d.text, None)


def sending(conn: Connection, campaign_id: int, d: Definition, templates: Path) -> TemplateSet:
    """What the campaign's messages are built from now: its current version's kept files, else the folder."""
    found = of_version(conn, campaign_id, versions.current_version(conn, campaign_id))
    return found if found is not None else from_folder(d, templates)
