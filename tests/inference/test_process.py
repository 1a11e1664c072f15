"""``gristmill inference`` as a real process on a real socket: health, a real SSE stream, and a
client that hangs up mid-stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.inference.conftest import spec
from tests.serving import free_port
from tests.timing import scaled, wait_for


@pytest.mark.slow
def test_inference_process_streams_and_stops_on_hangup(service: str, llama_dir: Path) -> None:
    request = {
        "model": spec(llama_dir),
        "messages": [{"role": "user", "content": "hello mill"}],
        "max_tokens": 20,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{service}/v1/chat/completions", json=request, timeout=30) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert httpx.get(f"{service}/health").json()["stats"]["completed"] == 1

    # Hang up after the first token of a long generation: the service stops it.
    long = {**request, "max_tokens": 55, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{service}/v1/chat/completions", json=long, timeout=30) as resp:
        for line in resp.iter_lines():
            if '"content"' in line:
                break
    health = wait_for(
        lambda: (h := httpx.get(f"{service}/health").json())["running"] == 0 and h,
        timeout=10,
        interval=0.05,
        what="the service to stop the abandoned generation",
    )
    assert health["running"] == 0 and health["waiting"] == 0
    assert health["stats"]["completed"] + health["stats"]["cancelled"] == 2


def test_without_a_token_it_listens_on_loopback_only() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRISTMILL_INFERENCE_TOKEN"}
    port = str(free_port())
    cmd = [sys.executable, "-m", "app.cli", "inference", "--host", "0.0.0.0", "--port", port]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=scaled(15))
    assert done.returncode != 0
    assert "GRISTMILL_INFERENCE_TOKEN" in done.stderr
    assert "refusing to listen on 0.0.0.0" in done.stderr
