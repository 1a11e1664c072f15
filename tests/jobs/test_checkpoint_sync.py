"""Checkpoints copied to the bucket while training goes on, and fetched back on another machine:
against a real S3 endpoint (moto's server on loopback), with real training checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import service
from app.settings import Settings
from app.store.folders import MANIFEST, read_manifest
from app.store.local import LocalStore
from app.store.s3 import S3Store
from pipeline.parts import checkpoint as ckpt
from pipeline.parts import hf
from tests.factories import make_job
from tests.jobs.checkpoint_child import gated_store
from tests.s3server import MotoServer, Relay, s3_options
from tests.timing import scaled, wait_for
from workers.checkpoint_sync import BESIDE, CheckpointSync
from workers.monitor import JobMonitor

JOB = "job_sync"
WORK = f"jobs/{JOB}/work"


@pytest.fixture
def s3(moto_server: MotoServer, bucket: str) -> S3Store:
    return S3Store(bucket, "gristmill/", s3_options(moto_server.url))


@pytest.fixture
def relay(moto_server: MotoServer) -> Iterator[Relay]:
    relay = Relay(int(moto_server.url.rsplit(":", 1)[1]))
    yield relay
    relay.cut()


class Trainer:
    """A tiny model trained a step at a time, saving checkpoints as the stages do."""

    def __init__(self, work: Path) -> None:
        torch.manual_seed(0)
        self.root = work / "checkpoints"
        self.model = torch.nn.Linear(256, 1024)  # 1 MiB of weights, 2 MiB of Adam moments
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2)

    def save(self, step: int) -> Path:
        self.model(torch.randn(4, 256)).square().mean().backward()
        self.optimizer.step()
        return ckpt.save_checkpoint(
            self.root, step=step, model=self.model, optimizer=self.optimizer, state={}
        )


def stored(store: S3Store) -> list[str]:
    return [item.key.removeprefix(f"{WORK}/") for item in store.list(WORK)]


def complete(store: S3Store) -> list[str]:
    return sorted(k.removesuffix(f"/{MANIFEST}") for k in stored(store) if k.endswith(MANIFEST))


def test_a_checkpoint_is_copied_in_the_background_and_replaces_the_older_one_once_complete(
    s3: S3Store, moto_server: MotoServer, bucket: str, tmp_path: Path
) -> None:
    trainer = Trainer(tmp_path / "work")
    first = CheckpointSync(s3, JOB, tmp_path / "work")
    first.on_checkpoint(trainer.save(1))
    first.close()
    assert complete(s3) == ["checkpoints/step_00000001"]

    gate = tmp_path / "gate"
    gate.mkdir()
    held = gated_store(moto_server.url, bucket, gate, gate_on=f"step_00000002/{MANIFEST}")
    sync = CheckpointSync(held, JOB, tmp_path / "work")
    sync.on_checkpoint(trainer.save(2))  # returns while the copy waits at the gate
    wait_for(lambda: (gate / "entered").exists(), timeout=30, what="the copy to reach its end")
    # Every file of step 2 is there but its manifest is not: step 1 is still the one to use.
    assert complete(s3) == ["checkpoints/step_00000001"]
    assert {"checkpoints/step_00000002/model.safetensors",
            "checkpoints/step_00000002/state.json"} <= set(stored(s3))  # fmt: skip
    (gate / "release").touch()
    sync.close()
    assert complete(s3) == ["checkpoints/step_00000002"]
    assert all(k.startswith("checkpoints/step_00000002/") for k in stored(s3))
    assert sync.uploaded == ["checkpoints/step_00000002"] and not sync.failed
    assert not (tmp_path / "work" / ".checkpoint-uploads").exists()


def test_the_newest_waiting_checkpoint_wins(
    s3: S3Store, moto_server: MotoServer, bucket: str, tmp_path: Path
) -> None:
    trainer = Trainer(tmp_path / "work")
    gate = tmp_path / "gate"
    gate.mkdir()
    held = gated_store(moto_server.url, bucket, gate, gate_on=f"step_00000001/{MANIFEST}")
    sync = CheckpointSync(held, JOB, tmp_path / "work")
    sync.on_checkpoint(trainer.save(1))
    wait_for(lambda: (gate / "entered").exists(), timeout=30, what="the first copy")
    sync.on_checkpoint(trainer.save(2))  # the stage has deleted step 1's folder meanwhile
    sync.on_checkpoint(trainer.save(3))
    (gate / "release").touch()
    sync.close()
    assert sync.uploaded == ["checkpoints/step_00000001", "checkpoints/step_00000003"]
    assert complete(s3) == ["checkpoints/step_00000003"]


def test_a_fresh_machine_fetches_the_checkpoint_and_its_tokenizer_and_resumes_from_it(
    s3: S3Store, tmp_path: Path
) -> None:
    machine_a = tmp_path / "a" / "work"
    (machine_a / "tokenizer").mkdir(parents=True)
    (machine_a / "tokenizer" / "tokenizer.json").write_text('{"model": "bpe"}')
    trainer = Trainer(machine_a)
    with CheckpointSync(s3, JOB, machine_a) as sync:
        sync.on_checkpoint(trainer.save(7))
    assert complete(s3) == ["checkpoints/step_00000007", "tokenizer"]

    machine_b = tmp_path / "b" / "work"
    with CheckpointSync(s3, JOB, machine_b) as sync:
        assert sorted(sync.restore()) == []  # fetched on entering: nothing left to fetch
    assert (machine_b / "tokenizer" / "tokenizer.json").read_text() == '{"model": "bpe"}'
    latest = ckpt.latest_checkpoint(machine_b / "checkpoints")
    assert latest is not None and latest.step == 7
    model = torch.nn.Linear(256, 1024)
    ckpt.restore_checkpoint(latest, model=model, optimizer=torch.optim.AdamW(model.parameters()))
    assert torch.equal(model.weight, trainer.model.weight)
    # The restored checkpoint's event (announce_restored) copies nothing again.
    with CheckpointSync(s3, JOB, machine_b) as sync:
        sync.on_checkpoint(latest.path)
    assert complete(s3) == ["checkpoints/step_00000007", "tokenizer"]


def test_a_machine_with_a_newer_local_checkpoint_fetches_nothing(
    s3: S3Store, tmp_path: Path
) -> None:
    trainer = Trainer(tmp_path / "work")
    with CheckpointSync(s3, JOB, tmp_path / "work") as sync:
        sync.on_checkpoint(trainer.save(1))
    trainer.save(2)  # paused before its copy: this machine resumes from its own
    assert CheckpointSync(s3, JOB, tmp_path / "work").restore() == []
    assert [p.name for p in trainer.root.iterdir()] == ["step_00000002"]


def test_a_connection_cut_mid_copy_leaves_the_previous_complete_checkpoint(
    s3: S3Store, relay: Relay, bucket: str, tmp_path: Path
) -> None:
    trainer = Trainer(tmp_path / "work")
    through = S3Store(bucket, "gristmill/", s3_options(relay.url, max_attempts=1))
    sync = CheckpointSync(through, JOB, tmp_path / "work")
    sync.on_checkpoint(trainer.save(1))
    sync.close()
    relay.cut_after(1024 * 1024, "up")  # in the middle of step 2's files
    warnings: list[str] = []
    sync = CheckpointSync(through, JOB, tmp_path / "work", warn=warnings.append)
    sync.on_checkpoint(trainer.save(2))
    sync.close()
    assert sync.failed == ["checkpoints/step_00000002"] and not sync.uploaded
    assert warnings == [
        "checkpoint checkpoints/step_00000002 was not copied to the store "
        "(storage.unavailable); training goes on and the next checkpoint tries again"
    ]
    assert complete(s3) == ["checkpoints/step_00000001"]

    fresh = tmp_path / "fresh"
    assert CheckpointSync(s3, JOB, fresh).restore() == ["checkpoints/step_00000001"]
    latest = ckpt.latest_checkpoint(fresh / "checkpoints")
    assert latest is not None and latest.step == 1

    relay.restore()  # the endpoint is back: the next checkpoint goes up and tidies the rest
    sync = CheckpointSync(through, JOB, tmp_path / "work")
    sync.on_checkpoint(trainer.save(3))
    sync.close()
    assert complete(s3) == ["checkpoints/step_00000003"]
    assert all(k.startswith("checkpoints/step_00000003/") for k in stored(s3))


def test_a_worker_killed_mid_copy_leaves_the_previous_complete_checkpoint(
    s3: S3Store, moto_server: MotoServer, bucket: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    trainer = Trainer(work)
    with CheckpointSync(s3, JOB, work) as sync:
        sync.on_checkpoint(trainer.save(1))
    step_2 = trainer.save(2)
    gate = tmp_path / "gate"
    gate.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.jobs.checkpoint_child", moto_server.url, bucket, JOB,
         str(work), str(step_2), str(gate)],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    try:
        wait_for(lambda: (gate / "entered").exists(), timeout=60, what="the copy to start")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(scaled(10))
    assert "checkpoints/step_00000002/model.safetensors" in stored(s3)
    assert complete(s3) == ["checkpoints/step_00000001"]

    fresh = tmp_path / "fresh"
    assert CheckpointSync(s3, JOB, fresh).restore() == ["checkpoints/step_00000001"]
    latest = ckpt.latest_checkpoint(fresh / "checkpoints")
    assert latest is not None and latest.step == 1


def test_on_the_local_folder_store_nothing_is_copied(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    work = store.root / WORK
    trainer = Trainer(work)
    with CheckpointSync(store, JOB, work) as sync:
        sync.on_checkpoint(trainer.save(1))
    assert sync.uploaded == [] and read_manifest(store, f"{WORK}/checkpoints/step_00000001") is None
    assert sorted(p.name for p in work.iterdir()) == ["checkpoints"]


def test_a_fine_tunes_snapshots_travel_with_its_checkpoints_the_newest_three_kept(
    s3: S3Store, tmp_path: Path
) -> None:
    assert BESIDE == {hf.SNAPSHOTS: hf.KEPT_SNAPSHOTS}
    machine_a = tmp_path / "a" / "work"
    trainer = Trainer(machine_a)
    for step in (10, 20, 30, 40):  # one attempt each, so that no copy is skipped
        snapshot = machine_a / hf.SNAPSHOTS / f"step_{step:08d}"  # saved before the checkpoint
        snapshot.mkdir(parents=True)
        (snapshot / "adapter_model.safetensors").write_bytes(b"w" * step)
        with CheckpointSync(s3, JOB, machine_a) as sync:
            sync.on_checkpoint(trainer.save(step))
    snapshots = [f"{hf.SNAPSHOTS}/step_{s:08d}" for s in (20, 30, 40)]
    assert complete(s3) == [*snapshots, "checkpoints/step_00000040"]

    machine_b = tmp_path / "b" / "work"
    restored = CheckpointSync(s3, JOB, machine_b).restore()
    assert sorted(restored) == [*snapshots, "checkpoints/step_00000040"]
    assert [step for step, _ in hf.snapshots(machine_b / hf.SNAPSHOTS)] == [20, 30, 40]


def test_closing_after_success_drops_the_copy_not_yet_started(
    s3: S3Store, moto_server: MotoServer, bucket: str, tmp_path: Path
) -> None:
    trainer = Trainer(tmp_path / "work")
    gate = tmp_path / "gate"
    gate.mkdir()
    held = gated_store(moto_server.url, bucket, gate, gate_on=f"step_00000001/{MANIFEST}")
    sync = CheckpointSync(held, JOB, tmp_path / "work")
    sync.on_checkpoint(trainer.save(1))
    wait_for(lambda: (gate / "entered").exists(), timeout=30, what="the first copy")
    sync.on_checkpoint(trainer.save(2))
    (gate / "release").touch()
    sync.close(upload_pending=False)  # the copy in flight ends; the one waiting is dropped
    assert sync.uploaded == ["checkpoints/step_00000001"]
    assert complete(s3) == ["checkpoints/step_00000001"]


@pytest.mark.parametrize("lease_lost", [False, True])
def test_the_monitor_stops_after_the_last_checkpoint_is_stored_unless_the_job_is_no_longer_ours(
    lease_lost: bool,
    s3: S3Store,
    moto_server: MotoServer,
    bucket: str,
    factory: sessionmaker[Session],
    settings: Settings,
    tenant: str,
    tmp_path: Path,
) -> None:
    """A paused or preempted attempt ends with ``monitor.stop()``: the checkpoint still waiting
    for its copy reaches the bucket first (the next attempt may run anywhere). An attempt that
    lost its lease leaves it: another attempt owns the job's checkpoints now."""
    job = make_job(factory, tenant)
    with factory() as session:
        service.claim_job(session=session, job_id=job.id, owner="w", lease_s=30)
    trainer = Trainer(tmp_path / "work")
    gate = tmp_path / "gate"
    gate.mkdir()
    held = gated_store(moto_server.url, bucket, gate, gate_on=f"step_00000001/{MANIFEST}")
    monitor = JobMonitor(factory, settings, job.id, 1)
    sync = CheckpointSync(held, JOB, tmp_path / "work")
    monitor.copy_checkpoints(sync)
    monitor.start()
    sync.on_checkpoint(trainer.save(1))
    wait_for(lambda: (gate / "entered").exists(), timeout=30, what="the first copy")
    sync.on_checkpoint(trainer.save(2))
    if lease_lost:
        monitor.lease_lost.set()
    (gate / "release").touch()
    monitor.stop()
    expected = "checkpoints/step_00000001" if lease_lost else "checkpoints/step_00000002"
    assert complete(s3) == [expected]
