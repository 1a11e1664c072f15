"""The inference service answers the API only: a shared ``GRISTMILL_INFERENCE_TOKEN``, presented
by the API as ``Authorization: Bearer`` on every completion it forwards, with the tenant whose
request it is (``X-Gristmill-Tenant``, the key of the service's per-tenant limit)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from inference.server import create_app as create_inference_app
from inference.settings import InferenceSettings
from tests.api.test_errors_and_auth import assert_error
from tests.conftest import TEST_BROKER_URL, RunJob
from tests.jobs.test_model_jobs import job_of, tar_bytes, upload_model
from tests.pipeline.finetune_helpers import build_base

TOKEN = "a-token-for-this-test-only"
pytestmark = pytest.mark.timeout(600)


def api(settings: Settings, token: str | None) -> TestClient:
    redis.Redis.from_url(TEST_BROKER_URL).flushdb()
    app = create_app(settings.model_copy(update={"inference_token": token}), run_reaper=False)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def model(
    client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path
) -> Iterator[str]:
    model = upload_model(client, auth, tar_bytes(build_base("qwen2", tmp_path / "base")))
    assert run_job(job_of(client, auth, model))["status"] == "succeeded"
    yield str(model["id"])


def test_the_api_presents_the_token_and_the_tenant_to_the_service(
    settings: Settings, auth: dict[str, str], tenant: str, model: str
) -> None:
    service = create_inference_app(
        InferenceSettings(
            device="cpu",
            memory_budget_bytes=2**28,
            token=TOKEN,
            model_root=settings.resolved_storage_dir,
        )
    )
    body = {"model": model, "prompt": "hello", "max_tokens": 2}
    tenants: list[str | None] = []

    async def seen(request: httpx.Request) -> None:
        tenants.append(request.headers.get("X-Gristmill-Tenant"))

    for token, status in ((TOKEN, 200), (None, 503), ("not-the-token", 503)):
        with api(settings, token) as client:
            transport = httpx.ASGITransport(app=service)
            client.app.state.inference = httpx.AsyncClient(  # type: ignore[attr-defined]
                transport=transport, timeout=60, event_hooks={"request": [seen]}
            )
            answer = client.post("/v1/completions", json=body, headers=auth)
        if status == 200:
            assert answer.status_code == 200, answer.text
        else:  # a misconfiguration, not the tenant's fault: no token talk in the answer
            assert_error(answer, 503, code="inference_unavailable")
            assert "token" not in answer.text.lower()
    assert tenants == [tenant] * 3  # the service's per-tenant share is keyed on it
