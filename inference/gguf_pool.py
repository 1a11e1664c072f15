"""A GGUF model's llama.cpp contexts, handed to waiting requests first come, first served.

A released context goes straight to the longest-waiting request (not back to a shared queue
that any thread may grab), so under a burst no request waits behind later ones; a request
cancelled while it waits leaves the line and takes nothing.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class _Waiter:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.context: Any = None


class ContextPool:
    def __init__(self, contexts: list[Any]) -> None:
        self._idle = list(contexts)
        self._line: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._line)

    def acquire(self, cancel: threading.Event, poll: float = 0.05) -> Any | None:
        """A context for this request, or None once ``cancel`` is set while it waits."""
        with self._lock:
            if self._idle and not self._line:
                return self._idle.pop()
            waiter = _Waiter()
            self._line.append(waiter)
        while not waiter.ready.wait(poll):
            if cancel.is_set():
                with self._lock:
                    if not waiter.ready.is_set():  # still in line: leave it
                        self._line.remove(waiter)
                        return None
                break  # handed a context as it was cancelled: the caller gives it back
        return waiter.context

    def release(self, context: Any) -> None:
        with self._lock:
            if self._line:
                waiter = self._line.popleft()
                waiter.context = context
                waiter.ready.set()
            else:
                self._idle.append(context)
