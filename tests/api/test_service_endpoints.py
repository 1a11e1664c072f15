"""Health, readiness, OpenAPI, offline docs and Prometheus metrics."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.main import create_app
from app.settings import Settings


def test_health_needs_no_key(client: TestClient) -> None:
    assert client.get("/v1/health").json() == {"status": "ok"}


def test_ready_when_database_broker_and_store_answer(client: TestClient) -> None:
    response = client.get("/v1/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": True, "broker": True, "store": True}


def test_not_ready_when_the_database_is_unreachable(settings: Settings) -> None:
    broken = settings.model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none"}
    )
    with TestClient(create_app(broken, run_reaper=False)) as client:
        response = client.get("/v1/ready")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        assert "database" in response.json()["error"]["message"]
        jobs = client.get("/v1/jobs", headers={"Authorization": "Bearer gm_x"})
        assert jobs.status_code == 503
        assert jobs.json()["error"]["code"] == "db_unavailable"


def test_openapi_lists_the_job_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel"} <= set(spec["paths"])
    assert spec["paths"]["/v1/jobs"]["post"]["operationId"] == "jobs-create_job"


def test_docs_load_their_assets_locally(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert not re.search(r"(src|href)=\"https?://", html), page
        for asset in re.findall(r"(/docs-assets/[\w.\-]+)", html):
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000, asset


LOOPBACK = ("127.0.0.1", 50000)
ELSEWHERE = ("203.0.113.9", 50000)


def test_prometheus_metrics_count_jobs_and_requests(
    client: TestClient, auth: dict[str, str]
) -> None:
    client.post("/v1/jobs", json={"type": "probe"}, headers=auth)

    with TestClient(client.app, client=LOOPBACK) as local:
        text = local.get("/metrics").text

    assert 'gristmill_jobs{status="queued",type="probe"} 1.0' in text
    assert "gristmill_http_request_duration_seconds_bucket" in text
    assert "gristmill_queue_wait_seconds" in text


def test_metrics_answer_only_this_machine_without_a_scrape_token(settings: Settings) -> None:
    app = create_app(settings, run_reaper=False)
    with TestClient(app, client=ELSEWHERE) as remote, TestClient(app, client=LOOPBACK) as local:
        refused = remote.get("/metrics")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "metrics_forbidden"
        assert "GRISTMILL_METRICS_TOKEN" in refused.json()["error"]["message"]
        assert "gristmill_jobs" not in refused.text
        assert local.get("/metrics").status_code == 200


def test_metrics_with_a_scrape_token_need_it_from_everywhere(settings: Settings) -> None:
    app = create_app(
        settings.model_copy(update={"metrics_token": SecretStr("s3cret-scrape")}), run_reaper=False
    )
    with TestClient(app, client=ELSEWHERE) as remote, TestClient(app, client=LOOPBACK) as local:
        assert remote.get("/metrics").status_code == 401
        assert local.get("/metrics").status_code == 401
        wrong = remote.get("/metrics", headers={"Authorization": "Bearer s3cret-scrap"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
        right = remote.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
        assert right.status_code == 200 and "gristmill_jobs" in right.text
