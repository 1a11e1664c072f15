"""A quiet start: a worker and the inference service, started as real processes the way an
operator starts them, and a job's first import of the ML stack print nothing of the third-party
import noise (torchao's failed loads of its CUDA kernels, torch's pytree deprecation), while
every other message of those libraries' loggers still shows."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from tests.e2e import procs
from tests.e2e.procs import GRISTMILL
from tests.e2e.stack import StackFactory
from tests.serving import free_port
from tests.timing import scaled, wait_for

pytestmark = pytest.mark.slow

NOISE = re.compile(r"torchao|_C_mxfp8|_C_cutlass|_pytree|register_constant\(\)|Detected no triton")


def noise(log: str) -> list[str]:
    return [line for line in log.splitlines() if NOISE.search(line)]


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_worker_and_inference_service_start_without_import_noise(
    make_stack: StackFactory,
) -> None:
    stack = make_stack()
    worker = stack.start_worker()
    port = free_port()
    inference = procs.start(
        "inference",
        [GRISTMILL, "inference", "--host", "127.0.0.1", "--port", str(port)],
        env=procs.clean_env(inference_device="cpu"),
        log_dir=stack.root / "logs",
    )
    stack.started.append(inference)
    # The service imports transformers (and with it torchao, where installed) before it listens.
    wait_for(
        lambda: healthy(f"http://127.0.0.1:{port}/health"),
        timeout=120,
        what="the inference service's /health",
        logs=[inference],
    )
    assert " ready." in worker.log()
    assert noise(worker.log()) == []
    assert noise(inference.log()) == []


# What a worker's pool process does on a quantise or fine-tune job: the logging of `gristmill
# worker` (inherited over fork) is set up, then the job's handler imports transformers, peft and
# the quantisers. A torchao message that is not import noise must still come through.
FIRST_JOB_IMPORT = """
import logging
from app.logging import setup_logging
setup_logging()
logging.getLogger("torchao").warning("an ordinary torchao warning")
import workers.handlers.finetune
import workers.handlers.quantize
import inference.transformers_engine
"""


def test_a_jobs_first_import_of_the_ml_stack_logs_no_import_noise() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FIRST_JOB_IMPORT],
        capture_output=True,
        text=True,
        timeout=scaled(180),
        env=procs.clean_env(),
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "WARNING torchao: an ordinary torchao warning" in output
    assert [line for line in noise(output) if "an ordinary torchao warning" not in line] == []
