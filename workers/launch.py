"""Run a pipeline stage on several GPUs: torchrun in a subprocess, talking through files.

The job layer calls :func:`run_distributed` exactly where it would call the stage in-process,
with the same arguments and the stage named as ``"pipeline.<module>:<function>"``. It
writes ``run.json`` (stage, config, inputs, paths; all through the one codec), starts
``torchrun --standalone --nproc-per-node N -m pipeline --config run.json``, forwards each
line rank 0 appends to ``progress.jsonl`` to the job's hooks, writes a ``STOP`` file once
``hooks.should_stop()`` answers True, and returns (or raises) what rank 0 wrote to
``result.json`` (the stage's encoded result). The database never enters a torchrun child.
DB-free, so it is testable on CPU with gloo.

Multi-node (not built; what it would take): replace ``--standalone`` with a rendezvous every
node can reach and start the same command on each node::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint <node0-host>:29400 --rdzv-id <job_id> -m pipeline --config ...

``--rdzv-id`` must be unique per job attempt (use the job id + attempt) so a retried job never
joins a stale group; ``work_dir`` and ``cache_dir`` must be on storage all nodes share (only
global rank 0 writes checkpoints, results and progress, and every rank reads the token cache);
set ``NCCL_SOCKET_IFNAME`` / ``NCCL_IB_HCA`` for the cluster fabric, and give ``--max-restarts 0``
so a lost node fails the attempt and the reaper resumes it from the last checkpoint instead of
torchrun restarting the ranks in place. ``PretrainConfig.devices`` and
``FinetuneConfig.devices`` are then nodes × GPUs (a fine-tune's FSDP shards over all of them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.configs.codec import encode
from pipeline.types import (
    Hooks,
    PipelineError,
    Progress,
    RetryableError,
    RunPaths,
    StageCancelled,
    split_stage_name,
)

_POLL_S = 0.2
_REPO_ROOT = Path(__file__).resolve().parents[1]


STOP_GRACE_S = 120.0  # ranks finish their step and save a checkpoint within this after STOP


def run_distributed(
    stage: str,
    config: Any,
    inputs: Any,
    paths: RunPaths,
    hooks: Hooks,
    nproc: int,
    *,
    stop_grace_s: float = STOP_GRACE_S,
) -> dict[str, Any]:
    """Run ``stage`` on ``nproc`` local processes and return rank 0's encoded result.

    ``stage`` is ``"pipeline.<module>:<function>"``, a function of the shared stage
    shape ``(config, inputs, paths, hooks)``; decode the returned dict with the stage's result
    type when its fields are needed as objects.

    Raises:
        PipelineError: the stage failed with a user-facing error (mirrored from result.json).
        StageCancelled: the stage stopped after ``hooks.should_stop()`` (checkpoint saved).
        RetryableError: the processes died without a result (crash, OOM kill).
        ValueError: ``stage`` does not name a function under ``pipeline``.
    """
    split_stage_name(stage)  # refuse before anything is written or started
    work = paths.work_dir
    for stale in ("STOP", "result.json", "progress.jsonl"):
        (work / stale).unlink(missing_ok=True)
    run_json = work / "run.json"
    payload = {"stage": stage, "config": config, "inputs": inputs, "paths": paths}
    run_json.write_text(json.dumps({k: encode(v) for k, v in payload.items()}))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "--max-restarts=0",
        "-m", "pipeline", "--config", str(run_json),
    ]  # fmt: skip
    # The children must import this checkout's `workers`, wherever the worker's cwd is.
    pythonpath = [str(_REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    log_path = work / "launch.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            cmd, cwd=_REPO_ROOT, env=env, stdout=log, stderr=log, start_new_session=True
        )
        _GROUPS.add(process.pid)
        try:
            forced = _follow(process, work, hooks, stop_grace_s)
        finally:
            if process.poll() is None:  # we are being torn down: do not leave ranks running
                _end_group(process)
            _GROUPS.discard(process.pid)
    if forced:
        raise StageCancelled(f"the ranks did not stop within {stop_grace_s:.0f} s; ended them")
    return _read_result(work, process.returncode, log_path)


def _follow(
    process: subprocess.Popen[bytes], work: Path, hooks: Hooks, stop_grace_s: float
) -> bool:
    """Forward progress lines until the process exits; write STOP when asked to stop. Ranks
    that have not stopped ``stop_grace_s`` after STOP (hung in a collective, deaf to the file)
    are ended: SIGTERM to the whole group, then SIGKILL. Returns whether that happened."""
    progress = work / "progress.jsonl"
    offset = 0
    stop_written_at: float | None = None
    while True:
        exited = process.poll() is not None
        offset = _forward_new_lines(progress, offset, hooks)
        if exited:
            return False
        if stop_written_at is None and hooks.should_stop():
            (work / "STOP").touch()
            stop_written_at = time.monotonic()
        if stop_written_at is not None and time.monotonic() - stop_written_at > stop_grace_s:
            _end_group(process)
            return True
        time.sleep(_POLL_S)


def _forward_new_lines(progress: Path, offset: int, hooks: Hooks) -> int:
    if not progress.exists():
        return offset
    with progress.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    # Only complete lines: rank 0 may be halfway through writing the last one.
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].splitlines():
        record = json.loads(line)
        if record["kind"] == "progress":
            hooks.on_progress(Progress(record["step"], record["total"], record["metrics"]))
        else:
            hooks.on_event(record["message"], record["data"], record["level"])
    return offset + end


def _read_result(work: Path, returncode: int, log_path: Path) -> dict[str, Any]:
    result_path = work / "result.json"
    if not result_path.exists():
        tail = log_path.read_bytes()[-4000:].decode("utf-8", "replace")
        raise RetryableError(f"torchrun exited with {returncode} and no result:\n{tail}")
    outcome: Mapping[str, Any] = json.loads(result_path.read_text())
    if outcome["status"] == "failed":
        raise PipelineError(outcome["code"], outcome["message"])
    if outcome["status"] == "cancelled":
        raise StageCancelled(outcome["message"])
    return dict(outcome["result"])


# Process groups of the torchrun launches running in this process (one per running job).
_GROUPS: set[int] = set()
_TERM_GRACE_S = 30.0


def _end_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole rank group, then SIGKILL whatever is left after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=_TERM_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def kill_launched_groups() -> None:
    """SIGKILL every rank group this process started: the last resort before it ends itself."""
    for pgid in list(_GROUPS):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
