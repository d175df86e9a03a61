"""Composition benchmark: the fast MessageBuilder against an EmailMessage build of the same messages,
measured in the same run, alternating, median of several runs. Messages are the shipped campaign's
waves rendered for sample recipients (rendering is timed too, and reported apart).

Rendering (issue 26), per message, in the same run, alternating, median of the runs, one process:
  - plain Jinja: a plain `jinja2.Environment` (no sandbox) and `Template.render` of the same templates with the
    same context — the reference, what anyone would write;
  - full: `Renderer.render_full`, every template run for every person (the render before issue 26);
  - fast: `Renderer.render` with its cache emptied before each run: a key's first person renders in full, its
    second with markers (learnt), the rest are spliced; the first messages of each template are also rendered
    in full and compared.
`--messages N` accounts, each wave rendered for all of them, a wave's messages together (as a send or `schedule`
renders them); the keys are few against a million accounts, many against a few thousand (see bench/README.md).
On the shipped campaign and on a generated one (`--generated`: a template set written into a temporary folder,
longer texts that print the person's words more often; hostile names mixed into the sample accounts). Every fast
result is checked equal to the full one.

    ./run bench compose [--messages N] [--runs K] [--render-only]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from campaign.definition import Definition, WaveDef, load_definition
from campaign.notices import rendering
from campaign.notices.fastpath import FastPath
from campaign.notices.mime import MessageBuilder, Parts, build_plain, message_id
from campaign.notices.rendering import PARTS, Renderer, same_language
from campaign.recipients import DeviceView, Recipient
from campaign.sample import rows

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--render-only", action="store_true", help="only the rendering figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for label, (definition, templates, people) in (("shipped", shipped(args.messages)),
                                                       ("generated", generated(Path(tmp), args.messages))):
            render_figures(label, definition, templates, people, args.runs)
    if not args.render_only:
        compose(args)


People = list[tuple[WaveDef, Recipient, list[DeviceView]]]


def _people(definition: Definition, accounts: int, seed: int, hostile: bool = False) -> People:
    """Every wave for each account, a wave's messages together (as a send or `schedule` renders them)."""
    changed = definition.cutoff + dt.timedelta(minutes=3)
    out: People = []
    for wave in definition.waves:
        at = changed if wave.name == "confirmation" else None
        for i, (account, devices) in enumerate(rows(accounts, seed=seed)):
            name = account[2] if not hostile or i % 7 else f"{account[2]} <b>&amp;</b> {{0}} \ue000\n"
            recipient = Recipient(account[0], account[1], name, account[3], account[4])
            out.append((wave, recipient, [DeviceView(d[0], d[2], d[3], at) for d in devices]))
    return out


def shipped(messages: int) -> tuple[Definition, Path, People]:
    definition = load_definition(ROOT / "data" / "voice-local-processing.toml", ROOT / "templates")
    return definition, ROOT / "templates", _people(definition, messages, 11)


_WORDS = ["the", "setting", "retires", "and", "your", "devices", "keep", "working;", "recordings", "are",
          "processed", "then", "deleted,", "nothing", "is", "kept;", "you", "can", "choose", "another", "one"]


def generated(root: Path, messages: int) -> tuple[Definition, Path, People]:
    """A template set of our own: each wave × locale a subject, text and HTML part of about 30 paragraphs that
    print the person's name and address several times, the devices in a loop, dates in the reader's zone."""
    folder = root / "templates" / "generated"
    for locale in ("en-US", "de-DE", "ja-JP", "es-US"):
        (folder / locale).mkdir(parents=True)
        for wave in ("notice", "reminder", "confirmation"):
            paragraphs = [" ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(40)) for i in range(30)]
            (folder / locale / f"{wave}.subject.j2").write_text(
                f"{wave}: {{{{ account.name }}}}, {{{{ cutoff | format_date('long') }}}}\n")
            text = ["Dear {{ account.name }} ({{ account.email }}),",
                    "{% set when = cutoff | format_datetime('full') %}"]
            html = ["<!DOCTYPE html><html><body>", '<p style="margin:0">Dear {{ account.name }},</p>',
                    "{% set when = cutoff | format_datetime('full') %}"]
            for i, para in enumerate(paragraphs):
                extra = " {{ account.name }}" if i % 10 == 0 else " {{ when }}" if i % 10 == 5 else ""
                text.append(para + extra)
                html.append(f'<p style="margin:0 0 16px 0;color:#1f2937">{para}{extra}</p>')
                if i == 12:
                    loop = ("{% for device in devices %}{{ loop.index }}. {{ device.name }} ({{ device.model }}), "
                            "{{ device.changed_at | format_date('long') }}\n{% endfor %}")
                    text.append(loop)
                    html.append("<ul>" + loop.replace("{{ loop.index }}. ", "<li>").replace("\n", "</li>")
                                + "</ul>")
            text.append("Sent to {{ account.email }}{% if devices | length > 1 %} for your devices{% endif %}.")
            html.append("<p>Sent to {{ account.email }}</p></body></html>")
            (folder / locale / f"{wave}.txt.j2").write_text("\n\n".join(text) + "\n")
            (folder / locale / f"{wave}.html.j2").write_text("\n".join(html) + "\n")
    toml = (ROOT / "data" / "voice-local-processing.toml").read_text().replace(
        'template = "voice-local-processing"', 'template = "generated"')
    (root / "generated.toml").write_text(toml)
    definition = load_definition(root / "generated.toml", root / "templates")
    return definition, root / "templates", _people(definition, messages, 12, hostile=True)


def plain_jinja(definition: Definition, templates: Path) -> Callable[[WaveDef, Recipient, list[DeviceView]], Any]:
    """The reference: a plain Environment's `Template.render`, same options, filters and context."""
    renderer = Renderer(definition, templates)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates / definition.template)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             autoescape=lambda name: name is not None and name.endswith(".html.j2"))
    env.filters.update(format_date=rendering._format_date, format_datetime=rendering._format_datetime,
                       zone_label=rendering._zone_label)

    def render(wave: WaveDef, recipient: Recipient, devices: list[DeviceView]) -> list[str]:
        folder = renderer.template_locale(wave.name, recipient.locale)
        locale = recipient.locale if same_language(recipient.locale, folder) else folder
        ctx = renderer.context(wave, recipient, devices, locale)
        return [env.get_template(f"{folder}/{wave.name}.{part}.j2").render(ctx) for part in PARTS]
    return render


def render_figures(label: str, definition: Definition, templates: Path, people: People, runs: int) -> None:
    plain = plain_jinja(definition, templates)
    renderer = Renderer(definition, templates)
    timings: dict[str, list[float]] = {"plain Jinja": [], "full": [], "fast": []}
    for i in range(runs):
        t = time.perf_counter()
        for wave, recipient, devices in people:
            plain(wave, recipient, devices)
        timings["plain Jinja"].append((time.perf_counter() - t) / len(people))
        t = time.perf_counter()
        full = [renderer.render_full(w, r, d) for w, r, d in people]
        timings["full"].append((time.perf_counter() - t) / len(people))
        # A fresh cache on the Renderer whose templates are compiled (the full render, reused from run to run,
        # does not compile either); the proof of the templates is redone, as in a new process.
        renderer.fast = cache = FastPath(renderer._parts, renderer.fast.proof, escape=renderer.fast.escape)
        t = time.perf_counter()
        fast = [renderer.render(w, r, d) for w, r, d in people]
        timings["fast"].append((time.perf_counter() - t) / len(people))
        assert fast == full, f"{label}: the fast path differs from the full render"
        print(f"{label} run {i + 1}: " + "  ".join(f"{k} {v[-1] * 1e6:6.1f}" for k, v in timings.items())
              + " us/message", flush=True)
    keys = len({(w, r.locale, r.timezone, tuple((d.model, d.changed_at) for d in ds)) for w, r, ds in people})
    print(f"\n{label}: {len(people):,} messages ({len(definition.waves)} waves), {keys:,} keys; the fast path "
          f"spliced {cache.hits / len(people):.1%} (learnt {cache.misses:,} keys, {cache.first_sights:,} first "
          f"sights in full, {len(cache._cache):,} kept in {cache._bytes / 2**20:.1f} MiB); medians of {runs} "
          "runs, one process:")
    medians = {k: statistics.median(v) for k, v in timings.items()}
    for k, v in medians.items():
        print(f"  {k:12} {v * 1e6:8.1f} us/message  {1 / v:10,.0f} messages/s  {v / medians['plain Jinja']:.2f}x "
              f"plain Jinja  {v / medians['full']:.2f}x full")
    print()


def compose(args: argparse.Namespace) -> None:

    definition = load_definition(ROOT / "data" / "voice-local-processing.toml", ROOT / "templates")
    renderer = Renderer(definition, ROOT / "templates")
    now = dt.datetime.now(dt.UTC)
    messages: list[tuple[str, Parts]] = []
    start = time.perf_counter()
    accounts = rows(args.messages, seed=11)
    for i, (account, devices) in enumerate(accounts):
        wave = definition.waves[i % len(definition.waves)]
        recipient = Recipient(account[0], account[1], account[2], account[3], account[4])
        views = [DeviceView(d[0], d[2], d[3]) for d in devices]
        rendered = renderer.render(wave, recipient, views)
        messages.append((wave.name, Parts(recipient.name, recipient.email, rendered.subject, rendered.text,
                                          rendered.html, message_id(definition.slug, wave.name, recipient.account_id,
                                                                    definition.sender_domain), now)))
    render_s = (time.perf_counter() - start) / len(messages)
    builders = {w.name: MessageBuilder(definition.sender, definition.reply_to, boundary_seed=w.name)
                for w in definition.waves}

    def fast() -> int:
        total = 0
        for wave, parts in messages:
            total += len(builders[wave].build(parts))
        return total

    def plain() -> int:
        total = 0
        for _wave, parts in messages:
            total += len(build_plain(definition.sender, definition.reply_to, parts))
        return total

    fast_t, plain_t = [], []
    for i in range(args.runs):
        t = time.perf_counter()
        plain_bytes = plain()
        plain_t.append((time.perf_counter() - t) / len(messages))
        t = time.perf_counter()
        fast_bytes = fast()
        fast_t.append((time.perf_counter() - t) / len(messages))
        print(f"run {i + 1}: EmailMessage {plain_t[-1] * 1e6:7.1f} us/message   "
              f"MessageBuilder {fast_t[-1] * 1e6:6.1f} us/message", flush=True)
    f, p = statistics.median(fast_t), statistics.median(plain_t)
    print(f"\n{len(messages):,} messages, {fast_bytes / len(messages):,.0f} bytes each "
          f"(EmailMessage: {plain_bytes / len(messages):,.0f})")
    print(f"EmailMessage    {p * 1e6:8.1f} us/message  {1 / p:10,.0f} messages/s")
    print(f"MessageBuilder  {f * 1e6:8.1f} us/message  {1 / f:10,.0f} messages/s")
    print(f"time ratio fast/plain: {f / p:.3f} (goal <= 0.20)")
    print(f"rendering the three templates (not in the ratio): {render_s * 1e6:.0f} us/message")


if __name__ == "__main__":
    main()
