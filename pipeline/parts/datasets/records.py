"""The unit every dataset stage works on, and the rules that make a JSON object a valid one.

Three record kinds exist because they train differently: ``text`` (pretraining prose),
``chat`` (a conversation whose assistant turns are the targets) and ``prompt_completion``.
A fourth, ``task``, is evaluated, not trained on: an item with ``choices`` or references (the
evaluate stage checks its fields in full; here it is kept as uploaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

KINDS = ("text", "chat", "prompt_completion", "preference", "task")
TASK_FIELDS = frozenset({"choices", "reference", "references"})
_ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True, slots=True)
class Record:
    """One training example and where it came from (1-based line or row number)."""

    kind: str
    line: int
    text: str | None = None
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    completion: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    raw: dict[str, Any] | None = None
    """A task item as uploaded (its fields are the evaluate stage's business)."""

    def contents(self) -> list[str]:
        """The free-text fields, in order: what filters, PII scrubbing and dedup look at."""
        if self.kind == "preference":
            return [self.prompt or "", self.chosen or "", self.rejected or ""]
        if self.kind == "chat":
            return [m["content"] for m in self.messages or []]
        if self.kind == "prompt_completion":
            return [self.prompt or "", self.completion or ""]
        return [self.text or ""]

    def with_contents(self, contents: list[str]) -> Record:
        """A copy with the free-text fields replaced (same order as :meth:`contents`)."""
        if self.kind == "preference":
            prompt, chosen, rejected = contents
            return Record(self.kind, self.line, prompt=prompt, chosen=chosen, rejected=rejected)
        if self.kind == "chat":
            msgs = [
                {"role": m["role"], "content": c}
                for m, c in zip(self.messages or [], contents, strict=True)
            ]
            return Record("chat", self.line, messages=msgs)
        if self.kind == "prompt_completion":
            return Record(self.kind, self.line, prompt=contents[0], completion=contents[1])
        if self.kind == "task":
            return Record("task", self.line, text=contents[0], raw=self.raw)
        return Record("text", self.line, text=contents[0])

    def training_text(self) -> str:
        """The text a language model is trained on for this record."""
        if self.kind == "task":
            return self.text or ""
        if self.kind == "preference":
            return (self.prompt or "") + (self.chosen or "")
        if self.kind == "chat":
            return "\n".join(self.contents())
        if self.kind == "prompt_completion":
            return (self.prompt or "") + (self.completion or "")
        return self.text or ""

    def to_json(self) -> dict[str, Any]:
        """The JSONL object for this record, in the same shape the user uploaded."""
        if self.kind == "task":
            return dict(self.raw or {})
        if self.kind == "preference":
            return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        if self.kind == "chat":
            return {"messages": self.messages}
        if self.kind == "prompt_completion":
            return {"prompt": self.prompt, "completion": self.completion}
        return {"text": self.text}


@dataclass(frozen=True, slots=True)
class RecordError:
    """A record that cannot be used, and why, in words a user can act on."""

    line: int
    reason: str


def parse_json_line(raw: bytes, line: int) -> Record | RecordError:
    """Decode one JSONL line into a record, or say precisely what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RecordError(line, f"invalid UTF-8 at byte {exc.start}")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return RecordError(line, f"invalid JSON: {exc}")
    if not isinstance(obj, dict):
        return RecordError(line, "expected a JSON object")
    bad = _bad_text(obj)
    if bad is not None:
        return RecordError(line, bad)
    return record_from_object(obj, line)


def _bad_text(value: Any) -> str | None:
    """JSON escapes can smuggle in what UTF-8 cannot hold (a lone surrogate such as "\\ud800")
    or what no stage should see (NUL): refuse them here, with the line, not in a later job."""
    if isinstance(value, str):
        if "\x00" in value:
            return "text contains a NUL character (\\u0000)"
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            return (
                "text contains a lone surrogate (an escape such as \\ud800 that is not a character)"
            )
        return None
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        bad = _bad_text(key) if isinstance(key, str) else None
        bad = bad or _bad_text(item)
        if bad is not None:
            return bad
    return None


def record_from_object(obj: dict[str, Any], line: int) -> Record | RecordError:
    """Classify a JSON object as text, chat, prompt/completion or a preference pair and check its
    fields."""
    if {"chosen", "rejected", "preferred_output", "non_preferred_output"} & obj.keys():
        return _preference_record(obj, line)
    if TASK_FIELDS & obj.keys():
        return _task_record(obj, line)
    if "messages" in obj:
        return _chat_record(obj["messages"], line)
    if "prompt" in obj or "completion" in obj:
        prompt, completion = obj.get("prompt"), obj.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            return RecordError(line, "'prompt' and 'completion' must both be strings")
        if not completion.strip():
            return RecordError(line, "empty record: 'completion' is blank")
        return Record("prompt_completion", line, prompt=prompt, completion=completion)
    if "text" in obj:
        text = obj["text"]
        if not isinstance(text, str):
            return RecordError(line, "'text' must be a string")
        if not text.strip():
            return RecordError(line, "empty record: 'text' is blank")
        return Record("text", line, text=text)
    return RecordError(
        line, "missing field: expected 'text', 'messages' or 'prompt' and 'completion'"
    )


def _task_record(obj: dict[str, Any], line: int) -> Record | RecordError:
    """An evaluation item: a prompt (or messages) and choices or references."""
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
    ):
        text = "\n".join(m["content"] for m in messages)
    else:
        return RecordError(line, "a task item needs a string 'prompt' or a list of 'messages'")
    return Record("task", line, text=text, raw=obj)


def _preference_record(obj: dict[str, Any], line: int) -> Record | RecordError:
    """A DPO pair: ``{prompt, chosen, rejected}``, or OpenAI's ``{input: {messages},
    preferred_output, non_preferred_output}`` (each output a list with one assistant message)."""
    if "input" in obj:
        messages = obj["input"].get("messages") if isinstance(obj["input"], dict) else None
        if not isinstance(messages, list) or not messages:
            return RecordError(line, "'input.messages' must be a non-empty list")
        last = messages[-1]
        prompt = last.get("content") if isinstance(last, dict) else None
        chosen = _only_content(obj.get("preferred_output"))
        rejected = _only_content(obj.get("non_preferred_output"))
    else:
        prompt, chosen, rejected = obj.get("prompt"), obj.get("chosen"), obj.get("rejected")
    if not all(isinstance(v, str) for v in (prompt, chosen, rejected)):
        return RecordError(
            line, "a preference pair needs string 'prompt', 'chosen' and 'rejected' (or "
            "'input.messages', 'preferred_output' and 'non_preferred_output')"
        )  # fmt: skip
    assert isinstance(chosen, str) and isinstance(rejected, str)
    if not chosen.strip() or not rejected.strip():
        return RecordError(line, "empty record: 'chosen' or 'rejected' is blank")
    return Record("preference", line, prompt=prompt, chosen=chosen, rejected=rejected)


def _only_content(output: Any) -> str | None:
    if isinstance(output, list) and len(output) == 1 and isinstance(output[0], dict):
        content = output[0].get("content")
        return content if isinstance(content, str) else None
    return None


def _chat_record(messages: Any, line: int) -> Record | RecordError:
    """Check roles: optional system turn, then user/assistant alternating, ending on assistant."""
    if not isinstance(messages, list) or not messages:
        return RecordError(line, "'messages' must be a non-empty list")
    clean: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return RecordError(line, f"message {i} is not an object")
        role, content = msg.get("role"), msg.get("content")
        if role not in _ROLES or not isinstance(content, str):
            return RecordError(
                line, f"message {i} needs a role in {sorted(_ROLES)} and a string content"
            )
        clean.append({"role": role, "content": content})
    roles = [m["role"] for m in clean]
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(body))]
    if not body or body != expected or body[-1] != "assistant":
        return RecordError(
            line,
            f"wrong role order {roles}: expected optional system, then user/assistant "
            "alternating, ending with assistant",
        )
    if not any(m["content"].strip() for m in clean if m["role"] == "assistant"):
        return RecordError(line, "empty record: assistant turns are blank")
    return Record("chat", line, messages=clean)
