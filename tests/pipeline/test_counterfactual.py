"""Counterfactual data augmentation: the swaps themselves, and the ``prepare`` step that applies
them to a share of the records and reports what changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from pipeline.configs.base import ConfigError
from pipeline.configs.data import CounterfactualConfig, DedupConfig, PrepareConfig, QualityConfig
from pipeline.parts.datasets.formats import detect_format
from pipeline.parts.datasets.records import Record
from pipeline.parts.text.counterfactual import (
    NAMES_FILE,
    WORDS_FILE,
    SwapCounts,
    chosen,
    load_swapper,
    read_pairs,
    swap_record,
)
from pipeline.prepare.stage import PrepareInputs, PrepareResult, run_prepare
from pipeline.types import RunPaths


def _swap(text: str) -> tuple[str, SwapCounts]:
    counts = SwapCounts()
    return load_swapper().swap(text, counts), counts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("he said HE was sure. He left.", "she said SHE was sure. She left."),
        ("The man and the WOMAN met my brother.", "The woman and the MAN met my sister."),
        ("John's sister and the boys' uncles", "Mary's brother and the girls' aunts"),
        ("the men's room and he'd said she'll come", "the women's room and she'd said he'll come"),
        ("Ladies and gentlemen, the king!", "Gentlemen and ladies, the queen!"),
        ("her half-brother, a policeman", "his half-sister, a policewoman"),
        ("Mr Smith met Mrs Jones and Ms Lee.", "Mrs Smith met Mr Jones and Mr Lee."),
        ("JOHN and Mary; john is a word here", "MARY and John; john is a word here"),
        # Names that are words, and "MS" the disease, are left alone.
        ("Mark the date; Will may come. MS is a disease.", None),
        ("The mother of this hero", "The father of this heroine"),
        ("Theme, hersheys, others and manly mend", None),
    ],
)
def test_words_names_case_and_possessives_are_swapped(text: str, expected: str | None) -> None:
    assert _swap(text)[0] == (text if expected is None else expected)


@pytest.mark.parametrize(
    ("text", "expected", "reading"),
    [
        ("I read her book.", "I read his book.", "her→his"),
        ("It was her own idea.", "It was his own idea.", "her→his"),
        ("I told her that it rained.", "I told him that it rained.", "her→him"),
        ("We saw her leave.", "We saw him leave.", "her→him"),
        ("Give it to her.", "Give it to him.", "her→him"),
        ("Her car is red.", "His car is red.", "her→his"),
        ("His car is red.", "Her car is red.", "his→her"),
        ("The car is his.", "The car is hers.", "his→hers"),
        ("His and hers.", "Hers and his.", "his→hers"),
        ("I asked HIM.", "I asked HER.", None),
    ],
)
def test_ambiguous_pronouns_are_read_from_the_next_word(
    text: str, expected: str, reading: str | None
) -> None:
    swapped, counts = _swap(text)
    assert swapped == expected
    assert list(counts.ambiguous) == ([reading] if reading else [])


def test_unambiguous_swaps_undo_themselves_and_are_counted_by_pair() -> None:
    text = "She and her husband met John's uncle, the actress and two policemen."
    once, counts = _swap(text)
    assert once == "He and his wife met Mary's aunt, the actor and two policewomen."
    assert _swap(once)[0] == text
    assert counts.pairs == {
        "she→he": 1, "her→his": 1, "husband→wife": 1, "John→Mary": 1, "uncle→aunt": 1,
        "actress→actor": 1, "policemen→policewomen": 1,
    }  # fmt: skip
    assert counts.total() == 7


def test_names_can_be_left_out() -> None:
    counts = SwapCounts()
    assert load_swapper(names=False).swap("John met his sister.", counts) == (
        "John met her brother."
    )


def test_shipped_lists_carry_their_licence_and_pair_every_word() -> None:
    header = WORDS_FILE.read_text().split("\nhe\tshe", 1)[0]
    assert (
        "MIT License" in header and "Copyright (c) 2020 Natural Language Processing @UCLA" in header
    )
    assert "CC0" in NAMES_FILE.read_text().split("\nJohn", 1)[0]
    words, names = read_pairs(WORDS_FILE), read_pairs(NAMES_FILE)
    assert len(words) >= 130 and len(names) >= 100
    assert all(m.islower() and f.islower() and m != f for m, f in words)
    flat = [n for pair in names for n in pair]
    assert len(flat) == len(set(flat)) and all(n.istitle() for n in flat)


def test_chat_and_preference_records_swap_every_field_consistently() -> None:
    chat = Record(
        "chat", 1,
        messages=[
            {"role": "system", "content": "You help John."},
            {"role": "user", "content": "My brother John says he is a nurse."},
            {"role": "assistant", "content": "John is right: he is a nurse."},
        ],
    )  # fmt: skip
    swapped, counts = swap_record(chat, load_swapper())
    assert [m["role"] for m in swapped.messages or []] == ["system", "user", "assistant"]
    assert swapped.contents() == [
        "You help Mary.", "My sister Mary says she is a nurse.", "Mary is right: she is a nurse.",
    ]  # fmt: skip
    assert counts.pairs["John→Mary"] == 3
    pair = Record("preference", 2, prompt="Is he kind?", chosen="He is.", rejected="No, he isn't.")
    assert swap_record(pair, load_swapper())[0].to_json() == {
        "prompt": "Is she kind?", "chosen": "She is.", "rejected": "No, she isn't.",
    }  # fmt: skip
    plain = Record("text", 3, text="Nothing gendered here.")
    assert swap_record(plain, load_swapper()) == (plain, SwapCounts())


def test_the_choice_of_records_follows_the_fraction_and_seed() -> None:
    picks = [chosen(line, seed=0, fraction=0.3) for line in range(1, 10_001)]
    assert 0.28 < sum(picks) / len(picks) < 0.32
    assert picks == [chosen(line, 0, 0.3) for line in range(1, 10_001)]
    assert picks != [chosen(line, 1, 0.3) for line in range(1, 10_001)]
    assert not any(chosen(line, 0, 0.0) for line in range(1000))
    assert all(chosen(line, 0, 1.0) for line in range(1000))


@pytest.mark.parametrize(
    ("over", "field"), [({"mode": "swap"}, "mode"), ({"fraction": 1.5}, "fraction")]
)
def test_config_bounds_are_checked(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        CounterfactualConfig(**over)
    assert err.value.field == field


def test_the_api_reads_the_config_with_its_docs() -> None:
    adapter = pydantic.TypeAdapter(PrepareConfig)
    parsed = adapter.validate_python({"counterfactual": {"enabled": True, "mode": "add"}})
    assert parsed.counterfactual == CounterfactualConfig(enabled=True, mode="add")
    with pytest.raises(pydantic.ValidationError):
        adapter.validate_python({"counterfactual": {"mode": "both"}})
    schema = json.dumps(adapter.json_schema())
    assert "counterfactual data substitution" in schema and "Share of records chosen" in schema


STORY = (
    "{name} was a {job}. Every morning {pronoun} walked to work past the old mill, and {pronoun} "
    "liked the quiet of the road. Colleagues said {pronoun} was careful and fair. On weekends "
    "{pronoun} visited {possessive} {relative} and cooked dinner for the whole family."
)


def _corpus(path: Path, n: int) -> list[dict[str, Any]]:
    """Half the stories about men, half about women, and some about nobody in particular."""
    records = []
    for i in range(n):
        if i % 5 == 4:
            text = (
                f"Record {i}: the mill by the river turned for {i} years without a stop. It "
                "ground grain for the village, and the wheel sang in spring when the water rose."
            )
            records.append({"text": text})
            continue
        man = i % 2 == 0
        records.append(
            {
                "text": f"Story {i}. "
                + STORY.format(
                    name="John" if man else "Mary",
                    job="nurse" if man else "engineer",
                    pronoun="he" if man else "she",
                    possessive="his" if man else "her",
                    relative="mother" if man else "father",
                )
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _prepare(tmp_path: Path, name: str, **cda: Any) -> PrepareResult:
    source = tmp_path / "source.jsonl"
    if not source.exists():
        _corpus(source, 200)
    paths = RunPaths(work_dir=tmp_path / name / "work", output_dir=tmp_path / name / "out")
    paths.work_dir.mkdir(parents=True)
    paths.output_dir.mkdir(parents=True)
    config = PrepareConfig(
        quality=QualityConfig(min_words=10),
        dedup=DedupConfig(near=False),
        validation_fraction=0.2,
        processes=1,
        counterfactual=CounterfactualConfig(enabled=True, **cda),
    )
    return run_prepare(config, PrepareInputs(detect_format(source, {})), paths)


def _lines(path: Path | None) -> list[str]:
    assert path is not None
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def test_add_mode_writes_each_swapped_copy_after_its_original_in_the_same_split(
    tmp_path: Path,
) -> None:
    result = _prepare(tmp_path, "add", mode="add", fraction=1.0)
    cf = result.report["steps"]["counterfactual"]
    assert (cf["records_chosen"], cf["records_augmented"], cf["records_added"]) == (200, 160, 160)
    assert cf["records_without_gendered_words"] == 40 and cf["records_replaced"] == 0
    assert result.records_out == 360
    assert cf["swaps_by_pair"]["John→Mary"] == 80 and cf["swaps_by_pair"]["he→she"] == 320
    assert cf["ambiguous_resolved"] == {"her→his": 80, "his→her": 80}
    assert cf["words_swapped"] == sum(cf["swaps_by_pair"].values()) == 160 * 7
    for split in (_lines(result.train_path), _lines(result.validation_path)):
        stories = [t for t in split if t.startswith("Story")]
        originals, copies = stories[0::2], stories[1::2]
        assert len(originals) == len(copies) > 0
        assert all(_swap(o)[0] == c for o, c in zip(originals, copies, strict=True))
    example = cf["examples"][0]
    assert example["after"][:150] == _swap(example["before"][:180])[0][:150]


def test_replace_mode_swaps_a_share_and_balances_the_corpus(tmp_path: Path) -> None:
    result = _prepare(tmp_path, "replace", mode="replace", fraction=0.5, seed=3)
    cf = result.report["steps"]["counterfactual"]
    assert result.records_out == 200 and cf["records_added"] == 0
    assert 60 < cf["records_chosen"] < 140
    assert cf["records_replaced"] == cf["records_augmented"] < cf["records_chosen"]
    texts = _lines(result.train_path) + _lines(result.validation_path)
    nurses = [t for t in texts if "was a nurse" in t]
    men = sum(t.count(" he ") > 0 for t in nurses)
    assert 0.3 < men / len(nurses) < 0.7  # was 1.0: every nurse was a man
    again = _prepare(tmp_path, "again", mode="replace", fraction=0.5, seed=3)
    assert again.train_path.read_bytes() == result.train_path.read_bytes()


def test_the_step_is_off_by_default_and_reported_as_such(tmp_path: Path) -> None:
    source = tmp_path / "source.jsonl"
    records = _corpus(source, 20)
    paths = RunPaths(work_dir=tmp_path / "w", output_dir=tmp_path / "o")
    paths.work_dir.mkdir()
    paths.output_dir.mkdir()
    config = PrepareConfig(
        quality=QualityConfig(min_words=10), dedup=DedupConfig(near=False), processes=1
    )
    result = run_prepare(config, PrepareInputs(detect_format(source, {})), paths)
    assert result.report["steps"]["counterfactual"]["enabled"] is False
    assert result.report["steps"]["counterfactual"]["records_chosen"] == 0
    assert _lines(result.train_path) == [r["text"] for r in records]
