"""One worker's checkpoint copy, in a process of its own, that a test can hold and kill.

``python -m tests.jobs.checkpoint_child ENDPOINT BUCKET JOB_ID WORK_DIR CHECKPOINT GATE_DIR``
copies the checkpoint folder ``CHECKPOINT`` (inside ``WORK_DIR``) as a worker does, through a
store whose writes of ``training.safetensors`` wait at a gate (see :class:`GatedStore`): the
test sees the copy half done and ends the process with SIGKILL.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from app.store.s3 import S3Store
from app.store.s3io import S3Writer
from tests.s3server import s3_options
from tests.timing import scaled
from workers.checkpoint_sync import CheckpointSync

GATED = "training.safetensors"


class GatedStore(S3Store):
    """The real S3 store, except that a write whose key ends with ``gate_on`` first creates
    ``gate/entered`` (the objects before it are stored) and then waits for ``gate/release``."""

    gate: Path
    gate_on = GATED

    def open_write(self, key: str, *, size_hint: int | None = None) -> S3Writer:
        if key.endswith(self.gate_on):
            (self.gate / "entered").touch()
            deadline = time.monotonic() + scaled(60)
            while not (self.gate / "release").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("never released")
                time.sleep(0.02)
        return super().open_write(key, size_hint=size_hint)


def gated_store(endpoint: str, bucket: str, gate: Path, gate_on: str = GATED) -> GatedStore:
    store = GatedStore(bucket, "gristmill/", s3_options(endpoint))
    store.gate, store.gate_on = gate, gate_on
    return store


def main() -> None:
    endpoint, bucket, job_id, work_dir, checkpoint, gate = sys.argv[1:7]
    sync = CheckpointSync(gated_store(endpoint, bucket, Path(gate)), job_id, Path(work_dir))
    sync.on_checkpoint(checkpoint)
    sync.close()


if __name__ == "__main__":
    main()
