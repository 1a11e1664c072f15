"""Chat templates: the base tokenizer's own, or a named default (ChatML) added when it has none.

The template decides what the model sees, so the exact one used in training is saved with the
output and its end-of-turn token becomes an EOS in ``generation_config.json``: generation then
stops where training taught the model to stop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

CHATML_NAME = "chatml"
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatSetup:
    """Which template is in use and what it costs the model."""

    template: str  # "own" | "chatml"
    added_tokens: tuple[str, ...]
    """Tokens added to the vocabulary; the model's embeddings must grow to len(tokenizer)."""
    end_of_turn_id: int | None


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> ChatSetup:
    """Keep the tokenizer's template, or install ChatML (adding its two tokens if missing)."""
    if getattr(tokenizer, "chat_template", None):
        return ChatSetup("own", (), end_of_turn_id(tokenizer))
    vocab = tokenizer.get_vocab()
    missing = [t for t in CHATML_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.chat_template = CHATML_TEMPLATE
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert isinstance(eot, int)
    return ChatSetup(CHATML_NAME, tuple(missing), eot)


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token a template puts right after an assistant reply (e.g. ``<|im_end|>``,
    ``<|eot_id|>``, ``</s>``), found by rendering a one-turn conversation; EOS without one."""
    eos = tokenizer.eos_token_id
    if not getattr(tokenizer, "chat_template", None):
        return int(eos) if isinstance(eos, int) else None
    messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "REPLY"}]
    text = render(tokenizer, messages, add_generation_prompt=False)
    after = text[text.rfind("REPLY") + len("REPLY") :]
    special = set(tokenizer.all_special_ids)
    for token_id in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token_id in special:
            return int(token_id)
    return int(eos) if isinstance(eos, int) else None


def stop_ids(tokenizer: PreTrainedTokenizerBase, chat: ChatSetup | None) -> list[int]:
    """Where generation stops: EOS, and the template's end-of-turn token when it is another."""
    eot = chat.end_of_turn_id if chat else end_of_turn_id(tokenizer)
    ids = [int(tokenizer.eos_token_id)]
    if eot is not None and eot not in ids:
        ids.append(eot)
    return ids


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool,
) -> str:
    """The template applied to ``messages`` as text (roles and contents only)."""
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(
        clean, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert isinstance(text, str)
    return text


def chat_segments(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    *,
    train_on_inputs: bool,
) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, trained) pieces whose join is the whole text.

    Each assistant reply is the difference between rendering the conversation up to it with the
    generation prompt and rendering it including the reply: exactly the tokens the model must
    produce at inference, end-of-turn marker included. A reply with ``weight`` 0 is not trained.

    Raises:
        ValueError: the template renders a prefix of the conversation inconsistently (it rewrites
            earlier turns), so turns cannot be located.
    """
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise ValueError("the chat template rewrites earlier turns; cannot mask by turn")
        segments.append((prefix[len(done) :], train_on_inputs))
        segments.append((full[len(prefix) :], message.get("weight", 1) != 0))
        done = full
    ends_with_reply = bool(messages) and messages[-1]["role"] == "assistant"
    whole = done if ends_with_reply else render(tokenizer, messages, add_generation_prompt=False)
    if len(whole) > len(done):
        segments.append((whole[len(done) :], train_on_inputs))
    return [(text, trained) for text, trained in segments if text]
