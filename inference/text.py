"""Text as it streams out of any engine: incremental detokenisation and stop strings.

Engine-agnostic: an engine feeds token ids and logprobs one step at a time and gets back the
deltas that are final (no half character, no text that could still grow into a stop string).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inference.engine import Delta, FinishReason, TokenLogprob


class Detokenizer:
    """Incremental detokenisation (as TGI and vLLM do): decode a short window around the new
    token, so each step costs the same however long the output is, and hold back text while the
    last bytes are an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return str(after[len(before) :])
        return ""

    def flush(self) -> str:
        """What is still held back (an incomplete character at the very end), as decoded."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix :], skip_special_tokens=True)
        self.prefix = self.read = len(self.ids)
        return str(after[len(before) :])


@dataclass
class ChoiceState:
    """Text made so far for one choice, what of it was sent, and logprobs not yet sent."""

    detok: Detokenizer
    stop: tuple[str, ...]
    text: str = ""
    sent: int = 0
    unsent_tokens: int = 0
    pending: list[tuple[int, TokenLogprob]] = field(default_factory=list)
    """(offset in ``text`` where the token's text starts, its logprob entry)."""
    finished: bool = False

    def _flush(self, index: int, upto: int, finish: FinishReason | None) -> Delta | None:
        send = [lp for start, lp in self.pending if start < upto or finish is not None]
        self.pending = [(s, lp) for s, lp in self.pending if not (s < upto or finish is not None)]
        if upto <= self.sent and finish is None and not send:
            return None
        delta = Delta(index, self.text[self.sent : upto], self.unsent_tokens, tuple(send), finish)
        self.sent = max(self.sent, upto)
        self.unsent_tokens = 0
        return delta

    def step(self, index: int, token: int, lp: TokenLogprob | None, eos: bool) -> Delta | None:
        self.unsent_tokens += 1
        if lp is not None:
            self.pending.append((len(self.text), lp))
        if eos:
            return self.finish(index, "stop")
        piece = self.detok.add(token)
        if not piece:
            return None
        start = len(self.text)
        self.text += piece
        if self.stop:
            longest = max(len(s) for s in self.stop)
            search_from = max(0, start - longest + 1)
            hits = [p for s in self.stop if (p := self.text.find(s, search_from)) >= 0]
            if hits:
                self.finished = True
                self.text = self.text[: min(hits)]
                return self._flush(index, len(self.text), "stop")
            return self._flush(index, len(self.text) - self._held_back(), None)
        return self._flush(index, len(self.text), None)

    def _held_back(self) -> int:
        """Characters at the end that could still grow into a stop string: not sent yet."""
        held = 0
        for stop in self.stop:
            for k in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:k]):
                    held = k
                    break
        return held

    def finish(self, index: int, reason: FinishReason) -> Delta | None:
        self.finished = True
        if tail := self.detok.flush():
            self.text += tail
            if self.stop:  # the tail could complete a stop string
                hits = [p for s in self.stop if (p := self.text.find(s, self.sent)) >= 0]
                if hits:
                    self.text = self.text[: min(hits)]
                    reason = "stop"
        return self._flush(index, len(self.text), reason)
