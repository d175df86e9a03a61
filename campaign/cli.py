"""The `campaign` command line: parses options, calls one function of the core, prints the result."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from campaign import campaigns, db, migrate, previews
from campaign.config import Config, load_config, redact_url
from campaign.cutoff import approval, scheduling
from campaign.delivery import sending
from campaign.demo import walkthrough
from campaign.errors import PAUSED, CampaignError
from campaign.evidence import reports
from campaign.intake import accounts, suppressions
from campaign.returns import bounces
from campaign.store import audience as audience_store

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@dataclass
class App:
    """What every command shares: options, then the config and the engine, built on first use."""

    options: dict[str, Any]
    _config: Config | None = None
    _engine: Engine | None = None
    _checked: bool = field(default=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.options)
        return self._config

    def engine(self, check_schema: bool = True) -> Engine:
        if check_schema:
            _require_sqlite_file(self.config.database_url)
        if self._engine is None:
            self._engine = db.make_engine(self.config.database_url)
        if check_schema and not self._checked:
            migrate.require_current(self._engine)
            self._checked = True
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _require_sqlite_file(url: str) -> None:
    """Refuse a SQLite database that does not exist, rather than create an empty file on the way to saying so."""
    parsed = db.parse_url(url)
    path = parsed.database
    if parsed.get_backend_name() == "sqlite" and path and path != ":memory:" and not path.startswith("file:") \
            and not Path(path).exists():
        raise CampaignError(f"no database at {path}: run `campaign db upgrade` to create it "
                            "(or set CAMPAIGN_DATABASE_URL / --database-url to the one you meant)")


class Group(click.Group):
    """Turns the core's expected failures into one message on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CampaignError as exc:
            if ctx.meta.get(JSON_ASKED) and not exc.printed:
                _json({"error": exc.as_json()})  # with --json, the outcome for a program: its stable code
            _fail(str(exc), exc.exit_code)
        except OperationalError as exc:
            _fail(f"database error: {_db_message(exc)}", 1)
        except DBAPIError as exc:
            _fail(f"database error: {_db_message(exc)}", 1)
        except BrokenPipeError:
            # The reader went away (`campaign report … | head`): stop quietly, as other command-line tools do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except OSError as exc:
            _fail(f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}", 1)


def _db_message(exc: DBAPIError) -> str:
    orig = exc.orig if exc.orig is not None else exc
    return redact_url(str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"campaign: {message}" if "\n" not in message else message, err=True)
    sys.exit(code)


def _json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


pass_app = click.make_pass_decorator(App)
dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Show what would happen; change no row and send nothing.")
JSON_ASKED = "campaign.json"  # ctx.meta: the command was asked for --json (meta is shared by every context)


def _asked_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[JSON_ASKED] = value
    return value


json_option = click.option("--json", "as_json", is_flag=True, callback=_asked_json,
                           help="Print the result as JSON (on failure: {\"error\": {\"code\", \"message\"}}).")


def _json_result(result: dict[str, Any], error: CampaignError | None) -> None:
    """A result that ends in failure, as one JSON document: the result with its `error`; then the failure."""
    if error is None:
        _json(result)
        return
    _json({**result, "error": error.as_json()})
    error.printed = True  # Group prints no second document
    raise error


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

@cli.group(cls=Group)
def db_group() -> None:
    """The database schema."""


cli.add_command(db_group, "db")


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


# -- import -----------------------------------------------------------------------------------------

@cli.group("import", cls=Group)
def import_group() -> None:
    """Import accounts and devices from CSV or JSON Lines (all or nothing)."""


class Progress:
    """Progress of long work on stderr: click's progress bar on a terminal; otherwise one plain line every
    `interval` seconds (logs stay readable), and nothing at all for work that ends sooner."""

    def __init__(self, label: str, unit: str, enabled: bool = True, interval: float = 10.0) -> None:
        self.label, self.unit, self.enabled, self.interval = label, unit, enabled, interval
        self.tty = enabled and sys.stderr.isatty()
        # how often the work needs to report: the bar moves twice a second, a plain line waits `interval`
        self.every = 0.5 if self.tty else interval
        self._bar: Any = None
        self._shown = 0
        self._start = self._last = time.monotonic()

    def update(self, done: int, total: int, items: int | None = None) -> None:
        """`done` of `total` (bytes of a file, deliveries of a wave); `items`: records read, when it differs."""
        if not self.enabled or total <= 0:
            return
        if self.tty:
            if self._bar is None:
                self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=items is None,
                                              show_percent=True, show_eta=True, width=30)
                self._bar.__enter__()
            self._bar.length = total
            step = max(0, min(done, total) - self._shown)
            if step:
                self._bar.update(step)
                self._shown += step
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            count = f"{items:,} {self.unit}" if items is not None else f"{done:,}/{total:,} {self.unit}"
            rate = (items if items is not None else done) / max(now - self._start, 1e-9)
            click.echo(f"{self.label}: {count} ({100 * done // total}%, {rate:,.0f}/s)", err=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def _import_progress(file: Path) -> Progress:
    return Progress(f"importing {file.name}", "records")


def _print_import(result: accounts.ImportResult, what: str, as_json: bool) -> None:
    if as_json:
        _json(result.as_json())
        return
    verb = "would import" if result.dry_run else "imported"
    extra = f", {result.settings_changed} setting value(s) changed by their owners" \
        if result.settings_changed else ""
    click.echo(f"{result.path}: {verb} {result.records} {what}: {result.inserted} new, {result.updated} "
               f"updated, {result.unchanged} unchanged{extra}")


@import_group.command("accounts")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@dry_run_option
@json_option
@pass_app
def import_accounts(app: App, file: Path, dry_run: bool, as_json: bool) -> None:
    """Upsert accounts from FILE (CSV or JSON Lines).

    \b
    Columns: account_id,email,name,locale,timezone,country
      locale    BCP 47, e.g. de-AT     timezone  IANA, e.g. Europe/Vienna
      country   ISO 3166-1 alpha-2, e.g. AT
    Rows in the file are inserted or updated; other accounts are not touched. Any problem is
    reported as FILE:LINE: what is wrong, and nothing is written.
    """
    bar = _import_progress(file)
    try:
        result = accounts.import_accounts(app.engine(), file, app.config.actor, dry_run=dry_run,
                                     progress=lambda records, done, total: bar.update(done, total, records))
    finally:
        bar.close()
    _print_import(result, "accounts", as_json)


@import_group.command("devices")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@dry_run_option
@json_option
@pass_app
def import_devices(app: App, file: Path, dry_run: bool, as_json: bool) -> None:
    """Upsert devices and their settings from FILE (CSV or JSON Lines).

    \b
    Columns: device_id,account_id,name,model, then one column per setting key,
    e.g. voice_recordings. An empty cell leaves that setting as it is. A value that
    differs from the stored one is the person's own change: it is stored with its time,
    and a later rollback will not overwrite it. Every account must exist already.
    """
    bar = _import_progress(file)
    try:
        result = accounts.import_devices(app.engine(), file, app.config.actor, dry_run=dry_run,
                                     progress=lambda records, done, total: bar.update(done, total, records))
    finally:
        bar.close()
    _print_import(result, "devices", as_json)


# -- suppress ---------------------------------------------------------------------------------------

@cli.group("suppress", cls=Group)
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
        _json(result.as_json())
    else:
        verb = "would add" if dry_run else "added"
        click.echo(f"{file}: {result.records} addresses, {verb} {result.added}, "
                   f"{result.already} already suppressed")


@suppress_group.command("list")
@json_option
@pass_app
def suppress_list(app: App, as_json: bool) -> None:
    """Every suppressed address, oldest first."""
    rows = suppressions.list_all(app.engine())
    if as_json:
        _json(rows)
        return
    for r in rows:
        click.echo(f"{r['email']}\t{r['source']}\t{r['created_at']}\t{r['reason']}")
    if not rows:
        click.echo("no suppressed addresses", err=True)


# -- returned mail ----------------------------------------------------------------------------------

@cli.group("bounces", cls=Group)
def bounces_group() -> None:
    """Returned mail that arrives after a message went out: bounces, delays, complaints."""


def _print_bounces(result: bounces.ImportResult, as_json: bool) -> None:
    if as_json:
        _json(result.as_json())
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
        _listed(result.listed, sum(listed.values()), lambda r: f"{r['origin']}  {r['outcome']}: {r['why']}")
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


# -- campaigns --------------------------------------------------------------------------------------

@cli.command("create")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace the definition of a campaign not yet scheduled.")
@dry_run_option
@json_option
@pass_app
def create(app: App, file: Path, replace: bool, dry_run: bool, as_json: bool) -> None:
    """Register a campaign from its definition FILE (TOML, see data/voice-local-processing.toml).

    Refuses, with the file, line and key, on any problem in the definition.
    """
    result = campaigns.create_from_file(app.engine(), file, app.config.templates, app.config.actor,
                                        replace=replace, dry_run=dry_run)
    if as_json:
        _json(result)
        return
    verb = "would create" if dry_run else ("replaced" if result["replaced"] else "created")
    click.echo(f"{verb} campaign {result['campaign']!r}: cutoff {result['cutoff']}; {result['rendered']} sample "
               "messages rendered without error (every wave × locale of the audience)")
    for w in result["waves"]:
        click.echo(f"  wave {w['name']:<14} at {w['at']}  audience {w['audience']:<9} expires {w['expires']}")
    if not dry_run:
        standing = approval.standing_of(app.engine(), result["campaign"])
        if standing.required or standing.voided:
            click.echo(f"approval: {standing.words()}")


@cli.command("list")
@json_option
@pass_app
def list_cmd(app: App, as_json: bool) -> None:
    """Campaigns with their state, cutoff and progress."""
    rows = campaigns.listing(app.engine())
    if as_json:
        _json(rows)
        return
    if not rows:
        click.echo("no campaigns yet: `campaign create FILE`", err=True)
        return
    click.echo(f"{'CAMPAIGN':<28} {'STATE':<10} {'CUTOFF':<26} {'SENT':>8} {'SETTLED':>15} {'CHANGED':>8}")
    for r in rows:
        settled = f"{r['settled']}/{r['deliveries']}"
        click.echo(f"{r['campaign']:<28} {r['state']:<10} {r['cutoff']:<26} {r['sent']:>8} {settled:>15} "
                   f"{r['devices_changed']:>8}")


@cli.command("audience")
@click.argument("slug")
@click.option("--by", type=click.Choice(sorted(audience_store.BY_COLUMNS)), help="Break the counts down.")
@click.option("--sample", type=click.IntRange(min=0), default=0, help="Also list N affected accounts.")
@json_option
@pass_app
def audience(app: App, slug: str, by: str | None, sample: int, as_json: bool) -> None:
    """Who is affected now: accounts owning a device whose setting still has the `from` value."""
    report = campaigns.audience_of(app.engine(), slug, by=by, sample=sample)
    if as_json:
        _json(report.as_json())
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


@cli.command("preview")
@click.argument("slug")
@click.option("--wave", help="The wave [default: the first].")
@click.option("--locale", help="Render for the first account of this locale (a stand-in if there is none).")
@click.option("--account", "account_id", metavar="ID", help="Render for this account.")
@click.option("--html", "show_html", is_flag=True, help="Show the HTML part instead of the text part.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write every wave × locale as .eml and .html, with an index.html gallery, into DIR.")
@pass_app
def preview(app: App, slug: str, wave: str | None, locale: str | None, account_id: str | None, show_html: bool,
            out: Path | None) -> None:
    """Show one message as it would be sent: its raw headers, then its text (or HTML) part.

    \b
    With --out DIR, write one .eml and one .html per wave × locale of the audience, and an
    index.html gallery to open in a browser (subject, HTML, text and recipients of each).
    """
    if out is not None:
        written, index = previews.gallery(app.engine(), app.config.templates, slug, out, wave=wave, locale=locale)
        click.echo(f"wrote {written} messages (.eml and .html) and {index}")
        return
    sample = previews.preview(app.engine(), app.config.templates, slug, wave=wave, locale=locale,
                              account_id=account_id)
    head, _, _ = sample.message.partition(b"\r\n\r\n")
    click.echo(head.decode("ascii").replace("\r\n", "\n"))
    click.echo("")
    click.echo(sample.rendered.html if show_html else sample.rendered.text, nl=False)


@cli.command("test-send")
@click.argument("slug")
@click.option("--to", "to", required=True, metavar="ADDR[,ADDR...]", help="Internal addresses to send to.")
@click.option("--wave", help="Only this wave [default: every wave].")
@dry_run_option
@json_option
@pass_app
def test_send(app: App, slug: str, to: str, wave: str | None, dry_run: bool, as_json: bool) -> None:
    """Send one message per wave × locale of the audience to internal addresses, marked as a test
    ("[TEST]" in the subject, X-Campaign-Test: yes). The send ledger is not touched.

    Uses CAMPAIGN_SMTP_URL (default: a Maildir in ./outbox).
    """
    results = previews.test_send_command(app.engine(), app.config, slug, to.split(","), wave=wave, dry_run=dry_run)
    if as_json:
        _json([r.as_json() for r in results])
    else:
        for r in results:
            verb = "would send" if dry_run else r.status
            click.echo(f"{r.wave:<14} {r.locale:<8} -> {r.to}: {verb}{' (' + r.detail + ')' if r.detail else ''}")
    failed = [r for r in results if r.status != "sent"]
    if failed:
        raise CampaignError(f"{len(failed)} of {len(results)} test messages were not accepted")


def _print_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "nothing"


@cli.command("send")
@click.argument("slug")
@click.option("--wave", "wave", required=True, help="The wave to send (e.g. notice).")
@click.option("--ignore-window", is_flag=True, help="Send now even to recipients outside their send window.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes, each with its own connections [default: the number of CPUs].")
@dry_run_option
@json_option
@pass_app
def send(app: App, slug: str, wave: str, ignore_window: bool, workers: int | None, dry_run: bool,
         as_json: bool) -> None:
    """Send a wave now (a manual trigger, ahead of its time if need be, never after it expired).

    Waits out retries until every delivery is settled, except those waiting for their recipient's
    send window, which are counted and left for the scheduler or a later `send` (--ignore-window sends
    them now). Resumable: run it again after an interruption; nobody gets the wave twice.
    """
    workers = workers or os.cpu_count() or 1
    options = sending.SendOptions(ignore_window=ignore_window, workers=workers, dry_run=dry_run)
    engine = app.engine()
    bar = Progress(f"{slug} / {wave}", "deliveries settled", enabled=not as_json and not dry_run)

    def progress(counts: dict[str, int]) -> None:
        bar.update(sum(v for k, v in counts.items() if k not in ("pending", "sending")), sum(counts.values()))

    try:
        summary = sending.send_wave(engine, app.config, slug, wave, options, progress=progress,
                                    progress_every=bar.every)
    finally:
        bar.close()
    paused = CampaignError(f"the wave paused: {summary.paused}", code=PAUSED) if summary.paused else None
    if as_json:
        _json_result(summary.as_json(), paused)
    elif dry_run:
        p = summary.preview
        click.echo(f"{slug} / {wave}: would send {p['due_now']} messages now"
                   + (f", {p['waiting_window']} later in their send window" if p["waiting_window"] else ""))
        for loc, n in p["by_locale"].items():
            click.echo(f"  {loc:<8} {n:>8}")
        for r in p["first"]:
            click.echo(f"  {r['account_id']}  {r['email']}  {r['locale']}")
        click.echo("dry run: nothing was written or sent")
    else:
        rate = summary.attempted / summary.elapsed if summary.elapsed else 0
        click.echo(f"{slug} / {wave}: {_print_counts(summary.counts)}")
        click.echo(f"{summary.attempted} attempts in {summary.elapsed:.1f} s ({rate:.0f}/s); "
                   f"db time: {summary.db_seconds:.2f} s of {summary.elapsed:.2f} s (held up by the database); "
                   f"gate: {summary.gate_seconds:.2f} s (waits on it per connection, busy or not)")
        if summary.waiting_window:
            click.echo(f"{summary.waiting_window} deliveries wait for their recipient's send window: the "
                       "scheduler or a later `send` will send them (or use --ignore-window)")
    if paused is not None:
        raise paused


@cli.command("status")
@click.argument("slug")
@json_option
@pass_app
def status_cmd(app: App, slug: str, as_json: bool) -> None:
    """Per wave: deliveries by state, rate and ETA; the flip: changed, held back, rolled back, left."""
    st = reports.status_of(app.engine(), slug)
    if as_json:
        _json(st)
        return
    click.echo(f"{st['campaign']}: {st['state']}, cutoff {st['cutoff']}")
    for name, counts in st["waves"].items():
        det = st["wave_detail"][name]
        extra = f"  {det['rate_per_second']}/s" if det["rate_per_second"] else ""
        if det["eta_seconds"] is not None:
            extra += f", ETA {_duration(det['eta_seconds'])}"
        click.echo(f"  {name:<14} {det['state']:<8} {_print_counts(counts)}{extra}")
        if det["paused_reason"]:
            click.echo(f"  {'':<14} paused: {det['paused_reason']}")
    click.echo(f"  flip           {_print_counts(st['flip'])}")
    if st["flip_detail"].get("waiting"):
        click.echo(f"  {'':<14} {st['flip_detail']['waiting']} device(s) wait for fair notice")
    a = st["flip_detail"].get("apply")
    if a is not None:
        click.echo(f"  apply          {a['url']}: applied {a['applied']}, waiting {a['waiting']}"
                   + (f", rollback waiting {a['undoing']}" if a["undoing"] else "")
                   + (f", unknown device {a['unknown_device']}" if a["unknown_device"] else ""))
        if a["paused"]:
            click.echo(f"  {'':<14} paused: {a['paused']}")
        elif a["last_error"]:
            click.echo(f"  {'':<14} last try: {a['last_error']}")
    nxt = st.get("next_step")
    if nxt:
        click.echo(f"  next step      {nxt['step']} at {nxt['due_at']} ({nxt['state']})")
    if st["approval"]["required"] or st["approval"]["approvals"]:
        click.echo(f"  approval       {st['approval']['words']}")


@cli.command("report")
@click.argument("slug")
@click.option("--format", "fmt", type=click.Choice(reports.FORMATS), default="csv", show_default=True,
              help="csv: a row per account and device; jsonl: an object per account; html: one page with charts.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here [default: stdout].")
@click.option("--account", "account_id", metavar="ID", help="One person's whole story instead, by account id.")
@click.option("--email", metavar="ADDR", help="One person's whole story instead, by address.")
@json_option
@pass_app
def report_cmd(app: App, slug: str, fmt: str, out: Path | None, account_id: str | None, email: str | None,
               as_json: bool) -> None:
    """The evidence: per account, each wave's state, time, Message-ID and error, and each device's change
    (flipped, rolled back, held back and why). With --account or --email: one person's whole story."""
    if account_id is not None or email is not None:
        if account_id is not None and email is not None:
            raise click.UsageError("--account or --email, not both")
        story = reports.story_of(app.engine(), slug, account_id=account_id, email=email)
        if as_json:
            _json(story)
        else:
            click.echo(reports.story_text(story))
        return
    if as_json:
        raise click.UsageError("--json goes with --account or --email (the report's formats: --format)")
    written = reports.report(app.engine(), slug, fmt, out, sys.stdout)
    if written.path is not None:  # not when --out led to stdout (/dev/stdout): the report is all it gets
        what = f"{written.accounts} accounts" if fmt != "html" else "the HTML report"
        click.echo(f"{slug}: {what} written to {out}")


@cli.command("log")
@click.argument("slug")
@click.option("--since", metavar="ISO", help="Only events at or after this date or instant (UTC unless it says).")
@click.option("--actor", "who", metavar="NAME", help="Only events of this actor.")
@json_option
@pass_app
def log_cmd(app: App, slug: str, since: str | None, who: str | None, as_json: bool) -> None:
    """The campaign's audit events, oldest first: who did what, when, with its counts (imports and suppressions,
    which belong to no campaign, included)."""
    events = reports.log_of(app.engine(), slug, since=since, actor=who)
    if as_json:
        _json({"campaign": slug, "events": events})
    else:
        click.echo(reports.log_text(events))


@cli.command("schedule")
@click.argument("slug")
@dry_run_option
@json_option
@pass_app
def schedule(app: App, slug: str, dry_run: bool, as_json: bool) -> None:
    """Freeze a campaign and register its waves and its flip with the scheduler.

    \b
    First renders every wave for every recipient in the audience now, and refuses
    (naming the template file and line, and the account) if any message fails. Refuses a
    cutoff in the past. --dry-run prints the timeline: each wave in UTC and in the
    cutoff's own offset, its audience now, how long it takes at the rate limit, when it
    expires; the flip with the devices it would change and hold back.
    Then run `campaign scheduler run` (it sends each wave when due and flips at the cutoff).
    """
    timeline = scheduling.schedule(app.engine(), app.config, slug, dry_run=dry_run)
    if as_json:
        _json(timeline.as_json())
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
            est = f", about {_duration(item['estimated_seconds'])} at the rate limit" \
                if item["estimated_seconds"] is not None else ""
            click.echo(f"{head} {item['recipients_now']} recipients now ({item['audience']}){est}; "
                       f"expires {item['expires']}")
    if timeline.approval is not None and (timeline.approval.required or timeline.approval.approvals):
        click.echo(f"approval: {timeline.approval.words()}")
        if dry_run and not timeline.approval.allowed:
            click.echo("the real `schedule` refuses until then")
    if dry_run:
        click.echo("dry run: nothing was written")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


@cli.group("scheduler", cls=Group)
def scheduler_group() -> None:
    """The long-running process that sends each wave when due and flips at the cutoff."""


@scheduler_group.command("run")
@click.option("--once", is_flag=True, help="Do what is due now (overdue steps included), then exit.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes for each wave it sends.")
@click.option("--poll", type=click.FloatRange(min=0.1), default=scheduling.TICK_SECONDS, show_default=True,
              metavar="SECONDS", help="How often to look for work besides each step's own alarm: send windows "
              "that opened, retries, fair notice that has run; also how often the lead is renewed.")
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
        for noisy in ("apscheduler", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    performed, also = scheduling.run(app.engine(), app.config, once=once, workers=workers, bounces=bounces_url,
                                     timings=scheduling.Timings(tick=poll, lease=lease, bounces_every=bounces_every))
    if once:
        click.echo(f"did {len(performed)} step(s)" + (f": {', '.join(performed)}" if performed else "")
                   + (f"; also {', '.join(also)}" if also else ""))


def _set_state(app: App, slug: str, action: str, dry_run: bool) -> None:
    click.echo(campaigns.set_state(app.engine(), slug, action, app.config.actor, dry_run=dry_run))


@cli.command("pause")
@click.argument("slug")
@dry_run_option
@pass_app
def pause(app: App, slug: str, dry_run: bool) -> None:
    """Stop sending: every worker stops after its current batch; `resume` restarts."""
    _set_state(app, slug, "pause", dry_run)


@cli.command("resume")
@click.argument("slug")
@dry_run_option
@pass_app
def resume(app: App, slug: str, dry_run: bool) -> None:
    """Restart sending after `pause`, or after a wave paused itself (fix the cause first)."""
    _set_state(app, slug, "resume", dry_run)


@cli.command("cancel")
@click.argument("slug")
@dry_run_option
@pass_app
def cancel(app: App, slug: str, dry_run: bool) -> None:
    """Stop the campaign for good: nothing more is sent, and the scheduled flip is removed."""
    _set_state(app, slug, "cancel", dry_run)


@cli.command("approve")
@click.argument("slug")
@click.option("--revoke", is_flag=True, help="Withdraw your own approval (a scheduled flip then waits again).")
@dry_run_option
@json_option
@pass_app
def approve_cmd(app: App, slug: str, revoke: bool, dry_run: bool, as_json: bool) -> None:
    """Approve the campaign's current definition, so that `schedule` and `flip` may go
    ([approval] required = true in the definition).

    \b
    The approval must come from someone other than the person who created or last
    replaced the definition (--actor or CAMPAIGN_ACTOR names who acts). Replacing the
    definition (`create --replace`) voids every approval given before. Each approval is an
    audit event naming the definition's version and SHA-256 digest; `status` and `log` show it.
    """
    outcome = approval.approve(app.engine(), slug, app.config.actor, revoke=revoke, dry_run=dry_run)
    if as_json:
        _json(outcome.as_json())
        return
    click.echo(outcome.words())
    if dry_run:
        click.echo("dry run: nothing was written")


# -- flip and rollback ------------------------------------------------------------------------------

batch_size_option = click.option("--batch-size", type=click.IntRange(min=1), default=5000, show_default=True,
                                 help="Devices per transaction (with [apply] kind = \"http\": the definition's "
                                      "[apply] batch instead, a request each).")


def _print_flip(result: Any) -> None:
    would = "would " if result.dry_run else ""
    if result.apply is not None:
        _print_apply(result, "switched")
    else:
        click.echo(f"{result.campaign}: {would}switch {result.changed} device(s) in {result.batches} batch(es); "
                   f"{result.total_changed} switched in all")
    if result.held_back:
        click.echo(f"held back: {result.held_back} device(s) of accounts without a delivered notice "
                   "(`flip --include-unnotified` switches them too)")
        _listed(result.held_back_devices, result.held_back, lambda h: f"{h['device_id']}  account {h['account_id']}")
    if result.waiting:
        click.echo(f"waiting for fair notice: {result.waiting} device(s), due from {result.next_due.isoformat()} "
                   f"until {result.last_due.isoformat()} (the scheduler or a later `flip` switches them)")
        _listed(result.waiting_devices, result.waiting, lambda w: f"{w['device_id']}  account {w['account_id']}  "
                f"notified {w['notice_at']}  due {w['due_at']}")
    if result.approval:
        click.echo(f"approval: {result.approval}; the real `flip` refuses until then")
    if result.dry_run:
        click.echo("dry run: nothing was written")


def _print_apply(result: Any, done: str) -> None:
    """What a flip or rollback did through the settings service ([apply] kind = "http")."""
    a = result.apply
    total = result.total_changed if done == "switched" else result.total_rolled_back
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
            _listed(a["left_devices"], a["left"], lambda r: f"{r['device_id']}  account {r['account_id']}  {r['note']}")
        if a["unknown_device"] and done == "switched":
            click.echo(f"unknown to the settings service: {a['unknown_device']} device(s), not switched")
            _listed(a["unknown_devices"], a["unknown_device"], lambda r: f"{r['device_id']}  account {r['account_id']}")
    if a["waiting"] and not result.dry_run:
        click.echo(f"waiting for the settings service: {a['waiting']} change(s) recorded and not yet answered for")


def _stopped(result: Any, verb: str) -> CampaignError | None:
    """The failure of a flip or rollback that stopped with changes waiting for the settings service (code
    `apply_paused`: a refusal, a person must look; `apply_unavailable`: the service did not answer), or None."""
    a = result.apply
    if a is None or not (a["paused"] or a["unavailable"]):
        return None
    how = "paused" if a["paused"] else "stopped"
    return CampaignError(f"the {verb} of {result.campaign!r} {how}: {a['paused'] or a['unavailable']}. "
                         f"{a['waiting']} change(s) wait for the settings service; "
                         f"{'fix the cause, then ' if a['paused'] else ''}run `campaign {verb} {result.campaign}` "
                         "again: it sends them again under the same Idempotency-Key",
                         code="apply_paused" if a["paused"] else "apply_unavailable")


def _listed(rows: list[dict[str, Any]], total: int, line: Callable[[dict[str, Any]], str]) -> None:
    """The rows a result lists (the first of them), one a line, and how many more there are."""
    for row in rows:
        click.echo(f"  {line(row)}")
    if total > len(rows):
        click.echo(f"  ... and {total - len(rows)} more (see --json)")


@cli.command("flip")
@click.argument("slug")
@click.option("--before-cutoff", is_flag=True, help="Flip now, although the cutoff has not come yet.")
@click.option("--include-unnotified", is_flag=True,
              help="Also flip the devices of accounts without a delivered notice (require_notice).")
@batch_size_option
@dry_run_option
@json_option
@pass_app
def flip_cmd(app: App, slug: str, before_cutoff: bool, include_unnotified: bool, batch_size: int, dry_run: bool,
             as_json: bool) -> None:
    """Switch the setting on every device still at `from`, with a change row per device.

    Devices of accounts without a delivered notice are held back (require_notice) and listed; with
    min_notice, a device whose account was notified late waits until its notice is that old. Safe to
    run again: a second run changes nothing, an interrupted one goes on where it stopped. With
    [apply] kind = "http", through the settings service: a device counts as switched once the service
    applied it; a refusal pauses the flip (exit 1) until it is run again.
    """
    from campaign.cutoff import flip as flipping

    result = flipping.flip(app.engine(), slug, app.config.actor, flipping.FlipOptions(
        before_cutoff=before_cutoff, include_unnotified=include_unnotified, dry_run=dry_run, batch_size=batch_size))
    stopped = _stopped(result, "flip")
    if as_json:
        _json_result(result.as_json(), stopped)
    else:
        _print_flip(result)
    if stopped is not None:
        raise stopped


@cli.command("rollback")
@click.argument("slug")
@batch_size_option
@dry_run_option
@json_option
@pass_app
def rollback_cmd(app: App, slug: str, batch_size: int, dry_run: bool, as_json: bool) -> None:
    """Undo the flip where the device still holds `to` and nobody changed it since; list the others.

    Change rows are marked rolled back or left, never deleted. Afterwards `flip` refuses for this campaign.
    """
    from campaign.cutoff import flip as flipping

    result = flipping.rollback(app.engine(), slug, app.config.actor, flipping.Options(dry_run=dry_run,
                                                                                      batch_size=batch_size))
    stopped = _stopped(result, "rollback")
    if as_json:
        _json_result(result.as_json(), stopped)
        return
    would = "would " if result.dry_run else ""
    if result.apply is not None:
        _print_apply(result, "rolled back")
    click.echo(f"{result.campaign}: {would}roll back {result.rolled_back} change(s); {would}leave {result.left} "
               "whose device its owner changed since")
    _listed(result.left_devices, result.left, lambda r: f"{r['device_id']}  account {r['account_id']}  {r['note']}")
    if result.dry_run:
        click.echo("dry run: nothing was written")
    if stopped is not None:
        raise stopped


@cli.command("demo")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-run"),
              show_default=True, help="Where to work: a SQLite database, a Maildir outbox and a gallery go here.")
def demo(directory: Path) -> None:
    """The whole story of the shipped example, end to end, in simulated time.

    \b
    Import, create, preview, schedule; the notice; a person who changes their own
    setting; a customer told late; the reminder; the switch at the cutoff with one device
    held back (never told) and one waiting for fair notice; the confirmation; the status;
    a rollback dry run. On the embedded defaults (SQLite, a Maildir outbox): nothing
    leaves this machine. Each step is a real `campaign` command, shown as it runs.
    """
    code = walkthrough.run(directory, cli)
    if code:
        raise CampaignError(f"the demo stopped: a step failed with exit code {code}")


def main() -> None:
    cli(prog_name="campaign")


if __name__ == "__main__":
    main()
