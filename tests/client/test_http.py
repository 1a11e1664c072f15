"""The HTTP client against scripted servers (httpx.MockTransport): retries and backoff,
pagination, streamed uploads and verified downloads, and the watch loop through an outage; and
a model folder packed for upload."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.http import ApiError, GristmillClient, RetryPolicy, parse_retry_after
from client.transfers import ChecksumMismatch, pack_folder
from client.watch import watch_job

Handler = Callable[[httpx.Request], httpx.Response]


def error(status: int, code: str, **headers: str) -> httpx.Response:
    body = {"error": {"message": f"{code} happened", "type": "x", "param": None, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


def make_client(handler: Handler, sleeps: list[float], attempts: int = 4) -> GristmillClient:
    return GristmillClient(
        "http://gm.test",
        "gm_key",
        retry=RetryPolicy(attempts=attempts, base_s=0.1, max_s=10),
        transport=httpx.MockTransport(handler),
        sleep=sleeps.append,
    )


def scripted(
    responses: Sequence[httpx.Response | Exception],
) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering with ``responses`` in order (an exception is raised instead)."""
    seen: list[httpx.Request] = []
    queue = iter(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        answer = next(queue)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler, seen


def test_503_is_retried_after_the_seconds_retry_after_asks() -> None:
    handler, seen = scripted(
        [error(503, "db_unavailable", **{"Retry-After": "3"})] * 2 + [httpx.Response(200, json={})]
    )
    sleeps: list[float] = []

    make_client(handler, sleeps).get("/jobs/job_1")

    assert len(seen) == 3
    assert sleeps == [3.0, 3.0]  # the server's wait, longer than the 0.1-0.2 s backoff
    assert seen[0].headers["Authorization"] == "Bearer gm_key"


def test_429_with_an_http_date_waits_until_that_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now=now) == 0
    assert parse_retry_after("garbage") is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    handler, seen = scripted(
        [error(429, "rate_limited", **{"Retry-After": when}), httpx.Response(200, json={})]
    )
    sleeps: list[float] = []

    make_client(handler, sleeps).get("/jobs")

    assert len(seen) == 2 and 3.5 < sleeps[0] <= 5.0


def test_backoff_grows_and_the_last_error_is_raised_when_attempts_run_out() -> None:
    handler, seen = scripted([error(503, "db_unavailable")] * 4)
    sleeps: list[float] = []

    with pytest.raises(ApiError) as raised:
        make_client(handler, sleeps).get("/jobs")

    assert (raised.value.status, raised.value.code) == (503, "db_unavailable")
    assert len(seen) == 4 and len(sleeps) == 3
    # attempt n waits base * 2**n, jittered down to half of it at most
    for n, slept in enumerate(sleeps):
        assert 0.1 * 2**n / 2 <= slept <= 0.1 * 2**n


def test_a_client_error_is_not_retried_and_keeps_the_envelope() -> None:
    body = {"error": {"message": "bad lr", "type": "x", "param": "params.lr", "code": "invalid"}}
    handler, seen = scripted([httpx.Response(422, json=body)])

    with pytest.raises(ApiError) as raised:
        make_client(handler, []).jobs.submit("pretrain", {"lr": -1})

    assert len(seen) == 1
    assert (raised.value.status, raised.value.param, raised.value.message) == (
        422,
        "params.lr",
        "bad lr",
    )


def test_a_dropped_connection_is_retried_and_a_submit_keeps_its_idempotency_key() -> None:
    handler, seen = scripted(
        [httpx.ConnectError("refused"), httpx.ReadError("reset"), httpx.Response(202, json={})]
    )
    sleeps: list[float] = []

    make_client(handler, sleeps).jobs.submit("probe", {})

    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(seen) == 3 and len(keys) == 1  # the server answers the retry with the same job
    assert json.loads(seen[0].content) == {"type": "probe", "params": {}}


def test_pages_are_followed_with_the_last_id_as_cursor() -> None:
    pages = {
        None: ({"data": [{"id": "job_3"}, {"id": "job_2"}], "has_more": True}),
        "job_2": ({"data": [{"id": "job_1"}], "has_more": True}),
        "job_1": ({"data": [], "has_more": False}),
    }
    cursors: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        cursors.append(after)
        assert request.url.params["status"] == "running"
        return httpx.Response(200, json=pages[after])

    jobs = list(make_client(handler, []).jobs.list(status="running", limit=2))

    assert [j["id"] for j in jobs] == ["job_3", "job_2", "job_1"]
    assert cursors == [None, "job_2", "job_1"]


def test_metric_pages_are_cut_at_whole_steps() -> None:
    """A page ending inside step 2 → step 2 is asked for again; every point comes once."""
    rows: list[dict[str, Any]] = [
        {"step": s, "name": n, "value": s * 10 + i} for s in (1, 2, 3) for i, n in enumerate("ab")
    ]
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after_step")
        asked.append(after)
        later = [r for r in rows if after is None or r["step"] > int(after)]
        limit = 3
        return httpx.Response(200, json={"data": later[:limit], "has_more": len(later) > limit})

    points = list(make_client(handler, []).jobs.metrics("job_1", limit=3))

    assert points == rows
    assert asked == [None, "1", "2"]


def serve_upload(
    received: list[bytes], answers: Iterator[int], stored: bytes, deleted: list[str]
) -> Handler:
    """An upload endpoint that records the bodies and says it stored ``stored``'s sha256."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            deleted.append(request.url.path)
            return httpx.Response(204)
        received.append(request.read())
        assert "chunked" not in request.headers.get("Transfer-Encoding", "")
        assert int(request.headers["Content-Length"]) == len(received[-1])
        status = next(answers)
        if status != 202:
            return error(status, "busy", **{"Retry-After": "1"})
        digest = hashlib.sha256(stored).hexdigest()
        return httpx.Response(202, json={"id": "ds_1", "status": "validating", "sha256": digest})

    return handler


def test_upload_streams_the_file_reports_progress_and_checks_the_stored_sha256(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * 3000  # 768 kB: several chunks
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(data)
    received: list[bytes] = []
    progress: list[int] = []
    deleted: list[str] = []
    client = make_client(serve_upload(received, iter([503, 202]), data, deleted), [])

    dataset = client.datasets.upload(path, name="c", on_progress=progress.append)

    assert dataset["id"] == "ds_1" and deleted == []
    assert len(received) == 2 and all(data in body for body in received)
    assert b'name="name"\r\n\r\nc' in received[-1]
    assert sum(progress) == len(data)  # the retry rewound the bar to zero first
    assert any(n < 0 for n in progress) and max(progress) < len(data)


def test_an_upload_the_server_stored_differently_is_deleted(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"text": "a"}\n')
    deleted: list[str] = []
    client = make_client(serve_upload([], iter([202]), b"something else", deleted), [])

    with pytest.raises(ChecksumMismatch, match="deleted"):
        client.datasets.upload(path)

    assert deleted == ["/v1/datasets/ds_1"]


def test_an_upload_cut_off_is_not_sent_twice(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"text": "a"}\n')
    handler, seen = scripted([httpx.ReadError("reset"), httpx.Response(202, json={})])

    with pytest.raises(httpx.ReadError):
        make_client(handler, []).datasets.upload(path)

    assert len(seen) == 1


def serve_file(content: bytes, *, drops: int = 0) -> Handler:
    state = {"drops": drops}

    def handler(request: httpx.Request) -> httpx.Response:
        if state["drops"]:
            state["drops"] -= 1
            raise httpx.RemoteProtocolError("peer closed connection")
        return httpx.Response(200, content=content)

    return handler


def test_download_lands_only_when_its_sha256_matches(tmp_path: Path) -> None:
    content = b"weights" * 1000
    sleeps: list[float] = []
    progress: list[int] = []
    client = make_client(serve_file(content, drops=1), sleeps)
    target = tmp_path / "out" / "model.safetensors"

    client.download(
        "/x", target, sha256=hashlib.sha256(content).hexdigest(), on_progress=progress.append
    )

    assert target.read_bytes() == content and len(sleeps) == 1
    assert sum(progress) == len(content)

    bad = tmp_path / "bad.bin"
    with pytest.raises(ChecksumMismatch):
        client.download("/x", bad, sha256="0" * 64)
    assert not bad.exists() and not bad.with_name("bad.bin.part").exists()


def test_artifact_download_checks_the_manifest_and_every_file(tmp_path: Path) -> None:
    files = {"config.json": b"{}", "sub/model.safetensors": b"w" * 5000}
    manifest: list[dict[str, Any]] = [
        {"path": p, "size_bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
        for p, b in sorted(files.items())
    ]
    identity = hashlib.sha256(json.dumps(manifest, indent=1, sort_keys=True).encode()).hexdigest()
    tampered = {"sub/model.safetensors"}

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1/models/mdl_1")
        if path == "":
            return httpx.Response(200, json={"id": "mdl_1", "sha256": identity})
        if path == "/files":
            listed = [{"object": "file", **m} for m in manifest]
            return httpx.Response(200, json={"data": listed, "has_more": False})
        name = path.removeprefix("/files/")
        return httpx.Response(200, content=files[name] + (b"!" if name in tampered else b""))

    client = make_client(handler, [])
    with pytest.raises(ChecksumMismatch, match=r"model\.safetensors"):
        client.models.download("mdl_1", tmp_path)
    assert not (tmp_path / "mdl_1" / "sub" / "model.safetensors").exists()

    tampered.clear()
    root = client.models.download("mdl_1", tmp_path)
    assert {p: (root / p).read_bytes() for p in files} == files

    manifest[0]["size_bytes"] += 1  # a file list that does not hash to the artifact's sha256
    with pytest.raises(ChecksumMismatch, match="file list"):
        client.models.files("mdl_1")


class RecordingView:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def start(self, job: Any) -> None:
        self.lines.append("start")

    def update(self, job: Any, metrics: Any) -> None:
        self.lines.append(f"update {job['status']} {dict(metrics)}")

    def event(self, event: Any) -> None:
        self.lines.append(f"event {event['message']}")

    def notice(self, text: str) -> None:
        self.lines.append(f"notice {text}")

    def stop(self) -> None:
        self.lines.append("stop")

    def final(self, job: Any) -> None:
        self.lines.append(f"final {job['status']}")


def test_watch_rides_out_a_dropped_connection_with_backoff() -> None:
    """Polls that fail to connect → one 'connection lost' notice, waits that double, then
    'reconnected' and the watch carries on from the last event seen to the final state."""
    job_statuses = iter(["queued", "running", "succeeded"])
    outage = {"left": 0}
    events_after: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if outage["left"]:
            outage["left"] -= 1
            raise httpx.ConnectError("connection refused")
        path = request.url.path
        if path.endswith("/events"):
            after = request.url.params.get("after")
            events_after.append(after)
            if after is None:
                # From the metrics request on, three polls fail (the client tries each twice).
                outage["left"] = 6
                data = [{"id": 1, "message": "checkpoint", "level": "info"}]
                return httpx.Response(200, json={"data": data, "has_more": False})
            return httpx.Response(200, json={"data": [], "has_more": False})
        if path.endswith("/metrics"):
            point = {"step": 5, "name": "train_loss", "value": 2.5}
            return httpx.Response(200, json={"data": [point], "has_more": False})
        return httpx.Response(200, json={"id": "job_1", "status": next(job_statuses)})

    sleeps: list[float] = []
    client = make_client(handler, sleeps, attempts=2)
    view = RecordingView()

    job = watch_job(client, "job_1", view, interval=1.0, max_backoff=3.0, sleep=sleeps.append)

    assert job["status"] == "succeeded"
    assert view.lines[-1] == "final succeeded"
    notices = [line for line in view.lines if line.startswith("notice")]
    assert len(notices) == 2 and "connection lost" in notices[0] and "reconnected" in notices[1]
    assert [line for line in view.lines if line.startswith("event")] == ["event checkpoint"]
    assert events_after[0] is None and set(events_after[1:]) == {"1"}
    watch_waits = [s for s in sleeps if s >= 1.0]
    assert watch_waits == [1.0, 2.0, 3.0]  # backoff 1, 2, then capped at 3
    assert "update succeeded {'train_loss': 2.5}" in view.lines


def test_a_model_folder_packs_with_links_followed_and_hidden_folders_left_out(
    tmp_path: Path,
) -> None:
    """A Hugging Face cache snapshot is a folder of links into its blobs: the tar holds the
    files themselves (the import refuses links), under one top folder; .git and .cache stay out."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "abc123").write_bytes(b"weights")
    folder = tmp_path / "snapshot"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").symlink_to(blobs / "abc123")
    (folder / "sub" / "tokenizer.json").write_text("{}")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs")
    for hidden in (".git", ".cache"):
        (folder / hidden).mkdir()
        (folder / hidden / "HEAD").write_text("x")

    files = pack_folder(folder, tmp_path / "out.tar")

    with tarfile.open(tmp_path / "out.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
        weights = tar.extractfile(members["snapshot/model.safetensors"])
        assert weights is not None and weights.read() == b"weights"
    assert sorted(members) == [
        "snapshot/.gitattributes",
        "snapshot/config.json",
        "snapshot/model.safetensors",
        "snapshot/sub/tokenizer.json",
    ]
    assert files == 4 and all(m.isfile() for m in members.values())
