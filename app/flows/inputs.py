"""The stored objects a job reads: found, tenant-checked and located in one place.

Resolving inputs crosses domains (a job's parameters name datasets, tokenizers and models), so it
is a flow. The API calls :func:`load_inputs` before it queues a job (an unknown, foreign or unready
input is a 400 naming the parameter), and the runner calls it again before the handler runs (the
object may have been deleted meanwhile), so both apply the same rules.

Resolving downloads nothing: a :class:`Resolved` names its objects by store key (with the sha256
and size recorded for a dataset, so this machine's cache can share and verify it). The runner turns
keys into local paths for one attempt (``workers.handlers.base.JobContext``), through
``app.storage.local_copies``: on the local folder the objects' own files, on object storage
pinned copies in the read-through cache.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy.orm import Session

from app.artifacts import service as artifacts
from app.datasets import service as datasets
from app.errors import InvalidInput, NotFound
from app.jobs.kinds import InputKind, InputRef, JobKind
from app.storage import Store
from app.store.errors import ObjectNotFound
from app.store.folders import read_bytes

MODEL_CONFIG = "config.json"
"""A Hugging Face model's shape, which the fine-tuning pre-flight reads before queueing."""


@dataclass(frozen=True)
class Resolved:
    """An input as a handler uses it: which stored objects hold it and how to read them."""

    id: str
    kind: InputKind
    name: str
    key: str
    """The store key of a dataset's file, or of a tokenizer's or model's folder."""
    format: str | None
    compression: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    lineage: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    pending: bool = False
    """A dataset still being validated: only a job that waits for its inputs admits one."""
    sha256: str | None = None
    """A dataset's recorded digest (the cache shares and verifies copies by it)."""
    size: int | None = None
    base_key: str | None = None
    """A peft adapter's base model folder (the adapter itself is ``key``)."""
    store: Store | None = field(default=None, repr=False, compare=False)
    """Where ``key`` is stored (for :attr:`config`)."""

    @cached_property
    def config(self) -> Mapping[str, Any] | None:
        """A model's ``config.json`` when it has one: a few hundred bytes read on first use, so
        the fine-tuning pre-flight can size the run without fetching the model."""
        if self.kind != "model" or self.store is None:
            return None
        return model_config(self.store, self.key)


def load_inputs(
    *,
    session: Session,
    store: Store,
    tenant_id: str,
    kind: JobKind,
    params: Any,
    lock: bool = False,
    pending: bool = False,
    include_deleted: bool = False,
) -> dict[str, Resolved]:
    """Every input the parameters name, by parameter name.

    ``lock`` holds a shared row lock on each dataset and model until the caller commits, so a
    concurrent delete waits and then sees the new job as a reader (and refuses) instead of racing
    it.
    ``pending`` admits a dataset that is still being validated (marked ``pending``), for a job
    that waits queued until its files are ready; one that failed validation is still refused.
    ``include_deleted`` admits a file deleted after the job was submitted: a job already written
    keeps reading it (its bytes stay until the job ends); a new one is refused it.

    Raises:
        InvalidInput: an input is unknown, another tenant's (indistinguishable), or not ready;
            ``param`` names it as ``params.<name>``.
    """
    return {
        item.param: _load(
            session,
            store,
            tenant_id,
            item,
            object_id,
            lock=lock,
            pending=pending,
            include_deleted=include_deleted,
        )
        for item, object_id in kind.referenced(params)
    }


def _load(
    session: Session,
    store: Store,
    tenant_id: str,
    item: InputRef,
    object_id: str,
    *,
    lock: bool,
    pending: bool,
    include_deleted: bool,
) -> Resolved:
    param = f"params.{item.param}"
    try:
        if item.kind == "dataset":
            return _dataset(
                session,
                store,
                tenant_id,
                item,
                object_id,
                lock=lock,
                pending=pending,
                include_deleted=include_deleted,
            )
        if item.kind == "model" and artifacts.fine_tuned_by(object_id):  # OpenAI's name for it
            artifact = artifacts.find_model(
                session=session, tenant_id=tenant_id, model=object_id, lock=lock
            )
        else:
            artifact = artifacts.get_artifact(
                session=session,
                tenant_id=tenant_id,
                category=item.kind,
                artifact_id=object_id,
                lock=lock,
            )
    except NotFound as err:
        raise InvalidInput(err.message, code=err.code, param=param) from None
    if item.ready:
        artifacts.check_ready(artifact, param=param)
    if item.formats and artifact.format not in item.formats:
        raise InvalidInput(
            f"Model '{artifact.id}' is {artifact.format}; this job reads "
            f"{' or '.join(item.formats)} models.",
            code="model.wrong_format",
            param=param,
        )
    base_key = None
    if artifact.format == "peft-adapter":
        base_id = artifact.details.get("base_model_id")
        try:
            base = artifacts.get_artifact(session=session, tenant_id=tenant_id, category="model",
                                          artifact_id=str(base_id), lock=lock)  # fmt: skip
        except NotFound:
            raise InvalidInput(f"The base of adapter '{artifact.id}' no longer exists.",
                               code="model.base_missing", param=param) from None  # fmt: skip
        base_key = base.uri
    return Resolved(
        id=artifact.id,
        kind=item.kind,
        name=artifact.name,
        key=artifact.uri,
        format=artifact.format,
        lineage=dict(artifact.lineage),
        details=dict(artifact.details),
        base_key=base_key,
        store=store,
    )


def model_config(store: Store, folder: str) -> Mapping[str, Any] | None:
    """The folder's ``config.json`` as a mapping, or None (no such file, not a JSON object)."""
    try:
        config = json.loads(read_bytes(store, f"{folder}/{MODEL_CONFIG}"))
    except (ObjectNotFound, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _dataset(
    session: Session,
    store: Store,
    tenant_id: str,
    item: InputRef,
    object_id: str,
    *,
    lock: bool,
    pending: bool,
    include_deleted: bool,
) -> Resolved:
    dataset = datasets.get_dataset(
        session=session,
        tenant_id=tenant_id,
        dataset_id=object_id,
        lock=lock,
        include_deleted=include_deleted,
    )
    waits = item.ready and pending and datasets.still_validating(session, dataset)
    if item.ready and not waits:
        datasets.check_ready(dataset, param=f"params.{item.param}")
    return Resolved(
        id=dataset.id,
        kind="dataset",
        name=dataset.name,
        key=dataset.storage_key,
        format=dataset.format,
        compression=dataset.compression,
        options=dict(dataset.options),
        pending=waits,
        sha256=dataset.sha256 or None,
        size=dataset.size_bytes,
    )
