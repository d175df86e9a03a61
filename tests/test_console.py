"""The console (`campaign serve`, issue 24 items 1, 2, 4) over plain HTTP, against the real server on loopback,
on SQLite and PostgreSQL: identities proven by tokens signed with a key pair made here (the JWKS in a file and at
a loopback URL), every bad token a bare 401, roles that grant only their own actions, CSRF, the pages, the API,
the streamed reports, /metrics and /healthz."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from sqlalchemy import Engine

from campaign.config import ASYMMETRIC, Config, ConsoleConfig, load_config
from campaign.errors import ConfigError
from tests.conftest import ROOT, CliRun
from tests.consoled import AUDIENCE, ISSUER, Issuer, JwksServer, expired_claims, serving, unsigned

SLUG = "voice-local-processing"
AUTHOR, APPROVER, VIEWER, OPERATOR, SUPPORT = ("author@example.com", "approver@example.com", "viewer@example.com",
                                               "operator@example.com", "support@example.com")
N = 6
HOSTILE = "<script>alert(1)</script> Ünal"
ACCOUNTS = ("account_id,email,name,locale,timezone,country\n"
            + "".join(f"a{i:03d},user{i}@example.com,{HOSTILE if i == 0 else f'User {i}'},"
                      f"{'fr-CA,America/Toronto,CA' if i == N - 1 else 'en-US,America/New_York,US'}\n"
                      for i in range(N)))
DEVICES = ("device_id,account_id,name,model,voice_recordings\n"
           + "".join(f"d{i:03d},a{i:03d},Room {i},Echo Show 10,do_not_send\n" for i in range(N)))
CLOCK = {"CAMPAIGN_CLOCK": "2031-03-08T07:00:00+00:00"}  # twenty days before the cutoff


def definition_text() -> str:
    text = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    text = text.replace('cutoff = "2025-03-28T00:00:00-07:00"', 'cutoff = "2031-03-28T00:00:00-07:00"')
    text = text.replace("require_notice = true", "require_notice = false")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("min_notice")) + "\n"
    start, end = text.index("[send_window]"), text.index("[context]")
    text = text[:start] + "[limits]\nrate_per_second = 500\nconcurrency = 4\n\n" + text[end:]
    return text + "\n[approval]\nrequired = true\n"


ROLES = {"viewer": ("group:staff",), "operator": (OPERATOR, AUTHOR), "approver": ("group:privacy", AUTHOR),
         "support": ("group:support",)}


def console_config(db_url: str, jwks: str, **changes: object) -> Config:
    console = ConsoleConfig(identity="jwt", header="Authorization", issuer=ISSUER, audience=AUDIENCE, jwks=jwks,
                            roles=ROLES)
    return Config(database_url=db_url, templates=ROOT / "templates", actor="console-test",
                  console=dataclasses.replace(console, **changes))  # type: ignore[arg-type]


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def created(run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    """Six accounts, the campaign created by AUTHOR with an approval required."""
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS)), env=CLOCK).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES)), env=CLOCK).exit_code == 0
    result = run_cli("create", str(write_file("def.toml", definition_text())),
                     env={**CLOCK, "CAMPAIGN_ACTOR": AUTHOR})
    assert result.exit_code == 0, result.output


@pytest.fixture
def server(db_url: str, engine: Engine, created: None, issuer: Issuer, tmp_path: Path) -> Iterator[str]:
    """The console with the issuer's JWKS in a file."""
    config = console_config(db_url, str(issuer.write_jwks(tmp_path / "jwks.json")))
    with serving(config, engine) as console:
        yield console.url


def as_(issuer: Issuer, email: str, *groups: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.token(email, list(groups))}"}


def csrf_of(html: str) -> str:
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


# -- configuration -------------------------------------------------------------------------------------------

def test_the_console_tables_are_checked_key_by_key(tmp_path: Path) -> None:
    def load(text: str) -> Config:
        (tmp_path / "campaign.toml").write_text(text, encoding="utf-8")
        return load_config({}, {}, tmp_path)

    cfg = load('[console]\nidentity = "jwt"\nheader = "x-forwarded-access-token"\nissuer = "https://i"\n'
               'audience = "a"\njwks = "/k.json"\n[console.roles]\napprover = ["group:privacy", "Pat@Example.com"]\n')
    assert cfg.console.header == "X-Forwarded-Access-Token"
    assert cfg.console.roles["approver"] == ("group:privacy", "pat@example.com")
    assert cfg.console.algorithms == ASYMMETRIC and cfg.console.missing() == []
    toml = tmp_path / "campaign.toml"
    for text, message in (
            ('[console]\nisuer = "x"\n', f"{toml}: [console] has no key 'isuer' — did you mean `issuer`?"),
            ('[console]\nidentity = "saml"\n', "identity must be one of jwt, demo, not 'saml'"),
            ('[console]\nheader = "X-Email"\n', "header 'X-Email' is not one we read"),
            ('[console]\nalgorithms = ["RS256", "HS256"]\n', "HS256 refused: only asymmetric signatures"),
            ('[console]\nalgorithms = ["none"]\n', "none refused"),
            ("[console]\naudience = 3\n", "[console] audience must be a non-empty string"),
            ('[console.roles]\napprovers = ["a@b.c"]\n', "has no role 'approvers' — did you mean `approver`?"),
            ('[console.roles]\nviewer = "group:staff"\n', "[console.roles] viewer must be a list of non-empty strings"),
            ('[console.roles]\nviewer = ["staff"]\n', "'staff' is neither an email address nor group:NAME"),
            ('console = "x"\n', "console must be a table")):
        with pytest.raises(ConfigError) as err:
            load(text)
        assert message in str(err.value), (text, str(err.value))
        assert str(toml) in str(err.value)


def test_serve_refuses_what_could_not_prove_anyone(run_cli: CliRun, workdir: Path) -> None:
    demo = run_cli("serve", "--identity", "demo", "--host", "0.0.0.0")
    assert demo.exit_code == 2 and "loopback address only" in demo.stderr
    (workdir / "campaign.toml").write_text('[console]\nidentity = "jwt"\nissuer = "https://i"\n', encoding="utf-8")
    jwt_ = run_cli("serve")
    assert jwt_.exit_code == 2 and "identity = \"jwt\" needs audience, jwks" in jwt_.stderr
    (workdir / "campaign.toml").write_text('[console]\nissuer = "https://i"\naudience = "a"\n'
                                           'jwks = "http://sso.example.com/jwks"\n', encoding="utf-8")
    plain = run_cli("serve")
    assert plain.exit_code == 2 and "only from a loopback host: use https://" in plain.stderr
    short = run_cli("serve", "--identity", "demo", env={"CAMPAIGN_CONSOLE_SECRET": "too-short-a-secret"})
    assert short.exit_code == 2 and "CAMPAIGN_CONSOLE_SECRET must be at least 32 characters" in short.stderr
    assert "too-short-a-secret" not in short.output


def test_processes_sharing_the_console_secret_accept_each_others_forms() -> None:
    """Behind one balancer a form served by one `serve` process is posted to another: with CAMPAIGN_CONSOLE_SECRET
    both derive the same CSRF key; without it each process has its own, and refuses the other's tokens."""
    from campaign.console.csrf import Csrf

    secret = "s" * 16 + "0123456789abcdef-shared"
    one, two = Csrf.from_secret(secret), Csrf.from_secret(secret)
    assert two.valid("pm@example.com", one.token("pm@example.com"))
    assert not two.valid("other@example.com", one.token("pm@example.com"))  # bound to the person
    assert not Csrf.from_secret(secret + "x").valid("pm@example.com", one.token("pm@example.com"))
    assert not Csrf.from_secret(None).valid("pm@example.com", Csrf.from_secret(None).token("pm@example.com"))


# -- identity -------------------------------------------------------------------------------------------------

def test_every_bad_token_gets_a_bare_401(server: str, issuer: Issuer) -> None:
    url = f"{server}/campaigns/{SLUG}"
    other = Issuer()  # the same kid, another key: a forged signature
    good = issuer.token(VIEWER, ["staff"])
    header, payload, _sig = good.split(".")
    bad = {
        "none": "",
        "not a bearer": "Basic dXNlcjpwYXNz",
        "garbage": "Bearer not.a.jwt",
        "expired": "Bearer " + jwt.encode(expired_claims(issuer, VIEWER), issuer.key, "RS256", {"kid": "k1"}),
        "wrongly signed": "Bearer " + other.token(VIEWER, ["staff"]),
        "signature cut": f"Bearer {header}.{payload}.",
        "wrong audience": "Bearer " + issuer.token(VIEWER, ["staff"], aud="another-app"),
        "wrong issuer": "Bearer " + issuer.token(VIEWER, ["staff"], iss="https://evil.example"),
        "not yet valid": "Bearer " + issuer.token(VIEWER, ["staff"], nbf=int(2e9)),
        "no exp": "Bearer " + issuer.token(VIEWER, ["staff"], exp=None),
        "alg none": "Bearer " + unsigned(issuer.claims(VIEWER, ["staff"])),
        # HS/RS confusion: an HMAC whose secret is the issuer's public key (PEM), as the attack makes it
        "HS256 with the public key": "Bearer " + _hs256_with_public_key(issuer, VIEWER),
        "unknown kid": "Bearer " + issuer.token(VIEWER, ["staff"], kid="k9"),
        "no email": "Bearer " + jwt.encode({**issuer.claims(VIEWER), "email": None}, issuer.key, "RS256",
                                           {"kid": "k1"}),
    }
    with httpx.Client() as client:
        for why, value in bad.items():
            response = client.get(url, headers={"Authorization": value} if value else {})
            assert response.status_code == 401, why
            assert response.text == "401 Unauthorized: sign in through the single sign-on proxy.\n", why
            assert SLUG not in response.text
        ok = client.get(url, headers={"Authorization": f"Bearer {good}"})
        assert ok.status_code == 200 and SLUG in ok.text
        # A little clock skew is allowed (30 s), more is not.
        skewed = issuer.token(VIEWER, ["staff"], nbf=int(time.time()) + 20)
        assert client.get(url, headers={"Authorization": f"Bearer {skewed}"}).status_code == 200
        assert client.get(f"{server}/healthz").status_code == 200  # no identity needed


def _hs256_with_public_key(issuer: Issuer, email: str) -> str:
    import base64
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization
    pem = issuer.key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps(issuer.claims(email, ["staff"])).encode())
    sig = b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def test_the_jwks_from_a_url_is_cached_and_fetched_again_for_a_new_key(
        db_url: str, engine: Engine, created: None, issuer: Issuer, monkeypatch: pytest.MonkeyPatch) -> None:
    from campaign.console import identity
    jwks = JwksServer(issuer)
    monkeypatch.setattr(identity, "JWKS_MIN_REFRESH_SECONDS", 0.0)
    try:
        with serving(console_config(db_url, jwks.url), engine) as console, httpx.Client() as client:
            for _ in range(3):
                assert client.get(f"{console.url}/", headers=as_(issuer, VIEWER, "staff")).status_code == 200
            assert jwks.fetches == 1  # cached
            rotated = Issuer(kid="k2")  # the issuer rotates its key: a kid we do not hold fetches once more
            jwks.issuers = [issuer, rotated]
            assert client.get(f"{console.url}/", headers=as_(rotated, VIEWER, "staff")).status_code == 200
            assert jwks.fetches == 2
            jwks.issuers = [rotated]
            assert client.get(f"{console.url}/", headers=as_(Issuer(kid="k3"), VIEWER, "staff")).status_code == 401
    finally:
        jwks.stop()


# -- roles and actions ------------------------------------------------------------------------------------------

def test_a_viewer_sees_and_cannot_act(server: str, issuer: Issuer) -> None:
    with httpx.Client(base_url=server) as client:
        page = client.get(f"/campaigns/{SLUG}", headers=as_(issuer, VIEWER, "staff"))
        assert page.status_code == 200
        assert "Retire" in page.text and "<form method=\"post\"" not in page.text
        token = "x"  # a viewer has no form, so no token: a forgery can only guess one
        for action in ("approve", "revoke", "pause", "resume"):
            forged = client.post(f"/campaigns/{SLUG}/{action}", data={"csrf": token},
                                 headers=as_(issuer, VIEWER, "staff"))
            assert forged.status_code == 403, action
        assert client.get("/people?q=user1@example.com", headers=as_(issuer, VIEWER, "staff")).status_code == 403
        assert client.get(f"/campaigns/{SLUG}/report.csv", headers=as_(issuer, VIEWER, "staff")).status_code == 403
        # Someone with no role at all reads nothing.
        assert client.get("/", headers=as_(issuer, "nobody@example.com", "other")).status_code == 403


def test_an_approver_approves_and_the_cli_shows_it(server: str, issuer: Issuer, run_cli: CliRun) -> None:
    headers = as_(issuer, APPROVER, "privacy")
    with httpx.Client(base_url=server) as client:
        page = client.get(f"/campaigns/{SLUG}", headers=headers)
        assert f'action="/campaigns/{SLUG}/approve"' in page.text
        assert f'action="/campaigns/{SLUG}/pause"' not in page.text  # an approver is not an operator
        token = csrf_of(page.text)
        assert client.post(f"/campaigns/{SLUG}/approve", headers=headers).status_code == 403  # no csrf
        assert client.post(f"/campaigns/{SLUG}/approve", data={"csrf": "x" + token}, headers=headers
                           ).status_code == 403  # a wrong one
        other = client.post(f"/campaigns/{SLUG}/approve", data={"csrf": token},
                            headers={**headers, "Origin": "https://evil.example"})
        assert other.status_code == 403  # a form of another site
        assert client.post(f"/campaigns/{SLUG}/pause", data={"csrf": token}, headers=headers).status_code == 403
        big = client.post(f"/campaigns/{SLUG}/approve", content=b"csrf=" + b"x" * 10000, headers={
            **headers, "Content-Type": "application/x-www-form-urlencoded"})
        assert big.status_code == 413
        done = client.post(f"/campaigns/{SLUG}/approve", data={"csrf": token}, headers=headers)
        assert done.status_code == 303 and done.headers["location"] == f"/campaigns/{SLUG}?did=approved"
        after = client.get(done.headers["location"], headers=headers)
        assert "Approved: your approval is recorded" in after.text
        assert "Withdraw my approval" in after.text
        log_part = after.text.split("<h2>Audit log</h2>")[1]
        assert f"Approved by {APPROVER}" in log_part and ">campaign.approve<" not in log_part  # in words
    standing = json.loads(run_cli("status", SLUG, "--json").stdout)["approval"]
    assert standing["approved"] is True
    assert [a["by"] for a in standing["approvals"]] == [APPROVER]
    assert standing["approvals"][0]["proof"] == "jwt"  # a sign-in the console verified
    log = json.loads(run_cli("log", SLUG, "--json").stdout)["events"]
    approvals = [e for e in log if e["action"] == "campaign.approve"]
    assert [e["actor"] for e in approvals] == [APPROVER]
    evidence = approvals[0]["detail"]["evidence"]
    assert approvals[0]["detail"]["proof"] == "jwt"
    assert evidence["issuer"] == ISSUER and evidence["sub"] == f"sub-{APPROVER}" and len(evidence["jti"]) == 32


def test_the_author_cannot_approve_whatever_their_roles(server: str, issuer: Issuer, run_cli: CliRun) -> None:
    headers = as_(issuer, AUTHOR)  # listed among the approvers (and operators) by email
    with httpx.Client(base_url=server) as client:
        page = client.get(f"/campaigns/{SLUG}", headers=headers)
        assert "You wrote version 1 of this definition" in page.text
        assert f'action="/campaigns/{SLUG}/approve"' not in page.text
        refused = client.post(f"/campaigns/{SLUG}/approve", data={"csrf": _token_page(client, headers)},
                              headers=headers)
        assert refused.status_code == 409
        assert "the approval must come from someone else" in refused.text
    assert json.loads(run_cli("status", SLUG, "--json").stdout)["approval"]["approved"] is False


def _token_page(client: httpx.Client, headers: dict[str, str]) -> str:
    """A CSRF token of this person (the author has no approve form: the pause form's token is the same)."""
    page = client.get(f"/campaigns/{SLUG}", headers=headers).text
    return csrf_of(page)


def test_an_operator_pauses_and_resumes(server: str, issuer: Issuer, run_cli: CliRun) -> None:
    headers = as_(issuer, OPERATOR)
    with httpx.Client(base_url=server) as client:
        page = client.get(f"/campaigns/{SLUG}", headers=headers)
        assert f'action="/campaigns/{SLUG}/approve"' not in page.text
        token = csrf_of(page.text)
        assert client.post(f"/campaigns/{SLUG}/approve", data={"csrf": token}, headers=headers).status_code == 403
        paused = client.post(f"/campaigns/{SLUG}/pause", data={"csrf": token}, headers=headers)
        assert paused.status_code == 303 and paused.headers["location"].endswith("?did=paused")
        assert json.loads(run_cli("status", SLUG, "--json").stdout)["state"] == "paused"
        resumed = client.post(f"/campaigns/{SLUG}/resume", data={"csrf": token}, headers=headers)
        assert resumed.status_code == 303
    assert json.loads(run_cli("status", SLUG, "--json").stdout)["state"] == "draft"
    log = json.loads(run_cli("log", SLUG, "--json").stdout)["events"]
    assert [(e["actor"], e["action"]) for e in log if e["action"] in ("campaign.pause", "campaign.resume")] == [
        (OPERATOR, "campaign.pause"), (OPERATOR, "campaign.resume")]


# -- the pages and the data -------------------------------------------------------------------------------------

def test_pages_api_reports_metrics(server: str, issuer: Issuer, run_cli: CliRun) -> None:
    # Approved, scheduled and the notice sent (to the Maildir of the working directory) through the CLI.
    assert run_cli("approve", SLUG, env={**CLOCK, "CAMPAIGN_ACTOR": "rivka"}).exit_code == 0
    assert run_cli("schedule", SLUG, env={**CLOCK, "CAMPAIGN_ACTOR": AUTHOR}).exit_code == 0
    sent = run_cli("send", SLUG, "--wave", "notice", "--ignore-window", "--workers", "1", env=CLOCK)
    assert sent.exit_code == 0, sent.output
    viewer = as_(issuer, VIEWER, "staff")
    support = as_(issuer, SUPPORT, "support")
    with httpx.Client(base_url=server) as client:
        home = client.get("/", headers=viewer)
        assert home.status_code == 200 and SLUG in home.text
        for name in ("content-security-policy", "x-content-type-options", "referrer-policy", "cache-control"):
            assert name in home.headers
        assert "script-src" not in home.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in home.headers["content-security-policy"]
        assert home.headers["cache-control"] == "no-store" and home.headers["referrer-policy"] == "no-referrer"
        timeline = client.get(f"/campaigns/{SLUG}", headers=viewer).text.split("<h2>Timeline</h2>")[1]
        timeline = timeline.split("</table>")[0]  # in time order: the reminder, the cutoff, the confirmation
        assert (timeline.index(">reminder<") < timeline.index("<strong>the cutoff</strong>")
                < timeline.index(">confirmation<"))

        api = client.get(f"/api/campaigns/{SLUG}", headers=viewer)
        assert api.status_code == 200
        assert api.json() == json.loads(run_cli("status", SLUG, "--json").stdout)
        assert api.json()["waves"]["notice"]["sent"] == N

        assert client.get("/api/campaigns/nope", headers=viewer).status_code == 404
        missing = client.get("/campaigns/nope", headers=viewer)
        assert missing.status_code == 404 and "no campaign &#39;nope&#39;" in missing.text

        csv_ = client.get(f"/campaigns/{SLUG}/report.csv", headers=support)
        assert csv_.status_code == 200 and csv_.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(csv_.text)))
        assert len(rows) == N and {r["notice_state"] for r in rows} == {"sent"}
        assert rows == list(csv.DictReader(io.StringIO(run_cli("report", SLUG, "--format", "csv").stdout)))
        html = client.get(f"/campaigns/{SLUG}/report.html", headers=viewer)
        assert html.status_code == 200 and "<html" in html.text
        assert "script-src" not in html.headers["content-security-policy"]

        person = client.get("/people", params={"q": "USER0@example.com"}, headers=support)
        assert person.status_code == 200
        assert "&lt;script&gt;alert(1)&lt;/script&gt; Ünal" in person.text and "<script>" not in person.text
        assert "a000" in person.text and "notice" in person.text
        by_id = client.get("/people", params={"q": "a003"}, headers=support)
        assert "user3@example.com" in by_id.text
        nobody = client.get("/people", params={"q": "who@example.com"}, headers=support)
        assert "No account who@example.com" in nobody.text

        metrics = client.get("/metrics", headers=viewer)
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert f'campaign_deliveries{{campaign="{SLUG}",state="sent",wave="notice"}} {N}.0' in metrics.text
        # the counts as last counted (the pages' count, kept in the database), with when they were counted
        assert f'campaign_counted_timestamp_seconds{{campaign="{SLUG}"}}' in metrics.text
        assert client.get("/metrics").status_code == 401


def test_the_review_packet_shows_stand_ins_fallbacks_and_the_digest(server: str, issuer: Issuer) -> None:
    headers = as_(issuer, APPROVER, "privacy")
    with httpx.Client(base_url=server) as client:
        page = client.get(f"/campaigns/{SLUG}/review", headers=headers)
        assert page.status_code == 200
        text = page.text
        assert "version <strong>1</strong> of the definition by author@example.com" in text
        assert "sha256:" in text and f'action="/campaigns/{SLUG}/approve"' in text
        # the audience by locale, country and model
        assert "fr-CA" in text and "CA" in text and "Echo Show 10" in text
        # every wave × locale for a made-up person; the French readers get the English message, said so
        assert "no fr-CA template: readers of fr-CA get the en-US message" in text
        assert "Jane Doe" in text
        for i in range(N):  # no customer in the packet
            assert f"user{i}@example.com" not in text and f"User {i}" not in text
        assert "alert(1)" not in text
        html = client.get(f"/campaigns/{SLUG}/review/notice/de-DE.html", headers=headers)
        assert html.status_code == 200 and "Erika Mustermann" in html.text  # de-DE's stand-in
        assert "script-src" not in html.headers["content-security-policy"]
        assert client.get(f"/campaigns/{SLUG}/review/nope/de-DE.html", headers=headers).status_code == 404
        assert client.get(f"/campaigns/{SLUG}/review/notice/xx-YY.html", headers=headers).status_code == 400


def test_the_review_packet_shows_what_changed_since_the_approved_version(
        server: str, issuer: Issuer, run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    headers = as_(issuer, APPROVER, "privacy")
    with httpx.Client(base_url=server) as client:
        first = client.get(f"/campaigns/{SLUG}/review", headers=headers).text
        assert "No version of this definition has been approved yet" in first
        assert run_cli("approve", SLUG, env={**CLOCK, "CAMPAIGN_ACTOR": "rivka"}).exit_code == 0
        same = client.get(f"/campaigns/{SLUG}/review", headers=headers).text
        assert "is the one approved last: nothing changed since" in same
        changed = definition_text().replace("name = \"Retire 'Do not send voice recordings'\"",
                                            'name = "Retire <b>local</b> processing"')
        replaced = run_cli("create", "--replace", str(write_file("def2.toml", changed)),
                           env={**CLOCK, "CAMPAIGN_ACTOR": AUTHOR})
        assert replaced.exit_code == 0, replaced.output
        page = client.get(f"/campaigns/{SLUG}/review", headers=headers).text
    assert "Since version <strong>1</strong>, approved last, to version <strong>2</strong>" in page
    assert '<span class="add">+name = &#34;Retire &lt;b&gt;local&lt;/b&gt; processing&#34;</span>' in page
    assert '<span class="del">-name = &#34;Retire &#39;Do not send voice recordings&#39;&#34;</span>' in page


def test_a_campaign_page_never_waits_long_for_its_first_count(db_url: str, engine: Engine, created: None,
                                                               issuer: Issuer, tmp_path: Path) -> None:
    """While the campaign's very first count is under way (here: held up by the test), its page is served at once
    without counts, saying so; once the count ends, the page shows it. The real app, in process (ASGI)."""
    import asyncio

    from campaign.console.app import create_app

    config = console_config(db_url, str(issuer.write_jwks(tmp_path / "jwks.json")))
    app = create_app(config, engine)
    counts = app.state.console.counts
    headers = as_(issuer, VIEWER, "staff")

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            async with counts._lock(SLUG):  # the first count cannot end while the test holds this
                started = time.monotonic()
                page = await client.get(f"/campaigns/{SLUG}", headers=headers)
                waited = time.monotonic() - started
                assert page.status_code == 200 and "the first count of this campaign is under way" in page.text
                assert waited < 2.0 and "Being counted." in page.text
            await counts._refreshing[SLUG]  # the count ends once the lock is free
            page = await client.get(f"/campaigns/{SLUG}", headers=headers)
            assert "under way" not in page.text and "affected accounts" in page.text

    asyncio.run(scenario())


def test_the_counts_are_kept_shown_at_once_and_counted_again_in_the_background(
        engine: Engine, created: None, run_cli: CliRun, write_file: Callable[..., Path]) -> None:
    """Counts: a campaign never counted is counted once and kept in the database; a console started again shows the
    kept count at once; once old, the old count is served at once while it is counted again in the background; a
    second process adopts a recent count the first one kept instead of counting again; and the status made of a
    kept count is the status counted now, while nothing changed."""
    import asyncio

    from campaign import db
    from campaign.console.counts import Counts
    from campaign.evidence import status

    async def scenario() -> None:
        first = Counts(engine, ttl=3600)
        async with first._lock(SLUG):  # being counted (at start, say): the front page does not wait for it
            assert await asyncio.wait_for(first.get(SLUG, wait=0), 1) is None
        counted = await first.get(SLUG)
        assert counted is not None and counted.coverage.affected_accounts == N
        kept = status.kept_count(engine, SLUG)
        assert kept == counted  # kept in the database, as counted
        with db.read(engine) as conn:
            assert status.status(conn, SLUG, counted=kept).as_json() == status.status(conn, SLUG).as_json()

        again = Counts(engine, ttl=3600)  # a restart: the kept count at once, not a new one
        assert await again.get(SLUG, wait=0) == counted and not again._refreshing

        more = ("account_id,email,name,locale,timezone,country\nz001,late@example.com,Late,en-US,America/Chicago,US\n")
        assert run_cli("import", "accounts", str(write_file("more.csv", more)), env=CLOCK).exit_code == 0
        dev = "device_id,account_id,name,model,voice_recordings\nz001,z001,Den,Echo Show 10,do_not_send\n"
        assert run_cli("import", "devices", str(write_file("more-d.csv", dev)), env=CLOCK).exit_code == 0

        first.ttl = 0.0  # old at once
        stale = await first.get(SLUG)
        assert stale == counted and SLUG in first._refreshing  # served at once; counting again in the background
        await first._refreshing[SLUG]
        first.ttl = 3600  # (at 0, this look would begin yet another count)
        fresh = await first.get(SLUG)
        assert fresh is not None and fresh.at > counted.at and fresh.coverage.affected_accounts == N + 1
        assert status.kept_count(engine, SLUG) == fresh

        again.ttl = 60.0
        again._held[SLUG].taken -= 120  # its copy is old: the database holds a recent one, which it takes
        assert await again.get(SLUG) == counted
        await again._refreshing[SLUG]
        assert await again.get(SLUG) == fresh  # adopted, not counted again
        assert again._held[SLUG].counted.at == fresh.at

    asyncio.run(scenario())
