"""Models in and fine-tunes out, through the API and the job layer: upload an archive, import it,
fine-tune it with LoRA, and find the merged model and its adapter registered with lineage."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app import layout
from app.flows.quotas import stored_bytes
from app.settings import Settings
from app.storage import LocalStore
from pipeline.configs.quantize import GptqOptions
from pipeline.quantize.gptq import run_gptq
from tests.conftest import RunJob
from tests.pipeline.finetune_helpers import build_base, chat_rows, task_split


def tar_bytes(folder: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(str(folder), arcname="my-model")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(f"my-model/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def upload_model(client: TestClient, auth: dict[str, str], data: bytes) -> dict:
    response = client.post(
        "/v1/models",
        files={"file": ("model.tar.gz", io.BytesIO(data))},
        data={"name": "tiny-qwen"},
        headers=auth,
    )
    assert response.status_code == 202, response.text
    return response.json()


def job_of(client: TestClient, auth: dict[str, str], model: dict) -> str:
    return str(model["lineage"]["job_id"])


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_an_uploaded_model_is_imported_then_fine_tuned_with_lora(
    client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path
) -> None:
    base = build_base("qwen2", tmp_path / "base")
    model = upload_model(client, auth, tar_bytes(base))
    assert model["status"] == "validating" and model["object"] == "model"
    assert isinstance(model["created"], int) and model["owned_by"]

    # Not ready yet: a fine-tune may not use it.
    train, _ = task_split()
    rows = "\n".join(__import__("json").dumps(r) for r in chat_rows(train[:48])) + "\n"
    dataset = client.post(
        "/v1/datasets", files={"file": ("chat.jsonl", io.BytesIO(rows.encode()))}, headers=auth
    ).json()
    run_job(dataset["job_id"])
    body = {
        "type": "finetune",
        "params": {"model_id": model["id"], "dataset_id": dataset["id"], "n_epochs": 1},
    }
    early = client.post("/v1/jobs", json=body, headers=auth)
    assert early.status_code == 400 and early.json()["error"]["code"] == "model.not_ready"

    imported = run_job(job_of(client, auth, model))
    assert imported["status"] == "succeeded", imported
    ready = client.get(f"/v1/models/{model['id']}", headers=auth).json()
    assert ready["status"] == "ready"
    assert ready["details"]["architecture"] == "Qwen2ForCausalLM"
    names = {
        f["path"]
        for f in client.get(f"/v1/models/{model['id']}/files", headers=auth).json()["data"]
    }
    assert "config.json" in names and not any(n.endswith(".archive") for n in names)

    body["params"].update({"method": "lora", "suffix": "cities", "batch_size": 8})
    job = client.post("/v1/jobs", json=body, headers=auth)
    assert job.status_code == 202, job.text
    done = run_job(job.json()["id"])
    assert done["status"] == "succeeded", done
    result = done["result"]
    merged = client.get(f"/v1/models/{result['model_id']}", headers=auth).json()
    adapter = client.get(f"/v1/models/{result['adapter_id']}", headers=auth).json()
    assert merged["format"] == "huggingface" and adapter["format"] == "peft-adapter"
    assert merged["lineage"]["parent_model_id"] == model["id"]
    assert merged["lineage"]["dataset_id"] == dataset["id"]
    assert merged["name"] == result["fine_tuned_model"] and ":cities:" in merged["name"]
    files = {
        f["path"]
        for f in client.get(f"/v1/models/{merged['id']}/files", headers=auth).json()["data"]
    }
    assert {"config.json", "model.safetensors", "README.md"} <= files


def test_a_pickled_model_fails_its_import_and_is_never_loaded(
    client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path
) -> None:
    base = build_base("qwen2", tmp_path / "base")
    data = tar_bytes(base, extra={"pytorch_model.bin": pickle.dumps(_Boom())})
    model = upload_model(client, auth, data)

    job = run_job(job_of(client, auth, model))

    assert job["status"] == "succeeded"  # the job did its work: the verdict is on the model
    failed = client.get(f"/v1/models/{model['id']}", headers=auth).json()
    assert failed["status"] == "failed"
    assert failed["errors"][0]["code"] == "model.pickle_refused"


def test_qlora_is_refused_without_a_cuda_queue(
    client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path
) -> None:
    model = upload_model(client, auth, tar_bytes(build_base("qwen2", tmp_path / "base")))
    run_job(job_of(client, auth, model))
    rows = b'{"prompt": "a", "completion": "b"}\n' * 4
    dataset = client.post(
        "/v1/datasets", files={"file": ("pc.jsonl", io.BytesIO(rows))}, headers=auth
    ).json()
    run_job(dataset["job_id"])
    body = {
        "type": "finetune",
        "params": {"model_id": model["id"], "dataset_id": dataset["id"], "method": "qlora"},
    }

    response = client.post("/v1/jobs", json=body, headers=auth)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "finetune.qlora_needs_cuda"
    assert response.json()["error"]["param"] == "params.method"


def test_a_model_quantised_to_gguf_is_registered_per_type_and_downloads_as_one_file(
    client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path
) -> None:
    model = upload_model(client, auth, tar_bytes(build_base("llama", tmp_path / "base")))
    run_job(job_of(client, auth, model))
    body = {
        "type": "quantize",
        "params": {"model_id": model["id"], "format": "gguf", "gguf": {"types": ["f16", "q8_0"]}},
    }
    job = client.post("/v1/jobs", json=body, headers=auth)
    assert job.status_code == 202, job.text
    assert job.json()["params"]["format"] == "gguf"

    done = run_job(job.json()["id"])

    assert done["status"] == "succeeded", done
    ids = done["result"]["model_ids"]
    assert len(ids) == 2
    for model_id in ids:
        gguf = client.get(f"/v1/models/{model_id}", headers=auth).json()
        assert gguf["format"] == "gguf" and gguf["lineage"]["parent_model_id"] == model["id"]
        assert gguf["details"]["max_logit_delta"] <= 1e-2 or gguf["details"]["type"] != "f16"
        files = client.get(f"/v1/models/{model_id}/files", headers=auth).json()["data"]
        (name,) = [f["path"] for f in files if f["path"].endswith(".gguf")]
        blob = client.get(f"/v1/models/{model_id}/files/{name}", headers=auth)
        assert blob.status_code == 200 and blob.content[:4] == b"GGUF"
    assert "/" not in json.dumps(done["result"]["gguf"])  # no server paths in what users read


def test_an_imported_gptq_model_is_recorded_as_gptq_and_a_stale_config_is_dropped(
    client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path
) -> None:
    base = build_base("llama", tmp_path / "base")
    gptq_dir = tmp_path / "gptq"
    gptq_dir.mkdir()
    options = GptqOptions(bits=4, group_size=32, calibration_samples=4, calibration_length=16)
    windows = [[(7 * i + j) % 200 + 3 for j in range(16)] for i in range(4)]
    run_gptq(base, options, windows, gptq_dir, work_dir=tmp_path / "work", threads=2)
    shutil.copy(base / "tokenizer.json", gptq_dir / "tokenizer.json")
    shutil.copy(base / "tokenizer_config.json", gptq_dir / "tokenizer_config.json")
    gptq = upload_model(client, auth, tar_bytes(gptq_dir))
    assert run_job(job_of(client, auth, gptq))["status"] == "succeeded"
    stale_config = json.loads((base / "config.json").read_text())
    stale_config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (base / "config.json").write_text(json.dumps(stale_config))
    stale = upload_model(client, auth, tar_bytes(base))
    assert run_job(job_of(client, auth, stale))["status"] == "succeeded"

    kept = client.get(f"/v1/models/{gptq['id']}", headers=auth).json()
    dropped = client.get(f"/v1/models/{stale['id']}", headers=auth).json()

    assert kept["status"] == "ready" and kept["format"] == "gptq"
    assert dropped["status"] == "ready" and dropped["format"] == "huggingface"
    assert dropped["details"]["quantization_dropped"] == "gptq"
    # A fine-tune reads huggingface models only: the GPTQ model is refused before it is queued.
    body = {"type": "finetune", "params": {"model_id": kept["id"], "dataset_id": "ds_x"}}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 400 and "gptq" in response.json()["error"]["message"]


def test_a_model_that_unpacks_past_the_storage_quota_is_refused_and_counts_nothing(
    client: TestClient,
    auth: dict[str, str],
    settings: Settings,
    factory: sessionmaker[Session],
    tenant: str,
) -> None:
    # 12 MB of zeros in a tar.gz of about 12 KB, under an 8 MB quota.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("my-model/notes.txt")
        info.size = 12 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    model = upload_model(client, auth, buffer.getvalue())
    quota = 8 << 20
    run_job = RunJob(factory, settings.model_copy(update={"quota_storage_bytes": quota}))

    assert run_job(job_of(client, auth, model))["status"] == "succeeded"

    failed = client.get(f"/v1/models/{model['id']}", headers=auth).json()
    assert failed["status"] == "failed"
    assert failed["errors"][0]["code"] == "model.storage_quota_exceeded"
    store = LocalStore(settings.resolved_storage_dir)
    assert not store.local_path(layout.artifact("model", model["id"])).exists()
    with factory() as session:
        assert stored_bytes(session=session, tenant_id=tenant) == 0
