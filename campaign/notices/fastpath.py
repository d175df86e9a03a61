"""Rendering's constant parts computed once (issue 26): a message rendered once per key — the wave, the template
folder, the reader's locale and zone, their devices' models and times — with markers in place of the person's own
words, then, for each person with that key, their words spliced in where the markers were printed.

Rendering was a quarter of a send worker's CPU and most of `schedule`, which renders every message of a wave to
prove none fails (G5); the text of a wave differs between two people only where their name, address and device
names are printed. `campaign.notices.personal` proves, per template, that those words are only printed as they
are; everything it cannot prove, and every person whose data is unusual (a value that is not a plain string, a time
that is not a plain datetime), takes the full render. The result is the full render's, to the byte: the words go
in raw where the template printed raw and HTML-escaped (by Jinja's own `escape`, which its autoescape calls) where
it escaped, which the marker itself tells (its `<` comes back as `&lt;` where the output was escaped); the
subject's whitespace is collapsed and the parts are stripped after the splice, as before; a key whose render fails
renders every one of its people in full, so each gets the same error as before. The first messages of each
template are rendered both ways and compared, and a difference turns the fast path off for that template.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import string
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from campaign.definition import WaveDef
from campaign.recipients import DeviceView, Recipient

OPEN, CLOSE = "\ue000", "\ue001"  # private-use code points: no template or escaping produces them by chance
MAX_KEYS = 4096  # about 9,000 keys cover 300,000 sample accounts; the commonest 4,096 cover 98 % of them
MAX_BYTES = 32 * 2**20  # and at most this much kept text (a shipped notice keeps about 8 KB a key)
MAX_SEEN = 65536  # keys remembered as seen once (forgotten all together when full)
VERIFY = 4  # keys per template whose first message is also rendered in full and compared

Parts = list[str]  # subject, text, html as the templates render them, before the subject is made one line


@dataclass(frozen=True)
class _Skeleton:
    """One key's three parts, each as its pieces of text with the slots between them: slot (at, i) takes the
    person's i-th word raw, (at, n + i) escaped. (`str.format` on a pattern re-reads all its text every time.)"""

    pieces: tuple[tuple[str, ...], ...]
    slots: tuple[tuple[tuple[int, int], ...], ...]
    escapes: bool  # whether any slot needs the escaped words

    def fill(self, words: list[str], escape: Callable[[str], str]) -> Parts:
        values = words + [escape(w) for w in words] if self.escapes else words
        out = []
        for pieces, slots in zip(self.pieces, self.slots, strict=True):
            text = list(pieces)
            for at, index in slots:
                text[at] = values[index]
            out.append("".join(text))
        return out


_FULL = _Skeleton((), (), False)  # this key renders in full (its render failed, or printed a marker oddly)


class FastPath:
    """The cache of skeletons for one Renderer. `parts` answers a message's three parts, or None: render it in
    full. Thread-safe (the cache is shared by whatever threads render with its Renderer)."""

    def __init__(self, full: Callable[[WaveDef, str, Recipient, Sequence[DeviceView]], Parts],
                 proof: Callable[[str], str | None], max_keys: int = MAX_KEYS, max_bytes: int = MAX_BYTES,
                 verify: int = VERIFY, *, escape: Callable[[str], str]) -> None:
        self.full, self.proof = full, proof
        # Jinja's escape filter: the function its autoescape calls (HTML is escaped by Jinja alone).
        self.escape = escape
        self.max_keys, self.max_bytes, self.verify = max_keys, max_bytes, verify
        # A fresh nonce in every marker: no data or template text can forge one without reading it.
        self.nonce = "".join(secrets.choice(string.ascii_lowercase) for _ in range(16))
        self._marker = re.compile(re.escape(OPEN + self.nonce) + r"(\d+)(<|&lt;)" + re.escape(CLOSE))
        self._refused: dict[tuple[str, str], str | None] = {}
        self._cache: OrderedDict[Hashable, _Skeleton] = OrderedDict()
        self._bytes = 0  # of the pieces in the pool
        self._pool: dict[str, list[Any]] = {}  # piece of text -> [the one kept, how many skeletons hold it]
        self._checked: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._seen: set[Hashable] = set()  # keys seen once, not learnt yet
        self.learn_after = 2  # sightings of a key before it is learnt (1: at once)
        self.hits = self.misses = self.full_renders = self.first_sights = 0

    def refused(self, wave: str, folder: str) -> str | None:
        """Why the templates of `wave` in `folder` always render in full (None: they may take the fast path)."""
        key = (wave, folder)
        if key not in self._refused:
            self._refused[key] = next(filter(None, (self.proof(f"{folder}/{wave}.{part}.j2")
                                                    for part in ("subject", "txt", "html"))), None)
        return self._refused[key]

    def parts(self, wave: WaveDef, folder: str, recipient: Recipient, devices: Sequence[DeviceView]) -> Parts | None:
        words = [recipient.name, recipient.email]
        shape: list[tuple[object, ...]] = []
        for d in devices:
            changed = d.changed_at
            if changed is None:
                shape.append((d.model,))
            elif type(changed) is dt.datetime:
                # Equal datetimes of one tzinfo compare by wall time, fold ignored: keep the fold and the zone.
                shape.append((d.model, changed, changed.fold, changed.tzinfo))
            else:
                return None
            words.append(d.name)
        if not all(type(w) is str for w in words) or not all(type(s[0]) is str for s in shape) or \
                type(recipient.locale) is not str or type(recipient.timezone) is not str:
            return None
        if self.refused(wave.name, folder) is not None:
            return None
        key = (wave, folder, recipient.locale, recipient.timezone, tuple(shape))
        with self._lock:
            skeleton = self._cache.get(key)
            if skeleton is not None:
                self._cache.move_to_end(key)
                self.hits += 1
        if skeleton is None:
            if self.learn_after > 1 and key not in self._seen:
                # A key seen once is not learnt: the first person of it renders in full, and keys of one person
                # (a third of them) neither cost a marked render nor push the common ones out of the cache.
                with self._lock:
                    if len(self._seen) >= MAX_SEEN:
                        self._seen.clear()
                    self._seen.add(key)
                    self.first_sights += 1
                return None
            skeleton = self._learn(wave, folder, recipient, devices)
            with self._lock:
                self.misses += 1
                if key not in self._cache:
                    if skeleton is not _FULL:
                        skeleton = self._share(skeleton)
                    self._cache[key] = skeleton
                    while len(self._cache) > self.max_keys or self._bytes > self.max_bytes:
                        self._release(self._cache.popitem(last=False)[1])
        if skeleton is _FULL:
            self.full_renders += 1
            return None
        out = skeleton.fill(words, self.escape)
        if self._checked.get((wave.name, folder), 0) < self.verify:
            out = self._check(wave, folder, recipient, devices, out)
        return out

    def _share(self, skeleton: _Skeleton) -> _Skeleton:
        """The skeleton with its pieces of text shared with the other keys' (a paragraph is the same for every zone
        whose dates read alike, a footer for every key of its folder); counts the bytes of the new ones."""
        pieces = []
        for part in skeleton.pieces:
            shared = []
            for piece in part:
                entry = self._pool.get(piece)
                if entry is None:
                    entry = self._pool[piece] = [piece, 0]
                    self._bytes += sys.getsizeof(piece)
                entry[1] += 1
                shared.append(entry[0])
            pieces.append(tuple(shared))
        return _Skeleton(tuple(pieces), skeleton.slots, skeleton.escapes)

    def _release(self, skeleton: _Skeleton) -> None:
        for part in skeleton.pieces:
            for piece in part:
                entry = self._pool[piece]
                entry[1] -= 1
                if not entry[1]:
                    del self._pool[piece]
                    self._bytes -= sys.getsizeof(piece)

    def _learn(self, wave: WaveDef, folder: str, recipient: Recipient, devices: Sequence[DeviceView]) -> _Skeleton:
        """Render the key once with markers for the words, and read where each landed and how it was printed."""
        mark = [f"{OPEN}{self.nonce}{i}<{CLOSE}" for i in range(2 + len(devices))]
        stand_in = Recipient(recipient.account_id, mark[1], mark[0], recipient.locale, recipient.timezone)
        views = [DeviceView(d.device_id, mark[2 + i], d.model, d.changed_at) for i, d in enumerate(devices)]
        try:
            rendered = self.full(wave, folder, stand_in, views)
        except Exception:
            return _FULL
        n, escapes = len(mark), False
        every: list[tuple[str, ...]] = []
        slots: list[tuple[tuple[int, int], ...]] = []
        for text in rendered:
            found = list(self._marker.finditer(text))
            # Every marker character and nonce in the text is one of a whole marker's, or some marker was printed
            # other than as it is (`upper`, `truncate`), or the data holds look-alikes: then render in full.
            if not text.count(OPEN) == text.count(CLOSE) == text.count(self.nonce) == len(found):
                return _FULL
            pieces: list[str] = []
            filled: list[tuple[int, int]] = []
            at = 0
            for m in found:
                index, escaped = int(m.group(1)), m.group(2) != "<"
                if index >= n:
                    return _FULL
                pieces.append(text[at:m.start()])
                filled.append((len(pieces), index + n if escaped else index))
                pieces.append("")
                escapes = escapes or escaped
                at = m.end()
            pieces.append(text[at:])
            every.append(tuple(pieces))
            slots.append(tuple(filled))
        return _Skeleton(tuple(every), tuple(slots), escapes)

    def _check(self, wave: WaveDef, folder: str, recipient: Recipient, devices: Sequence[DeviceView],
               fast: Parts) -> Parts:
        """The first messages of a template, rendered in full too: a difference (a template the proof let through
        wrongly) turns its fast path off."""
        full = self.full(wave, folder, recipient, devices)
        with self._lock:
            where = (wave.name, folder)
            self._checked[where] = self._checked.get(where, 0) + 1
            if full != fast:
                self._refused[where] = "the fast path's message differed from the full render's"
        return full

