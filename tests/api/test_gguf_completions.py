"""A model quantised to GGUF is called through the API as its Hugging Face parent is: upload →
import → quantize job (f32) → ``/v1/completions`` and ``/v1/chat/completions``, streamed or not,
answered by llama.cpp in the real inference service."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from inference.server import create_app as create_inference_app
from inference.settings import InferenceSettings
from tests.conftest import RunJob
from tests.jobs.test_model_jobs import job_of, tar_bytes, upload_model
from tests.pipeline.finetune_helpers import build_base

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def inference(client: TestClient, settings: Settings) -> None:
    """Completions reach the real inference service, in this process (on the ASGI transport)."""
    service = create_inference_app(
        InferenceSettings(
            device="cpu", memory_budget_bytes=2**28, model_root=settings.resolved_storage_dir
        )
    )
    transport = httpx.ASGITransport(app=service)
    client.app.state.inference = httpx.AsyncClient(transport=transport, timeout=60)  # type: ignore[attr-defined]


def quantised(
    client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path
) -> tuple[str, str]:
    """The ids of a ready Hugging Face model and of its f32 GGUF."""
    model = upload_model(client, auth, tar_bytes(build_base("qwen2", tmp_path / "base")))
    assert run_job(job_of(client, auth, model))["status"] == "succeeded"
    body = {
        "type": "quantize",
        "params": {"model_id": model["id"], "format": "gguf", "gguf": {"types": ["f32"]}},
    }
    job = client.post("/v1/jobs", json=body, headers=auth)
    assert job.status_code == 202, job.text
    done = run_job(job.json()["id"])
    assert done["status"] == "succeeded", done
    (gguf_id,) = done["result"]["model_ids"]
    return str(model["id"]), str(gguf_id)


def test_a_gguf_model_answers_completions_and_chats_like_its_parent(
    client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path, inference: None
) -> None:
    parent, gguf = quantised(client, auth, run_job, tmp_path)
    chat = {"messages": [{"role": "user", "content": "Format: anna in oslo"}], "max_tokens": 8}
    completion = {"prompt": "Format: anna in", "max_tokens": 8}
    for path, body in (("/v1/chat/completions", chat), ("/v1/completions", completion)):
        greedy = {**body, "temperature": 0}
        from_gguf = client.post(path, json={**greedy, "model": gguf}, headers=auth)
        from_parent = client.post(path, json={**greedy, "model": parent}, headers=auth)
        assert from_gguf.status_code == 200, from_gguf.text
        assert from_gguf.json()["model"] == gguf
        # f32 in llama.cpp decodes greedily what the Hugging Face model decodes.
        assert from_gguf.json()["choices"] == from_parent.json()["choices"]
        assert from_gguf.json()["usage"] == from_parent.json()["usage"]

        with client.stream(
            "POST", path, json={**greedy, "model": gguf, "stream": True}, headers=auth
        ) as resp:
            assert resp.status_code == 200
            events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
        text = "".join(c["delta"].get("content", "") if "delta" in c else c["text"] for c in chunks)
        choice = from_gguf.json()["choices"][0]
        assert text == (choice["message"]["content"] if "message" in choice else choice["text"])
