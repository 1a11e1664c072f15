"""The report page of an ``evaluate`` job: bits per byte, bias per category, task figures,
training curves.

The training curves are the loss metrics of the jobs in the model's lineage (the job that made
it, then its parent model's, up to a few generations), so a fine-tune shows its base's
pretraining too. Charts are PNGs inlined as base64, so the page is one self-contained file.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.artifacts.tables import Artifact
from app.db import find_owned
from app.errors import Conflict
from app.jobs.states import JobStatus
from app.jobs.tables import Job, JobMetric
from app.reports.charts import bias_png, bits_per_byte_png, loss_curves_png
from app.reports.html import img as _img
from app.reports.html import table as _table
from app.reports.tasks import task_section

LINEAGE_DEPTH = 4
MAX_POINTS = 20_000


def lineage_curves(
    session: Session, tenant_id: str, model_id: str | None
) -> dict[str, list[tuple[int, float]]]:
    """Loss curves of the jobs that made the model and its ancestors (the tenant's own)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    seen: set[str] = set()
    for _ in range(LINEAGE_DEPTH):
        model = find_owned(session, Artifact, model_id, tenant_id=tenant_id) if model_id else None
        if model is None or model.id in seen:
            break
        seen.add(model.id)
        job_id = model.lineage.get("job_id")
        if isinstance(job_id, str):
            rows = session.scalars(
                select(JobMetric)
                .where(JobMetric.job_id == job_id, JobMetric.name.like("%loss%"))
                .order_by(JobMetric.name, JobMetric.step)
                .limit(MAX_POINTS)
            )
            for row in rows:
                curves.setdefault(f"{model.name} · {row.name}", []).append((row.step, row.value))
        parent = model.lineage.get("parent_model_id")
        model_id = parent if isinstance(parent, str) else None
    return curves


def render_report(*, session: Session, job: Job) -> str:
    """The page for one succeeded ``evaluate`` job of the caller's.

    Raises:
        Conflict: the job is not an evaluation, or it has not succeeded (no figures yet).
    """
    if job.type != "evaluate":
        raise Conflict(f"Job '{job.id}' is a {job.type} job; reports are for evaluate jobs.",
                       code="report.not_available")  # fmt: skip
    if job.status != JobStatus.succeeded or not job.result:
        raise Conflict(f"Job '{job.id}' is {job.status}; its report exists once it succeeds.",
                       code="report.not_ready")  # fmt: skip
    result: Mapping[str, Any] = job.result
    model_id = result.get("model_id")
    model = session.get(Artifact, model_id) if isinstance(model_id, str) else None
    model_name = model.name if model is not None and model.tenant_id == job.tenant_id else model_id
    parts: list[str] = [f"<h1>Evaluation of {html.escape(str(model_name))}</h1>",
                        f"<p>Job <code>{html.escape(job.id)}</code></p>"]  # fmt: skip

    ppl = [dict(r, model=model_name) for r in result.get("perplexity") or []]
    parts.append("<h2>Bits per byte</h2>")
    if ppl:
        parts.append(_img(bits_per_byte_png(ppl), "bits per byte per dataset"))
        parts.append(_table(ppl, ("dataset", "bits_per_byte", "token_perplexity",
                                  "word_perplexity", "tokens", "bytes")))  # fmt: skip
    else:
        parts.append("<p>No dataset was scored.</p>")

    bias = result.get("bias")
    parts.append("<h2>Bias probe</h2>")
    if bias and bias.get("categories"):
        cats = bias["categories"]
        parts.append(f"<p>Templates: {html.escape(str(bias.get('templates')))}, "
                     f"{int(bias.get('items', 0))} items.</p>")  # fmt: skip
        parts.append(_img(bias_png(cats), "bias per category with 95% intervals"))
        rows = [{"category": c, **cats[c]} for c in sorted(cats)]
        parts.append(_table(rows, ("category", "bias", "ci95", "n", "p_value")))
    else:
        parts.append("<p>The bias probe was not run.</p>")

    if result.get("task"):
        parts += task_section(result["task"])

    curves = lineage_curves(session, job.tenant_id, model_id if isinstance(model_id, str) else None)
    parts.append("<h2>Training loss (from the model's lineage)</h2>")
    if curves:
        parts.append(_img(loss_curves_png(curves), "training loss curves"))
    else:
        parts.append("<p>No training metrics in this model's lineage (an imported model).</p>")

    samples = result.get("samples") or []
    if samples:
        parts.append("<h2>Samples</h2>")
        parts.append(_table(samples, ("prompt", "seed", "completion")))
    body = "\n".join(parts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Evaluation report {html.escape(job.id)}</title>
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem}}
img{{max-width:100%}}table{{border-collapse:collapse;margin:.5rem 0}}
td,th{{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}}</style>
</head><body>
{body}
</body></html>
"""
