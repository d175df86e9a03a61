"""The HTML report: one self-contained page (inline CSS and SVG, no script, no outside resource) drawn from
`campaign.reports.html_data` — headline numbers, sends over time per wave against the cutoff, outcomes by
wave and state and by locale, the flip, and the campaign's timeline. It reads on screen and on paper (a
print stylesheet). Everything that comes from data is HTML-escaped here, in `_e`, and nowhere else."""

from __future__ import annotations

import datetime as dt
import html
import math
from typing import Any

from campaign.models import CHANGE_STATES, DELIVERY_STATES

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

CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #dde1e8; --soft: #f4f6f9; --accent: #1565c0; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f5; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 28px 24px 40px; }
header { margin-bottom: 18px; }
.eyebrow { margin: 0; color: var(--muted); font-size: 13px; letter-spacing: .04em; text-transform: uppercase; }
h1 { margin: 4px 0 6px; font-size: 28px; line-height: 1.2; }
h2 { margin: 0 0 12px; font-size: 18px; }
h3 { margin: 14px 0 6px; font-size: 15px; }
.lede { margin: 0; color: var(--muted); }
code { font: 13px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; background: var(--soft);
  padding: 1px 5px; border-radius: 4px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px 20px;
  margin: 0 0 16px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; }
.headline .tiles { grid-template-columns: repeat(4, 1fr); }
@media (max-width: 720px) { .headline .tiles { grid-template-columns: repeat(2, 1fr); } }
.tile { background: var(--soft); border-radius: 8px; padding: 10px 12px; border-left: 4px solid var(--c, #90a4ae); }
.tile b { display: block; font-size: 24px; line-height: 1.2; font-variant-numeric: tabular-nums; }
.tile span { color: var(--muted); font-size: 13px; }
svg { display: block; width: 100%; height: auto; }
svg text { font: 11px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: #5b6475; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; margin: 8px 0 0; padding: 0; list-style: none;
  font-size: 13px; color: var(--muted); }
.legend i { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px;
  vertical-align: -1px; }
table { width: 100%; border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
thead th { color: var(--muted); font-weight: 600; border-bottom: 2px solid var(--line); }
td.zero { color: #b5bcc8; }
.bar { display: flex; height: 14px; border-radius: 3px; overflow: hidden; background: var(--soft); margin: 4px 0; }
.bar span { display: block; height: 100%; }
.mini { display: inline-block; width: 60px; height: 8px; background: var(--soft); border-radius: 2px;
  vertical-align: middle; margin-left: 6px; overflow: hidden; }
.mini span { display: block; height: 100%; background: #2e7d32; }
.wave { margin-bottom: 12px; }
.wave p { margin: 0; color: var(--muted); font-size: 13px; }
.note { color: var(--muted); font-size: 13px; margin: 8px 0 0; }
ol.timeline { list-style: none; margin: 0; padding: 0; }
ol.timeline li { display: grid; grid-template-columns: 168px 100px 1fr; gap: 10px; padding: 6px 0;
  border-bottom: 1px solid var(--line); font-size: 13.5px; }
ol.timeline li:last-child { border-bottom: 0; }
ol.timeline time { color: var(--muted); font-variant-numeric: tabular-nums; }
ol.timeline .who { color: var(--muted); overflow-wrap: anywhere; }
ol.timeline .cutoff { font-weight: 600; color: #c62828; }
ol.timeline .planned { color: var(--muted); font-style: italic; }
.what small { display: block; color: var(--muted); overflow-wrap: anywhere; }
footer { color: var(--muted); font-size: 12px; text-align: center; }
@media (max-width: 640px) { ol.timeline li { grid-template-columns: 1fr; gap: 0; } }
@media print {
  @page { size: A4; margin: 14mm 12mm; }
  body { background: #fff; font-size: 10pt; }
  main { max-width: none; padding: 0; }
  section { border: 0; border-top: 1px solid #999; border-radius: 0; padding: 10px 0 4px; margin: 0 0 8px;
    break-inside: avoid; }
  .tile { background: none; border: 1px solid #bbb; border-left: 4px solid var(--c, #777); }
  .bar, .mini, svg, .legend i, .tile { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  ol.timeline li { break-inside: avoid; }
  footer { margin-top: 8px; }
}
"""


def _e(value: Any) -> str:
    """HTML-escape anything that comes from data (names, addresses, reasons, errors, actors)."""
    return html.escape("" if value is None else str(value), quote=True)


def _t(iso: str | None) -> dt.datetime | None:
    return None if iso is None else dt.datetime.fromisoformat(iso)


def _when(iso: str | None) -> str:
    t = _t(iso)
    return "—" if t is None else f"{t.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def _n(n: int) -> str:
    return f"{n:,}"


def _tile(label: str, value: int | str, colour: str = "#90a4ae") -> str:
    shown = _n(value) if isinstance(value, int) else _e(value)
    return f'<div class="tile" style="--c:{colour}"><b>{shown}</b><span>{_e(label)}</span></div>'


def _stacked(parts: list[tuple[str, int, str]], total: int) -> str:
    """A horizontal bar of (label, count, colour) parts, each as wide as its share."""
    if total <= 0:
        return '<div class="bar" role="img" aria-label="nothing yet"></div>'
    spans = "".join(f'<span style="width:{100 * n / total:.3f}%;background:{c}" title="{_e(label)}: {_n(n)}"></span>'
                    for label, n, c in parts if n)
    label = ", ".join(f"{lab} {_n(n)}" for lab, n, _ in parts if n)
    return f'<div class="bar" role="img" aria-label="{_e(label)}">{spans}</div>'


def _legend(items: list[tuple[str, str]]) -> str:
    return '<ul class="legend">' + "".join(f'<li><i style="background:{c}"></i>{_e(label)}</li>'
                                            for label, c in items) + "</ul>"


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


def sends_chart(data: dict[str, Any]) -> str:
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

    out = [f'<svg viewBox="0 0 {w_px} {h_px}" role="img" aria-labelledby="sends-title">',
           '<title id="sends-title">Messages sent over time, by wave, against the cutoff</title>']
    for v in range(0, ymax + 1, ystep):  # the y grid
        out.append(f'<line x1="{left}" x2="{w_px - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e3e7ee"/>'
                   f'<text x="{left - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{_n(v)}</text>')
    span = t1 - t0
    tick = next((t for t in TICKS if span / t <= 9), TICKS[-1])
    first_tick = math.ceil(t0 / tick) * tick
    fmt = "%d %b" if tick >= 86400 else "%d %b %H:%M"
    tk = first_tick
    while tk <= t1:
        label = dt.datetime.fromtimestamp(tk, dt.UTC).strftime(fmt)
        out.append(f'<line x1="{x(tk):.1f}" x2="{x(tk):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 5}" '
                   f'stroke="#9aa3b2"/><text x="{x(tk):.1f}" y="{top + plot_h + 18}" text-anchor="middle">'
                   f"{_e(label)}</text>")
        tk += tick
    out.append(f'<line x1="{left}" x2="{w_px - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#9aa3b2"/>')
    for wv in data["waves"]:  # when each wave was due
        at = _t(wv["at"])
        assert at is not None
        xa = x(at.timestamp())
        out.append(f'<line x1="{xa:.1f}" x2="{xa:.1f}" y1="{top}" y2="{top + plot_h}" stroke="{colour[wv["name"]]}" '
                   f'stroke-dasharray="2 3" stroke-opacity=".7"><title>{_e(wv["name"])} due {_when(wv["at"])}'
                   "</title></line>")
    bar_w = max(2.0, plot_w * width_s / span - 1)
    base: dict[float, int] = {}
    for s in data["sends"]:
        b = _t(s["at"])
        assert b is not None
        below = base.get(b.timestamp(), 0)
        base[b.timestamp()] = below + s["count"]
        y_top, y_bottom = y(below + s["count"]), y(below)
        out.append(f'<rect x="{x(b.timestamp()):.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" '
                   f'height="{max(y_bottom - y_top, 1):.1f}" fill="{colour.get(s["wave"], "#607d8b")}">'
                   f'<title>{_e(s["wave"])}: {_n(s["count"])} sent from {_when(s["at"])}</title></rect>')
    cut = _t(data["cutoff"])
    assert cut is not None
    xc = x(cut.timestamp())
    # the label beside the line, on whichever side has room
    anchor, tx = ("end", xc - 6) if xc > w_px - right - 190 else ("start", xc + 6)
    out.append(f'<line x1="{xc:.1f}" x2="{xc:.1f}" y1="{top - 8}" y2="{top + plot_h}" stroke="#c62828" '
               f'stroke-width="2" stroke-dasharray="6 4"/><text x="{tx:.1f}" y="{top - 2}" text-anchor="{anchor}" '
               f'style="fill:#c62828;font-weight:600">cutoff {_e(_when(data["cutoff"]))}</text>')
    out.append(f'<text x="{left}" y="{h_px - 6}">UTC · one bar per {_e(_duration(width_s))} · dotted lines: when '
               "each wave was due</text>")
    out.append("</svg>")
    legend = [(name, colour[name]) for name in waves] + [("cutoff", "#c62828")]
    return "".join(out) + _legend(legend)


def _duration(seconds: float) -> str:
    if seconds % 86400 == 0:
        days = int(seconds // 86400)
        return f"{days} day{'s' if days != 1 else ''}"
    if seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{int(seconds // 60)} minutes"


def _counts_table(rows: list[tuple[str, dict[str, int]]], states: tuple[str, ...]) -> str:
    shown = [s for s in states if any(c.get(s, 0) for _, c in rows)] or list(states[:1])
    head = "".join(f"<th>{_e(s.replace('_', ' '))}</th>" for s in shown)
    body = []
    for name, counts in rows:
        cells = "".join(f'<td class="{"zero" if not counts.get(s, 0) else ""}">{_n(counts.get(s, 0))}</td>'
                        for s in shown)
        body.append(f"<tr><td>{_e(name)}</td>{cells}<td>{_n(sum(counts.values()))}</td></tr>")
    return f"<table><thead><tr><th></th>{head}<th>total</th></tr></thead><tbody>{''.join(body)}</tbody></table>"


def _headline(data: dict[str, Any]) -> str:
    totals = dict.fromkeys(DELIVERY_STATES, 0)
    for w in data["waves"]:
        for k, v in w["counts"].items():
            totals[k] = totals.get(k, 0) + v
    flip = data["flip"]
    tiles = [
        _tile("accounts in the ledger", data["accounts"], "#1565c0"),
        _tile("messages sent", totals["sent"], STATE_COLOURS["sent"]),
        _tile("not delivered (failed, bounced, expired)", totals["failed"] + totals["bounced"] + totals["expired"],
              STATE_COLOURS["failed"]),
        _tile("deliveries suppressed: never mailed", totals["suppressed"], STATE_COLOURS["suppressed"]),
        _tile("devices switched", flip.get("changed", 0), CHANGE_COLOURS["changed"]),
        _tile("devices held back", flip.get("held_back", 0), CHANGE_COLOURS["held_back"]),
        _tile("waiting for fair notice", flip.get("waiting", 0), CHANGE_COLOURS["waiting"]),
        _tile("rolled back / left", f"{_n(flip.get('rolled_back', 0))} / {_n(flip.get('left', 0))}",
              CHANGE_COLOURS["rolled_back"]),
    ]
    return (f'<section class="headline" aria-label="Headline numbers"><div class="tiles">{"".join(tiles)}</div>'
            "</section>")


def _waves(data: dict[str, Any]) -> str:
    parts = []
    for w in data["waves"]:
        counts = w["counts"]
        total = sum(counts.values())
        bar = _stacked([(s, counts.get(s, 0), STATE_COLOURS[s]) for s in DELIVERY_STATES], total)
        paused = f" · paused: {_e(w['paused_reason'])}" if w["paused_reason"] else ""
        parts.append(f'<div class="wave"><h3>{_e(w["name"])}</h3><p>due {_when(w["at"])} · expires '
                     f'{_when(w["expires"])} · audience {_e(w["audience"])} · {_e(w["state"])}{paused} · '
                     f"{_n(total)} in the ledger</p>{bar}</div>")
    table = _counts_table([(w["name"], w["counts"]) for w in data["waves"]], DELIVERY_STATES)
    legend = _legend([(s, STATE_COLOURS[s]) for s in DELIVERY_STATES])
    return f"<section><h2>Outcomes by wave</h2>{''.join(parts)}{table}{legend}</section>"


def _locales(data: dict[str, Any]) -> str:
    waves = [w["name"] for w in data["waves"]]
    by = data["by_locale"]
    if not by:
        return '<section><h2>Outcomes by locale</h2><p class="note">No deliveries yet.</p></section>'
    head = "".join(f"<th>{_e(w)}: sent of</th>" for w in waves)
    body = []
    for loc in sorted(by):
        cells = []
        for w in waves:
            c = by[loc].get(w, {})
            total, sent = sum(c.values()), c.get("sent", 0)
            other = ", ".join(f"{s} {_n(n)}" for s, n in sorted(c.items()) if s != "sent" and n)
            share = 100 * sent / total if total else 0
            title = f' title="{_e(other)}"' if other else ""
            cells.append(f"<td{title}>{_n(sent)} / {_n(total)}<span class=\"mini\"><span style=\"width:{share:.1f}%\">"
                         "</span></span></td>" if total else '<td class="zero">—</td>')
        body.append(f"<tr><td>{_e(loc)}</td>{''.join(cells)}</tr>")
    return (f"<section><h2>Outcomes by locale</h2><table><thead><tr><th>account locale</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table><p class=\"note\">Messages sent of the deliveries in the ledger, "
            "by the account's locale; the rest were suppressed, skipped, bounced, failed or expired.</p></section>")


def _flip(data: dict[str, Any]) -> str:
    flip = data["flip"]
    total = sum(flip.values())
    tiles = "".join(_tile(s.replace("_", " "), flip.get(s, 0), CHANGE_COLOURS[s]) for s in CHANGE_STATES)
    bar = _stacked([(s.replace("_", " "), flip.get(s, 0), CHANGE_COLOURS[s]) for s in CHANGE_STATES], total)
    notes = [f"<code>{_e(data['setting'])}</code>: <code>{_e(data['from'])}</code> → <code>{_e(data['to'])}</code> "
             f"on {_n(data['flip_devices'])} device(s) of {_n(data['flip_accounts'])} account(s) the flip looked at."]
    for why, n in data["held_back_why"].items():
        notes.append(f"Held back: {_n(n)} — {_e(why or 'no reason recorded')}.")
    if flip.get("waiting"):
        notes.append(f"Waiting for fair notice: {_n(flip['waiting'])}, due from {_when(data['next_due'])} to "
                     f"{_when(data['last_due'])}.")
    if data["rolled_back_at"]:
        notes.append(f"Rolled back from {_when(data['rolled_back_at'])}; a device its owner changed since was left "
                     "alone.")
    if not total:
        notes.append("The flip has not run yet.")
    body = "".join(f'<p class="note">{n}</p>' for n in notes)
    return f'<section><h2>The flip</h2><div class="tiles">{tiles}</div>{bar}{body}</section>'


def _timeline(data: dict[str, Any]) -> str:
    from campaign.reports import summarize  # one wording of an event's detail, shared with `campaign log`

    items: list[tuple[str, int, str]] = []
    for e in data["events"]:
        label = ACTIONS.get(e["action"], e["action"])
        items.append((e["at"], 1, f'<li><time>{_when(e["at"])}</time><span class="who">{_e(e["actor"])}</span>'
                                  f'<span class="what">{_e(label)}<small>{_e(summarize(e["detail"]))}</small>'
                                  "</span></li>"))
    items.append((data["cutoff"], 0, f'<li class="cutoff"><time>{_when(data["cutoff"])}</time><span></span>'
                                     '<span class="what cutoff">The cutoff</span></li>'))
    for s in data["steps"]:
        if s["state"] in ("pending", "running"):
            items.append((s["due_at"], 2, f'<li class="planned"><time>{_when(s["due_at"])}</time><span>scheduler'
                                          f'</span><span class="what">{_e(s["step"])} ({_e(s["state"])})</span></li>'))
    items.sort(key=lambda i: (_t(i[0]) or dt.datetime.min.replace(tzinfo=dt.UTC), i[1]))
    return (f'<section><h2>Timeline</h2><ol class="timeline">{"".join(i[2] for i in items)}</ol>'
            '<p class="note">Every audit event of the campaign, with who started it; `campaign log` lists them '
            "with imports and suppressions.</p></section>")


def _approval(data: dict[str, Any]) -> str:
    """The lede's word on the second person's approval ([approval] in the definition), when there is one."""
    a = data.get("approval")
    if not a or not (a["required"] or a["approvals"]):
        return ""
    version = f'version {a["version"]}, <code title="{_e(a["digest"])}">{_e(a["digest"][:19])}…</code>'
    if a["approvals"]:
        who = ", ".join(f'{_e(x["by"])} {_when(x["at"])}' for x in a["approvals"])
        return f' · definition by {_e(a["defined_by"])}, approved by {who} ({version})'
    return f' · <b>approval required, not given</b> (definition by {_e(a["defined_by"])}, {version})'


def render(data: dict[str, Any]) -> str:
    """The whole page."""
    has_sends = bool(data["sends"])
    chart = sends_chart(data) if has_sends else '<p class="note">Nothing has been sent yet.</p>'
    min_notice = ""
    if data["min_notice_seconds"]:
        min_notice = f" · fair notice {_e(_duration(data['min_notice_seconds']))}"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Campaign report: {_e(data['name'])}</title><style>{CSS}</style></head><body><main>"
        f'<header><p class="eyebrow">Campaign report · {_e(data["campaign"])} · generated {_when(data["generated_at"])}'
        f"</p><h1>{_e(data['name'])}</h1>"
        f'<p class="lede">Retires <code>{_e(data["setting"])} = {_e(data["from"])}</code> for '
        f'<code>{_e(data["to"])}</code> at the cutoff, {_when(data["cutoff"])}{min_notice} · state '
        f'<b>{_e(data["state"])}</b> · created {_when(data["created_at"])} by {_e(data["created_by"])}'
        f"{_approval(data)}</p></header>"
        f"{_headline(data)}"
        f"<section><h2>Sends over time</h2>{chart}</section>"
        f"{_waves(data)}{_locales(data)}{_flip(data)}{_timeline(data)}"
        "<footer>campaign report · one self-contained file: no script, nothing loaded from elsewhere · "
        "per-account evidence: <code>campaign report SLUG --format csv</code></footer>"
        "</main></body></html>\n")
