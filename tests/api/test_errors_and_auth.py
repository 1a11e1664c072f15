"""Bad input gets a 4xx with the error envelope, never a 500; keys and tenants are enforced."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.api.errors import render

PROBE = {"type": "probe", "params": {"duration_s": 1}}


def assert_error(response, status: int, code: str | None = None, param: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"type": "probe", "params": {"duration_s": "soon"}}, "params.duration_s"),
        ({"type": "probe", "params": {"duration_s": 99999}}, "params.duration_s"),
        ({"type": "probe", "params": {"duration_s": -1}}, "params.duration_s"),
        ({"type": "probe", "params": {"matmul_size": 10**40}}, "params.matmul_size"),
        ({"type": "probe", "params": {"matmul_size": 1e308}}, "params.matmul_size"),
        ({"type": "probe", "params": {"unknown_field": 1}}, "params.unknown_field"),
        ({"type": "probe", "params": {}, "status": "succeeded"}, "status"),
        ({"type": "probe", "params": {}, "tenant_id": "ten_x"}, "tenant_id"),
        ({"type": "probe", "params": {"device": "tpu"}}, "params.device"),
        ({"type": "probe", "params": [1, 2]}, "params"),
    ],
)
def test_invalid_parameters_are_422_naming_the_field(
    client: TestClient, auth: dict[str, str], body: dict, param: str
) -> None:
    assert_error(client.post("/v1/jobs", json=body, headers=auth), 422, param=param)


def test_unknown_job_type_is_422(client: TestClient, auth: dict[str, str]) -> None:
    error = assert_error(client.post("/v1/jobs", json={"type": "mine_bitcoin"}, headers=auth), 422)
    assert "type" in (error["param"] or "") or "type" in error["message"]


def test_nul_bytes_are_refused(client: TestClient, auth: dict[str, str]) -> None:
    body = {"type": "probe", "params": {"fail_with": "a\x00b"}}
    assert_error(client.post("/v1/jobs", json=body, headers=auth), 422)
    response = client.get("/v1/jobs?type=pro%00be", headers=auth)
    assert_error(response, 422)


def test_malformed_json_is_400(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post(
        "/v1/jobs",
        content=b'{"type": "probe", ',
        headers={**auth, "Content-Type": "application/json"},
    )
    assert_error(response, 400, code="invalid_json")


@pytest.mark.parametrize("body", [b"[]", b'"probe"', b"null", b"{}", b"1e999999"])
def test_wrong_shaped_json_is_4xx(client: TestClient, auth: dict[str, str], body: bytes) -> None:
    response = client.post(
        "/v1/jobs", content=body, headers={**auth, "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "limit=abc", "after=../../etc", "status=exploded"]
)
def test_bad_list_parameters_are_422(client: TestClient, auth: dict[str, str], query: str) -> None:
    assert_error(client.get(f"/v1/jobs?{query}", headers=auth), 422)


def test_unknown_route_is_404_envelope(client: TestClient, auth: dict[str, str]) -> None:
    assert_error(client.get("/v1/nope", headers=auth), 404, code="not_found")


def test_unknown_job_is_404(client: TestClient, auth: dict[str, str]) -> None:
    assert_error(
        client.get("/v1/jobs/job_01ARZ3NDEKTSV4RRFFQ69G5FAV", headers=auth), 404, "job.not_found"
    )


@pytest.mark.parametrize(
    "path", ["/v1/jobs/{}", "/v1/datasets/{}", "/v1/models/{}", "/v1/comparisons/{}"]
)
def test_a_404_echoes_only_a_short_prefix_of_a_long_id(
    client: TestClient, auth: dict[str, str], path: str
) -> None:
    hostile = "job_" + "<script>x</script>" * 400
    response = client.get(path.format(hostile), headers=auth)
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert len(message) < 120 and "</script>" * 2 not in message, message


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer gm_not-a-real-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "gm_no_scheme"},
    ],
)
def test_missing_or_wrong_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    error = assert_error(client.get("/v1/jobs", headers=headers), 401)
    assert error["type"] == "authentication_error"
    assert_error(client.post("/v1/jobs", json=PROBE, headers=headers), 401)


def test_another_tenants_job_is_404_everywhere(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    job = client.post("/v1/jobs", json=PROBE, headers=auth).json()
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("GET", f"/v1/jobs/{job['id']}/metrics"),
    ]:
        assert_error(client.request(method, path, headers=other_auth), 404, "job.not_found")
    assert client.get("/v1/jobs", headers=other_auth).json()["data"] == []
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] == "queued"


def test_unexpected_errors_are_500_with_a_request_id_and_no_traceback(
    client: TestClient, auth: dict[str, str]
) -> None:
    def boom() -> None:
        raise RuntimeError("secret internals")

    client.app.add_api_route("/v1/boom", boom)  # type: ignore[attr-defined]
    response = client.get("/v1/boom", headers={"X-Request-ID": "req-123", **auth})

    error = assert_error(response, 500, code="internal_error")
    assert "req-123" in error["message"]
    assert "secret" not in response.text


def test_error_envelope_shape() -> None:
    response = render(409, "clash", code="conflict", param="x")
    assert response.status_code == 409
    assert (
        response.body == b'{"error":{"message":"clash","type":"invalid_request_error",'
        b'"param":"x","code":"conflict"}}'
    )
