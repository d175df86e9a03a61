"""The HTML report's two charts, placed for its inline SVG: messages sent over time, and below it the flip over time
(devices switched, and rolled back), on one time axis — the same span, ticks and plot edges — so that a reader sees
how long before the cutoff people were told and when their devices changed. Every coordinate is worked out here;
the template only writes them."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from campaign.wording import duration

WAVE_COLOURS = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457")
SWITCHED_COLOUR, ROLLED_BACK_COLOUR, CUTOFF_COLOUR = "#2e7d32", "#1565c0", "#c62828"
WIDTH, LEFT, RIGHT, TOP, BOTTOM = 960, 56, 16, 24, 44
TICKS = (3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)


@dataclass(frozen=True)
class Key:
    """A legend item: its colour, its label and what it means, in words (on paper too)."""

    label: str
    colour: str
    meaning: str


@dataclass(frozen=True)
class Axis:
    """The time axis the two charts share: its span (epoch seconds), where it is drawn, and its ticks."""

    t0: float
    t1: float
    ticks: tuple[tuple[str, str], ...]  # (x, label)
    cutoff: str  # the cutoff's x
    cutoff_label: tuple[str, str, str]  # (the label's x, its anchor, when)

    @property
    def span(self) -> float:
        return self.t1 - self.t0


def x_of(t0: float, t1: float, ts: float) -> float:
    return LEFT + (ts - t0) / (t1 - t0) * (WIDTH - LEFT - RIGHT)


def axis(data: dict[str, Any], when: str) -> Axis:
    """The axis over `data["span"]`, padded, with the cutoff (worded `when`) placed on it."""
    start, end = _t(data["span"]["start"]), _t(data["span"]["end"])
    width_s = data["span"]["bucket_seconds"]
    pad = max((end - start).total_seconds() * 0.03, width_s)
    t0, t1 = start.timestamp() - pad, end.timestamp() + pad + width_s
    span = t1 - t0
    tick = next((t for t in TICKS if span / t <= 9), TICKS[-1])
    fmt = "%d %b" if tick >= 86400 else "%d %b %H:%M"
    ticks = []
    tk = math.ceil(t0 / tick) * tick
    while tk <= t1:
        ticks.append((f"{x_of(t0, t1, tk):.1f}", dt.datetime.fromtimestamp(tk, dt.UTC).strftime(fmt)))
        tk += tick
    xc = x_of(t0, t1, _t(data["cutoff"]).timestamp())
    # the label beside the line, on whichever side has room
    anchor, tx = ("end", xc - 6) if xc > WIDTH - RIGHT - 190 else ("start", xc + 6)
    return Axis(t0, t1, tuple(ticks), f"{xc:.1f}", (f"{tx:.1f}", anchor, when))


def _t(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso)


def _n(n: int) -> str:
    return f"{n:,}"


def _nice(top: int) -> tuple[int, int]:
    """(axis maximum, tick step) for counts up to `top`: steps of 1, 2 or 5 × 10^k, about 4 ticks."""
    if top <= 0:
        return 1, 1
    raw = top / 4
    mag = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    step = max(1, int(step))
    return step * math.ceil(top / step), step


def _frame(height: int) -> dict[str, int]:
    """The fixed parts of a chart `height` pixels tall: the plot's edges, where the labels and the cutoff go."""
    axis_y = height - BOTTOM
    return {"width": WIDTH, "height": height, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP, "axis": axis_y,
            "grid_label_x": LEFT - 8, "tick_end": axis_y + 5, "tick_label_y": axis_y + 18,
            "cutoff_top": TOP - 8, "cutoff_label_y": TOP - 2, "footnote_y": height - 6}


def _grid(frame: dict[str, int], ymax: int, ystep: int) -> tuple[tuple[str, str, str], ...]:
    ys = [(v, _y(frame, ymax, v)) for v in range(0, ymax + 1, ystep)]
    return tuple((f"{y:.1f}", f"{y + 4:.1f}", _n(v)) for v, y in ys)


def _y(frame: dict[str, int], ymax: int, v: float) -> float:
    return frame["axis"] - v / ymax * (frame["axis"] - frame["top"])


@dataclass(frozen=True)
class Chart:
    """Messages sent over time, placed: every coordinate as the SVG writes it."""

    frame: dict[str, int]
    axis: Axis
    grid: tuple[tuple[str, str, str], ...]  # (y, the label's y, label)
    dues: tuple[tuple[str, str, str], ...]  # when each wave was due: (x, colour, title)
    bars: tuple[tuple[str, str, str, str, str, str], ...]  # (x, y, width, height, colour, title)
    bucket: str
    legend: tuple[Key, ...]


def sends_chart(data: dict[str, Any], ax: Axis, wave_meaning: dict[str, str]) -> Chart:
    """Messages sent over time, a bar per wave and time bucket (stacked where waves share one), with each
    wave's due time and the cutoff marked."""
    waves = [w["name"] for w in data["waves"]]
    colour = {name: WAVE_COLOURS[i % len(WAVE_COLOURS)] for i, name in enumerate(waves)}
    width_s = data["span"]["bucket_seconds"]
    frame = _frame(300)
    stacks: dict[float, int] = {}
    for s in data["sends"]:
        ts = _t(s["at"]).timestamp()
        stacks[ts] = stacks.get(ts, 0) + s["count"]
    ymax, ystep = _nice(max(stacks.values(), default=0))
    dues = tuple((f"{x_of(ax.t0, ax.t1, _t(w['at']).timestamp()):.1f}", colour[w["name"]],
                  f"{w['name']} due {_when(w['at'])}") for w in data["waves"])
    bar_w = max(2.0, (WIDTH - LEFT - RIGHT) * width_s / ax.span - 1)
    base: dict[float, int] = {}
    bars = []
    for s in data["sends"]:
        ts = _t(s["at"]).timestamp()
        below = base.get(ts, 0)
        base[ts] = below + s["count"]
        y_top, y_bottom = _y(frame, ymax, below + s["count"]), _y(frame, ymax, below)
        bars.append((f"{x_of(ax.t0, ax.t1, ts):.1f}", f"{y_top:.1f}", f"{bar_w:.1f}",
                     f"{max(y_bottom - y_top, 1):.1f}", colour.get(s["wave"], "#607d8b"),
                     f"{s['wave']}: {_n(s['count'])} sent from {_when(s['at'])}"))
    legend = (*(Key(name, colour[name], wave_meaning.get(name, "")) for name in waves),
              Key("cutoff", CUTOFF_COLOUR, "the moment the old setting is retired and the flip runs"))
    return Chart(frame, ax, _grid(frame, ymax, ystep), dues, tuple(bars), duration(width_s), legend)


@dataclass(frozen=True)
class Line:
    """A running total drawn as steps: `points` as the SVG's polyline writes them, its end labelled with `total`."""

    points: str
    colour: str
    total: int
    label: str  # the end's words: "3 devices switched"
    label_at: tuple[str, str]  # (x, y)


@dataclass(frozen=True)
class FlipChart:
    """Devices switched by the flip (and put back by a rollback) over time, each a running total."""

    frame: dict[str, int]
    axis: Axis
    grid: tuple[tuple[str, str, str], ...]
    lines: tuple[Line, ...]
    legend: tuple[Key, ...]


def flip_chart(data: dict[str, Any], ax: Axis, to_value: str, from_value: str) -> FlipChart:
    """The running totals of devices switched and rolled back, over the axis the sends chart uses."""
    frame = _frame(220)
    series = {kind: sorted((_t(f["at"]).timestamp(), f["count"]) for f in data["flips"] if f["kind"] == kind)
              for kind in ("switched", "rolled_back")}
    totals = {kind: sum(c for _, c in points) for kind, points in series.items()}
    ymax, ystep = _nice(max(totals.values()))
    lines = []
    keys = []
    for kind, colour, words, meaning in (
            ("switched", SWITCHED_COLOUR, "switched", f"devices the flip switched to {to_value}, in all by then "
                                                      "(a device rolled back later counts here too)"),
            ("rolled_back", ROLLED_BACK_COLOUR, "rolled back", f"devices the rollback put back to {from_value}, "
                                                               "in all by then")):
        points = series[kind]
        if not points:
            continue
        xy = [(float(LEFT), _y(frame, ymax, 0))]
        total = 0
        for ts, count in points:
            x = x_of(ax.t0, ax.t1, ts)
            xy.append((x, _y(frame, ymax, total)))
            total += count
            xy.append((x, _y(frame, ymax, total)))
        xy.append((float(WIDTH - RIGHT), _y(frame, ymax, total)))
        label = f"{_n(total)} device{'s' if total != 1 else ''} {words}"
        end_y = _y(frame, ymax, total)
        # above its line's end (the rolled-back line's, below), or on the other side where there is no room
        above, below = end_y - 6, end_y + 14
        label_y = above if (kind == "switched" and above >= TOP + 10) or below > frame["axis"] - 4 else below
        lines.append(Line(" ".join(f"{x:.1f},{y:.1f}" for x, y in xy), colour, total, label,
                          (f"{WIDTH - RIGHT - 4}", f"{label_y:.1f}")))
        keys.append(Key(words, colour, meaning))
    keys.append(Key("cutoff", CUTOFF_COLOUR, "the moment the old setting is retired and the flip runs"))
    return FlipChart(frame, ax, _grid(frame, ymax, ystep), tuple(lines), tuple(keys))


def _when(iso: str) -> str:
    return f"{_t(iso).astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
