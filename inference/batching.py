"""Iteration-level batching for the transformers engine: one decode loop per loaded model.

Requests that arrive while others generate join the running batch at the next step; finished or
abandoned ones leave it at the next step (the scheduling vLLM and TGI do). transformers' own
continuous batching (``ContinuousBatchingManager``) was not used: it samples every request with
one shared generator (no per-request ``seed``), gives the chosen token's logprob but no top
alternatives, and its paged-attention kernels aim at CUDA.

How one model's batch is kept. A newcomer is prefilled alone, the very forward a solo request
makes, then its KV cache is left-padded to the batch's length (or the batch's to its length) and
concatenated on the batch axis. Every decoding step is one forward for all rows, each row with
its own attention mask (zeros over its padding) and position ids (its own count of real tokens),
so a row's logits do not depend on its neighbours: greedy output is the same alone or batched.
Sampling stays per request (its own warpers and ``torch.Generator``), and the text of each choice
goes through :mod:`inference.text` as before. Leading columns that no row needs any more are cut
when rows leave, so the cache is as long as the longest live sequence.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import (
    DynamicCache,
    DynamicLayer,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from inference.engine import Delta, SamplingParams, TokenLogprob, TopLogprob
from inference.text import ChoiceState, Detokenizer

log = logging.getLogger("gristmill.inference")

_END = None
"""What a request's queue gets after its last delta."""


@dataclass(eq=False)
class _Request:
    """One generation in the batch: ``params.n`` consecutive rows, one per choice."""

    prompt_ids: list[int]
    params: SamplingParams
    max_new: int
    cancel: threading.Event
    choices: list[ChoiceState]
    warpers: LogitsProcessorList
    generator: torch.Generator
    lora: tuple[str, frozenset[int], Any]
    out: queue.SimpleQueue[Delta | BaseException | None] = field(default_factory=queue.SimpleQueue)
    made: int = 0
    """Tokens generated so far by each choice (the choices step together)."""
    done: bool = False
    abandoned: bool = False
    """Its reader stopped reading (closed the stream): as good as cancelled."""

    @property
    def rows(self) -> int:
        return self.params.n

    @property
    def stopped(self) -> bool:
        return self.cancel.is_set() or self.abandoned


@dataclass
class BatchStats:
    """What the loop did, for /health-style introspection and the tests."""

    steps: int = 0
    """Batched decoding forwards."""
    peak_rows: int = 0
    joined: int = 0


class Batcher:
    """The decode loop of one loaded model. Its thread runs while there is work and ends when the
    batch and the queue are both empty (the next request starts a new one), so an evicted model
    leaves no thread behind."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        eos_ids: frozenset[int],
        *,
        device: torch.device,
        max_rows: int,
    ) -> None:
        self.model, self.tokenizer, self.eos_ids = model, tokenizer, eos_ids
        self.device = device
        self.max_rows = max_rows
        """Rows (choices) decoded together; a request with more ``n`` than this runs alone."""
        self.stats = BatchStats()
        self.mergeable = all(
            type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers
        )
        """Plain full-attention layers only: a sliding-window or hybrid cache keeps offsets of its
        own that padding would break, so such a model runs one request at a time."""
        self._lock = threading.Lock()
        self._pending: list[_Request] = []
        self._thread: threading.Thread | None = None
        self._active: list[_Request] = []
        self._cache: DynamicCache | None = None
        self._mask = torch.empty(0, 0, dtype=torch.long)
        """(rows, cache length): 1 where the row has a real token, 0 over its left padding."""
        self._positions = torch.empty(0, dtype=torch.long)
        """(rows,): the position of each row's next token, i.e. its count of real tokens."""
        self._next = torch.empty(0, dtype=torch.long)
        """(rows,): each row's newest token, sampled but not yet through the model."""

    @property
    def rows(self) -> int:
        """Rows in the running batch now."""
        return sum(r.rows for r in self._active)

    @property
    def idle(self) -> bool:
        """No rows, no queue, no thread: everything submitted has left."""
        with self._lock:
            return self._thread is None and not self._pending

    @property
    def waiting(self) -> int:
        """Requests queued for a place in the batch."""
        return len(self._pending)

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        max_new: int,
        cancel: threading.Event,
        lora: tuple[str, frozenset[int], Any],
    ) -> Iterator[Delta]:
        """Queue a generation (``lora``: its adapter, ``"__base__"`` for none, with its eos ids
        and tokenizer); iterate the result for its deltas. Once ``cancel`` is set (or the
        iterator is closed), the stream ends and the rows leave the batch at the next step."""
        warpers = LogitsProcessorList()
        if params.temperature != 0:
            if params.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_p < 1.0:
                warpers.append(TopPLogitsWarper(params.top_p))
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        choices = [ChoiceState(Detokenizer(lora[2]), params.stop) for _ in range(params.n)]
        request = _Request(prompt_ids, params, max_new, cancel, choices, warpers, generator, lora)
        with self._lock:
            self._pending.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="decode", daemon=True)
                self._thread.start()
        return _read(request)

    # The loop: everything below runs on the decode thread only.

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    for request in [r for r in self._pending if r.stopped]:
                        self._pending.remove(request)
                        request.out.put(_END)
                    if not self._active and not self._pending:
                        self._thread = None
                        return
                    joining = self._admit()
                try:
                    for request in joining:
                        self._join(request)
                    if self._active:
                        self._step()
                except Exception as exc:  # a crash fails what is in the batch, not the service
                    log.exception("batched decoding failed")
                    for request in {*self._active, *joining}:
                        request.out.put(exc)
                    self._reset()

    def _admit(self) -> list[_Request]:
        """Pending requests (first come, first in) that fit in the batch beside the running rows."""
        rows = self.rows
        joining: list[_Request] = []
        room = self.max_rows if self.mergeable else 0
        while self._pending and (rows == 0 or rows + self._pending[0].rows <= room):
            request = self._pending.pop(0)
            rows += request.rows
            joining.append(request)
        return joining

    def _reset(self) -> None:
        self._active, self._cache = [], None
        self._mask = torch.empty(0, 0, dtype=torch.long)
        self._positions = self._next = torch.empty(0, dtype=torch.long)

    def _join(self, request: _Request) -> None:
        """Prefill the prompt alone (``n`` copies), hand out its first token at once, and merge
        its cache into the batch."""
        if request.max_new <= 0:
            self._finish(request)
            return
        try:
            n, length = request.rows, len(request.prompt_ids)
            ids = torch.tensor([request.prompt_ids] * n, dtype=torch.long, device=self.device)
            cache = DynamicCache(config=self.model.config)
            names = [request.lora[0]] * n
            out = self.model(ids, names, cache=cache, use_cache=True, logits_to_keep=1)
        except Exception as exc:  # this prompt's failure is this request's alone
            log.exception("prefill failed")
            request.out.put(exc)
            return
        chosen = self._sample(request, out.logits[:, -1, :].float())
        if request.done:
            return
        mask = torch.ones(n, length, dtype=torch.long, device=ids.device)
        positions = torch.full((n,), length, dtype=torch.long, device=ids.device)
        if self._cache is None:
            self._cache, self._mask, self._positions, self._next = cache, mask, positions, chosen
        else:
            self._merge(cache, mask, positions, chosen)
        self._active.append(request)
        self.stats.joined += 1
        self.stats.peak_rows = max(self.stats.peak_rows, self.rows)

    def _merge(
        self, cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor, chosen: torch.Tensor
    ) -> None:
        assert self._cache is not None
        width = max(self._mask.shape[1], mask.shape[1])
        for mine, new in zip(_layers(self._cache), _layers(cache), strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(new.keys, width)])
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(new.values, width)])
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
        self._positions = torch.cat([self._positions, positions])
        self._next = torch.cat([self._next, chosen])

    def _step(self) -> None:
        """Let stopped requests go, one forward for every row's next token, then each request
        samples the token after it."""
        for request in self._active:
            if request.stopped:
                request.done = True
                request.out.put(_END)
        self._retain()
        if not self._active:
            return
        logits = self._forward()
        chosen, row = [], 0
        for request in self._active:
            chosen.append(self._sample(request, logits[row : row + request.rows]))
            row += request.rows
        self._next = torch.cat(chosen)
        self._retain()

    def _sample(self, request: _Request, logits: torch.Tensor) -> torch.Tensor:
        """Choose the request's next tokens, hand out the text that became final, and mark the
        request done when every choice finished or ``max_new`` tokens were made."""
        params = request.params
        if params.temperature == 0:
            tokens = logits.argmax(dim=-1)
        else:
            # Temperature and top-p look only at the scores, not at the ids.
            ids = cast(torch.LongTensor, torch.empty(logits.shape[0], 0, dtype=torch.long))
            scores = request.warpers(ids, logits) if request.warpers else logits
            probs = torch.softmax(scores, dim=-1)
            tokens = torch.multinomial(probs, 1, generator=request.generator).squeeze(1)
        entries = logprobs(request.lora[2], logits, tokens, params.logprobs)
        for i, (state, token) in enumerate(zip(request.choices, tokens.tolist(), strict=True)):
            if state.finished:
                continue
            entry = entries[i] if entries else None
            delta = state.step(i, token, entry, token in request.lora[1])
            if delta is not None:
                request.out.put(delta)
        request.made += 1
        if all(state.finished for state in request.choices):
            request.done = True
            request.out.put(_END)
        elif request.made >= request.max_new:
            self._finish(request)
        return tokens

    def _finish(self, request: _Request) -> None:
        """Out of tokens: the choices still going end with ``length``."""
        for i, state in enumerate(request.choices):
            if not state.finished:
                delta = state.finish(i, "length")
                if delta is not None:
                    request.out.put(delta)
        request.done = True
        request.out.put(_END)

    def _retain(self) -> None:
        """Drop the rows of done requests, then the leading columns no remaining row uses."""
        keep: list[int] = []
        row = 0
        for request in self._active:
            if not request.done:
                keep.extend(range(row, row + request.rows))
            row += request.rows
        if len(keep) == row:
            return
        self._active = [r for r in self._active if not r.done]
        if not keep:
            self._reset()
            return
        assert self._cache is not None
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        self._mask = mask[:, start:]
        for layer in _layers(self._cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self._positions = self._positions.index_select(0, index)
        self._next = self._next.index_select(0, index)

    def _forward(self) -> torch.Tensor:
        """Every row's next token through the model: the scores (float32) for the one after."""
        ones = torch.ones(len(self._next), 1, dtype=torch.long, device=self._mask.device)
        mask = torch.cat([self._mask, ones], dim=1)
        out = self.model(
            input_ids=self._next[:, None],
            # No padding anywhere: no mask, the very call a solo generation makes.
            attention_mask=None if bool(mask.all()) else mask,
            position_ids=self._positions[:, None],
            cache=self._cache,
            use_cache=True,
            adapter_names=[r.lora[0] for r in self._active for _ in range(r.rows)],
        )
        self._mask = mask
        self._positions = self._positions + 1
        self.stats.steps += 1
        logits: torch.Tensor = out.logits[:, -1, :].float()
        return logits


def _layers(cache: DynamicCache) -> list[Any]:
    return list(cache.layers)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros before ``tensor``'s sequence axis (-2 for 4D KV tensors, -1 for 2D masks)."""
    axis = -2 if tensor.dim() == 4 else -1
    missing = width - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def _read(request: _Request) -> Iterator[Delta]:
    """The request's deltas as the loop makes them; stops at once when it is cancelled, so a
    slow reader does not keep reading output made before the cancel."""
    try:
        while not request.cancel.is_set():
            item = request.out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        request.abandoned = True


def logprobs(
    tokenizer: Any, logits: torch.Tensor, tokens: torch.Tensor, top: int | None
) -> list[TokenLogprob] | None:
    """Logprobs under the model's own distribution (before temperature/top-p), as OpenAI reports."""
    if top is None:
        return None
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, tokens[:, None]).squeeze(1).tolist()
    if top:
        values, indices = logp.topk(top, dim=-1)
        top_values, top_indices = values.tolist(), indices.tolist()
    entries = []
    for i, token in enumerate(tokens.tolist()):
        alternatives: tuple[TopLogprob, ...] = ()
        if top:
            alternatives = tuple(
                TopLogprob(tokenizer.decode([t]), v)
                for t, v in zip(top_indices[i], top_values[i], strict=True)
            )
        entries.append(TokenLogprob(tokenizer.decode([token]), chosen[i], alternatives))
    return entries
