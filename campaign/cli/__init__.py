"""The `campaign` command line: parses options, calls one function of the core, prints the result.

The commands live by what they are about: intake (import, suppress, bounces), campaigns (create, list,
audience, pause, resume, cancel, approve), delivery (preview, test-send, send), cutoff (schedule, scheduler,
flip, rollback), evidence (status, report, log), webhooks (log, send); what they share, the error boundary
among it, is in `app`."""

from __future__ import annotations

from pathlib import Path

import click

from campaign import migrate
from campaign.cli import campaigns, console, cutoff, delivery, evidence, intake, webhooks
from campaign.cli.app import CONTEXT, App, Group, Progress, pass_app
from campaign.config import redact_url
from campaign.demo import walkthrough
from campaign.errors import CampaignError

__all__ = ["App", "Progress", "cli", "main"]


@click.group(cls=Group, context_settings=CONTEXT)
@click.option("--database-url", metavar="URL", help="SQLAlchemy URL [env CAMPAIGN_DATABASE_URL; "
              "default sqlite:///campaign.db].")
@click.option("--templates", metavar="DIR", help="The templates directory [env CAMPAIGN_TEMPLATES; "
              "default ./templates].")
@click.option("--actor", metavar="NAME", help="Who is acting, for the audit log [env CAMPAIGN_ACTOR; "
              "default your login name].")
@click.version_option(package_name="campaign")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, templates: str | None, actor: str | None) -> None:
    """Retire a user-facing setting honestly and safely: find who is affected, tell them in their
    language, switch the setting at the cutoff with an audit trail, prove it, undo it if needed.

    Configuration, strongest first: options, environment variables, campaign.toml in the working
    directory. Start with `campaign db upgrade`, then import accounts and devices, then
    `campaign create FILE`.
    """
    app = App({"database_url": database_url, "templates": templates, "actor": actor})
    ctx.obj = app
    ctx.call_on_close(app.close)


# -- db ---------------------------------------------------------------------------------------------

@click.group("db", cls=Group)
def db_group() -> None:
    """The database schema."""


@db_group.command("upgrade")
@pass_app
def db_upgrade(app: App) -> None:
    """Create the schema, or upgrade it to the latest version (safe to run again)."""
    before, after = migrate.upgrade(app.engine(check_schema=False))
    where = redact_url(app.config.database_url)
    if before == after:
        click.echo(f"{where}: schema already at {after}")
    else:
        click.echo(f"{where}: schema {before or 'empty'} -> {after}")


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-run"),
              show_default=True, help="Where to work: a SQLite database, a Maildir outbox and a gallery go here.")
def demo(directory: Path) -> None:
    """The whole story of the shipped example, end to end, in simulated time.

    \b
    Import, create, preview, schedule; the notice; a person who changes their own
    setting; a customer told late; the reminder; the switch at the cutoff with two devices
    held back (one never told, one whose notice bounced) and one waiting for fair notice; the confirmation; the status;
    a rollback dry run. On the embedded defaults (SQLite, a Maildir outbox): nothing
    leaves this machine. Each step is a real `campaign` command, shown as it runs.
    """
    code = walkthrough.run(directory, cli)
    if code:
        raise CampaignError(f"the demo stopped: a step failed with exit code {code}")


for command in (db_group, *intake.COMMANDS, *campaigns.COMMANDS, *delivery.COMMANDS, *cutoff.COMMANDS,
                *evidence.COMMANDS, *console.COMMANDS, *webhooks.COMMANDS, demo):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="campaign")

