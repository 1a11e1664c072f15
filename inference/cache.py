"""An LRU of loaded models inside a memory budget, one for every engine of the service.

Each engine estimates a model's size before loading it (a Hugging Face model from its
safetensors files, a GGUF from its file plus the KV cache of its context) and reports the
footprint once loaded; one cache holds them all, so transformers and llama.cpp models share one
budget and one recency order. Least recently used models are evicted until the new one
fits; a model that alone exceeds the budget is refused rather than loaded and thrashed.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from inference.engine import ModelTooLarge

log = logging.getLogger("gristmill.inference")

T = TypeVar("T")


@dataclass
class _Entry:
    value: Any
    """Whatever the engine that loaded it keeps (keys name the engine, so types never mix)."""
    size: int


class ModelCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.evictions = 0

    @property
    def used_bytes(self) -> int:
        return sum(entry.size for entry in self._entries.values())

    def keys(self) -> list[Hashable]:
        return list(self._entries)

    def get_or_load(
        self,
        key: Hashable,
        estimate: Callable[[], int],
        load: Callable[[], tuple[T, int]],
        name: str,
    ) -> T:
        """The loaded value for ``key``; ``load`` returns (value, measured bytes)."""
        # One lock for lookups and loads: two requests for a new model load it once, and an
        # eviction never races a load. Loads are rare next to generations.
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return cast(T, entry.value)
            need = estimate()
            if need > self.budget_bytes:
                raise ModelTooLarge(
                    f"model {name!r} needs about {need / 2**20:.1f} MiB, more than the inference "
                    f"memory budget of {self.budget_bytes / 2**20:.1f} MiB"
                )
            self._evict_until(self.budget_bytes - need)
            value, size = load()
            self.loads += 1
            self._entries[key] = _Entry(value, size)
            self._evict_until(self.budget_bytes, keep=key)
            return value

    def _evict_until(self, limit: int, keep: Hashable | None = None) -> None:
        evicted = False
        while self._entries and self.used_bytes > limit:
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            del self._entries[oldest]
            self.evictions += 1
            evicted = True
            log.info("evicted model %s to stay within the memory budget", oldest)
        if evicted:
            gc.collect()
            _empty_cuda_cache()


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
