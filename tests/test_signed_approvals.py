"""Approvals that can be verified offline (`[approval] verified = true`), with the real ssh-keygen and keys made in
the test, on SQLite and PostgreSQL: only a signed (or console-verified) approval counts; a typed `--actor` is
refused saying how to sign; the author signs `create` and cannot approve their own version; a key not in the allowed
signers, or a signature over another campaign, version or text, does not verify; `log --verify` checks every
signature again and fails on a tampered event or against another allowed signers file; a missing ssh-keygen or an
unreadable key is a clear error. Skipped without ssh-keygen, except under CI=true (`.ci/run` installs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from campaign import signatures
from campaign.cutoff import approval
from campaign.cutoff.approval import Approver, NotApproved
from campaign.definition import load_definition, parse_definition
from campaign.errors import InputError
from campaign.signatures import NotVerified
from tests.conftest import IN_CI, CliRun, table_counts
from tests.test_approval import ACCOUNTS, BEFORE, DEVICES, SLUG, definition_text

AUTHOR, APPROVER, OUTSIDER = "ann@example.com", "dana@example.com", "eve@example.com"
VERIFIED = '[approval]\nrequired = true\nverified = true\nallowed_signers = "allowed_signers"\n'


@pytest.fixture(scope="module", autouse=True)
def _ssh_keygen() -> None:
    if shutil.which("ssh-keygen") is None:
        if IN_CI:
            pytest.fail("CI=true but ssh-keygen is not installed: .ci/run installs Debian's openssh-client")
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A private key each for the author, the approver and an outsider; allowed_signers lists the first two."""
    folder = tmp_path / "keys"
    folder.mkdir()
    out = {}
    for who in (AUTHOR, APPROVER, OUTSIDER):
        key = folder / who.split("@")[0]
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", str(key)], check=True)
        out[who] = key
    return out


def signers_line(who: str, key: Path) -> str:
    kind, blob = key.with_suffix(".pub").read_text(encoding="ascii").split()[:2]
    return f'{who} namespaces="campaign-approval" {kind} {blob}\n'


@pytest.fixture
def created(run_cli: CliRun, write_file: Callable[..., Path], keys: dict[str, Path]) -> Path:
    """Accounts and devices imported, the campaign created under verified = true, signed by AUTHOR's key."""
    assert run_cli("import", "accounts", str(write_file("a.csv", ACCOUNTS)), env=BEFORE).exit_code == 0
    assert run_cli("import", "devices", str(write_file("d.csv", DEVICES)), env=BEFORE).exit_code == 0
    write_file("allowed_signers", signers_line(AUTHOR, keys[AUTHOR]) + signers_line(APPROVER, keys[APPROVER]))
    path = write_file("def.toml", definition_text(VERIFIED))
    result = run_cli("create", str(path), "--sign", str(keys[AUTHOR]), env=BEFORE)
    assert result.exit_code == 0, result.output
    assert f"author: {AUTHOR}, verified by SSH signature" in result.stdout
    return path


def approval_status(run_cli: CliRun) -> dict[str, object]:
    result = run_cli("status", SLUG, "--json", env=BEFORE)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout)["approval"])


def approvals(engine: Engine) -> int:
    with engine.connect() as conn:
        count = conn.execute(text("SELECT COUNT(*) FROM audit_event WHERE action = 'campaign.approve'"))
        return int(count.scalar_one())


# -- the definition ----------------------------------------------------------------------------------------

def test_the_definition_reads_verified_and_resolves_allowed_signers_beside_it(write_file: Callable[..., Path]) -> None:
    write_file("allowed_signers", "")
    d = load_definition(write_file("def.toml", definition_text(VERIFIED)))
    assert d.approval_verified is True
    assert d.allowed_signers == str(write_file("allowed_signers", "").absolute())
    assert parse_definition(definition_text("")).approval_verified is False

    missing = definition_text(VERIFIED.replace('"allowed_signers"', '"allowed_signer"'))
    with pytest.raises(InputError) as err:
        load_definition(write_file("def2.toml", missing))
    line = missing.splitlines().index('allowed_signers = "allowed_signer"') + 1
    assert f"def2.toml:{line}: approval.allowed_signers: no file " in str(err.value)
    assert "did you mean `allowed_signers`?" in str(err.value)
    # A stored text read back (its files may live elsewhere by then) is not checked.
    assert parse_definition(missing, "elsewhere/def.toml").approval_verified is True

    bare = definition_text("[approval]\nrequired = true\nverified = true\n")
    with pytest.raises(InputError) as err:
        parse_definition(bare, "def.toml")
    assert "approval.allowed_signers: verified = true needs the path of a file (git's format)" in str(err.value)
    with pytest.raises(InputError) as err:
        parse_definition(definition_text(VERIFIED.replace("verified = true", 'verified = "yes"')), "def.toml")
    assert "approval.verified: must be true or false" in str(err.value)


# -- signed approvals --------------------------------------------------------------------------------------

def test_a_signed_approval_counts_and_unlocks_schedule(run_cli: CliRun, engine: Engine, created: Path,
                                                       keys: dict[str, Path]) -> None:
    st = approval_status(run_cli)
    assert st["verified_only"] is True and st["defined_by"] == AUTHOR and st["defined_proof"] == "ssh"

    # A typed name does not count, and is refused saying how to sign.
    typed = run_cli("approve", SLUG, env={**BEFORE, "CAMPAIGN_ACTOR": APPROVER})
    assert typed.exit_code == 1
    assert "counts only verified approvals" in typed.stderr and "--sign" in typed.stderr
    assert approvals(engine) == 0
    refused = run_cli("schedule", SLUG, env=BEFORE)
    assert refused.exit_code == 1 and "--sign KEY" in refused.stderr

    # Signed: the principal in allowed_signers is who approves, whatever --actor says.
    ok = run_cli("--actor", "someone-typed", "approve", SLUG, "--sign", str(keys[APPROVER]), "--json", env=BEFORE)
    assert ok.exit_code == 0, ok.output
    got = json.loads(ok.stdout)
    assert got["by"] == APPROVER and got["verified"] is True and got["proof"] == "ssh"
    st = approval_status(run_cli)
    assert st["approved"] is True
    (a,) = st["approvals"]  # type: ignore[misc]
    assert a["by"] == APPROVER and a["verified"] is True and a["how"] == "SSH signature"
    shown = run_cli("status", SLUG, env=BEFORE).stdout
    assert f"approved by {APPROVER} at " in shown and "verified by SSH signature" in shown
    assert run_cli("schedule", SLUG, env=BEFORE).exit_code == 0

    log = run_cli("log", SLUG, env=BEFORE).stdout
    assert "verified by SSH signature" in log and "BEGIN SSH SIGNATURE" not in log
    report = created.parent / "report.html"
    assert run_cli("report", SLUG, "--format", "html", "--out", str(report), env=BEFORE).exit_code == 0
    assert f"Approved by {APPROVER}, verified by SSH signature" in report.read_text(encoding="utf-8")
    events = json.loads(run_cli("log", SLUG, "--json", env=BEFORE).stdout)["events"]
    approve = next(e for e in events if e["action"] == "campaign.approve")
    assert approve["actor"] == APPROVER and approve["detail"]["principal"] == APPROVER
    assert "BEGIN SSH SIGNATURE" in approve["detail"]["signature"]
    assert f"campaign: {SLUG}\nversion: 1\ndigest: sha256:" in approve["detail"]["signed"]

    checked = run_cli("log", SLUG, "--verify", env=BEFORE)
    assert checked.exit_code == 0, checked.output
    assert "2 signature(s) verified, 0 FAILED" in checked.stdout
    assert f"version 1  {APPROVER}: verified" in checked.stdout
    as_json = json.loads(run_cli("log", SLUG, "--verify", "--json", env=BEFORE).stdout)
    assert as_json["failed"] == 0 and [c["verified"] for c in as_json["checks"]] == [True, True]


def test_the_authors_own_signed_approval_is_refused(run_cli: CliRun, engine: Engine, created: Path,
                                                    keys: dict[str, Path]) -> None:
    own = run_cli("approve", SLUG, "--sign", str(keys[AUTHOR]), env=BEFORE)
    assert own.exit_code == 1
    assert f"{AUTHOR} created or last replaced the definition" in own.stderr
    assert approvals(engine) == 0


def test_a_key_not_in_allowed_signers_is_refused(run_cli: CliRun, engine: Engine, created: Path,
                                                 keys: dict[str, Path]) -> None:
    before = table_counts(engine)
    outsider = run_cli("approve", SLUG, "--sign", str(keys[OUTSIDER]), env=BEFORE)
    assert outsider.exit_code == 1
    assert "the key that signed is not in" in outsider.stderr and "No principal matched" in outsider.stderr
    assert "Traceback" not in outsider.output
    assert table_counts(engine) == before


def test_a_signature_for_another_campaign_version_or_text_does_not_count(engine: Engine, created: Path,
                                                                          keys: dict[str, Path]) -> None:
    s = approval.standing_of(engine, SLUG)
    other_digest = "sha256:" + "0" * 64
    for slug, version, digest, why in (("another-campaign", s.version, s.digest, "campaign another-campaign"),
                                       (SLUG, s.version + 1, s.digest, f"version {s.version + 1}"),
                                       (SLUG, s.version, other_digest, f"digest {other_digest}")):
        st = signatures.statement("approve", slug, version, digest)
        signed = signatures.sign(keys[APPROVER], st.text())
        with pytest.raises(NotVerified) as err:
            approval.approve(engine, SLUG, Approver("", "ssh", signed, st.text()))
        assert why in str(err.value)
    # A statement signed by one key and claimed with another's signature does not verify either.
    st = approval.statement_for(engine, SLUG, "approve")
    with pytest.raises(NotVerified):
        approval.approve(engine, SLUG, Approver("", "ssh", signatures.sign(keys[APPROVER], st.text()),
                                                st.text().replace("nonce: ", "nonce: 0")[:-2] + "\n"))
    # A good signature counts once: the same one again is refused.
    good = Approver("", "ssh", signatures.sign(keys[APPROVER], st.text()), st.text())
    assert approval.approve(engine, SLUG, good).action == "approved"
    with pytest.raises(NotVerified, match="recorded already"):
        approval.approve(engine, SLUG, good, revoke=False)
    assert approvals(engine) == 1


def test_an_identity_the_console_verified_counts_and_a_typed_one_does_not(engine: Engine, created: Path) -> None:
    with pytest.raises(NotApproved, match="typed name"):
        approval.approve(engine, SLUG, APPROVER)
    by_console = Approver(APPROVER, "jwt", evidence={"issuer": "https://sso.example.com", "jti": "t-1"})
    done = approval.approve(engine, SLUG, by_console)
    assert done.action == "approved" and done.proof == "jwt"
    s = approval.standing_of(engine, SLUG)
    assert s.approved and s.approvals[0].verified
    assert "verified by the console's single sign-on" in s.words()
    with pytest.raises(NotApproved, match="someone else"):
        approval.approve(engine, SLUG, Approver(AUTHOR, "jwt", evidence={"issuer": "https://sso.example.com"}))


# -- create under verified = true -------------------------------------------------------------------------

def test_create_and_replace_must_be_signed(run_cli: CliRun, engine: Engine, write_file: Callable[..., Path],
                                           keys: dict[str, Path]) -> None:
    write_file("allowed_signers", signers_line(AUTHOR, keys[AUTHOR]) + signers_line(APPROVER, keys[APPROVER]))
    path = write_file("def.toml", definition_text(VERIFIED))
    before = table_counts(engine)
    unsigned = run_cli("create", str(path), env=BEFORE)
    assert unsigned.exit_code == 1
    assert "its author must be proven too" in unsigned.stderr and "--sign" in unsigned.stderr
    assert table_counts(engine) == before
    outsider = run_cli("create", str(path), "--sign", str(keys[OUTSIDER]), env=BEFORE)
    assert outsider.exit_code == 1 and "not in" in outsider.stderr
    assert table_counts(engine) == before

    assert run_cli("create", str(path), "--sign", str(keys[AUTHOR]), env=BEFORE).exit_code == 0
    again = run_cli("create", str(path), "--replace", env=BEFORE)
    assert again.exit_code == 1 and "create FILE --replace --sign" in again.stderr
    dropped = write_file("def2.toml", definition_text("[approval]\nrequired = true\n"))
    dropping = run_cli("create", str(dropped), "--replace", env=BEFORE)
    assert dropping.exit_code == 1 and "cannot drop the rule" in dropping.stderr

    # The approver replaces it, signed: they become its author and cannot approve it; the first author can.
    replaced = run_cli("create", str(path), "--replace", "--sign", str(keys[APPROVER]), env=BEFORE)
    assert replaced.exit_code == 0, replaced.output
    st = approval_status(run_cli)
    assert st["version"] == 2 and st["defined_by"] == APPROVER
    assert run_cli("approve", SLUG, "--sign", str(keys[APPROVER]), env=BEFORE).exit_code == 1
    assert run_cli("approve", SLUG, "--sign", str(keys[AUTHOR]), env=BEFORE).exit_code == 0
    checked = run_cli("log", SLUG, "--verify", env=BEFORE)
    assert checked.exit_code == 0, checked.output
    assert "3 signature(s) verified, 0 FAILED" in checked.stdout


# -- log --verify ------------------------------------------------------------------------------------------

def test_log_verify_fails_on_a_tampered_signature_or_other_allowed_signers(run_cli: CliRun, engine: Engine,
                                                                          created: Path, keys: dict[str, Path],
                                                                          write_file: Callable[..., Path]) -> None:
    assert run_cli("approve", SLUG, "--sign", str(keys[APPROVER]), env=BEFORE).exit_code == 0
    assert run_cli("log", SLUG, "--verify", env=BEFORE).exit_code == 0

    # The regulator's own copy, which lists only someone else: both signatures fail against it.
    other = write_file("regulator_signers", signers_line(OUTSIDER, keys[OUTSIDER]))
    against = run_cli("log", SLUG, "--verify", "--allowed-signers", str(other), env=BEFORE)
    assert against.exit_code == 1
    assert f"{APPROVER}: FAILED" in against.stdout and "0 signature(s) verified, 2 FAILED" in against.stdout

    # The stored approval rewritten to another version's digest: the signature no longer matches what it claims.
    with engine.begin() as conn:
        row = conn.execute(text("SELECT id, detail FROM audit_event WHERE action = 'campaign.approve'")).one()
        detail = json.loads(row.detail)
        good = detail["signed"]
        detail["signed"] = good.replace("nonce: ", "nonce: f")[:-2] + "\n"
        conn.execute(text("UPDATE audit_event SET detail = :d WHERE id = :id"), {"d": json.dumps(detail), "id": row.id})
    tampered = run_cli("log", SLUG, "--verify", env=BEFORE)
    assert tampered.exit_code == 1
    assert f"version 1  {APPROVER}: FAILED — not a valid signature" in tampered.stdout

    # The actor rewritten: the event names someone the signature is not from.
    detail["signed"] = good
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET detail = :d, actor = 'mallory' WHERE id = :id"),
                     {"d": json.dumps(detail), "id": row.id})
    renamed = run_cli("log", SLUG, "--verify", env=BEFORE)
    assert renamed.exit_code == 1 and "the event names mallory" in renamed.stdout

    # The campaign's definition text changed after it was signed: neither the create nor the approval verifies.
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET actor = :a WHERE id = :id"), {"a": APPROVER, "id": row.id})
        conn.execute(text("UPDATE campaign SET definition = definition || '\n# edited\n'"))
    changed = run_cli("log", SLUG, "--verify", "--json", env=BEFORE)
    assert changed.exit_code == 1
    checks = json.loads(changed.stdout)["checks"]
    assert [c["verified"] for c in checks] == [False, False]
    assert all("the signed statement does not match: it signs digest" in c["why"] for c in checks)


# -- clear errors ------------------------------------------------------------------------------------------

def test_a_missing_ssh_keygen_or_an_unreadable_key_is_a_clear_error(run_cli: CliRun, engine: Engine, created: Path,
                                                                   keys: dict[str, Path], tmp_path: Path) -> None:
    before = table_counts(engine)
    no_tool = run_cli("approve", SLUG, "--sign", str(keys[APPROVER]), env={**BEFORE, "PATH": str(tmp_path / "none")})
    assert no_tool.exit_code == 2
    assert "ssh-keygen is not installed" in no_tool.stderr and "openssh-client" in no_tool.stderr
    assert "Traceback" not in no_tool.output
    no_key = run_cli("approve", SLUG, "--sign", str(tmp_path / "no-such-key"), env=BEFORE)
    assert no_key.exit_code == 2 and "the key" in no_key.stderr and "No such file" in no_key.stderr
    folder = run_cli("approve", SLUG, "--sign", str(tmp_path), env=BEFORE)
    assert folder.exit_code == 2 and "is not a regular file" in folder.stderr
    not_a_key = run_cli("approve", SLUG, "--sign", str(created), env=BEFORE)
    assert not_a_key.exit_code == 2 and "ssh-keygen could not sign" in not_a_key.stderr
    gone = run_cli("log", SLUG, "--verify", "--allowed-signers", str(tmp_path / "nope"), env=BEFORE)
    assert gone.exit_code == 2 and "the allowed signers file" in gone.stderr
    assert "Traceback" not in no_key.output + folder.output + not_a_key.output + gone.output
    assert table_counts(engine) == before
