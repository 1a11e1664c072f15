"""The inference service on object storage: models named by store key come from the bucket
through the machine's cache, downloaded once however many requests want them at once."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from app.store import StoreConfig, open_store
from app.store.cache import BlobCache
from app.store.folders import put_folder
from inference.folders import ModelFolders
from inference.server import create_app
from inference.settings import InferenceSettings
from tests.inference.conftest import run_service, spec
from tests.inference.test_gguf import export_gguf
from tests.s3server import MotoServer, free_port, s3_options, storage_env
from tests.timing import scaled

PROMPT = {"prompt": "the miller", "max_tokens": 6, "temperature": 0}


def files_in(*folders: Path) -> int:
    return sum(1 for folder in folders for path in folder.rglob("*") if path.is_file())


def s3_app(endpoint: str, bucket: str, cache_dir: Path, **options: Any) -> Any:
    store = open_store(StoreConfig(f"s3://{bucket}/gm", s3_options(endpoint, **options)))
    folders = ModelFolders(store=store, cache=BlobCache(cache_dir, 2**30))
    settings = InferenceSettings(device="cpu", memory_budget_bytes=64 * 2**20)
    return create_app(settings, folders=folders)


def test_a_model_and_its_adapter_come_from_the_bucket_once_for_concurrent_requests(
    moto_server: MotoServer,
    bucket: str,
    tmp_path: Path,
    llama_dir: Path,
    adapter_dir: Path,
    client: TestClient,
) -> None:
    store = open_store(StoreConfig(f"s3://{bucket}/gm", s3_options(moto_server.url)))
    put_folder(store, "models/base", llama_dir)
    put_folder(store, "models/adapter", adapter_dir)
    with_adapter = {"id": "tuned", "path": "models/base", "adapter_path": "models/adapter"}
    expected = client.post(
        "/v1/completions", json={**PROMPT, "model": spec(llama_dir, adapter_dir, id_="tuned")}
    ).json()["choices"][0]["text"]

    with TestClient(s3_app(moto_server.url, bucket, tmp_path / "cache")) as s3_client:
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(
                    lambda _: s3_client.post(
                        "/v1/completions", json={**PROMPT, "model": with_adapter}
                    ),
                    range(4),
                )
            )
        assert [a.status_code for a in answers] == [200] * 4
        assert {a.json()["choices"][0]["text"] for a in answers} == {expected}
        health = s3_client.get("/health").json()
        assert health["store_downloads"] == files_in(llama_dir, adapter_dir)

        again = s3_client.post("/v1/completions", json={**PROMPT, "model": with_adapter})
        assert again.status_code == 200
        assert s3_client.get("/health").json()["store_downloads"] == files_in(
            llama_dir, adapter_dir
        )
        missing = s3_client.post(
            "/v1/completions", json={**PROMPT, "model": {"id": "x", "path": "models/none"}}
        )
        assert missing.status_code == 404


def test_an_unreachable_bucket_is_503_with_retry_after(tmp_path: Path, aws_env: None) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    app = s3_app(closed, "nowhere", tmp_path / "cache", max_attempts=1, connect_timeout_s=0.5)
    with TestClient(app) as s3_client:
        body = {**PROMPT, "model": {"id": "tiny", "path": "models/base"}}
        answer = s3_client.post("/v1/completions", json=body)
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.json()["error"]["code"] == "storage.unavailable"


def test_gristmill_inference_on_the_bucket_with_its_own_data_dir(
    moto_server: MotoServer, bucket: str, tmp_path: Path, llama_dir: Path
) -> None:
    store = open_store(StoreConfig(f"s3://{bucket}/gristmill", s3_options(moto_server.url)))
    put_folder(store, "models/llama", llama_dir)
    gguf_dir = export_gguf(llama_dir, tmp_path / "gguf")
    put_folder(store, "models/gguf", gguf_dir)
    env = {**storage_env(moto_server.url, bucket), "GRISTMILL_DATA_DIR": str(tmp_path / "var")}

    with run_service(model_root=False, **env) as (url, _):
        for model in (
            {"id": "tiny", "path": "models/llama"},
            {"id": "tiny-gguf", "path": "models/gguf", "format": "gguf"},
        ):
            answer = httpx.post(
                f"{url}/v1/completions", json={**PROMPT, "model": model}, timeout=scaled(60)
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["usage"]["completion_tokens"] > 0
        health = httpx.get(f"{url}/health").json()
        assert health["store_downloads"] == files_in(llama_dir, gguf_dir)

    blobs = tmp_path / "var" / "store-cache" / "blobs"
    assert files_in(blobs) == files_in(llama_dir, gguf_dir)


def test_the_local_store_is_read_in_place(tmp_path: Path, llama_dir: Path) -> None:
    """The embedded default: the API's store folder itself, no cache, no copy."""
    store_root = tmp_path / "var" / "store"
    shutil.copytree(llama_dir, store_root / "models" / "llama")
    (store_root / "models" / "elsewhere").symlink_to(llama_dir, target_is_directory=True)
    with run_service(model_root=False, GRISTMILL_DATA_DIR=str(tmp_path / "var")) as (url, _):
        for key, status in (("models/llama", 200), ("models/elsewhere", 404)):
            model = {"id": "t", "path": key}
            answer = httpx.post(
                f"{url}/v1/completions", json={**PROMPT, "model": model}, timeout=scaled(60)
            )
            assert answer.status_code == status, answer.text  # a link out of the store: none
        health = httpx.get(f"{url}/health").json()
    assert health["store_downloads"] is None
    assert not (tmp_path / "var" / "store-cache").exists()
