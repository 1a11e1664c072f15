"""Two evaluate jobs on the same task items, compared item by item.

Scores of one item under two models are correlated (an item hard for one is often hard for the
other), so the comparison pairs them: the figure is the mean per-item difference, its interval a
bootstrap over items (each resample keeps pairs together) and its p-value a sign-flip
permutation test (under the null, which model earned which score is exchangeable per item).
The API computes it from the two jobs' task-example datasets.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.datasets.tables import Dataset
from app.db import find_owned
from app.errors import Conflict, InvalidInput, NotFound, shown
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.storage import Store
from app.store import ObjectNotFound

PER_ITEM = (
    "acc", "acc_norm", "exact_match", "f1", "rouge_l", "chrf", "bleu", "correct", "grader_score"
)  # fmt: skip
"""Per-item scores a comparison can use (``correct`` is a label task's accuracy,
``grader_score`` a score grader's 1–10, where items it could not grade in either run are left
out)."""


def paired_test(
    a: Sequence[float],
    b: Sequence[float],
    *,
    samples: int = 2000,
    permutations: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean of ``b - a`` with a paired bootstrap 95% interval and a two-sided sign-flip p-value.

    Raises:
        ValueError: the lists differ in length or are empty.
    """
    if len(a) != len(b) or not a:
        raise ValueError("paired scores need two non-empty lists of the same length")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    observed = math.fsum(diffs) / n
    rng = random.Random(seed)
    boot = sorted(math.fsum(rng.choices(diffs, k=n)) / n for _ in range(samples))
    lo, hi = boot[int(0.025 * (samples - 1))], boot[math.ceil(0.975 * (samples - 1))]
    extreme = 0
    for _ in range(permutations):
        flipped = math.fsum(d if rng.random() < 0.5 else -d for d in diffs) / n
        extreme += abs(flipped) >= abs(observed) - 1e-12
    return {
        "n": n,
        "mean_a": math.fsum(a) / n,
        "mean_b": math.fsum(b) / n,
        "difference": observed,
        "ci95": [lo, hi],
        "p_value": (extreme + 1) / (permutations + 1),
    }


def read_examples(lines: Iterable[str | bytes]) -> dict[int, Mapping[str, Any]]:
    """A task-example file (JSONL) by item index."""
    rows = (json.loads(line) for line in lines if line.strip())
    return {int(row["index"]): row for row in rows}


def compare_examples(
    a: Mapping[int, Mapping[str, Any]],
    b: Mapping[int, Mapping[str, Any]],
    metric: str,
    **options: int,
) -> dict[str, Any]:
    """:func:`paired_test` on ``metric`` over the items both runs scored.

    Raises:
        InvalidInput: an unknown metric, one the runs do not have, or no shared items.
    """
    if metric not in PER_ITEM:
        raise InvalidInput(f"metric must be one of {', '.join(PER_ITEM)}", param="metric")
    shared = sorted(set(a) & set(b))
    if not shared:
        raise InvalidInput("the two jobs share no task items", param="metric")
    if any(metric not in a[i] or metric not in b[i] for i in shared):
        raise InvalidInput(f"both jobs' items must carry {metric!r}", param="metric")
    shared = [i for i in shared if a[i][metric] is not None and b[i][metric] is not None]
    if not shared:
        raise InvalidInput(f"no item has {metric!r} in both jobs", param="metric")
    result = paired_test(
        [float(a[i][metric]) for i in shared], [float(b[i][metric]) for i in shared], **options
    )
    return {"metric": metric, **result}


def _examples(session: Session, store: Store, job: Job) -> tuple[str, dict[int, Any]]:
    task = (job.result or {}).get("task") if job.type == "evaluate" else None
    if job.status != JobStatus.succeeded or not task or not task.get("examples_dataset_id"):
        raise Conflict(
            f"Job '{job.id}' is not a succeeded evaluate job with a task.",
            code="report.not_available",
        )
    dataset = find_owned(session, Dataset, task["examples_dataset_id"], tenant_id=job.tenant_id)
    if dataset is None:
        raise Conflict(f"Job '{job.id}''s task examples were deleted.", code="report.not_available")
    # Two uploads of the same file are the same items: the source is known by its content.
    source = find_owned(session, Dataset, str(task.get("dataset_id")), tenant_id=job.tenant_id)
    key = source.sha256 if source is not None else str(task.get("dataset_id"))
    try:
        with io.TextIOWrapper(store.open_read(dataset.storage_key), encoding="utf-8") as f:
            return key, read_examples(f)
    except ObjectNotFound:
        raise Conflict(
            f"Job '{job.id}''s task examples were deleted.", code="report.not_available"
        ) from None


def compare_jobs(
    *, session: Session, store: Store, job: Job, other_id: str, metric: str
) -> dict[str, Any]:
    """``other_id`` minus ``job`` on ``metric``, paired over their shared task items.

    Raises:
        NotFound: ``other_id`` is not a job of the tenant's.
        Conflict: either job has no task examples, or they scored different task datasets
            (by content: two uploads of one file are the same items).
        InvalidInput: see :func:`compare_examples`.
    """
    other = find_owned(session, Job, other_id, tenant_id=job.tenant_id)
    if other is None:
        raise NotFound(f"Job '{shown(other_id)}' not found.", code="job.not_found")
    source_a, rows_a = _examples(session, store, job)
    source_b, rows_b = _examples(session, store, other)
    if source_a != source_b:
        raise Conflict("The two jobs scored different task datasets.", code="report.not_paired")
    return {"job_id": job.id, "other_job_id": other.id, **compare_examples(rows_a, rows_b, metric)}
