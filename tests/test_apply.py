"""The flip and the rollback through the settings service (`[apply] kind = "http"`, G14), on SQLite and PostgreSQL,
against a real HTTP settings service on loopback (tests/settingsd.py): every change is recorded here before it
is sent; a 503, a hang past the timeout and a refused connection are tried again under the same Idempotency-Key;
a 4xx pauses the flip with its reason until it is run again; a conflict leaves the device and takes the service's
value into the local copy; a device counts as switched only once the service applied it; `kill -9` in the
middle of an apply, then a re-run, leaves every device applied exactly once at the service. And whatever the
service does: a token it echoes is shown and stored nowhere; an answer outside the contract (an unknown status,
`applied` with another value, a value no setting may hold) pauses the batch with nothing of it stored; no proxy
from the environment is used; a dripping or endless answer ends within `timeout_seconds` and 16 MiB."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from campaign.cutoff import apply, flip
from campaign.definition import parse_definition
from campaign.errors import ConfigError, InputError
from campaign.validation import setting_value_problem
from tests.conftest import ROOT, CliRun, table_counts
from tests.settingsd import TOKEN, SettingsService, settingsd  # noqa: F401  (the fixture)
from tests.test_flip import FROM, OTHERS, SLUG, TO, accounts_csv, changes, definition, devices_csv, settings

N = 40
SETTING = "voice_recordings"
AFTER = dt.datetime(2025, 3, 28, 7, 5, tzinfo=dt.UTC)
FAST = apply.Retry(attempts=4, base=0.01, cap=0.05)  # in-process runs: retries without the real waits
QUICK = flip.Service(retry=FAST, sleep=lambda _s: None)


def apply_section(url: str, batch: int = 16, timeout: float = 5.0, extra: str = "") -> str:
    return f'\n[apply]\nkind = "http"\nurl = "{url}"\nbatch = {batch}\ntimeout_seconds = {timeout}\n{extra}'


@pytest.fixture
def setup(run_cli: CliRun, write_file: Callable[..., Path], tmp_path: Path,
          settingsd: SettingsService) -> Callable[..., None]:  # noqa: F811
    """Accounts, devices and the campaign (require_notice = false) applied through `settingsd`, which holds the
    same devices with the same values (the local copy is a copy of it)."""

    def make(n: int = N, batch: int = 16, timeout: float = 5.0, url: str | None = None) -> None:
        assert run_cli("import", "accounts", str(write_file("a.csv", accounts_csv(n)))).exit_code == 0
        assert run_cli("import", "devices", str(write_file("d.csv", devices_csv(n, OTHERS)))).exit_code == 0
        path = definition(tmp_path, "require_notice = false")
        path.write_text(path.read_text(encoding="utf-8") + apply_section(url or settingsd.url, batch, timeout),
                        encoding="utf-8")
        result = run_cli("create", str(path))
        assert result.exit_code == 0, result.output
        for i in range(n):
            settingsd.hold(f"d{i:05d}", SETTING, FROM)
        settingsd.hold("x00001", SETTING, "save_all")

    return make


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CAMPAIGN_APPLY_TOKEN", TOKEN)
    return TOKEN


def devices(n: int = N) -> list[str]:
    return [f"d{i:05d}" for i in range(n)]


def audit_text(engine: Engine) -> str:
    with engine.connect() as conn:
        return "\n".join(r[0] for r in conn.execute(text("SELECT detail FROM audit_event")))


def batches(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM apply_batch ORDER BY id")).mappings()]


def test_happy_path(run_cli: CliRun, engine: Engine, setup: Callable[..., None], settingsd: SettingsService,  # noqa: F811
                    db_url: str) -> None:
    setup()
    env = {"CAMPAIGN_APPLY_TOKEN": TOKEN}
    # The dry run says what would go, sends nothing and writes nothing.
    before = table_counts(engine)
    dry = run_cli("flip", SLUG, "--before-cutoff", "--dry-run", "--json", env=env)
    assert dry.exit_code == 0, dry.output
    would = json.loads(dry.stdout)
    # one transaction (--batch-size 5000) of three requests ([apply] batch = 16)
    assert (would["changed"], would["apply"]["sent"], would["apply"]["batches"], would["batches"]) == (N, N, 3, 1)
    assert would["apply"]["waiting"] == N and would["total_changed"] == 0
    assert settingsd.requests == [] and table_counts(engine) == before
    text_dry = run_cli("flip", SLUG, "--before-cutoff", "--dry-run")  # no token needed to look
    assert text_dry.exit_code == 0 and f"would send {N} change(s) to the settings service in 3 batch(es)" in \
        text_dry.output

    result = run_cli("flip", SLUG, "--before-cutoff", "--json", env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["changed"], out["total_changed"], out["batches"]) == (N, N, 1)
    a = out["apply"]
    assert (a["sent"], a["batches"], a["applied"], a["left"], a["unknown_device"], a["retries"], a["waiting"],
            a["paused"]) == (N, 3, N, 0, 0, 0, 0, None)
    # The service got three batches of the contract: each with its own key, the token, JSON, every change once.
    assert [r.answered for r in settingsd.requests] == ["200"] * 3
    assert all(r.authorization_ok and r.content_type == "application/json" for r in settingsd.requests)
    keys = settingsd.keys()
    assert len(set(keys)) == 3 and all(k and k.startswith(f"{SLUG}:flip:") for k in keys)
    body = settingsd.bodies[0]
    assert body["campaign"] == SLUG and body["operation"] == "flip" and len(body["changes"]) == 16
    rows = changes(engine)
    first = body["changes"][0]
    assert first == {"change_id": str(rows["d00000"]["id"]), "device_id": "d00000", "setting": SETTING,
                     "expect": FROM, "value": TO}
    assert sorted(settingsd.applications.values()) == [1] * N
    assert all(settingsd.value(d, SETTING) == TO for d in devices())
    assert settingsd.value("x00001", SETTING) == "save_all"  # never sent: not affected
    # Here: every change row `changed`, the local copy switched and pointing at its change, the batches done.
    now = settings(engine)
    assert all(r["state"] == "changed" and r["flipped_at"] is not None and now[d] == (TO, r["id"])
               for d, r in rows.items())
    assert [(b["state"], b["changes"], b["attempts"]) for b in batches(engine)] == [("done", 16, 1), ("done", 16, 1),
                                                                                    ("done", 8, 1)]
    status = json.loads(run_cli("status", SLUG, "--json").stdout)
    assert status["flip"] == {"changed": N, "held_back": 0, "rolled_back": 0, "left": 0}
    assert status["flip_detail"]["apply"] == {
        "kind": "http", "url": settingsd.url, "applied": N, "waiting": 0, "undoing": 0, "unknown_device": 0,
        "batches_waiting": 0, "paused": None, "last_error": None}
    assert f"apply          {settingsd.url}: applied {N}, waiting 0" in run_cli("status", SLUG).output
    # A second run sends nothing. The token was never printed nor stored.
    again = json.loads(run_cli("flip", SLUG, "--json", env=env).stdout)
    assert (again["changed"], again["apply"]["sent"], len(settingsd.requests)) == (0, 0, 3)
    assert TOKEN not in result.output + dry.output + audit_text(engine)
    if db_url.startswith("sqlite:///"):
        assert TOKEN.encode() not in Path(db_url.removeprefix("sqlite:///")).read_bytes()


def test_503_then_success_under_the_same_key(engine: Engine, setup: Callable[..., None],
                                             settingsd: SettingsService, token: str) -> None:  # noqa: F811
    setup()
    settingsd.script("503", "503")
    waits: list[float] = []
    result = flip.flip(engine, SLUG, "ops", now=AFTER, service=flip.Service(retry=FAST, sleep=waits.append))
    assert result.apply is not None
    assert (result.changed, result.apply["retries"], result.apply["batches"]) == (N, 2, 3)
    assert [r.answered for r in settingsd.requests] == ["503", "503", "200", "200", "200"]
    keys = settingsd.keys()
    assert keys[0] == keys[1] == keys[2] and len(set(keys)) == 3  # the same batch went again under its key
    assert settingsd.bodies[0] == settingsd.bodies[2]
    assert len(waits) == 2 and waits[1] > waits[0] > 0  # backoff
    assert sorted(settingsd.applications.values()) == [1] * N
    assert batches(engine)[0]["attempts"] == 3


def test_hang_past_the_timeout_then_retry(engine: Engine, setup: Callable[..., None],
                                          settingsd: SettingsService, token: str) -> None:  # noqa: F811
    setup(timeout=0.5)
    # The first batch is applied at the service, but its answer never comes: the retry must not apply it again.
    settingsd.script("apply_then_hang", "hang")
    started = time.monotonic()
    result = flip.flip(engine, SLUG, "ops", now=AFTER, service=QUICK)
    assert time.monotonic() - started >= 1.0  # two timeouts of 0.5 s
    assert result.apply is not None and result.apply["retries"] == 2 and result.changed == N
    assert [r.answered for r in settingsd.requests][:3] == ["apply_then_hang", "hang", "200 replay"]
    assert settingsd.keys()[0] == settingsd.keys()[1] == settingsd.keys()[2]
    assert sorted(settingsd.applications.values()) == [1] * N
    assert all(r["state"] == "changed" for r in changes(engine).values())


def test_refused_connection_is_retried_then_waits_for_the_next_run(
        engine: Engine, setup: Callable[..., None], settingsd: SettingsService, token: str,  # noqa: F811
        run_cli: CliRun) -> None:
    # A port nothing listens on: every try is refused; the run stops, the first batch waits, recorded.
    probe = SettingsService().start()
    dead = probe.url
    probe.stop()
    setup(url=dead)
    waits: list[float] = []
    result = flip.flip(engine, SLUG, "ops", now=AFTER, service=flip.Service(retry=FAST, sleep=waits.append))
    assert result.apply is not None and result.changed == 0 and len(waits) == FAST.attempts - 1
    assert result.apply["unavailable"] and "connection failed" in result.apply["unavailable"]
    assert result.apply["waiting"] == N and result.apply["paused"] is None  # the transaction's three requests
    rows = changes(engine)
    assert sorted(d for d, r in rows.items() if r["state"] == "applying") == devices()
    assert all(settings(engine)[d] == (FROM, None) for d in devices())  # nothing counts as switched
    first, *rest = batches(engine)
    assert (first["state"], first["attempts"]) == ("waiting", FAST.attempts)
    assert "connection failed" in str(first["error"])
    assert [(b["state"], b["attempts"]) for b in rest] == [("waiting", 0)] * 2  # recorded, never sent
    status = json.loads(run_cli("status", SLUG, "--json").stdout)["flip_detail"]["apply"]
    assert (status["waiting"], status["batches_waiting"], status["applied"]) == (N, 3, 0)
    assert "connection failed" in status["last_error"]


def test_conflict_leaves_the_device_and_unknown_device_is_reported(
        run_cli: CliRun, engine: Engine, setup: Callable[..., None], settingsd: SettingsService) -> None:  # noqa: F811
    setup()
    settingsd.hold("d00003", SETTING, "save_all")  # its owner changed it at the service; our copy does not know
    del settingsd.devices["d00005"]  # the service does not know this one
    result = run_cli("flip", SLUG, "--before-cutoff", env={"CAMPAIGN_APPLY_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert f"applied {N - 2}, left 1, unknown device 1; {N - 2} switched in all" in result.output
    assert "d00003  account a00003  left: the settings service holds 'save_all'" in result.output
    assert "unknown to the settings service: 1 device(s)" in result.output and "d00005" in result.output
    rows = changes(engine)
    now = settings(engine)
    assert rows["d00003"]["state"] == "left" and "save_all" in str(rows["d00003"]["note"])
    assert rows["d00003"]["flipped_at"] is None
    assert now["d00003"] == ("save_all", None)  # the local copy takes the service's value, as the person's own
    assert rows["d00005"]["state"] == "unknown" and now["d00005"] == (FROM, None)
    assert settingsd.value("d00003", SETTING) == "save_all"  # left alone there
    assert sum(1 for r in rows.values() if r["state"] == "changed") == N - 2
    status = json.loads(run_cli("status", SLUG, "--json").stdout)
    assert status["flip"] == {"changed": N - 2, "held_back": 0, "rolled_back": 0, "left": 1}
    assert status["flip_detail"]["apply"]["unknown_device"] == 1
    # The report shows each device's state; one person's story says why.
    report = [json.loads(line) for line in run_cli("report", SLUG, "--format", "jsonl").stdout.splitlines()]
    states = {d["device_id"]: d["state"] for r in report for d in r["devices"]}
    assert states["d00003"] == "left" and states["d00005"] == "unknown" and states["d00000"] == "changed"
    story = run_cli("report", SLUG, "--account", "a00005").output
    assert "the settings service does not know this device" in story
    story = run_cli("report", SLUG, "--account", "a00003").output
    assert "not switched: left: the settings service holds 'save_all'" in story
    # A second run sends neither again.
    again = json.loads(run_cli("flip", SLUG, "--json", env={"CAMPAIGN_APPLY_TOKEN": TOKEN}).stdout)
    assert again["apply"]["sent"] == 0 and len(settingsd.requests) == 3


def test_4xx_pauses_the_flip_with_its_reason_until_run_again(
        run_cli: CliRun, engine: Engine, setup: Callable[..., None], settingsd: SettingsService) -> None:  # noqa: F811
    setup()
    # No token: refused before anything is recorded or sent.
    missing = run_cli("flip", SLUG, "--before-cutoff", env={"CAMPAIGN_APPLY_TOKEN": ""})
    assert missing.exit_code == 2 and "CAMPAIGN_APPLY_TOKEN" in missing.stderr
    assert changes(engine) == {} and settingsd.requests == []
    # A wrong token: the service answers 401 for the whole batch; the flip pauses with the reason.
    wrong = "not-the-token-42"
    paused = run_cli("flip", SLUG, "--before-cutoff", env={"CAMPAIGN_APPLY_TOKEN": wrong})
    assert paused.exit_code == 1
    assert "paused" in paused.stderr and "HTTP 401" in paused.stderr
    assert "the bearer token is not valid for this service" in paused.stderr
    assert f"{N} change(s) wait for the settings service" in paused.stderr
    assert "run `campaign flip voice-local-processing` again" in paused.stderr
    assert [r.answered for r in settingsd.requests] == ["401"]  # not retried: a person must look
    rows = changes(engine)
    assert sorted(d for d, r in rows.items() if r["state"] == "applying") == devices()
    assert all(r["flipped_at"] is None for r in rows.values())
    assert all(settings(engine)[d] == (FROM, None) for d in devices())
    assert [b["state"] for b in batches(engine)] == ["paused", "waiting", "waiting"]
    assert "HTTP 401" in str(batches(engine)[0]["error"])
    status = run_cli("status", SLUG, "--json")
    a = json.loads(status.stdout)["flip_detail"]["apply"]
    assert (a["waiting"], a["applied"]) == (N, 0) and "HTTP 401" in a["paused"]
    assert "paused: the settings service refused batch" in run_cli("status", SLUG).output
    story = run_cli("report", SLUG, "--account", "a00000").output
    assert "waits for the settings service to apply it" in story
    assert wrong not in paused.output + paused.stderr + audit_text(engine)
    # Fixed: the next run sends the paused batch again under its key, then the rest.
    resumed = run_cli("flip", SLUG, "--json", env={"CAMPAIGN_APPLY_TOKEN": TOKEN})
    assert resumed.exit_code == 0, resumed.output
    out = json.loads(resumed.stdout)
    assert (out["changed"], out["apply"]["resent_batches"], out["apply"]["waiting"]) == (N, 3, 0)
    assert settingsd.keys()[1] == settingsd.keys()[0]
    assert sorted(settingsd.applications.values()) == [1] * N
    assert all(r["state"] == "changed" for r in changes(engine).values())


def test_a_service_echoing_the_token_leaks_it_nowhere(
        run_cli: CliRun, engine: Engine, setup: Callable[..., None], settingsd: SettingsService,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """G11: a 401 and 503s whose reason phrase (and body) carry the bearer token, a result whose status is the token,
    a conflict whose value is: neither the CLI's output (for the 503s, the result it prints) nor any table nor
    `status`, `log` or the HTML report holds it."""
    setup()
    env = {"CAMPAIGN_APPLY_TOKEN": TOKEN}
    said: list[str] = []
    settingsd.script("401 echo")
    refused = run_cli("flip", SLUG, "--before-cutoff", env=env)
    assert refused.exit_code == 1 and "HTTP 401 Scripted 401 for Bearer ***" in refused.stderr
    said.append(refused.stdout + refused.stderr)
    # The production policy's 8 tries, without its waits: in-process, the policy passed in.
    settingsd.script(*["503 echo"] * apply.Retry().attempts)
    monkeypatch.setenv("CAMPAIGN_APPLY_TOKEN", TOKEN)
    unavailable = flip.flip(engine, SLUG, "tester", service=flip.Service(sleep=lambda _s: None))
    assert unavailable.apply is not None
    assert "HTTP 503 Scripted 503 for Bearer ***" in (unavailable.apply["unavailable"] or "")
    said.append(json.dumps(unavailable.as_json()))
    settingsd.script("status echo")
    outside = run_cli("flip", SLUG, env=env)
    assert outside.exit_code == 1
    assert "a result's status is none of applied, conflict, unknown_device" in outside.stderr
    said.append(outside.stdout + outside.stderr)
    # A conflict whose value is the token (the service forgot its answer, and took the token for a value).
    settingsd.answers.clear()
    settingsd.hold("d00000", SETTING, f"Bearer {TOKEN}")
    value = run_cli("flip", SLUG, env=env)
    assert value.exit_code == 1 and "the value the settings service reports holds a secret" in value.stderr
    said.append(value.stdout + value.stderr)
    assert [r.answered for r in settingsd.requests] == ["401 echo"] + ["503 echo"] * 8 + ["200 status echo", "200"]
    assert all(r.key == settingsd.requests[0].key for r in settingsd.requests)  # the first batch, each time
    assert [b["state"] for b in batches(engine)] == ["paused", "waiting", "waiting"]
    report = tmp_path / "report.html"
    for args in (("status", SLUG), ("status", SLUG, "--json"), ("log", SLUG), ("log", SLUG, "--json"),
                 ("report", SLUG, "--format", "html", "--out", str(report)),
                 ("report", SLUG, "--account", "a00000")):
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
        said.append(result.stdout + result.stderr)
    assert "holds a secret" in said[4] and "Scripted 503 for Bearer ***" in said[6]
    shown = "".join(said) + report.read_text(encoding="utf-8")
    assert TOKEN not in shown
    assert TOKEN not in json.dumps(table_counts(engine))  # every column of every table


JUNK = "EVIL\r\n" + 300 * "z"


@pytest.mark.parametrize("how", ["applied with junk", "applied with another value", "conflict with junk"])
def test_a_value_outside_the_rule_pauses_the_batch_and_is_stored_nowhere(
        engine: Engine, setup: Callable[..., None], settingsd: SettingsService, token: str,  # noqa: F811
        how: str) -> None:
    """A device counts as switched only when the service holds the value asked for; any value it reports must be
    one a setting may hold. Otherwise the batch pauses, nothing of it is settled, and the value is not kept."""
    setup()
    if how == "applied with junk":
        settingsd.script("value " + JUNK)
    elif how == "applied with another value":
        settingsd.script("value save_all")
    else:
        settingsd.hold("d00003", SETTING, JUNK)  # a conflict that reports it
    result = flip.flip(engine, SLUG, "ops", now=AFTER, service=QUICK)
    assert result.apply is not None and result.changed == 0 and result.apply["applied"] == 0
    paused = str(result.apply["paused"])
    assert "the settings service refused batch" in paused
    if how == "applied with another value":
        assert "reports another value than 'dont_save'" in paused and "save_all" not in paused
    else:
        assert "is not a setting value" in paused
    assert [r.answered.split(" ")[0] for r in settingsd.requests] == ["200"]  # not retried: a person must look
    rows = changes(engine)
    assert sorted(d for d, r in rows.items() if r["state"] == "applying") == devices()
    assert all(settings(engine)[d] == (FROM, None) for d in devices())  # nobody counts as switched
    assert [b["state"] for b in batches(engine)] == ["paused", "waiting", "waiting"]
    assert "EVIL" not in json.dumps(table_counts(engine)) and "zzzz" not in json.dumps(table_counts(engine))


def test_a_dripping_answer_is_cut_at_timeout_seconds_then_tried_again(
        engine: Engine, setup: Callable[..., None], settingsd: SettingsService, token: str) -> None:  # noqa: F811
    """A service that sends its answer a byte a second does not hold the flip: the try ends after timeout_seconds
    (the whole exchange), and the batch goes again under its key."""
    setup(timeout=2)
    settingsd.script("drip")
    started = time.monotonic()
    result = flip.flip(engine, SLUG, "ops", now=AFTER, service=QUICK)
    took = time.monotonic() - started
    assert result.apply is not None and (result.changed, result.apply["retries"]) == (N, 1)
    assert 2 <= took < 6, took
    assert [r.answered for r in settingsd.requests] == ["drip", "200 replay", "200", "200"]
    assert settingsd.keys()[0] == settingsd.keys()[1]
    assert sorted(settingsd.applications.values()) == [1] * N


class Listener:
    """A loopback port that records whether anyone connected, and the first bytes each sent (then hangs up):
    a stand-in proxy."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.settimeout(0.05)  # to see `_done` soon: closing a socket does not end an accept() under way
        self.received: list[bytes] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._done.is_set():
            try:
                conn, _addr = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                got = b""
                try:
                    while b"\r\n\r\n" not in got and len(got) < 65536:
                        more = conn.recv(65536)
                        if not more:
                            break
                        got += more
                except OSError:
                    pass
                self.received.append(got)

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def no_proxy_excluded(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_proxies_from_the_environment_are_not_used(
        engine: Engine, setup: Callable[..., None], settingsd: SettingsService, token: str,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, no_proxy_excluded: None) -> None:
    """HTTP_PROXY, HTTPS_PROXY and ALL_PROXY would carry the request, bearer token included, to whoever listens
    there: the flip goes straight to the service."""
    setup()
    with Listener() as proxy:
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(var, proxy.url)
        result = flip.flip(engine, SLUG, "ops", now=AFTER, service=QUICK)
    assert proxy.received == []
    assert result.apply is not None and (result.changed, result.apply["retries"]) == (N, 0)
    assert [r.answered for r in settingsd.requests] == ["200"] * 3


def test_rollback_through_the_service(run_cli: CliRun, engine: Engine, setup: Callable[..., None],
                                      settingsd: SettingsService, write_file: Callable[..., Path]) -> None:  # noqa: F811
    setup()
    env = {"CAMPAIGN_APPLY_TOKEN": TOKEN}
    assert run_cli("flip", SLUG, "--before-cutoff", env=env).exit_code == 0
    # d00001: its owner changed it, and our copy knows (an import); d00002: changed at the service only.
    header = "device_id,account_id,name,model,voice_recordings\n"
    assert run_cli("import", "devices", str(write_file("o.csv", header + "d00001,a00001,Room 1,Echo Show 10,"
                                                       "save_all\n"))).exit_code == 0
    settingsd.hold("d00001", SETTING, "save_all")
    settingsd.hold("d00002", SETTING, "save_all")
    before = table_counts(engine)
    dry = run_cli("rollback", SLUG, "--dry-run", "--json", env=env)
    assert dry.exit_code == 0, dry.output
    would = json.loads(dry.stdout)
    assert (would["rolled_back"], would["left"], would["apply"]["sent"]) == (N - 1, 1, N - 1)
    assert table_counts(engine) == before and len(settingsd.requests) == 3
    result = run_cli("rollback", SLUG, "--json", env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["rolled_back"], out["left"], out["total_rolled_back"], out["total_left"]) == (N - 2, 2, N - 2, 2)
    assert sorted(r["device_id"] for r in out["left_devices"]) == ["d00001", "d00002"]
    sent = [c for b in settingsd.bodies[3:] for c in b["changes"]]
    assert all(b["operation"] == "rollback" for b in settingsd.bodies[3:])
    assert "d00001" not in {c["device_id"] for c in sent}  # known here as the person's: never sent
    rows = changes(engine)
    assert {c["change_id"] for c in sent} == {f"{r['id']}-rollback" for d, r in rows.items() if d != "d00001"}
    assert all((c["expect"], c["value"]) == (TO, FROM) for c in sent)
    # The service applied each rollback once; the person's value stays there and here.
    rollbacks = {k: v for k, v in settingsd.applications.items() if k.endswith("-rollback")}
    assert sorted(rollbacks.values()) == [1] * (N - 2)
    assert settingsd.value("d00002", SETTING) == "save_all" and settingsd.value("d00000", SETTING) == FROM
    now = settings(engine)
    assert rows["d00002"]["state"] == "left" and now["d00002"] == ("save_all", None)
    assert rows["d00001"]["state"] == "left" and now["d00001"] == ("save_all", None)
    for d in devices():
        if d not in ("d00001", "d00002"):
            assert rows[d]["state"] == "rolled_back" and rows[d]["rolled_back_at"] is not None
            assert now[d][0] == FROM
    assert run_cli("flip", SLUG, env=env).exit_code == 1  # refuses after a rollback
    again = json.loads(run_cli("rollback", SLUG, "--json", env=env).stdout)
    assert (again["rolled_back"], again["apply"]["sent"]) == (0, 0)


def test_rollback_settles_the_flips_waiting_batches_first(
        engine: Engine, setup: Callable[..., None], settingsd: SettingsService, token: str) -> None:  # noqa: F811
    setup()
    settingsd.script("401")
    paused = flip.flip(engine, SLUG, "ops", now=AFTER, service=QUICK)
    assert paused.apply is not None and paused.apply["paused"] and paused.apply["waiting"] == N
    # The rollback asks the service about the flip's batches first (applied now), then rolls all back.
    result = flip.rollback(engine, SLUG, "ops", now=AFTER, service=QUICK)
    assert result.apply is not None and result.apply["resent_batches"] == 3
    assert (result.rolled_back, result.left) == (N, 0)
    assert settingsd.keys()[1] == settingsd.keys()[0]
    assert all(settingsd.value(d, SETTING) == FROM for d in devices())
    rows = changes(engine)
    assert sorted(d for d, r in rows.items() if r["state"] == "rolled_back") == devices()
    assert all(r["state"] != "applying" for r in rows.values())


def test_kill_9_in_the_middle_of_an_apply_then_again_applied_once(
        engine: Engine, db_url: str, setup: Callable[..., None], settingsd: SettingsService,  # noqa: F811
        tmp_path: Path) -> None:
    n = 1200
    setup(n=n, batch=100)
    # The 5th batch is applied at the service, and its answer never leaves it: the flip is killed waiting for it.
    settingsd.script("serve", "serve", "serve", "serve", "apply_then_hang")
    engine.dispose()
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_ACTOR": "ops",
           "CAMPAIGN_TEMPLATES": str(ROOT / "templates"), "CAMPAIGN_APPLY_TOKEN": TOKEN}
    # transactions of 300 devices: three requests of 100 each
    cmd = [sys.executable, "-m", "campaign", "flip", SLUG, "--before-cutoff", "--batch-size", "300", "--json"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and len(settingsd.requests) < 5:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err
    assert [r.answered for r in settingsd.requests] == ["200"] * 4 + ["apply_then_hang"]
    assert sum(settingsd.applications.values()) == 500  # the service applied five batches
    rows = changes(engine)
    # Here only four are known as applied; the fifth (sent) and the sixth (recorded in the same transaction,
    # never sent) wait; nothing else was decided.
    assert sum(1 for r in rows.values() if r["state"] == "changed") == 400
    assert sum(1 for r in rows.values() if r["state"] == "applying") == 200
    assert len(rows) == 600
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert (out["changed"], out["total_changed"], out["apply"]["resent_batches"]) == (n - 400, n, 2)
    assert settingsd.requests[5].key == settingsd.requests[4].key and settingsd.requests[5].answered == "200 replay"
    # Every device applied exactly once at the service; every change row `changed`; every local copy switched.
    assert len(settingsd.applications) == n and set(settingsd.applications.values()) == {1}
    assert set(settingsd.device_applications.values()) == {1} and len(settingsd.device_applications) == n
    rows = changes(engine)
    now = settings(engine)
    assert len(rows) == n and all(r["state"] == "changed" and now[d] == (TO, r["id"]) for d, r in rows.items())


# -- the definition's [apply] -------------------------------------------------------------------------------

def _definition(extra: str) -> str:
    return (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8") + extra


def test_apply_section_parses_with_defaults() -> None:
    d = parse_definition(_definition('\n[apply]\nkind = "http"\nurl = "https://settings.internal.example/v1/x"\n'))
    assert (d.apply.kind, d.apply.url, d.apply.batch, d.apply.token_env, d.apply.timeout_seconds) == (
        "http", "https://settings.internal.example/v1/x", 500, "CAMPAIGN_APPLY_TOKEN", 10.0)
    assert parse_definition(_definition("")).apply.kind == "local"
    assert d.apply.proxy is None
    proxied = '\n[apply]\nkind = "http"\nurl = "https://s.example/x"\nproxy = "http://proxy.internal:3128"\n'
    assert parse_definition(_definition(proxied)).apply.proxy == "http://proxy.internal:3128"
    for url in ("http://127.0.0.1:8080/x", "http://[::1]/x", "http://localhost/x", "http://127.0.0.2/x"):
        assert parse_definition(_definition(f'\n[apply]\nkind = "http"\nurl = "{url}"\n')).apply.url == url


@pytest.mark.parametrize(("extra", "key", "message"), [
    ('kind = "http"\nurl = "http://settings.example/x"', "url", "http:// is allowed only to a loopback host"),
    ('kind = "http"\nurl = "http://10.0.0.1/x"', "url", "http:// is allowed only to a loopback host"),
    ('kind = "http"\nurl = "ftp://127.0.0.1/x"', "url", "must be an https:// URL"),
    ('kind = "http"\nurl = "https://u:pw@settings.example/x"', "url", "no user or password"),
    ('kind = "http"', "kind", "needs `url`"),
    ('kind = "http"\nurl = "https://s.example/x"\nbatch = 0', "batch", "between 1 and 10000"),
    ('kind = "http"\nurl = "https://s.example/x"\ntimeout_seconds = 0', "timeout_seconds", "above 0"),
    ('kind = "http"\nurl = "https://s.example/x"\ntoken_env = "my token"', "token_env", "environment variable"),
    ('kind = "http"\nurl = "https://s.example/x"\ntoken = "abc"', "token", "unknown key"),
    ('kind = "carrier-pigeon"', "kind", "is not a kind"),
    ('url = "https://s.example/x"', "url", 'goes with kind = "http"'),
    ('proxy = "http://proxy.internal:3128"', "proxy", 'goes with kind = "http"'),
    ('kind = "http"\nurl = "http://127.0.0.1:8080/x"\nproxy = "http://proxy.internal:3128"', "proxy",
     "goes only with an https:// url"),
    ('kind = "http"\nurl = "https://s.example/x"\nproxy = "socks5://proxy.internal:1080"', "proxy",
     "must be an http:// or https:// proxy URL"),
    ('kind = "http"\nurl = "https://s.example/x"\nproxy = "http://u:pw@proxy.internal:3128"', "proxy",
     "no user or password"),
    ('kind = "http"\nurl = "https://s.example/x"\nproxy = "http://proxy.internal:3128/x"', "proxy",
     "without a path"),
])
def test_apply_section_errors_name_file_and_line(extra: str, key: str, message: str) -> None:
    text_ = _definition("\n[apply]\n" + extra + "\n")
    with pytest.raises(InputError) as info:
        parse_definition(text_, "def.toml")
    line = next(n for n, ln in enumerate(text_.splitlines(), 1) if ln.startswith(f"{key} ="))
    assert f"def.toml:{line}: apply.{key}: " in str(info.value) and message in str(info.value)


def test_token_comes_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    d = parse_definition(_definition('\n[apply]\nkind = "http"\nurl = "https://s.example/x"\ntoken_env = "MY_TOK"\n'))
    monkeypatch.delenv("MY_TOK", raising=False)
    with pytest.raises(ConfigError, match="set the environment variable MY_TOK"):
        apply.token_from_env(d.apply)
    monkeypatch.setenv("MY_TOK", "xyz")
    assert apply.token_from_env(d.apply) == "xyz"


def test_answers_outside_the_contract_are_refused(settingsd: SettingsService) -> None:  # noqa: F811
    """The client checks the answer: one result per change sent, known statuses, a value for a conflict."""
    a = parse_definition(_definition(apply_section(settingsd.url))).apply
    svc = apply.HttpSettingsService(a, SLUG, TOKEN)
    changes_ = [apply.Change("1", "d1", SETTING, FROM, TO), apply.Change("2", "d2", SETTING, FROM, TO)]
    settingsd.hold("d1", SETTING, FROM)
    with svc:
        answers = svc.send("k1", "flip", changes_)
        assert answers == {"1": apply.Answer("applied", TO), "2": apply.Answer("unknown_device", None)}
        one = {"results": [{"change_id": "1", "status": "applied", "value": TO}]}
        settingsd.answers["k2"] = json.dumps(one).encode()
        with pytest.raises(apply.Refused, match="no result for 1 change"):
            svc.send("k2", "flip", changes_)
        settingsd.answers["k3"] = json.dumps({"results": [{"change_id": "1", "status": "done"},
                                                           {"change_id": "2", "status": "applied"}]}).encode()
        with pytest.raises(apply.Refused, match=r"change '1': a result's status is none of applied, conflict, "
                                                r"unknown_device$"):
            svc.send("k3", "flip", changes_)
        # A change_id that is not a string (a list: unhashable), and a body nested beyond the parser: refused too.
        settingsd.answers["k5"] = json.dumps({"results": [{"change_id": ["1"], "status": "applied"}]}).encode()
        with pytest.raises(apply.Refused, match="a result for a change this batch does not hold"):
            svc.send("k5", "flip", changes_)
        settingsd.answers["k6"] = b"[" * 200_000 + b"]" * 200_000
        with pytest.raises(apply.Refused, match="not JSON"):
            svc.send("k6", "flip", changes_)
        settingsd.script("503")
        with pytest.raises(apply.Transient, match="HTTP 503"):
            svc.send("k4", "flip", changes_)
        settingsd.script("429")
        with pytest.raises(apply.Transient, match="HTTP 429"):
            svc.send("k4", "flip", changes_)
        settingsd.script("404")
        with pytest.raises(apply.Refused, match="HTTP 404"):
            svc.send("k4", "flip", changes_)


@pytest.mark.parametrize("junk", [JUNK, "a\u2028b", "a\u2029b", "a\x00b", "a\x1bb", "a\x85b", "\ud800", "x" * 129,
                                  " ", ""])
def test_a_reported_value_must_be_a_setting_value(settingsd: SettingsService, junk: str) -> None:  # noqa: F811
    """A conflict's value is kept (the local copy takes it): it must pass the rule of an imported setting value."""
    assert setting_value_problem(junk) is not None and setting_value_problem("save_all") is None
    a = parse_definition(_definition(apply_section(settingsd.url))).apply
    settingsd.hold("d1", SETTING, junk)
    with apply.HttpSettingsService(a, SLUG, TOKEN) as svc, \
            pytest.raises(apply.Refused, match="change '1': the value the settings service reports is not a "
                                               "setting value") as info:
        svc.send("k1", "flip", [apply.Change("1", "d1", SETTING, FROM, TO)])
    if junk.strip():
        assert junk not in str(info.value)


@pytest.mark.parametrize("how", ["drip", "drip body"])
def test_timeout_seconds_bounds_the_whole_exchange(settingsd: SettingsService, how: str) -> None:  # noqa: F811
    """A byte a second resets no clock: one try ends after timeout_seconds, whether the head or the body drips.

    It ends at 2 s, not before; and well before the drip would (15 s): within 6 s, which leaves a loaded machine
    4 s over the deadline (the bound was 3 s)."""
    a = parse_definition(_definition(apply_section(settingsd.url, timeout=2))).apply
    settingsd.script(how)
    with apply.HttpSettingsService(a, SLUG, TOKEN) as svc:
        started = time.monotonic()
        with pytest.raises(apply.Transient, match="no whole answer within timeout_seconds = 2"):
            svc.send("k1", "flip", [apply.Change("1", "d1", SETTING, FROM, TO)])
        took = time.monotonic() - started
    assert 1.9 <= took < 6, took


@pytest.mark.parametrize("how", ["huge", "huge chunked"])
def test_a_huge_answer_is_refused_unread(settingsd: SettingsService, how: str) -> None:  # noqa: F811
    """A 200 larger than 16 MiB is outside the contract (the batch pauses): refused, without reading it all."""
    a = parse_definition(_definition(apply_section(settingsd.url))).apply
    settingsd.script(how)
    with apply.HttpSettingsService(a, SLUG, TOKEN) as svc, \
            pytest.raises(apply.Refused, match="HTTP 200, but the answer is larger than 16 MiB"):
        svc.send("k1", "flip", [apply.Change("1", "d1", SETTING, FROM, TO)])
    deadline = time.monotonic() + 10
    while not settingsd.written and time.monotonic() < deadline:
        time.sleep(0.01)
    assert settingsd.written and settingsd.written[0] < settingsd.huge_bytes  # the service could not send it all
    assert apply.MAX_ANSWER_BYTES == 16 * 2**20


def test_the_definitions_proxy_takes_an_https_request_inside_connect() -> None:
    """`[apply] proxy`: the request goes through it, as a CONNECT tunnel, so the proxy never sees the token."""
    with Listener() as proxy:
        a = parse_definition(_definition(apply_section("https://settings.invalid/v1/x", timeout=5,
                                                       extra=f'proxy = "{proxy.url}"\n'))).apply
        assert a.proxy == proxy.url
        with apply.HttpSettingsService(a, SLUG, TOKEN) as svc, pytest.raises(apply.Transient):
            svc.send("k1", "flip", [apply.Change("1", "d1", SETTING, FROM, TO)])
    assert len(proxy.received) == 1 and proxy.received[0].startswith(b"CONNECT settings.invalid:443 HTTP/1.1\r\n")
    assert TOKEN.encode() not in proxy.received[0] and b"Authorization" not in proxy.received[0]


def test_retry_policy_backs_off_and_is_capped() -> None:
    r = apply.Retry(attempts=8, base=0.5, cap=30.0, jitter=0.0)
    assert [r.delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    jittered = apply.Retry(jitter=0.2)
    assert all(0.4 <= jittered.delay(1) <= 0.6 for _ in range(100))
