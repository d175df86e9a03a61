"""What every command of the command line shares: the App (options, then the config and the engine), the one error
boundary (`Group`), the options several commands take, and the ways they print (JSON, progress, lists, counts)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from campaign import db, migrate, preflight
from campaign.config import Config, load_config, redact_url
from campaign.errors import CampaignError, UsageError

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
        _require_sqlite_folder(self.config.database_url)
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


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite database URL (None for another database, or one in memory)."""
    parsed = db.parse_url(url)
    path = parsed.database
    if parsed.get_backend_name() == "sqlite" and path and path != ":memory:" and not path.startswith("file:"):
        return Path(path)
    return None


def _require_sqlite_folder(url: str) -> None:
    """Say that a SQLite database's folder does not exist (SQLite says 'unable to open database file')."""
    path = _sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"no folder {path.parent} for the database {path}: create it (mkdir -p {path.parent}), or "
                         "set CAMPAIGN_DATABASE_URL / --database-url to the one you meant")


def _require_sqlite_file(url: str) -> None:
    """Refuse a SQLite database that does not exist, rather than create an empty file on the way to saying so."""
    path = _sqlite_path(url)
    if path is not None and not path.exists():
        raise CampaignError(f"no database at {path}: run `campaign db upgrade` to create it "
                            "(or set CAMPAIGN_DATABASE_URL / --database-url to the one you meant)")


class Group(click.Group):
    """Turns the core's expected failures into one message on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CampaignError as exc:
            if ctx.meta.get(JSON_ASKED) and not exc.printed:
                print_json({"error": exc.as_json()})  # with --json, the outcome for a program: its stable code
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


def print_json(obj: Any) -> None:
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


def print_json_result(result: dict[str, Any], error: CampaignError | None) -> None:
    """A result that ends in failure, as one JSON document: the result with its `error`; then the failure."""
    if error is None:
        print_json(result)
        return
    print_json({**result, "error": error.as_json()})
    error.printed = True  # Group prints no second document
    raise error


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


def counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "nothing"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def list_rows(rows: list[dict[str, Any]], total: int, line: Callable[[dict[str, Any]], str]) -> None:
    """The rows a result lists (the first of them), one a line, and how many more there are."""
    for row in rows:
        click.echo(f"  {line(row)}")
    if total > len(rows):
        click.echo(f"  ... and {total - len(rows)} more (see --json)")


def print_findings(errors: Iterable[preflight.Finding], warnings: Iterable[preflight.Finding]) -> None:
    """The preflight's findings, one a line: errors first."""
    for f in errors:
        click.echo(f"error [{f.code}]: {f.message}")
    for f in warnings:
        click.echo(f"warning [{f.code}]: {f.message}")
