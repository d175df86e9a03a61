"""The commands about the cutoff: register the timeline (`schedule`), the long-running `scheduler`, and the switch
itself and its undoing (`flip`, `rollback`)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from campaign.cli.app import (
    App,
    Group,
    Progress,
    dry_run_option,
    duration,
    json_option,
    list_rows,
    pass_app,
    print_findings,
    print_json,
    print_json_result,
)
from campaign.cutoff import flip as flipping
from campaign.cutoff import scheduling
from campaign.errors import FLIP_HALTED, CampaignError


@click.command("schedule")
@click.argument("slug")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Processes that render, each over its own share of the audience [default: the number of "
              "CPUs; small audiences render in one]. --jobs 1 renders in this process.")
@dry_run_option
@json_option
@pass_app
def schedule(app: App, slug: str, jobs: int | None, dry_run: bool, as_json: bool) -> None:
    """Freeze a campaign and register its waves and its flip with the scheduler.

    \b
    First renders every wave for every recipient in the audience now, on every core
    (--jobs), and refuses (naming the template file and line, and the account; the first
    20 problems) if any message fails: nothing is scheduled then. Refuses a cutoff in the
    past. Shows a progress bar on a terminal (a line every 10 s otherwise).
    --dry-run renders the same and prints the timeline: each wave in UTC and in the
    cutoff's own offset, its audience now, how long it takes at the rate limit, when it
    expires; the flip with the devices it would change and hold back.
    Then run `campaign scheduler run` (it sends each wave when due and flips at the cutoff).
    """
    bar = Progress(f"rendering {slug}", "messages", enabled=not as_json)
    try:
        timeline = scheduling.schedule(app.engine(), app.config, slug, dry_run=dry_run, jobs=jobs,
                                       progress=bar.update, progress_every=bar.every)
    finally:
        bar.close()
    if as_json:
        print_json(timeline.as_json())
        return
    verb = "would schedule" if dry_run else "scheduled"
    click.echo(f"{verb} {slug}: cutoff {timeline.cutoff.isoformat()}; {timeline.rendered} messages rendered "
               "without error")
    for item in timeline.items:
        head = f"  {item['at']}  ({item['at_cutoff_offset']})  {item['step']:<18}"
        if item["step"] == scheduling.FLIP:
            held = f", held back if not notified by then: {item['held_back_if_unnotified']}" \
                if item["require_notice"] else ""
            wait = f", fair notice {item['min_notice_seconds'] // 3600} h" if item["min_notice_seconds"] else ""
            click.echo(f"{head} {item['devices_now']} devices affected now{held}{wait}")
        else:
            est = f", about {duration(item['estimated_seconds'])} at the rate limit" \
                if item["estimated_seconds"] is not None else ""
            click.echo(f"{head} {item['recipients_now']} recipients now ({item['audience']}){est}; "
                       f"expires {item['expires']}")
    print_findings((), timeline.warnings)
    if timeline.approval is not None and (timeline.approval.required or timeline.approval.approvals):
        click.echo(f"approval: {timeline.approval.words()}")
        if dry_run and not timeline.approval.allowed:
            click.echo("the real `schedule` refuses until then")
    if dry_run:
        click.echo("dry run: nothing was written")


@click.group("scheduler", cls=Group)
def scheduler_group() -> None:
    """The long-running process that sends each wave when due and flips at the cutoff."""


@scheduler_group.command("run")
@click.option("--once", is_flag=True, help="Do what is due now (overdue steps included), then exit.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes for each wave it sends.")
@click.option("--poll", type=click.FloatRange(min=0.1), default=scheduling.TICK_SECONDS, show_default=True,
              metavar="SECONDS", help="How often to look for work besides each step's own alarm: send windows "
              "that opened, retries, fair notice that has run; and the preflight of each campaign, at most once a "
              "minute (the lead is renewed every third of --lease).")
@click.option("--lease", type=click.FloatRange(min=3), default=scheduling.LEASE_SECONDS, show_default=True,
              metavar="SECONDS", help="How long the lead holds unrenewed (it is renewed every third of it): a "
              "standby takes over within this once the leader dies. Give every scheduler of a database the same.")
@click.option("--bounces", "bounces_url", metavar="URL", help="Take in returned mail from this IMAP folder "
              "(imaps://USER@HOST/FOLDER, password in CAMPAIGN_IMAP_PASSWORD), as `bounces fetch` does.")
@click.option("--bounces-every", type=click.FloatRange(min=1), default=scheduling.BOUNCES_EVERY, show_default=True,
              metavar="SECONDS", help="How often --bounces is fetched.")
@click.option("-v", "--verbose", is_flag=True, help="Log more (one line per step is always logged).")
@pass_app
def scheduler_run(app: App, once: bool, workers: int, poll: float, lease: float, bounces_url: str | None,
                  bounces_every: float, verbose: bool) -> None:
    """Run every due wave and flip of every scheduled campaign, now and as they come due.

    \b
    Catches up what came due while it was down: an overdue step runs at start, except an
    `affected` wave past its expiry (the cutoff), which expires instead. Several schedulers
    may run: one leads (a PostgreSQL advisory lock, or a lease row on SQLite), the others
    wait and take over within a minute if it dies; every step runs once either way.
    Picks up deliveries waiting for their recipient's send window as windows open, and
    flips devices waiting for fair notice when it has run. With --bounces it takes in
    returned mail (`bounces fetch`) before anything else is due. SIGTERM or Ctrl-C stops it
    cleanly: a step in progress is handed back and resumes at the next start.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(scheduling.LogFormat())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    if not verbose:
        # httpx logs each request's URL: a Slack webhook's URL is its secret, a settings service's may carry one
        for noisy in ("apscheduler", "alembic", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    performed, also = scheduling.run(app.engine(), app.config, once=once, workers=workers, bounces=bounces_url,
                                     timings=scheduling.Timings(tick=poll, lease=lease, bounces_every=bounces_every))
    if once:
        click.echo(f"did {len(performed)} step(s)" + (f": {', '.join(performed)}" if performed else "")
                   + (f"; also {', '.join(also)}" if also else ""))


# -- flip and rollback ------------------------------------------------------------------------------

batch_size_option = click.option("--batch-size", type=click.IntRange(min=1), default=5000, show_default=True,
                                 help="Devices per transaction (with [apply] kind = \"http\": the definition's "
                                      "[apply] batch instead, a request each).")


Result = flipping.FlipResult | flipping.RollbackResult


def _print_flip(result: flipping.FlipResult) -> None:
    would = "would " if result.dry_run else ""
    if result.apply is not None:
        _print_apply(result, result.apply, result.total_changed, "switched")
    else:
        click.echo(f"{result.campaign}: {would}switch {result.changed} device(s) in {result.batches} batch(es); "
                   f"{result.total_changed} switched in all")
    if result.held_back:
        click.echo(f"held back: {result.held_back} device(s) of accounts without a delivered notice "
                   "(`flip --include-unnotified` switches them too)")
        list_rows(result.held_back_devices, result.held_back, lambda h: f"{h['device_id']}  account {h['account_id']}")
    if result.waiting:
        assert result.next_due is not None and result.last_due is not None  # devices that wait have their times
        click.echo(f"waiting for fair notice: {result.waiting} device(s), due from {result.next_due.isoformat()} "
                   f"until {result.last_due.isoformat()} (the scheduler or a later `flip` switches them)")
        list_rows(result.waiting_devices, result.waiting, lambda w: f"{w['device_id']}  account {w['account_id']}  "
                f"notified {w['notice_at']}  due {w['due_at']}")
    if result.stage is not None:
        _print_stage(result.campaign, result.stage)
    if result.approval:
        click.echo(f"approval: {result.approval}; the real `flip` refuses until then")
    if result.dry_run:
        click.echo("dry run: nothing was written")


def _print_stage(slug: str, st: dict[str, Any]) -> None:
    """Where a staged flip stands after this run ([flip] stages): the stage, its end, a halt, the next."""
    m = st["measured"]
    how = "finished" if st["finished"] else st["state"]
    click.echo(f"stage {st['number']} of {st['of']} ({st['percent']}): {how}; {m['changes']} change(s), "
               f"{m['conflicts']} conflict(s), {m['errors']} of {m['requests']} request(s) failed, "
               f"{m['complaints']} complaint(s) since it began")
    if st["halted"]:
        click.echo(f"HALTED: {st['halted']['words']}; nothing more is switched until `campaign resume {slug}` "
                   f"or `campaign rollback {slug}`")
    elif st["next"]:
        n = st["next"]
        click.echo(f"next: stage {n['number']} ({n['percent']}) at {n['due_at']} by the scheduler (after "
                   f"stage_wait, if the guards hold), or now: `campaign flip {slug} --stage {n['number']}`")


def _print_apply(result: Result, a: dict[str, Any], total: int, done: str) -> None:
    """What a flip or rollback did through the settings service ([apply] kind = "http"): `a`, its `apply`; `total`
    the campaign's devices `done` in all."""
    if result.dry_run:
        click.echo(f"{result.campaign}: would send {a['sent']} change(s) to the settings service in "
                   f"{a['batches']} batch(es) ({a['url']}); it decides which it applies; {total} {done} in all")
    else:
        again = f", {a['resent_batches']} of them left by an earlier run" if a["resent_batches"] else ""
        retries = f", {a['retries']} retried" if a["retries"] else ""
        click.echo(f"{result.campaign}: sent {a['sent']} change(s) to the settings service in {a['batches']} "
                   f"batch(es){again}{retries}: applied {a['applied']}, left {a['left']}, unknown device "
                   f"{a['unknown_device']}; {total} {done} in all")
        if a["left"] and done == "switched":
            click.echo(f"left: {a['left']} device(s) held another value at the settings service (their owner's "
                       "choice; the local copy now holds it)")
            list_rows(a["left_devices"], a["left"],
                      lambda r: f"{r['device_id']}  account {r['account_id']}  {r['note']}")
        if a["unknown_device"] and done == "switched":
            click.echo(f"unknown to the settings service: {a['unknown_device']} device(s), not switched")
            list_rows(a["unknown_devices"], a["unknown_device"],
                      lambda r: f"{r['device_id']}  account {r['account_id']}")
    if a["waiting"] and not result.dry_run:
        click.echo(f"waiting for the settings service: {a['waiting']} change(s) recorded and not yet answered for")


def _stopped(result: Result, verb: str) -> CampaignError | None:
    """The failure of a flip or rollback that stopped with changes waiting for the settings service (code
    `apply_paused`: a refusal, a person must look; `apply_unavailable`: the service did not answer), or None."""
    st = result.stage if isinstance(result, flipping.FlipResult) else None
    if st is not None and st["halted"]:  # a guard tripped: not tried again, a person decides
        return CampaignError(f"the flip of {result.campaign!r} halted at stage {st['number']} ({st['percent']}): "
                             f"{st['halted']['words']}. Nothing more is switched until `campaign resume "
                             f"{result.campaign}` or `campaign rollback {result.campaign}`", code=FLIP_HALTED)
    a = result.apply
    if a is None or not (a["paused"] or a["unavailable"]):
        return None
    how = "paused" if a["paused"] else "stopped"
    return CampaignError(f"the {verb} of {result.campaign!r} {how}: {a['paused'] or a['unavailable']}. "
                         f"{a['waiting']} change(s) wait for the settings service; "
                         f"{'fix the cause, then ' if a['paused'] else ''}run `campaign {verb} {result.campaign}` "
                         "again: it sends them again under the same Idempotency-Key",
                         code="apply_paused" if a["paused"] else "apply_unavailable")


@click.command("flip")
@click.argument("slug")
@click.option("--before-cutoff", is_flag=True, help="Flip now, although the cutoff has not come yet.")
@click.option("--include-unnotified", is_flag=True,
              help="Also flip the devices of accounts without a delivered notice (require_notice).")
@click.option("--stage", type=click.IntRange(min=1), metavar="N",
              help="[flip] stages: run stage N now, by hand (no stage_wait; the guards of the stage before it "
                   "are checked first). Without it: the stage going on (the first, at first).")
@batch_size_option
@dry_run_option
@json_option
@pass_app
def flip_cmd(app: App, slug: str, before_cutoff: bool, include_unnotified: bool, stage: int | None,
             batch_size: int, dry_run: bool, as_json: bool) -> None:
    """Switch the setting on every device still at `from`, with a change row per device.

    Devices of accounts without a delivered notice are held back (require_notice) and listed; with
    min_notice, a device whose account was notified late waits until its notice is that old. Safe to
    run again: a second run changes nothing, an interrupted one goes on where it stopped. With
    [apply] kind = "http", through the settings service: a device counts as switched once the service
    applied it; a refusal pauses the flip (exit 1) until it is run again.

    With [flip] stages = ["1%", "10%", "100%"], a run switches the stages begun so far: the
    first at first; the scheduler begins each next one stage_wait after the last finished,
    once its guards hold (halt_on_conflict_rate, halt_on_error_rate, halt_on_complaints).
    A guard that trips halts the flip (exit 1): nothing more is switched until `campaign
    resume SLUG` or `campaign rollback SLUG`. `--stage N` begins stage N by hand.
    """
    result = flipping.flip(app.engine(), slug, app.config.actor, flipping.FlipOptions(
        before_cutoff=before_cutoff, include_unnotified=include_unnotified, dry_run=dry_run, batch_size=batch_size,
        stage=stage))
    stopped = _stopped(result, "flip")
    if as_json:
        print_json_result(result.as_json(), stopped)
    else:
        _print_flip(result)
    if stopped is not None:
        raise stopped


@click.command("rollback")
@click.argument("slug")
@batch_size_option
@dry_run_option
@json_option
@pass_app
def rollback_cmd(app: App, slug: str, batch_size: int, dry_run: bool, as_json: bool) -> None:
    """Undo the flip where the device still holds `to` and nobody changed it since; list the others.

    Change rows are marked rolled back or left, never deleted. Afterwards `flip` refuses for this campaign.
    """
    result = flipping.rollback(app.engine(), slug, app.config.actor, flipping.Options(dry_run=dry_run,
                                                                                      batch_size=batch_size))
    stopped = _stopped(result, "rollback")
    if as_json:
        print_json_result(result.as_json(), stopped)
        return
    would = "would " if result.dry_run else ""
    if result.apply is not None:
        _print_apply(result, result.apply, result.total_rolled_back, "rolled back")
    click.echo(f"{result.campaign}: {would}roll back {result.rolled_back} change(s); {would}leave {result.left} "
               "whose device its owner changed since")
    list_rows(result.left_devices, result.left, lambda r: f"{r['device_id']}  account {r['account_id']}  {r['note']}")
    if result.dry_run:
        click.echo("dry run: nothing was written")
    if stopped is not None:
        raise stopped


COMMANDS = (schedule, scheduler_group, flip_cmd, rollback_cmd)
