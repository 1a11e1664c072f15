"""PII scrubbing: per-type precision and recall on a generated, labelled set with hard negatives."""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from collections.abc import Callable

import phonenumbers
import pytest

from pipeline.configs.base import ConfigError
from pipeline.configs.data import PiiConfig
from pipeline.parts.text.pii import PLACEHOLDERS, iban_ok, luhn_ok, scrub_pii

ALL_TYPES = frozenset(PLACEHOLDERS)


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


def _card(rng: random.Random) -> str:
    number = _luhn_complete(rng.choice(["4", "51", "55", "2221", "6011"]), 16, rng)
    sep = rng.choice([" ", "-", ""])
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


def _bad_card(rng: random.Random) -> str:
    number = _card(rng).replace(" ", "").replace("-", "")
    last = (int(number[-1]) + rng.randint(1, 9)) % 10
    return number[:-1] + str(last)


def _iban(rng: random.Random) -> str:
    bban = "".join(rng.choice(string.digits) for _ in range(18))
    for check in range(2, 99):
        candidate = f"DE{check:02d}{bban}"
        if iban_ok(candidate):
            return " ".join(candidate[i : i + 4] for i in range(0, len(candidate), 4))
    raise AssertionError("unreachable")


def _ssn(rng: random.Random) -> str:
    return f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


# Phone formats as people write them. Digits are drawn until libphonenumber calls the number
# valid: random digits in a real format are mostly unassigned ranges, which nobody can call.
PHONE_FORMATS: dict[str, tuple[str, str]] = {
    "DE intl, no separator after area code": ("DE", "+49 30 {7}"),
    "DE intl mobile": ("DE", "+49 171 {7}"),
    "DE national (030)": ("DE", "(030) {7}"),
    "GB intl": ("GB", "+44 20 {4} {4}"),
    "GB national": ("GB", "020 {4} {4}"),
    "FR intl": ("FR", "+33 1 {2} {2} {2} {2}"),
    "FR national": ("FR", "01 {2} {2} {2} {2}"),
    "US dashes": ("US", "415-{3}-{4}"),
    "US parentheses": ("US", "(212) {3}-{4}"),
    "US intl": ("US", "+1 646 {3} {4}"),
    "US E.164": ("US", "+1312{3}{4}"),
}


def _phone_in(fmt: str, region: str, rng: random.Random) -> str:
    while True:
        number = re.sub(r"\{(\d)\}", lambda m: _token(rng, string.digits, int(m[1])), fmt)
        if phonenumbers.is_valid_number(phonenumbers.parse(number, region)):
            return number


def _phone(rng: random.Random) -> str:
    region, fmt = PHONE_FORMATS[rng.choice(sorted(PHONE_FORMATS))]
    return _phone_in(fmt, region, rng)


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return f"2001:db8:{rng.randint(1, 65535):x}::{rng.randint(1, 65535):x}"
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def _email(rng: random.Random) -> str:
    user = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 10)))
    return f"{user}.{rng.randint(1, 99)}@{rng.choice(['example.com', 'mail.co.uk', 'corp.io'])}"


def _token(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    upper = string.ascii_uppercase + string.digits
    return rng.choice(
        [
            "AKIA" + _token(rng, upper, 16),
            "ghp_" + _token(rng, alnum, 36),
            "xoxb-" + _token(rng, string.digits, 12) + "-" + _token(rng, alnum, 24),
            "AIza" + _token(rng, alnum + "_-", 35),
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0." + _token(rng, alnum, 43),
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + _token(rng, alnum, 60)
            + "\n-----END RSA PRIVATE KEY-----",
        ]
    )  # fmt: skip


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "email": _email,
    "phone": _phone,
    "ip_address": _ip,
    "credit_card": _card,
    "iban": _iban,
    "us_ssn": _ssn,
    "secret": _secret,
}
TEMPLATES = [
    "Please contact me about this at {} before Friday.",
    "The value on file is {} according to the records.",
    "Reference: {} (updated on 2023-04-05).",
    "I wrote {} down on the form, is that right?",
]


def _negative(rng: random.Random) -> str:
    """Hard negatives: things shaped like PII that are not."""
    r = rng.randint
    version = f"{r(1, 9)}.{r(0, 9)}.{r(0, 9)}.{r(0, 99)}"
    isbn = f"978-{r(0, 9)}-{r(100, 999)}-{r(10000, 99999)}-{r(0, 9)}"
    return rng.choice(
        [
            f"Upgrade to version {version} today.",
            f"Order ORD-2023-{r(100000, 999999)} shipped {r(2000, 2024)}-0{r(1, 9)}-1{r(0, 9)}.",
            f"The card {_bad_card(rng)} was declined by the bank.",
            f"Invoice {r(10**9, 10**10)} totals {r(1, 999)}.{r(10, 99)} EUR.",
            f"Meeting at {r(10, 12)}:{r(10, 59)} in room {r(100, 999)}.",
            f"The ratio was {rng.random():.4f} and pi is 3.14159265358979.",
            f"Serial 000-{r(10, 99)}-{r(1000, 9999)} is not an SSN.",
            f"ISBN {isbn} on page {r(1, 400)}.",
            "Write to us at the office, or use the bearer bond from 1998.",
            "Our API uses Bearer tokens; see the docs.",
        ]
    )


def _labelled_set(n: int, seed: int) -> list[tuple[str, str | None, str | None]]:
    """(sentence, planted type or None, planted value)."""
    rng = random.Random(seed)
    items: list[tuple[str, str | None, str | None]] = []
    for i in range(n):
        if i % 3 == 0:
            items.append((_negative(rng), None, None))
            continue
        kind = rng.choice(sorted(GENERATORS))
        value = GENERATORS[kind](rng)
        items.append((rng.choice(TEMPLATES).format(value), kind, value))
    return items


def test_scrub_pii_precision_and_recall_per_type_are_at_least_95_percent() -> None:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for sentence, kind, value in _labelled_set(1400, seed=7):
        scrubbed, found = scrub_pii(sentence, ALL_TYPES)
        for t in ALL_TYPES:
            planted = int(kind == t)
            hit = min(planted, found[t])
            if hit and value is not None and value in scrubbed:
                hit = 0  # replaced something, but not the planted value
            tp[t] += hit
            fn[t] += planted - hit
            fp[t] += found[t] - hit
    for t in sorted(ALL_TYPES):
        precision = tp[t] / max(1, tp[t] + fp[t])
        recall = tp[t] / max(1, tp[t] + fn[t])
        print(f"{t:12s} precision={precision:.3f} recall={recall:.3f} (tp={tp[t]})")
        assert tp[t] >= 50
        assert precision >= 0.95, t
        assert recall >= 0.95, t


def test_scrub_pii_replaces_only_the_token_after_bearer_and_aws_secret() -> None:
    token = "abcDEF0123456789abcdef0123456789abcdEFGH"
    text, found = scrub_pii(
        f"Authorization: Bearer {token}\naws_secret_access_key = {token}", ALL_TYPES
    )
    assert text == "Authorization: Bearer <SECRET>\naws_secret_access_key = <SECRET>"
    assert found == Counter({"secret": 2})


@pytest.mark.parametrize("kind", sorted(ALL_TYPES))
def test_scrub_pii_leaves_types_that_are_switched_off(kind: str) -> None:
    value = GENERATORS[kind](random.Random(1))
    text, found = scrub_pii(f"value {value} here", ALL_TYPES - {kind})
    assert PLACEHOLDERS[kind] not in text
    assert found[kind] == 0


def test_scrub_pii_is_a_no_op_on_plain_prose() -> None:
    prose = "The quick brown fox jumps over the lazy dog. " * 50
    assert scrub_pii(prose, ALL_TYPES) == (prose, Counter())


PHONE_DECOYS = [
    "It cost $1,299.99 in 2023, or 1 299 EUR.",
    "Sales rose from 1999-2004 and again in 2019, 2020 and 2021.",
    "We counted 12 345 678 visitors and 2,500,000 page views.",
    "Order ORD-2023-123456 and ticket 40012345678 were closed.",
    "Dates: 2023-04-05, 05/04/2023, 05.04.2023 and 5/4/23.",
    "Upgrade to 10.0.19041 or version 4.2.1.17 first.",
    "ISBN 978-3-16-148410-0 and patent US 2019/0123456 A1.",
    "The years 2023 2024 2025 and the steps 100 200 300 400.",
    "Pi is 3.14159265358979 and e is 2.718281828.",
    "Batch 1234567890 shipped at 10:30 with 99 bottles.",
    "Call 415-555-2671 2 times",  # the count after the number stays
]


def test_phone_numbers_are_found_in_each_format() -> None:
    rng = random.Random(4)
    recalls = {}
    for name, (region, fmt) in PHONE_FORMATS.items():
        numbers = [_phone_in(fmt, region, rng) for _ in range(40)]
        hits = sum(
            scrub_pii(f"Call {n} today.", {"phone"}) == ("Call <PHONE> today.", Counter(phone=1))
            for n in numbers
        )
        recalls[name] = hits / len(numbers)
        print(f"{name:40s} recall {recalls[name]:.3f}")
    assert all(recall >= 0.95 for recall in recalls.values()), recalls


def test_phone_decoys_stay_intact() -> None:
    for decoy in PHONE_DECOYS:
        text, found = scrub_pii(decoy, {"phone"})
        expected = decoy.replace("415-555-2671", "<PHONE>")
        assert (text, found["phone"]) == (expected, int(expected != decoy)), decoy


def test_phone_regions_decide_which_national_formats_count() -> None:
    assert scrub_pii("(030) 4616874", {"phone"}, phone_regions=["US"])[1]["phone"] == 0
    assert scrub_pii("(030) 4616874", {"phone"}, phone_regions=["DE"])[0] == "<PHONE>"
    assert scrub_pii("+49 30 4616874", {"phone"}, phone_regions=["US"])[0] == "<PHONE>"


@pytest.mark.parametrize("regions", [(), ("de",), ("DEU",), ("US",) * 51])
def test_phone_regions_must_be_iso_codes(regions: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        PiiConfig(phone_regions=regions)
    assert err.value.field == "phone_regions"
