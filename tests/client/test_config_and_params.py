"""Parameters from ``--param`` pairs, where the CLI finds its server and key, and what it
shows of a job and a comparison."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from app.datasets.schemas import DatasetRead
from app.jobs.states import FINAL_STATES, JobStatus
from app.settings import Settings
from client.charts import ladder_text
from client.commands.jobs import parse_params
from client.config import DEFAULT_DATA_DIR, resolve_config
from client.jobview import final_line, progress_line
from client.render import STATUS_STYLE
from client.statuses import COMPARISON_STATUSES, DATASET_STATUSES, JOB_FINAL, JOB_STATUSES
from tests.serving import free_port


def test_params_are_json_when_they_parse_and_dotted_keys_nest() -> None:
    params = parse_params(
        [
            "dataset_id=ds_01ABC",
            "max_steps=20",
            "lr=2e-3",
            "compile=false",
            'sample_prompts=["Once", "Twice"]',
            "model.preset=tiny",
            "model.context_length=64",
            "tokenizer=null",
            "note=a=b",
        ],
        base={"model": {"preset": "small", "layers": 2}, "eval_batches": 4},
    )

    assert params == {
        "dataset_id": "ds_01ABC",
        "max_steps": 20,
        "lr": 0.002,
        "compile": False,
        "sample_prompts": ["Once", "Twice"],
        "model": {"preset": "tiny", "layers": 2, "context_length": 64},
        "tokenizer": None,
        "note": "a=b",
        "eval_batches": 4,
    }


@pytest.mark.parametrize("pairs", [["novalue"], ["=1"], ["a=1", "a.b=2"]])
def test_malformed_params_are_refused(pairs: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_params(pairs)


def test_a_local_url_without_a_key_reads_the_embedded_servers_key_file(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text("gm_from_file\n")
    env = {"GRISTMILL_DATA_DIR": str(tmp_path), "GRISTMILL_URL": "http://localhost:9000/"}

    local = resolve_config(url=None, key=None, environ=env)
    remote = resolve_config(url="https://gm.example.com", key=None, environ=env)
    from_env = resolve_config(url=None, key=None, environ={**env, "GRISTMILL_API_KEY": "gm_env"})
    from_flag = resolve_config(url=None, key="gm_flag", environ={**env, "GRISTMILL_API_KEY": "x"})

    assert (local.url, local.api_key) == ("http://localhost:9000", "gm_from_file")
    assert (remote.url, remote.api_key) == ("https://gm.example.com", None)
    assert from_env.api_key == "gm_env" and from_flag.api_key == "gm_flag"


def test_the_client_loads_neither_the_worker_stack_nor_the_server_frameworks() -> None:
    """The client commands import no ``workers``, torch, Celery or FastAPI module: they install
    and run where only the ``client`` extra is."""
    code = (
        "import sys, app.cli, client.commands, client.watch;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('workers', 'torch', 'transformers', 'celery', 'fastapi', 'starlette')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_command_group_imports_nothing_of_the_server() -> None:
    """Each group's module, with everything it needs, loads no ``app`` module: the client is an
    HTTP client of its own (the import contract says so too)."""
    code = (
        "import sys, client.commands.jobs, client.commands.datasets, client.commands.artifacts;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('app', 'sqlalchemy')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_clients_vocabulary_is_the_servers() -> None:
    """The status names and the data directory the client carries (the HTTP contract and the
    embedded server's layout) are the server's own, and every status has a colour."""
    assert {s.value for s in JobStatus} == JOB_STATUSES
    assert {s.value for s in FINAL_STATES} == JOB_FINAL
    assert set(get_args(DatasetRead.model_fields["status"].annotation)) == DATASET_STATUSES
    assert set(STATUS_STYLE) >= JOB_STATUSES | DATASET_STATUSES | COMPARISON_STATUSES
    assert Path(DEFAULT_DATA_DIR) == Settings.model_fields["data_dir"].default


def test_an_unreachable_server_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRISTMILL_")}
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "list", "--url", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        env={**env, "GRISTMILL_DATA_DIR": str(tmp_path)},
        timeout=120,
    )
    assert done.returncode == 1
    assert f"error: cannot reach http://127.0.0.1:{port}" in done.stderr


def test_the_final_line_names_what_a_job_made_or_why_it_failed() -> None:
    base = {"id": "job_1", "type": "prepare", "started_at": None, "finished_at": None}
    prepared = {
        **base,
        "status": "succeeded",
        "result": {"source_dataset_id": "ds_a", "dataset_ids": {"train": "ds_b"}, "kept": 9},
    }
    failed = {**base, "status": "failed", "error": {"code": "dataset.empty", "message": "empty"}}

    assert final_line(prepared).endswith("succeeded: source_dataset ds_a, train ds_b[/]")
    assert "failed: dataset.empty: empty" in final_line(failed)
    quantized = {**base, "status": "succeeded", "result": {"model_ids": ["mdl_a", "mdl_b"]}}
    assert final_line(quantized).endswith("succeeded: model mdl_a, model mdl_b[/]")


def test_a_job_without_steps_says_how_long_it_ran_and_what_it_did() -> None:
    """A prepare job counts records, not steps toward a total: no ETA to show. Running, its
    line says for how long and how much; finished, how long it took and its figures."""
    base = {"id": "job_1", "type": "prepare", "started_at": "2026-01-01T00:00:00+00:00"}
    running = {**base, "status": "running", "progress": {"step": 1792}, "finished_at": None}
    done = {
        **base,
        "status": "succeeded",
        "progress": {"step": 1792},
        "finished_at": "2026-01-01T00:00:12+00:00",
        "result": {
            "dataset_ids": {"train": "ds_b"},
            "kind": "text",
            "records_in": 3000,
            "records_out": 2850,
            "bytes_out": 1_200_000,
        },
    }
    trained = {**done, "type": "pretrain", "progress": {"step": 20, "total": 20, "eta_s": 0}}

    assert progress_line(done, {}) == (
        "in 0:12 · records in 3,000 · records out 2,850 · bytes out 1.2 MB"
    )
    assert progress_line(running, {}).endswith(" · 1,792 done")
    assert progress_line(running, {}).startswith("for ")
    assert progress_line({**running, "status": "queued", "started_at": None}, {}) == ""
    assert progress_line(trained, {"train_loss": 2.5}) == "step 20/20 · ETA 0:00 · loss 2.5000"
    assert progress_line({**trained, "type": "quantize"}, {}) == "step 20/20 · ETA 0:00"


def test_the_ladder_chart_puts_each_rating_inside_its_interval_best_first() -> None:
    ladder = [
        {"model": "mdl_a", "rating": 1100.0, "ci95": [1050.0, 1150.0]},
        {"model": "mdl_bb", "rating": 900.0, "ci95": [850.0, 950.0]},
    ]

    lines = ladder_text(ladder, title="t", width=60).splitlines()

    assert lines[0] == "t" and lines[-1].split() == ["850", "1150"]
    first, second = lines[1], lines[2]
    assert first.split()[:2] == ["mdl_a", "1100"] and second.split()[:2] == ["mdl_bb", "900"]
    for line in (first, second):
        assert line.index("├") < line.index("●") < line.index("┤")
    assert second.index("┤") < second.index("┆") < first.index("├")  # 1000 lies between them


def test_the_ladder_chart_shows_an_interval_that_collapsed_onto_its_rating() -> None:
    """Few votes, all one way: the bootstrap interval can equal the rating, at either end."""
    ladder = [
        {"model": "mdl_a", "rating": 1100.0, "ci95": [1100.0, 1100.0]},
        {"model": "mdl_b", "rating": 900.0, "ci95": [900.0, 900.0]},
    ]

    for line in ladder_text(ladder, title="t", width=60).splitlines()[1:3]:
        assert line.index("├") < line.index("●") < line.index("┤"), line
