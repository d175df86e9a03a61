"""The commands about the messages: look at one (`preview`), send test copies to the team (`test-send`), send a
wave (`send`)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from campaign import preflight, previews, wording
from campaign.cli.app import (
    App,
    Progress,
    counts_line,
    dry_run_option,
    json_option,
    pass_app,
    print_findings,
    print_json,
    print_json_result,
)
from campaign.delivery import sending
from campaign.errors import PAUSED, CampaignError, PreflightFailed


@click.command("preview")
@click.argument("slug")
@click.option("--wave", help="The wave [default: the first].")
@click.option("--locale", help="Render for this locale's made-up person [default: the default locale].")
@click.option("--account", "account_id", metavar="ID", help="Render for this real account instead.")
@click.option("--html", "show_html", is_flag=True, help="Show the HTML part instead of the text part.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write every wave × locale as .eml and .html, with an index.html gallery, into DIR.")
@click.option("--real-sample", is_flag=True,
              help="With --out: render each locale for a real account of it (the first by id), not a made-up "
                   "person. The gallery then holds customers' data; the audit log records it.")
@pass_app
def preview(app: App, slug: str, wave: str | None, locale: str | None, account_id: str | None, show_html: bool,
            out: Path | None, real_sample: bool) -> None:
    """Show one message as it would be sent: its raw headers, then its text (or HTML) part.

    It is rendered for a made-up person of the locale (a stand-in: a name, rooms
    and a time zone that fit it, an example.com address, the audience's device
    models), never a customer, unless --account ID names one.

    With --out DIR, write one .eml and one .html per wave × locale of the audience, and an index.html
    gallery to open in a browser: a table by wave and locale (how many accounts each message serves,
    and a mark where another language's template serves them), then each message's subject, HTML
    and text. For made-up people too, unless --real-sample.
    """
    if out is not None:
        written, index = previews.gallery(app.engine(), app.config, slug, out, wave=wave, locale=locale,
                                          real_sample=real_sample)
        whose = "real accounts (customers' data: the audit log records it)" if real_sample else "made-up people"
        click.echo(f"wrote {written} messages (.eml and .html), for {whose}, and {index}")
        return
    if real_sample:
        raise click.UsageError("--real-sample goes with --out (the gallery); to see one customer's message, give "
                               "--account ID")
    sample = previews.preview(app.engine(), app.config.templates, slug, wave=wave, locale=locale,
                              account_id=account_id)
    head, _, _ = sample.message.partition(b"\r\n\r\n")
    click.echo(head.decode("ascii").replace("\r\n", "\n"))
    click.echo("")
    click.echo(sample.rendered.html if show_html else sample.rendered.text, nl=False)


@click.command("test-send")
@click.argument("slug")
@click.option("--to", "to", required=True, metavar="ADDR[,ADDR...]", help="Internal addresses to send to.")
@click.option("--wave", help="Only this wave [default: every wave].")
@click.option("--real-sample", is_flag=True,
              help="Render each locale for a real account of it (the first by id), not a made-up person; the "
                   "audit event says so.")
@dry_run_option
@json_option
@pass_app
def test_send(app: App, slug: str, to: str, wave: str | None, real_sample: bool, dry_run: bool,
              as_json: bool) -> None:
    """Send one message per wave × locale of the audience to internal addresses, marked as a test
    ("[TEST]" in the subject, X-Campaign-Test: yes). The send ledger is not touched.

    Each is rendered for a made-up person of its locale (no customer's name, address or
    device), unless --real-sample. Uses CAMPAIGN_SMTP_URL (default: a Maildir in ./outbox).
    """
    results = previews.test_send_command(app.engine(), app.config, slug, to.split(","), wave=wave, dry_run=dry_run,
                                         real_sample=real_sample)
    if as_json:
        print_json([r.as_json() for r in results])
    else:
        for r in results:
            verb = "would send" if dry_run else r.status
            click.echo(f"{r.wave:<14} {r.locale:<8} -> {r.to}: {verb}{' (' + r.detail + ')' if r.detail else ''}")
    failed = [r for r in results if r.status != "sent"]
    if failed:
        raise CampaignError(f"{len(failed)} of {len(results)} test messages were not accepted")


@click.command("send")
@click.argument("slug")
@click.option("--wave", "wave", required=True, help="The wave to send (e.g. notice).")
@click.option("--ignore-window", is_flag=True, help="Send now even to recipients outside their send window.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes, each with its own connections [default: the number of CPUs].")
@click.option("--out-of-order", is_flag=True,
              help="Send this wave although an earlier `affected` wave (the notice) has not gone out yet.")
@click.option("-v", "--verbose", is_flag=True, help="Also say how long the send waited on the database.")
@dry_run_option
@json_option
@pass_app
def send(app: App, slug: str, wave: str, ignore_window: bool, workers: int | None, out_of_order: bool,
         verbose: bool, dry_run: bool, as_json: bool) -> None:
    """Send a wave now (a manual trigger, ahead of its time if need be, never after it expired).

    Waits out retries until every delivery is settled, except those waiting for their recipient's
    send window, which are counted and left for the scheduler or a later `send` (--ignore-window sends
    them now). Resumable: run it again after an interruption; nobody gets the wave twice. Refuses a wave
    that comes after an `affected` wave not yet sent (a reminder before the notice) unless --out-of-order.
    """
    workers = workers or os.cpu_count() or 1
    options = sending.SendOptions(ignore_window=ignore_window, workers=workers, dry_run=dry_run,
                                  out_of_order=out_of_order)
    engine = app.engine()
    bar = Progress(f"{slug} / {wave}", "deliveries settled", enabled=not as_json and not dry_run)

    def progress(counts: dict[str, int]) -> None:
        bar.update(sum(v for k, v in counts.items() if k not in ("pending", "sending")), sum(counts.values()))

    try:
        summary = sending.send_wave(engine, app.config, slug, wave, options, progress=progress,
                                    progress_every=bar.every)
    finally:
        bar.close()
    failure = CampaignError(f"the wave paused: {summary.paused}", code=PAUSED) if summary.paused else None
    found = preflight.check(engine, app.config.templates, slug, preflight.SEND, wave=wave) if dry_run else None
    if found is not None and found.errors:
        failure = PreflightFailed(f"{slug}: the send would fail: the preflight found {len(found.errors)} "
                                 f"error(s) (`campaign check {slug}`)")
    if as_json:
        print_json_result({**summary.as_json(), **({"preflight": found.as_json()} if found else {})}, failure)
    elif dry_run:
        p = summary.preview
        click.echo(f"{slug} / {wave}: would send {p['due_now']} messages now"
                   + (f", {p['waiting_window']} later in their send window" if p["waiting_window"] else ""))
        for loc, n in p["by_locale"].items():
            click.echo(f"  {loc:<8} {n:>8}")
        for r in p["first"]:
            click.echo(f"  {r['account_id']}  {r['email']}  {r['locale']}")
        if summary.ahead_seconds:
            click.echo(f"ahead of its time: the wave is due in {wording.duration(summary.ahead_seconds)}")
        if found is not None:
            print_findings(found.errors, found.warnings)
        click.echo("dry run: nothing was written or sent")
    else:
        rate = summary.attempted / summary.elapsed if summary.elapsed else 0
        c = summary.counts
        click.echo(f"{slug} / {wave}: sent {c['sent']}, failed {c['failed']}, waiting {summary.waiting_window} "
                   f"for their send window ({counts_line(c)})")
        click.echo(f"{summary.attempted} message(s) handed to the relay in {summary.elapsed:.1f} s, {rate:.0f} a "
                   "second")
        if summary.ahead_seconds:
            click.echo(f"sent {wording.duration(summary.ahead_seconds)} ahead of the wave's time")
        if verbose:
            click.echo(f"db time: {summary.db_seconds:.2f} s of {summary.elapsed:.2f} s (held up by the database: "
                       f"preparing {summary.prepare_seconds:.2f} s, finishing {summary.finish_seconds:.2f} s, the "
                       f"rest the workers); gate: {summary.gate_seconds:.2f} s (waits on it per connection, busy or "
                       "not)")
        if summary.waiting_window:
            click.echo(f"{summary.waiting_window} deliveries wait for their recipient's send window: the "
                       "scheduler or a later `send` will send them (or use --ignore-window)")
    if failure is not None:
        raise failure


COMMANDS = (preview, test_send, send)
