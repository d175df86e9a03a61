"""Send benchmark: `campaign send SLUG --wave notice --ignore-window --workers W` of about N recipients (default
20,000), as a whole process, into Postfix's `smtp-sink` on 127.0.0.1, for W = 1 and W = 2 (`--workers`), on
SQLite and on a PostgreSQL server of its own started with fsync and synchronous_commit on, as production
servers run (`--database`); against two references measured in the same run, alternating, median of several
runs:

  (a) aiosmtplib: N pre-built messages (the same multipart messages, built once with MessageBuilder and
      not timed) sent over 16 persistent connections in one process, one asyncio task each — the ceiling
      of the stack;
  (b) the mailmerge CLI (PyPI `mailmerge`) on 2,000 rows of a text + HTML template, one connection per
      message — what people use today (`--mailmerge-rows 0` leaves it out).

Prints messages/s for each, per database and worker count the ratio ours/aiosmtplib and two shares of the
send that `campaign send` reports in its summary:

  - **db share** (`db time: X s of Y s`): the time the database held the send up — preparing and finishing
    the wave, and the time each worker's event loop sat idle while some task of it waited on the database
    (a connection at the G2 gate for earlier commits, the loop for a claim), clocked by the loop's selector;
  - **gate share** (`gate: Z s`): the time the tasks waited on the database whether or not the loop had other
    work meanwhile — the loop waiting for a claim, plus the time each SMTP connection waited at the gate,
    averaged over the connections (what this benchmark called the db share until 2026-11-30).

Messages are counted by smtp-sink, not taken on trust. Each database is prepared once (SQLite: a file in a
temporary directory; PostgreSQL: a template database) and copied for each run.

    ./run bench send [--recipients N] [--runs K] [--workers 1,2] [--database sqlite,postgres]
                     [--mailmerge-rows R] [--connections C] [--rate R] [--concurrency C] [--timeout S] [--keep]
                     [--light] [--before CHECKOUT]

`--light`: a one-line notice on both sides (what the send costs besides rendering); `--before CHECKOUT`: the send of
another checkout's `campaign` package too (PYTHONPATH), alternating with this one on the same databases. Each run
also prints the CPU a message (user + system of the send's processes; the reference's own) and, from a build that
says them, the database's time preparing and finishing the wave.

Needs `/usr/sbin/smtp-sink` (Debian package `postfix`): installed on the spot when run as root, without
starting a mail daemon; otherwise the command to run is printed. PostgreSQL needs its Debian server package
(`initdb`, `pg_ctl`); run as root, the server runs as the `postgres` user. `mailmerge` is pip-installed
into this venv if missing (a benchmark-only dependency, not in pyproject.toml).

The shipped campaign's cutoff has passed and its rate limit is 50 messages/s, so the harness creates a
copy of data/voice-local-processing.toml with the cutoff 30 days ahead, `rate_per_second` set by
`--rate` (default: high enough not to limit) and `concurrency` (SMTP connections per worker) set to the
reference's `--connections` (16) unless `--concurrency` says otherwise: both sides use as many connections.
Without [approval] and [bounces] (see bench_definition); everything else is the shipped definition.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
DEFINITION = ROOT / "data" / "voice-local-processing.toml"
TEMPLATES = ROOT / "templates"
SLUG, WAVE = "voice-local-processing", "notice"
CAMPAIGN = [sys.executable, "-m", "campaign"]
SMTP_SINK = Path("/usr/sbin/smtp-sink")
MAILMERGE = Path(sys.executable).parent / "mailmerge"  # its console script: `python -m mailmerge` is broken
POLICY_RC = Path("/usr/sbin/policy-rc.d")
DB_TIME = re.compile(r"db time:\s*([0-9]+(?:\.[0-9]+)?)\s*s\s+of\s+([0-9]+(?:\.[0-9]+)?)\s*s", re.IGNORECASE)
GATE_TIME = re.compile(r"gate:\s*([0-9]+(?:\.[0-9]+)?)\s*s", re.IGNORECASE)
PHASES = re.compile(r"preparing\s*([0-9.]+)\s*s,\s*finishing\s*([0-9.]+)\s*s")  # since session 14
LIGHT = {"subject.j2": "Your setting changes on {{ cutoff | format_date(\"long\") }}\n",
         "txt.j2": "Hello {{ account.name }}, your voice setting changes on {{ cutoff | format_date(\"long\") }}.\n",
         "html.j2": "<p>Hello {{ account.name }}, your voice setting changes on "
                    "{{ cutoff | format_date(\"long\") }}.</p>\n"}
AUDIENCE_SHARE = 0.45  # the shipped campaign selects about this share of sample accounts (measured)
INSTALL_HINT = """\
  echo 'postfix postfix/main_mailer_type select No configuration' | sudo debconf-set-selections
  # only if /usr/sbin/policy-rc.d does not exist yet (it keeps apt from starting the mail daemon):
  printf '#!/bin/sh\\nexit 101\\n' | sudo tee /usr/sbin/policy-rc.d && sudo chmod +x /usr/sbin/policy-rc.d
  sudo apt-get update -q
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix
  sudo rm /usr/sbin/policy-rc.d   # only if you created it above"""


# -- smtp-sink ----------------------------------------------------------------------------------------

def ensure_smtp_sink() -> None:
    """Install Debian's postfix for its smtp-sink if missing, with no mail daemon started (root only)."""
    if SMTP_SINK.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"{SMTP_SINK} is missing: it comes with the Debian package postfix. Install it with\n"
                         f"{INSTALL_HINT}")
    print(f"{SMTP_SINK} is missing: installing the Debian package postfix (no mail daemon is started) ...",
          flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    created_policy = not POLICY_RC.exists()
    if created_policy:  # policy-rc.d answering 101 tells invoke-rc.d not to start services
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select No configuration\n",
                       check=True)
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postfix"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        if created_policy:
            POLICY_RC.unlink(missing_ok=True)
    if not SMTP_SINK.exists():
        raise SystemExit(f"installing postfix did not give {SMTP_SINK}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """smtp-sink on a free loopback port: accepts everything, discards it, counts messages (-c)."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.counter_file = work / "smtp-sink.out"
        argv = [str(SMTP_SINK), "-c", "-4"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # required as root: drops privileges once the socket is open
        argv += [f"127.0.0.1:{self.port}", "1024"]  # backlog: connection bursts (mailmerge) are not refused
        self._out = self.counter_file.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    self.stop()
                    raise SystemExit(f"smtp-sink did not start on 127.0.0.1:{self.port}: {err.strip()}") from None
                time.sleep(0.02)

    def messages(self) -> int:
        """Messages received so far: the last `mesg=N` of the counters smtp-sink writes as it goes."""
        with self.counter_file.open("rb") as fh:
            fh.seek(max(0, self.counter_file.stat().st_size - 256))
            found = re.findall(rb"mesg=(\d+)", fh.read())
        return int(found[-1]) if found else 0

    def settle(self, before: int, expected: int | None = None) -> int:
        """Messages received since `before`, once the counter stops moving (sessions close asynchronously)."""
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            now = self.messages() - before
            if now == expected:
                return now
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 0.3:
                break
            time.sleep(0.02)
        return last

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


# -- the definition and the messages ------------------------------------------------------------------

def bench_definition(work: Path, rate: float, concurrency: int | None) -> Path:
    """The shipped definition with a cutoff 30 days ahead (else the notice wave has expired) and a rate
    limit that does not cap the benchmark."""
    text = DEFINITION.read_text(encoding="utf-8")
    cutoff = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)
    text, n = re.subn(r'(?m)^cutoff\s*=\s*"[^"]*"', f'cutoff = "{cutoff.isoformat()}"', text)
    text, m = re.subn(r"(?m)^rate_per_second\s*=.*$", f"rate_per_second = {rate:g}", text)
    if concurrency is not None:
        text, _ = re.subn(r"(?m)^concurrency\s*=.*$", f"concurrency = {concurrency}", text)
    if n != 1 or m != 1:
        raise SystemExit(f"{DEFINITION}: cannot find its `cutoff` and `rate_per_second` lines to adjust")
    text = re.sub(r"(?ms)^\[(?:approval|bounces)\][^\n]*\n.*?(?=^\[)", "", text)  # the reference signs no return path
    out = work / DEFINITION.name
    out.write_text(text, encoding="utf-8")
    return out


@dataclass(frozen=True)
class Prebuilt:
    sender: str
    recipient: str
    data: bytes


def build_messages(definition_path: Path, n: int) -> list[Prebuilt]:
    """N notices for sample recipients, rendered and built with MessageBuilder: the bytes we would send."""
    from campaign.definition import load_definition
    from campaign.notices.mime import MessageBuilder, Parts, message_id
    from campaign.notices.rendering import Renderer
    from campaign.recipients import DeviceView, Recipient
    from campaign.sample import rows

    definition = load_definition(definition_path, TEMPLATES)
    renderer = Renderer(definition, TEMPLATES)
    wave = next(w for w in definition.waves if w.name == WAVE)
    builder = MessageBuilder(definition.sender, definition.reply_to, boundary_seed=wave.name)
    now = dt.datetime.now(dt.UTC)
    sender, domain = definition.sender_address, definition.sender_domain  # properties that parse each time
    out = []
    for account, devices in rows(n, seed=11):
        recipient = Recipient(account[0], account[1], account[2], account[3], account[4])
        rendered = renderer.render(wave, recipient, [DeviceView(d[0], d[2], d[3]) for d in devices])
        parts = Parts(recipient.name, recipient.email, rendered.subject, rendered.text, rendered.html,
                      message_id(definition.slug, wave.name, recipient.account_id, domain), now)
        out.append(Prebuilt(sender, recipient.email, builder.build(parts)))
    return out


# -- reference (a): aiosmtplib -----------------------------------------------------------------------

async def _blast(port: int, messages: list[Prebuilt], connections: int) -> None:
    import aiosmtplib

    queue = iter(messages)  # shared: each task takes the next message when its connection is free

    async def worker() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False)
        await smtp.connect()
        try:
            for m in queue:
                await smtp.sendmail(m.sender, [m.recipient], m.data)
        finally:
            await smtp.quit()

    await asyncio.gather(*(worker() for _ in range(connections)))


def run_aiosmtplib(port: int, messages: list[Prebuilt], connections: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the reference's send."""
    start, cpu = time.perf_counter(), time.process_time()
    asyncio.run(_blast(port, messages, connections))
    return time.perf_counter() - start, time.process_time() - cpu


# -- reference (b): mailmerge ------------------------------------------------------------------------

def ensure_mailmerge() -> None:
    if not MAILMERGE.exists():
        print("mailmerge is missing: pip install mailmerge (benchmark only, not a project dependency) ...",
              flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "mailmerge"], check=True)


def _raw(text: str) -> str:
    """Text that Jinja2 (mailmerge's template engine) leaves exactly as it is."""
    return "{% raw %}" + text.replace("{% endraw %}", "{% endraw %}{{ '{% endraw %}' }}{% raw %}") + "{% endraw %}"


def prepare_mailmerge(work: Path, definition_path: Path, port: int, rows: int) -> list[str]:
    """mailmerge's three inputs: a text + HTML template of our English notice with the recipient's name as a
    field, a CSV of sample recipients, a plaintext server config for smtp-sink. Returns its command line."""
    from campaign.definition import load_definition
    from campaign.notices.rendering import Renderer
    from campaign.recipients import DeviceView, Recipient
    from campaign.sample import rows as sample_rows

    definition = load_definition(definition_path, TEMPLATES)
    renderer = Renderer(definition, TEMPLATES)
    wave = next(w for w in definition.waves if w.name == WAVE)
    name = "Pat Example"  # rendered, then turned into the template field {{name}}
    rendered = renderer.render(wave, Recipient("acc-0", "pat@example.com", name, "en-US", "America/New_York"),
                               [DeviceView("dev-0", "Kitchen", "Echo Dot (4th Gen)")])

    def field(text: str) -> str:
        return "{{name}}".join(_raw(piece) for piece in text.split(name))

    mm = work / "mailmerge"
    mm.mkdir(exist_ok=True)
    template = mm / "mailmerge_template.txt"
    template.write_text(
        f"TO: {{{{name}}}} <{{{{email}}}}>\n"
        f"FROM: {definition.sender}\n"
        f"REPLY-TO: {definition.reply_to}\n"
        f"SUBJECT: {_raw(rendered.subject)}\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/alternative; boundary="bench-boundary"\n'
        "\n"
        "--bench-boundary\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        f"{field(rendered.text)}\n"
        "--bench-boundary\n"
        "Content-Type: text/html; charset=utf-8\n"
        "\n"
        f"{field(rendered.html)}\n"
        "--bench-boundary--\n", encoding="utf-8")
    database = mm / "mailmerge_database.csv"
    with database.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["email", "name"])
        for account, _devices in sample_rows(rows, seed=13):
            # getaddresses() in mailmerge would split a TO: name at a comma or choke on quotes
            writer.writerow([account[1], re.sub(r'[,"<>;:@\\()]', "", account[2])])
    config = mm / "mailmerge_server.conf"
    config.write_text(f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nsecurity = Never\nratelimit = 0\n")
    return [str(MAILMERGE), "--no-dry-run", "--no-limit", "--output-format", "raw",
            "--template", str(template), "--database", str(database), "--config", str(config)]


def run_mailmerge(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"mailmerge failed:\n{proc.stderr.decode(errors='replace')}")
    return elapsed


# -- ours ----------------------------------------------------------------------------------------------

def send_available() -> str | None:
    """None when `campaign send --help` works, else why not."""
    proc = subprocess.run([*CAMPAIGN, "send", "--help"], capture_output=True, cwd=tempfile.gettempdir())
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _campaign(args: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run([*CAMPAIGN, *args], env=env, cwd=cwd, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"campaign {' '.join(args)} failed:\n{proc.stdout.decode()}{proc.stderr.decode()}")
    return proc.stdout.decode()


def light_templates(work: Path) -> Path:
    """A copy of the shipped templates whose notice is one line of text (and one of HTML) in every locale: the
    send's costs other than rendering, which the shipped notice's rendering hides (issue 26)."""
    global TEMPLATES
    light = work / "templates-light"
    shutil.copytree(TEMPLATES, light)
    for folder in (light / SLUG).iterdir():
        if folder.is_dir():
            for suffix, text in LIGHT.items():
                (folder / f"{WAVE}.{suffix}").write_text(text, encoding="utf-8")
    TEMPLATES = light
    return light


def _env(database_url: str, port: int, build: Path | None = None) -> dict[str, str]:
    """The send's environment; `build`: a checkout whose `campaign` package runs instead of this one (PYTHONPATH)."""
    return {**os.environ, **({"PYTHONPATH": str(build)} if build is not None else {}),
            "CAMPAIGN_DATABASE_URL": database_url, "CAMPAIGN_SMTP_URL": f"smtp://127.0.0.1:{port}",
            "CAMPAIGN_TEMPLATES": str(TEMPLATES), "CAMPAIGN_ACTOR": "bench"}


# -- the databases ---------------------------------------------------------------------------------------

class Postgres:
    """A PostgreSQL server of the benchmark's own, on a free loopback port, with fsync and synchronous_commit
    on (the settings of a production server; the tests' server turns them off for speed)."""

    def __init__(self, work: Path) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        if not found:
            raise SystemExit("PostgreSQL is not installed (initdb): install Debian's postgresql, or --database sqlite")
        self.bin = found[-1].parent
        self.port = free_port()
        self.data = work / "pg"
        self.data.mkdir()
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: the server runs as postgres, in its own dir
            shutil.chown(work, "postgres")
            shutil.chown(self.data, "postgres", "postgres")
        self._as_pg([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                     "--locale=C.UTF-8"])
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.data} -c fsync=on -c synchronous_commit=on "
                   "-c full_page_writes=on -c max_connections=100")
        self._as_pg([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"), "-w",
                     "-t", "60", "-o", options, "start"])
        self.admin = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_pg(self, argv: list[str]) -> None:
        if os.geteuid() == 0:
            argv = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(shlex.quote(a) for a in argv)]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(statement))
        finally:
            engine.dispose()

    def stop(self) -> None:
        self._as_pg([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])


class Database:
    """One database under test: prepared once, copied fresh for each run."""

    def __init__(self, kind: str, work: Path, pg: Postgres | None) -> None:
        self.kind, self.work, self.pg = kind, work, pg
        self.prepared = work / "prepared.db"

    def prepared_url(self) -> str:
        if self.pg is not None:
            return self.pg.url("prepared")
        return f"sqlite:///{self.prepared}"

    def reset_prepared(self) -> None:
        if self.pg is not None:
            self.pg.sql('DROP DATABASE IF EXISTS "prepared" WITH (FORCE)')
            self.pg.sql('CREATE DATABASE "prepared"')
        else:
            _remove_db(self.prepared)

    def fresh_copy(self) -> str:
        """A URL to a fresh copy of the prepared database."""
        if self.pg is not None:
            self.pg.sql('DROP DATABASE IF EXISTS "run" WITH (FORCE)')
            self.pg.sql('CREATE DATABASE "run" TEMPLATE "prepared"')
            self.pg.sql("CHECKPOINT")  # the copy's writes are not charged to the send
            return self.pg.url("run")
        db = self.work / "run.db"
        _remove_db(db)
        for suffix in ("", "-wal"):
            if Path(f"{self.prepared}{suffix}").exists():
                shutil.copyfile(f"{self.prepared}{suffix}", f"{db}{suffix}")
        return f"sqlite:///{db}"


def _remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def prepare_ours(database: Database, work: Path, definition_path: Path, port: int, recipients: int) -> int:
    """Prepare `database` with the campaign created and at least `recipients` accounts in its audience, scaling
    the sample up until there are. Returns the audience's size."""
    accounts = math.ceil(recipients / AUDIENCE_SHARE * 1.01)
    for _ in range(6):
        data = work / f"sample-{accounts}"
        if not data.exists():
            subprocess.run([sys.executable, "-m", "campaign.sample", "--accounts", str(accounts), "--out", str(data)],
                           check=True, capture_output=True)
        database.reset_prepared()
        env = _env(database.prepared_url(), port)
        _campaign(["db", "upgrade"], env, work)
        _campaign(["import", "accounts", str(data / "accounts.csv")], env, work)
        _campaign(["import", "devices", str(data / "devices.csv")], env, work)
        _campaign(["create", str(definition_path)], env, work)
        audience = int(json.loads(_campaign(["audience", SLUG, "--json"], env, work))["accounts"])
        print(f"  {accounts:,} sample accounts: {audience:,} in the audience", flush=True)
        if audience >= recipients:
            return audience
        accounts = math.ceil(accounts * recipients / max(audience, 1) * 1.005)
    raise SystemExit(f"could not reach {recipients:,} recipients in the audience")


def _process_tree(pid: int) -> list[int]:
    """The process and its descendants (the send's worker processes)."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*"):
            with contextlib.suppress(OSError):  # the task or the process has just ended
                pids += [int(c) for c in (task / "children").read_text().split()]
        i += 1
    return pids


def _sample_rss(pid: int, peaks: dict[int, int]) -> None:
    """Each process's peak RSS so far (VmHWM). Not wait4's ru_maxrss: Linux carries the parent's high-water
    mark over fork and exec, and this parent holds the reference's 20,000 pre-built messages."""
    for p in _process_tree(pid):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{p}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    peaks[p] = max(peaks.get(p, 0), int(line.split()[1]))


@dataclass(frozen=True)
class OurRun:
    seconds: float
    db_seconds: float | None
    db_of: float | None
    gate_seconds: float | None
    phases: tuple[float, float] | None  # the db time preparing and finishing the wave (None: a build before 14)
    peak_kib: int  # the largest process
    total_peak_kib: int  # the sum of every process's peak (an upper bound of the whole)
    processes: int
    cpu_seconds: float = 0.0  # user + system CPU of the send's processes (the command and its workers)


def run_ours(database: Database, work: Path, port: int, workers: int | None, timeout: float,
             build: Path | None = None) -> OurRun:
    """One `campaign send` as a whole process on a fresh copy of the prepared database (of `build`'s code when
    given, see `_env`)."""
    url = database.fresh_copy()
    argv = [*CAMPAIGN, "send", SLUG, "--wave", WAVE, "--ignore-window", "--verbose"]  # --verbose: db time, gate
    if workers is not None:
        argv += ["--workers", str(workers)]
    out_path, err_path = work / "send.out", work / "send.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=_env(url, port, build), cwd=work, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        ended: list[float] = []
        cpu: list[float] = []

        def reap() -> None:  # a thread, so that the end is timed exactly while the main thread samples memory
            # wait4: the CPU the send used, its worker processes included (each reaped by it). CPU a message is
            # what a loaded machine moves least: the wall clock counts the other sessions' work too.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            ended.append(time.perf_counter())
            cpu.append(usage.ru_utime + usage.ru_stime)

        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        peaks: dict[int, int] = {}
        deadline = start + timeout
        try:
            while reaper.is_alive() and time.perf_counter() < deadline:
                _sample_rss(proc.pid, peaks)
                reaper.join(0.05)
        finally:  # on a timeout, and when the bench itself is interrupted
            timed_out = reaper.is_alive()
            if timed_out:
                proc.kill()
                reaper.join()
    text = out_path.read_text(errors="replace") + err_path.read_text(errors="replace")
    if timed_out:
        raise SystemExit(f"campaign send did not finish within {timeout:.0f} s (--timeout); its output:\n{text}")
    if proc.returncode != 0:
        raise SystemExit(f"campaign send failed (exit {proc.returncode}):\n{text}")
    found = DB_TIME.findall(text)
    db_s, of_s = (float(found[-1][0]), float(found[-1][1])) if found else (None, None)
    gate = GATE_TIME.findall(text)
    phases = PHASES.findall(text)
    return OurRun(ended[0] - start, db_s, of_s, float(gate[-1]) if gate else None,
                  (float(phases[-1][0]), float(phases[-1][1])) if phases else None, max(peaks.values(), default=0),
                  sum(peaks.values()), len(peaks), cpu[0] if cpu else 0.0)


# -- main ----------------------------------------------------------------------------------------------

def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: smtp-sink is stopped


def _checked(what: str, got: int, expected: int) -> None:
    if got != expected:
        print(f"  warning: smtp-sink counted {got:,} messages from {what}, expected {expected:,}", flush=True)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=20_000, help="about this many (default 20,000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=_ints, default=[1, 2],
                        help="`campaign send --workers` values, each measured apart (default 1,2)")
    parser.add_argument("--database", default="sqlite,postgres",
                        help="sqlite, postgres or both (default sqlite,postgres; postgres: a server of our own)")
    parser.add_argument("--mailmerge-rows", type=int, default=2000, help="0 leaves the mailmerge reference out")
    parser.add_argument("--connections", type=int, default=16, help="aiosmtplib reference (default 16)")
    parser.add_argument("--rate", type=float, default=1_000_000,
                        help="rate_per_second written into the benchmark's copy of the definition")
    parser.add_argument("--concurrency", type=int,
                        help="SMTP connections per worker written into the definition (default: --connections, "
                             "so both sides use as many)")
    parser.add_argument("--timeout", type=float, default=900, help="for one `campaign send` (seconds)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--light", action="store_true",
                        help="a one-line notice (text and HTML) instead of the shipped one, on both sides: what "
                             "the send costs besides rendering, and its fixed costs")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="also run the send of the `campaign` package in CHECKOUT (a worktree of the build "
                             "before, on PYTHONPATH), interleaved with this one on the same databases")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.database.split(",") if k.strip()]
    if not kinds or set(kinds) - {"sqlite", "postgres"}:
        parser.error("--database: sqlite, postgres or sqlite,postgres")
    signal.signal(signal.SIGTERM, _terminate)

    ensure_smtp_sink()
    if args.mailmerge_rows:
        ensure_mailmerge()
    work = Path(tempfile.mkdtemp(prefix="campaign-bench-send-"))
    sink: Sink | None = None
    pg: Postgres | None = None
    try:
        sink = Sink(work)
        print(f"smtp-sink on 127.0.0.1:{sink.port}; working directory {work}", flush=True)
        if args.light:
            print(f"light notice: one line each ({light_templates(work)})", flush=True)
        builds: list[tuple[str, Path | None]] = [("this", None)]
        if args.before is not None:
            builds.insert(0, ("before", args.before.resolve()))
        definition = bench_definition(work, args.rate, args.concurrency or args.connections)
        missing = send_available()
        databases: list[Database] = []
        audience = 0
        if missing is not None:
            print(f"campaign send: not measured — `campaign send --help` fails ({missing}); references only",
                  flush=True)
        else:
            for kind in kinds:
                if kind == "postgres":
                    pg = Postgres(work)
                    print(f"PostgreSQL (fsync on, synchronous_commit on) on 127.0.0.1:{pg.port}", flush=True)
                database = Database(kind, work / kind, pg if kind == "postgres" else None)
                database.work.mkdir()
                if os.geteuid() == 0 and kind == "postgres":
                    shutil.chown(database.work, "postgres")
                print(f"preparing {kind} with about {args.recipients:,} recipients ...", flush=True)
                audience = prepare_ours(database, work, definition, sink.port, args.recipients)
                databases.append(database)

        print(f"building {args.recipients:,} messages for the aiosmtplib reference ...", flush=True)
        messages = build_messages(definition, args.recipients)
        size = sum(len(m.data) for m in messages) / len(messages)
        mailmerge_argv = prepare_mailmerge(work, definition, sink.port, args.mailmerge_rows) \
            if args.mailmerge_rows else []
        print(f"{len(messages):,} messages of {size / 1024:.1f} KiB on average; mailmerge {args.mailmerge_rows:,} "
              f"rows; campaign {audience:,} recipients; {args.runs} runs, alternating\n", flush=True)

        ref_a: list[float] = []
        ref_b: list[float] = []
        ref_cpu: list[float] = []  # the reference's CPU a message (ms)
        cpus: dict[tuple[str, int, str], list[float]] = {}  # ours (ms a message, every process of the send)
        ours: dict[tuple[str, int, str], list[float]] = {}
        ratios: dict[tuple[str, int, str], list[float]] = {}
        shares: dict[tuple[str, int, str], list[float]] = {}
        gates: dict[tuple[str, int, str], list[float]] = {}
        phases: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
        peaks: list[tuple[int, int, int]] = []
        for i in range(args.runs):
            before = sink.messages()
            t, cpu = run_aiosmtplib(sink.port, messages, args.connections)
            _checked("aiosmtplib", sink.settle(before, len(messages)), len(messages))
            ref_a.append(len(messages) / t)
            ref_cpu.append(cpu * 1000 / len(messages))
            print(f"run {i + 1}: aiosmtplib {t:6.2f} s {ref_a[-1]:7,.0f}/s  cpu {ref_cpu[-1]:.3f} ms/msg", flush=True)

            if mailmerge_argv:
                before = sink.messages()
                t = run_mailmerge(mailmerge_argv, work)
                _checked("mailmerge", sink.settle(before, args.mailmerge_rows), args.mailmerge_rows)
                ref_b.append(args.mailmerge_rows / t)
                print(f"       mailmerge {t:6.2f} s {ref_b[-1]:5,.0f}/s", flush=True)

            for database in databases:
                for w in args.workers:
                    for label, build in builds:
                        before = sink.messages()
                        run = run_ours(database, database.work, sink.port, w, args.timeout, build)
                        sent = sink.settle(before, audience)
                        _checked("campaign send", sent, audience)
                        key = (database.kind, w, label)
                        ours.setdefault(key, []).append(sent / run.seconds)
                        ratios.setdefault(key, []).append(ours[key][-1] / ref_a[-1])
                        peaks.append((run.peak_kib, run.total_peak_kib, run.processes))
                        cpus.setdefault(key, []).append(run.cpu_seconds * 1000 / max(sent, 1))
                        line = (f"       campaign {database.kind:<8} --workers {w} {label:<6} {run.seconds:6.2f} s "
                                f"{ours[key][-1]:7,.0f}/s  ratio {ratios[key][-1]:.2f}  cpu {cpus[key][-1]:.3f} ms/msg")
                        if run.db_seconds is not None and run.db_of:
                            shares.setdefault(key, []).append(run.db_seconds / run.db_of)
                            line += f"  db {run.db_seconds:.2f} s of {run.db_of:.2f} s ({shares[key][-1]:.1%})"
                            if run.phases is not None:
                                phases.setdefault(key, []).append(run.phases)
                                line += f" [prepare {run.phases[0]:.2f} s, finish {run.phases[1]:.2f} s]"
                            if run.gate_seconds is not None:
                                gates.setdefault(key, []).append(run.gate_seconds / run.db_of)
                                line += f"  gate {run.gate_seconds:.2f} s ({gates[key][-1]:.1%})"
                        print(line, flush=True)

        a = statistics.median(ref_a)
        print(f"\nmedians of {args.runs} runs")
        print(f"aiosmtplib, {args.connections} connections, pre-built, one process  {a:10,.0f} messages/s, "
              f"CPU {statistics.median(ref_cpu):.3f} ms a message")
        if ref_b:
            print(f"mailmerge CLI, a connection per message  {statistics.median(ref_b):10,.0f} messages/s")
        if not ours:
            print("campaign send                                   n/a (not available yet)")
            return
        print(f"\n{'database':<22} {'workers':>7} {'build':>6} {'messages/s':>11} {'ours/aiosmtplib':>16} "
              f"{'db share':>9} {'prepare':>8} {'finish':>7} {'gate share':>10} {'CPU ms/msg':>10}"
              + ("  ours/mailmerge" if ref_b else ""))
        for (kind, w, label), rates in ours.items():
            key = (kind, w, label)
            name = "PostgreSQL (fsync on)" if kind == "postgres" else "SQLite"
            share = f"{statistics.median(shares[key]) * 100:.1f} %" if shares.get(key) else "n/a"
            gate = f"{statistics.median(gates[key]) * 100:.1f} %" if gates.get(key) else "n/a"
            prep, fin = "n/a", "n/a"
            if phases.get(key):
                prep = f"{statistics.median(p[0] for p in phases[key]):.2f} s"
                fin = f"{statistics.median(p[1] for p in phases[key]):.2f} s"
            line = (f"{name:<22} {w:>7} {label:>6} {statistics.median(rates):>11,.0f} "
                    f"{statistics.median(ratios[key]):>16.2f} {share:>9} {prep:>8} {fin:>7} {gate:>10} "
                    f"{statistics.median(cpus[key]):>10.3f}")
            if ref_b:
                line += f"  {statistics.median(rates) / statistics.median(ref_b):13.1f}x"
            print(line)
        largest, total, processes = max(peaks)
        print(f"\npeak RSS of campaign send: {largest / 1024:.0f} MiB in its largest process; {total / 1024:.0f} MiB "
              f"summed over its {processes} processes")
        print("goals (ratio to aiosmtplib): SQLite workers 1 >= 0.50, workers 2 >= 0.80, db share <= 5 %; "
              "PostgreSQL workers 1 >= 0.40, workers 2 >= 0.75, db share <= 15 %")
    finally:
        if sink is not None:
            sink.stop()
        if pg is not None:
            pg.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
