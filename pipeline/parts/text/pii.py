"""Find personal data and secrets in text and replace them with typed placeholders.

Regexes find candidates and checksums confirm them (Luhn for cards, mod-97 for IBANs, the SSA's
allocation rules for SSNs, Google's libphonenumber numbering plans for phone numbers), which is
what keeps precision high on order numbers, dates, prices and version strings. A phone number is
also taken when it is written in a layout only phone numbers take ("+44 20 7946 0018", "(555)
010-9999"), allocated range or not (:mod:`pipeline.parts.text.phone_layout` says why). No NER model
is used: names and addresses are out of scope, and a model would be orders of magnitude slower on a
step that runs on every document. Each pattern is guarded by a cheap substring test so a document
without '@' never pays for the email regex."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import phonenumbers

from pipeline.parts.text.phone_layout import identifier_label, phone_layout_ok

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ip_address": "<IP_ADDRESS>",
    "credit_card": "<CREDIT_CARD>",
    "iban": "<IBAN>",
    "us_ssn": "<US_SSN>",
    "secret": "<SECRET>",
}

# Secrets come first: they contain digits and dots that other patterns would half-match. Each
# pattern runs only when one of its literal needles occurs (a substring test is ~100x cheaper).
_SECRETS: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    (
        ("PRIVATE KEY-----",),
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]{0,20000}?"
            r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----"
        ),
    ),
    (("AKIA", "ASIA"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    (
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b|\bgithub_pat_[A-Za-z0-9_]{60,255}\b"),
    ),
    (("xox",), re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,250}")),
    (("AIza",), re.compile(r"\bAIza[0-9A-Za-z_\-]{35}")),
    (("eyJ",), re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
)
# Only the token is replaced; the context words stay so the text still reads naturally.
_SECRET_IN_CONTEXT: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    (("earer", "EARER"), re.compile(r"(?i:\bbearer\s+)([A-Za-z0-9._~+/\-]{16,}=*)")),
    (
        ("ecret", "ECRET"),
        re.compile(r"(?i:aws.{0,20}?secret.{0,20}?)[\s:=\"']+([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"),
    ),
)
# Patterns start with a plain character class (lookbehinds come after the first character):
# Python's re can then skip ahead quickly, which makes them 3-4x faster on prose.
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,24}\b")
_IBAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"\d(?<![\d.-]\d)(?:[ -]?\d){12,18}(?![\d-]|\.\d)")
_SSN = re.compile(r"(\d(?<![\d-]\d)\d\d)([- ])(\d{2})\2(\d{4})(?![\d-])")
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?![\w.]|\.\w)")
_IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f:]*[0-9A-Fa-f]{1,4}(?![\w:])|(?<![\w:])::1\b"
)
_VERSION_CONTEXT = re.compile(r"(?i)(?:version|ver\.?|v|release|build|firmware|rev\.?)\s*$")
# Runs of digits and separators that may hold a card, SSN, IPv4 address or phone number.
_NUMBER_RUN = re.compile(r"[\d+(](?<![\w.][\d+(])[\d ()./+-]{5,}\d")
_NUMERIC_TYPES = frozenset({"credit_card", "us_ssn", "ip_address", "phone"})
# A phone-shaped candidate: E.164 ("+15550109999"); or an optional +country code (and the "(0)"
# trunk prefix some write after it) or North America's "1" before "(NNN)", an optional
# parenthesised area code, then groups of digits split by one separator each. Its
# sub-spans of whole groups are tried longest first, so a count or year next to a number does
# not spoil it. libphonenumber then decides whether it is a number anyone could dial.
_PHONE = re.compile(
    r"(?<![\w+.,/-])(?:\+\d{8,15}|(?:\+\d{1,3}[ .-]?(?:\(0\)[ .-]?)?|1[ .-]?(?=\(\d{3}\)))?"
    r"(?:\(\d{1,5}\)[ .-]?)?\d{1,10}(?:[ ./-]\d{1,10}){0,6})(?![\w-]|[.,/]\d)"
)
_PHONE_GROUP = re.compile(r"\+?\(?\d+\)?")
_AREA_CODE = re.compile(r"\(\d{3,5}\)")
_THOUSANDS = re.compile(r"\d{1,3}(?: \d{3}){3,}")
# Dates (2023-04-05, 05.04.2023, 5/4/23) and year ranges (1999-2004) are never phone numbers,
# whatever some numbering plan allows.
_DATE = re.compile(
    r"\d{4}([./-])\d{1,2}\1\d{1,2}|\d{1,2}([./-])\d{1,2}\2\d{2}(?:\d{2})?|(?:1[89]|20)\d\d[-/](?:1[89]|20)\d\d"
)
_ZIP_PLUS_4 = re.compile(r"\d{5}-\d{4}")  # "90210-1234", which Spain's plan would also dial
# The default of PiiConfig.phone_regions, for callers without a config.
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "AU", "IN")
_BEFORE = 40  # characters before a phone candidate read for an identifier label ("Order")
_DIGIT = re.compile(r"\d")
_DIGITS = re.compile(r"\d+")

_IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
    "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18,
    "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26,
}  # fmt: skip
_CARD_PREFIXES = ("4", "5", "2", "34", "37", "36", "30", "38", "6011", "65", "64", "35", "62")


def luhn_ok(digits: str) -> bool:
    """The Luhn check every payment card number satisfies (and 90% of random numbers fail)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """ISO 13616 mod-97 checksum plus the country's fixed length."""
    iban = candidate.replace(" ", "")
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """SSA never issues area 000, 666 or 900-999, group 00 or serial 0000."""
    a = int(area)
    return a not in (0, 666) and a < 900 and group != "00" and serial != "0000"


Check = Callable[[re.Match[str]], bool]


def _card(m: re.Match[str]) -> bool:
    digits = re.sub(r"[ -]", "", m.group())
    return 13 <= len(digits) <= 19 and digits.startswith(_CARD_PREFIXES) and luhn_ok(digits)


def _ipv4_checker(text: str, offset: int) -> Check:
    """Octets up to 255, and not right after 'version', 'v', 'build'... in the original text."""

    def check(m: re.Match[str]) -> bool:
        if any(int(octet) > 255 for octet in m.group().split(".")):
            return False
        start = offset + m.start()
        return not _VERSION_CONTEXT.search(text[max(0, start - 12) : start])

    return check


def _ipv6(m: re.Match[str]) -> bool:
    try:
        ipaddress.IPv6Address(m.group())
    except ValueError:
        return False
    return True


def phone_ok(candidate: str, regions: Sequence[str]) -> bool:
    """Whether libphonenumber takes ``candidate`` for a phone number as written.

    International (``+``) numbers are judged by their own country's plan, national ones by any of
    ``regions``; either must be a valid number and its digit groups must follow that country's
    grouping (where its digit groups split, the country's own format splits too, as in
    libphonenumber's STRICT_GROUPING), which is what keeps "2023 2024 2025" and "100 200 300"
    intact. A national number must also be written with separators or an area
    code in parentheses (a bare run of digits is far more often an id), and with the trunk
    prefix where the country has "0" as one, as people write them ("030 ...", "020 ...").
    """
    digits = sum(ch.isdigit() for ch in candidate)
    if not 7 <= digits <= 15 or _DATE.fullmatch(candidate) or _ZIP_PLUS_4.fullmatch(candidate):
        return False
    if candidate.startswith("+"):
        return _valid_and_grouped(candidate, "ZZ")
    if digits == len(candidate):
        return False
    trunk = candidate.lstrip("(").startswith("0")
    if "/" in candidate and not trunk:
        return False  # "030/4616874" is German; "2019/0123456" is a patent, not 1-201-...
    return any(
        _valid_and_grouped(candidate, region)
        for region in regions
        if (trunk or not _PLANS[region].zero_trunk) and _PLANS[region].may_have(digits, trunk)
    )


@functools.lru_cache(maxsize=4096)
def _valid_and_grouped(candidate: str, region: str) -> bool:
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return False
    if not phonenumbers.is_valid_number(number):
        return False
    style = phonenumbers.PhoneNumberFormat
    written = phonenumbers.format_number(
        number, style.INTERNATIONAL if candidate.startswith("+") else style.NATIONAL
    )
    return _group_ends(candidate) <= _group_ends(written) | _prefix_ends(written)


def _group_ends(text: str) -> set[int]:
    """Where digit groups end, counted in digits from the right (so prefixes do not shift it)."""
    ends, right = set(), 0
    for group in reversed(_DIGITS.findall(text)):
        right += len(group)
        ends.add(right)
    return ends - {right}


def _prefix_ends(written: str) -> set[int]:
    """Every position left of the formatted number: "1-800-...", "+49 (0)30 ..." may split off
    a trunk prefix or a country code that the formatted national number does not show."""
    total = sum(ch.isdigit() for ch in written)
    return set(range(total, total + 8))


@dataclass(frozen=True)
class _Plan:
    """What a region's numbering plan says before any parsing: a cheap filter, since parsing is
    the cost of this step and most candidates are counts, prices and ids."""

    zero_trunk: bool  # national numbers are written after a "0" trunk prefix
    prefix_digits: int  # digits of the national prefix that may precede the number
    lengths: frozenset[int]  # possible lengths of the national significant number

    def may_have(self, digits: int, trunk: bool) -> bool:
        return any(digits - k in self.lengths for k in {0, self.prefix_digits if trunk else 0, 1})


class _Plans(dict[str, _Plan]):
    def __missing__(self, region: str) -> _Plan:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if metadata is None or metadata.general_desc is None:
            plan = _Plan(False, 0, frozenset())
        else:
            prefix = metadata.national_prefix or ""
            lengths = frozenset(metadata.general_desc.possible_length or ())
            plan = _Plan(prefix == "0", len(prefix), lengths)
        self[region] = plan
        return plan


_PLANS = _Plans()


def _phone_span(candidate: str, regions: Sequence[str], before: str = "") -> tuple[int, int] | None:
    """The longest phone number in ``candidate`` made of whole digit groups: valid to
    libphonenumber, or in a layout only phone numbers take
    (:mod:`pipeline.parts.text.phone_layout`), and not right after a label naming an identifier
    in ``before``, the text in front of it.

    Groups may be left off only where a space separates them, so a year or a count written next
    to a number is shed, while an ISBN or a serial joined by hyphens is judged whole.
    """
    # "Order 810-498-6343" is an order, whatever the digits could dial. (Only the first group
    # can follow a label: the others follow digits.)
    labelled = candidate[0] != "+" and identifier_label(before)
    if _THOUSANDS.fullmatch(candidate):
        # "4 387 036 976" is a quantity: judged whole, so "387 036 976" is never cut out of it.
        whole = not labelled and _phone(candidate, regions)
        return (0, len(candidate)) if whole else None
    groups = [m.span() for m in _PHONE_GROUP.finditer(candidate)]
    cuts = [0] + [i for i in range(1, len(groups)) if candidate[groups[i - 1][1]] == " "]
    ends = [*cuts[1:], len(groups)]
    spans = [(a, b) for a in cuts for b in ends if a < b]
    for first, last in sorted(spans, key=lambda ab: ab[0] - ab[1]):
        start, end = groups[first][0], groups[last - 1][1]
        if first and (candidate.startswith("+") or _AREA_CODE.match(candidate)):
            continue  # "+44 ...", "(555) ..." are judged whole: never leave a code behind
        if not (labelled and first == 0) and _phone(candidate[start:end], regions):
            return start, end
    return None


def _phone(number: str, regions: Sequence[str]) -> bool:
    return phone_ok(number, regions) or phone_layout_ok(number)


def _sub_phones(window: str, regions: Sequence[str], found: Counter[str], before: str = "") -> str:
    def replace(m: re.Match[str]) -> str:
        candidate = m.group()
        span = _phone_span(candidate, regions, (before + window[: m.start()])[-_BEFORE:])
        if span is None:
            return candidate
        found["phone"] += 1
        return candidate[: span[0]] + PLACEHOLDERS["phone"] + candidate[span[1] :]

    return _PHONE.sub(replace, window)


def _ssn(m: re.Match[str]) -> bool:
    return ssn_ok(m.group(1), m.group(3), m.group(4))


def _iban(m: re.Match[str]) -> bool:
    return iban_ok(m.group())


def _always(_: re.Match[str]) -> bool:
    return True


# (type, cheap precondition on the text, pattern, confirmation). Order matters: earlier
# replacements remove text later patterns would misread (a card number is not a phone number).
_RULES: tuple[tuple[str, Callable[[str], bool], re.Pattern[str], Check], ...] = (
    ("email", lambda t: "@" in t, _EMAIL, _always),
    ("iban", lambda t: True, _IBAN, _iban),
    ("ip_address", lambda t: "::" in t or t.count(":") > 4, _IPV6, _ipv6),
)


def scrub_pii(
    text: str, types: Collection[str], phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS
) -> tuple[str, Counter[str]]:
    """Replace each PII item of the requested ``types`` with its placeholder.

    ``phone_regions`` are the countries (ISO 3166 codes) whose national formats, such as
    ``(030) 4616874`` or ``415-555-2671``, are recognised; numbers written with ``+`` and a
    country code are recognised for every country.

    Returns the scrubbed text and how many items of each type were replaced.
    """
    found: Counter[str] = Counter()
    if "secret" in types:
        text = _sub_secrets(text, found)
    if not _DIGIT.search(text) and "@" not in text:
        return text, found  # every remaining pattern needs a digit (or '@' for email)
    for kind, precondition, pattern, check in _RULES:
        if kind in types and precondition(text):
            text = _sub(text, pattern, check, kind, found)
    if not _NUMERIC_TYPES.isdisjoint(types):
        text = _NUMBER_RUN.sub(
            lambda run: _scrub_number_run(run, types, phone_regions, found), text
        )
    return text, found


def _scrub_number_run(
    run: re.Match[str], types: Collection[str], regions: Sequence[str], found: Counter[str]
) -> str:
    """Cards, SSNs, IPv4 addresses and phones inside one run of digits and separators.

    One scan for such runs replaces four scans of the whole text; runs are rare and short in
    prose, so the specific patterns then cost almost nothing. The character before the run is
    kept in the window so the patterns' look-behinds still see the real boundary.
    """
    text, start = run.string, run.start()
    context = text[start - 1 : start] if start and text[start - 1] not in "+(" else ""
    window = context + run.group()
    checks: tuple[tuple[str, re.Pattern[str], Check], ...] = (
        ("credit_card", _CARD, _card),
        ("us_ssn", _SSN, _ssn),
        ("ip_address", _IPV4, _ipv4_checker(text, start - len(context))),
    )
    for kind, pattern, check in checks:
        if kind in types:
            window = _sub(window, pattern, check, kind, found)
    if "phone" in types:
        at = start - len(context)
        window = _sub_phones(window, regions, found, text[max(0, at - _BEFORE) : at])
    return window[len(context) :]


def _sub(text: str, pattern: re.Pattern[str], check: Check, kind: str, found: Counter[str]) -> str:
    placeholder = PLACEHOLDERS[kind]

    def replace(m: re.Match[str]) -> str:
        if check(m):
            found[kind] += 1
            return placeholder
        return m.group()

    return pattern.sub(replace, text)


def _sub_secrets(text: str, found: Counter[str]) -> str:
    for needles, pattern in _SECRETS:
        if any(n in text for n in needles):
            text = _sub(text, pattern, _always, "secret", found)

    def keep_context(m: re.Match[str]) -> str:
        found["secret"] += 1
        start, end = m.span(1)
        offset = m.start()
        return m.group()[: start - offset] + PLACEHOLDERS["secret"] + m.group()[end - offset :]

    for needles, pattern in _SECRET_IN_CONTEXT:
        if any(n in text for n in needles):
            text = pattern.sub(keep_context, text)
    return text
