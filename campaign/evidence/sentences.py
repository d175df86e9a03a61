"""The campaign's audit events in sentences, for the HTML report's timeline: a product manager or a regulator reads
"Approved by bob (definition version 2, sha256 1a2b3c4d5e6f…)" where the log says `version=2; digest=sha256:…`.
Every action the campaign records has its own wording; one we do not know yet (a newer version's) still reads as
words, never as `key=value`. A digest is cut to its first 12 hex digits: enough to tell two apart on paper."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from campaign.cutoff import approval
from campaign.wording import duration

DIGEST = re.compile(r"\b(?:sha256:)?([0-9a-f]{12})[0-9a-f]{28,}\b")
STEP_AT = re.compile(r"^(?P<step>\S+) at (?P<at>\S+)$")


@dataclass(frozen=True)
class Said:
    """An event in words: what happened (a short line) and its detail (a sentence, or empty)."""

    what: str
    detail: str


@dataclass(frozen=True)
class Setting:
    """What the words of the flip and its rollback name: the setting, its old and its new value."""

    name: str
    from_value: str
    to_value: str


def short(text: str) -> str:
    """Every digest in `text` cut to its first 12 hex digits and an ellipsis."""
    return DIGEST.sub(lambda m: ("sha256 " if m.group(0).startswith("sha256:") else "") + f"{m.group(1)}…", text)


def when(value: Any) -> str:
    """An ISO 8601 instant as the report writes times (`2025-03-28 07:00 UTC`); anything else as it is."""
    try:
        t = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return f"{t.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def n(value: Any) -> str:
    return f"{int(value or 0):,}"


def plural(count: Any, one: str, many: str | None = None) -> str:
    k = int(count or 0)
    return f"{k:,} {one if k == 1 else (many or one + 's')}"


def listed(items: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def joined(parts: list[str]) -> str:
    """Sentence parts that are not empty, as one sentence with its full stop."""
    text = "; ".join(p for p in parts if p)
    return f"{text[0].upper()}{text[1:]}." if text else ""


def step_words(step: str) -> str:
    """A scheduler step in words: `wave:notice` is the notice wave, `flip` the flip."""
    if step.startswith("wave:"):
        return f"the {step.removeprefix('wave:')} wave"
    if step.startswith("flip:"):
        return f"stage {step.removeprefix('flip:')} of the flip"
    return "the flip" if step == "flip" else f"the step {step}"


def _version(d: Mapping[str, Any]) -> str:
    digest = short(str(d.get("digest", ""))) if d.get("digest") else ""
    return ", ".join(p for p in (f"definition version {d['version']}" if d.get("version") else "", digest) if p)


def _created(d: Mapping[str, Any], s: Setting, replaced: bool) -> Said:
    source = PurePath(str(d["source"])).name if d.get("source") else ""
    waves = d.get("waves") or []
    parts = [f"from the file {source}" if source else "",
             f"cutoff {when(d['cutoff'])}" if d.get("cutoff") else "",
             f"waves {listed(waves)}" if waves else "",
             "a second person's approval is required" if d.get("approval_required") else ""]
    if replaced:
        parts.append("approvals given to an earlier version no longer count")
    return Said("Definition replaced" if replaced else "Campaign created", joined(parts))


def _scheduled(d: Mapping[str, Any], s: Setting) -> Said:
    steps = []
    for item in d.get("steps") or []:
        m = STEP_AT.match(str(item))
        steps.append(f"{step_words(m['step'])} at {when(m['at'])}" if m else str(item))
    approved = d.get("approved_by") or []
    return Said("Scheduled", joined([
        f"{plural(d.get('rendered'), 'message')} rendered without an error" if "rendered" in d else "",
        f"planned: {listed(steps)}" if steps else "",
        f"approved by {listed(approved)} ({_version(d)})" if approved else ""]))


def _test_send(d: Mapping[str, Any], s: Setting) -> Said:
    to = [str(a) for a in d.get("to") or []]
    shown = listed(to[:3] + ([f"{len(to) - 3} more"] if len(to) > 3 else [])) if to else ""
    return Said("Test messages sent", joined([
        f"{n(d.get('sent'))} of {plural(d.get('messages'), 'test message')} accepted" if "messages" in d else "",
        f"to {shown}" if shown else "", "rendered for real accounts (--real-sample)" if d.get("real_sample") else ""]))


def _wave_send(d: Mapping[str, Any], s: Setting) -> Said:
    ahead = int(d.get("ahead_seconds") or 0)
    return Said(f"Sending the {d.get('wave', '')} wave".rstrip(), joined([
        f"{plural(d.get('added'), 'recipient')} added to the ledger" if d.get("added") else
        "no recipient to add to the ledger (the wave's ledger was complete)",
        "outside the recipients' send window too (asked for)" if d.get("ignore_window") else "",
        f"started {duration(ahead)} ahead of the wave's time" if ahead else "",
        "before an earlier wave to the affected was sent (asked for)" if d.get("out_of_order") else ""]))


STATE_WORDS = {"sent": "sent", "pending": "still to send", "sending": "being sent", "failed": "failed",
               "bounced": "bounced", "suppressed": "suppressed (never mailed)",
               "skipped": "skipped (left the audience)", "expired": "expired"}


def _wave_sent(d: Mapping[str, Any], s: Setting) -> Said:
    """The end of a send run: the wave's totals then (sent so far, while some wait for their window or a retry)."""
    counts = d.get("counts") or {}
    sent = int(counts.get("sent", 0))
    waiting = int(counts.get("pending", 0)) + int(counts.get("sending", 0))
    others = [f"{n(v)} {STATE_WORDS.get(k, k.replace('_', ' '))}" for k, v in counts.items() if k != "sent" and v]
    return Said(f"Wave {d.get('wave', '')} {'sending' if waiting else 'sent'}: {plural(sent, 'message')}"
                f"{' so far' if waiting else ''}", joined([
                    f"{plural(d.get('attempted'), 'delivery attempt')} in this run" if "attempted" in d else "",
                    f"the wave's other recipients: {listed(others)}" if others else ""]))


def _flip(d: Mapping[str, Any], s: Setting) -> Said:
    parts = [f"{plural(d.get('changed'), 'device')} switched to {s.to_value}" if d.get("changed") else
             "no device switched",
             f"{n(d['held_back'])} held back (no delivered notice)" if d.get("held_back") else "",
             f"{n(d['waiting'])} waiting for fair notice" + (f", the first until {when(d['next_due'])}"
                                                            if d.get("next_due") else "") if d.get("waiting") else "",
             f"in {plural(d.get('batches'), 'batch', 'batches')}" if d.get("batches") else "",
             "run before the cutoff (asked for)" if d.get("before_cutoff") else "",
             "devices of accounts never told switched too (asked for)" if d.get("include_unnotified") else "",
             _apply(d.get("apply"))]
    return Said(f"Flip: {plural(d.get('changed'), 'device')} switched", joined(parts))


def _rollback(d: Mapping[str, Any], s: Setting) -> Said:
    return Said(f"Rollback: {plural(d.get('rolled_back'), 'device')} put back", joined([
        f"{plural(d.get('rolled_back'), 'device')} back to {s.from_value}",
        f"{n(d['left'])} left alone: their owners chose another setting since" if d.get("left") else "",
        f"in {plural(d.get('batches'), 'batch', 'batches')}" if d.get("batches") else "",
        _apply(d.get("apply"))]))


def _apply(a: Any) -> str:
    """What the settings service did, when the change went through it (`[apply] kind = "http"`)."""
    if not isinstance(a, Mapping):
        return ""
    parts = [f"{n(a.get('applied'))} applied by the settings service",
             f"{n(a['left'])} refused there (the device held another value)" if a.get("left") else "",
             f"{n(a['unknown_device'])} unknown to it" if a.get("unknown_device") else "",
             f"{n(a['waiting'])} still waiting for it" if a.get("waiting") else "",
             f"stopped: {a['paused']}" if a.get("paused") else "",
             f"no answer: {a['unavailable']}" if a.get("unavailable") else ""]
    return ", ".join(p for p in parts if p)


def _approved(d: Mapping[str, Any], s: Setting, actor: str) -> Said:
    by = f", written by {d['defined_by']}" if d.get("defined_by") else ""
    how = f", verified by {approval.PROOFS.get(d['proof'], d['proof'])}" if d.get("proof") else ""
    return Said(f"Approved by {actor}{how}", joined([f"{_version(d)}{by}",
                                                "" if d.get("required", True) else
                                                "the definition does not require it (recorded all the same)"]))


def _preflight_failed(d: Mapping[str, Any], s: Setting) -> Said:
    errors = d.get("errors") or []
    said = [f"{e.get('message', '')} ({e.get('code', '')})" if isinstance(e, Mapping) else str(e) for e in errors]
    return Said("The scheduler's preflight found what would fail", joined([
        f"{plural(len(errors), 'problem')}: {' · '.join(said)}" if said else ""]))


def _bounces(d: Mapping[str, Any], s: Setting) -> Said:
    return Said("Returned mail taken in", joined([
        f"{plural(d.get('bounced'), 'message')} of this campaign bounced" if d.get("bounced") else "",
        f"{n(d['failed'])} could not be delivered" if d.get("failed") else "",
        f"{plural(d['suppressed'], 'address', 'addresses')} suppressed" if d.get("suppressed") else "",
        "a bounce makes its notice count as not told"]))


def _fixed(what: str, detail: str) -> Callable[[Mapping[str, Any], Setting], Said]:
    return lambda d, s: Said(what, detail)


WORDS: dict[str, Callable[[Mapping[str, Any], Setting], Said]] = {
    "campaign.create": lambda d, s: _created(d, s, False),
    "campaign.replace": lambda d, s: _created(d, s, True),
    "campaign.schedule": _scheduled,
    "campaign.test_send": _test_send,
    "campaign.preview_real_sample": lambda d, s: Said("Previews of real accounts' messages written", joined([
        f"{plural(d.get('messages'), 'message')} (--real-sample) in {d.get('out', 'a folder')}"])),
    "campaign.pause": _fixed("Paused", "Sending stops until someone resumes the campaign."),
    "campaign.resume": _fixed("Resumed", "Sending may go on."),
    "campaign.cancel": lambda d, s: Said("Cancelled", joined([
        "nothing more is sent and the flip will not run",
        f"{plural(d.get('steps_cancelled'), 'planned step')} removed" if "steps_cancelled" in d else ""])),
    "campaign.unschedule": lambda d, s: Said("Taken back to draft", joined([
        f"{plural(d.get('steps_dropped'), 'step')} not yet run dropped",
        "approvals void, so that the cutoff may move; nobody already told is told twice"])),
    "campaign.done": _fixed("Done", "Every step has run: the campaign is finished."),
    "campaign.revoke_approval": lambda d, s: Said("Approval withdrawn", joined([_version(d)])),
    "wave.send": _wave_send,
    "wave.sent": _wave_sent,
    "wave.expire": lambda d, s: Said(f"Wave {d.get('wave', '')} expired", joined([
        f"{plural(d.get('expired'), 'message')} not sent by then will never be"])),
    "wave.pause": lambda d, s: Said(f"Wave {d.get('wave', '')} paused itself", joined([
        f"why: {d['reason']}" if d.get("reason") else "", "`campaign resume` goes on once the cause is fixed"])),
    "flip": _flip,
    "flip.stage_finished": lambda d, s: Said(f"Flip stage {d.get('stage', '')} ({d.get('percent', '')}) finished",
                                             joined([f"{plural(d.get('changes'), 'device')} decided to switch",
                                                     f"{n(d.get('conflicts'))} conflict(s) at the settings service",
                                                     f"{n(d.get('errors'))} of {plural(d.get('requests'), 'request')}"
                                                     " failed", f"{plural(d.get('complaints'), 'complaint')} since "
                                                     "it began"])),
    "flip.halted": lambda d, s: Said(f"Flip halted at stage {d.get('stage', '')} ({d.get('percent', '')})", joined([
        f"{str(d.get('guard', '')).replace('_', ' ')} {d.get('measured')} reached the threshold {d.get('threshold')}",
        "nothing more is switched until someone resumes the campaign or rolls the flip back"])),
    "flip.finished": lambda d, s: Said("Flip finished", joined([
        f"every one of its {d.get('stages')} stages ran" if d.get("stages") != 1 else "its one run went to its end",
        "devices waiting for fair notice are switched as it runs out"
        if int((d.get("counts") or {}).get("waiting") or 0) else ""])),
    "rollback": _rollback,
    "bounces.import": _bounces,
    "preflight.failed": _preflight_failed,
    "preflight.passed": _fixed("The scheduler's preflight passes again", "What it found earlier is gone."),
}


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float):
        return f"{v:,}"
    if isinstance(v, Mapping):
        inner = [f"{_value(iv)} {str(ik).replace('_', ' ')}" for ik, iv in v.items() if iv not in (0, None, "")]
        return listed(inner) if inner else "none"
    if isinstance(v, list | tuple):
        return listed([_value(x) for x in v]) if v else "none"
    return str(v)


def generic(action: str, d: Mapping[str, Any]) -> Said:
    """An action this version has no words for: its name, and each detail as `what: value` in words."""
    parts = [f"{str(k).replace('_', ' ')}: {_value(v)}" for k, v in d.items() if v not in (None, "", [], {})]
    return Said(f"Recorded: {action.replace('_', ' ')}", joined(parts))


def say(action: str, actor: str, detail: Mapping[str, Any], setting: Setting) -> Said:
    """The event in words; every digest in it cut short."""
    if action == "campaign.approve":
        said = _approved(detail, setting, actor)
    else:
        words = WORDS.get(action)
        said = words(detail, setting) if words is not None else generic(action, detail)
    return Said(short(said.what), short(said.detail))
