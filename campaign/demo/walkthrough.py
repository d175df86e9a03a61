"""`campaign demo`: the whole story of the shipped example on the embedded defaults (SQLite, a Maildir outbox),
in simulated time. Every step is a real `campaign` command, run as its own process with the campaign clock
(`CAMPAIGN_CLOCK`) set to the moment of the story; nothing leaves this machine.

The story's definition is the shipped one (data/voice-local-processing.toml) with a staged flip added: a second
person approves it before it can be scheduled (`[approval]`), its messages go out with a signed return path
(`[bounces]`), so that a notice a relay returns days later is taken back, and the flip switches a tenth of the
accounts first, the rest two hours later if no guard tripped (`[flip]`). The campaign's events are posted, signed,
to a receiver on 127.0.0.1 (`[[webhooks]]` in the working directory's campaign.toml). The bounce key and the
webhook secret the demo uses are fixed values, set for the demo's own steps only: demo keys, not secrets."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import email.utils
import os
import shlex
import shutil
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

import click

from campaign import verp
from campaign.demo.receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]  # the checkout: data/ and templates/ of the shipped example
DATA = ROOT / "data"
SLUG = "voice-local-processing"
CUTOFF = dt.datetime(2025, 3, 28, 7, 0, tzinfo=dt.UTC)  # 2025-03-28T00:00:00-07:00, the shipped cutoff

# The cast (from the shipped sample data, and one newcomer).
JOSEPH = ("acc-000003", "dev-0000004", "Joseph Nguyen")  # chooses another setting himself before the cutoff
MEGAN = ("acc-000016", "murphy.megan16@example.net", "Megan Murphy")  # asked not to be emailed: never notified
BARBARA = ("acc-000012", "dev-0000018", "Barbara White")  # changes her switched device afterwards
PRIYA = ("acc-900001", "dev-9000001", "Priya Shah")  # a new customer, told late: fair notice
HANNAH = ("acc-000018", "dev-0000026", "Hannah Wagner", "hannah_wagner18@example.com")  # her notice bounces late

APPROVER = "dana"  # the second person, who approves the definition (the author is CAMPAIGN_ACTOR, else "demo")
# The demo's bounce key (CAMPAIGN_BOUNCE_KEY), set for the demo's own steps only. A DEMO KEY, NOT A SECRET: a
# real one is random (docs/bounces.md) and kept where the SMTP password is.
DEMO_BOUNCE_KEY = "demo-key-not-a-secret-0123456789abcdef"
RELAY = "mail.relay.example"
# The demo's webhook secret (CAMPAIGN_WEBHOOK_SECRET: whsec_ and base64 of 32 bytes), for the demo's own steps and
# its receiver only. A DEMO KEY, NOT A SECRET.
DEMO_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"demo-webhook-key-not-a-secret-01").decode()
STAGES = '[flip]\nstages = ["10%", "100%"]\nstage_wait = "1h"\nhalt_on_conflict_rate = 0.05\nhalt_on_complaints = 5\n'


@dataclass(frozen=True)
class Step:
    when: dt.datetime
    title: str
    args: tuple[str, ...]
    note: str = ""
    actor: str | None = None  # who runs it (`--actor`), when not the author
    refused: bool = False  # the story expects `campaign` to refuse this one
    before: Callable[[Path, dt.datetime], str] | None = None  # prepares its input; returns a line saying what
    templates: str | None = None  # a templates folder of its own, under the working directory


def at(**delta: float) -> dt.datetime:
    return CUTOFF + dt.timedelta(**delta)


def story(work: Path) -> list[Step]:
    toml = str(work / DEFINITION)
    inputs = work / "inputs"
    return [
        Step(at(days=-21), "Create the schema (SQLite, in the working directory)", ("db", "upgrade")),
        Step(at(days=-21), "Import the customers: 500 accounts in several languages and time zones",
             ("import", "accounts", str(DATA / "accounts.csv"))),
        Step(at(days=-21), "... and their devices with their settings",
             ("import", "devices", str(DATA / "devices.csv"))),
        Step(at(days=-21), f"{MEGAN[2]} asked us never to email her", ("suppress", "add", MEGAN[1], "--reason",
                                                                      "asked not to be emailed")),
        Step(at(days=-21), "The preflight of the draft, before registering it: the Japanese reminder was not "
             "written yet", ("check", toml), "the definition lists the locales that must have their own message "
             "(required_locales); check finds the mistakes that would make the campaign fail or quietly reach "
             "the wrong people, before anyone is mailed", refused=True, before=write_draft,
             templates=DRAFT),
        Step(at(days=-21), "The translation is in: register the campaign, retire 'Do not send voice recordings' "
             "on 2025-03-28", ("create", toml),
             "create runs the same preflight, and renders every wave in every language of the audience"),
        Step(at(days=-21), "Who is affected now, by language", ("audience", SLUG, "--by", "locale")),
        Step(at(days=-21), "The reminder as a Japanese customer will get it",
             ("preview", SLUG, "--wave", "reminder", "--locale", "ja-JP")),
        Step(at(days=-21), "Every wave in every language, as .eml and .html, with a gallery for the browser",
             ("preview", SLUG, "--out", str(work / "gallery"))),
        Step(at(days=-21), "Test messages to the team (into the Maildir outbox)",
             ("test-send", SLUG, "--to", "qa@example.com", "--wave", "notice")),
        Step(at(days=-21), "The plan, without committing to it", ("schedule", SLUG, "--dry-run")),
        Step(at(days=-21), "Schedule it? Not alone: the definition asks for a second person's approval",
             ("schedule", SLUG), "[approval] required = true: whoever created the definition cannot schedule or "
             "flip it until someone else approves it", refused=True),
        Step(at(days=-20, hours=2), f"The next morning {APPROVER}, the privacy lead, reads the definition and "
             "approves it", ("approve", SLUG), actor=APPROVER),
        Step(at(days=-20, hours=2, minutes=5), "Schedule it: every message rendered for every recipient, the "
             "campaign frozen", ("schedule", SLUG)),
        Step(at(days=-14, hours=3), "Two weeks before the cutoff the scheduler sends the notice",
             ("scheduler", "run", "--once"),
             "each person is mailed between 09:00 and 20:00 of their own time zone: at 10:00 UTC that is Asia "
             "and Europe; the Americas wait for their morning"),
        Step(at(days=-14, hours=13), "At 20:00 UTC it is daytime in the Americas", ("scheduler", "run", "--once")),
        Step(at(days=-14, hours=13, minutes=5), "Where the campaign stands", ("status", SLUG)),
        Step(at(days=-13, hours=2), f"The next morning a relay returns {HANNAH[2]}'s notice: that mailbox no "
             "longer exists", ("bounces", "import", str(work / "bounces")),
             "her provider had accepted the message; its delivery report (5.1.1, user unknown) comes back to the "
             "notice's own signed return path. Her notice no longer counts as told, and her address is suppressed",
             before=write_bounce),
        Step(at(days=-10), f"{JOSEPH[2]} chooses another setting himself (a devices export from the product)",
             ("import", "devices", str(inputs / "joseph.csv")), "he is no longer affected: no reminder, no switch"),
        Step(at(days=-5), f"A new customer, {PRIYA[2]}, registers an affected speaker",
             ("import", "accounts", str(inputs / "priya-account.csv"))),
        Step(at(days=-5), "... her device", ("import", "devices", str(inputs / "priya-device.csv"))),
        Step(at(days=-5, hours=13), "The team sends the notice to those who became affected since",
             ("send", SLUG, "--wave", "notice", "--workers", "1"),
             "min_notice = 7d: she is told less than 7 days before the cutoff, so her device waits until 7 days "
             "after her notice"),
        Step(at(days=-3, hours=3), "Three days before: the reminder, to those still affected",
             ("scheduler", "run", "--once"), f"not to {HANNAH[2]}: her address bounced"),
        Step(at(days=-3, hours=13), "... and in the Americas", ("scheduler", "run", "--once")),
        Step(at(minutes=30), "The cutoff: the scheduler switches the first stage, a tenth of the accounts",
             ("scheduler", "run", "--once"),
             "[flip] stages = [\"10%\", \"100%\"]: which stage an account is in is fixed by a hash of the campaign "
             "and the account, so every run and every machine agree; the next stage waits stage_wait (1h) and its "
             "guards (conflicts, errors, complaints)"),
        Step(at(minutes=35), "Where the campaign stands", ("status", SLUG)),
        Step(at(hours=1, minutes=35), "An hour later, no guard tripped: the scheduler switches the rest",
             ("scheduler", "run", "--once"),
             f"{MEGAN[2]} was never told and {HANNAH[2]}'s notice bounced, so their devices are held back; "
             f"{PRIYA[2]}'s waits for fair notice"),
        Step(at(hours=3), "The confirmation, naming each device switched and when",
             ("scheduler", "run", "--once")),
        Step(at(hours=13), "... and in the Americas", ("scheduler", "run", "--once")),
        Step(at(hours=13, minutes=5), "Where the campaign stands", ("status", SLUG)),
        Step(at(days=1, hours=11), f"{BARBARA[2]} changes her switched device to another setting",
             ("import", "devices", str(inputs / "barbara.csv"))),
        Step(at(days=2, hours=14), f"Seven days after {PRIYA[2]}'s notice the scheduler switches her device, "
             "and confirms it", ("scheduler", "run", "--once")),
        Step(at(days=2, hours=14, minutes=5), "Where the campaign stands", ("status", SLUG)),
        Step(at(days=3), "Had the decision been reversed: what a rollback would do (dry run)",
             ("rollback", SLUG, "--dry-run"),
             f"{BARBARA[2]}'s own later choice would be left alone"),
        Step(at(days=3), "Everything that was done, and by whom", ("log", SLUG)),
        Step(at(days=3), f"Support on the phone with {PRIYA[2]}: her whole story, in her time zone",
             ("report", SLUG, "--account", PRIYA[0])),
        Step(at(days=3), f"... and with {HANNAH[2]}: her notice bounced, so no reminder, and her device was held "
             "back", ("report", SLUG, "--account", HANNAH[0])),
        Step(at(days=3), f"A regulator asks for the exact words {PRIYA[2]} received: rebuilt from the kept "
             "templates and proven byte for byte", ("report", SLUG, "--account", PRIYA[0], "--message", "notice",
                                                    "--eml", str(work / "priya-notice.eml")),
             "each delivery recorded the SHA-256 of the message handed to the relay, and the version of the "
             "definition and templates that built it; an edit of templates/ since changes nothing here"),
        Step(at(days=3), "The evidence for a regulator: every account's messages and device changes (CSV)",
             ("report", SLUG, "--format", "csv", "--out", str(work / "report.csv"))),
        Step(at(days=3), "The campaign at a glance: one HTML page with charts, for the screen and for paper",
             ("report", SLUG, "--format", "html", "--out", str(work / "report.html"))),
        Step(at(days=3), "The campaign's events, posted to the team's receiver (signed, at least once)",
             ("webhooks", "send"), "the scheduler posts them at every tick; this posts what is left now"),
        Step(at(days=3), "... and what was posted, and when", ("webhooks", "log")),
        Step(at(days=3), "How it ended: done, and who was told in time", ("status", SLUG),
             "told = a notice delivered before the cutoff (a late bounce takes it back); in time = at least "
             "min_notice (7 days) before it"),
    ]


DRAFT = "draft-templates"  # the templates as they stood in the draft: no Japanese reminder yet
DEFINITION = "voice-local-processing.toml"  # the shipped definition with a staged flip, in the working directory


def write_definition(work: Path) -> None:
    """The shipped definition with `[flip]` stages added (the shipped one flips everyone at once)."""
    text = (DATA / DEFINITION).read_text(encoding="utf-8")
    (work / DEFINITION).write_text(text.rstrip("\n") + "\n\n" + STAGES, encoding="utf-8")


def write_config(work: Path, url: str) -> None:
    """campaign.toml in the working directory: every event of the campaign to the demo's receiver."""
    (work / "campaign.toml").write_text(
        "# campaign demo: the campaign's events to a receiver on 127.0.0.1 (docs/webhooks.md)\n"
        f'[[webhooks]]\nname = "team"\nurl = "{url}"\nevents = ["*"]\nsecret_env = "CAMPAIGN_WEBHOOK_SECRET"\n'
        '# a replay in simulated time: the scheduler\'s runs are days apart (the default offers the last 24h)\n'
        'max_age = "30d"\n',
        encoding="utf-8")


def write_draft(work: Path, _when: dt.datetime) -> str:
    """The shipped templates without the Japanese reminder (ja-JP and ja), as the draft stood; returns a line
    saying so."""
    draft = work / DRAFT
    if draft.exists():
        shutil.rmtree(draft)
    shutil.copytree(ROOT / "templates", draft,
                    ignore=lambda folder, names: [n for n in names if n.startswith("reminder.")
                                                  and Path(folder).name in ("ja", "ja-JP")])
    return f"(the draft's templates: {draft}, without ja-JP/reminder.* and ja/reminder.*)"


def write_inputs(inputs: Path) -> None:
    """The files the story imports on the way: what the product's exports would say on those days."""
    inputs.mkdir(parents=True, exist_ok=True)
    with (DATA / "devices.csv").open(encoding="utf-8", newline="") as f:
        devices = {row["device_id"]: row for row in csv.DictReader(f)}

    def device_file(name: str, device_id: str, value: str) -> None:
        row = {**devices[device_id], "voice_recordings": value}
        with (inputs / name).open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            writer.writeheader()
            writer.writerow(row)

    device_file("joseph.csv", JOSEPH[1], "save_recordings")
    device_file("barbara.csv", BARBARA[1], "save_recordings")
    (inputs / "priya-account.csv").write_text(
        "account_id,email,name,locale,timezone,country\n"
        f"{PRIYA[0]},priya.shah@example.com,{PRIYA[2]},en-US,America/Chicago,US\n", encoding="utf-8")
    (inputs / "priya-device.csv").write_text(
        "device_id,account_id,name,model,voice_recordings\n"
        f"{PRIYA[1]},{PRIYA[0]},Office,Echo Show 15,do_not_send\n", encoding="utf-8")


def write_bounce(work: Path, when: dt.datetime) -> str:
    """The relay's delivery report for Hannah's notice, as Postfix writes one (RFC 3464: 5.1.1, user unknown), sent
    to the signed return path her notice went out with, into the Maildir `bounces/`; returns what it wrote."""
    parser = BytesHeaderParser()
    for f in sorted((work / "outbox" / "new").iterdir()):
        headers = parser.parsebytes(f.read_bytes())
        if headers["X-Campaign-Wave"] == "notice" and not headers["X-Campaign-Test"] \
                and HANNAH[3] in str(headers["To"]):
            original = f.read_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("ascii")
            break
    else:
        raise click.ClickException(f"the demo found no notice to {HANNAH[3]} in its outbox")
    ref = verp.reference(str(headers["Message-ID"]))
    assert ref is not None
    # The envelope sender her notice went out with: what `send` signed ([bounces] return_path), the demo key.
    return_path = f"bounces+{verp.make(ref, DEMO_BOUNCE_KEY.encode())}@example.com"
    sent = email.utils.parsedate_to_datetime(str(headers["Date"]))
    qid = ref[:10].upper()
    date, arrived = email.utils.format_datetime(when), email.utils.format_datetime(sent)
    boundary = f"{qid}.{int(when.timestamp())}/{RELAY}"
    report = f"""\
Return-Path: <>
Delivered-To: {return_path}
Received: by {RELAY} (Postfix)
\tid {qid}; {date}
Date: {date}
From: MAILER-DAEMON@{RELAY} (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {return_path}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Message-Id: <{when:%Y%m%d%H%M%S}.{qid}@{RELAY}>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host {RELAY}.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. Its headers are attached below.

                   The mail system

<{HANNAH[3]}>: host mx.example.com[192.0.2.25] said: 550 5.1.1
    <{HANNAH[3]}>: Recipient address rejected: User unknown

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; {RELAY}
X-Postfix-Queue-ID: {qid}
X-Postfix-Sender: rfc822; {return_path}
Arrival-Date: {arrived}

Final-Recipient: rfc822; {HANNAH[3]}
Original-Recipient: rfc822;{HANNAH[3]}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.com
Diagnostic-Code: smtp; 550 5.1.1 <{HANNAH[3]}>: Recipient address rejected: User unknown

--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{original}

--{boundary}--
"""
    box = work / "bounces"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    name = f"{int(when.timestamp())}.{qid}.{RELAY}"
    (box / "new" / name).write_bytes(report.replace("\n", "\r\n").encode("ascii"))
    return f"(the relay's report, to {return_path}: bounces/new/{name})"


def available(args: tuple[str, ...], cli: click.Group) -> bool:
    """Whether this version has the command (the demo shows what exists)."""
    return args[0] in cli.commands


def _campaign(args: tuple[str, ...], env: dict[str, str], cwd: Path, cli: click.Group) -> int:
    """Run one `campaign` command in this process (the same command line, without starting Python again for each
    step), with its environment and working directory; returns its exit code."""
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        cli.main(args=list(args), prog_name="campaign", standalone_mode=False)
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    finally:
        sys.stdout.flush()
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)


def run(work: Path, cli: click.Group) -> int:
    """The demo in `work`, each step a command of `cli` (the command line: given, not imported, so that the
    command line may import the demo)."""
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    db_file = work / "campaign.db"
    for stale in (db_file, work / "campaign.db-wal", work / "campaign.db-shm"):
        stale.unlink(missing_ok=True)
    for folder in ("outbox", "bounces"):
        for sub in ("new", "cur", "tmp"):
            box = work / folder / sub
            if box.is_dir():
                for f in box.iterdir():
                    f.unlink()
    write_inputs(work / "inputs")
    write_definition(work)
    with Receiver(DEMO_WEBHOOK_SECRET) as receiver:
        write_config(work, receiver.url)
        code = _story(work, cli, db_file)
        posted = receiver.types()
    if code == 0:
        print(f"The receiver on {receiver.url} accepted {len(posted)} signed events: "
              + ", ".join(f"{t} ×{posted.count(t)}" for t in dict.fromkeys(posted)) + ".")
        _where(work, db_file)
    return code


def _story(work: Path, cli: click.Group, db_file: Path) -> int:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env = {**base_env, "CAMPAIGN_DATABASE_URL": f"sqlite:///{db_file}",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates"), "CAMPAIGN_SMTP_URL": f"maildir:{work / 'outbox'}",
           "CAMPAIGN_ACTOR": os.environ.get("CAMPAIGN_ACTOR", "demo"), "PYTHONUNBUFFERED": "1",
           "CAMPAIGN_BOUNCE_KEY": DEMO_BOUNCE_KEY, "CAMPAIGN_WEBHOOK_SECRET": DEMO_WEBHOOK_SECRET}
    approver = APPROVER if env["CAMPAIGN_ACTOR"] != APPROVER else f"{APPROVER}-2"
    print(f"The story of {SLUG}, replayed in simulated time (the cutoff was {CUTOFF.isoformat()}).")
    print(f"Working in {work}; every step is a `campaign` command, shown as it runs.")
    print(f"The author is {env['CAMPAIGN_ACTOR']!r}; CAMPAIGN_BOUNCE_KEY and CAMPAIGN_WEBHOOK_SECRET are fixed demo "
          "keys, set for these steps only (not secrets).\n")
    for step in story(work):
        if not available(step.args, cli):
            continue
        when = step.when.strftime("%Y-%m-%d %H:%M UTC")
        print(f"== {when} · {step.title}")
        if step.note:
            print(textwrap.fill(step.note, width=100, initial_indent="   ", subsequent_indent="   "))
        if step.before is not None:
            print(f"   {step.before(work, step.when)}")
        args = ("--actor", approver, *step.args) if step.actor else step.args
        print(f"$ campaign {shlex.join(args)}", flush=True)
        step_env = {**env, "CAMPAIGN_CLOCK": step.when.isoformat()}
        if step.templates is not None:
            step_env["CAMPAIGN_TEMPLATES"] = str(work / step.templates)
        code = _campaign(args, step_env, work, cli)
        if step.refused and code == 0:
            print("step should have been refused, and went through", file=sys.stderr)
            return 1
        if code != 0 and not step.refused:
            print(f"step failed with exit code {code}", file=sys.stderr)
            return code
        print()
    return 0


def _where(work: Path, db_file: Path) -> None:
    env = {"CAMPAIGN_ACTOR": os.environ.get("CAMPAIGN_ACTOR", "demo"), "CAMPAIGN_TEMPLATES": str(ROOT / "templates")}
    outbox = work / "outbox" / "new"
    sent = len(list(outbox.iterdir())) if outbox.is_dir() else 0
    print("Where to look:")
    print(f"  the messages, as the recipients got them: {outbox} ({sent} files, one per message)")
    print(f"  the gallery of every wave and language:    {work / 'gallery' / 'index.html'}")
    print(f"  the campaign report, for a browser:        {work / 'report.html'}")
    print(f"  {PRIYA[2]}'s notice, rebuilt and proven:   {work / 'priya-notice.eml'}")
    print(f"  the database:                              {db_file}")
    print(f"  try: CAMPAIGN_DATABASE_URL=sqlite:///{db_file} campaign status {SLUG}")
    print("The console on this database (a demo identity: pick who you are; loopback only):")
    serve = {"CAMPAIGN_ACTOR": env["CAMPAIGN_ACTOR"], "CAMPAIGN_TEMPLATES": env["CAMPAIGN_TEMPLATES"]}
    print("  " + " ".join(f"{k}={shlex.quote(v)}" for k, v in serve.items())
          + f" campaign --database-url {shlex.quote(f'sqlite:///{db_file}')} serve --identity demo")
    print("  then open http://127.0.0.1:8080/")
