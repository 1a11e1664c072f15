"""The artifact store unreachable answers 503 with Retry-After, like the database does."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.store.errors import StorageUnavailable


def test_an_unreachable_store_answers_503_with_retry_after(
    client: TestClient, auth: dict[str, str]
) -> None:
    async def upload() -> None:
        raise StorageUnavailable("write datasets/ds_1/data: the storage endpoint is unreachable")

    client.app.add_api_route("/v1/storage-probe", upload, methods=["POST"])  # type: ignore[attr-defined]
    answer = client.post("/v1/storage-probe", headers=auth)
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == str(StorageUnavailable.retry_after_s)
    error = answer.json()["error"]
    assert error["code"] == "storage.unavailable" and error["type"] == "service_unavailable"
    assert "datasets/ds_1" not in error["message"]  # the operator's detail stays in the log
