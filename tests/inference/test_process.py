"""``gristmill inference`` as a real process on a real socket: health, a real SSE stream, and a
client that hangs up mid-stream."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.inference.conftest import spec


@pytest.fixture
def service() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRISTMILL_INFERENCE_DEVICE": "cpu", "GRISTMILL_INFERENCE_QUEUE_SIZE": "2"}
    cmd = [sys.executable, "-m", "app.cli", "inference", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "the inference process exited"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the inference process did not come up"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


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
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        health = httpx.get(f"{service}/health").json()
        if health["running"] == 0:
            break
        time.sleep(0.05)
    assert health["running"] == 0 and health["waiting"] == 0
    assert health["stats"]["completed"] + health["stats"]["cancelled"] == 2
