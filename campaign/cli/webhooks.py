"""`campaign webhooks`: the campaign's events posted to other systems ([[webhooks]] in campaign.toml) — the log of
their deliveries, and a delivery run now (the scheduler runs one every tick)."""

from __future__ import annotations

import click

from campaign.cli.app import App, Group, json_option, pass_app, print_json
from campaign.webhooks import delivery, log


@click.group("webhooks", cls=Group)
def webhooks_group() -> None:
    """The campaign's events posted to other systems ([[webhooks]] in campaign.toml).

    \b
    Events: wave.finished, wave.paused, flip.stage_finished, flip.halted,
    flip.finished, approval.needed, approval.given, preflight.failed,
    campaign.done. Each is written to an outbox with its audit event, and
    `campaign scheduler run` delivers it to every endpoint that wants it (signed
    per Standard Webhooks, or as a Slack message), retrying with backoff.
    See docs/webhooks.md.
    """


@webhooks_group.command("log")
@click.option("--campaign", "slug", metavar="SLUG", help="Only this campaign's events.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000),
              help="The latest N deliveries.")
@json_option
@pass_app
def log_cmd(app: App, slug: str | None, limit: int, as_json: bool) -> None:
    """Deliveries: event, endpoint, attempts, state, last status or error.

    \b
    States: pending (not yet delivered; with the time of its next try),
    delivered (the endpoint answered 2xx), failed (given up after max_attempts,
    or older than 24 hours). An endpoint's events go in the order they were
    written: a pending one holds the later ones back.

    \b
      campaign webhooks log
      campaign webhooks log --campaign voice-local-processing --json
    """
    result = log.log_of(app.engine(), [e.name for e in app.config.webhooks], limit, slug)
    if as_json:
        print_json(result.as_json())
        return
    if not result.deliveries:
        click.echo("no webhook deliveries yet" + ("" if result.endpoints else
                                                   " (no [[webhooks]] in campaign.toml: see docs/webhooks.md)"))
        return
    for d in result.deliveries:
        last = f"HTTP {d.last_status}" if d.last_status is not None else ""
        if d.last_error:
            last = d.last_error
        when = ""
        if d.state == "pending" and d.next_attempt_at is not None:
            when = f", next try {d.next_attempt_at.isoformat(timespec='seconds')}"
        elif d.state == "delivered" and d.delivered_at is not None:
            when = f" {d.delivered_at.isoformat(timespec='seconds')}"
        click.echo(f"#{d.event_id} {d.event_type:<19} {d.campaign or '-':<24} -> {d.endpoint}: {d.state}{when}, "
                   f"{d.attempts} attempt(s)" + (f"; last: {last}" if last else ""))
    if result.total > len(result.deliveries):
        click.echo(f"({len(result.deliveries)} latest of {result.total}: --limit N shows more)")


@webhooks_group.command("send")
@click.option("--now", "now_too", is_flag=True, help="Also try now the deliveries waiting for their retry time.")
@json_option
@pass_app
def send_cmd(app: App, now_too: bool, as_json: bool) -> None:
    """Deliver what is due now, once, without the scheduler.

    One run over every endpoint: each gets the events it wants, oldest first;
    a failed one is retried later with exponential backoff (30 s, 1 min, 2 min,
    ... at most an hour) and holds the endpoint's later events back. The
    scheduler does the same every tick; this is for trying an endpoint out, or
    delivering without a scheduler. Exit 1 when an endpoint's secret is missing
    or malformed (the others are still delivered).

    \b
      CAMPAIGN_WEBHOOK_SECRET=whsec_... campaign webhooks send
      campaign webhooks send --now     # do not wait out the retry times
    """
    run = delivery.deliver_now(app.engine(), app.config, now_too=now_too)
    if as_json:
        print_json({**run.as_json(), "line": run.line()})
    else:
        click.echo(run.line())
    for problem in run.problems:
        click.echo(f"campaign: {problem}", err=True)
    if run.problems:
        raise SystemExit(1)


COMMANDS = (webhooks_group,)
