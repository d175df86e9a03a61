"""Rendering's fast path (issue 26) gives the full render's result, to the byte, or its error, for any person:
drawn with hypothesis over hostile names, addresses and device names, zones, locales and device counts, on the
shipped templates and on templates written to trip it; and the proof refuses every template that does more with a
person's words than print them."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign.definition import load_definition
from campaign.notices.fastpath import CLOSE, OPEN, FastPath
from campaign.notices.rendering import Rendered, Renderer
from campaign.recipients import DeviceView, Recipient
from tests.conftest import ROOT

EXAMPLE = ROOT / "data" / "voice-local-processing.toml"
FOLDER = ROOT / "templates" / "voice-local-processing"

LOCALES = ["en-US", "es-US", "de-DE", "ja-JP", "de-AT", "es-MX", "ja", "fr-FR", "de"]
ZONES = ["America/Los_Angeles", "Europe/Dublin", "Asia/Kathmandu", "America/St_Johns", "Etc/GMT+5", "UTC",
         "Asia/Tokyo", "Europe/Vienna", "Not/AZone"]
MODELS = ["Echo Show 10", "Echo Dot (4th Gen)", "<b>&amp;</b>", "{0} {name}", OPEN + "0<" + CLOSE]
_UTC = dt.UTC
_LA = dt.timezone(dt.timedelta(hours=-8))
CHANGED = [None, dt.datetime(2025, 3, 28, 7, 0, tzinfo=_UTC), dt.datetime(2025, 3, 27, 23, 0, tzinfo=_LA),
           dt.datetime(2025, 3, 28, 7, 0, 0, 1, tzinfo=_UTC)]

# Words with everything that could go wrong between markers: HTML specials, braces, whitespace of every kind,
# markers' own characters and look-alikes, and long ones.
_chars = st.characters(blacklist_categories=["Cs"])
_special = st.sampled_from(["&", "<", ">", '"', "'", "{", "}", "{0}", "\n", "\r\n", "\t", " ", "\u00a0", "\u2028",
                            OPEN, CLOSE, OPEN + "0<" + CLOSE, "&lt;", "<script>", "\x00", "％", "é"])
words = st.one_of(st.text(_chars, max_size=30), st.lists(st.one_of(_special, st.text(_chars, max_size=4)),
                                                         max_size=12).map("".join),
                  st.text(_chars, min_size=300, max_size=1200))


def people() -> st.SearchStrategy[tuple[Recipient, list[DeviceView]]]:
    device = st.builds(lambda i, n, m, c: DeviceView(f"d{i}", n, m, c), st.integers(0, 9), words,
                       st.sampled_from(MODELS), st.sampled_from(CHANGED))
    person = st.builds(lambda n, e, loc, tz: Recipient("a1", e, n, loc, tz), words, words,
                       st.sampled_from(LOCALES), st.sampled_from(ZONES))
    return st.tuples(person, st.lists(device, min_size=0, max_size=4))


def outcome(render: object) -> Rendered | tuple[str, str]:
    """A render's result, or its error as (type, message): the fast path must give the same either way."""
    assert callable(render)
    try:
        return render()  # type: ignore[no-any-return]
    except Exception as exc:
        return type(exc).__name__, str(exc)


def same(r: Renderer, wave_index: int, person: Recipient, devices: list[DeviceView]) -> None:
    wave = r.definition.waves[wave_index % len(r.definition.waves)]
    assert outcome(lambda: r.render(wave, person, devices)) == outcome(lambda: r.render_full(wave, person, devices))


def shipped(tmp_path: Path | None = None, **overrides: str) -> Renderer:
    """The shipped campaign's Renderer (with en-US templates replaced by `overrides`: part -> source); its fast
    path is not checked against full renders, so that what is compared is the fast path itself."""
    templates = ROOT / "templates"
    if overrides:
        assert tmp_path is not None
        templates = tmp_path / "templates"
        if not templates.exists():
            shutil.copytree(ROOT / "templates", templates)
        for part, source in overrides.items():
            (templates / "voice-local-processing" / part).write_text(source, encoding="utf-8")
    r = Renderer(load_definition(EXAMPLE, templates), templates)
    r.fast.verify = 0
    r.fast.learn_after = 1
    return r


SHIPPED = shipped()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(people(), st.integers(0, 2))
def test_fast_equals_full_on_the_shipped_templates(person: tuple[Recipient, list[DeviceView]], wave: int) -> None:
    same(SHIPPED, wave, *person)


def test_the_shipped_templates_take_the_fast_path() -> None:
    r = shipped()
    for wave in r.definition.waves:
        for folder in r.available_locales():
            assert r.fast.refused(wave.name, folder) is None, (wave.name, folder)
    devices = [DeviceView("d1", "Küche & <Bad>", "Echo Show 10")]
    notice = r.definition.waves[0]
    first = r.render(notice, Recipient("a1", "a@x.example", "Ann & Bob", "de-DE", "Europe/Berlin"), devices)
    assert r.fast.misses == 1 and r.fast.hits == 0
    again = r.render(notice, Recipient("a2", "b@x.example", "Jo <i>", "de-DE", "Europe/Berlin"),
                     [DeviceView("d2", "Flur", "Echo Show 10")])
    assert r.fast.misses == 1 and r.fast.hits == 1  # the second person's words spliced into the first's skeleton
    assert "Guten Tag Jo &lt;i&gt;," in again.html and "Guten Tag Jo <i>," in again.text
    assert "Ann" not in again.html + again.text and "Flur" in again.html and "Küche" in first.text


# Templates that do more with a person's words than print them, or reach them by another way: each one refused.
UNSAFE = {
    "condition": "{% if account.name %}Hi{% endif %}",
    "filtered": "{{ account.name | upper }}",
    "escaped by hand": "{{ account.name | e }}",
    "joined": '{{ "Dear " ~ account.name }}',
    "set": "{% set n = account.name %}{{ n }}",
    "set block": "{% set n %}{{ account.name }}{% endset %}{{ n | length }}",
    "with": "{% with n = account.email %}{{ n }}{% endwith %}",
    "account to a macro": "{% macro m(a) %}{{ a.name }}{% endmacro %}{{ m(account) }}",
    "printed in a macro": "{% macro m() %}{{ account.name }}{% endmacro %}{{ m() | upper }}",
    "call block": "{% macro m() %}{{ caller() | upper }}{% endmacro %}{% call m() %}{{ account.name }}{% endcall %}",
    "loop over name": "{% for c in account.name %}{{ c }}{% endfor %}",
    "item access": '{{ account["name"] }}',
    "whole account": "{{ account | tojson }}",
    "test": "{{ account.name is string }}",
    "device name filtered": "{% for d in devices %}{{ d.name | trim }}{% endfor %}",
    "device name compared": '{% for d in devices %}{% if d.name == "x" %}y{% endif %}{% endfor %}',
    "devices mapped": '{{ devices | map(attribute="name") | join(", ") }}',
    "devices indexed": "{{ devices[0].name }}",
    "loop that filters": "{% for d in devices if d.name %}{{ d.model }}{% endfor %}",
    "loop neighbour": "{% for d in devices %}{{ loop.previtem }}{% endfor %}",
    "devices sorted": '{% for d in devices | sort(attribute="name") %}{{ d.model }}{% endfor %}',
    "filter block": "{% filter upper %}{{ account.name }}{% endfilter %}",
    "include in a filter block": '{% filter upper %}{% include "en-US/_inc.txt.j2" %}{% endfilter %}',
    "include in a device loop": '{% for device in devices %}{% include "en-US/_inc.txt.j2" %}{% endfor %}',
    "import of a person's words": '{% import "en-US/_inc.txt.j2" as m with context %}{{ m | upper }}',
    "self": "{{ self.title() | upper }}",
    "super, filtered": "{% extends 'en-US/_base.txt.j2' %}{% block main %}{{ super() | upper }}{% endblock %}",
    "time now": "{{ cutoff.now() }}",
    "random words": "{{ lipsum(1) }}",
    "random filter": "{{ [1, 2] | random }}",
    "assigns account": '{% set account = {"name": "x"} %}{{ account.name }}',
    "scoped block": "{% for d in devices %}{% block b scoped %}{{ d.name }}{% endblock %}{% endfor %}",
    "named by expression": "{% include account.locale ~ '/_inc.txt.j2' %}",
}
CHANGING = {"time now", "random words", "random filter"}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_the_proof_refuses_what_it_cannot_prove(tmp_path: Path, case: str) -> None:
    r = shipped(tmp_path, **{"en-US/notice.txt.j2": UNSAFE[case], "en-US/_inc.txt.j2": "Hi {{ account.name }}"})
    reason = r.fast.refused("notice", "en-US")
    assert reason is not None and "en-US/" in reason
    assert r.fast.refused("notice", "de-DE") is None  # other folders' templates keep their fast path
    for name in ("Ann", "x", "<b>", "") if case not in CHANGING else ():  # these differ between any two renders
        same(r, 0, Recipient("a1", "a@x.example", name, "en-US", "UTC"), [DeviceView("d1", name, "M")])
    assert r.fast.hits == r.fast.misses == 0


# Templates that only print a person's words, in every place they can be printed: taken, and equal to the full
# render on anything.
SAFE = {
    "en-US/notice.subject.j2": "{% if devices | length > 2 %}{{ undefined_name }}{% endif %}"
                               "{% if devices | length == 1 %}{{ account.name }}{% else %}S {{ account.name }}"
                               "{% endif %}",
    "en-US/notice.txt.j2": "{% extends 'en-US/_mid.txt.j2' %}{% block main %}{{ super() }}[{{ account.email }}]"
                           "{% for device in devices %}{{ loop.index }}. {{ device.name }} {{ device.model }} "
                           "{{ device.changed_at | format_datetime('long') }}{% else %}none{% endfor %}"
                           "{% for i in range(2) %}{{ account.name }}{% endfor %}{% endblock %}",
    "en-US/_mid.txt.j2": "{% set when = cutoff | format_date('long') %}{{ when }} {% block main %}"
                         "{{ account.name }}{% endblock %}{% include 'en-US/_inc.txt.j2' %}",
    "en-US/_inc.txt.j2": "inc: {{ account.name }} {{ account.timezone }} {{ campaign.context.company }}",
    "en-US/notice.html.j2": '{% import "en-US/_macros.j2" as m with context %}<p title="{{ account.name }}">'
                            "{{ m.hi() }} {{ account.name }}</p>"
                            "{% autoescape false %}{{ account.email }}{% endautoescape %}"
                            "{% for d in devices %}<li>{{ d.name }}</li>{% endfor %}"
                            "{% include 'en-US/_inc.txt.j2' %}",
    "en-US/_macros.j2": "{% macro hi() %}Hi {{ account.locale }}{% endmacro %}",
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(people())
def test_fast_equals_full_on_tricky_templates_it_takes(tmp_path: Path, person: tuple[Recipient, list[DeviceView]]
                                                       ) -> None:
    r = _tricky(tmp_path)
    assert r.fast.refused("notice", "en-US") is None
    recipient, devices = person
    same(r, 0, Recipient("a1", recipient.email, recipient.name, "en-US", recipient.timezone), devices)
    same(r, 0, recipient, devices)


_TRICKY: dict[Path, Renderer] = {}


def _tricky(tmp_path: Path) -> Renderer:
    """One Renderer of the tricky templates for the whole property test (its cache fills and is hit)."""
    if tmp_path not in _TRICKY:
        _TRICKY[tmp_path] = shipped(tmp_path, **SAFE)
    return _TRICKY[tmp_path]


def test_errors_are_the_full_renders_per_key(tmp_path: Path) -> None:
    r = shipped(tmp_path, **SAFE)
    notice = r.definition.waves[0]
    many = [DeviceView(f"d{i}", f"n{i}", "M") for i in range(3)]
    for _ in range(2):  # the second time from the cache's verdict on the key
        fast = outcome(lambda: r.render(notice, Recipient("a1", "e", "n", "en-US", "UTC"), many))
        assert fast == outcome(lambda: r.render_full(notice, Recipient("a1", "e", "n", "en-US", "UTC"), many))
        assert isinstance(fast, tuple) and "undefined_name" in fast[1]
    blank = outcome(lambda: r.render(notice, Recipient("a1", "e", " \n", "en-US", "UTC"), many[:1]))
    assert isinstance(blank, tuple) and "empty subject" in blank[1]
    # The failing key learnt once and rendered in full twice; the blank subject's key spliced, then refused.
    assert (r.fast.misses, r.fast.hits, r.fast.full_renders) == (2, 1, 2)


def test_a_transformation_the_proof_missed_is_caught(tmp_path: Path) -> None:
    """With a proof that lets everything through, markers printed other than as they are send the key to the full
    render, and the first messages' comparison turns the template off."""
    r = shipped(tmp_path, **{"en-US/notice.txt.j2": "{{ account.name | upper }}",
                             "en-US/notice.html.j2": "{{ account.name | length }}"})
    r.fast = FastPath(r._parts, lambda name: None, verify=0, escape=r.fast.escape)
    r.fast.learn_after = 1
    notice = r.definition.waves[0]
    person = Recipient("a1", "e", "ann", "en-US", "UTC")
    assert r.fast.parts(notice, "en-US", person, []) is None  # upper changed the marker: full render
    r = shipped(tmp_path, **{"en-US/notice.txt.j2": "{{ account.name }}"})
    r.fast = FastPath(r._parts, lambda name: None, verify=1, escape=r.fast.escape)
    r.fast.learn_after = 1
    assert r.render(notice, person, []) == r.render_full(notice, person, [])
    assert r.fast.refused("notice", "en-US") is not None  # `length` printed 20 for the marker, 3 for ann
    assert r.render(notice, Recipient("a2", "e", "bo", "en-US", "UTC"), []).html == "2\n"


def test_the_cache_is_bounded() -> None:
    r = shipped()
    r.fast = FastPath(r._parts, r.fast.proof, max_keys=3, max_bytes=10**9, verify=0, escape=r.fast.escape)
    r.fast.learn_after = 1
    notice = r.definition.waves[0]
    for zone in ZONES[:6]:
        r.render(notice, Recipient("a1", "e@x.example", "n", "en-US", zone), [DeviceView("d", "n", "M")])
    assert len(r.fast._cache) == 3 and r.fast.misses == 6
    r.fast = FastPath(r._parts, r.fast.proof, max_keys=100, max_bytes=30_000, verify=0, escape=r.fast.escape)
    r.fast.learn_after = 1
    for zone in ZONES[:6]:
        r.render(notice, Recipient("a1", "e@x.example", "n", "en-US", zone), [DeviceView("d", "n", "M")])
    assert 1 <= len(r.fast._cache) < 6 and r.fast._bytes <= 30_000


def test_a_key_is_learnt_at_its_second_person() -> None:
    r = Renderer(load_definition(EXAMPLE, ROOT / "templates"), ROOT / "templates")
    notice = r.definition.waves[0]
    people = [Recipient(f"a{i}", f"e{i}@x.example", f"<n{i}>", "de-DE", "Europe/Berlin") for i in range(4)]
    out = [r.render(notice, p, [DeviceView("d", f"d{i}", "M")]) for i, p in enumerate(people)]
    assert out == [r.render_full(notice, p, [DeviceView("d", f"d{i}", "M")]) for i, p in enumerate(people)]
    assert (r.fast.first_sights, r.fast.misses, r.fast.hits) == (1, 1, 2)
    lone = Recipient("b", "b@x.example", "b", "de-DE", "Asia/Tokyo")
    assert r.render(notice, lone, []) == r.render_full(notice, lone, [])
    assert (r.fast.first_sights, r.fast.misses, len(r.fast._cache)) == (2, 1, 1)  # rendered in full, not learnt


def test_unusual_data_takes_the_full_render() -> None:
    r = shipped()
    notice = r.definition.waves[0]

    class Name(str):
        pass

    for person, devices in [(Recipient("a1", "e", Name("<b>"), "en-US", "UTC"), []),
                            (Recipient("a1", "e", "n", "en-US", "UTC"), [DeviceView("d", "n", "M", dt.date.today())])]:
        assert r.fast.parts(notice, "en-US", person, devices) is None  # type: ignore[arg-type]
        same(r, 0, person, devices)  # type: ignore[arg-type]
