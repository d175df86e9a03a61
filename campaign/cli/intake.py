"""The commands that take things in: accounts and devices (`import`), addresses never to mail (`suppress`), and
returned mail (`bounces`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from campaign.cli.app import App, Group, Progress, dry_run_option, json_option, list_rows, pass_app, print_json
from campaign.intake import accounts, suppressions
from campaign.returns import bounces

Importer = Callable[..., accounts.ImportResult]  # accounts.import_accounts or import_devices

# -- import -----------------------------------------------------------------------------------------

@click.group("import", cls=Group)
def import_group() -> None:
    """Import accounts and devices from CSV or JSON Lines (all or nothing)."""


def _print_import(result: accounts.ImportResult, what: str, as_json: bool) -> None:
    if as_json:
        print_json(result.as_json())
        return
    verb = "would import" if result.dry_run else "imported"
    extra = f", {result.settings_changed} setting value(s) changed by their owners" \
        if result.settings_changed else ""
    click.echo(f"{result.path}: {verb} {result.records} {what}: {result.inserted} new, {result.updated} "
               f"updated, {result.unchanged} unchanged{extra}")


ACCOUNTS_HELP = """Upsert accounts from FILE (CSV or JSON Lines).

\b
Columns: account_id,email,name,locale,timezone,country
  locale    BCP 47, e.g. de-AT     timezone  IANA, e.g. Europe/Vienna
  country   ISO 3166-1 alpha-2, e.g. AT
Rows in the file are inserted or updated; other accounts are not touched. Any problem is
reported as FILE:LINE: what is wrong, and nothing is written."""
DEVICES_HELP = """Upsert devices and their settings from FILE (CSV or JSON Lines).

\b
Columns: device_id,account_id,name,model, then one column per setting key,
e.g. voice_recordings. An empty cell leaves that setting as it is. A value that
differs from the stored one is the person's own change: it is stored with its time,
and a later rollback will not overwrite it. Every account must exist already."""


def _import_command(what: str, importer: Importer, help: str) -> click.Command:
    """`import accounts` or `import devices`: the same command but for what it imports, with its help."""

    @import_group.command(what, help=help)
    @click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
    @dry_run_option
    @json_option
    @pass_app
    def command(app: App, file: Path, dry_run: bool, as_json: bool) -> None:
        bar = Progress(f"importing {file.name}", "records")
        try:
            result = importer(app.engine(), file, app.config.actor, dry_run=dry_run,
                              progress=lambda records, done, total: bar.update(done, total, records))
        finally:
            bar.close()
        _print_import(result, what, as_json)

    return command


import_accounts = _import_command("accounts", accounts.import_accounts, ACCOUNTS_HELP)
import_devices = _import_command("devices", accounts.import_devices, DEVICES_HELP)


# -- suppress ---------------------------------------------------------------------------------------

@click.group("suppress", cls=Group)
def suppress_group() -> None:
    """Addresses that must never be mailed."""


@suppress_group.command("add")
@click.argument("email")
@click.option("--reason", required=True, help="Why (kept as evidence).")
@dry_run_option
@pass_app
def suppress_add(app: App, email: str, reason: str, dry_run: bool) -> None:
    """Suppress one address."""
    new = suppressions.add_one(app.engine(), email, reason, app.config.actor, dry_run=dry_run)
    state = ("would be suppressed" if dry_run else "suppressed") if new else "was already suppressed"
    click.echo(f"{email}: {state}")


@suppress_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reason", default="imported", show_default=True,
              help="Reason for rows that have no reason column.")
@dry_run_option
@json_option
@pass_app
def suppress_import(app: App, file: Path, reason: str, dry_run: bool, as_json: bool) -> None:
    """Suppress every address in FILE (CSV or JSON Lines: email[,reason]); all or nothing."""
    result = suppressions.import_file(app.engine(), file, app.config.actor, dry_run=dry_run,
                                      default_reason=reason)
    if as_json:
        print_json(result.as_json())
    else:
        verb = "would add" if dry_run else "added"
        click.echo(f"{file}: {result.records} addresses, {verb} {result.added}, "
                   f"{result.already} already suppressed")


@suppress_group.command("list")
@json_option
@pass_app
def suppress_list(app: App, as_json: bool) -> None:
    """Every suppressed address, oldest first."""
    _print_suppressions(suppressions.list_all(app.engine()), as_json)


def _print_suppressions(rows: list[suppressions.Suppressed], as_json: bool) -> None:
    if as_json:
        print_json([r.as_json() for r in rows])
        return
    for r in rows:
        click.echo(f"{r.email}\t{r.source}\t{r.created_at}\t{r.reason}")
    if not rows:
        click.echo("no suppressed addresses", err=True)


# -- returned mail ----------------------------------------------------------------------------------

@click.group("bounces", cls=Group)
def bounces_group() -> None:
    """Returned mail that arrives after a message went out: bounces, delays, complaints."""


def _print_bounces(result: bounces.ImportResult, as_json: bool) -> None:
    if as_json:
        print_json(result.as_json())
        return
    would = "would take" if result.dry_run else "took"
    click.echo(f"{result.source}: {result.messages} message(s); {would} in {result.new}, "
               f"{result.already} taken in before")
    kinds = ", ".join(f"{n} {k}" for k, n in result.kinds.items() if n)
    if kinds:
        click.echo(f"  {kinds}")
    be = "would be " if result.dry_run else ""
    click.echo(f"  deliveries {be}bounced: {result.bounced}, {be}failed: {result.failed}; "
               f"addresses {be}suppressed: {result.suppressed}")
    for slug, counts in sorted(result.campaigns.items()):
        click.echo(f"  {slug}: {counts['bounced']} bounced, {counts['failed']} failed, "
                   f"{counts['suppressed']} suppressed")
    listed = {k: result.outcomes[k] for k in bounces.LISTED_OUTCOMES if result.outcomes[k]}
    if listed:
        click.echo("  not acted on: " + ", ".join(f"{n} {k}" for k, n in listed.items()))
        list_rows(result.listed, sum(listed.values()), lambda r: f"{r['origin']}  {r['outcome']}: {r['why']}")
    if result.moved:
        click.echo(f"  moved {result.moved} message(s) to the processed folder")
    if result.dry_run:
        click.echo("dry run: nothing was written" + (" and nothing was moved" if "://" in result.source else ""))


@bounces_group.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@dry_run_option
@json_option
@pass_app
def bounces_import(app: App, path: Path, dry_run: bool, as_json: bool) -> None:
    """Take in returned mail from PATH: a Maildir folder or an mbox file.

    \b
    Delivery status notifications (RFC 3464), complaint reports (ARF, RFC 5965) and the
    relays' own bounce formats. Each is matched to its delivery by the signed token of its
    return path, else by the original Message-ID; a permanent failure (5.x.x) makes the
    delivery `bounced` and suppresses the address, a complaint suppresses it, a delay is
    recorded only; what matches nothing is counted and listed. Taking in the same mail
    again changes nothing. Tokens are verified with CAMPAIGN_BOUNCE_KEY.
    """
    _print_bounces(bounces.import_path(app.engine(), path, app.config.actor, dry_run=dry_run), as_json)


@bounces_group.command("fetch")
@click.argument("url")
@click.option("--move-to", default=bounces.PROCESSED, show_default=True, metavar="FOLDER",
              help="Where each message taken in is moved (created if missing).")
@dry_run_option
@json_option
@pass_app
def bounces_fetch(app: App, url: str, move_to: str, dry_run: bool, as_json: bool) -> None:
    """Take in returned mail from an IMAP folder: imaps://USER@HOST[:PORT]/FOLDER.

    \b
    The password comes from CAMPAIGN_IMAP_PASSWORD (never from the URL); plain imap://
    only to a loopback host. Does what `bounces import` does, then moves each message
    taken in to --move-to (a dry run opens the folder read-only and moves nothing).
    """
    _print_bounces(bounces.fetch(app.engine(), url, app.config.actor, move_to=move_to, dry_run=dry_run), as_json)


COMMANDS = (import_group, suppress_group, bounces_group)
