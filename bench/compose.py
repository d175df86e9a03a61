"""Composition benchmark: the fast MessageBuilder against an EmailMessage build of the same messages,
measured in the same run, alternating, median of several runs. Messages are the shipped campaign's
waves rendered for sample recipients (rendering is timed too, and reported apart).

    ./run bench compose [--messages N] [--runs K]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from pathlib import Path

from campaign.definition import load_definition
from campaign.notices.mime import MessageBuilder, Parts, build_plain, message_id
from campaign.notices.rendering import Renderer
from campaign.recipients import DeviceView, Recipient
from campaign.sample import rows

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

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
