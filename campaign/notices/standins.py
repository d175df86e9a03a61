"""Made-up people for review material: the gallery, `test-send` and `preview --locale` show each locale's messages
for a stand-in — a name, two rooms and a time zone that fit the locale, an address at example.com — so that what
is shared for review carries no customer's name, address, device or id (`--real-sample` asks for a real one).

A locale finds its person by its tag (`en-GB`), then its language (`en`), then a neutral English stand-in; its
time zone comes from its territory (the tag's, else the language's likely one, as CLDR has it). Device models are
not personal data: the caller passes the audience's (or the definition's), so that the messages show real ones."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from babel.core import get_global

from campaign.recipients import DeviceView, Recipient

ID_PREFIX = "stand-in"  # a stand-in's account and device ids begin with it
DOMAIN = "example.com"  # reserved for examples (RFC 2606): no mailbox of anyone's
GENERIC_MODEL = "Smart speaker"  # when neither the audience nor the definition names a model


@dataclass(frozen=True)
class Person:
    """A locale's stand-in: the name its readers would take for a placeholder, a mailbox, and two rooms (two
    devices, so that the plural forms of a message show)."""

    name: str
    mailbox: str  # the local part of the address, ASCII
    rooms: tuple[str, str]


# Each one the placeholder name its language uses on forms and in examples (Germany's Erika Mustermann, Japan's
# 山田 花子, Poland's Jan Kowalski …), with two rooms in that language.
PEOPLE: dict[str, Person] = {
    "en": Person("Jane Doe", "jane.doe", ("Kitchen", "Living Room")),
    "en-GB": Person("Joe Bloggs", "joe.bloggs", ("Kitchen", "Lounge")),
    "en-AU": Person("John Citizen", "john.citizen", ("Kitchen", "Lounge")),
    "de": Person("Erika Mustermann", "erika.mustermann", ("Küche", "Wohnzimmer")),
    "fr": Person("Marie Dupont", "marie.dupont", ("Cuisine", "Salon")),
    "es": Person("Fulano de Tal", "fulano.de.tal", ("Cocina", "Sala de estar")),
    "it": Person("Mario Rossi", "mario.rossi", ("Cucina", "Soggiorno")),
    "nl": Person("Jan Jansen", "jan.jansen", ("Keuken", "Woonkamer")),
    "pt": Person("João Ninguém", "joao.ninguem", ("Cozinha", "Sala de estar")),
    "sv": Person("Anna Svensson", "anna.svensson", ("Kök", "Vardagsrum")),
    "da": Person("Jens Hansen", "jens.hansen", ("Køkken", "Stue")),
    "nb": Person("Ola Nordmann", "ola.nordmann", ("Kjøkken", "Stue")),
    "no": Person("Ola Nordmann", "ola.nordmann", ("Kjøkken", "Stue")),
    "fi": Person("Matti Meikäläinen", "matti.meikalainen", ("Keittiö", "Olohuone")),
    "pl": Person("Jan Kowalski", "jan.kowalski", ("Kuchnia", "Salon")),
    "cs": Person("Jan Novák", "jan.novak", ("Kuchyně", "Obývací pokoj")),
    "tr": Person("Ayşe Yılmaz", "ayse.yilmaz", ("Mutfak", "Oturma odası")),
    "ru": Person("Иван Иванов", "ivan.ivanov", ("Кухня", "Гостиная")),
    "ja": Person("山田 花子", "hanako.yamada", ("リビング", "寝室")),
    "ko": Person("홍길동", "gildong.hong", ("거실", "주방")),
    "zh": Person("张三", "zhang.san", ("客厅", "厨房")),
    "zh-Hant": Person("陳大文", "chan.tai.man", ("客廳", "廚房")),
}
NEUTRAL = Person("Alex Example", "alex.example", ("Kitchen", "Living Room"))

# Where a territory spans several zones, the one most of its people live in (CLDR lists them alphabetically:
# the United States would read America/Adak). A territory of one zone needs no line here.
MAIN_ZONE: dict[str, str] = {
    "US": "America/New_York", "CA": "America/Toronto", "MX": "America/Mexico_City", "BR": "America/Sao_Paulo",
    "AR": "America/Argentina/Buenos_Aires", "CL": "America/Santiago", "EC": "America/Guayaquil",
    "ES": "Europe/Madrid", "PT": "Europe/Lisbon", "DE": "Europe/Berlin", "RU": "Europe/Moscow",
    "UA": "Europe/Kyiv", "AU": "Australia/Sydney", "NZ": "Pacific/Auckland", "CN": "Asia/Shanghai",
    "ID": "Asia/Jakarta", "MY": "Asia/Kuala_Lumpur", "KZ": "Asia/Almaty", "UZ": "Asia/Tashkent",
    "CD": "Africa/Kinshasa", "MN": "Asia/Ulaanbaatar", "PS": "Asia/Gaza", "CY": "Asia/Nicosia",
}


def person(locale: str) -> Person:
    """The locale's stand-in: by its tag, then shorter (`zh-Hant-TW`, `zh-Hant`, `zh`), or the neutral one."""
    parts = locale.split("-")
    for n in range(len(parts), 0, -1):
        found = PEOPLE.get("-".join(parts[:n]))
        if found is not None:
            return found
    return NEUTRAL


@functools.cache
def zone(locale: str) -> str:
    """A time zone of the locale's territory (`de-AT` → Europe/Vienna; `ja` → its likely territory JP →
    Asia/Tokyo); UTC when the locale names no territory CLDR knows."""
    territory = _territory(locale)
    if territory is None:
        return "UTC"
    zones = get_global("territory_zones").get(territory) or ()
    return MAIN_ZONE.get(territory) or (zones[0] if zones else "UTC")


def _territory(locale: str) -> str | None:
    parts = locale.split("-")
    for part in parts[1:]:
        if (len(part) == 2 and part.isalpha()) or (len(part) == 3 and part.isdigit()):
            return part.upper() if part.isalpha() else None  # a UN M.49 area (419) is no country
    likely = get_global("likely_subtags").get(parts[0].lower())  # e.g. de → de_Latn_DE
    if likely:
        last = likely.split("_")[-1]
        if len(last) == 2 and last.isalpha():
            return last
    return None


def stand_in(locale: str, models: Sequence[str] = ()) -> tuple[Recipient, list[DeviceView]]:
    """The recipient and two devices a message of `locale` is rendered for in review material. `models`: the
    device models to show, the commonest first (the audience's, else the definition's)."""
    who = person(locale)
    models = list(models) or [GENERIC_MODEL]
    recipient = Recipient(f"{ID_PREFIX}-{locale}", f"{who.mailbox}@{DOMAIN}", who.name, locale, zone(locale))
    devices = [DeviceView(f"{ID_PREFIX}-{locale}-{i + 1}", room, models[i % len(models)])
               for i, room in enumerate(who.rooms)]
    return recipient, devices
