"""The score grader of task evaluation (as OpenAI's score-model grader): a judge rates each
generated answer 1 to 10 against the rubric (``TaskOptions.grader_rubric``) and the references.

* A registry model answers by log-likelihood, with no sampling and no parsing: each score ``n``
  is the continuation ``" n\\n"`` of the filled-in rubric, and the grade is the likeliest one
  (the argmax, not an expectation over the digits). The newline ends the number, so "10" is
  not scored as a longer, hence always less likely, "1".
* An endpoint answers a chat completion at temperature 0; the grade is the first integer of its
  reply when it is 1 to 10. A reply without one (or with another number first) is a missing
  grade: the item counts in no figure, and ``grader_missing`` says how many there were.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.configs.tasks import TaskOptions
from pipeline.parts.endpoints import ChatEndpoint, Endpoint
from pipeline.parts.runtimes import load_runtime
from pipeline.parts.runtimes.base import Runtime

SCORES = tuple(range(1, 11))
_INTEGER = re.compile(r"\d+")
_CHUNK = 8  # prompts scored per call (each: ten candidate continuations)


@dataclass(frozen=True)
class GraderInputs:
    """Where the grader is: a registry model's folder or an endpoint (one of them)."""

    model_dir: Path | None = None
    endpoint: Endpoint | None = None


def read_score(reply: str) -> int | None:
    """The first integer of an endpoint's reply, when it is a score (1 to 10)."""
    found = _INTEGER.search(reply)
    if found is None:
        return None
    value = int(found.group())
    return value if 1 <= value <= 10 else None


class Grader:
    """Grades filled-in rubrics; :meth:`close` frees the model or the HTTP client."""

    def __init__(
        self, inputs: GraderInputs, options: TaskOptions, *, device: torch.device, threads: int
    ) -> None:
        self.runtime: Runtime | None = None
        self.chat: ChatEndpoint | None = None
        if inputs.endpoint is not None:
            self.chat = ChatEndpoint(
                inputs.endpoint, role="grader", timeout_s=options.grader_timeout_s
            )
        elif inputs.model_dir is not None:
            self.runtime = load_runtime(inputs.model_dir, device=device, threads=threads)
        else:
            raise ValueError("a grader needs a model folder or an endpoint")

    def grade(self, prompts: Sequence[str]) -> list[int | None]:
        if self.chat is not None:
            return [read_score(self.chat.ask(p, max_tokens=8)) for p in prompts]
        assert self.runtime is not None
        grades: list[int | None] = []
        for start in range(0, len(prompts), _CHUNK):
            grades += _likeliest(self.runtime, prompts[start : start + _CHUNK])
        return grades

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.close()
        if self.chat is not None:
            self.chat.close()


def _likeliest(runtime: Runtime, prompts: Sequence[str]) -> list[int | None]:
    candidates = [runtime.encode(f" {n}\n") for n in SCORES]
    seqs, scored = [], []
    for prompt in prompts:
        context = runtime.lead_ids() + runtime.encode(prompt) or [runtime.prefix]
        for cand in candidates:
            seqs.append(context + cand)
            scored.append(len(cand))
    nll = runtime.scorer.continuation_nll(seqs, scored)
    grades: list[int | None] = []
    for i in range(len(prompts)):
        row = nll[i * len(SCORES) : (i + 1) * len(SCORES)]
        grades.append(SCORES[row.index(min(row))])  # ties: the lower score
    return grades
