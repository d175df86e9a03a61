"""The HTML report: one self-contained page (inline CSS and SVG, no script, no outside resource) that answers first
the question a product team and a regulator ask — of the affected people, how many were told before the cutoff,
and in time? — then shows the sends and the flip over time on one axis, the outcomes by wave and by locale, the
flip, and the campaign's timeline in sentences. Every figure and legend item carries words saying what it means:
the page is read on paper too, where a tooltip is lost.

`html_data` reads it as plain values, in aggregates whatever the audience's size (the coverage is `status`'s own
`notice_coverage`); `view` words them (numbers formatted, times worded, the charts placed by `charts`, the events
told by `sentences`); `campaign/pages/report.html.j2` lays them out, and Jinja2's autoescape escapes every one."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from campaign import campaigns, db, pages
from campaign.cutoff import approval
from campaign.definition import NOTICES
from campaign.evidence import charts, sentences, stage_status
from campaign.evidence.auditlog import entry
from campaign.evidence.status import approval_json, coverage_json
from campaign.evidence.words import HELD_BACK_WHY, iso
from campaign.models import CHANGE_STATES, DELIVERY_STATES
from campaign.store import audit, steps
from campaign.store import campaigns as campaign_store
from campaign.store import changes as change_store
from campaign.store import evidence as store
from campaign.wording import duration

STATE_COLOURS = {"sent": "#2e7d32", "pending": "#9e9e9e", "sending": "#64b5f6", "failed": "#c62828",
                 "bounced": "#ef6c00", "suppressed": "#6a1b9a", "skipped": "#b0bec5", "expired": "#8d6e63"}
STATE_MEANING = {
    "pending": "waiting to be sent: for the wave's time, the recipient's send window, or a retry",
    "sending": "being sent by a worker right now",
    "sent": "accepted by the recipient's mail server (and not returned since)",
    "failed": "not delivered after every retry",
    "bounced": "returned by the recipient's mail server, at once or later; the address is suppressed",
    "suppressed": "never mailed: the address is on the suppression list",
    "skipped": "not mailed: the account left the wave's audience before its turn",
    "expired": "not sent before the wave expired; never sent after that"}
CHANGE_LABELS = {"changed": "switched", "held_back": "held back", "waiting": "waiting for fair notice",
                 "rolled_back": "rolled back", "left": "left as its owner set it"}
CHANGE_COLOURS = {"changed": "#2e7d32", "held_back": "#c62828", "waiting": "#f9a825", "rolled_back": "#1565c0",
                  "left": "#8d6e63"}
COVERAGE_COLOURS = {"in_time": "#2e7d32", "late": "#9ccc65", "bounced": "#ef6c00", "failed": "#c62828",
                    "suppressed": "#6a1b9a", "never_sent": "#9e9e9e"}
CAMPAIGN_STATE_WORDS = {"draft": "not scheduled yet", "scheduled": "its steps wait for their time",
                        "paused": "nothing is sent until someone resumes it",
                        "cancelled": "nothing more is sent and the flip will not run",
                        "done": "every step has run"}
WAVE_STATE_WORDS = {"waiting": "not sent yet", "sending": "sending", "paused": "paused", "done": "sent",
                    "cancelled": "cancelled"}
AUDIENCE_WORDS = {"affected": "to the accounts still affected",
                  "changed": "to the accounts whose devices were switched", "all": "to every account of the audience"}


@dataclass(frozen=True)
class Tile:
    """A figure with its label and what it means, edged in a colour; `figure` names it for a program."""

    label: str
    value: str
    colour: str
    meaning: str
    figure: str = ""


@dataclass(frozen=True)
class Part:
    """One part of a stacked bar, as wide (in percent) as its share of the whole."""

    label: str
    count: str
    width: str
    colour: str


@dataclass(frozen=True)
class Bar:
    """A horizontal bar of parts; `label` says it in words (for a screen reader)."""

    label: str
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Coverage:
    """The answer first: a sentence, its figures, the bar of who was told and why the others were not."""

    sentence: str
    rest: str
    tiles: tuple[Tile, ...]
    bar: Bar
    keys: tuple[charts.Key, ...]


@dataclass(frozen=True)
class Row:
    name: str
    cells: tuple[tuple[str, bool], ...]  # (count, whether it is zero)
    total: str


@dataclass(frozen=True)
class Table:
    """Counts by state: only the states that occur (the first of them when none does), with a total."""

    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    keys: tuple[charts.Key, ...]  # what each column's state means


@dataclass(frozen=True)
class WaveView:
    name: str
    line: str  # when it was due and expires, to whom, its state, in words
    paused_reason: str | None
    bar: Bar


@dataclass(frozen=True)
class Share:
    """A locale × wave cell: sent of the deliveries in the ledger, and the other outcomes in words."""

    sent: str
    total: str
    width: str
    other: str


@dataclass(frozen=True)
class LocaleRow:
    locale: str
    cells: tuple[Share | None, ...]  # None: no delivery of that wave


@dataclass(frozen=True)
class FlipView:
    tiles: tuple[Tile, ...]
    bar: Bar
    devices: str
    accounts: str
    held_back: tuple[tuple[str, str], ...]  # (count, why)
    waiting: str | None  # how many wait for fair notice, if any do
    next_due: str
    last_due: str
    rolled_back_at: str | None
    ran: bool
    stages: tuple[str, ...] = ()  # [flip] stages: each in a few words (stage_status.line)
    halted: str | None = None  # why the staged flip is halted


@dataclass(frozen=True)
class Moment:
    """A line of the timeline: an audit event, the cutoff, or a step the scheduler has still to run."""

    kind: str  # "event", "cutoff" or "planned"
    at: str
    who: str
    what: str
    detail: str


@dataclass(frozen=True)
class Report:
    """Everything the page shows, worded."""

    campaign: str
    name: str
    generated: str
    lede: str  # what the campaign does, in a sentence
    state: str
    state_words: str
    created: str
    created_by: str
    approval: str | None  # who approved which version, or that an approval is missing
    coverage: Coverage
    ledger_accounts: str
    chart: charts.Chart | None
    flip_chart: charts.FlipChart | None
    waves: tuple[WaveView, ...]
    wave_table: Table
    wave_names: tuple[str, ...]
    locales: tuple[LocaleRow, ...]
    flip: FlipView
    timeline: tuple[Moment, ...]


def _t(iso: str | None) -> dt.datetime | None:
    return None if iso is None else dt.datetime.fromisoformat(iso)


def _when(iso: str | None) -> str:
    t = _t(iso)
    return "—" if t is None else f"{t.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def _n(n: int) -> str:
    return f"{n:,}"


def share(part: int, whole: int) -> str:
    """`part` of `whole` in percent with one decimal, never rounded up to 100 % nor down to 0 % while it is not."""
    if whole <= 0:
        return "—"
    p = round(100 * part / whole, 1)
    if part < whole and p >= 100:
        p = 99.9
    if part > 0 and p <= 0:
        p = 0.1
    return f"{p:.1f} %"


def _stacked(parts: list[tuple[str, int, str]], total: int) -> Bar:
    """A horizontal bar of (label, count, colour) parts, each as wide as its share."""
    if total <= 0:
        return Bar("nothing yet", ())
    shown = [(label, n, c) for label, n, c in parts if n]
    return Bar(", ".join(f"{label} {_n(n)}" for label, n, _ in shown),
               tuple(Part(label, _n(n), f"{100 * n / total:.3f}", c) for label, n, c in shown))


def _notice_words(seconds: float | None) -> str:
    """`7 days' notice`, `1 day's notice`."""
    if not seconds:
        return ""
    words = duration(seconds)
    return f"{words}' notice" if words.endswith("s") else f"{words}'s notice"


def _coverage(data: dict[str, Any]) -> Coverage:
    """The coverage headline: who of the affected accounts was told before the cutoff, and in time."""
    c = data["coverage"]
    affected, told, in_time = c["affected_accounts"], c["told_before_cutoff"], c["told_in_time"]
    why = c["not_told"]
    before = dt.datetime.fromisoformat(data["generated_at"]) < dt.datetime.fromisoformat(data["cutoff"])
    notice = _notice_words(data["min_notice_seconds"])
    fair = duration(data["min_notice_seconds"]) if notice else ""
    untold, late = affected - told, told - in_time
    # who of the affected is where: the bar's parts, its keys and the words (label, count, colour, meaning)
    parts = [("told in time", in_time, "in_time",
              f"told at least {fair} before the cutoff" if notice else "told before the cutoff"),
             ("told late", late, "late", f"told before the cutoff, but less than {fair} before it"),
             ("bounced", why["bounced"], "bounced", "their notice came back from their mail server (at once or later)"),
             ("failed", why["failed"], "failed", "their notice could not be delivered after every retry"),
             ("suppressed", why["suppressed"], "suppressed", "never mailed: their address was on the suppression list"),
             ("never sent a notice", why["never_sent"], "never_sent",
              "no notice went out to them before the cutoff (a wave not sent yet, or affected after it went)")]
    if not notice:
        del parts[1]
    not_told = ", ".join(f"{_n(k)} {label}" for label, k, _, _ in parts[-4:] if k)
    if affected == 0:
        sentence, rest = ("No account is affected yet." if before else "No account was affected."), ""
    else:
        timing = (f"{share(in_time, affected)} in time ({notice})" if notice else
                  "no minimum notice is set, so each of them was told in time")
        sentence = (f"{share(told, affected)} of the {_n(affected)} affected account{'s' if affected != 1 else ''} "
                    f"{'have been told so far' if before else 'were told before the cutoff'}; {timing}.")
        rest = (f"{_n(untold)} {'not told yet' if before else 'were not told'}: {not_told}." if untold else
                "Every affected account was told.")
    if late:
        rest += (f" {_n(late)} {'was' if late == 1 else 'were'} told less than {fair} before the cutoff: fair notice "
                 "switches their devices that long after their notice.")
    tiles = (
        Tile("affected accounts", _n(affected), "#1565c0",
             f"accounts with a device set to {data['from']}: the waves to the affected tried to tell them (but not "
             "those who left the audience before their turn), the flip looked at them, or they are affected now",
             "affected_accounts"),
        Tile("told before the cutoff", f"{_n(told)} · {share(told, affected)}", COVERAGE_COLOURS["in_time"],
             "a notice of a wave to the affected was accepted by their mail server before the cutoff, and not "
             "returned later (a late bounce un-tells)", "told_before_cutoff"),
        Tile("told in time", f"{_n(in_time)} · {share(in_time, affected)}", COVERAGE_COLOURS["in_time"],
             f"told at least {fair} before the cutoff (the definition's minimum notice)" if notice else
             "the definition sets no minimum notice: the same as told before the cutoff", "told_in_time"),
        Tile("not told", f"{_n(untold)} · {share(untold, affected)}", COVERAGE_COLOURS["failed"],
             f"by why: {not_told}" if not_told else "nobody", "not_told"),
    )
    return Coverage(sentence, rest.strip(), tiles,
                    _stacked([(label, k, COVERAGE_COLOURS[key]) for label, k, key, _ in parts], affected),
                    tuple(charts.Key(f"{label} · {_n(k)}", COVERAGE_COLOURS[key], meaning)
                          for label, k, key, meaning in parts))


def _counts_table(rows: list[tuple[str, dict[str, int]]]) -> Table:
    shown = [s for s in DELIVERY_STATES if any(c.get(s, 0) for _, c in rows)] or list(DELIVERY_STATES[:1])
    return Table(tuple(s.replace("_", " ") for s in shown),
                 tuple(Row(name, tuple((_n(counts.get(s, 0)), not counts.get(s, 0)) for s in shown),
                           _n(sum(counts.values()))) for name, counts in rows),
                 tuple(charts.Key(s, STATE_COLOURS[s], STATE_MEANING[s]) for s in shown))


def _wave_meaning(w: dict[str, Any]) -> str:
    return f"{AUDIENCE_WORDS.get(w['audience'], 'to ' + w['audience'])}, due {_when(w['at'])}"


def _waves(data: dict[str, Any]) -> tuple[WaveView, ...]:
    views = []
    for w in data["waves"]:
        counts = w["counts"]
        total = sum(counts.values())
        bar = _stacked([(s, counts.get(s, 0), STATE_COLOURS[s]) for s in DELIVERY_STATES], total)
        line = (f"{AUDIENCE_WORDS.get(w['audience'], 'to ' + w['audience'])}; due {_when(w['at'])}, expires "
                f"{_when(w['expires'])}; {WAVE_STATE_WORDS.get(w['state'], w['state'])}; {_n(total)} "
                f"recipient{'s' if total != 1 else ''} in the ledger, {_n(counts.get('sent', 0))} sent")
        views.append(WaveView(w["name"], line, w["paused_reason"] or None, bar))
    return tuple(views)


def _locales(data: dict[str, Any]) -> tuple[LocaleRow, ...]:
    by = data["by_locale"]
    rows = []
    for loc in sorted(by):
        cells: list[Share | None] = []
        for w in data["waves"]:
            c = by[loc].get(w["name"], {})
            total, sent = sum(c.values()), c.get("sent", 0)
            other = ", ".join(f"{s} {_n(n)}" for s, n in sorted(c.items()) if s != "sent" and n)
            cells.append(Share(_n(sent), _n(total), f"{100 * sent / total:.1f}", other) if total else None)
        rows.append(LocaleRow(loc, tuple(cells)))
    return tuple(rows)


def _change_meaning(data: dict[str, Any]) -> dict[str, str]:
    fair = duration(data["min_notice_seconds"]) if data["min_notice_seconds"] else "the minimum notice"
    return {"changed": f"switched to {data['to']} by the flip, and still so",
            "held_back": f"not switched: {HELD_BACK_WHY} (require_notice)",
            "waiting": f"waiting for fair notice: switched {fair} after the account's late notice",
            "rolled_back": f"switched, then put back to {data['from']} by the rollback",
            "left": "switched, then left alone by the rollback: its owner chose another setting since"}


def _flip(data: dict[str, Any]) -> FlipView:
    flip = data["flip"]
    total = sum(flip.values())
    meaning = _change_meaning(data)
    shown = [s for s in CHANGE_STATES if s in ("changed", "held_back") or flip.get(s, 0)]
    return FlipView(
        tiles=tuple(Tile(CHANGE_LABELS[s], _n(flip.get(s, 0)), CHANGE_COLOURS[s], meaning[s], f"flip_{s}")
                    for s in shown),
        bar=_stacked([(CHANGE_LABELS[s], flip.get(s, 0), CHANGE_COLOURS[s]) for s in CHANGE_STATES], total),
        devices=_n(data["flip_devices"]), accounts=_n(data["flip_accounts"]),
        held_back=tuple((_n(n), why or "no reason recorded") for why, n in data["held_back_why"].items()),
        waiting=_n(flip["waiting"]) if flip.get("waiting") else None,
        next_due=_when(data["next_due"]), last_due=_when(data["last_due"]),
        rolled_back_at=_when(data["rolled_back_at"]) if data["rolled_back_at"] else None,
        ran=bool(total), stages=tuple(f"Stage {s['number']}, {stage_status.line(stage_status.StageStatus(**s))}"
                                      for s in data.get("stages") or ()),
        halted=(f"Halted at stage {data['halted']['stage']} ({data['halted']['percent']}) since "
                f"{_when(data['halted']['at'])}: {data['halted']['words']}") if data.get("halted") else None)


def _timeline(data: dict[str, Any]) -> tuple[Moment, ...]:
    setting = sentences.Setting(data["setting"], data["from"], data["to"])
    items: list[tuple[str, int, Moment]] = []
    for e in data["events"]:
        said = sentences.say(e["action"], e["actor"], e["detail"], setting)
        items.append((e["at"], 1, Moment("event", _when(e["at"]), e["actor"], said.what, said.detail)))
    items.append((data["cutoff"], 0, Moment("cutoff", _when(data["cutoff"]), "",
                                            f"The cutoff: {data['setting']} {data['from']} is retired", "")))
    for s in data["steps"]:
        if s["state"] in ("pending", "running"):
            doing = "running now" if s["state"] == "running" else "due: the scheduler runs it then"
            items.append((s["due_at"], 2, Moment("planned", _when(s["due_at"]), "scheduler",
                                                 f"Planned: {sentences.step_words(s['step'])}, {doing}", "")))
    items.sort(key=lambda i: (_t(i[0]) or dt.datetime.min.replace(tzinfo=dt.UTC), i[1]))
    return tuple(i[2] for i in items)


def _approval(data: dict[str, Any]) -> str | None:
    """The second person's approval ([approval] in the definition) in words, when there is one to speak of."""
    a = data.get("approval")
    if not a or not (a["required"] or a["approvals"]):
        return None
    version = sentences.short(f"definition version {a['version']}, {a['digest']}")
    if a["approvals"]:
        who = ", ".join(f"{x['by']} on {_when(x['at'])}" for x in a["approvals"])
        return f"Second person: approved by {who} ({version}, written by {a['defined_by']})."
    return (f"Second person: approval required, not given — someone other than {a['defined_by']} must run "
            f"`campaign approve` ({version}).")


def view(data: dict[str, Any]) -> Report:
    """The page's values, from `html_data`."""
    notice = _notice_words(data["min_notice_seconds"])
    lede = (f"Switches the setting {data['setting']} from {data['from']} to {data['to']} on every affected device at "
            f"the cutoff, {_when(data['cutoff'])}" + (f", after at least {notice}" if notice else "") + ".")
    ax = charts.axis(data, _when(data["cutoff"])) if data["sends"] or data["flips"] else None
    meaning = {w["name"]: _wave_meaning(w) for w in data["waves"]}
    return Report(
        campaign=data["campaign"], name=data["name"], generated=_when(data["generated_at"]), lede=lede,
        state=data["state"], state_words=CAMPAIGN_STATE_WORDS.get(data["state"], ""),
        created=_when(data["created_at"]), created_by=data["created_by"], approval=_approval(data),
        coverage=_coverage(data), ledger_accounts=_n(data["accounts"]),
        chart=charts.sends_chart(data, ax, meaning) if ax and data["sends"] else None,
        flip_chart=charts.flip_chart(data, ax, data["to"], data["from"]) if ax and data["flips"] else None,
        waves=_waves(data), wave_table=_counts_table([(w["name"], w["counts"]) for w in data["waves"]]),
        wave_names=tuple(w["name"] for w in data["waves"]), locales=_locales(data), flip=_flip(data),
        timeline=_timeline(data))


def render(data: dict[str, Any]) -> str:
    """The whole page."""
    return pages.render("report.html.j2", report=view(data))


# -- the data: what the report shows, read in aggregates ---------------------------------------------------

BUCKETS = (1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 120


def _bucket(start: dt.datetime, end: dt.datetime) -> int:
    span = (end - start).total_seconds()
    return next((b for b in BUCKETS if span / b <= MAX_BUCKETS), BUCKETS[-1])


def _rebucket(fine: dict[tuple[Any, dt.datetime], int], width: int) -> dict[tuple[Any, int], int]:
    """10-minute slots (store.FINE) summed into buckets of `width` seconds, by the key beside each slot."""
    coarse: dict[tuple[Any, int], int] = {}
    for (key, slot), n in fine.items():
        at = (key, int(slot.timestamp()) // width * width)
        coarse[at] = coarse.get(at, 0) + n
    return coarse


def html_data(conn: Connection, slug: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything the HTML report shows, as plain values: aggregates only, whatever the audience's size."""
    now = now or db.utcnow()
    c = campaigns.get(conn, slug)
    d = c.definition
    waves = campaign_store.waves(conn, c.id)
    names = {w.id: w.name for w in waves}
    counts = {w.id: dict.fromkeys(DELIVERY_STATES, 0) for w in waves}
    fine: dict[tuple[int, dt.datetime], int] = {}
    for wave_id, state, slot, n in store.delivery_summary(conn, c.id):
        wave_counts = counts.setdefault(wave_id, dict.fromkeys(DELIVERY_STATES, 0))
        wave_counts[state] = wave_counts.get(state, 0) + n
        if slot is not None:
            fine[wave_id, slot] = fine.get((wave_id, slot), 0) + n
    flips_fine: dict[tuple[str, dt.datetime], int] = {(kind, slot): n
                                                      for kind, slot, n in store.change_summary(conn, c.id)}
    slots = [slot for _, slot in fine] + [slot for _, slot in flips_fine]
    first = min(slots, default=None)
    last = max(slots, default=None)
    moments = [m for m in (first, last and last + dt.timedelta(seconds=store.FINE), c.cutoff,
                           *(w.at for w in waves)) if m is not None]
    start, end = min(moments), max(moments)
    width = _bucket(start, end)
    position = {w.id: i for i, w in enumerate(waves)}
    sends = [{"wave": names.get(w, str(w)), "at": iso(dt.datetime.fromtimestamp(b, dt.UTC)), "count": n}
             for (w, b), n in sorted(_rebucket(fine, width).items(),
                                     key=lambda kv: (position.get(kv[0][0], 0), kv[0][1]))]
    flips = [{"kind": kind, "at": iso(dt.datetime.fromtimestamp(b, dt.UTC)), "count": n}
             for (kind, b), n in sorted(_rebucket(flips_fine, width).items())]
    by_locale: dict[str, dict[str, dict[str, int]]] = {}
    for w, loc, state, n in store.outcomes_by_locale(conn, c.id):
        by_locale.setdefault(loc, {}).setdefault(names.get(w, str(w)), {})[state] = n
    outlook = change_store.outlook(conn, c.id)
    change_accounts, change_devices = store.change_accounts(conn, c.id)
    # as `status` counts it: told by a wave to the affected
    coverage = store.notice_coverage(conn, c.id, d, [w.id for w in waves if w.audience in NOTICES])
    staged, halted = stage_status.of(conn, c) if d.flip.staged else ((), None)
    return {
        "campaign": slug, "name": c.name, "state": c.state, "generated_at": iso(now), "cutoff": iso(c.cutoff),
        "setting": d.setting, "from": d.from_value, "to": d.to_value,
        "min_notice_seconds": d.min_notice.total_seconds() if d.min_notice else None,
        "created_at": iso(c.created_at), "created_by": c.created_by, "scheduled_at": iso(c.scheduled_at),
        "rolled_back_at": iso(c.rolled_back_at), "coverage": coverage_json(coverage),
        "waves": [{"name": w.name, "at": iso(w.at), "expires": iso(w.expires), "audience": w.audience,
                   "state": w.state, "paused_reason": w.paused_reason, "counts": counts[w.id]}
                  for w in waves],
        "accounts": store.ledger_accounts(conn, c.id),
        "flip": outlook.counts, "flip_accounts": change_accounts, "flip_devices": change_devices,
        "next_due": iso(outlook.next_due), "last_due": iso(outlook.last_due), "held_back_why": outlook.held_back_why,
        "span": {"start": iso(start), "end": iso(end), "bucket_seconds": width}, "sends": sends, "flips": flips,
        "by_locale": by_locale,
        "steps": [{"step": s.name, "due_at": iso(s.due_at), "state": s.state, "error": s.error}
                  for s in steps.of_campaign(conn, c.id)],
        "events": [entry(e, slug).as_json() for e in audit.events(conn, c.id)],
        "approval": approval_json(approval.standing(conn, c)),
        "stages": [x.as_json() for x in staged], "halted": None if halted is None else halted.as_json(),
    }
