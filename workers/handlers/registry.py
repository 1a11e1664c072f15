"""Job type → handler. Imported lazily by the runner so a worker loads only what it runs."""

from __future__ import annotations

import importlib

from workers.handlers.base import Handler

_MODULES = {
    "probe": "workers.handlers.probe",
}


def handler_for(job_type: str) -> Handler:
    module = importlib.import_module(_MODULES[job_type])
    handle: Handler = module.handle
    return handle
