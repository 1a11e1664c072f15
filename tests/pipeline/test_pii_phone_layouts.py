"""Phone numbers however they are written: recall over every country's grouping, allocated range
or not, and decoys (years, versions, prices, dates, percentages, pages, ISBNs, IPs, orders) intact.

The international numbers start from libphonenumber's example number for each region and type
(fixed line, mobile: 489 numbers over ~245 regions), keep the leading digits that select the
country's grouping and draw the rest at random, so most land in ranges nobody has allocated; each
is then written in one of the layouts people use (the library's own grouping, hyphens, dots, the
"(0)" trunk prefix, E.164). North-American numbers are drawn over every area code and exchange,
555 fiction numbers included.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable

import phonenumbers
import pytest

from pipeline.parts.text.phone_layout import identifier_label, phone_layout_ok
from pipeline.parts.text.pii import scrub_pii

PhoneType = phonenumbers.PhoneNumberType
CONTEXTS = [
    "Call {} today.",
    "Tel: {}",
    "You can reach her at {}, or by email.",
    "{} is the number on the card.",
    "Phone {}; fax none.",
    "(tel. {})",
    'He said "ring me on {}" and left.',
    "Contact:\n{}\nOffice hours 9-17.",
    "Numbers: {} and nothing else.",
    "Ask for Sam at {}!",
]


def _examples() -> list[tuple[str, phonenumbers.PhoneNumber]]:
    found = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (PhoneType.FIXED_LINE, PhoneType.MOBILE):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                found.append((region, number))
    return found


def _redraw(written: str, keep: int, rng: random.Random) -> str:
    """Replace every digit after the first ``keep`` of the national number by a random one."""
    cc, _, rest = written.partition(" ")
    seen = 0

    def draw(m: re.Match[str]) -> str:
        nonlocal seen
        seen += 1
        return m.group() if seen <= keep else str(rng.randrange(10))

    return cc + " " + re.sub(r"\d", draw, rest)


def _layouts(region: str, written: str) -> dict[str, str]:
    """The same number in the layouts people write international numbers in."""
    cc, _, national = written.partition(" ")
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    prefix = metadata.national_prefix if metadata is not None else None
    layouts = {
        "library grouping": written,
        "hyphens": cc + "-" + re.sub(r"[ .]", "-", national),
        "dots": cc + "." + re.sub(r"[ -]", ".", national),
        "E.164": cc + re.sub(r"\D", "", national),
    }
    if prefix == "0" and not national.startswith("0"):
        layouts["(0) trunk prefix"] = f"{cc} (0){national}"
    return layouts


def international_set(rng: random.Random) -> list[tuple[str, str]]:
    """(layout name, number) for every example number, each in one random layout."""
    items = []
    for region, example in _examples():
        written = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        number = _redraw(written, keep=rng.choice([1, 2]), rng=rng)
        name, layout = rng.choice(sorted(_layouts(region, number).items()))
        items.append((f"intl {name}", layout))
    return items


NANP_LAYOUTS: dict[str, Callable[[str, str, str], str]] = {
    "(NNN) NNN-NNNN": lambda a, e, n: f"({a}) {e}-{n}",
    "(NNN)NNN-NNNN": lambda a, e, n: f"({a}){e}-{n}",
    "(NNN) NNN.NNNN": lambda a, e, n: f"({a}) {e}.{n}",
    "NNN-NNN-NNNN": lambda a, e, n: f"{a}-{e}-{n}",
    "NNN.NNN.NNNN": lambda a, e, n: f"{a}.{e}.{n}",
    "1-NNN-NNN-NNNN": lambda a, e, n: f"1-{a}-{e}-{n}",
    "1 (NNN) NNN-NNNN": lambda a, e, n: f"1 ({a}) {e}-{n}",
    "+1 NNN NNN NNNN": lambda a, e, n: f"+1 {a} {e} {n}",
    "+1 (NNN) NNN-NNNN": lambda a, e, n: f"+1 ({a}) {e}-{n}",
    "+1-NNN-NNN-NNNN": lambda a, e, n: f"+1-{a}-{e}-{n}",
}


def nanp_set(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """Area codes 200-999 (allocated or not), any exchange, half of them 555 fiction numbers."""
    items = []
    for i in range(n):
        name = sorted(NANP_LAYOUTS)[i % len(NANP_LAYOUTS)]
        area = str(rng.randrange(200, 1000))
        exchange = "555" if i % 2 else f"{rng.randrange(1000):03d}"
        line = f"01{rng.randrange(100):02d}" if i % 4 == 1 else f"{rng.randrange(10000):04d}"
        items.append((f"NANP {name}", NANP_LAYOUTS[name](area, exchange, line)))
    return items


def _allocated(number: str) -> bool:
    try:
        parsed = phonenumbers.parse(number, "US")
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed)


def test_phone_numbers_in_every_layout_are_found_allocated_or_not() -> None:
    rng = random.Random(24)
    items = international_set(rng) + nanp_set(rng, 240)
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    misses = []
    for i, (name, number) in enumerate(items):
        sentence = CONTEXTS[i % len(CONTEXTS)]
        scrubbed, found = scrub_pii(sentence.format(number), {"phone"})
        totals[name] += 1
        if (scrubbed, found["phone"]) == (sentence.format("<PHONE>"), 1):
            hits[name] += 1
        else:
            misses.append((number, scrubbed))
    unallocated = sum(not _allocated(number) for _, number in items) / len(items)
    recall = sum(hits.values()) / len(items)
    for name in sorted(totals):
        share = hits[name] / totals[name]
        print(f"{name:32s} {hits[name]:4d}/{totals[name]:<4d} recall {share:.3f}")
    print(f"{len(items)} numbers, {unallocated:.0%} unallocated; recall {recall:.3f}")
    print("missed:", misses[:20])
    assert recall >= 0.95
    assert len(items) >= 700 and unallocated > 0.3
    assert all(hits[name] / totals[name] >= 0.9 for name in totals), misses[:20]


def _decoys(rng: random.Random) -> list[str]:
    r = rng.randrange
    y = r(1900, 2030)
    a, b, c, d = r(100, 999), r(100, 999), r(100, 999), r(100, 999)
    big = f"{r(1, 99)} {a} {b}"
    return [
        f"Founded in {y}, it grew from {y}-{y + 5} and again in {y + 7}, {y + 8} and {y + 9}.",
        # Three groups of three digits alone ("912 345 678") stay a phone number: that is how
        # Spain and Italy write theirs. Four or more are a quantity in thousands groups.
        f"The years {y} {y + 1} {y + 2} and steps {a} {b} {c} {d}; {r(1, 999)} {a} {c} {d} bytes.",
        f"Upgrade to version {r(1, 20)}.{r(0, 10)}.{r(10000, 99999)} or v{r(1, 9)}.{r(99)}.{a}.",
        f"Python {r(2, 4)}.{r(0, 13)}.{r(0, 20)} and build {r(10, 99)}.{r(9)}.{r(1000, 9999)}.{a}",
        f"It cost ${r(1, 9)},{a}.{r(10, 99)} or {r(1, 9)} {b} EUR.",
        f"Price: EUR {big},{r(10, 99)} (incl. VAT)",
        f"Dates: {y}-{r(1, 13):02d}-{r(1, 29):02d}, {r(1, 29):02d}/{r(1, 13):02d}/{y}, "
        f"{r(1, 29):02d}.{r(1, 13):02d}.{y} and {r(1, 29)}/{r(1, 13)}/{r(10, 99)}.",
        f"Growth was {r(1, 99)}.{r(0, 9)}% and +{r(1, 9)}.{r(0, 99)}% after {r(1, 99)}% fees.",
        f"See pages {r(100, 400)}-{r(401, 900)} and page {r(1000, 9999)}, pp. {r(99)}-{a}.",
        f"ISBN 978-{r(0, 9)}-{a}-{r(10000, 99999)}-{r(0, 9)} and ISBN 0-{b}-"
        f"{r(10000, 99999)}-{r(0, 9)}",
        f"ISBN-13: 978{r(1000000000, 9999999999)}; ISSN {r(1000, 9999)}-{r(1000, 9999)}",
        f"Ping {r(1, 255)}.{r(0, 255)}.{r(0, 255)}.{r(1, 255)} then {r(1, 255)}.{r(0, 255)}.0.1",
        f"Order {r(200, 999)}-{a}-{r(1000, 9999)} and ticket no. {r(200, 999)}.{b}."
        f"{r(1000, 9999)} are closed.",
        f"Order ORD-{y}-{r(100000, 999999)} and invoice {r(10**9, 10**10)} were paid.",
        f"Meeting at {r(10, 24)}:{r(10, 60)}:{r(10, 60)} in room {a}.",
        f"Population {big} ({big.replace(' ', ',')}).",
        f"Coordinates +{r(10, 89)}.{r(1000, 9999)}, -{r(10, 179)}.{r(1000, 9999)}",
        f"It was +{r(1, 40)}.{r(0, 9)} °C at {r(1000, 9999)} m; score {r(0, 9)}-{r(0, 9)}.",
        f"Part {r(1000, 9999)}-{r(10, 99)}-{r(1, 9)} (CAS {r(1000, 9999)}-{r(10, 99)}-{r(9)})",
        f"Serial {a}-{r(10, 99)}-{r(1000, 9999)} and patent US {y}/{r(1000000, 9999999)} A1",
        f"Timestamp {r(10**9, 2 * 10**9)} and id {r(10**11, 10**12)}",
        f"Beverly Hills, CA {r(10000, 99999)}-{r(10000):04d}, USA",
        f"The ratio was {rng.random():.4f}; pi is 3.14159265358979.",
        f"Matrix {a} x {b} x {r(10, 99)}; +{r(1, 9)} {c} points.",
    ]


def test_decoys_shaped_like_numbers_stay_intact() -> None:
    rng = random.Random(7)
    decoys = [d for _ in range(20) for d in _decoys(rng)]
    changed = [(d, scrub_pii(d, {"phone"})[0]) for d in decoys]
    changed = [(d, s) for d, s in changed if s != d]
    print(f"{len(decoys)} decoys, {len(changed)} changed")
    assert len(decoys) >= 450
    assert not changed, changed[:10]


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+1-555-010-9999", True),  # fiction's 555-01XX: invalid to libphonenumber
        ("+44 20 7946 0018", True),
        ("+33 (0)1 23 45 67 89", True),
        ("+86 138 0013 8000", True),
        ("+15550109999", True),
        ("(555) 123-4567", True),
        ("555.010.9999", True),
        ("+999 123 4567", False),  # no such country code
        ("+12 345 678", False),  # too short for +1 (a local number at best)
        ("+49 30 901820 2", False),  # a trailing count is not part of a number
        ("123-456-7890", False),  # no area code starts with 1
        ("2023-04-05", False),
    ],
)
def test_layout_rule(number: str, expected: bool) -> None:
    assert phone_layout_ok(number) is expected


def test_an_identifier_label_vetoes_a_number_written_without_plus() -> None:
    assert identifier_label("Order ") and identifier_label("ticket no. ")
    assert identifier_label("Invoice #: ") and identifier_label("the Account ID ")
    assert not identifier_label("call me on ") and not identifier_label("phone number ")
    for text in ("Order 810-498-6343", "Serial 708-73-8474", "Ticket no. (555) 010-9999"):
        assert scrub_pii(text, {"phone"})[1]["phone"] == 0, text
    assert scrub_pii("Order by phone: (555) 010-9999", {"phone"})[0] == "Order by phone: <PHONE>"
    assert scrub_pii("Order +1 555 010 9999", {"phone"})[0] == "Order <PHONE>"
