"""Text normalisation and the length/quality heuristics of ``prepare``.

Thresholds follow Gopher (Rae et al. 2021, appendix A.1.1). The heuristics are written to run on
every document of a multi-GB corpus: word splitting and counting stay in C (``str.split``,
``re.findall``, ``str.count``) and repeated n-grams use the vectorised hashes of
:mod:`pipeline.parts.text.dedup`.
"""

from __future__ import annotations

import re
import unicodedata

import ftfy

from pipeline.configs.data import NormaliseConfig, QualityConfig
from pipeline.parts.text.dedup import WordSpans, top_ngram_fraction

# ftfy.fix_text costs ~1 ms per KB, so it only runs on text showing the usual symptoms of
# UTF-8 decoded as Latin-1/cp1252 ('Ã©', 'â€™', 'Â ') or an earlier replacement character.
_MOJIBAKE = re.compile("Ã.|Â|â€|\ufffd")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_BLANK_RUNS = re.compile(r"\n{3,}")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def normalise(text: str, config: NormaliseConfig, *, strip: bool) -> tuple[str, list[str]]:
    """Return the normalised text and which repairs changed it.

    ``strip`` trims the ends too; prompt/completion fields keep theirs because a completion's
    leading space is part of what the model should learn to produce.
    """
    changes: list[str] = []
    ascii_only = text.isascii()  # then NFC, mojibake and exotic spaces cannot occur
    if config.fix_mojibake and not ascii_only and _MOJIBAKE.search(text):
        fixed = ftfy.fix_text(text, normalization=None)
        if fixed != text:
            text = fixed
            changes.append("mojibake")
    if config.unicode_nfc and not ascii_only and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
        changes.append("nfc")
    if config.control_chars and _CONTROL.search(text):
        text = _CONTROL.sub("", text)
        changes.append("control_chars")
    if config.whitespace:
        fixed = _whitespace(text, ascii_only)
        if strip:
            fixed = fixed.strip()
        if fixed != text:
            text = fixed
            changes.append("whitespace")
    return text, changes


def _whitespace(text: str, ascii_only: bool) -> str:
    """Each rewrite is guarded by a substring test: regexes are slow on text they won't change."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not ascii_only:
        text = _SPACES.sub(" ", text)
    if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = "\n".join(line.rstrip(" \t") for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text) if "\n\n\n" in text else text


def quality_reason(
    text: str, spans: WordSpans, config: QualityConfig, *, conversational: bool
) -> str | None:
    """The first rule ``text`` breaks, as a stable reason code, or None if it passes.

    ``spans`` holds the word statistics and hashes of ``text`` (shared with MinHash).
    """
    if len(text) < config.min_chars:
        return "too_short"
    if len(text) > config.max_chars:
        return "too_long"
    n = spans.ws_words
    floor = config.min_words_conversational if conversational else config.min_words
    if n < max(1, floor):
        return "too_few_words"
    if n > config.max_words:
        return "too_many_words"
    mean = spans.ws_word_chars / n
    if not config.min_mean_word_length <= mean <= config.max_mean_word_length:
        return "mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n > config.max_symbol_word_ratio:
        return "symbol_ratio"
    if spans.alpha_words / n < config.min_alpha_word_fraction:
        return "non_alphabetic"
    return _repetition_reason(text, spans, config)


def _repetition_reason(text: str, spans: WordSpans, config: QualityConfig) -> str | None:
    """Gopher's repetition rules: repeated lines, paragraphs and top n-grams."""
    if "\n" in text:
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if lines and 1 - len(set(lines)) / len(lines) > config.max_duplicate_line_fraction:
            return "duplicate_lines"
        paragraphs = [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
        if (
            paragraphs
            and 1 - len(set(paragraphs)) / len(paragraphs) > config.max_duplicate_paragraph_fraction
        ):
            return "duplicate_paragraphs"
    limits = (
        (2, config.max_top_2gram_fraction),
        (3, config.max_top_3gram_fraction),
        (4, config.max_top_4gram_fraction),
    )
    for n, limit in limits:
        if top_ngram_fraction(spans, n) > limit:
            return f"top_{n}gram"
    return None
