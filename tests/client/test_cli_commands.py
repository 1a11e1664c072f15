"""The rest of the API through ``gristmill``, run as a person runs it against a live embedded
server: a model uploaded as a folder or an archive and checked, a refused one, deletes, pausing
and resuming, a blind comparison from creation to its exported votes, and the one JSON shape of
every list. Unknown ids exit 1 with the server's message."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.client.conftest import CORPUS, Server
from tests.pipeline.finetune_helpers import build_base

pytestmark = pytest.mark.slow


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def refused(done: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """What a failed command said on stderr; it must have exited with ``code``."""
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stderr


@pytest.fixture(scope="module")
def folder_model(server: Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A tiny Hugging Face folder uploaded as it is: (model id, what ``--wait`` printed)."""
    base = build_base("qwen2", tmp_path_factory.mktemp("base") / "tiny-qwen")
    (base / ".cache").mkdir()
    (base / ".cache" / "download.lock").write_text("")  # a hidden folder stays out
    done = server.cli("models", "upload", base, "--name", "tiny", "--wait")
    printed = ok(done)
    assert "upload tiny-qwen.tar" in done.stderr  # the transfer bar
    found = re.search(r"✔ (\S+) ready", printed)
    assert found, printed
    return found.group(1), printed


@pytest.fixture(scope="module")
def zip_model(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second tiny model, uploaded as a .zip and waited for with ``--json``."""
    base = build_base("qwen2", tmp_path_factory.mktemp("base") / "other", seed=1)
    archive = base.parent / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(base.rglob("*")):
            zf.write(path, f"other/{path.relative_to(base)}")
    model = json.loads(ok(server.cli("models", "upload", archive, "--wait", "--json")))
    assert model["status"] == "ready", model
    return str(model["id"])


def test_a_model_folder_is_packed_uploaded_and_checked(
    server: Server, folder_model: tuple[str, str]
) -> None:
    model_id, printed = folder_model

    assert f"✔ {model_id} ready: Qwen2ForCausalLM, " in printed and " parameters, " in printed
    stored = server.api.get(f"/v1/models/{model_id}")
    assert stored["name"] == "tiny" and stored["status"] == "ready"
    listed = json.loads(ok(server.cli("models", "list", "--json")))
    assert listed["object"] == "list" and model_id in [m["id"] for m in listed["data"]]


def test_a_model_with_pickled_weights_fails_its_check_exits_1_and_can_be_deleted(
    server: Server, tmp_path: Path
) -> None:
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        config = b'{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}'
        for name, data in (("config.json", config), ("pytorch_model.bin", b"\x80\x04N.")):
            info = tarfile.TarInfo(f"bad/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")

    failed = server.cli("models", "upload", archive, "--wait")
    not_an_archive = server.cli("models", "upload", notes)
    missing = server.cli("models", "upload", tmp_path / "nowhere")

    assert failed.returncode == 1, failed
    found = re.search(r"✘ (\S+) failed: model\.pickle_refused: pytorch_model\.bin", failed.stdout)
    assert found, failed.stdout
    assert "neither a folder nor a .tar, .tar.gz" in refused(not_an_archive, 2)
    assert "nowhere does not exist" in refused(missing, 2)

    model_id = found.group(1)
    deleted = ok(server.cli("models", "delete", model_id))
    gone = server.cli("models", "show", model_id)
    unknown = server.cli("models", "delete", "mdl_nope")
    assert deleted.strip() == f"deleted {model_id}"
    assert f"The model '{model_id}' does not exist. (404" in refused(gone)
    assert "The model 'mdl_nope' does not exist. (404" in refused(unknown)


def test_a_comparison_from_creation_to_exported_votes(
    server: Server, folder_model: tuple[str, str], zip_model: str, tmp_path: Path
) -> None:
    first, second = folder_model[0], zip_model
    create = ["comparisons", "create", first, second, "--prompt", "Once upon a time"]
    create += ["--prompt", "The cat", "--max-tokens", "4", "--temperature", "0", "--wait"]
    created = ok(server.cli(*create))
    found = re.search(r"created (\S+);", created)
    assert found, created
    cid = found.group(1)
    assert f"{cid}: open" in created and f"gristmill comparisons invite {cid}" in created

    empty = ok(server.cli("comparisons", "results", cid))
    no_chart = server.cli("comparisons", "chart", cid)
    invite = json.loads(ok(server.cli("comparisons", "invite", cid, "--name", "Ada", "--json")))

    assert "0 vote(s)" in empty and "no votes yet" in empty
    assert no_chart.returncode == 0 and "has no votes" in no_chart.stderr
    assert invite["url"] == f"{server.url}/rate/{invite['token']}" and invite["name"] == "Ada"

    # The rater, with the link's token and no key, votes for the left answer every time.
    rater = {"X-Rater-Token": invite["token"]}
    for _ in range(10):
        pair = server.api.client.get(f"/v1/comparisons/{cid}/next", headers=rater).json()
        if pair.get("done"):
            break
        vote = {"ticket": pair["ticket"], "choice": "a"}
        posted = server.api.client.post(f"/v1/comparisons/{cid}/votes", json=vote, headers=rater)
        assert posted.status_code == 201, posted.text
    votes = server.api.get(f"/v1/comparisons/{cid}/results")["votes"]
    assert votes >= 2

    table = ok(server.cli("comparisons", "results", cid))
    figures = json.loads(ok(server.cli("comparisons", "results", cid, "--json")))
    chart = ok(server.cli("comparisons", "chart", cid))
    png = tmp_path / "ladder.png"
    ok(server.cli("comparisons", "chart", cid, "--out", png))
    saved = tmp_path / "votes.jsonl"
    wrote = ok(server.cli("comparisons", "export", cid, "--out", saved))
    piped = ok(server.cli("comparisons", "export", cid))

    assert f"{votes} vote(s) from 1 rater(s)" in table and "win rate" in table
    assert "left side won 100% of decisive votes" in table
    assert {row["model"] for row in figures["ladder"]} == {first, second}
    ladder = [line for line in chart.splitlines() if "●" in line]
    assert [line.split()[0] for line in ladder] == [row["model"] for row in figures["ladder"]]
    assert all("├" in line and "┤" in line for line in ladder)
    assert png.read_bytes().startswith(b"\x89PNG")
    assert f"wrote {votes} vote(s) to {saved}" in wrote
    exported = [json.loads(line) for line in saved.read_text().splitlines()]
    assert len(exported) == votes and piped == saved.read_text()
    assert {first, second} <= set(json.dumps(exported[0]).replace('"', " ").split())

    unknown = server.cli("comparisons", "results", "cmp_nope")
    one_model = server.cli("comparisons", "create", first, "--prompt", "x")
    assert "No comparison with id 'cmp_nope'" in refused(unknown) and "(404 " in unknown.stderr
    assert "(422 " in refused(one_model)


def test_a_judge_votes_on_a_comparison_and_secrets_are_stored_listed_and_deleted(
    server: Server, folder_model: tuple[str, str], zip_model: str
) -> None:
    first, second = folder_model[0], zip_model
    create = ["comparisons", "create", first, second, "--prompt", "The cat", "--prompt", "A dog"]
    create += ["--max-tokens", "3", "--temperature", "0", "--wait", "--json"]
    cid = json.loads(ok(server.cli(*create)))["id"]

    judged = json.loads(ok(server.cli("comparisons", "judge", cid, "--model", first, "--wait",
                                      "--json")))  # fmt: skip
    assert judged["status"] == "succeeded" and judged["result"]["pairs"] == 2
    table = ok(server.cli("comparisons", "results", cid))
    assert "judges" in table and f"judge:{first}" in table and "position bias" in table

    key = "sk-cli-0123456789abcdefghijkl"
    stored = server.cli("secrets", "create", "grader", "--base-url", "http://127.0.0.1:9/v1",
                        "--key-env", "GRISTMILL_JUDGE_KEY", judge_key=key)  # fmt: skip
    assert "stored grader (…ijkl)" in ok(stored)
    listed = ok(server.cli("secrets", "list", "--json"))
    assert json.loads(listed)["data"][0]["name"] == "grader" and key not in listed
    assert "deleted grader" in ok(server.cli("secrets", "delete", "grader"))
    assert "(404 " in refused(server.cli("secrets", "delete", "grader"))
    no_key = server.cli("secrets", "create", "other", "--base-url", "http://127.0.0.1:9/v1",
                        "--key-env", "GRISTMILL_UNSET_VAR")  # fmt: skip
    assert "no API key given" in refused(no_key, 2)


def test_datasets_delete_and_every_list_has_one_json_shape(server: Server, tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_bytes(b"".join(CORPUS.read_bytes().splitlines(keepends=True)[:20]))
    dataset = json.loads(ok(server.cli("datasets", "upload", small, "--wait", "--json")))
    ds = dataset["id"]

    job_id = ok(server.cli("datasets", "show", ds, "--field", "job_id"))
    no_field = server.cli("datasets", "show", ds, "--field", "result.nope")
    assert job_id == f"{dataset['job_id']}\n"  # bare, for VAR=$(…)
    assert "the answer has no field 'result.nope'" in refused(no_field)

    lists = {
        group: json.loads(ok(server.cli(group, "list", "--json")))
        for group in ("datasets", "jobs", "models", "tokenizers")
    }
    watched = ok(server.cli("jobs", "watch", dataset["job_id"]))  # its validation: no steps
    shown = ok(server.cli("jobs", "show", dataset["job_id"]))
    deleted = ok(server.cli("datasets", "delete", ds))
    gone = server.cli("datasets", "show", ds)
    again = server.cli("datasets", "delete", ds)

    assert all(sorted(body) == ["data", "object"] for body in lists.values()), lists
    assert all(body["object"] == "list" for body in lists.values())
    assert ds in [d["id"] for d in lists["datasets"]["data"]]
    assert dataset["job_id"] in [j["id"] for j in lists["jobs"]["data"]]
    line = next(ln for ln in watched.splitlines() if ln.startswith("succeeded"))
    assert line.startswith("succeeded in ") and "ETA" not in line, line
    assert f"✔ {dataset['job_id']} (validate) succeeded in " in shown and "ETA" not in shown
    assert deleted.strip() == f"deleted {ds}"
    assert f"No dataset with id '{ds}'" in refused(gone)
    assert "(404 " in refused(again)


def test_a_job_waited_for_prints_one_field_and_its_progress_on_stderr(server: Server) -> None:
    args = ["jobs", "submit", "probe", "-p", "duration_s=1", "-p", "matmul_size=64"]
    done = server.cli(*args, "--wait", "--field", "result.measurements")

    assert int(ok(done)) >= 1
    assert "Watching job_" in done.stderr and "(probe) succeeded" in done.stderr


def test_jobs_pause_and_resume_a_queued_job(server: Server) -> None:
    """With the server's one worker held by a probe, a second job waits in the queue: ``pause``
    parks it, ``resume`` queues it again; an unknown id is a clear error."""
    blocker = server.api.submit(duration_s=600)["id"]
    waiting = server.api.submit(duration_s=1)["id"]
    try:
        server.api.wait_status(blocker, "running", timeout=60)
        paused = ok(server.cli("jobs", "pause", waiting))
        resumed = json.loads(ok(server.cli("jobs", "resume", waiting, "--json")))
        unknown = server.cli("jobs", "pause", "job_nope")
    finally:
        server.api.cancel(waiting)
        server.api.cancel(blocker)

    assert paused.strip() == f"{waiting}: paused"
    assert resumed["id"] == waiting and resumed["status"] == "queued"
    assert "No job with id 'job_nope'" in refused(unknown)
