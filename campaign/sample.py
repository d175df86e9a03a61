"""Seeded sample accounts and devices for the shipped example, tests and benchmarks.

`python -m campaign.sample --accounts 1000000 --out DIR [--seed N] [--format csv|jsonl]` writes
`accounts.csv` and `devices.csv` (or `.jsonl`) into DIR. Rows are generated one account at a time and
written as they come, so memory stays flat whatever the count. The same seed gives the same bytes:
the generator draws only `Random.random()`, the one method whose sequence Python promises to keep
across versions (`choice`, `choices` without weights and `randrange` have changed before).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import sys
import unicodedata
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Generic, TypeVar

ACCOUNT_COLUMNS = ("account_id", "email", "name", "locale", "timezone", "country")
DEVICE_COLUMNS = ("device_id", "account_id", "name", "model", "voice_recordings")
FORMATS = ("csv", "jsonl")

AccountRow = tuple[str, str, str, str, str, str]
DeviceRow = tuple[str, str, str, str, str]

T = TypeVar("T")


class _Weighted(Generic[T]):
    """A weighted pick driven by one `random()` draw (bisect on precomputed cumulative weights)."""

    def __init__(self, pairs: Sequence[tuple[T, float]]) -> None:
        total = float(sum(w for _, w in pairs))
        self.items = [item for item, _ in pairs]
        acc = 0.0
        self.cum: list[float] = []
        for _, w in pairs:
            acc += w
            self.cum.append(acc / total)
        # random() < 1.0, so a last bound of exactly 1.0 keeps bisect inside the list despite rounding.
        self.cum[-1] = 1.0

    def pick(self, r: float) -> T:
        return self.items[bisect_right(self.cum, r)]


def _uniform(items: Sequence[T]) -> _Weighted[T]:
    return _Weighted([(item, 1.0) for item in items])


# -- names ------------------------------------------------------------------------------------------

# Letters NFKD does not reduce to ASCII the way people spell them in addresses.
_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss",
                           "ı": "i", "ø": "o", "æ": "ae", "œ": "oe", "ł": "l"})
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def _slug(text: str) -> str:
    """The ASCII form of a name part for an email address: `Jürgen` → `juergen`, `O'Brien` → `obrien`."""
    ascii_text = unicodedata.normalize("NFKD", text.translate(_TRANSLIT)).encode("ascii", "ignore").decode()
    return _NOT_SLUG.sub("", ascii_text.lower())


@dataclass(frozen=True)
class _Part:
    """A first or last name as displayed, with its ASCII spelling for email addresses."""

    text: str
    slug: str


def _parts(names: str) -> list[_Part]:
    """Parts from `|`-separated names (a `|` separator lets names hold spaces, commas and apostrophes)."""
    return [_Part(n, _slug(n)) for n in (n.strip() for n in names.split("|")) if n]


def _romaji(pairs: str) -> list[_Part]:
    """Japanese parts from `漢字:romaji` pairs: the romaji is how the address is spelled."""
    out = []
    for pair in pairs.split():
        text, _, slug = pair.partition(":")
        out.append(_Part(text, slug))
    return out


_EN_FIRST = _parts("James|Mary|Robert|Patricia|John|Jennifer|Michael|Linda|David|Elizabeth|William|Barbara|"
                   "Richard|Susan|Joseph|Jessica|Thomas|Sarah|Christopher|Karen|Daniel|Emily|Matthew|Ashley|"
                   "Anthony|Olivia|Mark|Emma|Andrew|Sophia|Joshua|Megan|Ryan|Hannah|Kevin|Grace|Brian|Chloe|"
                   "Noah|Zoë|Liam|Renée|Aiden|Madison|Ethan|Abigail")
_EN_LAST = _parts("Smith|Johnson|Williams|Brown|Jones|Garcia|Miller|Davis|Wilson|Anderson|Taylor|Thomas|"
                  "Moore|Jackson|Martin|Lee|Thompson|White|Harris|Clark|Lewis|Robinson|Walker|Young|Allen|"
                  "King|Wright|Scott|Hill|Green|Adams|Baker|Nelson|Carter|Mitchell|O'Brien|O'Connor|D'Angelo|"
                  "McDonald|Nguyen|Patel|Kim|Evans|Hughes|Davies|Clarke|Murphy|Campbell|Brontë")
_ES_FIRST = _parts("José|María|Juan|Guadalupe|Luis|Carmen|Jesús|Ana|Carlos|Sofía|Miguel|Lucía|Jorge|"
                   "Valentina|Alejandro|Camila|Andrés|Mónica|Raúl|Inés|Héctor|Verónica|Ramón|Rocío|Diego|"
                   "Gabriela|Fernando|Ximena|Javier|Adriana|María José|Juan Pablo")
_ES_LAST = _parts("Núñez|García|Rodríguez|Martínez|Hernández|López|González|Pérez|Sánchez|Ramírez|Torres|"
                  "Flores|Rivera|Gómez|Díaz|Reyes|Cruz|Morales|Ortiz|Gutiérrez|Chávez|Ramos|Ruiz|Álvarez|"
                  "Mendoza|Castillo|Jiménez|Vásquez|Peña|Muñoz|Ibáñez|de la Cruz|Castañeda|Ordóñez")
_DE_FIRST = _parts("Jürgen|Günther|Björn|Jörg|Uwe|Klaus|Stefan|Andreas|Michael|Thomas|Lukas|Maximilian|"
                   "Felix|Jonas|Leon|Sören|Anna|Lena|Hannah|Sophie|Marie|Käthe|Bärbel|Gisela|Ursula|Sabine|"
                   "Petra|Claudia|Katharina|Lea|Mia|Emilia|Özlem|Zoë|Franz|Josef|Jörn|Anneliese")
_DE_LAST = _parts("Müller|Schmidt|Schneider|Fischer|Weber|Meyer|Wagner|Becker|Schulz|Hoffmann|Schäfer|"
                  "Koch|Bauer|Richter|Klein|Wolf|Schröder|Neumann|Schwarz|Zimmermann|Braun|Krüger|Hofmann|"
                  "Hartmann|Lange|Weiß|Köhler|Groß|Öztürk|Yılmaz|von Bülow|Meißner|Jäger|Böhm")
_AT_LAST = _parts("Gruber|Huber|Bauer|Wagner|Müller|Pichler|Steiner|Moser|Mayer|Hofer|Leitner|Berger|"
                  "Fuchs|Eder|Fischer|Schmid|Winkler|Weber|Schwarz|Maier|Reiter|Mayr|Wimmer|Egger|Brunner|"
                  "Baumgartner|Auer|Lechner|Wallner|Aigner|Grünwald|Pöschl|Hörmann|Strauß|Kößler")
_FR_FIRST = _parts("François|Hélène|Jérôme|Amélie|Léa|Chloé|Élodie|Stéphane|Mathieu|Nicolas|Camille|"
                   "Julien|Céline|Sébastien|Margaux|Gaëlle|Noël|Benoît|Inès|Zoé|Louis|Gabriel|Manon|"
                   "Étienne|Anaïs|Maxime|Jean-François|Marie-Ève")
_FR_LAST = _parts("Côté|Tremblay|Gagnon|Roy|Bouchard|Gauthier|Lefèvre|Lefebvre|Dubois|Moreau|Laurent|"
                  "Girard|Bélanger|Lévesque|Bergeron|Pelletier|Leclerc|Fournier|Mercier|Rousseau|Dupont|"
                  "Martin|Bernard|Durand|D'Amours|Saint-Pierre|Lemaître|Béliveau")
_PT_FIRST = _parts("João|Ana|José|Maria|Antônio|Francisca|Luís|Conceição|Gabriel|Júlia|Lucas|Letícia|"
                   "Matheus|Beatriz|Pedro|Larissa|Rafael|Mariana|Thiago|Vitória|Caio|Fernanda")
_PT_LAST = _parts("Silva|Santos|Oliveira|Souza|Rodrigues|Ferreira|Alves|Pereira|Lima|Gomes|Gonçalves|"
                  "Ribeiro|Carvalho|Araújo|Melo|Barbosa|Conceição|Simões|Magalhães|Assunção|Brandão")
_JA_FAMILY = _romaji("佐藤:sato 鈴木:suzuki 高橋:takahashi 田中:tanaka 伊藤:ito 渡辺:watanabe 山本:yamamoto "
                     "中村:nakamura 小林:kobayashi 加藤:kato 吉田:yoshida 山田:yamada 佐々木:sasaki "
                     "山口:yamaguchi 松本:matsumoto 井上:inoue 木村:kimura 林:hayashi 斎藤:saito 清水:shimizu")
_JA_GIVEN = _romaji("太郎:taro 一郎:ichiro 健太:kenta 翔太:shota 大輔:daisuke 拓也:takuya 直樹:naoki 蓮:ren "
                    "陽翔:haruto 悠真:yuma 花子:hanako 陽子:yoko 美咲:misaki さくら:sakura 結衣:yui 葵:aoi "
                    "陽菜:hina 恵子:keiko 由美:yumi 愛:ai")

# Rare display forms that put commas and quotes into the name column, so CSV quoting is exercised.
_EN_SUFFIXES = ", Jr.|, Sr.| III|, PhD"
_NICKNAMES = {"Robert": "Bob", "William": "Bill", "Richard": "Rick", "Joseph": "Joe", "Michael": "Mike",
              "Elizabeth": "Liz", "Christopher": "Chris", "James": "Jim", "Thomas": "Tom", "Patricia": "Trish"}

# -- devices ----------------------------------------------------------------------------------------

_ROOMS_EN = _Weighted([("Kitchen", 10), ("Living Room", 8), ("Bedroom", 8), ("Office", 5), ("Master Bedroom", 3),
                       ("Garage", 1), ("Nursery", 1), ("Basement", 1), ("Den", 2), ("Dining Room", 2),
                       ("Guest Room", 1), ("Emma's Room", 1), ("Jake's Room", 1), ("Kids' Room", 1),
                       ("Office, upstairs", 1), ("Mom's Echo", 1)])
_ROOMS_ES = _Weighted([("Cocina", 8), ("Sala", 8), ("Recámara", 5), ("Dormitorio", 4), ("Oficina", 3),
                       ("Comedor", 2), ("Cuarto de Sofía", 1), ("Cuarto de los niños", 1), ("Kitchen", 2),
                       ("Living Room", 1), ("Baño", 1)])
_ROOMS_DE = _Weighted([("Küche", 10), ("Wohnzimmer", 9), ("Schlafzimmer", 7), ("Büro", 4), ("Kinderzimmer", 3),
                       ("Arbeitszimmer", 2), ("Bad", 1), ("Esszimmer", 2), ("Flur", 1), ("Lenas Zimmer", 1),
                       ("Gästezimmer", 1), ("Küche, oben", 1)])
_ROOMS_FR = _Weighted([("Cuisine", 8), ("Salon", 8), ("Chambre", 6), ("Bureau", 4), ("Chambre d'Émilie", 1),
                       ("Salle à manger", 2), ("Sous-sol", 1)])
_ROOMS_JA = _Weighted([("寝室", 6), ("リビング", 8), ("キッチン", 6), ("書斎", 3), ("子供部屋", 2), ("和室", 2),
                       ("ダイニング", 2), ("玄関", 1)])
_ROOMS_PT = _Weighted([("Cozinha", 8), ("Sala", 8), ("Quarto", 6), ("Escritório", 3), ("Quarto da Júlia", 1),
                       ("Varanda", 1)])

# The campaign's models (data/voice-local-processing.toml) take most of the weight so the example has an
# audience of several hundred devices; the rest are models the campaign leaves alone.
MODELS = _Weighted([("Echo Dot (4th Gen)", 38), ("Echo Show 10", 24), ("Echo Show 15", 16),
                    ("Echo Dot (5th Gen)", 10), ("Echo Pop", 8), ("Echo Studio", 4)])
VOICE_RECORDINGS = _Weighted([("do_not_send", 45), ("dont_save", 20), ("save", 35)])
DEVICES_PER_ACCOUNT = _Weighted([(1, 55), (2, 32), (3, 10), (4, 3)])  # mean 1.61
# Reserved for documentation (RFC 2606): no sample address can reach a real mailbox.
DOMAINS = _Weighted([("example.com", 5), ("example.org", 3), ("example.net", 2)])

# -- locales ----------------------------------------------------------------------------------------

_US_ZONES = [("America/New_York", 40), ("America/Chicago", 25), ("America/Denver", 8),
             ("America/Los_Angeles", 20), ("America/Phoenix", 3), ("America/Anchorage", 2), ("Pacific/Honolulu", 2)]
# Spanish speakers in the US live more in the South West than the average.
_ES_US_ZONES = [("America/New_York", 22), ("America/Chicago", 28), ("America/Denver", 10),
                ("America/Los_Angeles", 32), ("America/Phoenix", 7), ("America/Anchorage", 0.5),
                ("Pacific/Honolulu", 0.5)]


@dataclass(frozen=True)
class _Profile:
    """Everything that goes together with one locale: country, zones, names, room names."""

    locale: str
    country: str
    zones: _Weighted[str]
    first: _Weighted[_Part]
    last: _Weighted[_Part]
    rooms: _Weighted[str]
    family_first: bool = False  # Japanese order: family name, then given name
    second_last: float = 0.0  # share with two family names (Spanish, Portuguese)
    english: bool = False  # suffixes and nicknames


def _profile(locale: str, country: str, zones: Sequence[tuple[str, float]], first: list[_Part],
             last: list[_Part], rooms: _Weighted[str], *, family_first: bool = False, second_last: float = 0.0,
             english: bool = False) -> _Profile:
    return _Profile(locale, country, _Weighted(zones), _uniform(first), _uniform(last), rooms,
                    family_first=family_first, second_last=second_last, english=english)


PROFILES = _Weighted([
    (_profile("en-US", "US", _US_ZONES, _EN_FIRST, _EN_LAST, _ROOMS_EN, english=True), 45),
    (_profile("es-US", "US", _ES_US_ZONES, _ES_FIRST, _ES_LAST, _ROOMS_ES, second_last=0.3), 12),
    (_profile("en-CA", "CA", [("America/Toronto", 60), ("America/Vancouver", 40)], _EN_FIRST, _EN_LAST,
              _ROOMS_EN, english=True), 4),
    (_profile("fr-CA", "CA", [("America/Toronto", 1)], _FR_FIRST, _FR_LAST, _ROOMS_FR), 2),
    (_profile("en-GB", "GB", [("Europe/London", 1)], _EN_FIRST, _EN_LAST, _ROOMS_EN, english=True), 4),
    (_profile("de-DE", "DE", [("Europe/Berlin", 1)], _DE_FIRST, _DE_LAST, _ROOMS_DE), 12),
    (_profile("de-AT", "AT", [("Europe/Vienna", 1)], _DE_FIRST, _AT_LAST, _ROOMS_DE), 6),
    (_profile("ja-JP", "JP", [("Asia/Tokyo", 1)], _JA_GIVEN, _JA_FAMILY, _ROOMS_JA, family_first=True), 10),
    # Outside the campaign's countries: the audience filter has to leave these out.
    (_profile("fr-FR", "FR", [("Europe/Paris", 1)], _FR_FIRST, _FR_LAST, _ROOMS_FR), 3),
    (_profile("pt-BR", "BR", [("America/Sao_Paulo", 1)], _PT_FIRST, _PT_LAST, _ROOMS_PT, second_last=0.4), 2),
])


# -- generation -------------------------------------------------------------------------------------

def id_widths(accounts: int) -> tuple[int, int]:
    """Zero-padding of account and device ids: at least 6 and 7 digits, wide enough for the count."""
    return max(6, len(str(accounts))), max(7, len(str(accounts * DEVICES_PER_ACCOUNT.items[-1])))


def rows(accounts: int, seed: int = 7) -> Iterator[tuple[AccountRow, list[DeviceRow]]]:
    """Yield each account with its 1 to 4 devices, deterministically from the seed."""
    if accounts < 0:
        raise ValueError(f"accounts must not be negative, got {accounts}")
    rand = random.Random(seed).random
    acc_width, dev_width = id_widths(accounts)
    nicknames = _NICKNAMES
    suffixes = _EN_SUFFIXES.split("|")
    device_no = 0
    for n in range(1, accounts + 1):
        p = PROFILES.pick(rand())
        first = p.first.pick(rand())
        last = p.last.pick(rand())
        last_text, last_slug = last.text, last.slug
        if p.second_last and rand() < p.second_last:
            other = p.last.pick(rand())
            if other is not last:
                last_text, last_slug = f"{last_text} {other.text}", last_slug + other.slug
        if p.family_first:
            name = f"{last_text} {first.text}"
        else:
            name = f"{first.text} {last_text}"
            if p.english:
                r = rand()
                if r < 0.02:
                    name += suffixes[int(r * 50 * len(suffixes))]
                elif r < 0.06 and first.text in nicknames:
                    name = f'{first.text} "{nicknames[first.text]}" {last_text}'
        # The account number ends every address, so addresses are unique whatever the name.
        r = rand()
        if r < 0.5:
            local = f"{first.slug}.{last_slug}{n}"
        elif r < 0.75:
            local = f"{first.slug[:1]}{last_slug}{n}"
        elif r < 0.9:
            local = f"{first.slug}_{last_slug}{n}"
        else:
            local = f"{last_slug}.{first.slug}{n}"
        account_id = f"acc-{n:0{acc_width}d}"
        account: AccountRow = (account_id, f"{local}@{DOMAINS.pick(rand())}", name, p.locale,
                               p.zones.pick(rand()), p.country)
        devices: list[DeviceRow] = []
        seen: dict[str, int] = {}
        for _ in range(DEVICES_PER_ACCOUNT.pick(rand())):
            device_no += 1
            room = p.rooms.pick(rand())
            count = seen[room] = seen.get(room, 0) + 1
            if count > 1:  # a second "Kitchen" is told apart the way people do it
                room = f"{room} {count}"
            devices.append((f"dev-{device_no:0{dev_width}d}", account_id, room, MODELS.pick(rand()),
                            VOICE_RECORDINGS.pick(rand())))
        yield account, devices


def generate(accounts: int, seed: int = 7) -> tuple[Iterator[AccountRow], Iterator[DeviceRow]]:
    """Two independent streams, accounts and devices; each replays the seeded generation on its own."""
    return ((a for a, _ in rows(accounts, seed)),
            (d for _, ds in rows(accounts, seed) for d in ds))


# -- writing ----------------------------------------------------------------------------------------

# One encoder for all rows: json.dumps with options builds a new encoder on every call, which doubles the time.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class _Writer:
    """Writes rows of one file as CSV (Python's csv module, LF) or JSON Lines (one object per line)."""

    def __init__(self, fh: IO[str], columns: tuple[str, ...], fmt: str) -> None:
        self.fh = fh
        self.columns = columns
        self.csv = csv.writer(fh, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(columns)

    def write(self, row: tuple[str, ...]) -> None:
        if self.csv is not None:
            self.csv.writerow(row)
        else:
            self.fh.write(_JSON(dict(zip(self.columns, row, strict=True))))
            self.fh.write("\n")

    def write_many(self, rows: list[DeviceRow]) -> None:
        if self.csv is not None:
            self.csv.writerows(rows)
        else:
            for row in rows:
                self.write(row)


def write_csv(out_dir: Path, accounts: int, seed: int = 7, fmt: str = "csv") -> tuple[Path, Path]:
    """Write accounts.{csv,jsonl} and devices.{csv,jsonl} into out_dir; return their paths."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (expected csv or jsonl)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / f"accounts.{fmt}", out_dir / f"devices.{fmt}")
    # Written beside the targets and renamed at the end: an interrupted run leaves no half file behind.
    tmps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in paths]
    try:
        with tmps[0].open("w", encoding="utf-8", newline="", buffering=1 << 20) as af, \
                tmps[1].open("w", encoding="utf-8", newline="", buffering=1 << 20) as df:
            acc_out = _Writer(af, ACCOUNT_COLUMNS, fmt)
            dev_out = _Writer(df, DEVICE_COLUMNS, fmt)
            for account, devices in rows(accounts, seed):
                acc_out.write(account)
                dev_out.write_many(devices)
        for tmp, path in zip(tmps, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m campaign.sample --accounts N --out DIR [--seed S] [--format csv|jsonl]`."""
    parser = argparse.ArgumentParser(
        prog="python -m campaign.sample",
        description="Write seeded sample accounts and devices (accounts.csv and devices.csv, or .jsonl).")
    parser.add_argument("--accounts", type=int, default=500, help="how many accounts (default: 500)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write into (created if missing)")
    parser.add_argument("--seed", type=int, default=7, help="random seed; the same seed gives the same files "
                        "(default: 7)")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="csv or jsonl (default: csv)")
    args = parser.parse_args(argv)
    if args.accounts < 0:
        parser.error("--accounts must not be negative")
    try:
        accounts_path, devices_path = write_csv(args.out, args.accounts, seed=args.seed, fmt=args.format)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {accounts_path} and {devices_path} ({args.accounts} accounts, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
