"""Model cards: the README.md of every model folder the pipeline writes, saying what the model
is, how it was made, how well it did, and how to load it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_LOADER = (
    "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    "model = AutoModelForCausalLM.from_pretrained(path)\n"
    "tokenizer = AutoTokenizer.from_pretrained(path)"
)


def finetune_cards(
    *,
    base: str,
    method: str,
    train_file: str,
    validation_file: str | None,
    train_stats: Mapping[str, Any],
    trained_tokens: int,
    hyperparameters: Mapping[str, Any],
    metrics: Mapping[str, float],
    chat_template: str | None,
    added_tokens: bool,
) -> tuple[str, str]:
    """(the fine-tuned model's card, its LoRA adapter's card). With ``added_tokens`` (the chat
    template added tokens) the adapter's usage resizes the base's embeddings first."""
    data = {
        "training file": train_file,
        "validation file": validation_file or "none",
        **{f"train {k}": v for k, v in train_stats.items()},
        "trained tokens": trained_tokens,
    }
    facts: dict[str, Any] = {
        "base": base,
        "method": method,
        "data": data,
        "hyperparameters": hyperparameters,
        "metrics": metrics,
        "chat_template": chat_template,
    }
    resize = (
        "base.resize_token_embeddings(len(tokenizer))  # the template added tokens\n"
        if added_tokens
        else ""
    )
    adapter_usage = (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tokenizer = AutoTokenizer.from_pretrained(adapter_path)\n"
        "base = AutoModelForCausalLM.from_pretrained(base_path)\n"
        f"{resize}model = PeftModel.from_pretrained(base, adapter_path)"
    )
    return (
        model_card(title="Fine-tuned model", usage=_LOADER, **facts),
        model_card(title="LoRA adapter", usage=adapter_usage, **facts),
    )


def model_card(
    *,
    title: str,
    base: str,
    method: str,
    data: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
    metrics: Mapping[str, float],
    chat_template: str | None,
    usage: str,
) -> str:
    """A README.md that says what this model is, how it was made, and how well it did."""
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: " + ("peft" if "PeftModel" in usage else "transformers"),
        "tags: [gristmill, fine-tuned, " + method + "]",
        "---",
        "",
        f"# {title}",
        "",
        f"Fine-tuned from `{base}` with **{method}** by Gristmill.",
        "",
        "## Data",
        "",
        *[f"- {k}: {v}" for k, v in data.items()],
        "",
        "## Hyper-parameters",
        "",
        "```json",
        json.dumps(dict(hyperparameters), indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Final metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())],
        "",
    ]
    if chat_template:
        lines += [
            "## Chat template",
            "",
            f"Trained with the `{chat_template}` template, saved in the tokenizer files; "
            "generation stops at its end-of-turn token (`generation_config.json`).",
            "",
        ]
    lines += ["## Usage", "", "```python", usage.strip(), "```", ""]
    return "\n".join(lines)
