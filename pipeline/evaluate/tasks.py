"""Task evaluation: a dataset of the user's items, scored the way the tools people compare models
with score them.

* **Multiple choice** (``{"prompt", "choices", "answer"}``) follows lm-evaluation-harness: the
  context is the few-shot examples (``prompt + target_delimiter + right choice``, joined by
  ``fewshot_delimiter``) then the prompt; each choice is the continuation
  ``target_delimiter + choice``. Trailing spaces of the context move to the continuation, the
  pair is encoded whole and the context's own encoding's length splits it (so the
  continuation's tokens are those the model would produce), exactly as its ``_encode_pair``
  does. ``acc`` is the argmax of the summed log-likelihoods; ``acc_norm`` divides each by the
  choice's length in characters (lm-eval's ``len(choice)``; bytes for ASCII text).
* **Generation** (``{"prompt" | "messages", "reference" | "references"}``): a greedy answer cut
  at the first stop string, then exact match, token F1, ROUGE-L, chrF and BLEU
  (:mod:`~pipeline.evaluate.metrics`); with labels (options or record), accuracy, macro-F1 and
  a confusion matrix instead. With a grader, each answer is also rated 1–10
  (``grader_score``).

Every figure comes with a bootstrap 95% interval over items; each item's output and scores are
written to ``task_examples.jsonl``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.configs.evaluate import SampleOptions
from pipeline.configs.tasks import TaskOptions
from pipeline.evaluate.metrics import (
    TextMetrics,
    exact_match,
    label_figures,
    mean_figure,
    read_label,
    token_f1,
)
from pipeline.parts.examples import read_objects
from pipeline.parts.runtimes.base import Runtime
from pipeline.types import DatasetFile, Hooks, PipelineError, Progress, StageCancelled

_ITEMS_PER_STEP = 32

Grade = Callable[[Sequence[str]], list[int | None]]
"""Filled-in grader rubrics → a score 1–10 each, or None (:mod:`~pipeline.evaluate.grader`)."""


@dataclass(frozen=True)
class TaskItem:
    index: int
    prompt: str
    messages: list[dict[str, Any]] | None = None
    choices: tuple[str, ...] = ()
    answer: int = 0
    references: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()


def _invalid(number: int, why: str) -> PipelineError:
    return PipelineError("task.invalid_record", f"record {number}: {why}")


def _item(obj: dict[str, Any], number: int, multiple_choice: bool) -> TaskItem:
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if multiple_choice:
        choices, answer = obj.get("choices"), obj.get("answer")
        if not isinstance(prompt, str):
            raise _invalid(number, "a multiple-choice record needs a string 'prompt'")
        if not (
            isinstance(choices, list)
            and len(choices) >= 2
            and all(isinstance(c, str) and c for c in choices)
        ):
            raise _invalid(number, "'choices' must list at least two non-empty strings")
        if not (isinstance(answer, int) and 0 <= answer < len(choices)):
            raise _invalid(number, "'answer' must be the index of the right choice")
        return TaskItem(number, prompt, choices=tuple(choices), answer=answer)
    if not isinstance(prompt, str) and not (isinstance(messages, list) and messages):
        raise _invalid(number, "a generation record needs 'prompt' or 'messages'")
    refs = obj.get("references", [obj["reference"]] if "reference" in obj else None)
    if not (isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs)):
        raise _invalid(number, "give a string 'reference' or a list of 'references'")
    labels = obj.get("labels", [])
    if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise _invalid(number, "'labels' must be a list of strings")
    if isinstance(messages, list) and not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
    ):
        raise _invalid(number, "each message needs a string 'content'")
    text = prompt if isinstance(prompt, str) else ""
    chat = messages if isinstance(messages, list) and not isinstance(prompt, str) else None
    return TaskItem(number, text, chat, references=tuple(refs), labels=tuple(labels))


def read_items(file: DatasetFile, options: TaskOptions) -> tuple[str, list[TaskItem]]:
    """(``multiple_choice`` | ``generation``, the items).

    Raises:
        PipelineError: ``task.invalid_record`` naming the record, ``dataset.empty``.
    """
    items: list[TaskItem] = []
    kind = options.kind
    for number, obj in enumerate(read_objects(file), start=1):
        if kind == "auto":
            kind = "multiple_choice" if "choices" in obj else "generation"
        items.append(_item(obj, number, kind == "multiple_choice"))
        if options.max_items is not None and len(items) >= options.max_items:
            break
    if not items:
        raise PipelineError("dataset.empty", "the task dataset has no records")
    if options.num_fewshot and len(items) <= options.num_fewshot:
        raise PipelineError("task.fewshot", "num_fewshot needs more items than it draws")
    return kind, items


def fewshot_context(item: TaskItem, items: Sequence[TaskItem], options: TaskOptions) -> str:
    """lm-eval's context: solved examples (other items, a seeded draw), then the prompt."""
    if not options.num_fewshot:
        return item.prompt
    rng = random.Random(f"{options.fewshot_seed}:{item.index}")
    pool = [x for x in items if x.index != item.index]
    shots = rng.sample(pool, options.num_fewshot)
    solved = [x.prompt + options.target_delimiter + x.choices[x.answer] for x in shots]
    return options.fewshot_delimiter.join([*solved, item.prompt])


def encode_pair(runtime: Runtime, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's ``_encode_pair`` (and its empty-context rule) on any runtime."""
    if not context:
        return [runtime.prefix], runtime.encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    lead = runtime.lead_ids()
    whole = lead + runtime.encode(context + continuation)
    head = lead + runtime.encode(context)
    cont = whole[len(head) :]
    if not cont:  # an odd merge swallowed the continuation: score its own tokens
        cont = runtime.encode(continuation)
    return head, cont


def loglikelihoods(runtime: Runtime, requests: Sequence[tuple[str, str]]) -> list[float]:
    """Summed log-probability of each continuation given its context (lm-eval's
    ``loglikelihood``)."""
    seqs, scored = [], []
    for context, continuation in requests:
        head, cont = encode_pair(runtime, context, continuation)
        seqs.append([*head, *cont])
        scored.append(len(cont))
    return [-x for x in runtime.scorer.continuation_nll(seqs, scored)]


def _multiple_choice(
    runtime: Runtime, items: list[TaskItem], options: TaskOptions, hooks: Hooks
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    for b in range(0, len(items), _ITEMS_PER_STEP):
        _check_stop(hooks)
        chunk = items[b : b + _ITEMS_PER_STEP]
        contexts = [fewshot_context(item, items, options) for item in chunk]
        requests = [
            (ctx, options.target_delimiter + choice)
            for ctx, item in zip(contexts, chunk, strict=True)
            for choice in item.choices
        ]
        lls = iter(loglikelihoods(runtime, requests))
        for ctx, item in zip(contexts, chunk, strict=True):
            ll = [next(lls) for _ in item.choices]
            norm = [x / len(c) for x, c in zip(ll, item.choices, strict=True)]
            pred, pred_norm = ll.index(max(ll)), norm.index(max(norm))
            wrong = max(x for i, x in enumerate(ll) if i != item.answer)
            rows.append(
                {
                    "index": item.index,
                    "prompt": item.prompt,
                    "context": ctx,
                    "choices": list(item.choices),
                    "answer": item.answer,
                    "loglikelihoods": ll,
                    "pred": pred,
                    "pred_norm": pred_norm,
                    "acc": float(pred == item.answer),
                    "acc_norm": float(pred_norm == item.answer),
                    "margin": ll[item.answer] - wrong,  # < 0: a wrong choice was likelier
                }
            )
        _progress(hooks, len(rows), len(items))
    boot = {"samples": options.bootstrap_samples, "seed": options.seed}
    return rows, {m: mean_figure([r[m] for r in rows], **boot) for m in ("acc", "acc_norm")}


def _generation(
    runtime: Runtime, items: list[TaskItem], options: TaskOptions, hooks: Hooks
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any] | None]:
    greedy = SampleOptions(max_new_tokens=options.max_new_tokens, temperature=0.0)
    labels = list(dict.fromkeys([*options.labels, *(x for i in items for x in i.labels)]))
    text = TextMetrics()
    rows: list[dict[str, Any]] = []
    for item in items:
        if len(rows) % _ITEMS_PER_STEP == 0:
            _check_stop(hooks)
            _progress(hooks, len(rows), len(items))
        if item.messages is not None:
            ids = runtime.chat_ids(item.messages)
        else:  # as lm-eval and fine-tuning encode a prompt: BOS only where the tokenizer adds it
            ids = runtime.lead_ids() + runtime.encode(item.prompt) or [runtime.prefix]
        output = runtime.completion(runtime.generate(ids, seed=0, options=greedy))
        for stop in options.stop:
            output = output.split(stop, 1)[0]
        row: dict[str, Any] = {"index": item.index, "prompt": item.prompt}
        if item.messages is not None:
            row["messages"] = item.messages
        row |= {"references": list(item.references), "output": output}
        if labels:
            gold = read_label(item.references[0], labels)
            if gold not in labels:
                raise _invalid(item.index, f"reference {item.references[0]!r} is not a label")
            row |= {"label": gold, "pred_label": read_label(output, labels)}
            row["correct"] = float(row["pred_label"] == gold)
        else:
            row |= {
                "exact_match": exact_match(output, item.references),
                "f1": token_f1(output, item.references),
                **text.per_item(output, item.references),
            }
        rows.append(row)
    _progress(hooks, len(rows), len(items))
    boot = {"samples": options.bootstrap_samples, "seed": options.seed}
    if labels:
        figures, confusion = label_figures(
            [r["label"] for r in rows], [r["pred_label"] for r in rows], labels, **boot
        )
        return rows, figures, confusion
    figures = {m: mean_figure([r[m] for r in rows], **boot) for m in ("exact_match", "f1")}
    figures["rouge_l"] = mean_figure([r["rouge_l"] for r in rows], **boot)
    figures |= text.corpus([r["output"] for r in rows], [i.references for i in items], **boot)
    return rows, figures, None


def _question(item: TaskItem) -> str:
    if item.messages is None:
        return item.prompt
    return "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in item.messages)


def _grade(
    grade: Grade,
    items: list[TaskItem],
    rows: list[dict[str, Any]],
    options: TaskOptions,
    hooks: Hooks,
) -> dict[str, Any]:
    """Rate every answer (``grader_score`` on its row, None when the reply held no score);
    the figure over the rated ones and the count of missing ones."""
    scores: list[int | None] = []
    for b in range(0, len(items), _ITEMS_PER_STEP):
        _check_stop(hooks)
        chunk = list(
            zip(items[b : b + _ITEMS_PER_STEP], rows[b : b + _ITEMS_PER_STEP], strict=True)
        )
        prompts = [options.grader_prompt(_question(i), r["output"], i.references) for i, r in chunk]
        scores += grade(prompts)
        hooks.on_progress(
            Progress(step=len(scores), total=len(items),
                     metrics={"graded_items": float(len(scores))})
        )  # fmt: skip
    for row, score in zip(rows, scores, strict=True):
        row["grader_score"] = score
    rated = [float(s) for s in scores if s is not None]
    boot = {"samples": options.bootstrap_samples, "seed": options.seed}
    return {
        "figure": mean_figure(rated, **boot) if rated else None,
        "scored": len(rated),
        "missing": len(scores) - len(rated),
    }


def _primary(row: dict[str, Any]) -> float:
    """How well one item went, lowest first in the worst examples."""
    for key in ("margin", "correct", "f1"):
        if key in row:
            return float(row[key])
    return 0.0


def run_task(
    runtime: Runtime,
    file: DatasetFile,
    options: TaskOptions,
    out: Path,
    hooks: Hooks,
    grade: Grade | None = None,
) -> dict[str, Any]:
    """Score the task dataset; write ``out`` (one JSON line per item); return the figures.
    ``grade``: a score grader for generated answers (refused for multiple choice).

    Raises:
        PipelineError: ``task.invalid_record``, ``task.fewshot``, ``task.no_chat_template``,
            ``dataset.empty``, ``task.grader_generation_only``, ``grader.endpoint_*``.
        StageCancelled: when ``hooks.should_stop`` answers True.
    """
    kind, items = read_items(file, options)
    confusion, graded = None, None
    if kind == "multiple_choice":
        if grade is not None:
            raise PipelineError(
                "task.grader_generation_only", "a grader rates generated answers only"
            )
        rows, figures = _multiple_choice(runtime, items, options, hooks)
    else:
        rows, figures, confusion = _generation(runtime, items, options, hooks)
        if grade is not None:
            graded = _grade(grade, items, rows, options, hooks)
            if graded["figure"] is not None:
                figures["grader_score"] = graded.pop("figure")
            graded.pop("figure", None)
    with out.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    # The context (few-shot examples included) stays in the JSONL: the job result keeps short.
    worst = sorted(rows, key=_primary)[: options.worst_examples]
    worst = [{k: v for k, v in r.items() if k != "context"} for r in worst]
    result: dict[str, Any] = {"kind": kind, "items": len(rows), "figures": figures, "worst": worst}
    if kind == "multiple_choice":
        result["num_fewshot"] = options.num_fewshot
    if confusion is not None:
        result["confusion"] = confusion
    if graded is not None:
        result["grader"] = graded
    return result


def _check_stop(hooks: Hooks) -> None:
    if hooks.should_stop():
        raise StageCancelled()


def _progress(hooks: Hooks, done: int, total: int) -> None:
    hooks.on_progress(Progress(step=done, total=total, metrics={"task_items": float(done)}))
