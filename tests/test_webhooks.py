"""Webhooks out (issue 25 item 2): the outbox written with its audit event, delivered at least once and in order to
a real receiver on loopback that verifies every signature and fails its first attempts (500, a dropped connection,
a timeout); the Slack format; bad configuration. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from campaign import db, webhook_events
from campaign.cli import cli
from campaign.config import load_config
from campaign.errors import ConfigError
from campaign.models import WEBHOOK_DELIVERY, WEBHOOK_EVENT
from campaign.store import audit
from campaign.store import campaigns as campaign_rows
from campaign.webhook_config import Endpoint
from campaign.webhooks import delivery
from tests.conftest import ROOT, CliRun

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
QUICK = delivery.Pace(base=0.0, jitter=0.0)  # retries due at once: each run is the next attempt

# Every event type, from the audit actions that make them (the flip's are recorded directly: the staged flip that
# writes them is another part of issue 25).
ACTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("campaign.create", {"approval_required": True, "version": 1}, "approval.needed"),
    ("campaign.approve", {"version": 1, "digest": "sha256:ab"}, "approval.given"),
    ("preflight.failed", {"errors": [{"code": "missing-templates", "message": "no ja-JP reminder"}]},
     "preflight.failed"),
    ("wave.sent", {"wave": "notice", "counts": {"sent": 3, "bounced": 1}, "done": True}, "wave.finished"),
    ("wave.pause", {"wave": "reminder", "reason": "failure rate 0.3"}, "wave.paused"),
    ("flip.stage_finished", {"stage": 1, "counts": {"changed": 5}}, "flip.stage_finished"),
    ("flip.halted", {"stage": 2, "reason": "conflict rate 0.08 > 0.05"}, "flip.halted"),
    ("flip.finished", {"counts": {"changed": 50}}, "flip.finished"),
    ("campaign.done", {}, "campaign.done"),
]


# -- a receiver on loopback ------------------------------------------------------------------------------

@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that verifies each request's Standard Webhooks signature twice (the package's
    verifier and an HMAC of our own, per the specification) and answers the first requests as `script` says:
    "500", "drop" (closes the connection without an answer), "hang" (answers after `hang` seconds), then 204."""

    script: list[str] = field(default_factory=list)
    secret: str = SECRET
    hang: float = 3.0
    got: list[dict[str, Any]] = field(default_factory=list)  # verified deliveries, in the order received
    bad: int = 0  # requests whose signature did not verify
    requests: int = 0
    url: str = ""

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        with lock:
            self.requests += 1
            action = self.script.pop(0) if self.script else "ok"
        if action == "drop":
            h.close_connection = True
            h.connection.close()
            return
        if action == "hang":
            time.sleep(self.hang)
        if action == "500":
            h.send_response(500, "Internal Server Error")
            h.send_header("Content-Length", "5")
            h.end_headers()
            h.wfile.write(b"oops!")
            return
        headers = {k.lower(): v for k, v in h.headers.items()}
        entry: dict[str, Any] = {"headers": headers, "body": body}
        if "webhook-signature" in headers:
            try:
                entry["payload"] = Webhook(self.secret).verify(body, headers)
            except WebhookVerificationError:
                self.bad += 1
                h.send_response(401)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            assert independent_signature(self.secret, headers["webhook-id"], headers["webhook-timestamp"], body) \
                in headers["webhook-signature"].split(" ")
        else:
            entry["payload"] = json.loads(body)
        with lock:
            self.got.append(entry)
        h.send_response(204)
        h.end_headers()


lock = threading.Lock()


def independent_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The specification's signature, written out: base64 of HMAC-SHA256 over `id.timestamp.body`, keyed with the
    base64-decoded part of the secret after `whsec_`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            r.handle(self)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    r.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    yield r
    server.shutdown()
    server.server_close()


# -- helpers --------------------------------------------------------------------------------------------

def a_campaign(engine: Engine, slug: str = "voice-trial") -> int:
    with db.write(engine) as conn:
        return campaign_rows.insert_campaign(conn, {
            "slug": slug, "name": "Trial", "definition": "", "source": "t.toml", "template": "t", "setting": "s",
            "from_value": "a", "to_value": "b", "cutoff": dt.datetime(2031, 1, 1, tzinfo=dt.UTC), "state": "draft",
            "created_at": db.utcnow(), "created_by": "pat"})


def record_all(engine: Engine, campaign_id: int) -> None:
    for action, detail, _type in ACTIONS:
        with db.transaction(engine, "pat", action, campaign_id=campaign_id) as tx:
            tx.note(**detail)


def endpoint(url: str, **kw: Any) -> Endpoint:
    return Endpoint(kw.pop("name", "ops"), url, secret_env=kw.pop("secret_env", "TEST_WEBHOOK_SECRET"),
                    **{"timeout_seconds": 1.0, **kw})


def outbox(engine: Engine) -> list[tuple[str, dict[str, Any]]]:
    with engine.connect() as conn:
        rows = conn.execute(select(WEBHOOK_EVENT.c.type, WEBHOOK_EVENT.c.payload).order_by(WEBHOOK_EVENT.c.id))
        return [(r[0], json.loads(r[1])) for r in rows]


# -- the mapping ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("action", "detail", "expected"), [(a, d, t) for a, d, t in ACTIONS] + [
    ("wave.sent", {"wave": "notice", "counts": {}}, None),  # a send that left work for later: not finished
    ("campaign.create", {"approval_required": False}, None),
    ("campaign.replace", {"approval_required": True}, "approval.needed"),
    ("campaign.revoke_approval", {"required": True, "approved": False}, "approval.needed"),
    ("campaign.revoke_approval", {"required": True, "approved": True}, None),  # another approval stands
    ("campaign.revoke_approval", {"required": False, "approved": False}, None),
    ("import.accounts", {}, None),
])
def test_audit_actions_map_to_event_types(action: str, detail: dict[str, Any], expected: str | None) -> None:
    found = webhook_events.event_for(action, detail)
    assert (found[0] if found else None) == expected


def test_signature_matches_the_specification_test_vector() -> None:
    """The specification's published vector, through our request builder and through the independent HMAC."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, ts, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert independent_signature(secret, msg_id, str(ts), body.encode()) == expected
    due = delivery.store.Due(1, 0, None, "campaign.done", msg_id, dt.datetime.now(dt.UTC), body)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sent, headers = delivery.request(endpoint("http://127.0.0.1/"), key, due, ts)
    assert sent == body.encode()
    assert headers["webhook-signature"] == expected
    assert headers["webhook-id"] == msg_id and headers["webhook-timestamp"] == str(ts)


# -- the outbox -------------------------------------------------------------------------------------------

def test_outbox_row_commits_and_rolls_back_with_its_audit_event(engine: Engine) -> None:
    cid = a_campaign(engine)
    with pytest.raises(RuntimeError), db.transaction(engine, "pat", "wave.pause", campaign_id=cid) as tx:
        tx.note(wave="notice", reason="x")
        raise RuntimeError("the body failed")
    with db.transaction(engine, "pat", "wave.pause", campaign_id=cid, dry_run=True) as tx:
        tx.note(wave="notice", reason="dry")
    assert outbox(engine) == []
    with db.write(engine) as conn:
        audit.record(conn, "pat", "wave.pause", cid, wave="notice", reason="relay down")
        audit.record(conn, "pat", "campaign.schedule", cid)  # not a webhook event
    [(kind, payload)] = outbox(engine)
    assert kind == "wave.paused"
    assert payload["type"] == "wave.paused" and payload["timestamp"].endswith("Z")
    assert payload["data"] == {"campaign": "voice-trial", "actor": "pat", "wave": "notice", "reason": "relay down"}


# -- delivery ---------------------------------------------------------------------------------------------

def test_every_event_delivered_at_least_once_in_order_through_a_failing_receiver(
        engine: Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    cid = a_campaign(engine)
    record_all(engine, cid)
    receiver.script = ["500", "drop", "hang"]
    e = endpoint(receiver.url)
    errors: list[str | None] = []
    for _ in range(6):
        run = delivery.deliver(engine, [e], pace=QUICK)
        with engine.connect() as conn:
            errors.append(conn.execute(select(WEBHOOK_DELIVERY.c.last_error)
                                       .order_by(WEBHOOK_DELIVERY.c.event_id).limit(1)).scalar())
        if run.delivered:
            break
    assert run.delivered == len(ACTIONS) and run.failed == 0
    assert "HTTP 500" in str(errors[0]) and "oops!" in str(errors[0])
    assert "connection failed" in str(errors[1])
    assert "timeout_seconds = 1" in str(errors[2])
    assert receiver.bad == 0
    seen = [g["payload"]["type"] for g in receiver.got]
    assert seen == [t for _a, _d, t in ACTIONS]  # each once, in the order written
    ids = [g["headers"]["webhook-id"] for g in receiver.got]
    assert len(set(ids)) == len(ids)
    assert receiver.got[3]["payload"]["data"] == {"campaign": "voice-trial", "actor": "pat", "wave": "notice",
                                                 "counts": {"sent": 3, "bounced": 1}}
    with engine.connect() as conn:
        rows = conn.execute(select(WEBHOOK_DELIVERY.c.state, WEBHOOK_DELIVERY.c.attempts,
                                   WEBHOOK_DELIVERY.c.last_status).order_by(WEBHOOK_DELIVERY.c.event_id)).all()
    assert [tuple(r) for r in rows] == [("delivered", 4, 204)] + [("delivered", 1, 204)] * (len(ACTIONS) - 1)
    # Nothing more to deliver: a run now posts nothing.
    before = receiver.requests
    assert delivery.deliver(engine, [e], pace=QUICK).delivered == 0
    assert receiver.requests == before


def test_a_delivery_waits_for_its_retry_time_and_is_given_up_after_max_attempts(
        engine: Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    cid = a_campaign(engine)
    with db.write(engine) as conn:
        audit.record(conn, "pat", "campaign.done", cid)
        audit.record(conn, "pat", "wave.pause", cid, wave="notice", reason="x")
    receiver.script = ["500", "500", "500"]
    e = endpoint(receiver.url, max_attempts=2)
    first = delivery.deliver(engine, [e])  # the production pace: the next try is 30 s away
    assert (first.retrying, first.delivered) == (1, 0)
    assert delivery.deliver(engine, [e]).waiting == 1 and receiver.requests == 1
    last = delivery.deliver(engine, [e], now_too=True)  # `webhooks send --now`
    assert last.failed == 1 and last.delivered == 0  # given up; the next event then waits out the third 500
    assert delivery.deliver(engine, [e], now_too=True).delivered == 1
    assert [g["payload"]["type"] for g in receiver.got] == ["wave.paused"]
    with engine.connect() as conn:
        states = conn.execute(select(WEBHOOK_DELIVERY.c.state, WEBHOOK_DELIVERY.c.last_error)
                              .order_by(WEBHOOK_DELIVERY.c.event_id)).all()
    assert states[0][0] == "failed" and "given up after 2 attempt(s)" in states[0][1]
    assert states[1][0] == "delivered"


def test_an_event_older_than_the_endpoints_max_age_is_not_offered(
        engine: Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default an endpoint gets the last 24 hours (one added later gets no backlog of months); `max_age = "7d"`
    offers it an event of three days ago — a rehearsal in simulated time, whose scheduler runs are days apart."""
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    cid = a_campaign(engine)
    three_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    monkeypatch.setenv("CAMPAIGN_CLOCK", three_days_ago.isoformat())
    with db.write(engine) as conn:
        audit.record(conn, "pat", "campaign.done", cid)
    monkeypatch.delenv("CAMPAIGN_CLOCK")
    assert delivery.deliver(engine, [endpoint(receiver.url)]).delivered == 0
    assert delivery.deliver(engine, [endpoint(receiver.url, name="week", max_age=dt.timedelta(days=7))]
                            ).delivered == 1
    assert [g["payload"]["type"] for g in receiver.got] == ["campaign.done"]


def test_an_endpoint_gets_only_the_events_it_wants_and_slack_gets_words(
        engine: Engine, receiver: Receiver) -> None:
    cid = a_campaign(engine)
    record_all(engine, cid)
    slack = Endpoint("chat", receiver.url, events=("flip.halted", "approval.needed"), format="slack")
    run = delivery.deliver(engine, [slack], pace=QUICK)
    assert run.delivered == 2
    texts = [g["payload"]["text"] for g in receiver.got]
    assert texts[0] == ("campaign voice-trial: needs a second person's approval (definition created): "
                        "`campaign approve voice-trial`")
    assert texts[1].startswith("campaign voice-trial: the flip halted: conflict rate 0.08 > 0.05")
    assert all("webhook-signature" not in g["headers"] for g in receiver.got)


def test_a_missing_or_malformed_secret_is_refused_by_name_never_shown(
        engine: Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    cid = a_campaign(engine)
    record_all(engine, cid)
    monkeypatch.delenv("TEST_WEBHOOK_SECRET", raising=False)
    run = delivery.deliver(engine, [endpoint(receiver.url)])
    assert run.delivered == 0 and "set the environment variable TEST_WEBHOOK_SECRET" in run.problems[0]
    for bad in ("not-a-secret-at-all-but-long-enough", "whsec_" + base64.b64encode(b"short").decode(),
                "whsec_%%%%notbase64%%%%"):
        monkeypatch.setenv("TEST_WEBHOOK_SECRET", bad)
        run = delivery.deliver(engine, [endpoint(receiver.url)])
        assert "is not a Standard Webhooks secret" in run.problems[0]
        assert bad not in run.problems[0] and bad.removeprefix("whsec_") not in run.problems[0]
    assert receiver.requests == 0


# -- configuration and the command line -------------------------------------------------------------------

@pytest.mark.parametrize(("table", "message"), [
    ('url = "http://hooks.example.com/x"\nsecret_env = "S"', "campaign.toml:2: webhooks[1].url: http:// is allowed "
                                                            "only to a loopback host"),
    ('url = "https://u:p@hooks.example.com/x"\nsecret_env = "S"', "webhooks[1].url: must carry no user or password"),
    ('url = "ftp://hooks.example.com/x"\nsecret_env = "S"', "must be an https:// URL"),
    ('url = "https://hooks.example.com/x"', "campaign.toml:1: webhooks[1].secret_env: must name the environment"),
    ('url = "https://hooks.example.com/x"\nsecret_env = "S"\nevents = ["wave.finshed"]',
     "campaign.toml:4: webhooks[1].events: unknown event type(s) 'wave.finshed'"),
    ('url = "https://hooks.example.com/x"\nsecret_env = "S"\nevents = []', "must be a non-empty list"),
    ('url = "https://hooks.slack.com/services/T/B/X"\nformat = "slack"\nsecret_env = "S"',
     "webhooks[1].secret_env: goes with format = \"standard\" only"),
    ('url = "https://hooks.example.com/x"\nsecret_env = "S"\nformat = "teams"', "format: must be one of"),
    ('url = "https://hooks.example.com/x"\nsecret_env = "S"\nsecert = 1',
     "campaign.toml:4: webhooks[1].secert: unknown key (known here: name, url"),
    ('secret_env = "S"', "webhooks[1]: missing key 'url'"),
    ('url = "https://hooks.example.com/x"\nsecret_env = "S"\ntimeout_seconds = 0', "timeout_seconds: must be"),
    ('url = "https://hooks.example.com/x"\nsecret_env = "S"\nmax_age = "1y"', "campaign.toml:4: webhooks[1].max_age:"
                                                                          " must be a duration from 1m to 90d"),
    ('url = "https://hooks.example.com/x"\nsecret_env = "S"\nmax_age = "365d"', "max_age: must be a duration"),
])
def test_bad_webhooks_configuration_names_file_line_and_key(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "campaign.toml").write_text(f"[[webhooks]]\n{table}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, cwd=tmp_path)
    assert message in str(info.value)
    assert "hooks.slack.com/services/T/B/X" not in str(info.value)


def test_two_endpoints_of_one_name_are_refused(tmp_path: Path) -> None:
    one = '[[webhooks]]\nname = "ops"\nurl = "https://a.example/x"\nsecret_env = "S"\n'
    (tmp_path / "campaign.toml").write_text(one + one, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"campaign.toml:6: webhooks\[2\].name: 'ops' is the name of an earlier"):
        load_config(environ={}, cwd=tmp_path)


def test_webhooks_send_and_log_on_the_command_line(run_cli: CliRun, engine: Engine, receiver: Receiver,
                                                  workdir: Path) -> None:
    (workdir / "campaign.toml").write_text(
        f'[[webhooks]]\nname = "ops"\nurl = "{receiver.url}"\nsecret_env = "TEST_WEBHOOK_SECRET"\n'
        'events = ["wave.paused", "campaign.done"]\ntimeout_seconds = 2\n', encoding="utf-8")
    cid = a_campaign(engine)
    record_all(engine, cid)
    receiver.script = ["500"]
    env = {"TEST_WEBHOOK_SECRET": SECRET}
    first = run_cli("webhooks", "send", env=env)
    assert first.exit_code == 0, first.output
    assert "1 endpoint(s): 0 delivered, 1 to retry, 0 given up" in first.output
    shown = run_cli("webhooks", "log", env=env)
    assert "wave.paused" in shown.output and "ops: pending, next try" in shown.output
    assert "last: HTTP 500 Internal Server Error: oops!" in shown.output
    again = run_cli("webhooks", "send", "--now", "--json", env=env)
    assert json.loads(again.output)["delivered"] == 2
    log = json.loads(run_cli("webhooks", "log", "--json", env=env).output)
    assert [(d["event"], d["state"], d["attempts"], d["last_status"]) for d in log["deliveries"]] == [
        ("wave.paused", "delivered", 2, 204), ("campaign.done", "delivered", 1, 204)]
    assert log["endpoints"] == ["ops"] and log["total"] == 2
    assert SECRET not in json.dumps(log)
    missing = run_cli("webhooks", "send")
    assert missing.exit_code == 1 and "TEST_WEBHOOK_SECRET" in missing.output


def test_check_warns_of_an_endpoint_whose_secret_is_missing_or_malformed(run_cli: CliRun, engine: Engine,
                                                                         workdir: Path) -> None:
    """`campaign check` says, as a warning (the campaign goes on; that endpoint's events wait), which endpoint's
    secret is not set or not one — naming the variable, never the value."""
    (workdir / "campaign.toml").write_text(
        '[[webhooks]]\nname = "ops"\nurl = "https://hooks.example.com/x"\nsecret_env = "TEST_WEBHOOK_SECRET"\n',
        encoding="utf-8")
    definition = str(ROOT / "data" / "voice-local-processing.toml")

    def warned(env: dict[str, str]) -> list[dict[str, Any]]:
        out = json.loads(run_cli("check", definition, "--json", env=env).output)
        assert all(f["code"] != "webhook-secret" for f in out["errors"])
        return [f for f in out["warnings"] if f["code"] == "webhook-secret"]

    missing = warned({})
    assert [(f["endpoint"], f["variable"]) for f in missing] == [("ops", "TEST_WEBHOOK_SECRET")]
    assert "set the environment variable TEST_WEBHOOK_SECRET" in missing[0]["message"]
    bad = "whsec_c2hvcnQ="  # base64 of 5 bytes: not a secret
    malformed = warned({"TEST_WEBHOOK_SECRET": bad})
    assert "is not a Standard Webhooks secret" in malformed[0]["message"] and "c2hvcnQ" not in str(malformed)
    assert warned({"TEST_WEBHOOK_SECRET": SECRET}) == []


def test_webhooks_help_needs_no_database() -> None:
    result = CliRunner().invoke(cli, ["webhooks", "log", "--help"])
    assert result.exit_code == 0 and "failed (given up after max_attempts" in result.output


def test_the_scheduler_delivers_beside_its_steps(db_url: str, engine: Engine, receiver: Receiver,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    cid = a_campaign(engine)
    with db.write(engine) as conn:
        audit.record(conn, "pat", "campaign.done", cid)
    (tmp_path / "campaign.toml").write_text(
        f'[[webhooks]]\nurl = "{receiver.url}"\nsecret_env = "TEST_WEBHOOK_SECRET"\n', encoding="utf-8")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CAMPAIGN_")}
    env.update({"CAMPAIGN_DATABASE_URL": db_url, "TEST_WEBHOOK_SECRET": SECRET,
                "CAMPAIGN_TEMPLATES": str(ROOT / "templates")})
    done = subprocess.run([sys.executable, "-m", "campaign", "scheduler", "run", "--once"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [g["payload"]["type"] for g in receiver.got] == ["campaign.done"]
    assert "webhooks: 1 endpoint(s): 1 delivered" in done.stderr
    assert receiver.url.rstrip("/") not in done.stderr  # no HTTP client's request line: a URL can be a secret
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(WEBHOOK_DELIVERY)
                            .where(WEBHOOK_DELIVERY.c.state == "delivered")).scalar_one() == 1


def test_a_wave_finishes_once_it_is_done(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path],
                                         tmp_path: Path) -> None:
    """A real send: `wave.finished` once the wave is done, with its counts; not for a send that leaves deliveries
    waiting for their send window."""
    text = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    text = text.replace('cutoff = "2025-03-28T00:00:00-07:00"', 'cutoff = "2031-03-28T00:00:00-07:00"')
    text = text.replace("required = true", "required = false")
    (tmp_path / "def.toml").write_text(text, encoding="utf-8")
    clock = {"CAMPAIGN_CLOCK": "2031-03-14T10:00:00Z", "CAMPAIGN_BOUNCE_KEY": "k" * 40}
    accounts = ("account_id,email,name,locale,timezone,country\n"
                "a1,one@example.com,One,en-US,Pacific/Kiritimati,US\n")
    devices = "device_id,account_id,name,model,voice_recordings\nd1,a1,Kitchen,Echo Show 10,do_not_send\n"
    assert run_cli("import", "accounts", str(write_file("a.csv", accounts)), env=clock).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", devices)), env=clock).exit_code == 0
    assert run_cli("create", str(tmp_path / "def.toml"), env=clock).exit_code == 0
    waiting = run_cli("send", "voice-local-processing", "--wave", "notice", env=clock)  # midnight in Kiritimati
    assert waiting.exit_code == 0, waiting.output
    assert [t for t, _p in outbox(engine)] == []
    sent = run_cli("send", "voice-local-processing", "--wave", "notice", "--ignore-window", env=clock)
    assert sent.exit_code == 0, sent.output
    [(kind, payload)] = outbox(engine)
    assert kind == "wave.finished"
    assert payload["data"]["wave"] == "notice" and payload["data"]["counts"]["sent"] == 1
