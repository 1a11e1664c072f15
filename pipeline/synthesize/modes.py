"""How a teacher writes records in each ``synthesize`` mode: answers to prompts (distillation),
new instructions grown from seeds (Self-Instruct, Wang et al. 2023) and ranked answer pairs.

Every generation is one seeded sample of a runtime (:mod:`pipeline.parts.runtimes`) or of an
external endpoint (:mod:`pipeline.synthesize.remote`), the seed
derived from the job's seed and the generation's place (:func:`seed_for`) and recorded in the
record's provenance, so any record can be regenerated alone. ``should_stop`` is asked before
every generation.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rouge_score import rouge_scorer, tokenizers

from pipeline.configs.evaluate import SampleOptions
from pipeline.configs.synthesize import SynthesizeConfig
from pipeline.parts.chat import render
from pipeline.parts.datasets.formats import iter_records
from pipeline.parts.datasets.records import Record
from pipeline.parts.runtimes.base import Runtime
from pipeline.synthesize.remote import RemoteTeacher
from pipeline.types import DatasetFile, Hooks, PipelineError, Progress, StageCancelled

INSTRUCTION_HEADER = "Come up with a new task, different from these.\n"
MIN_INSTRUCTION_WORDS, MAX_INSTRUCTION_WORDS = 3, 150  # the Self-Instruct paper's filter
MAX_PROMPT_CHARS = 8000  # longer prompts are skipped
PROGRESS_EVERY_S = 1.0  # generations can take milliseconds: report at most about once a second


@dataclass(frozen=True)
class Prompt:
    index: int
    """The record's line (or row) in the prompt dataset."""
    text: str
    reference: str | None = None
    """The record's own answer (assistant turn, completion or chosen), when it has one."""


@dataclass
class Synthetic:
    """One record before the checks: the prompt, the teacher's answer(s), where they came from."""

    prompt: str
    answers: list[str]
    provenance: dict[str, Any]
    prompt_generated: bool = False
    """Self-Instruct: the teacher wrote the instruction too."""

    def texts(self) -> tuple[list[str], list[bool]]:
        return [self.prompt, *self.answers], [self.prompt_generated] + [True] * len(self.answers)

    def to_json(self, texts: list[str]) -> dict[str, Any]:
        """The record fine-tuning reads (chat, or DPO's pair), with its provenance."""
        if len(texts) == 3:
            prompt, chosen, rejected = texts
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
                    "provenance": self.provenance}  # fmt: skip
        user, answer = texts
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return {"messages": messages, "provenance": self.provenance}


def read_prompts(file: DatasetFile, limit: int, skipped: Counter[str]) -> list[Prompt]:
    """The first ``limit`` prompts: a chat record's last user turn (the turn after it is the
    record's own answer), a prompt/completion's or preference pair's prompt, a text record's
    text. A prompt longer than
    ``MAX_PROMPT_CHARS`` is skipped and counted (cut short, it would make a record that answers
    a question nobody asked).

    Raises:
        PipelineError: ``dataset.empty`` when the dataset has no prompt.
    """
    prompts: list[Prompt] = []
    for record in iter_records(file):
        prompt = _prompt(record)
        if prompt is None:
            continue
        if len(prompt.text) > MAX_PROMPT_CHARS:
            skipped["long_prompt"] += 1
            continue
        prompts.append(prompt)
        if len(prompts) == limit:
            break
    if not prompts:
        raise PipelineError("dataset.empty", "the prompt dataset has no usable prompts")
    return prompts


def _prompt(record: Record) -> Prompt | None:
    text, reference = record.prompt, record.completion or record.chosen
    if record.kind == "chat":
        messages = record.messages or []
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        text = messages[users[-1]]["content"] if users else None
        after = [m["content"] for m in messages[users[-1] + 1 :]] if users else []
        reference = after[0] if after else None
    elif record.kind == "text":
        text = record.text
    return Prompt(record.line, text.strip(), reference) if text and text.strip() else None


def seed_for(seed: int, *place: object) -> int:
    """A 31-bit seed for one generation: the same job seed and place give the same seed."""
    digest = hashlib.blake2b(repr((seed, *place)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class Teacher:
    """The teacher, asked one seeded question at a time: a runtime (a registry model) or an
    external endpoint (``remote``)."""

    runtime: Runtime | None
    config: SynthesizeConfig
    hooks: Hooks
    total: int | None = None
    remote: RemoteTeacher | None = None
    generations: int = 0
    tokens: int = 0
    closed: bool = False
    _reported: float = float("-inf")

    def close(self) -> None:
        """Free the model (once; the judge may need the memory before the stage ends)."""
        if not self.closed:
            self.closed = True
            if self.runtime is not None:
                self.runtime.close()
            if self.remote is not None:
                self.remote.close()

    def ask(self, text: str, seed: int, *, raw: bool = False) -> str:
        """The teacher's continuation of ``text`` (already templated), stripped. ``raw``: a
        continuation rather than an answer (an endpoint is then asked for a text completion).

        Raises:
            StageCancelled: ``should_stop`` answered True before the generation.
            PipelineError: ``synthesize.endpoint_*`` when an endpoint fails.
        """
        if self.hooks.should_stop():
            raise StageCancelled()
        if self.remote is not None:
            completion, tokens = self.remote.generate(text, seed, raw=raw)
        else:
            assert self.runtime is not None
            cfg = self.config
            options = SampleOptions(prompts=(text,), seeds=(seed,),
                                    max_new_tokens=cfg.max_new_tokens,
                                    temperature=cfg.temperature, top_p=cfg.top_p)  # fmt: skip
            sample = self.runtime.samples(options)[0]
            completion, tokens = str(sample["completion"]), int(sample["tokens"])
        self.generations += 1
        self.tokens += tokens
        now = time.monotonic()
        if now - self._reported >= PROGRESS_EVERY_S or self.generations == self.total:
            self._reported = now
            metrics = {"tokens": float(self.tokens)}
            progress = Progress(step=self.generations, total=self.total, metrics=metrics)
            self.hooks.on_progress(progress)
        return completion.strip()

    def answer(self, prompt: str, seed: int) -> str:
        return self.ask(self.question(prompt), seed)

    def question(self, prompt: str) -> str:
        """What the teacher is asked for ``prompt``: the prompt template filled, then put in
        the teacher's chat template when the config asks for it.

        Raises:
            PipelineError: ``synthesize.no_chat_template`` when the teacher has none.
        """
        text = self.config.prompt_template.replace("{prompt}", prompt)
        if not self.config.chat_template:
            return text
        tokenizer = getattr(self.runtime, "tokenizer", None)
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise PipelineError(
                "synthesize.no_chat_template",
                "chat_template is on but the teacher has no chat template (a GGUF, or a "
                "tokenizer without one); use prompt_template instead",
            )
        rendered = render(
            tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True
        )
        bos = tokenizer.bos_token
        # The runtime starts every prompt from BOS itself: do not give it a second one.
        return rendered[len(bos) :] if bos and rendered.startswith(bos) else rendered


def distill(
    teacher: Teacher, prompts: Sequence[Prompt], base: dict[str, Any], skipped: Counter[str]
) -> Iterator[Synthetic]:
    """One answer per prompt."""
    for p in prompts:
        seed = seed_for(teacher.config.seed, "answer", p.index)
        answer = teacher.answer(p.text, seed)
        if not answer:
            skipped["empty_answer"] += 1
            continue
        provenance = {**base, "source": {**base["source"], "records": [p.index]}, "seed": seed}
        yield Synthetic(p.text, [answer], provenance)


@dataclass
class Novelty:
    """ROUGE-L (rouge-score's, as the Self-Instruct code computes it) of a candidate against
    every instruction so far; a bag-of-words bound (F1 of the LCS is ``2·lcs/(m+n)`` and the LCS
    is at most the shared words) skips the exact computation for most pairs."""

    threshold: float
    pool: list[tuple[str, Counter[str], int]] = field(default_factory=list)
    _scorer: Any = field(default_factory=lambda: rouge_scorer.RougeScorer(["rougeL"]))
    _tokenizer: Any = field(default_factory=tokenizers.DefaultTokenizer)

    def add(self, text: str) -> None:
        tokens = self._tokenizer.tokenize(text)
        self.pool.append((text, Counter(tokens), len(tokens)))

    def closest(self, text: str) -> float:
        tokens = self._tokenizer.tokenize(text)
        bag, best = Counter(tokens), 0.0
        for other, other_bag, length in self.pool:
            bound = 2 * sum((bag & other_bag).values()) / max(1, len(tokens) + length)
            if bound >= self.threshold and bound > best:
                best = max(best, float(self._scorer.score(other, text)["rougeL"].fmeasure))
        return best


def instruction_request(examples: Sequence[str]) -> str:
    """What the teacher continues to write a new instruction: numbered examples, then the next
    number."""
    lines = "".join(f"Task {i}: {text}\n" for i, text in enumerate(examples, start=1))
    return f"{INSTRUCTION_HEADER}{lines}Task {len(examples) + 1}:"


def _first_line(completion: str) -> str:
    for line in completion.splitlines():
        if line.strip():
            return line.strip()
    return ""


def self_instruct(
    teacher: Teacher, seeds: Sequence[Prompt], base: dict[str, Any], skipped: Counter[str]
) -> Iterator[Synthetic]:
    """Grow instructions from ``few_shot`` sampled seeds until ``num_instructions`` are kept or
    the attempts run out; keep one only when its ROUGE-L to every instruction so far is below
    the threshold and it has 3-150 words. Examples are drawn from the seeds alone, so the
    teacher's own mistakes do not compound. Each kept instruction is then answered."""
    cfg = teacher.config
    novelty = Novelty(cfg.rouge_threshold)
    for s in seeds:
        novelty.add(s.text)
    kept: list[tuple[str, list[int], int, float]] = []
    for attempt in range(cfg.attempts):
        if len(kept) >= cfg.num_instructions:
            break
        seed = seed_for(cfg.seed, "instruction", attempt)
        shown = random.Random(seed).sample(list(seeds), min(cfg.few_shot, len(seeds)))
        request = instruction_request([s.text for s in shown])
        text = _first_line(teacher.ask(request, seed, raw=True))
        if not MIN_INSTRUCTION_WORDS <= len(text.split()) <= MAX_INSTRUCTION_WORDS:
            skipped["unfit_instruction"] += 1
            continue
        score = novelty.closest(text)
        if score >= cfg.rouge_threshold:
            skipped["similar_instruction"] += 1
            continue
        novelty.add(text)
        kept.append((text, [s.index for s in shown], seed, score))
    for k, (text, shown_ids, instruction_seed, score) in enumerate(kept):
        seed = seed_for(cfg.seed, "answer", k)
        answer = teacher.answer(text, seed)
        if not answer:
            skipped["empty_answer"] += 1
            continue
        provenance = {**base, "source": {**base["source"], "records": shown_ids},
                      "instruction_seed": instruction_seed, "rouge_l_max": round(score, 4),
                      "seed": seed}  # fmt: skip
        yield Synthetic(text, [answer], provenance, prompt_generated=True)


def sample_answers(teacher: Teacher, prompts: Sequence[Prompt]) -> list[list[tuple[int, str]]]:
    """``samples`` seeded answers per prompt (distinct and non-empty), as (seed, answer)."""
    out = []
    for p in prompts:
        answers: dict[str, int] = {}
        for j in range(teacher.config.samples):
            seed = seed_for(teacher.config.seed, "sample", p.index, j)
            answers.setdefault(teacher.answer(p.text, seed), seed)
        out.append([(seed, a) for a, seed in answers.items() if a])
    return out
