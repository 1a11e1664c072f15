"""The generic stage launcher: run.json through the codec, stage names checked, results encoded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.__main__ import main, resolve_stage
from pipeline.configs.codec import encode
from pipeline.configs.probe import ProbeConfig
from pipeline.probe.stage import ProbeInputs, run_probe
from pipeline.types import Hooks
from tests.pipeline.conftest import make_paths
from workers.launch import run_distributed


@pytest.mark.parametrize(
    "name",
    [
        "os:system",
        "pipelinex.probe:run_probe",
        "workers.runner:execute",
        "pipeline.probe.stage",
        "pipeline.probe.stage:run_probe; rm",
    ],
)
def test_stage_names_outside_the_pipeline_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a pipeline stage"):
        resolve_stage(name)
    with pytest.raises(ValueError, match="not a pipeline stage"):
        run_distributed(name, ProbeConfig(), ProbeInputs(), make_paths(tmp_path), Hooks(), 1)
    assert not (tmp_path / "work" / "run.json").exists()


def test_run_json_is_decoded_with_the_stage_types_and_the_result_encoded(tmp_path: Path) -> None:
    paths = make_paths(tmp_path)
    config = ProbeConfig(duration_s=0.01, matmul_size=16)
    run_json = paths.work_dir / "run.json"
    payload = {
        "stage": "pipeline.probe.stage:run_probe",
        "config": config,
        "inputs": ProbeInputs(),
        "paths": paths,
    }
    run_json.write_text(json.dumps({k: encode(v) for k, v in payload.items()}))
    assert resolve_stage(payload["stage"]) is run_probe  # type: ignore[arg-type]

    assert main(["--config", str(run_json)]) == 0
    outcome = json.loads((paths.work_dir / "result.json").read_text())
    assert outcome["status"] == "succeeded" and outcome["result"]["device"] == "cpu"
    assert outcome["result"]["measurements"] >= 1
    progress = (paths.work_dir / "progress.jsonl").read_text().splitlines()
    assert json.loads(progress[0])["kind"] == "event"


def test_invalid_config_in_run_json_is_refused_by_the_config_rules(tmp_path: Path) -> None:
    paths = make_paths(tmp_path)
    run_json = paths.work_dir / "run.json"
    payload = {
        "stage": "pipeline.probe.stage:run_probe",
        "config": {"duration_s": -1},
        "inputs": {},
        "paths": encode(paths),
    }
    run_json.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="duration_s"):
        main(["--config", str(run_json)])


def test_a_failing_stage_is_reported_as_failed(tmp_path: Path) -> None:
    paths = make_paths(tmp_path)
    run_json = paths.work_dir / "run.json"
    payload = {
        "stage": "pipeline.probe.stage:run_probe",
        "config": ProbeConfig(duration_s=0.01, matmul_size=16, fail_with="probe.drill"),
        "inputs": ProbeInputs(),
        "paths": paths,
    }
    run_json.write_text(json.dumps({k: encode(v) for k, v in payload.items()}))
    assert main(["--config", str(run_json)]) == 3
    outcome = json.loads((paths.work_dir / "result.json").read_text())
    assert outcome == {"status": "failed", "code": "probe.drill", "message": outcome["message"]}
