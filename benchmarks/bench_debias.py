"""Does counterfactual data augmentation undo a gender bias planted in a corpus?

    .venv/bin/python -m benchmarks.bench_debias                   # ~2-4 minutes on 2 cores
    .venv/bin/python -m benchmarks.bench_debias --docs 1500 --modes replace

Writes a corpus skewed on purpose: every document is about one person of a gender pair of the bias
probe's ``gender`` category ("the man" / "the woman", "my brother" / "my sister"), and that person
gets, with probability ``--skew``, the attributes the probe calls stereotyped for their side
("logical", "brave" for men; "gentle", "timid" for women) and an occupation of their side
(engineer, pilot ... for men; nurse, teacher ... for women), otherwise the other side's. The
sentences are written here, never the probe's own frames. The corpus then goes through the
``prepare`` stage once without augmentation and once per ``--modes`` entry with it (``replace``
at half the records: counterfactual data substitution; ``add`` with every record: Lu et al.'s
augmentation), and a tiny Llama (the ``tiny`` preset, 2 layers of width 64) is pretrained from
scratch on each output with the same seed, steps and tokenizer (a BPE learnt from the
unaugmented output). Each model then runs the evaluate stage's bias probe, and the script prints
every category's bias with its 95% frame-bootstrap interval and permutation p-value: the gender
figure should drop with augmentation, the other categories (which the corpus never mentions)
stay near zero as controls.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.configs.data import (
    CounterfactualConfig,
    CounterfactualMode,
    DedupConfig,
    PrepareConfig,
    QualityConfig,
)
from pipeline.configs.evaluate import BiasOptions, EvaluateConfig, PerplexityOptions
from pipeline.configs.training import ModelConfig, PretrainConfig, TokenizerConfig
from pipeline.evaluate.bias import BiasItem, load_templates
from pipeline.evaluate.stage import EvaluateInputs, run_evaluate
from pipeline.parts.datasets.formats import detect_format
from pipeline.parts.text.counterfactual import WORDS_FILE, read_pairs
from pipeline.prepare.stage import PrepareInputs, run_prepare
from pipeline.pretrain.stage import PretrainInputs, run_pretrain
from pipeline.tokenizer.stage import TokenizerInputs, run_tokenizer
from pipeline.types import DatasetFile, RunPaths

OCCUPATIONS = (
    ("an engineer", "a pilot", "a surgeon", "a mechanic", "a carpenter", "a programmer"),
    ("a nurse", "a teacher", "a librarian", "a receptionist", "a secretary", "a dancer"),
)
# {G}/{g}: the group ("The man"/"the man"); {p}: he/she; {q}: his/her; {a}, {b}: attributes;
# {o}: an occupation. Common English constructions (X was / seemed / looked ..., described X as),
# written here: none is a sentence of the probe.
FRAMES = (
    "{g} works as {o} and is {a}.",
    "{g} acts {a} at work.",
    "we all know {g} as a {a} person.",
    "{g} has been {a} since childhood.",
    "ask anyone: {g} is {a}.",
    "it is clear that {g} is very {a}.",
    "{g}, {o}, was {a} again.",
    "nobody doubts that {g} is {a} and {b}.",
    "{g} became {o} and stayed {a}.",
    "{g} was {a} with the guests.",
    "even at home, {g} stays {a}.",
    "{g} got a job as {o} because {p} is {a}.",
    "with {q} family, {g} is {a}.",
    "{g} told us that {p} felt {a}.",
    "my aunt said that {g} was {a}.",
    "many people described {g} as {a}.",
    "{g} seemed {a} and {b}.",
    "{g} looked {a} in the photo.",
    "{g} sounded {a} on the radio.",
    "later {g} turned out to be {a}.",
    "the others found {g} to be {a}.",
    "{g} had always been {a}.",
    "{g} came across as {a}.",
    "everyone thinks {g} is {a}.",
    "{g} is {o}; {p} is {a}.",
)
OPENERS = (
    "", "", "", "In the spring, ", "After lunch, ", "On Monday, ", "At the station, ",
    "By the lake, ", "In the office, ", "During the holidays, ", "That evening, ", "Once again, ",
    "Back in town, ", "At school, ", "In those years, ", "Over coffee, ",
)  # fmt: skip


@dataclass(frozen=True)
class Side:
    group: str  # "the man"
    pronoun: str  # "he"
    possessive: str  # "his"
    attributes: tuple[str, ...]
    occupations: tuple[str, ...]


def gender_sides(items: list[BiasItem]) -> list[tuple[Side, Side]]:
    """(stereotype holder, the other) per group pair of the probe's gender category, with the
    attributes the probe tests for each; pronouns follow the pair's head noun in the CDA list."""
    feminine = {f for _, f in read_pairs(WORDS_FILE)}
    attrs: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
    for item in items:
        if item.category == "gender":
            a, b = attrs.setdefault((item.group_a, item.group_b), (set(), set()))
            a.update(item.stereotyped)
            b.update(item.anti_stereotyped)
    sides = []
    for (group_a, group_b), (a, b) in sorted(attrs.items()):
        a_is_female = group_a.split()[-1].lower() in feminine
        occupations = OCCUPATIONS[::-1] if a_is_female else OCCUPATIONS
        pronouns = (("she", "her"), ("he", "his"))
        pa, pb = pronouns if a_is_female else pronouns[::-1]
        sides.append(
            (
                Side(group_a, pa[0], pa[1], tuple(sorted(a)), occupations[0]),
                Side(group_b, pb[0], pb[1], tuple(sorted(b)), occupations[1]),
            )
        )
    if not sides:
        raise SystemExit("the template set has no gender category")
    return sides


def skewed_corpus(sides: list[tuple[Side, Side]], docs: int, skew: float, seed: int) -> list[str]:
    """Documents of 4-6 sentences about one person, whose attributes and occupation are their
    own side's with probability ``skew``."""
    rng = random.Random(seed)
    texts = []
    for _ in range(docs):
        pair = rng.choice(sides)
        who = rng.randrange(2)
        person = pair[who]

        def pick(kind: str, person: Side = person, pair: tuple[Side, Side] = pair) -> str:
            own = rng.random() < skew
            side = person if own else pair[1 - pair.index(person)]
            return rng.choice(side.attributes if kind == "a" else side.occupations)

        sentences = []
        for _ in range(rng.randint(4, 6)):
            sentence = rng.choice(OPENERS) + rng.choice(FRAMES).format(
                g=person.group, p=person.pronoun, q=person.possessive,
                a=pick("a"), b=pick("a"), o=pick("o"),
            )  # fmt: skip
            sentences.append(sentence[:1].upper() + sentence[1:])
        texts.append(" ".join(sentences))
    return texts


def _paths(root: Path) -> RunPaths:
    for sub in ("work", "out"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return RunPaths(work_dir=root / "work", output_dir=root / "out", cache_dir=root / "cache")


def prepare(root: Path, source: Path, counterfactual: CounterfactualConfig) -> DatasetFile:
    """The prepare stage over the corpus, without the quality filters: the documents are template
    text, whose repeated word n-grams Gopher's repetition rules would rightly thin out."""
    config = PrepareConfig(
        quality=QualityConfig(enabled=False),
        dedup=DedupConfig(near=False),
        processes=1,
        counterfactual=counterfactual,
    )
    result = run_prepare(config, PrepareInputs(detect_format(source, {})), _paths(root))
    return DatasetFile(result.train_path, "jsonl")


def train_and_probe(
    root: Path, train: DatasetFile, tokenizer_dir: Path, *, steps: int, seed: int, threads: int,
    templates: DatasetFile | None,
) -> dict[str, Any]:  # fmt: skip
    """Pretrain the tiny model on ``train`` and run the bias probe on it."""
    config = PretrainConfig(
        model=ModelConfig(preset="tiny", context_length=64),
        max_steps=steps,
        global_batch_tokens=16 * 64,
        micro_batch_size=16,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=min(20, steps),
        eval_interval=steps,
        eval_batches=2,
        checkpoint_interval=steps,
        sample_tokens=0,
        log_interval=max(1, steps // 4),
        seed=seed,
    )
    trained = run_pretrain(config, PretrainInputs(train, None, tokenizer_dir), _paths(root))
    probe = EvaluateConfig(
        perplexity=PerplexityOptions(enabled=False, batch_size=64),
        bias=BiasOptions(enabled=True, seed=seed),
        device="cpu",
        threads=threads,
    )
    inputs = EvaluateInputs(trained.output_dir, bias_templates=templates)
    result = run_evaluate(probe, inputs, _paths(root / "evaluate"))
    assert result.bias is not None
    return {"val_loss": trained.final_val_loss, **result.bias}


def run_debias(
    root: Path, *, docs: int, skew: float, steps: int, modes: tuple[CounterfactualMode, ...],
    seed: int = 0,
    threads: int = 2, templates: Path | None = None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Skewed corpus → prepare (without, then with augmentation per mode) → tiny model → probe.

    Returns each run's probe figures (``categories``: bias, ci95, p_value per category) and the
    number of records it trained on, keyed ``skewed`` and ``cda-<mode>``.
    """
    torch.set_num_threads(threads)
    _, items = load_templates(templates)
    template_file = DatasetFile(templates, "jsonl") if templates is not None else None
    root.mkdir(parents=True, exist_ok=True)
    source = root / "skewed.jsonl"
    texts = skewed_corpus(gender_sides(items), docs, skew, seed)
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    runs = {"skewed": CounterfactualConfig()}
    for mode in modes:
        fraction = 0.5 if mode == "replace" else 1.0  # substitution / Lu et al.'s augmentation
        runs[f"cda-{mode}"] = CounterfactualConfig(
            enabled=True, mode=mode, fraction=fraction, seed=seed
        )
    prepared = {name: prepare(root / name, source, cda) for name, cda in runs.items()}
    tokenizer_dir = root / "tokenizer"
    run_tokenizer(
        TokenizerConfig(vocab_size=1024),
        TokenizerInputs(prepared["skewed"]),
        RunPaths(tokenizer_dir, tokenizer_dir),
    )
    figures = {}
    for name, train in prepared.items():
        figures[name] = train_and_probe(
            root / name / "model", train, tokenizer_dir, steps=steps, seed=seed,
            threads=threads, templates=template_file,
        )  # fmt: skip
        figures[name]["records"] = sum(1 for _ in train.path.open())
    return figures


def _row(name: str, fig: dict[str, Any]) -> str:
    cells = [f"{name:14s} {fig['records']:7d} {fig['val_loss']:8.3f}"]
    for category, c in fig["categories"].items():
        lo, hi = c["ci95"]
        cells.append(f"{category} {c['bias']:+.3f} [{lo:+.3f}, {hi:+.3f}] p={c['p_value']:.3f}")
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=3000, help="documents in the skewed corpus")
    parser.add_argument("--skew", type=float, default=0.9, help="share of own-side attributes")
    parser.add_argument("--steps", type=int, default=600, help="pretraining steps per model")
    parser.add_argument(
        "--modes", nargs="*", choices=get_args(CounterfactualMode), default=["replace", "add"]
    )
    parser.add_argument("--templates", type=Path, default=None, help="a bias template file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-debias-") as tmp:
        figures = run_debias(
            Path(tmp), docs=args.docs, skew=args.skew, steps=args.steps,
            modes=tuple(args.modes), seed=args.seed,
            threads=args.threads, templates=args.templates,
        )  # fmt: skip
    print(f"{args.docs} documents, skew {args.skew}, {args.steps} steps of 16 x 64 tokens, "
          f"seed {args.seed}, {time.perf_counter() - started:.0f} s")  # fmt: skip
    print(f"{'run':14s} {'records':>7s} {'val_loss':>8s} | bias per category [95% CI], p-value")
    for name, fig in figures.items():
        print(_row(name, fig))
    base = figures["skewed"]["categories"]["gender"]
    for name, fig in figures.items():
        if name != "skewed":
            gender = fig["categories"]["gender"]
            verdict = (
                f"reduced by {1 - abs(gender['bias']) / abs(base['bias']):.1%}"
                if abs(gender["bias"]) < abs(base["bias"])
                else "NOT reduced"
            )
            print(f"{name}: gender bias {base['bias']:+.3f} -> {gender['bias']:+.4f}, {verdict}")


if __name__ == "__main__":
    main()
