"""``run_prepare`` on a generated corpus whose duplicates, near-duplicates, PII, junk are known."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.configs.data import PrepareConfig
from pipeline.parts.datasets.formats import detect_format
from pipeline.prepare.stage import PrepareInputs, PrepareResult, run_prepare
from pipeline.types import (
    DatasetFile,
    Hooks,
    PipelineError,
    Progress,
    RunPaths,
    StageCancelled,
)

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi", "go", "pe", "zu"]


@dataclass
class Corpus:
    path: Path
    texts: list[str] = field(default_factory=list)
    exact: int = 0
    near: int = 0
    pii: int = 0
    junk: int = 0
    invalid: int = 0

    @property
    def unique(self) -> int:
        return len(self.texts) - self.exact - self.near - self.junk


def _words(rng: random.Random, n: int) -> list[str]:
    vocab = ["".join(rng.choices(SYLLABLES, k=rng.randint(2, 4))) for _ in range(3000)]
    return [rng.choice(vocab) for _ in range(n)]


def _doc(rng: random.Random, n: int = 220) -> str:
    words = _words(rng, n)
    for i in range(12, n, 12):
        words[i - 1] += "."
    return " ".join(words)


def _make_corpus(tmp_path: Path, seed: int = 3) -> Corpus:
    rng = random.Random(seed)
    corpus = Corpus(tmp_path / "source.jsonl")
    base = [_doc(rng) for _ in range(60)]
    for i in range(5):
        base[40 + i] += f" Write to person{i}@example.com soon."
        corpus.pii += 1
    texts = list(base)
    for i in range(10):
        texts.append(base[i])
        corpus.exact += 1
    for i in range(10, 18):
        words = base[i].split(" ")
        for _ in range(rng.randint(1, 2)):
            words[rng.randrange(len(words))] = "zzzyx"
        texts.append(" ".join(words))
        corpus.near += 1
    junk = ["tiny text", "#### " * 80, "\n".join(["the same line again and again"] * 30),
            "1234 5678 9999 0000 " * 30, ("ka lo " * 150).strip()]  # fmt: skip
    texts += junk
    corpus.junk = len(junk)
    rng.shuffle(texts)
    lines = [json.dumps({"text": t}) for t in texts]
    lines.insert(7, "{not json")
    corpus.invalid = 1
    corpus.path.write_text("\n".join(lines) + "\n")
    corpus.texts = texts
    return corpus


def _paths(tmp_path: Path, name: str = "run") -> RunPaths:
    paths = RunPaths(work_dir=tmp_path / name / "work", output_dir=tmp_path / name / "out")
    paths.work_dir.mkdir(parents=True)
    paths.output_dir.mkdir(parents=True)
    return paths


def _run(tmp_path: Path, source: DatasetFile, name: str = "run", **overrides: Any) -> PrepareResult:
    eval_file = overrides.pop("eval_file", None)
    config = PrepareConfig(processes=overrides.pop("processes", 1), **overrides)
    return run_prepare(config, PrepareInputs(source, eval_file), _paths(tmp_path, name))


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return _make_corpus(tmp_path)


def test_report_counts_match_what_was_planted(tmp_path: Path, corpus: Corpus) -> None:
    before = hashlib.sha256(corpus.path.read_bytes()).hexdigest()
    result = _run(tmp_path, detect_format(corpus.path, {}))
    steps = result.report["steps"]
    assert hashlib.sha256(corpus.path.read_bytes()).hexdigest() == before
    assert result.report["invalid_records"]["invalid"]["count"] == corpus.invalid
    assert sum(r["count"] for r in steps["quality"]["removed"].values()) == corpus.junk
    assert steps["exact_dedup"]["removed"] == corpus.exact
    assert steps["near_dedup"]["removed"] == corpus.near
    assert steps["pii"]["found"] == {"email": corpus.pii}
    assert result.records_in == len(corpus.texts)
    assert result.records_out == corpus.unique
    out = [json.loads(line) for line in result.train_path.read_text().splitlines()]
    assert len(out) == corpus.unique
    assert sum("<EMAIL>" in r["text"] for r in out) == corpus.pii
    assert not any("@example.com" in r["text"] for r in out)
    assert json.loads((result.train_path.parent / "report.json").read_text()) == result.report
    print(json.dumps({k: result.report[k] for k in ("diversity", "timings_s")}, indent=1))


def test_examples_are_capped_per_reason(tmp_path: Path, corpus: Corpus) -> None:
    result = _run(tmp_path, detect_format(corpus.path, {}), examples_per_reason=2)
    steps = result.report["steps"]
    assert len(steps["exact_dedup"]["examples"]) == 2
    assert all(len(e["text"]) <= 200 for e in steps["near_dedup"]["examples"])
    assert all("@example.com" not in e["text"] for e in steps["pii"]["examples"])


def test_split_is_deterministic_and_identical_with_worker_processes(
    tmp_path: Path, corpus: Corpus
) -> None:
    source = detect_format(corpus.path, {})
    one = _run(tmp_path, source, "one", validation_fraction=0.25)
    two = _run(tmp_path, source, "two", validation_fraction=0.25, processes=2)
    assert one.validation_path is not None and two.validation_path is not None
    for a, b in ((one.train_path, two.train_path), (one.validation_path, two.validation_path)):
        assert a.read_bytes() == b.read_bytes()
    valid = len(one.validation_path.read_text().splitlines())
    assert 0 < valid < one.records_out
    assert one.report["steps"]["split"] == {"train": one.records_out - valid, "validation": valid}


def test_contamination_share_and_dropping(tmp_path: Path, corpus: Corpus) -> None:
    rng = random.Random(9)
    kept = [t for t in corpus.texts if corpus.texts.count(t) == 1 and len(t.split()) > 200][:4]
    eval_docs = [" ".join(t.split()[50:80]) for t in kept] + [_doc(rng, 60) for _ in range(6)]
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in eval_docs))
    source, eval_file = detect_format(corpus.path, {}), detect_format(eval_path, {})
    flagged = _run(tmp_path, source, "flag", eval_file=eval_file)
    dropped = _run(tmp_path, source, "drop", eval_file=eval_file, drop_contaminated=True)
    report = flagged.report["steps"]["contamination"]
    assert (report["eval_docs"], report["eval_docs_contaminated"]) == (10, 4)
    assert report["eval_contaminated_share"] == pytest.approx(0.4)
    assert report["train_docs_flagged"] == 4
    assert dropped.records_out == flagged.records_out - 4


def test_chat_datasets_keep_their_shape_and_scrub_each_message(tmp_path: Path) -> None:
    rng = random.Random(1)
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Hi, mail me at u{i}@example.org. " + _doc(rng, 20)},
                {"role": "assistant", "content": "Sure. " + _doc(rng, 30)},
            ]
        }
        for i in range(5)
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    result = _run(tmp_path, detect_format(path, {}))
    out = [json.loads(line) for line in result.train_path.read_text().splitlines()]
    assert (result.kind, len(out)) == ("chat", 5)
    assert [m["role"] for m in out[0]["messages"]] == ["user", "assistant"]
    assert out[0]["messages"][0]["content"].startswith("Hi, mail me at <EMAIL>.")


def test_normalisation_repairs_mojibake_and_control_characters(tmp_path: Path) -> None:
    rng = random.Random(2)
    texts = ["CafÃ© " + _doc(rng, 80), "Zero\u200bwidth " + _doc(rng, 80), _doc(rng, 80) + "  \r\n"]
    path = tmp_path / "n.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    result = _run(tmp_path, detect_format(path, {}))
    modified = result.report["steps"]["normalise"]["modified"]
    assert {k: v["count"] for k, v in modified.items()} == {
        "control_chars": 1,
        "mojibake": 1,
        "whitespace": 1,
    }
    out = [json.loads(line)["text"] for line in result.train_path.read_text().splitlines()]
    assert out[0].startswith("Café ") and out[1].startswith("Zerowidth ")


def test_progress_is_reported_with_throughput(
    tmp_path: Path, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(range(0, 100_000, 5))
    monkeypatch.setattr("pipeline.prepare.state.time.monotonic", lambda: next(clock))
    seen: list[Progress] = []
    inputs = PrepareInputs(detect_format(corpus.path, {}))
    run_prepare(
        PrepareConfig(processes=1), inputs, _paths(tmp_path), Hooks(on_progress=seen.append)
    )
    assert seen and seen[-1].step > 0
    assert {"docs_per_s", "mb_per_s", "records_out"} <= set(seen[-1].metrics)


def test_cancellation_raises_and_leaves_no_outputs(
    tmp_path: Path, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(range(0, 100_000, 5))
    monkeypatch.setattr("pipeline.prepare.state.time.monotonic", lambda: next(clock))
    paths = _paths(tmp_path)
    with pytest.raises(StageCancelled):
        inputs = PrepareInputs(detect_format(corpus.path, {}))
        run_prepare(PrepareConfig(processes=1), inputs, paths, Hooks(should_stop=lambda: True))
    assert list(paths.output_dir.iterdir()) == []


def test_nothing_left_is_a_pipeline_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.jsonl"
    path.write_text(json.dumps({"text": "too short"}) + "\n")
    with pytest.raises(PipelineError) as err:
        _run(tmp_path, detect_format(path, {}))
    assert err.value.code == "prepare.nothing_left"
