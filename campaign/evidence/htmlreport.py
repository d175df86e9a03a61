"""The HTML report: one self-contained page (inline CSS and SVG, no script, no outside resource) drawn from
`html_data` — headline numbers, sends over time per wave against the cutoff, outcomes by wave and state and by
locale, the flip, and the campaign's timeline. It reads on screen and on paper (a print stylesheet). `html_data`
reads it as plain values, in aggregates whatever the audience's size; `view` makes them view values (numbers
formatted, times worded, the chart placed); `campaign/pages/report.html.j2` lays them out, and Jinja2's
autoescape escapes every one of them."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from campaign import campaigns, db, pages
from campaign.cutoff import approval
from campaign.evidence.auditlog import entry, summarize
from campaign.evidence.status import approval_json
from campaign.evidence.words import iso
from campaign.models import CHANGE_STATES, DELIVERY_STATES
from campaign.store import audit, steps
from campaign.store import campaigns as campaign_store
from campaign.store import changes as change_store
from campaign.store import evidence as store

STATE_COLOURS = {"sent": "#2e7d32", "pending": "#9e9e9e", "sending": "#64b5f6", "failed": "#c62828",
                 "bounced": "#ef6c00", "suppressed": "#6a1b9a", "skipped": "#b0bec5", "expired": "#8d6e63"}
CHANGE_COLOURS = {"changed": "#2e7d32", "held_back": "#c62828", "waiting": "#f9a825", "rolled_back": "#1565c0",
                  "left": "#8d6e63"}
WAVE_COLOURS = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457")
ACTIONS = {"campaign.create": "Campaign created", "campaign.replace": "Definition replaced",
           "campaign.schedule": "Scheduled", "campaign.test_send": "Test messages sent",
           "campaign.pause": "Paused", "campaign.resume": "Resumed", "campaign.cancel": "Cancelled",
           "wave.send": "Send started", "wave.sent": "Wave sent", "wave.pause": "Wave paused itself",
           "flip": "Flip", "rollback": "Rollback", "campaign.approve": "Approved",
           "campaign.revoke_approval": "Approval withdrawn"}


@dataclass(frozen=True)
class Tile:
    """A headline number with its label, edged in a colour."""

    label: str
    value: str
    colour: str


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
class Chart:
    """Messages sent over time, placed: every coordinate as the SVG writes it."""

    # the fixed parts: the size, the plot's edges (left, right, top, axis), where the labels and the cutoff go
    frame: dict[str, int]
    grid: tuple[tuple[str, str, str], ...]  # (y, the label's y, label)
    ticks: tuple[tuple[str, str], ...]  # (x, label)
    dues: tuple[tuple[str, str, str], ...]  # when each wave was due: (x, colour, title)
    bars: tuple[tuple[str, str, str, str, str, str], ...]  # (x, y, width, height, colour, title)
    cutoff: tuple[str, str, str, str]  # (x, the label's x, its anchor, when)
    bucket: str
    legend: tuple[tuple[str, str], ...]  # (label, colour)


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


@dataclass(frozen=True)
class WaveView:
    name: str
    due: str
    expires: str
    audience: str
    state: str
    paused_reason: str | None
    total: str
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


@dataclass(frozen=True)
class Moment:
    """A line of the timeline: an audit event, the cutoff, or a step the scheduler has still to run."""

    kind: str  # "event", "cutoff" or "planned"
    at: str
    who: str
    what: str
    detail: str


@dataclass(frozen=True)
class Approval:
    version: str
    digest: str
    digest_short: str
    defined_by: str
    approvals: tuple[tuple[str, str], ...]  # (by, when)


@dataclass(frozen=True)
class Report:
    """Everything the page shows, worded."""

    campaign: str
    name: str
    generated: str
    setting: str
    from_value: str
    to_value: str
    cutoff: str
    min_notice: str | None
    state: str
    created: str
    created_by: str
    approval: Approval | None
    headline: tuple[Tile, ...]
    chart: Chart | None
    waves: tuple[WaveView, ...]
    wave_table: Table
    state_legend: tuple[tuple[str, str], ...]
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


def _stacked(parts: list[tuple[str, int, str]], total: int) -> Bar:
    """A horizontal bar of (label, count, colour) parts, each as wide as its share."""
    if total <= 0:
        return Bar("nothing yet", ())
    shown = [(label, n, c) for label, n, c in parts if n]
    return Bar(", ".join(f"{label} {_n(n)}" for label, n, _ in shown),
               tuple(Part(label, _n(n), f"{100 * n / total:.3f}", c) for label, n, c in shown))


def _nice(top: int) -> tuple[int, int]:
    """(axis maximum, tick step) for counts up to `top`: steps of 1, 2 or 5 × 10^k, about 4 ticks."""
    if top <= 0:
        return 1, 1
    raw = top / 4
    mag = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    step = max(1, int(step))
    return step * math.ceil(top / step), step


TICKS = (3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)


def sends_chart(data: dict[str, Any]) -> Chart:
    """Messages sent over time, a bar per wave and time bucket (stacked where waves share one), with each
    wave's due time and the cutoff marked."""
    waves = [w["name"] for w in data["waves"]]
    colour = {name: WAVE_COLOURS[i % len(WAVE_COLOURS)] for i, name in enumerate(waves)}
    start, end = _t(data["span"]["start"]), _t(data["span"]["end"])
    assert start is not None and end is not None
    width_s = data["span"]["bucket_seconds"]
    pad = max((end - start).total_seconds() * 0.03, width_s)
    t0 = start.timestamp() - pad
    t1 = end.timestamp() + pad + width_s
    w_px, h_px, left, right, top, bottom = 960, 300, 56, 16, 24, 44
    plot_w, plot_h = w_px - left - right, h_px - top - bottom

    def x(ts: float) -> float:
        return left + (ts - t0) / (t1 - t0) * plot_w

    stacks: dict[float, int] = {}
    for s in data["sends"]:
        b = _t(s["at"])
        assert b is not None
        stacks[b.timestamp()] = stacks.get(b.timestamp(), 0) + s["count"]
    ymax, ystep = _nice(max(stacks.values(), default=0))

    def y(v: float) -> float:
        return top + plot_h - v / ymax * plot_h

    grid = tuple((f"{y(v):.1f}", f"{y(v) + 4:.1f}", _n(v)) for v in range(0, ymax + 1, ystep))
    span = t1 - t0
    tick = next((t for t in TICKS if span / t <= 9), TICKS[-1])
    fmt = "%d %b" if tick >= 86400 else "%d %b %H:%M"
    ticks = []
    tk = math.ceil(t0 / tick) * tick
    while tk <= t1:
        ticks.append((f"{x(tk):.1f}", dt.datetime.fromtimestamp(tk, dt.UTC).strftime(fmt)))
        tk += tick
    dues = []
    for wv in data["waves"]:  # when each wave was due
        at = _t(wv["at"])
        assert at is not None
        dues.append((f"{x(at.timestamp()):.1f}", colour[wv["name"]], f"{wv['name']} due {_when(wv['at'])}"))
    bar_w = max(2.0, plot_w * width_s / span - 1)
    base: dict[float, int] = {}
    bars = []
    for s in data["sends"]:
        b = _t(s["at"])
        assert b is not None
        below = base.get(b.timestamp(), 0)
        base[b.timestamp()] = below + s["count"]
        y_top, y_bottom = y(below + s["count"]), y(below)
        bars.append((f"{x(b.timestamp()):.1f}", f"{y_top:.1f}", f"{bar_w:.1f}", f"{max(y_bottom - y_top, 1):.1f}",
                     colour.get(s["wave"], "#607d8b"), f"{s['wave']}: {_n(s['count'])} sent from {_when(s['at'])}"))
    cut = _t(data["cutoff"])
    assert cut is not None
    xc = x(cut.timestamp())
    # the label beside the line, on whichever side has room
    anchor, tx = ("end", xc - 6) if xc > w_px - right - 190 else ("start", xc + 6)
    legend = (*((name, colour[name]) for name in waves), ("cutoff", "#c62828"))
    frame = {"width": w_px, "height": h_px, "left": left, "right": w_px - right, "top": top, "axis": top + plot_h,
             "grid_label_x": left - 8, "tick_end": top + plot_h + 5, "tick_label_y": top + plot_h + 18,
             "cutoff_top": top - 8, "cutoff_label_y": top - 2, "footnote_y": h_px - 6}
    return Chart(frame, grid, tuple(ticks), tuple(dues), tuple(bars),
                 (f"{xc:.1f}", f"{tx:.1f}", anchor, _when(data["cutoff"])), _duration(width_s), legend)


def _duration(seconds: float) -> str:
    if seconds % 86400 == 0:
        days = int(seconds // 86400)
        return f"{days} day{'s' if days != 1 else ''}"
    if seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{int(seconds // 60)} minutes"


def _counts_table(rows: list[tuple[str, dict[str, int]]], states: tuple[str, ...]) -> Table:
    shown = [s for s in states if any(c.get(s, 0) for _, c in rows)] or list(states[:1])
    return Table(tuple(s.replace("_", " ") for s in shown),
                 tuple(Row(name, tuple((_n(counts.get(s, 0)), not counts.get(s, 0)) for s in shown),
                           _n(sum(counts.values()))) for name, counts in rows))


def _headline(data: dict[str, Any]) -> tuple[Tile, ...]:
    totals = dict.fromkeys(DELIVERY_STATES, 0)
    for w in data["waves"]:
        for k, v in w["counts"].items():
            totals[k] = totals.get(k, 0) + v
    flip = data["flip"]
    return (
        Tile("accounts in the ledger", _n(data["accounts"]), "#1565c0"),
        Tile("messages sent", _n(totals["sent"]), STATE_COLOURS["sent"]),
        Tile("not delivered (failed, bounced, expired)",
             _n(totals["failed"] + totals["bounced"] + totals["expired"]), STATE_COLOURS["failed"]),
        Tile("deliveries suppressed: never mailed", _n(totals["suppressed"]), STATE_COLOURS["suppressed"]),
        Tile("devices switched", _n(flip.get("changed", 0)), CHANGE_COLOURS["changed"]),
        Tile("devices held back", _n(flip.get("held_back", 0)), CHANGE_COLOURS["held_back"]),
        Tile("waiting for fair notice", _n(flip.get("waiting", 0)), CHANGE_COLOURS["waiting"]),
        Tile("rolled back / left", f"{_n(flip.get('rolled_back', 0))} / {_n(flip.get('left', 0))}",
             CHANGE_COLOURS["rolled_back"]),
    )


def _waves(data: dict[str, Any]) -> tuple[WaveView, ...]:
    views = []
    for w in data["waves"]:
        counts = w["counts"]
        total = sum(counts.values())
        bar = _stacked([(s, counts.get(s, 0), STATE_COLOURS[s]) for s in DELIVERY_STATES], total)
        views.append(WaveView(w["name"], _when(w["at"]), _when(w["expires"]), w["audience"], w["state"],
                              w["paused_reason"] or None, _n(total), bar))
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


def _flip(data: dict[str, Any]) -> FlipView:
    flip = data["flip"]
    total = sum(flip.values())
    return FlipView(
        tiles=tuple(Tile(s.replace("_", " "), _n(flip.get(s, 0)), CHANGE_COLOURS[s]) for s in CHANGE_STATES),
        bar=_stacked([(s.replace("_", " "), flip.get(s, 0), CHANGE_COLOURS[s]) for s in CHANGE_STATES], total),
        devices=_n(data["flip_devices"]), accounts=_n(data["flip_accounts"]),
        held_back=tuple((_n(n), why or "no reason recorded") for why, n in data["held_back_why"].items()),
        waiting=_n(flip["waiting"]) if flip.get("waiting") else None,
        next_due=_when(data["next_due"]), last_due=_when(data["last_due"]),
        rolled_back_at=_when(data["rolled_back_at"]) if data["rolled_back_at"] else None,
        ran=bool(total))


def _timeline(data: dict[str, Any]) -> tuple[Moment, ...]:
    items: list[tuple[str, int, Moment]] = []
    for e in data["events"]:
        label = ACTIONS.get(e["action"], e["action"])
        items.append((e["at"], 1, Moment("event", _when(e["at"]), e["actor"], label, e["summary"])))
    items.append((data["cutoff"], 0, Moment("cutoff", _when(data["cutoff"]), "", "The cutoff", "")))
    for s in data["steps"]:
        if s["state"] in ("pending", "running"):
            items.append((s["due_at"], 2, Moment("planned", _when(s["due_at"]), "scheduler",
                                                 f"{s['step']} ({s['state']})", "")))
    items.sort(key=lambda i: (_t(i[0]) or dt.datetime.min.replace(tzinfo=dt.UTC), i[1]))
    return tuple(i[2] for i in items)


def _approval(data: dict[str, Any]) -> Approval | None:
    """The second person's approval ([approval] in the definition), when there is one to speak of."""
    a = data.get("approval")
    if not a or not (a["required"] or a["approvals"]):
        return None
    return Approval(str(a["version"]), a["digest"], a["digest"][:19], a["defined_by"],
                    tuple((x["by"], _when(x["at"])) for x in a["approvals"]))


def view(data: dict[str, Any]) -> Report:
    """The page's values, from `reports.html_data`."""
    return Report(
        campaign=data["campaign"], name=data["name"], generated=_when(data["generated_at"]),
        setting=data["setting"], from_value=data["from"], to_value=data["to"], cutoff=_when(data["cutoff"]),
        min_notice=_duration(data["min_notice_seconds"]) if data["min_notice_seconds"] else None,
        state=data["state"], created=_when(data["created_at"]), created_by=data["created_by"],
        approval=_approval(data), headline=_headline(data), chart=sends_chart(data) if data["sends"] else None,
        waves=_waves(data), wave_table=_counts_table([(w["name"], w["counts"]) for w in data["waves"]],
                                                     DELIVERY_STATES),
        state_legend=tuple((s, STATE_COLOURS[s]) for s in DELIVERY_STATES),
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
    slots = [slot for _, slot in fine]
    first = min(slots, default=None)
    last = max(slots, default=None)
    moments = [m for m in (first, last and last + dt.timedelta(seconds=store.FINE), c.cutoff,
                           *(w.at for w in waves)) if m is not None]
    start, end = min(moments), max(moments)
    width = _bucket(start, end)
    coarse: dict[tuple[int, int], int] = {}
    for (wave_id, slot), n in fine.items():
        key = (wave_id, int(slot.timestamp()) // width * width)
        coarse[key] = coarse.get(key, 0) + n
    position = {w.id: i for i, w in enumerate(waves)}
    sends = [{"wave": names.get(w, str(w)), "at": iso(dt.datetime.fromtimestamp(b, dt.UTC)), "count": n}
             for (w, b), n in sorted(coarse.items(), key=lambda kv: (position.get(kv[0][0], 0), kv[0][1]))]
    by_locale: dict[str, dict[str, dict[str, int]]] = {}
    for w, loc, state, n in store.outcomes_by_locale(conn, c.id):
        by_locale.setdefault(loc, {}).setdefault(names.get(w, str(w)), {})[state] = n
    outlook = change_store.outlook(conn, c.id)
    change_accounts, change_devices = store.change_accounts(conn, c.id)
    return {
        "campaign": slug, "name": c.name, "state": c.state, "generated_at": iso(now), "cutoff": iso(c.cutoff),
        "setting": d.setting, "from": d.from_value, "to": d.to_value,
        "min_notice_seconds": d.min_notice.total_seconds() if d.min_notice else None,
        "created_at": iso(c.created_at), "created_by": c.created_by, "scheduled_at": iso(c.scheduled_at),
        "rolled_back_at": iso(c.rolled_back_at),
        "waves": [{"name": w.name, "at": iso(w.at), "expires": iso(w.expires), "audience": w.audience,
                   "state": w.state, "paused_reason": w.paused_reason, "counts": counts[w.id]}
                  for w in waves],
        "accounts": store.ledger_accounts(conn, c.id),
        "flip": outlook.counts, "flip_accounts": change_accounts, "flip_devices": change_devices,
        "next_due": iso(outlook.next_due), "last_due": iso(outlook.last_due), "held_back_why": outlook.held_back_why,
        "span": {"start": iso(start), "end": iso(end), "bucket_seconds": width}, "sends": sends,
        "by_locale": by_locale,
        "steps": [{"step": s.name, "due_at": iso(s.due_at), "state": s.state, "error": s.error}
                  for s in steps.of_campaign(conn, c.id)],
        # each with its detail worded as `campaign log` words it
        "events": [{**entry(e, slug).as_json(), "summary": summarize(e.detail)} for e in audit.events(conn, c.id)],
        "approval": approval_json(approval.standing(conn, c)),
    }
