"""The second way a phone number is recognised: by a layout nobody writes anything else in.

The first way (:func:`pipeline.parts.text.pii.phone_ok`) asks Google's libphonenumber whether a
candidate is a *valid* number, one inside a range that today's numbering plan of its country has
allocated, and written with that country's digit grouping. That is what keeps counts, ids, prices
and years intact when they happen to be written like a national number ("100 200 300", "2023 2024").
But a scrubber cannot stop there, because validity is a fact about the telephone network, not about
the text: the 555-01XX numbers of American fiction and documentation, the Ofcom drama ranges, test
fixtures, numbers from before a renumbering and ranges allocated after the library's metadata was
cut are all invalid to libphonenumber, and every one of them is still somebody's phone number to a
reader (or will be). A number that is *written* as only a phone number is written is PII whatever
its range:

* a leading ``+``, a country calling code that exists, and a national number whose length that
  country's plan makes possible (libphonenumber's ``is_possible_number``, the check behind its
  matcher's ``Leniency.POSSIBLE``): ``+44 20 7946 0018``, ``+1-555-010-9999``,
  ``+33 (0)1 23 45 67 89``, ``+49 30 901820``, ``+86 138 0013 8000``, ``+15550109999``;
* the North-American layouts ``(NNN) NNN-NNNN`` (any digits: the parentheses around an area code
  are the tell) and ``NNN-NNN-NNNN`` / ``NNN.NNN.NNNN`` with an area code that can exist (2-9
  first, as the plan requires), optionally after a ``1`` trunk prefix.

What this rule does not do, and why. libphonenumber's own ``PhoneNumberMatcher`` with
``Leniency.POSSIBLE`` finds the same numbers, but it scans text at about 0.2 MB/s (measured on this
project's 2-core machine), two orders of magnitude below what ``prepare`` runs at, and it also
takes "Order 123-456-7890" for a number; here the candidates come from the scrubber's cheap scan
for runs of digits, and only the runs pay for parsing. National layouts other than North America's
("020 7946 0018", "(030) 4616874") stay with the validity path: "020 7946 0018" is also how a
list of three counts reads. A last group of a single digit is never accepted here ("+49 30 901820
2 times" keeps its count), as no country groups its numbers that way.

Both paths yield to a label that names an identifier just before a number written without "+":
"Order 810-498-6343" and "Serial 708-73-8474" are an order and a serial even where the digits
also make a dialable number (:func:`identifier_label`).
"""

from __future__ import annotations

import functools
import re

import phonenumbers

_NANP = re.compile(
    r"(?:1[ .-]?)?\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 010-9999, 1 (800) 555-0199
    r"|(?:1-)?[2-9]\d\d-\d{3}-\d{4}"  # 555-010-9999, 1-800-555-0199
    r"|(?:1\.)?[2-9]\d\d\.\d{3}\.\d{4}"  # 555.010.9999
)
# Words that make the number right after them an identifier: "Order 456-789-0123", "ticket no.
# 555-010-9999", "Account #: 020 7946 0018". "Number" and "no." alone are no such label ("phone
# number 555-010-9999").
_ID_LABEL = re.compile(
    r"(?i)\b(?:order|invoice|ticket|case|serial|sku|part|account|acct|tracking"
    r"|isbn|issn|batch|lot|item|model|patent|receipt|transaction|confirmation|booking|policy"
    r"|claim|shipment|parcel)"
    r"(?:\s*(?:no\.?|num(?:ber)?\.?|id|#))?[\s:#.]*$"
)
_LAST_GROUP = re.compile(r"\d+$")


def phone_layout_ok(candidate: str) -> bool:
    """Whether ``candidate`` is written in a layout that only phone numbers take (see the module
    docstring), whatever libphonenumber knows of its range."""
    if candidate.startswith("+"):
        return _international(candidate)
    return _NANP.fullmatch(candidate) is not None


def identifier_label(before: str) -> bool:
    """Whether ``before``, the text just before a number, ends in a label naming an identifier
    ("Order", "Invoice no.", "ticket #")."""
    return _ID_LABEL.search(before) is not None


@functools.lru_cache(maxsize=4096)
def _international(candidate: str) -> bool:
    last = _LAST_GROUP.search(candidate)
    if last is None or len(last.group()) < 2:
        return False
    try:
        number = phonenumbers.parse(candidate, "ZZ")
    except phonenumbers.NumberParseException:
        return False  # no such country calling code, or no digits after it
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        return False
    return len(phonenumbers.national_significant_number(number)) >= _shortest(number.country_code)


@functools.lru_cache(maxsize=512)
def _shortest(country_code: int) -> int:
    """The fewest national digits taken on layout alone: 7, or fewer where the country has no
    longer numbers (Ascension's are 5 digits). A short run after "+" is more often an amount
    ("+46 848 129", "+49.1906"); short numbers of larger plans still pass when valid."""
    region = phonenumbers.region_code_for_country_code(country_code)
    if region == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY:
        metadata = phonenumbers.PhoneMetadata.metadata_for_nongeo_region(country_code)
    else:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    lengths = metadata.general_desc.possible_length if metadata and metadata.general_desc else ()
    return min(7, max(lengths or (7,)))
