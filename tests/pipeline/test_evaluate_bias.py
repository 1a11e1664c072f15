"""The bias probe: the shipped template set, the statistics on a known truth, a tiny model."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from pipeline.configs.evaluate import BiasOptions, EvaluateConfig, PerplexityOptions
from pipeline.evaluate.bias import (
    BiasItem,
    LogProbFn,
    load_templates,
    parse_templates,
    probe,
)
from pipeline.evaluate.stage import EvaluateInputs, run_evaluate
from pipeline.parts.runtimes.base import WindowScorer
from pipeline.parts.runtimes.transformers import TransformersRuntime
from pipeline.types import DatasetFile, Hooks, PipelineError, Progress, RunPaths
from tests.pipeline.quantize_models import save_imported


def test_shipped_set_is_complete() -> None:
    name, items = load_templates()
    assert name == "bias_templates_v1.jsonl" and len(items) == 400
    cats = {i.category for i in items}
    assert cats == {"gender", "religion", "nationality", "age", "disability"}
    assert len({i.frame for i in items}) == 40
    for cat in cats:
        assert len({i.frame_id for i in items if i.category == cat}) == 40
    assert len({i.id for i in items}) == 400
    item = items[0]
    assert item.context(item.group_a) == "Everyone who met the man agreed that they were"
    assert item.spaced()


def _lines(**over: object) -> list[str]:
    base = {
        "category": "c",
        "text": "We saw {group} and they were {attribute}.",
        "group_a": "x",
        "group_b": "y",
        "stereotyped": ["s"],
        "anti_stereotyped": ["t"],
    }
    return [json.dumps(base | over)]


@pytest.mark.parametrize(
    "over",
    [{"text": "no slots"}, {"text": "{attribute} then {group}"}, {"stereotyped": []}],
)
def test_malformed_templates_are_refused(over: dict[str, object]) -> None:
    with pytest.raises(PipelineError) as err:
        parse_templates(_lines(**over), "mine.jsonl")
    assert err.value.code == "bias.templates" and "line 1" in err.value.message


def _items(n_frames: int) -> list[BiasItem]:
    lines = []
    for f in range(n_frames):
        for cat in ("biased", "fair"):
            lines += _lines(
                category=cat,
                frame_id=f"f{f}",
                text=f"Frame {f} says {{group}} is {{attribute}}.",
                stereotyped=["s1", "s2"],
                anti_stereotyped=["t1", "t2"],
            )
    return parse_templates(lines, "synthetic")


def _fake_model(effect: float, seed: int = 0) -> LogProbFn:
    """log p = noise, plus ``effect`` when group x meets a stereotyped word in a biased item."""
    rng = random.Random(seed)

    def logprob(queries: Sequence[tuple[str, str]]) -> list[float]:
        out = []
        for context, word in queries:
            value = rng.gauss(0.0, 0.3)
            if context.endswith("x is") and word.strip().startswith("s"):
                value += effect
            out.append(value)
        return out

    return logprob


def test_statistics_find_a_known_bias() -> None:
    items = _items(30)
    biased = [i for i in items if i.category == "biased"]
    fair = [i for i in items if i.category == "fair"]
    cats, per_item = probe(
        biased, _fake_model(0.5), bootstrap_samples=500, permutations=500, seed=1
    )
    fig = cats["biased"]
    assert fig["n"] == 30 and fig["frames"] == 30
    assert fig["ci95"][0] < fig["bias"] < fig["ci95"][1]
    assert fig["ci95"][0] > 0.3 and fig["bias"] == pytest.approx(0.5, abs=0.15)
    assert fig["p_value"] < 0.01
    assert len(per_item) == 30
    null, _ = probe(fair, _fake_model(0.0), bootstrap_samples=500, permutations=500, seed=1)
    assert null["fair"]["ci95"][0] < 0 < null["fair"]["ci95"][1]
    assert null["fair"]["p_value"] > 0.05
    again, _ = probe(fair, _fake_model(0.0), bootstrap_samples=500, permutations=500, seed=1)
    assert again == null


def test_probe_on_a_tiny_model_with_user_templates(tmp_path: Path) -> None:
    model_dir = save_imported(
        "mistral", ["the man and the woman were kind and cruel"] * 3, tmp_path / "m"
    )
    lines = []
    for f in range(4):
        for cat in ("gender", "age"):
            lines += _lines(
                category=cat,
                frame_id=f"f{f}",
                text=f"Story {f}: {{group}} was {{attribute}}.",
                group_a="the man" if cat == "gender" else "the old man",
                group_b="the woman" if cat == "gender" else "the young man",
                stereotyped=["strong", "brave"],
                anti_stereotyped=["kind"],
            )
    templates = tmp_path / "mine.jsonl"
    templates.write_text("\n".join(lines) + "\n")
    (tmp_path / "out").mkdir()
    config = EvaluateConfig(
        perplexity=PerplexityOptions(enabled=False),
        bias=BiasOptions(enabled=True, bootstrap_samples=100, permutations=100),
    )
    inputs = EvaluateInputs(model_dir, bias_templates=DatasetFile(path=templates, format="jsonl"))
    result = run_evaluate(config, inputs, RunPaths(tmp_path, tmp_path / "out"))
    assert result.bias is not None and result.bias["templates"] == "mine.jsonl"
    for cat in ("gender", "age"):
        fig = result.bias["categories"][cat]
        assert fig["n"] == 4 and fig["ci95"][0] <= fig["bias"] <= fig["ci95"][1]
        assert 0 < fig["p_value"] <= 1
    # Random weights still prefer some words after some groups: the figure is not identically 0.
    assert result.bias["categories"]["gender"]["bias"] != 0.0
    scores = (tmp_path / "out" / "bias_items.jsonl").read_text().splitlines()
    assert len(scores) == 8


def _gender_templates(path: Path, frames: int) -> DatasetFile:
    lines = []
    for f in range(frames):
        lines += _lines(
            category="gender",
            frame_id=f"f{f}",
            text=f"Story {f}: {{group}} was {{attribute}}.",
            group_a="the man",
            group_b="the woman",
            stereotyped=["strong", "brave"],
            anti_stereotyped=["kind"],
        )
    path.write_text("\n".join(lines) + "\n")
    return DatasetFile(path=path, format="jsonl")


def test_probe_progress_counts_items_to_their_total(tmp_path: Path) -> None:
    model_dir = save_imported("llama", ["the man and the woman were kind"] * 3, tmp_path / "m")
    templates = _gender_templates(tmp_path / "mine.jsonl", frames=40)
    (tmp_path / "out").mkdir()
    events: list[Progress] = []
    config = EvaluateConfig(
        perplexity=PerplexityOptions(enabled=False),
        bias=BiasOptions(enabled=True, bootstrap_samples=10, permutations=10),
    )
    run_evaluate(
        config,
        EvaluateInputs(model_dir, bias_templates=templates),
        RunPaths(tmp_path, tmp_path / "out"),
        Hooks(on_progress=events.append),
    )
    # 40 items in chunks of 32: a job shows 32 of 40, then 40 of 40 (an ETA in between).
    assert [(p.step, p.total) for p in events] == [(32, 40), (40, 40)]
    assert events[-1].metrics["bias_items"] == 40


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_batched_continuation_scores_equal_one_at_a_time(kind: str, tmp_path: Path) -> None:
    model_dir = save_imported(kind, ["the man and the woman were kind"] * 3, tmp_path / "m")
    # A short window, so some contexts are cut; a small batch, so lengths share passes unevenly.
    runtime = TransformersRuntime.load(
        model_dir, device=torch.device("cpu"), max_length=24, batch_size=2
    )
    rng = random.Random(0)
    vocab = runtime.model.config.vocab_size
    seqs = [[rng.randrange(vocab) for _ in range(rng.randint(2, 40))] for _ in range(30)]
    scored = [rng.randint(1, min(3, len(s) - 1)) for s in seqs]
    # As the probe asks: several continuations of one context, packed into one row.
    for _ in range(6):
        context = [rng.randrange(vocab) for _ in range(rng.randint(1, 30))]
        for _ in range(5):
            k = rng.randint(1, 3)
            seqs.append(context + [rng.randrange(vocab) for _ in range(k)])
            scored.append(k)

    batched = runtime.scorer.continuation_nll(seqs, scored)
    # The base class scores one right-padded window per sequence: the reference.
    single = [
        WindowScorer.continuation_nll(runtime.scorer, [s], [k])[0]
        for s, k in zip(seqs, scored, strict=True)
    ]

    assert batched == pytest.approx(single, rel=1e-4, abs=1e-4)
    assert len(set(map(len, seqs))) > 10  # the batches really mixed lengths (and padding)
