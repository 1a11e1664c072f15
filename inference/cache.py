"""An LRU of loaded models inside a memory budget, one for every engine of the service.

Each engine estimates a model's size before loading it (a Hugging Face model from its
safetensors files, a GGUF from its file plus the KV cache of its context) and reports the
footprint once loaded; one cache holds them all, so transformers and llama.cpp models share one
budget and one recency order. Least recently used models are evicted until the new one
fits; a model that alone exceeds the budget is refused rather than loaded and thrashed.

An entry may have a parent (a LoRA adapter on its base, :mod:`inference.adapters`): the child
counts only its own bytes, using it keeps its parent recent, and evicting the parent evicts its
children first. An entry's ``release`` runs when it is evicted (an adapter detaches itself).
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
    parent: Hashable | None = None
    release: Callable[[], None] | None = None


class ParentGone(KeyError):
    """A child's parent was evicted between the two lookups: load the parent again."""


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

    def keys(self, *, parents: bool = True, children: bool = True) -> list[Hashable]:
        """Loaded keys, oldest first: models (``parents``), adapters on them (``children``)."""
        return [
            key
            for key, entry in self._entries.items()
            if (children if entry.parent is not None else parents)
        ]

    def get_or_load(
        self,
        key: Hashable,
        estimate: Callable[[], int],
        load: Callable[[], tuple[T, int]],
        name: str,
        *,
        parent: tuple[Hashable, Any] | None = None,
        release: Callable[[], None] | None = None,
    ) -> T:
        """The loaded value for ``key``; ``load`` returns (value, measured bytes). With
        ``parent`` (key, value), that entry must still hold that value (else
        :class:`ParentGone`) and stays loaded."""
        parent_key = parent[0] if parent is not None else None
        # One lock for lookups and loads: two requests for a new model load it once, and an
        # eviction never races a load. Loads are rare next to generations.
        with self._lock:
            if parent is not None:
                held = self._entries.get(parent[0])
                if held is None or held.value is not parent[1]:
                    raise ParentGone(parent[0])
                self._entries.move_to_end(parent[0])
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
            keep = {key, parent_key}
            self._evict_until(self.budget_bytes - need, keep)
            value, size = load()
            self.loads += 1
            self._entries[key] = _Entry(value, size, parent_key, release)
            self._evict_until(self.budget_bytes, keep)
            return value

    def children(self, parent: Hashable) -> list[Hashable]:
        return [key for key, entry in self._entries.items() if entry.parent == parent]

    def _evict_until(self, limit: int, keep: set[Hashable | None]) -> None:
        evicted = False
        while self.used_bytes > limit:
            oldest = next((key for key in self._entries if key not in keep), None)
            if oldest is None:
                break
            for key in [*self.children(oldest), oldest]:
                entry = self._entries.pop(key)
                if entry.release is not None:
                    entry.release()
                self.evictions += 1
                log.info("evicted model %s to stay within the memory budget", key)
            evicted = True
        if evicted:
            gc.collect()
            _empty_cuda_cache()


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
