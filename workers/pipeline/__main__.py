"""``python -m workers.pipeline <stage> --config run.json``: run a stage for torchrun or a human.

``run.json`` holds everything a stage needs, as JSON::

    {"config": {...PretrainConfig...}, "tokenizer": {...TokenizerConfig...} | null,
     "paths": {"work_dir": "...", "output_dir": "...", "cache_dir": "..." | null},
     "train": {"path": "...", "format": "jsonl", "compression": null, "options": {}},
     "validation": {...} | null, "tokenizer_dir": "..." | null}

Under torchrun every rank runs the stage; rank 0 alone reports. Its hooks append JSON lines to
``<work_dir>/progress.jsonl`` and answer ``should_stop`` by looking for ``<work_dir>/STOP`` (the
stage broadcasts rank 0's answer, so all ranks stop on the same step). When the stage ends, rank
0 writes ``<work_dir>/result.json``: ``{"status": "succeeded", "result": {...}}``, or
``{"status": "failed", "code", "message"}``, or ``{"status": "cancelled", "message"}``.
Exit status: 0 succeeded, 3 failed, 4 cancelled (non-zero ranks exit 0 on handled outcomes so
that torchrun does not kill rank 0 while it writes the result).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist

from workers.pipeline.configs.training import pretrain_config_from_dict, tokenizer_config_from_dict
from workers.pipeline.device import init_distributed, teardown_distributed
from workers.pipeline.pretrain import PretrainInputs, run_pretrain
from workers.pipeline.tokenizer import TokenizerInputs, ensure_tokenizer, run_tokenizer
from workers.pipeline.types import (
    DatasetFile,
    Hooks,
    PipelineError,
    Progress,
    RunPaths,
    StageCancelled,
)

EXIT_FAILED = 3
EXIT_CANCELLED = 4


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


def _dataset(data: Mapping[str, Any] | None) -> DatasetFile | None:
    return None if data is None else DatasetFile.from_json(data)


def _run_stage(stage: str, payload: Mapping[str, Any], hooks: Hooks, is_main: bool) -> Any:
    raw_paths = payload["paths"]
    cache_dir = raw_paths.get("cache_dir")
    paths = RunPaths(
        work_dir=Path(raw_paths["work_dir"]),
        output_dir=Path(raw_paths["output_dir"]),
        cache_dir=Path(cache_dir) if cache_dir else None,
    )
    train = _dataset(payload["train"])
    assert train is not None, "run.json needs a train dataset"
    if stage == "tokenizer":
        tok = tokenizer_config_from_dict(payload["config"])
        return run_tokenizer(tok, TokenizerInputs(train), paths, hooks)
    tokenizer_dir = Path(payload["tokenizer_dir"]) if payload.get("tokenizer_dir") else None
    if tokenizer_dir is None:
        tokenizer_dir = paths.work_dir / "tokenizer"
        if is_main:  # one rank trains; the others wait for its files
            tok_config = tokenizer_config_from_dict(payload["tokenizer"])
            ensure_tokenizer(tok_config, TokenizerInputs(train), paths, hooks)
        if dist.is_initialized():
            dist.barrier()
    config = pretrain_config_from_dict(payload["config"])
    inputs = PretrainInputs(train, _dataset(payload.get("validation")), tokenizer_dir)
    return run_pretrain(config, inputs, paths, hooks)


def _write_result(work_dir: Path, outcome: Mapping[str, Any]) -> None:
    tmp = work_dir / f"result.json.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(outcome, default=str, indent=1))
    os.replace(tmp, work_dir / "result.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.pipeline")
    parser.add_argument("stage", choices=["pretrain", "tokenizer"])
    parser.add_argument("--config", type=Path, required=True, help="run.json")
    args = parser.parse_args(argv)
    payload = json.loads(args.config.read_text())
    work_dir = Path(payload["paths"]["work_dir"])
    info = init_distributed()
    hooks = file_hooks(work_dir) if info.is_main else Hooks()
    outcome: dict[str, Any]
    try:
        result = _run_stage(args.stage, payload, hooks, info.is_main)
        outcome, code = {"status": "succeeded", "result": dataclasses.asdict(result)}, 0
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
