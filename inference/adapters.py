"""LoRA adapters served on one shared copy of their base, batched together (vLLM's multi-LoRA).

A base is loaded once, as a plain model. The first adapter asked for on it wraps it in a
``PeftModel`` in place (the LoRA layers are injected around the base's own linear layers, which
keep their tensors); further adapters are added with ``load_adapter`` under names of their own.
Every forward of the base's one :class:`~inference.batching.Batcher` passes peft's
``adapter_names``, one per row (``"__base__"`` for rows without adapter), so requests for
different adapters and for the base itself decode in the same batch: peft's mixed-batch LoRA
forward runs the base layer over all rows, then adds each adapter's ``B·A·x`` to its rows only,
which is the arithmetic of that adapter served alone.

The model cache counts the base once and each adapter as a child of it (its LoRA tensors'
bytes). Evicting an adapter detaches it from the base (once no request uses it any more);
evicting the base evicts its adapters with it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("gristmill.inference")

BASE = "__base__"
"""peft's name for rows that take no adapter."""


class SharedBase:
    """One loaded base model and the LoRA adapters attached to it: what its Batcher calls.

    Adapters are attached and detached under the same lock as forwards, so the LoRA layers never
    change under a running step."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.base = model
        self.config = model.config
        self.device = device
        self.peft: Any = None
        """The ``PeftModel`` around ``base`` once it has had an adapter."""
        self._lock = threading.Lock()
        self._names = itertools.count(1)
        self._users: Counter[str] = Counter()
        self._retired: set[str] = set()

    @property
    def adapters(self) -> list[str]:
        """The adapters attached now."""
        return list(self.peft.peft_config) if self.peft is not None else []

    def __call__(self, input_ids: torch.Tensor, adapter_names: list[str], **kwargs: Any) -> Any:
        with self._lock:
            attached = set(self.adapters)
            if not attached:  # no LoRA layer has an adapter: the base's own forward
                return self.base(input_ids=input_ids, **kwargs)
            # A row whose adapter is gone belongs to a request that already left (an adapter is
            # detached only once no request uses it); it is dropped at the next step.
            names = [name if name in attached else BASE for name in adapter_names]
            return self.peft(input_ids=input_ids, adapter_names=names, **kwargs)

    def attach(self, path: Path) -> tuple[str, int]:
        """Load the adapter in ``path`` onto the base; its name here and its own bytes."""
        from peft import PeftModel

        name = f"lora{next(self._names)}"
        with self._lock:
            try:
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(
                        self.base, path, adapter_name=name, is_trainable=False
                    )
                else:
                    self.peft.load_adapter(path, adapter_name=name, is_trainable=False)
            except Exception:
                self._scrub(name)
                raise
            self.peft.to(self.device).eval()
        size = sum(
            p.numel() * p.element_size()
            for key, p in self.peft.named_parameters()
            if f".{name}." in key
        )
        return name, size

    def retire(self, name: str) -> None:
        """Evicted: detach the adapter now, or when its last request ends."""
        with self._lock:
            if self._users[name]:
                self._retired.add(name)
            else:
                self._detach(name)

    def using(self, name: str, deltas: Iterator[Any]) -> Iterator[Any]:
        """``deltas`` of a request on adapter ``name``, which stays attached until they end."""
        with self._lock:
            self._users[name] += 1
        return self._released(name, deltas)

    def _released(self, name: str, deltas: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from deltas
        finally:
            with self._lock:
                self._users[name] -= 1
                if not self._users[name]:
                    del self._users[name]
                    if name in self._retired:
                        self._detach(name)

    def _detach(self, name: str) -> None:
        self._retired.discard(name)
        if self.peft is not None and name in self.peft.peft_config:
            self.peft.delete_adapter(name)
            log.info("detached adapter %s from its base", name)

    def _scrub(self, name: str) -> None:
        """A load that failed may have left the adapter injected in some layers (where it would
        be active for every row): take it out of all of them."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for holder in (self.peft, self.base):  # peft keeps its configs on the base model too
            getattr(holder, "peft_config", {}).pop(name, None)
        for module in self.base.modules():
            if isinstance(module, BaseTunerLayer):
                module.delete_adapter(name)
