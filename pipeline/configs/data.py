"""Parameters of the dataset stages: ``validate`` (is this upload usable?), ``prepare`` (clean it).

Every cleaning step is on by default with thresholds taken from the Gopher paper (Rae et al. 2021,
appendix A) where one exists, because a user who uploads a scrape expects it to be cleaned, and one
who does not can switch a step off. Sub-settings are nested frozen dataclasses so the job parameters
read as ``{"quality": {"min_words": 20}}`` rather than forty flat keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from pipeline.configs.base import PYDANTIC_CONFIG, ConfigError, check_range

GIB = 1 << 30
MIB = 1 << 20
PII_TYPES = frozenset({"email", "phone", "ip_address", "credit_card", "iban", "us_ssn", "secret"})
CounterfactualMode = Literal["replace", "add"]


@dataclass(frozen=True)
class ValidateConfig:
    """Limits that stop a hostile or broken upload before it costs disk, memory or time."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    max_decompressed_bytes: int = 64 * GIB
    """Abort when a compressed upload inflates beyond this many bytes."""
    max_compression_ratio: float = 200.0
    """Abort when decompressed/compressed bytes exceed this ratio (text rarely passes 20)."""
    ratio_check_min_bytes: int = 4 * MIB
    """Judge the ratio only after this many decompressed bytes, so tiny files are never flagged."""
    max_record_bytes: int = 256 * MIB
    """Longest accepted line, row or paragraph in bytes; longer ones are reported, not loaded."""
    max_errors_listed: int = 20
    """How many bad records are listed with their line number (all are counted)."""

    def __post_init__(self) -> None:
        check_range("max_decompressed_bytes", self.max_decompressed_bytes, 1, 1 << 50)
        check_range("max_compression_ratio", self.max_compression_ratio, 1, 1e6)
        check_range("ratio_check_min_bytes", self.ratio_check_min_bytes, 0, 1 << 40)
        check_range("max_record_bytes", self.max_record_bytes, 1, 4 * GIB)
        check_range("max_errors_listed", self.max_errors_listed, 0, 10_000)


@dataclass(frozen=True)
class NormaliseConfig:
    """Text repair applied before anything is measured, so filters and dedup see canonical text."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    enabled: bool = True
    """Run the normalisation step at all."""
    unicode_nfc: bool = True
    """Compose characters to Unicode NFC, so 'é' has one encoding."""
    fix_mojibake: bool = True
    """Repair mojibake such as 'CafÃ©' with ftfy (only on text that shows the symptoms)."""
    whitespace: bool = True
    """Unify line endings and exotic spaces, strip trailing spaces, collapse 3+ newlines to 2."""
    control_chars: bool = True
    """Remove control and zero-width characters other than newline and tab."""


@dataclass(frozen=True)
class QualityConfig:
    """Length limits and Gopher-style heuristics that catch boilerplate, spam and garbage."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    enabled: bool = True
    """Run the length and quality filters."""
    min_chars: int = 20
    """Drop records shorter than this many characters."""
    max_chars: int = 1_000_000
    """Drop records longer than this many characters."""
    min_words: int = 50
    """Drop plain-text records with fewer words (Gopher: 50)."""
    min_words_conversational: int = 3
    """Word floor for chat and prompt/completion records, which are short by nature."""
    max_words: int = 100_000
    """Drop records with more words (Gopher: 100,000)."""
    min_mean_word_length: float = 3.0
    """Drop records whose mean word length is below this (Gopher: 3)."""
    max_mean_word_length: float = 10.0
    """Drop records whose mean word length is above this (Gopher: 10)."""
    min_alpha_word_fraction: float = 0.8
    """Share of words that must contain a letter (Gopher: 0.8)."""
    max_symbol_word_ratio: float = 0.1
    """Most '#' and ellipses per word (Gopher: 0.1)."""
    max_duplicate_line_fraction: float = 0.3
    """Most share of lines that repeat an earlier line (Gopher: 0.3)."""
    max_duplicate_paragraph_fraction: float = 0.3
    """Most share of paragraphs that repeat an earlier paragraph (Gopher: 0.3)."""
    max_top_2gram_fraction: float = 0.20
    """Most share of characters inside the most repeated word 2-gram (Gopher: 0.20)."""
    max_top_3gram_fraction: float = 0.18
    """Most share of characters inside the most repeated word 3-gram (Gopher: 0.18)."""
    max_top_4gram_fraction: float = 0.16
    """Most share of characters inside the most repeated word 4-gram (Gopher: 0.16)."""

    def __post_init__(self) -> None:
        check_range("min_chars", self.min_chars, 0, 1 << 31)
        check_range("max_chars", self.max_chars, 1, 1 << 31)
        if self.min_chars > self.max_chars:
            raise ConfigError("min_chars", "must not exceed max_chars")
        check_range("min_words", self.min_words, 0, 1 << 31)
        check_range("min_words_conversational", self.min_words_conversational, 0, 1 << 31)
        check_range("max_words", self.max_words, 1, 1 << 31)
        check_range("min_mean_word_length", self.min_mean_word_length, 0, 1000)
        check_range("max_mean_word_length", self.max_mean_word_length, 0, 1000)
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ConfigError("min_mean_word_length", "must not exceed max_mean_word_length")
        for name in (
            "min_alpha_word_fraction",
            "max_duplicate_line_fraction",
            "max_duplicate_paragraph_fraction",
            "max_top_2gram_fraction",
            "max_top_3gram_fraction",
            "max_top_4gram_fraction",
        ):
            check_range(name, getattr(self, name), 0, 1)
        check_range("max_symbol_word_ratio", self.max_symbol_word_ratio, 0, 1000)


@dataclass(frozen=True)
class DedupConfig:
    """Exact and near-duplicate removal; the first occurrence in file order is kept."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    exact: bool = True
    """Drop records whose normalised text equals an earlier record's."""
    near: bool = True
    """Drop records that MinHash LSH finds near-identical to an earlier record."""
    near_threshold: float = 0.7
    """Estimated Jaccard similarity of word shingles at which two records are near-duplicates.

    With 3-word shingles, 0.7 catches documents of 60-200 words that differ in 3% of their words
    (each substituted word changes 3 shingles; Jaccard about 0.83) and keeps documents that share
    a template or boilerplate; ``python -m benchmarks.bench_prepare near-dup`` prints recall and
    precision against the edit rate. text-dedup's default is 0.7, datatrove's about 0.72 (on
    5-word shingles, which the same edits change more).
    """
    num_perm: int = 128
    """MinHash permutations; more is more precise and slower."""
    shingle_words: int = 3
    """Words per shingle. Shorter shingles forgive scattered edits: one substituted word changes
    ``shingle_words`` shingles, so 5-word shingles turn 3% edits into a Jaccard of about 0.73."""

    def __post_init__(self) -> None:
        check_range("near_threshold", self.near_threshold, 0.05, 1)
        check_range("num_perm", self.num_perm, 16, 1024)
        check_range("shingle_words", self.shingle_words, 1, 32)


@dataclass(frozen=True)
class PiiConfig:
    """Replace personal data and secrets with typed placeholders such as ``<EMAIL>``."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    enabled: bool = True
    """Run the PII scrubber."""
    types: tuple[str, ...] = tuple(sorted(PII_TYPES))
    """Which kinds to scrub: email, phone, ip_address, credit_card, iban, us_ssn, secret."""
    phone_regions: tuple[str, ...] = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "AU", "IN")
    """Countries (ISO 3166 alpha-2) whose national phone formats, such as "(030) 4616874", are
    recognised. Numbers written with "+" and a country code are recognised for every country."""

    def __post_init__(self) -> None:
        unknown = set(self.types) - PII_TYPES
        if unknown:
            raise ConfigError("types", f"unknown PII types {sorted(unknown)}")
        if not 1 <= len(self.phone_regions) <= 50:
            raise ConfigError("phone_regions", "list between 1 and 50 regions")
        bad = [r for r in self.phone_regions if not (len(r) == 2 and r.isascii() and r.isupper())]
        if bad:
            raise ConfigError("phone_regions", f"not ISO 3166 alpha-2 codes: {bad[:5]}")


@dataclass(frozen=True)
class CounterfactualConfig:
    """Counterfactual data augmentation against gender bias: gendered words ("he", "actress",
    "my brother") and first names swapped for their counterparts in a share of the records.

    Off by default, since it changes what the text says. ``replace`` at half the records is
    counterfactual data substitution (Hall Maudslay et al. 2019): the corpus keeps its size and
    ends up balanced. ``add`` with ``fraction`` 1 is the original augmentation (Lu et al. 2018):
    every record that has a gendered word gains its swapped copy, written next to it (in the
    same split), so the corpus grows by the share of such records.
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    enabled: bool = False
    """Run the augmentation."""
    mode: CounterfactualMode = "replace"
    """``replace``: a chosen record is written swapped instead of as it was; ``add``: its swapped
    copy is written after it."""
    fraction: float = 0.5
    """Share of records chosen (by a hash of the seed and the record's line, so a re-run chooses
    the same ones). Records without a gendered word or name are left as they are either way."""
    seed: int = 0
    """Seed of the choice of records."""
    names: bool = True
    """Swap first names too (John ↔ Mary, from a list of about 110 pairs), not just words."""

    def __post_init__(self) -> None:
        if self.mode not in get_args(CounterfactualMode):
            raise ConfigError("mode", f"one of {get_args(CounterfactualMode)}")
        check_range("fraction", self.fraction, 0, 1)
        check_range("seed", self.seed, 0, 2**63 - 1)


@dataclass(frozen=True)
class PrepareConfig:
    """Clean a dataset: normalise, filter, deduplicate, scrub PII, augment (optionally), check
    contamination, split."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    normalise: NormaliseConfig = field(default_factory=NormaliseConfig)
    """Text normalisation."""
    quality: QualityConfig = field(default_factory=QualityConfig)
    """Length and quality filters."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Exact and near-duplicate removal."""
    pii: PiiConfig = field(default_factory=PiiConfig)
    """PII scrubbing."""
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    """Counterfactual data augmentation (gendered words and names swapped), after PII scrubbing."""
    validation_fraction: float = 0.0
    """Share of records routed to validation.jsonl by content hash (0 = no split)."""
    drop_contaminated: bool = False
    """Drop training records that share an n-gram with the eval dataset."""
    contamination_ngram: int = 13
    """Words per n-gram in the contamination check (GPT-3 used 13)."""
    examples_per_reason: int = 3
    """Short examples kept in the report for each removal or modification reason."""
    processes: int | None = None
    """Processes computing per-record work; null = one per CPU, 1 = in the job's own process."""
    limits: ValidateConfig = field(default_factory=ValidateConfig)
    """Parsing limits applied while reading the source."""

    def __post_init__(self) -> None:
        check_range("validation_fraction", self.validation_fraction, 0, 0.5)
        check_range("contamination_ngram", self.contamination_ngram, 1, 64)
        check_range("examples_per_reason", self.examples_per_reason, 0, 100)
        if self.processes is not None:
            check_range("processes", self.processes, 1, 64)
