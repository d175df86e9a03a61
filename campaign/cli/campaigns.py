"""The commands about a campaign itself: register it (`create`), list them, who it affects (`audience`), stop and
restart it (`pause`, `resume`, `cancel`), and its approval (`approve`)."""

from __future__ import annotations

from pathlib import Path

import click

from campaign import campaigns, preflight
from campaign.cli.app import App, dry_run_option, json_option, pass_app, print_findings, print_json
from campaign.cutoff import approval
from campaign.delivery import transport
from campaign.errors import UsageError
from campaign.store import audience as audience_store

sign_option = click.option(
    "--sign", "key", metavar="KEY", type=click.Path(path_type=Path),
    help="Sign with this SSH key (ssh-keygen -Y sign): you act as the principal the definition's allowed_signers "
         "name for it. Needed under [approval] verified = true.")

# -- campaigns --------------------------------------------------------------------------------------

@click.command("create")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace the definition of a campaign not yet scheduled.")
@sign_option
@dry_run_option
@json_option
@pass_app
def create(app: App, file: Path, replace: bool, key: Path | None, dry_run: bool, as_json: bool) -> None:
    """Register a campaign from its definition FILE (TOML; the definition's reference: docs/definition.md).

    Refuses, with the file, line and key, on any problem in the definition. Under
    [approval] verified = true the author must sign (--sign KEY): the signer's principal
    in allowed_signers is the author, who then cannot approve this version.
    """
    result = approval.create(app.engine(), file, app.config.templates, app.config.actor, sign=key,
                             replace=replace, dry_run=dry_run)
    if as_json:
        print_json(result.as_json())
        return
    verb = "would create" if dry_run else ("replaced" if result.replaced else "created")
    waves = len(result.waves) or 1  # each wave is rendered for the same locales (a definition has one at least)
    locales = result.rendered // waves
    click.echo(f"{verb} campaign {result.campaign!r}: cutoff {result.cutoff}; {result.rendered} sample messages "
               f"({waves} wave{'s' * (waves != 1)} × {locales} locale{'s' * (locales != 1)}) rendered without error")
    for w in result.waves:
        click.echo(f"  wave {w['name']:<14} at {w['at']}  audience {w['audience']:<9} expires {w['expires']}")
    print_findings((), result.warnings)
    if not dry_run:
        standing = approval.standing_of(app.engine(), result.campaign)
        if standing.defined_proof:
            click.echo(f"author: {standing.defined_by}, verified by {approval.PROOFS[standing.defined_proof]}")
        if standing.required or standing.voided:
            click.echo(f"approval: {standing.words()}")


@click.command("check")
@click.argument("target", metavar="SLUG|FILE")
@click.option("--connect", is_flag=True,
              help="Also open a session with the relay (CAMPAIGN_SMTP_URL): connect, EHLO, STARTTLS, log in, "
                   "QUIT. Nothing is sent.")
@json_option
@pass_app
def check(app: App, target: str, connect: bool, as_json: bool) -> None:
    """The preflight: what would make a campaign fail or reach the wrong people, before anyone is mailed.

    \b
    TARGET is a campaign's slug (its registered definition) or a definition FILE not
    registered yet. Each finding has a stable code (docs/commands.md lists them):
    errors (unknown-setting, unknown-value, empty-audience, missing-secret,
    missing-templates, missing-translation, template-error; with --connect
    smtp-unreachable, smtp-auth) and warnings (fallback, notice-too-late,
    wave-too-long, cutoff-moved, templates-changed, webhook-secret). Exit 0 when there is no error (warnings printed),
    1 when there is. `create`, `schedule`, `send --dry-run` and the scheduler run it too.
    """
    probe = transport.probe(app.config) if connect else None
    relay = preflight.connect_findings(probe.problem, probe.detail, probe.where) if probe else []
    hooks = preflight.webhook_findings(app.config.webhooks)
    result = preflight.check(app.engine(), app.config.templates, target, extra=[*relay, *hooks])
    if as_json:
        print_json({**result.as_json(), **({"relay": probe.as_json()} if probe else {})})
    else:
        print_findings(result.errors, result.warnings)
        if probe is not None and probe.problem is None:
            click.echo(f"relay {probe.where}: {probe.detail}")
        verdict = "no errors" if result.ok else f"{len(result.errors)} error(s)"
        click.echo(f"{result.campaign}: {verdict}, {len(result.warnings)} warning(s)")
    if not result.ok:
        raise SystemExit(1)


@click.command("list")
@json_option
@pass_app
def list_cmd(app: App, as_json: bool) -> None:
    """Campaigns with their state, cutoff and progress."""
    rows = campaigns.listing(app.engine())
    if as_json:
        print_json([r.as_json() for r in rows])
        return
    if not rows:
        click.echo("no campaigns yet: `campaign create FILE`", err=True)
        return
    click.echo(f"{'CAMPAIGN':<28} {'STATE':<10} {'CUTOFF':<26} {'SENT':>8} {'SETTLED':>15} {'CHANGED':>8}")
    for r in rows:
        settled = f"{r.settled}/{r.deliveries}"
        click.echo(f"{r.campaign:<28} {r.state:<10} {r.cutoff:<26} {r.sent:>8} {settled:>15} {r.devices_changed:>8}")


@click.command("audience")
@click.argument("slug")
@click.option("--by", type=click.Choice(sorted(audience_store.BY_COLUMNS)), help="Break the counts down.")
@click.option("--sample", type=click.IntRange(min=0), default=0, help="Also list N affected accounts.")
@click.option("--not-told", "not_told", is_flag=True, help="Those a `not_told` wave would reach now: never told, at "
              "an address changed since, or added late.")
@click.option("--why", is_flag=True, help="With --not-told: each account's reason ('bounced, address changed').")
@json_option
@pass_app
def audience(app: App, slug: str, by: str | None, sample: int, not_told: bool, why: bool, as_json: bool) -> None:
    """Who is affected now: accounts owning a device whose setting still has the `from` value.

    \b
    With --not-told, the second chance's audience ([[waves]] audience = "not_told"):
    affected accounts whose notice was never delivered (every earlier delivery
    bounced, failed, or was never sent) and whose address changed since (a
    re-import corrected it) or who were added after the earlier waves.

    \b
      campaign audience voice-local-processing --by locale --sample 5
      campaign audience voice-local-processing --not-told --why
    """
    if why and not not_told:
        raise UsageError("--why goes with --not-told (it says why each account was never told)")
    if not_told:
        told = campaigns.not_told_of(app.engine(), slug)
        if as_json:
            print_json(told.as_json())
            return
        click.echo(f"{slug}: {told.accounts} affected account(s) not told, at an address changed since or added late")
        for account_id, email, reason in told.listed:
            click.echo(f"  {account_id}  {email}" + (f"  ({reason})" if why else ""))
        if told.accounts > len(told.listed):
            click.echo(f"  ... and {told.accounts - len(told.listed)} more")
        return
    report = campaigns.audience_of(app.engine(), slug, by=by, sample=sample)
    if as_json:
        print_json(report.as_json())
        return
    summary = report.summary
    click.echo(f"{slug}: {summary.accounts} accounts with {summary.devices} devices set to "
               f"{report.setting} = {report.from_value}")
    if summary.by is not None:
        width = max([len(k) for k in summary.by] + [len(by or "")])
        click.echo(f"  {(by or '').upper():<{width}} {'ACCOUNTS':>9} {'DEVICES':>9}")
        for key, n in summary.by.items():
            click.echo(f"  {key:<{width}} {n['accounts']:>9} {n['devices']:>9}")
    for s in summary.sample:
        click.echo(f"  {s['account_id']}  {s['email']}  {s['locale']}  {s['timezone']}  {s['country']}  "
                   f"{s['devices']} device(s)")


def _state_command(action: str, help: str) -> click.Command:
    """`pause`, `resume` or `cancel`: one command each, the same but for the state they ask for and their help."""

    @click.command(action, help=help)
    @click.argument("slug")
    @dry_run_option
    @pass_app
    def command(app: App, slug: str, dry_run: bool) -> None:
        click.echo(campaigns.set_state(app.engine(), slug, action, app.config.actor, dry_run=dry_run))

    return command


pause = _state_command("pause", "Stop sending: every worker stops after its current batch; `resume` restarts.")
resume = _state_command("resume", "Restart sending after `pause`, or after a wave paused itself (fix the cause first).")
cancel = _state_command("cancel",
                        "Stop the campaign for good: nothing more is sent, and the scheduled flip is removed.")


@click.command("approve")
@click.argument("slug")
@click.option("--revoke", is_flag=True, help="Withdraw your own approval (a scheduled flip then waits again).")
@sign_option
@dry_run_option
@json_option
@pass_app
def approve_cmd(app: App, slug: str, revoke: bool, key: Path | None, dry_run: bool, as_json: bool) -> None:
    """Approve the campaign's current definition, so that `schedule` and `flip` may go
    ([approval] required = true in the definition).

    \b
    The approval must come from someone other than the person who created or last
    replaced the definition (--actor or CAMPAIGN_ACTOR names who acts). Replacing the
    definition (`create --replace`) voids every approval given before. Each approval is an
    audit event naming the definition's version and SHA-256 digest; `status` and `log` show it.

    \b
    Under [approval] verified = true only a verified approval counts: sign it with
    --sign KEY (ssh-keygen -Y sign over the campaign, version and digest); the principal
    the definition's allowed_signers name for the key is who approves, not --actor.
    `campaign log SLUG --verify` checks every signature again.
    """
    if key is not None:
        outcome = approval.approve_signed(app.engine(), slug, key, revoke=revoke, dry_run=dry_run)
    else:
        outcome = approval.approve(app.engine(), slug, app.config.actor, revoke=revoke, dry_run=dry_run)
    if as_json:
        print_json(outcome.as_json())
        return
    click.echo(outcome.words())
    if dry_run:
        click.echo("dry run: nothing was written")


@click.command("unschedule")
@click.argument("slug")
@dry_run_option
@pass_app
def unschedule(app: App, slug: str, dry_run: bool) -> None:
    """Take a scheduled campaign back to draft, to move its cutoff.

    \b
    Only before its flip has begun. Its steps not yet run are dropped and its
    approvals void; what was sent stays sent (nobody is told twice). Then
    `create --replace FILE` with the new cutoff, `check`, and `schedule` again: if
    notices went out with the old date, `check` warns `cutoff-moved` and the
    definition needs a wave that tells those people the new one.
    """
    click.echo(campaigns.unschedule(app.engine(), slug, app.config.actor, dry_run=dry_run))


COMMANDS = (create, check, unschedule, list_cmd, audience, pause, resume, cancel, approve_cmd)
