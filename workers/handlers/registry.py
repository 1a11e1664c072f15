"""Job type → handler. Imported lazily by the runner so a worker loads only what it runs."""

from __future__ import annotations

import importlib

from workers.handlers.base import Handler

_HANDLERS = {
    "probe": ("workers.handlers.probe", "handle"),
    "validate": ("workers.handlers.datasets", "handle_validate"),
    "prepare": ("workers.handlers.datasets", "handle_prepare"),
    "tokenizer": ("workers.handlers.training", "handle_tokenizer"),
    "pretrain": ("workers.handlers.training", "handle_pretrain"),
}


def handler_for(job_type: str) -> Handler:
    module_name, function = _HANDLERS[job_type]
    handle: Handler = getattr(importlib.import_module(module_name), function)
    return handle
