"""The commands that show the evidence: where a campaign stands (`status`), every account's story or one
person's (`report`), and the audit log (`log`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from campaign.cli.app import App, counts_line, duration, json_option, pass_app, print_json
from campaign.evidence import auditlog, export, proof, stage_status, status, story, verify


@click.command("status")
@click.argument("slug")
@json_option
@pass_app
def status_cmd(app: App, slug: str, as_json: bool) -> None:
    """Per wave: deliveries by state, rate and ETA; the flip: changed, held back, rolled back, left."""
    st = status.status_of(app.engine(), slug)
    if as_json:
        print_json(st.as_json())
        return
    _print_status(st)


def _print_status(st: status.Status) -> None:
    click.echo(f"{st.campaign}: {st.state}, cutoff {st.cutoff}")
    cov = st.coverage
    if cov is not None and cov.affected_accounts:
        def share(n: int) -> str:
            return f"{n} of {cov.affected_accounts} ({100 * n / cov.affected_accounts:.0f} %)"
        untold = ", ".join(f"{n} {why}" for why, n in (("bounced", cov.bounced), ("failed", cov.failed),
                                                        ("suppressed", cov.suppressed), ("never sent", cov.never_sent))
                           if n)
        click.echo(f"  told           {share(cov.told_before_cutoff)} affected accounts before the cutoff, "
                   f"{cov.told_in_time} in time (min_notice)" + (f"; not told: {untold}" if untold else ""))
    for name, counts in st.waves.items():
        det = st.wave_detail[name]
        extra = f"  {det.rate_per_second}/s" if det.rate_per_second else ""
        if det.eta_seconds is not None:
            extra += f", ETA {duration(det.eta_seconds)}"
        state = det.state
        if state == "sending" and counts["pending"] and det.waiting_window == counts["pending"] \
                and not counts["sending"]:
            state = "waiting"  # every delivery left waits for its send window: nothing is being sent
        waits = ", ".join(x for x in (
            f"{det.waiting_window} waiting for their send window" if det.waiting_window else "",
            f"{det.waiting_retry} waiting to be tried again" if det.waiting_retry else "") if x)
        click.echo(f"  {name:<14} {state:<8} {counts_line(counts)}{extra}" + (f" ({waits})" if waits else ""))
        if det.paused_reason:
            click.echo(f"  {'':<14} paused: {det.paused_reason}")
    click.echo(f"  flip           {counts_line(st.flip)}")
    if st.flip_detail.waiting:
        click.echo(f"  {'':<14} {st.flip_detail.waiting} device(s) wait for fair notice")
    a = st.flip_detail.apply
    if a is not None:
        click.echo(f"  apply          {a.url}: applied {a.applied}, waiting {a.waiting}"
                   + (f", rollback waiting {a.undoing}" if a.undoing else "")
                   + (f", unknown device {a.unknown_device}" if a.unknown_device else ""))
        if a.paused:
            click.echo(f"  {'':<14} paused: {a.paused}")
        elif a.last_error:
            click.echo(f"  {'':<14} last try: {a.last_error}")
    if st.flip_detail.stages is not None:
        click.echo(f"  stages         {'; '.join(stage_status.line(s) for s in st.flip_detail.stages)}")
    h = st.flip_detail.halted
    if h is not None:
        click.echo(f"  HALTED         stage {h.stage} ({h.percent}) since {h.at}: {h.words}; nothing more is switched "
                   f"until `campaign resume {st.campaign}` or `campaign rollback {st.campaign}`")
    nxt = st.next_step
    if nxt is not None:
        click.echo(f"  next step      {nxt.step} at {nxt.due_at} ({nxt.state})")
    if st.approval.required or st.approval.approvals:
        click.echo(f"  approval       {st.approval.words()}")
    if st.preflight is not None:
        click.echo(f"  PREFLIGHT      would fail (the scheduler found at {st.preflight.at}; `campaign check "
                   f"{st.campaign}`):")
        for e in st.preflight.errors:
            click.echo(f"  {'':<14} [{e['code']}] {e['message']}")


@click.command("report")
@click.argument("slug")
@click.option("--format", "fmt", type=click.Choice(export.FORMATS), default="csv", show_default=True,
              help="csv: a row per account and device; jsonl: an object per account; html: one page with charts.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here [default: stdout].")
@click.option("--account", "account_id", metavar="ID", help="One person's whole story instead, by account id.")
@click.option("--email", metavar="ADDR", help="One person's whole story instead, by address.")
@click.option("--message", "wave", metavar="WAVE",
              help="With --account: rebuild that person's message of WAVE from what its send recorded, and prove it "
                   "byte-identical to the one handed to the relay (exit 1 if not).")
@click.option("--eml", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="With --message: write the rebuilt message to FILE (never through a link).")
@json_option
@pass_app
def report_cmd(app: App, slug: str, fmt: str, out: Path | None, account_id: str | None, email: str | None,
               wave: str | None, eml: Path | None, as_json: bool) -> None:
    """The evidence: per account, each wave's state, time, Message-ID, digest and error, and each device's change
    (flipped, rolled back, held back and why). With --account or --email: one person's whole story.

    \b
    With --account ID --message WAVE: the exact words that person was sent. The message
    is rebuilt from the definition version's kept files and the inputs recorded with
    it at send (its Date, the name, address, locale, zone and devices as they were),
    and its SHA-256 compared with the one recorded: PROVEN, or NOT PROVEN with why
    (exit 1). --eml FILE writes the rebuilt message, to open in any mail program.
    """
    if eml is not None and wave is None:
        raise click.UsageError("--eml goes with --message WAVE")
    if wave is not None:
        if account_id is None:
            raise click.UsageError("--message goes with --account ID (the person whose message to rebuild)")
        if email is not None or out is not None:
            raise click.UsageError("--message takes --account and --eml, not --email or --out")
        proven = proof.prove(app.engine(), slug, account_id, wave, app.config.templates, eml)
        if as_json:
            print_json(proven.as_json())
        else:
            click.echo(proof.proven_text(proven))
        if not proven.proven:
            raise SystemExit(1)
        return
    if account_id is not None or email is not None:
        if account_id is not None and email is not None:
            raise click.UsageError("--account or --email, not both")
        person = story.story_of(app.engine(), slug, account_id=account_id, email=email)
        if as_json:
            print_json(person.as_json())
        else:
            click.echo(story.story_text(person))
        return
    if as_json:
        raise click.UsageError("--json goes with --account or --email (the report's formats: --format)")
    written = export.report(app.engine(), slug, fmt, out, sys.stdout)
    if written.path is not None:  # not when --out led to stdout (/dev/stdout): the report is all it gets
        what = f"{written.accounts} accounts" if fmt != "html" else "the HTML report"
        click.echo(f"{slug}: {what} written to {out}")


@click.command("log")
@click.argument("slug")
@click.option("--since", metavar="ISO", help="Only events at or after this date or instant (UTC unless it says).")
@click.option("--actor", "who", metavar="NAME", help="Only events of this actor.")
@click.option("--verify", "check", is_flag=True,
              help="Check every signed approval and definition again with ssh-keygen instead; exit 1 if one fails.")
@click.option("--allowed-signers", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="With --verify: check against this allowed signers file (e.g. your own copy), not the definition's.")
@json_option
@pass_app
def log_cmd(app: App, slug: str, since: str | None, who: str | None, check: bool, allowed_signers: Path | None,
            as_json: bool) -> None:
    """The campaign's audit events, oldest first: who did what, when, with its counts (imports and suppressions,
    which belong to no campaign, included).

    \b
    --verify checks every SSH signature of an approval, a withdrawal or a definition
    again (ssh-keygen -Y verify), from what the event keeps, the allowed signers file and
    the definition's stored text: verified or FAILED with why, exit 1 if one fails.
    """
    if allowed_signers is not None and not check:
        raise click.UsageError("--allowed-signers goes with --verify")
    if check:
        if since is not None or who is not None:
            raise click.UsageError("--verify checks the whole log: without --since or --actor")
        result = verify.verify(app.engine(), slug, allowed_signers)
        if as_json:
            print_json(result.as_json())
        else:
            click.echo(result.text())
        if result.failed:
            raise SystemExit(1)
        return
    log = auditlog.log_of(app.engine(), slug, since=since, actor=who)
    if as_json:
        print_json(log.as_json())
    else:
        click.echo(auditlog.log_text(log.events))


COMMANDS = (status_cmd, report_cmd, log_cmd)
