"""The proof of the exact words (issue 25 item 4), on SQLite and PostgreSQL, over a real SMTP server: each delivery
records the SHA-256 of the bytes handed to the relay and the version that built them; the messages are built from
the version's kept templates, not the folder as edited since; `report --account ID --message WAVE` rebuilds a
message byte-identical after the templates and the person's devices changed, and says why not when the record was
tampered with."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from campaign import versions
from tests.conftest import ROOT, CliRun
from tests.smtpd import SmtpServer

SLUG = "voice-local-processing"
PEOPLE = [("a000", "pat@example.com", "Pat Doe", "en-US", "America/New_York"),
          ("a001", "kim@example.com", "Kim Berger", "de-DE", "Europe/Berlin"),
          ("a002", "yui@example.com", "Yui Sato", "ja-JP", "Asia/Tokyo")]
# A line of the text part that begins with a dot: SMTP stuffs it (`..`) on the wire and the server takes it out, so
# the bytes the server received are the bytes handed to the relay only if both sides did their part.
DOT_LINE = ". Sent by the device privacy team"


def accounts_csv(names: dict[str, str] | None = None) -> str:
    names = names or {}
    return "account_id,email,name,locale,timezone,country\n" + "".join(
        f"{i},{e},{names.get(i, n)},{loc},{tz},US\n" for i, e, n, loc, tz in PEOPLE)


def devices_csv(suffix: str = "") -> str:
    return "device_id,account_id,name,model,voice_recordings\n" + "".join(
        f"d{i[1:]},{i},Kitchen{suffix},Echo Show 10,do_not_send\nk{i[1:]},{i},Bedroom{suffix},Echo Dot (4th Gen),"
        "do_not_send\n" for i, *_ in PEOPLE)


def definition(tmp: Path) -> Path:
    import datetime as dt
    cutoff = (dt.datetime.now(dt.UTC) + dt.timedelta(days=10)).replace(microsecond=0).isoformat()
    body = (ROOT / "data" / "voice-local-processing.toml").read_text(encoding="utf-8")
    body = body.replace('cutoff = "2025-03-28T00:00:00-07:00"', f'cutoff = "{cutoff}"')
    start, end = body.index("[send_window]"), body.index("[context]")
    body = body[:start] + ("[limits]\nrate_per_second = 2000\nconcurrency = 2\nmax_attempts = 3\n"
                           "retry_base_seconds = 0.01\nretry_max_seconds = 0.02\n\n") + body[end:]
    path = tmp / "def.toml"
    path.write_text(body, encoding="utf-8")
    return path


class Setup:
    def __init__(self, run_cli: CliRun, engine: Engine, smtpd: SmtpServer, tmp: Path,
                 write_file: Callable[..., Path]) -> None:
        self.run_cli, self.engine, self.smtpd, self.tmp, self.write_file = run_cli, engine, smtpd, tmp, write_file
        self.templates = tmp / "templates"
        shutil.copytree(ROOT / "templates", self.templates)
        self.edit("en-US/notice.txt.j2", "{% endblock %}", f"\n{DOT_LINE}\n{{% endblock %}}")
        self.env = {"CAMPAIGN_TEMPLATES": str(self.templates), "CAMPAIGN_SMTP_URL": smtpd.url}

    def edit(self, name: str, old: str, new: str) -> None:
        """Edit a template of the folder (inside its block: what a child template writes outside is not shown)."""
        path = self.folder / name
        body = path.read_text(encoding="utf-8")
        assert old in body
        path.write_text(body.replace(old, new), encoding="utf-8")

    @property
    def folder(self) -> Path:
        return self.templates / SLUG

    def cli(self, *args: str) -> object:
        return self.run_cli(*args, env=self.env)

    def ok(self, *args: str) -> str:
        result = self.run_cli(*args, env=self.env)
        assert result.exit_code == 0, result.output
        return result.output

    def people(self, names: dict[str, str] | None = None, device_suffix: str = "") -> None:
        self.ok("import", "accounts", str(self.write_file("a.csv", accounts_csv(names))))
        self.ok("import", "devices", str(self.write_file("d.csv", devices_csv(device_suffix))))

    def create(self) -> None:
        self.ok("create", str(definition(self.tmp)))

    def send(self, wave: str = "notice") -> None:
        self.ok("send", SLUG, "--wave", wave, "--workers", "1")

    def rows(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params).all()]

    def execute(self, sql: str, **params: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(sql), params)

    def received(self, address: str, wave: str = "notice") -> bytes:
        found = [m.data for m in self.smtpd.messages
                 if m.recipients == (address,) and f"X-Campaign-Wave: {wave}\r\n".encode() in m.data]
        assert len(found) == 1
        return found[0]

    def prove(self, account: str, *more: str, wave: str = "notice") -> tuple[int, dict[str, object]]:
        result = self.run_cli("report", SLUG, "--account", account, "--message", wave, "--json", *more, env=self.env)
        return result.exit_code, json.loads(result.stdout)


@pytest.fixture
def setup(run_cli: CliRun, engine: Engine, smtpd: SmtpServer, tmp_path: Path,
          write_file: Callable[..., Path]) -> Setup:
    s = Setup(run_cli, engine, smtpd, tmp_path, write_file)
    s.people()
    s.create()
    return s


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_each_delivery_records_the_digest_of_the_bytes_the_relay_received(setup: Setup) -> None:
    setup.send()
    recorded = {e: (sha, version, vsha) for e, sha, version, vsha in setup.rows(
        "SELECT email, message_sha256, version, version_sha256 FROM delivery WHERE state = 'sent'")}
    assert len(recorded) == 3 and len(setup.smtpd.messages) == 3
    dotted = 0
    for m in setup.smtpd.messages:
        # aiosmtpd hands over the data as received, dot-stuffing taken out, CRLF kept: the bytes we handed over.
        assert m.data.endswith(b"\r\n") and b"\n" not in m.data.replace(b"\r\n", b"")
        dotted += f"\r\n{DOT_LINE}\r\n".encode() in m.data
        assert recorded[m.recipients[0]][0] == _sha(m.data)
    assert dotted == 1  # Pat's English notice carries the line SMTP dot-stuffs
    # The version that built them: version 1, and the digest of its kept files (from version_file's own column).
    kept = dict(setup.rows("SELECT path, sha256 FROM version_file WHERE version = 1"))
    assert {(v, s) for _sha256, v, s in recorded.values()} == {(1, versions.manifest_sha256(kept))}
    inputs = json.loads(str(setup.rows("SELECT message_inputs FROM delivery WHERE account_id = 'a000'")[0][0]))
    assert (inputs["name"], inputs["email"], inputs["timezone"]) == ("Pat Doe", "pat@example.com", "America/New_York")
    assert sorted(d["name"] for d in inputs["devices"]) == ["Bedroom", "Kitchen"]
    event = setup.rows("SELECT detail FROM audit_event WHERE action = 'wave.send'")[0][0]
    assert json.loads(str(event))["version"] == 1
    # The per-account evidence carries the digest.
    jsonl = [json.loads(x) for x in setup.ok("report", SLUG, "--format", "jsonl").splitlines()]
    assert {x["waves"]["notice"]["message_sha256"] for x in jsonl} == {r[0] for r in recorded.values()}
    assert "notice_message_sha256" in setup.ok("report", SLUG, "--format", "csv").splitlines()[0].split(",")


def test_the_rebuild_is_byte_identical_after_the_templates_and_the_person_changed(setup: Setup) -> None:
    setup.send()
    sent = setup.received("pat@example.com")
    # After the send: the folder edited (no `create --replace`), Pat renamed, the devices renamed.
    setup.edit("en-US/notice.txt.j2", "WHAT YOU CAN DO", "Edited after approval")
    setup.edit("en-US/reminder.txt.j2", "WHAT YOU CAN DO", "Edited after approval")
    setup.people(names={"a000": "Patricia Doe-Smith"}, device_suffix=" (old)")

    eml = setup.tmp / "pat.eml"
    code, proven = setup.prove("a000", "--eml", str(eml))
    assert code == 0, proven
    assert proven["proven"] is True and proven["identical"] is True and proven["why"] == []
    assert proven["rebuilt_sha256"] == proven["recorded_sha256"] == _sha(sent)
    assert eml.read_bytes() == sent
    since = "\n".join(proven["since"])  # type: ignore[arg-type]
    assert "'Pat Doe' then, 'Patricia Doe-Smith' now" in since and "'Kitchen (old)'" in since
    words = setup.ok("report", SLUG, "--account", "a000", "--message", "notice")
    assert "PROVEN: the rebuilt message is byte-identical" in words

    # The edit is not sent either: the next wave is built from version 1 as kept, and the preflight says so.
    check = json.loads(setup.ok("check", SLUG, "--json"))
    changed = [w for w in check["warnings"] if w["code"] == "templates-changed"]
    assert len(changed) == 1 and "these edits are NOT sent" in changed[0]["message"]
    setup.send("reminder")
    reminded = setup.received("pat@example.com", "reminder")
    assert b"WHAT YOU CAN DO" in reminded and b"Edited after approval" not in reminded
    assert setup.prove("a000", wave="reminder")[0] == 0


def test_a_tampered_record_is_not_proven_and_says_why(setup: Setup) -> None:
    setup.send()
    code, proven = setup.prove("a001")
    assert code == 0 and proven["proven"] is True

    # The recorded digest changed.
    setup.execute("UPDATE delivery SET message_sha256 = :x WHERE account_id = 'a001'", x="0" * 64)
    code, proven = setup.prove("a001")
    assert code == 1 and proven["identical"] is False and proven["proven"] is False
    assert "is not the one recorded" in str(proven["why"])
    result = setup.cli("report", SLUG, "--account", "a001", "--message", "notice")
    assert result.exit_code == 1 and "NOT PROVEN" in result.output  # type: ignore[attr-defined]

    # A recorded input changed: the Date moved by a year.
    inputs = json.loads(str(setup.rows("SELECT message_inputs FROM delivery WHERE account_id = 'a002'")[0][0]))
    inputs["date"] = str(int(inputs["date"][:4]) - 1) + inputs["date"][4:]
    setup.execute("UPDATE delivery SET message_inputs = :x WHERE account_id = 'a002'", x=json.dumps(inputs))
    code, proven = setup.prove("a002")
    assert code == 1 and proven["identical"] is False and "the recorded Date" in str(proven["why"])

    # A kept template changed (its text, not the SHA-256 kept beside it).
    setup.execute("UPDATE version_file SET body = replace(body, 'WHAT YOU CAN DO', 'WHAT YOU MAY DO') "
                  "WHERE path = 'templates/en-US/notice.txt.j2'")
    code, proven = setup.prove("a000")
    assert code == 1 and proven["identical"] is False
    why = "\n".join(proven["why"])  # type: ignore[arg-type]
    assert "templates/en-US/notice.txt.j2 of version 1 was changed after it was kept" in why
    assert "are not those the message was built from" in why
    # The German message does not use that file: its bytes still match, but the files it came from are not those
    # recorded, so it is not proven either.
    setup.execute("UPDATE delivery SET message_sha256 = :x WHERE account_id = 'a001'", x=_sha(
        setup.received("kim@example.com")))
    code, proven = setup.prove("a001")
    assert code == 1 and proven["identical"] is True and proven["proven"] is False


def test_a_campaign_without_kept_files_is_sent_from_the_folder_and_says_so(setup: Setup) -> None:
    setup.execute("DELETE FROM version_file")  # as a campaign created before migration 0007
    setup.send()
    assert setup.rows("SELECT DISTINCT version FROM delivery WHERE state = 'sent'") == [(None,)]
    event = json.loads(str(setup.rows("SELECT detail FROM audit_event WHERE action = 'wave.send'")[0][0]))
    assert event["templates"] == "folder"
    assert setup.prove("a000")[0] == 0
    setup.edit("en-US/notice.txt.j2", "WHAT YOU CAN DO", "Edited")
    code, proven = setup.prove("a000")
    assert code == 1 and "the templates folder is not as it was at the send" in str(proven["why"])


def test_bad_requests_are_refused_clearly(setup: Setup) -> None:
    setup.ok("suppress", "add", "yui@example.com", "--reason", "asked not to be emailed")
    setup.send()
    assert setup.cli("report", SLUG, "--message", "notice").exit_code == 2  # type: ignore[attr-defined]
    assert setup.cli("report", SLUG, "--account", "a000", "--eml", "x.eml").exit_code == 2  # type: ignore[attr-defined]
    unknown = setup.cli("report", SLUG, "--account", "a000", "--message", "nope")
    assert unknown.exit_code == 2 and "no wave 'nope'" in unknown.output  # type: ignore[attr-defined]
    nobody = setup.cli("report", SLUG, "--account", "zzz", "--message", "notice")
    assert nobody.exit_code == 2 and "has no delivery" in nobody.output  # type: ignore[attr-defined]
    code, unsent = setup.prove("a002")
    assert code == 1 and unsent["why"] == ["no message was handed to the relay (the delivery is suppressed)"]
    # --eml never writes through a link.
    target = setup.tmp / "target.txt"
    target.write_text("keep me", encoding="utf-8")
    link = setup.tmp / "link.eml"
    link.symlink_to(target)
    refused = setup.cli("report", SLUG, "--account", "a000", "--message", "notice", "--eml", str(link))
    assert refused.exit_code == 2 and "link" in refused.output  # type: ignore[attr-defined]
    assert target.read_text(encoding="utf-8") == "keep me"
