"""Generate a realistic-looking JSONL text corpus with planted duplicates, near-duplicates and PII.

Prose is built from a Zipf-distributed vocabulary of pronounceable pseudo-words, so it passes the
Gopher quality heuristics the way real text does (repeating lorem ipsum would not). Shared by the
prepare benchmark and, later, the upload benchmark.

    python -m benchmarks.corpus out.jsonl --mb 100
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import phonenumbers

_ONSETS = [
    "",
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "st",
    "tr",
    "pl",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "nd", "st"]
_PHONE_FORMATS = [
    ("(212) ###-####", "US"),
    ("415-###-####", "US"),
    ("+49 30 #######", "DE"),
    ("(030) #######", "DE"),
    ("+44 20 #### ####", "GB"),
    ("+33 1 ## ## ## ##", "FR"),
]


@dataclass
class Manifest:
    """What was planted, so a test or benchmark can check what prepare reports."""

    documents: int = 0
    bytes: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    pii_documents: int = 0
    junk_documents: int = 0


class Prose:
    """Sentences and documents of pseudo-English with a Zipfian vocabulary."""

    def __init__(self, seed: int = 0, vocabulary: int = 20_000) -> None:
        self.rng = random.Random(seed)
        words: set[str] = set()
        while len(words) < vocabulary:
            words.add(self._word())
        self.words = sorted(words)
        self.rng.shuffle(self.words)
        self.cum_weights = list(itertools.accumulate(1 / (rank + 10) for rank in range(vocabulary)))

    def _word(self) -> str:
        syllables = self.rng.choice([1, 2, 2, 2, 3, 3, 4])
        rng = self.rng
        return "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
        )

    def sentence(self) -> str:
        words = self.rng.choices(
            self.words, cum_weights=self.cum_weights, k=self.rng.randint(6, 22)
        )
        if self.rng.random() < 0.3:
            words.insert(self.rng.randrange(len(words)), str(self.rng.randint(2, 999)))
        words[0] = words[0].capitalize()
        if len(words) > 8 and self.rng.random() < 0.4:
            words[len(words) // 2] += ","
        return " ".join(words) + self.rng.choice([".", ".", ".", "?", "!"])

    def document(self, min_words: int = 150, max_words: int = 1200) -> str:
        target = self.rng.randint(min_words, max_words)
        paragraphs: list[str] = []
        count = 0
        while count < target:
            sentences = [self.sentence() for _ in range(self.rng.randint(2, 6))]
            count += sum(len(s.split()) for s in sentences)
            paragraphs.append(" ".join(sentences))
        return "\n\n".join(paragraphs)

    def edit(self, text: str, edits: int) -> str:
        """Replace ``edits`` words at random positions (a near-duplicate)."""
        tokens = text.split(" ")
        for _ in range(edits):
            i = self.rng.randrange(len(tokens))
            tokens[i] = self.rng.choice(self.words) + ("\n\n" if "\n\n" in tokens[i] else "")
        return " ".join(tokens)

    def substitute(self, text: str, rate: float) -> str:
        """Replace a share ``rate`` of the words (at least one), each with a different word drawn
        from the Zipfian vocabulary: the near-duplicates of the dedup recall measurement."""
        tokens = text.split(" ")
        for i in self.rng.sample(range(len(tokens)), max(1, round(rate * len(tokens)))):
            old = tokens[i].rstrip(".,?!\n")
            new = old
            while new.lower() == old.lower():
                new = self.rng.choices(self.words, cum_weights=self.cum_weights)[0]
            tokens[i] = new + tokens[i][len(old) :]
        return " ".join(tokens)

    def short_document(self, min_words: int = 60, max_words: int = 200) -> str:
        """A document cut to between ``min_words`` and ``max_words`` words."""
        words = self.document(min_words, max_words).split(" ")
        return " ".join(words[: self.rng.randint(min_words, max_words)])

    def phone(self) -> str:
        """A valid number (libphonenumber's plans) in one of a few national and international
        formats; random digits in a real format are mostly unassigned ranges."""
        fmt, region = self.rng.choice(_PHONE_FORMATS)
        while True:
            number = re.sub(r"#", lambda _: str(self.rng.randrange(10)), fmt)
            if phonenumbers.is_valid_number(phonenumbers.parse(number, region)):
                return number

    def pii_sentence(self) -> str:
        r = self.rng.randint
        return self.rng.choice(
            [
                f"Contact {self.rng.choice(self.words)}.{r(1, 99)}@example.com for details.",
                f"Call {self.phone()} after noon.",
                f"The server at 10.{r(0, 255)}.{r(0, 255)}.{r(1, 254)} was restarted.",
            ]
        )

    def junk(self) -> str:
        kind = self.rng.randrange(3)
        if kind == 0:
            return "#### " * self.rng.randint(30, 80)
        if kind == 1:
            line = self.sentence()
            return "\n".join([line] * self.rng.randint(10, 30))
        return " ".join(self.rng.choices(self.words[:5], k=self.rng.randint(3, 10)))


def generate(path: Path, target_bytes: int, seed: int = 0) -> Manifest:
    """Write about ``target_bytes`` of JSONL ``{"text"}`` records to ``path``.

    Roughly 5% exact duplicates, 5% near-duplicates (1-2 word edits of 150+ word documents), 5%
    documents with an email/phone/IP planted, 3% junk.
    """
    prose = Prose(seed)
    rng = prose.rng
    manifest = Manifest()
    recent: list[str] = []
    with path.open("w", encoding="utf-8") as out:
        while manifest.bytes < target_bytes:
            roll = rng.random()
            if roll < 0.05 and recent:
                text = rng.choice(recent)
                manifest.exact_duplicates += 1
            elif roll < 0.10 and recent:
                text = prose.edit(rng.choice(recent), rng.randint(1, 2))
                manifest.near_duplicates += 1
            elif roll < 0.13:
                text = prose.junk()
                manifest.junk_documents += 1
            else:
                text = prose.document()
                if roll < 0.18:
                    text += " " + prose.pii_sentence()
                    manifest.pii_documents += 1
                recent = [*recent[-499:], text]
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            out.write(line)
            manifest.documents += 1
            manifest.bytes += len(line.encode("utf-8"))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--mb", type=float, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(asdict(generate(args.path, int(args.mb * 1e6), args.seed))))


if __name__ == "__main__":
    main()
