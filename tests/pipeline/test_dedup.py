"""Near-duplicate defaults measured on generated data: recall on lightly edited copies, and
documents that merely share a template or vocabulary kept."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from pipeline.configs.data import DedupConfig, PrepareConfig
from pipeline.parts.datasets.formats import detect_format
from pipeline.parts.text.dedup import NearDupIndex, WordSpans, lsh_bands, minhash, permutations
from pipeline.prepare.stage import PrepareInputs, run_prepare
from pipeline.types import RunPaths

STORIES = Path(__file__).parents[1] / "fixtures" / "corpus" / "stories.jsonl"
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi", "go", "pe", "zu"]


class Prose:
    """Documents of 60-200 words over a Zipfian vocabulary, and copies with words substituted."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        vocab = {
            "".join(self.rng.choices(SYLLABLES, k=self.rng.randint(1, 4))) for _ in range(8000)
        }
        self.words = sorted(vocab)
        self.rng.shuffle(self.words)
        self.weights = list(itertools.accumulate(1 / (r + 10) for r in range(len(self.words))))

    def document(self) -> str:
        words = self.rng.choices(self.words, cum_weights=self.weights, k=self.rng.randint(60, 200))
        return " ".join(w + ("." if i % 14 == 13 else "") for i, w in enumerate(words))

    def substitute(self, text: str, rate: float, *, binomial: bool = False) -> str:
        tokens = text.split(" ")
        count = (
            sum(self.rng.random() < rate for _ in tokens)
            if binomial
            else max(1, round(rate * len(tokens)))
        )
        for i in self.rng.sample(range(len(tokens)), count):
            new = tokens[i]
            while new == tokens[i]:
                new = self.rng.choices(self.words, cum_weights=self.weights)[0]
            tokens[i] = new
        return " ".join(tokens)


def _flags(config: DedupConfig, texts: list[str]) -> list[bool]:
    """The prepare stage's near-duplicate decision for each text, in order."""
    perms = permutations(config.num_perm)
    index = NearDupIndex(config.near_threshold, config.num_perm)
    return [
        index.add(minhash(WordSpans.of(t).ngrams(config.shingle_words)[0], perms))[1] is not None
        for t in texts
    ]


def _recall_and_kept(config: DedupConfig, rate: float, *, binomial: bool) -> tuple[float, float]:
    prose = Prose(seed=int(rate * 1000) + binomial)
    originals = [prose.document() for _ in range(400)]
    distinct = [prose.document() for _ in range(800)]
    stories = list(dict.fromkeys(json.loads(line)["text"] for line in STORIES.open()))
    edited = [prose.substitute(t, rate, binomial=binomial) for t in originals]
    flags = _flags(config, originals + distinct + stories + edited)
    unique = len(originals) + len(distinct) + len(stories)
    return sum(flags[unique:]) / len(edited), 1 - sum(flags[:unique]) / unique


def test_defaults_catch_3_percent_edits_and_keep_distinct_documents() -> None:
    config = DedupConfig()
    for binomial in (False, True):
        recall, kept = _recall_and_kept(config, 0.03, binomial=binomial)
        print(f"3% edits (binomial={binomial}): recall {recall:.3f}, distinct kept {kept:.4f}")
        assert recall >= 0.90
        assert kept >= 0.99


def test_lsh_bands_propose_pairs_at_the_threshold() -> None:
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows <= 128
        assert 1 - (1 - threshold**rows) ** bands >= 0.99
    assert lsh_bands(0.7, 128) == (32, 4)


def test_prepare_with_defaults_removes_lightly_edited_copies(tmp_path: Path) -> None:
    prose = Prose(seed=5)
    originals = [prose.document() for _ in range(60)]
    edited = [prose.substitute(t, 0.03) for t in originals]
    source = tmp_path / "source.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in originals + edited))
    paths = RunPaths(work_dir=tmp_path / "work", output_dir=tmp_path / "out")
    paths.work_dir.mkdir()
    paths.output_dir.mkdir()
    result = run_prepare(
        PrepareConfig(processes=1), PrepareInputs(detect_format(source, {})), paths
    )
    removed = result.report["steps"]["near_dedup"]["removed"]
    assert removed >= 0.9 * len(edited)
    assert result.records_out >= len(originals)
