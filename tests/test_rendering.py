"""Templates: strict, sandboxed, localized; every problem found at `create` or `preview`, with the
template's file and line (G5); previews and the gallery."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import json
import shutil
import zoneinfo
from email.policy import default
from pathlib import Path

import pytest
from click.testing import Result

from campaign.definition import load_definition
from campaign.errors import TemplateProblem
from campaign.notices.rendering import Renderer
from campaign.recipients import DeviceView, Recipient
from tests.conftest import ROOT, CliRun

EXAMPLE = ROOT / "data" / "voice-local-processing.toml"
TEMPLATE = "voice-local-processing"
DEVICES = [DeviceView("d1", 'Küche & "Bad"', "Echo Show 10"), DeviceView("d2", "<script>alert(1)</script>",
                                                                          "Echo Dot (4th Gen)")]


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A private copy of the shipped templates, to break on purpose."""
    root = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", root)
    return root


def renderer(templates: Path) -> Renderer:
    return Renderer(load_definition(EXAMPLE, templates), templates)


def recipient(locale: str = "en-US", tz: str = "America/Los_Angeles", name: str = "Ann <b>Lee</b>") -> Recipient:
    return Recipient("a1", "ann@example.com", name, locale, tz)


def test_every_shipped_wave_and_locale_renders(templates: Path) -> None:
    r = renderer(templates)
    d = r.definition
    for locale in ("en-US", "es-US", "de-DE", "ja-JP"):
        for wave in d.waves:
            out = r.render(wave, recipient(locale), DEVICES)
            assert out.template_locale == locale
            assert "\n" not in out.subject and out.subject
            # Devices by name and model, in both parts; escaped in HTML only.
            assert 'Küche & "Bad"' in out.text and "<script>alert(1)</script>" in out.text
            assert "Küche &amp; &#34;Bad&#34;" in out.html
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html and "<script>" not in out.html
            assert "Ann &lt;b&gt;Lee&lt;/b&gt;" in out.html
            assert d.context["settings_url"] in out.text and d.context["settings_url"] in out.html
            assert out.html.lstrip().startswith("<!DOCTYPE html>")


def test_cutoff_in_the_recipients_zone_and_language(templates: Path) -> None:
    r = renderer(templates)
    notice = r.definition.waves[0]
    # 2025-03-28T07:00Z is 00:00 in Los Angeles, 08:00 in Vienna (before the switch to summer time),
    # 16:00 in Tokyo.
    assert "12:00 AM" in r.render(notice, recipient("en-US"), DEVICES).text.replace("\u202f", " ")
    de_at = r.render(notice, recipient("de-AT", "Europe/Vienna"), DEVICES)
    assert "8:00" in de_at.text and "28. März 2025" in de_at.text
    ja = r.render(notice, recipient("ja-JP", "Asia/Tokyo"), DEVICES)
    assert "2025年3月28日" in ja.text and "16:00" in ja.text


def test_locale_falls_back_to_language_then_default(templates: Path) -> None:
    r = renderer(templates)
    notice = r.definition.waves[0]
    assert r.render(notice, recipient("de-AT", "Europe/Vienna"), DEVICES).template_locale == "de"
    shutil.rmtree(templates / TEMPLATE / "de")
    r = renderer(templates)
    fallback = r.render(notice, recipient("de-AT", "Europe/Vienna"), DEVICES)
    assert fallback.template_locale == "en-US"
    assert "March 28, 2025" in fallback.text  # an English text gets English dates
    assert r.render(notice, recipient("fr-FR", "Europe/Paris"), DEVICES).template_locale == "en-US"


def break_template(templates: Path, name: str, old: str, new: str) -> Path:
    path = templates / TEMPLATE / name
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line)


def test_undefined_name_names_file_and_line(templates: Path) -> None:
    path = break_template(templates, "en-US/notice.txt.j2", "Hello {{ account.name }}",
                          "Hello {{ account.nickname }}")
    with pytest.raises(TemplateProblem) as info:
        renderer(templates).render(renderer(templates).definition.waves[0], recipient(), DEVICES)
    message = str(info.value)
    assert f"{path}:{line_of(path, 'nickname')}: `nickname` is not defined" in message
    # Plain words with what the context has, not "'mappingproxy object' has no attribute" (issue 23 item 5).
    assert "the context has account, campaign, cutoff, devices, wave" in message
    assert "campaign.context, from the definition's [context], has " in message and "settings_url" in message
    assert "mappingproxy" not in message and "UndefinedError" not in message


def test_an_undefined_context_value_and_a_missing_part_read_plainly(templates: Path) -> None:
    path = break_template(templates, "en-US/notice.txt.j2", "Hello {{ account.name }}",
                          "Hello {{ campaign.context.support_phone }}")
    with pytest.raises(TemplateProblem) as info:
        renderer(templates).render(renderer(templates).definition.waves[0], recipient(), DEVICES)
    assert f"{path}:{line_of(path, 'support_phone')}: `support_phone` is not defined" in str(info.value)
    (templates / TEMPLATE / "de-DE" / "reminder.html.j2").unlink()
    r = renderer(templates)
    with pytest.raises(TemplateProblem) as missing:
        r.render(r.definition.waves[1], recipient("de-DE", "Europe/Berlin"), DEVICES)
    assert str(missing.value) == (f"no template for `de-DE` / `reminder` (looked for "
                                  f"{templates / TEMPLATE / 'de-DE' / 'reminder.html.j2'})")


def test_syntax_error_names_file_and_line(templates: Path) -> None:
    path = break_template(templates, "de-DE/reminder.html.j2", "{% endblock %}", "{% endblok %}")
    r = renderer(templates)
    with pytest.raises(TemplateProblem) as info:
        r.render(r.definition.wave("reminder"), recipient("de-DE", "Europe/Berlin"), DEVICES)
    assert f"{path}:{line_of(path, 'endblok')}: syntax error" in str(info.value)


@pytest.mark.parametrize("attack", [
    "{{ account.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{% set x = devices.append(1) %}",
])
def test_sandbox_escapes_are_refused(templates: Path, attack: str) -> None:
    path = break_template(templates, "en-US/notice.txt.j2", "Hello {{ account.name }}", f"Hello {attack}")
    r = renderer(templates)
    with pytest.raises(TemplateProblem) as info:
        r.render(r.definition.waves[0], recipient(), DEVICES)
    assert str(path) in str(info.value)


def create(run_cli: CliRun, templates: Path) -> Result:
    return run_cli("create", str(EXAMPLE), env={"CAMPAIGN_TEMPLATES": str(templates)})


def import_example(run_cli: CliRun) -> None:
    assert run_cli("import", "accounts", str(ROOT / "data" / "accounts.csv")).exit_code == 0
    assert run_cli("import", "devices", str(ROOT / "data" / "devices.csv")).exit_code == 0


def test_create_renders_every_wave_and_locale(run_cli: CliRun, templates: Path) -> None:
    import_example(run_cli)
    result = create(run_cli, templates)
    assert result.exit_code == 0, result.output
    # 3 waves × the 8 locales of the audience, the default locale (en-US) among them: rendered once.
    assert "24 sample messages (3 waves × 8 locales) rendered without error" in result.stdout


def test_create_refuses_a_broken_template_of_one_locale(run_cli: CliRun, templates: Path) -> None:
    import_example(run_cli)
    path = break_template(templates, "ja-JP/confirmation.txt.j2", "{{", "{{ campaign.missing_key }}{{")
    result = create(run_cli, templates)
    assert result.exit_code == 2
    assert f"{path}:" in result.stderr and "missing_key" in result.stderr
    assert "Traceback" not in result.output
    assert json.loads(run_cli("list", "--json").stdout) == []


def test_create_refuses_a_missing_default_template(run_cli: CliRun, templates: Path) -> None:
    (templates / TEMPLATE / "en-US" / "reminder.subject.j2").unlink()
    result = create(run_cli, templates)
    assert result.exit_code == 2
    assert "no template for `en-US` / `reminder` (looked for " in result.stderr
    assert "en-US/reminder.subject.j2" in result.stderr and "Traceback" not in result.output


def test_preview_shows_headers_and_text(run_cli: CliRun) -> None:
    import_example(run_cli)
    assert run_cli("create", str(EXAMPLE)).exit_code == 0
    result = run_cli("preview", "voice-local-processing", "--wave", "reminder", "--locale", "ja-JP")
    assert result.exit_code == 0, result.output
    head, _, body = result.stdout.partition("\n\n")
    assert "Auto-Submitted: auto-generated" in head and "Message-ID: <" in head
    assert "Subject: =?utf-8?b?" in head
    assert "様" in body  # the Japanese text part, decoded
    html = run_cli("preview", "voice-local-processing", "--locale", "de-DE", "--html").stdout
    assert '<html lang="de-DE">' in html


def test_preview_of_one_account(run_cli: CliRun) -> None:
    import_example(run_cli)
    assert run_cli("create", str(EXAMPLE)).exit_code == 0
    audience = json.loads(run_cli("audience", "voice-local-processing", "--sample", "1", "--json").stdout)
    account = audience["sample"][0]
    result = run_cli("preview", "voice-local-processing", "--account", account["account_id"])
    assert result.exit_code == 0
    msg = email.message_from_string(result.stdout.partition("\n\n")[0] + "\n\n", policy=default)
    assert msg["To"].addresses[0].addr_spec == account["email"]
    missing = run_cli("preview", "voice-local-processing", "--account", "nobody")
    assert missing.exit_code == 2 and "no account 'nobody'" in missing.stderr


def test_preview_gallery(run_cli: CliRun, tmp_path: Path) -> None:
    import_example(run_cli)
    assert run_cli("create", str(EXAMPLE)).exit_code == 0
    out = tmp_path / "gallery"
    result = run_cli("preview", "voice-local-processing", "--out", str(out))
    assert result.exit_code == 0, result.output
    emls = sorted(out.glob("*.eml"))
    assert len(emls) == 24 and (out / "notice.ja-JP.html").is_file()
    index = (out / "index.html").read_text(encoding="utf-8")
    for eml in emls:
        assert f'href="{eml.name}"' in index
        msg = email.message_from_bytes(eml.read_bytes(), policy=default)
        assert msg.get_content_type() == "multipart/alternative"
    by_locale = json.loads(run_cli("audience", "voice-local-processing", "--by", "locale", "--json").stdout)["by"]
    assert f"({by_locale['es-US']['accounts']} accounts; template es-US)" in index



def test_the_gallery_shows_hostile_data_as_text(templates: Path, tmp_path: Path) -> None:
    """The gallery's index escapes whatever it shows (Jinja2's autoescape): a campaign's name and slug, an
    account's and a device's name in the text part, a subject, a template folder, and a wave's name in the ids,
    links, table and frame it names the files by."""
    from campaign.notices.proofs import Sample
    from campaign.previews import frame_height, write_gallery
    from tests.test_html_report import HOSTILE, Page, assert_escaped

    in_a_name = """notice<b onclick="x">&'y'"""  # a file's name holds no slash
    r = renderer(templates)
    d = dataclasses.replace(r.definition, name=HOSTILE, slug=HOSTILE)
    person = recipient("de-DE", "Europe/Berlin", name=HOSTILE)
    devices = (*DEVICES, DeviceView("d3", HOSTILE, "Echo Show 10"))
    rendered = r.render(d.waves[0], person, list(devices))
    rendered = dataclasses.replace(rendered, subject=HOSTILE, template_locale=HOSTILE)
    index = write_gallery([Sample(in_a_name, "de-DE", 0, person, devices, rendered, b"")], tmp_path, d)
    page = index.read_text(encoding="utf-8")
    parsed: Page = assert_escaped(page, {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code",
                                         "small", "strong", "section", "a", "div", "iframe", "pre", "table", "thead",
                                         "tbody", "tr", "th", "td", "br", "span"},
                                  # title, h1, slug, template ×2, subject, name, device, fallback
                                  in_text=9, in_attributes=0)
    assert [a for _, a in parsed.tags if in_a_name in "".join(v or "" for v in a.values())] == [
        {"href": f"#{in_a_name}.de-DE"}, {"id": f"{in_a_name}.de-DE"}, {"href": f"{in_a_name}.de-DE.html"},
        {"href": f"{in_a_name}.de-DE.eml"},
        {"title": f"HTML of {in_a_name}.de-DE", "src": f"{in_a_name}.de-DE.html", "sandbox": None, "width": "660",
         "height": str(frame_height(rendered.html))}]
    assert "onclick" not in {name for _, a in parsed.tags for name in a}
    # The text part is shown whole, as it is: the hostile names in it, and its lines.
    assert rendered.text in "".join(parsed.text)
    assert (tmp_path / f"{in_a_name}.de-DE.html").read_text(encoding="utf-8") == rendered.html


def test_render_waves_streams_every_recipient(run_cli: CliRun, engine: object, templates: Path) -> None:
    from campaign import campaigns, db
    from campaign.notices import proofs
    import_example(run_cli)
    assert create(run_cli, templates).exit_code == 0
    audience = json.loads(run_cli("audience", "voice-local-processing", "--by", "locale", "--json").stdout)
    with db.read(engine) as conn:  # type: ignore[arg-type]
        c = campaigns.get(conn, "voice-local-processing")
        r = Renderer(c.definition, templates)
        tallies = proofs.render_waves(conn, c.definition, r)
        assert [(t.wave, t.rendered, t.failed, t.problems) for t in tallies] == [
            (w.name, audience["accounts"], 0, []) for w in c.definition.waves]
        # A template that breaks only for some data: found for every account it breaks for, in that wave only.
        break_template(templates, "ja-JP/notice.txt.j2", "{{", "{{ 1 // (devices | length - 1) }}{{")
        r = Renderer(c.definition, templates)
        notice, *others = proofs.render_waves(conn, c.definition, r)
    assert notice.problems and all("ZeroDivisionError" in p for p in notice.problems)
    assert notice.failed and notice.rendered + notice.failed == audience["accounts"]
    assert all(t.failed == 0 and t.rendered == audience["accounts"] for t in others)


def test_confirmation_names_each_switched_device_and_when_in_the_readers_zone_and_language(templates: Path) -> None:
    import datetime as dt

    r = renderer(templates)
    wave = r.definition.wave("confirmation")
    cutoff = r.definition.cutoff  # 2025-03-28T07:00Z
    late = cutoff + dt.timedelta(days=4, hours=3)  # a device flipped later, after fair notice
    devices = [DeviceView("d1", "Kitchen", "Echo Show 10", cutoff), DeviceView("d2", "Den", "Echo Dot (4th Gen)", late)]
    en = r.render(wave, recipient("en-US", "America/Los_Angeles"), devices)
    assert "Kitchen (Echo Show 10) — switched March 28, 2025, 12:00 AM PDT" in en.text
    assert "Den (Echo Dot (4th Gen)) — switched April 1, 2025, 3:00 AM PDT" in en.text
    assert "switched March 28, 2025, 12:00 AM PDT" in en.html and "April 1, 2025, 3:00 AM PDT" in en.html
    de = r.render(wave, recipient("de-DE", "Europe/Berlin"), devices)
    assert "Kitchen (Echo Show 10) – umgestellt am 28. März 2025 um 08:00 MEZ" in de.text
    assert "Den (Echo Dot (4th Gen)) – umgestellt am 1. April 2025 um 12:00 MESZ" in de.text
    ja = r.render(wave, recipient("ja-JP", "Asia/Tokyo"), devices)
    assert "Kitchen（Echo Show 10）：2025年3月28日 16:00 JSTに切り替え" in ja.text
    # Before the flip (preview, create) a device has no switch time yet: the cutoff stands in.
    preview = r.render(wave, recipient("en-US", "America/Los_Angeles"), [DeviceView("d1", "Kitchen", "Echo Show 10")])
    assert "switched March 28, 2025, 12:00 AM PDT" in preview.text


def _gmt(offset: dt.timedelta) -> str:
    """The offset as the shipped notices must print it, worked out from zoneinfo alone: GMT+05:30, GMT-03:00."""
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"GMT{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@pytest.mark.parametrize("month", [1, 7], ids=["winter", "summer"])
def test_the_zone_label_is_right_for_every_zone(templates: Path, month: int) -> None:
    """Every zone of tzdata, a winter and a summer cutoff: the notice prints the offset that zoneinfo gives for
    that instant (CLDR's long names got Dublin backwards: 'Greenwich Mean Time' in Irish summer), and the zone's
    city beside it unless the zone is only an offset (Etc/GMT+5 is five hours behind: no 'GMT+5' city)."""
    base = renderer(templates)
    cutoff = dt.datetime(2025, month, 15, 23, 0, tzinfo=dt.UTC)
    r = Renderer(dataclasses.replace(base.definition, cutoff=cutoff), templates)
    wave = r.definition.waves[0]
    wrong = []
    for key in sorted(zoneinfo.available_timezones()):
        if key in ("Factory", "localtime"):
            continue
        zone = zoneinfo.ZoneInfo(key)
        expected = _gmt(cutoff.astimezone(zone).utcoffset() or dt.timedelta(0))
        for locale in ("en-US", "es-US", "de-DE", "ja-JP"):
            text = r.render(wave, recipient(locale, key), DEVICES).text
            start = text.find(expected)
            if start < 0:
                wrong.append(f"{key} {locale}: no {expected}")
            elif not key.startswith(("Etc/", "UTC", "UCT", "GMT", "Universal", "Zulu", "Greenwich")) and \
                    not text[start + len(expected):].startswith(", "):
                wrong.append(f"{key} {locale}: no city after {expected}")
    assert not wrong, wrong[:20]
    dublin = r.render(wave, recipient("en-US", "Europe/Dublin"), DEVICES).text
    assert ("GMT+00:00, Dublin" if month == 1 else "GMT+01:00, Dublin") in dublin
    assert "Greenwich Mean Time" not in dublin and "Irish Standard Time" not in dublin
