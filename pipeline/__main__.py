"""``python -m pipeline --config run.json``: run any stage, for torchrun or a human.

``run.json`` names the stage and carries its arguments, each encoded with the one codec
(:mod:`pipeline.configs.codec`)::

    {"stage": "pipeline.pretrain.stage:run_pretrain",
     "config": {...PretrainConfig...}, "inputs": {...PretrainInputs...},
     "paths": {"work_dir": "...", "output_dir": "...", "cache_dir": "..." | null}}

The stage function is imported from its name, which must lie under ``pipeline.``
(:func:`~pipeline.types.split_stage_name`), and its ``config`` and ``inputs`` are decoded
from the types its signature declares, so the same rules validate them here as in the API and
the handler.

Under torchrun every rank runs the stage; rank 0 alone reports. Its hooks append JSON lines to
``<work_dir>/progress.jsonl`` and answer ``should_stop`` by looking for ``<work_dir>/STOP`` (the
stage broadcasts rank 0's answer, so all ranks stop on the same step). When the stage ends, rank
0 writes ``<work_dir>/result.json``: ``{"status": "succeeded", "result": {...}}`` (the encoded
result dataclass), or ``{"status": "failed", "code", "message"}``, or ``{"status": "cancelled",
"message"}``. Exit status: 0 succeeded, 3 failed, 4 cancelled (non-zero ranks exit 0 on handled
outcomes so that torchrun does not kill rank 0 while it writes the result).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import typing
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.configs.codec import decode, encode
from pipeline.parts.device import init_distributed, teardown_distributed
from pipeline.types import (
    Hooks,
    PipelineError,
    Progress,
    RunPaths,
    StageCancelled,
    split_stage_name,
)

EXIT_FAILED = 3
EXIT_CANCELLED = 4

Stage = Callable[[Any, Any, RunPaths, Hooks], Any]


def file_hooks(work_dir: Path) -> Hooks:
    """Hooks that talk through files in work_dir: the torchrun side of ``workers.launch``."""
    progress = work_dir / "progress.jsonl"
    stop_file = work_dir / "STOP"

    def append(record: Mapping[str, Any]) -> None:
        with progress.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def on_progress(p: Progress) -> None:
        append({"kind": "progress", "step": p.step, "total": p.total, "metrics": dict(p.metrics)})

    def on_event(message: str, data: Mapping[str, Any], level: str = "info") -> None:
        append({"kind": "event", "message": message, "data": dict(data), "level": level})

    return Hooks(on_progress=on_progress, on_event=on_event, should_stop=stop_file.exists)


def resolve_stage(name: str) -> Stage:
    """``"pipeline.<module>:<function>"`` → the function.

    Raises:
        ValueError: the name is malformed or points outside ``pipeline``.
    """
    module_name, function = split_stage_name(name)
    stage: Stage = getattr(importlib.import_module(module_name), function)
    return stage


def run_stage(payload: Mapping[str, Any], hooks: Hooks) -> Any:
    """Decode ``run.json``'s arguments with the stage's own type hints and call it."""
    stage = resolve_stage(payload["stage"])
    hints = typing.get_type_hints(stage)
    config = decode(hints["config"], payload["config"])
    inputs = decode(hints["inputs"], payload["inputs"])
    return stage(config, inputs, decode(RunPaths, payload["paths"]), hooks)


def _write_result(work_dir: Path, outcome: Mapping[str, Any]) -> None:
    tmp = work_dir / f"result.json.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(outcome, default=str, indent=1))
    os.replace(tmp, work_dir / "result.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline")
    parser.add_argument("--config", type=Path, required=True, help="run.json")
    args = parser.parse_args(argv)
    payload = json.loads(args.config.read_text())
    work_dir = Path(payload["paths"]["work_dir"])
    info = init_distributed()
    hooks = file_hooks(work_dir) if info.is_main else Hooks()
    outcome: dict[str, Any]
    try:
        result = run_stage(payload, hooks)
        outcome, code = {"status": "succeeded", "result": encode(result)}, 0
    except PipelineError as exc:
        outcome = {"status": "failed", "code": exc.code, "message": exc.message}
        code = EXIT_FAILED
    except StageCancelled as exc:
        outcome, code = {"status": "cancelled", "message": str(exc)}, EXIT_CANCELLED
    finally:
        teardown_distributed()
    if not info.is_main:
        return 0
    _write_result(work_dir, outcome)
    print(json.dumps(outcome, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
