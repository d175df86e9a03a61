"""SSH signatures for approvals that anyone can check offline (`[approval] verified = true`): OpenSSH's
`ssh-keygen -Y sign / verify / find-principals` does the cryptography, against an allowed-signers file in git's
format; this module only runs it safely. Each run is a subprocess without a shell, its arguments a list (paths made
absolute, so that none reads as an option), with a deadline, its input bounded and its output read only so far.

What is signed is a `Statement`: the action, the campaign's slug, the definition's version and SHA-256 digest, and a
nonce — so a signature cannot be replayed onto another campaign, another version or another text, nor recorded twice.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from campaign.errors import CampaignError, UsageError
from campaign.validation import check_actor, escape_controls

NAMESPACE = "campaign-approval"  # ssh-keygen -n: a signature made for git or another tool never verifies here
HEADER = "campaign-approval v1"
ACTIONS = ("approve", "revoke", "define")  # define: a `create` or `create --replace`, signed by its author
SIGN_DEADLINE = 120.0  # long enough to type a key's passphrase at the terminal
CHECK_DEADLINE = 20.0
MAX_OUTPUT = 64 * 1024  # ssh-keygen says a line or two; more is read no further
MAX_SIGNATURE = 16 * 1024  # an armored ed25519 signature is ~300 bytes, RSA-4096 ~900
MAX_STATEMENT = 4 * 1024
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


class SignatureError(UsageError):
    """ssh-keygen, a key or an allowed-signers file cannot be used: what failed, and what to do (exit 2)."""

    code = "signature"


class NotVerified(CampaignError):
    """A signature does not verify (a key not in the allowed signers, another text, another namespace), or the
    statement it signs is not the one expected: the why, in ssh-keygen's words or ours."""

    code = "not_verified"


@dataclass(frozen=True)
class Statement:
    """The exact text a person signs: what they do, to which campaign, which version of its definition and which
    text (its digest), with a nonce of their signature's own."""

    action: str
    campaign: str
    version: int
    digest: str
    nonce: str

    def text(self) -> str:
        return (f"{HEADER}\naction: {self.action}\ncampaign: {self.campaign}\nversion: {self.version}\n"
                f"digest: {self.digest}\nnonce: {self.nonce}\n")

    @classmethod
    def parse(cls, text: str) -> Statement:
        """Read a signed statement back; NotVerified when it is not one we write (another tool's text)."""
        lines = text.split("\n")
        if len(text) > MAX_STATEMENT or lines[0] != HEADER or lines[-1] != "" or len(lines) != 7:
            raise NotVerified("the signed text is not a campaign approval statement")
        fields = dict(line.partition(": ")[::2] for line in lines[1:-1])
        action, slug = fields.get("action", ""), fields.get("campaign", "")
        version, digest, nonce = fields.get("version", ""), fields.get("digest", ""), fields.get("nonce", "")
        if (action not in ACTIONS or not SLUG_RE.match(slug) or not version.isdigit() or not DIGEST_RE.match(digest)
                or not NONCE_RE.match(nonce)):
            raise NotVerified("the signed text is not a campaign approval statement")
        return cls(action, slug, int(version), digest, nonce)

    def mismatch(self, action: str, campaign: str, version: int, digest: str) -> str | None:
        """None when this statement is about exactly that; else what differs, in words."""
        for name, mine, wanted in (("action", self.action, action), ("campaign", self.campaign, campaign),
                                   ("version", self.version, version), ("digest", self.digest, digest)):
            if mine != wanted:
                return f"it signs {name} {mine}, not {wanted}"
        return None


def statement(action: str, campaign: str, version: int, digest: str) -> Statement:
    """A fresh statement to sign (a new nonce each time)."""
    return Statement(action, campaign, version, digest, secrets.token_hex(16))


def keygen() -> str:
    """The ssh-keygen on PATH."""
    found = shutil.which("ssh-keygen")
    if found is None:
        raise SignatureError("ssh-keygen is not installed (or not on PATH): signed approvals need OpenSSH's "
                             "ssh-keygen 8.2 or later (Debian/Ubuntu: apt-get install openssh-client)")
    return found


def regular_file(path: Path, what: str) -> Path:
    """`path` made absolute, when it is a regular file this process can read; else SignatureError naming it."""
    full = path.expanduser().absolute()
    try:
        mode = full.stat().st_mode
    except OSError as exc:
        raise SignatureError(f"{what} {full}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise SignatureError(f"{what} {full} is not a regular file")
    if not os.access(full, os.R_OK):
        raise SignatureError(f"{what} {full} cannot be read (permission denied)")
    return full


def _run(args: list[str], what: str, deadline: float, data: bytes | None = None,
         stdin_tty: bool = False) -> tuple[int, str, str]:
    """Run ssh-keygen: its exit code, stdout and stderr (each read no further than MAX_OUTPUT). `stdin_tty` lets
    it ask for a key's passphrase at the terminal when there is one; otherwise it reads nothing but `data`."""
    exe = keygen()
    inherit = data is None and stdin_tty and os.isatty(0)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            if data is not None:
                proc = subprocess.run([exe, *args], input=data, stdout=out, stderr=err, timeout=deadline,
                                      check=False)
            else:
                proc = subprocess.run([exe, *args], stdin=None if inherit else subprocess.DEVNULL, stdout=out,
                                      stderr=err, timeout=deadline, check=False)
        except subprocess.TimeoutExpired:
            raise SignatureError(f"ssh-keygen did not finish {what} within {deadline:g} s") from None
        except OSError as exc:
            raise SignatureError(f"ssh-keygen could not be run for {what}: {exc.strerror or exc}") from None
        said = []
        for f in (out, err):
            f.seek(0)
            said.append(f.read(MAX_OUTPUT).decode("utf-8", "replace"))
    return proc.returncode, said[0], said[1]


def _said(rc: int, *texts: str) -> str:
    """What ssh-keygen said, on one escaped line (its words name the cause: 'No principal matched', …)."""
    words = " / ".join(" ".join(t.split()) for t in texts if t.strip())
    return escape_controls(words) or f"ssh-keygen exit {rc}"


def sign(key: Path, text: str) -> str:
    """Sign `text` with the private key at `key` (or the agent's, given its .pub); the armored signature."""
    key = regular_file(key, "the key")
    with tempfile.TemporaryDirectory(prefix="campaign-sign-") as tmp:
        message = Path(tmp) / "statement"
        message.write_text(text, encoding="utf-8")
        rc, out, err = _run(["-Y", "sign", "-n", NAMESPACE, "-f", str(key), str(message)], "signing",
                            SIGN_DEADLINE, stdin_tty=True)
        sig = message.with_name("statement.sig")
        if rc != 0 or not sig.is_file():
            said = _said(rc, out, err.replace("Signing file " + str(message), ""))
            hint = ("; a key with a passphrase needs a terminal, or `ssh-add` it to the agent and pass its .pub"
                    if "passphrase" in said.lower() else
                    " (a private SSH key is needed, or the .pub of a key that ssh-agent holds)")
            raise SignatureError(f"ssh-keygen could not sign with {key}: {said}{hint}")
        return sig.read_text(encoding="ascii")


def _signature_file(tmp: str, signature: str) -> Path:
    if len(signature) > MAX_SIGNATURE or "-----BEGIN SSH SIGNATURE-----" not in signature:
        raise NotVerified("the signature is not an armored SSH signature")
    path = Path(tmp) / "statement.sig"
    path.write_text(signature, encoding="ascii", errors="replace")
    return path


def principals(allowed_signers: Path, signature: str) -> list[str]:
    """Who in `allowed_signers` holds the key that made `signature` (not yet whether it signs what it claims)."""
    allowed = regular_file(allowed_signers, "the allowed signers file")
    with tempfile.TemporaryDirectory(prefix="campaign-verify-") as tmp:
        sig = _signature_file(tmp, signature)
        rc, out, err = _run(["-Y", "find-principals", "-s", str(sig), "-f", str(allowed)], "finding the signer",
                            CHECK_DEADLINE)
    if rc != 0:
        raise NotVerified(f"the key that signed is not in {allowed} ({_said(rc, out, err)})")
    return [p.strip() for line in out.splitlines() for p in line.split(",") if p.strip()]


def verify(allowed_signers: Path, principal: str, text: str, signature: str) -> None:
    """`signature` is `principal`'s, by `allowed_signers`, over exactly `text` in our namespace; else NotVerified
    saying why."""
    allowed = regular_file(allowed_signers, "the allowed signers file")
    if len(text) > MAX_STATEMENT:
        raise NotVerified("the signed text is too long to be a campaign approval statement")
    with tempfile.TemporaryDirectory(prefix="campaign-verify-") as tmp:
        sig = _signature_file(tmp, signature)
        rc, out, err = _run(["-Y", "verify", "-n", NAMESPACE, "-I", principal, "-f", str(allowed), "-s", str(sig)],
                            "verifying", CHECK_DEADLINE, data=text.encode("utf-8"))
    if rc != 0:
        raise NotVerified(f"not a valid signature of {principal} by {allowed} ({_said(rc, out, err)})")


def signer(allowed_signers: Path, text: str, signature: str) -> str:
    """The principal of `allowed_signers` whose key made `signature` over `text`: the signer's proven identity."""
    found = principals(allowed_signers, signature)
    why = "no principal"
    for p in found:
        try:
            name = check_actor(p)
        except ValueError as exc:
            why = str(exc)
            continue
        try:
            verify(allowed_signers, name, text, signature)
        except NotVerified as exc:
            why = str(exc)
            continue
        return name
    raise NotVerified(why)
