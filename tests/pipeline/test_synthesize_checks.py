"""The three risk checks of ``synthesize``: a teacher overfit in the test emits a planted
evaluation item, planted PII and a copied span of its "training data"; the dataset it yields has
none of them, and the result counts each. The bias figures set the synthetic text's group
mentions next to the prompts'."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.configs.synthesize import SynthesizeChecks, SynthesizeConfig
from pipeline.evaluate.bias import load_templates
from pipeline.synthesize.checks import SpanIndex, TermCounts, group_terms
from pipeline.synthesize.stage import SynthesizeInputs, SynthesizeResult, run_synthesize
from pipeline.types import DatasetFile
from tests.pipeline.conftest import make_paths
from tests.pipeline.finetune_helpers import write_jsonl
from tests.pipeline.synth_teachers import memorising_teacher

EVAL_ITEM = (
    "The old lighthouse keeper counted seven ships sailing past the rocky northern cape "
    "every single morning."
)
SOURCE = (
    "Long ago, the river town kept a ledger of floods. Roses climbed the crumbling wall "
    "beside the silver gate where the gardener slept, and nobody minded."
)
COPIED = SOURCE[49:111]  # 62 characters of the source, verbatim
EMAIL, PHONE = "jane.doe@example.com", "+44 20 7946 0018"
PLANTED = {
    "Tell me about the harbour.": f"Here is a fact. {EVAL_ITEM}",
    "Who do I contact?": f"Write to {EMAIL} or call {PHONE} today.",
    "Describe the garden.": f"In my words: {COPIED}.",
    "Say something kind.": "The woman thanked the woman next door for the bread.",
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("planted")
    return memorising_teacher(root, [(p + "\n", a) for p, a in PLANTED.items()])


def run(teacher: Path, root: Path, **checks: Any) -> SynthesizeResult:
    root.mkdir(parents=True, exist_ok=True)
    prompts = DatasetFile(write_jsonl(root / "p.jsonl", [{"text": p} for p in PLANTED]), "jsonl")
    evals = DatasetFile(write_jsonl(root / "e.jsonl", [{"text": EVAL_ITEM}, {"text": "x"}]),
                        "jsonl")  # fmt: skip
    source = DatasetFile(write_jsonl(root / "s.jsonl", [{"text": SOURCE}]), "jsonl")
    config = SynthesizeConfig(
        temperature=0.0,
        max_new_tokens=48,
        device="cpu",
        threads=1,
        checks=SynthesizeChecks(**checks),
    )
    inputs = SynthesizeInputs(teacher, prompts, eval=(evals,), source=source, teacher_id="mdl_t")
    return run_synthesize(config, inputs, make_paths(root))


def test_planted_eval_item_pii_and_copied_span_are_gone_with_counts(
    teacher: Path, tmp_path: Path
) -> None:
    result = run(teacher, tmp_path)
    text = result.dataset_path.read_text()
    answers = [json.loads(line)["messages"][1]["content"] for line in text.splitlines()]
    assert answers == [
        "Write to <EMAIL> or call <PHONE> today.",
        "The woman thanked the woman next door for the bread.",
    ]
    assert EVAL_ITEM not in text and EMAIL not in text and PHONE not in text
    assert COPIED not in text
    assert result.removed == {"contaminated": 1, "regurgitated": 1}
    privacy, contamination = result.checks["privacy"], result.checks["contamination"]
    assert privacy["pii_scrubbed"] == {"email": 1, "phone": 1}
    assert privacy["regurgitated"] == 1 and privacy["examples"] == [COPIED[:50]]
    assert contamination["removed"] == 1 and contamination["eval_documents"] == 2
    report = json.loads(result.report_path.read_text())
    assert report["checks"] == result.checks and report["removed"] == result.removed


def test_a_regurgitating_record_can_be_kept_and_only_flagged(teacher: Path, tmp_path: Path) -> None:
    result = run(teacher, tmp_path, drop_regurgitated=False)
    assert result.removed == {"contaminated": 1}
    assert result.checks["privacy"]["regurgitated"] == 1
    assert COPIED in result.dataset_path.read_text()


def test_the_span_index_flags_fifty_characters_and_not_forty_nine() -> None:
    index = SpanIndex.build([SOURCE], 50, lambda: False)
    assert index.chars == len(SOURCE) and not index.truncated
    assert index.first_copy("ab#" + SOURCE[10:60] + "#yz") == 3
    assert index.first_copy("ab#" + SOURCE[10:59] + "#yz") is None
    assert index.first_copy(SOURCE[10:60].upper()) is None  # verbatim means verbatim


def test_bias_figures_put_the_synthetic_text_next_to_the_prompts(
    teacher: Path, tmp_path: Path
) -> None:
    result = run(teacher, tmp_path)
    bias = result.checks["bias"]
    woman = bias["synthetic"]["groups"]["gender"]["woman"]
    assert woman["mentions"] == 2 and woman["texts"] == 1
    assert woman["per_10k_words"] == pytest.approx(1e4 * 2 / bias["synthetic"]["words"])
    assert "thanked" in woman["contexts"]
    assert bias["prompts"]["groups"]["gender"]["woman"]["mentions"] == 0
    assert bias["prompts"]["texts"] == 4 and bias["template_set"] == "bias_templates_v1.jsonl"


def test_group_terms_are_the_words_that_tell_a_pair_apart() -> None:
    terms = group_terms(load_templates()[1])
    assert set(terms) == {"gender", "religion", "nationality", "age", "disability"}
    assert {"man", "woman", "brother", "sister"} <= set(terms["gender"])
    assert {"Muslim", "Christian", "Jewish", "Protestant"} <= set(terms["religion"])
    assert "in a wheelchair" in terms["disability"]
    counts = TermCounts(terms)
    counts.add("My Sister met the man in a wheelchair; the woman-in-charge smiled.")
    figures = counts.figures()
    assert figures["gender"]["sister"]["mentions"] == 1
    assert figures["disability"]["in a wheelchair"]["mentions"] == 1
    assert figures["gender"]["woman"]["mentions"] == 1
