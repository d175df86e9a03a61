"""Which audit events are also webhook events (issue 25 item 2), and what each says: the one mapping from an audit
action to a webhook event type, kept apart from the store so that `store.audit.record` only asks "is this one?"
and writes the outbox row in the same transaction, without knowing the rules.

Pure: no database, no I/O. The payload's shape is the Standard Webhooks one, `{"type", "timestamp", "data"}`,
with the campaign's slug in `data` (added where the row is written)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WAVE_FINISHED, WAVE_PAUSED = "wave.finished", "wave.paused"
STAGE_FINISHED, FLIP_HALTED, FLIP_FINISHED = "flip.stage_finished", "flip.halted", "flip.finished"
APPROVAL_NEEDED, APPROVAL_GIVEN = "approval.needed", "approval.given"
PREFLIGHT_FAILED, CAMPAIGN_DONE = "preflight.failed", "campaign.done"
EVENT_TYPES = (WAVE_FINISHED, WAVE_PAUSED, STAGE_FINISHED, FLIP_HALTED, FLIP_FINISHED, APPROVAL_NEEDED,
               APPROVAL_GIVEN, PREFLIGHT_FAILED, CAMPAIGN_DONE)
ALL = "*"
LISTED_ERRORS = 20  # a preflight's errors in one event, at most (the audit log keeps them all)

# The flip's own events (the staged flip) carry their detail as they are: stage, counts, the reason of a halt.
_AS_IS = {STAGE_FINISHED: STAGE_FINISHED, FLIP_HALTED: FLIP_HALTED, FLIP_FINISHED: FLIP_FINISHED,
          CAMPAIGN_DONE: CAMPAIGN_DONE}


def _pick(detail: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: detail[k] for k in keys if k in detail}


def event_for(action: str, detail: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(event type, its data) when the audit event `action` with `detail` is a webhook event; else None.

    `wave.sent` is written at the end of every `send`, also one that leaves deliveries for later (send windows,
    retries) or a wave that paused: only the one that marked the wave done (`done` in its detail) finishes it.
    A definition that requires approval needs one when it is created or replaced (every approval is void then),
    and again when an approval is withdrawn and none is left."""
    if action == "wave.sent":
        return (WAVE_FINISHED, _pick(detail, "wave", "counts")) if detail.get("done") else None
    if action == "wave.pause":
        return WAVE_PAUSED, _pick(detail, "wave", "reason")
    if action in ("campaign.create", "campaign.replace"):
        if detail.get("approval_required") is not True:
            return None
        return APPROVAL_NEEDED, {"reason": "replaced" if action == "campaign.replace" else "created",
                                 **_pick(detail, "version")}
    if action == "campaign.revoke_approval":
        if detail.get("required") is not True or detail.get("approved") is not False:
            return None
        return APPROVAL_NEEDED, {"reason": "revoked", **_pick(detail, "version")}
    if action == "campaign.approve":
        return APPROVAL_GIVEN, _pick(detail, "version", "digest")
    if action == "preflight.failed":
        errors = detail.get("errors")
        listed = errors[:LISTED_ERRORS] if isinstance(errors, list) else []
        return PREFLIGHT_FAILED, {"errors": listed, "count": len(errors) if isinstance(errors, list) else 0}
    if action in _AS_IS:
        return _AS_IS[action], dict(detail)
    return None


def problem(events: Any) -> str | None:
    """None when `events` is a list of known event types (or `["*"]`); else what is wrong."""
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        return f'must be a non-empty list of event types, or ["*"] for all (types: {", ".join(EVENT_TYPES)})'
    unknown = [e for e in events if e not in (*EVENT_TYPES, ALL)]
    if unknown:
        return f"unknown event type(s) {', '.join(map(repr, unknown))} (types: {', '.join(EVENT_TYPES)}, or \"*\")"
    return None


def _counts(counts: Any) -> str:
    if not isinstance(counts, Mapping):
        return ""
    shown = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    return f": {shown}" if shown else ""


def words(event_type: str, data: Mapping[str, Any]) -> str:
    """The event in one sentence, for a chat message (`format = "slack"`)."""
    slug = data.get("campaign", "?")
    wave = data.get("wave", "?")
    said = {
        WAVE_FINISHED: lambda: f"wave {wave} finished{_counts(data.get('counts'))}",
        WAVE_PAUSED: lambda: f"wave {wave} paused itself: {data.get('reason', 'no reason given')}",
        STAGE_FINISHED: lambda: f"the flip finished stage {data.get('stage', '?')}{_counts(data.get('counts'))}",
        FLIP_HALTED: lambda: f"the flip halted: {data.get('reason', 'no reason given')} "
                             f"(`campaign resume {slug}` or `campaign rollback {slug}`)",
        FLIP_FINISHED: lambda: f"the flip finished{_counts(data.get('counts'))}",
        APPROVAL_NEEDED: lambda: f"needs a second person's approval (definition {data.get('reason', 'changed')}): "
                                 f"`campaign approve {slug}`",
        APPROVAL_GIVEN: lambda: f"approved by {data.get('actor', 'someone')}",
        PREFLIGHT_FAILED: lambda: "the preflight would fail: " + "; ".join(
            str(e.get("message", e)) if isinstance(e, Mapping) else str(e) for e in data.get("errors", [])[:3])
            + (f" (and {data['count'] - 3} more)" if isinstance(data.get("count"), int) and data["count"] > 3 else ""),
        CAMPAIGN_DONE: lambda: "every step has run: the campaign is done",
    }.get(event_type)
    return f"campaign {slug}: {said() if said else event_type}"
