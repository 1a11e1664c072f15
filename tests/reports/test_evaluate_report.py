"""The evaluate report page: figures from the job result, loss curves from the model's lineage
(its own job and its base's), charts inlined as PNG; other tenants and other kinds get none."""

from __future__ import annotations

import base64
import re

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts.tables import Artifact
from app.db import session_scope
from app.jobs import metrics as job_metrics
from app.jobs.tables import Job

RESULT = {
    "model_id": "mdl_CHILD",
    "perplexity": [
        {"dataset": "wiki.jsonl", "bits_per_byte": 1.234, "token_perplexity": 9.5, "tokens": 10,
         "bytes": 40, "word_perplexity": 20.1},
        {"dataset": "news.jsonl", "bits_per_byte": 2.5, "token_perplexity": 12.0, "tokens": 8,
         "bytes": 30, "word_perplexity": 31.0},
    ],
    "bias": {"templates": "gristmill-bias-v1", "items": 80, "categories": {
        "age": {"bias": 0.12, "n": 40, "ci95": [0.01, 0.2], "p_value": 0.03},
        "gender": {"bias": -0.05, "n": 40, "ci95": [-0.1, 0.02], "p_value": 0.4},
    }},
    "samples": [{"prompt": "Hi <b>", "seed": 0, "completion": "there"}],
}  # fmt: skip


def _job(session: Session, tenant_id: str, job_id: str, job_type: str, **values: object) -> None:
    session.add(Job(id=job_id, tenant_id=tenant_id, type=job_type, status="succeeded",
                    queue="cpu", params={}, max_attempts=1, **values))  # fmt: skip


def _model(session: Session, tenant_id: str, model_id: str, lineage: dict[str, str]) -> None:
    session.add(Artifact(id=model_id, tenant_id=tenant_id, category="model", name=model_id,
                         uri="x", format="huggingface", size_bytes=1, sha256="0" * 64,
                         lineage=lineage))  # fmt: skip


def test_the_report_page_has_every_figure_and_the_lineage_curves(
    client: TestClient,
    factory: sessionmaker[Session],
    auth: dict[str, str],
    tenant: str,
    other_auth: dict[str, str],
) -> None:
    with session_scope(factory) as session:
        _job(session, tenant, "job_PRETRAIN", "pretrain")
        _job(session, tenant, "job_TUNE", "finetune")
        _job(session, tenant, "job_EVAL", "evaluate", result=RESULT)
        _job(session, tenant, "job_RUNNING", "evaluate", result=None)
        session.flush()
        _model(session, tenant, "mdl_BASE", {"job_id": "job_PRETRAIN"})
        _model(session, tenant, "mdl_CHILD", {"job_id": "job_TUNE", "parent_model_id": "mdl_BASE"})
        job_metrics.record_metrics(session=session, job_id="job_PRETRAIN", attempt=1,
                            rows=[(s, "train_loss", 5.0 - s / 10) for s in range(1, 6)]
                            + [(5, "val_loss", 4.6), (5, "lr", 0.001)])  # fmt: skip
        job_metrics.record_metrics(session=session, job_id="job_TUNE", attempt=1,
                            rows=[(1, "train_loss", 3.0), (2, "train_loss", 2.5)])  # fmt: skip

    page = client.get("/v1/jobs/job_EVAL/report.html", headers=auth)

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "Evaluation of mdl_CHILD" in text
    assert "1.234" in text and "news.jsonl" in text  # bits/byte per dataset
    assert "0.12" in text and "gender" in text and "p_value" in text  # bias per category
    assert "mdl_BASE · train_loss" not in text  # curve labels live in the chart, not the text
    assert "Hi &lt;b&gt;" in text and "Hi <b>" not in text  # escaped
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3  # bits/byte, bias, loss curves
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)

    assert client.get("/v1/jobs/job_EVAL/report.html", headers=other_auth).status_code == 404
    assert client.get("/v1/jobs/job_TUNE/report.html", headers=auth).status_code == 409
    assert client.get("/v1/jobs/job_RUNNING/report.html", headers=auth).status_code == 409


def test_lineage_curves_follow_parents_and_keep_to_loss_metrics(
    factory: sessionmaker[Session], tenant: str
) -> None:
    from app.reports.evaluate import lineage_curves

    with session_scope(factory) as session:
        _job(session, tenant, "job_PRETRAIN", "pretrain")
        _job(session, tenant, "job_TUNE", "finetune")
        session.flush()
        _model(session, tenant, "mdl_BASE", {"job_id": "job_PRETRAIN"})
        _model(session, tenant, "mdl_CHILD", {"job_id": "job_TUNE", "parent_model_id": "mdl_BASE"})
        job_metrics.record_metrics(
            session=session,
            job_id="job_PRETRAIN",
            attempt=1,
            rows=[(2, "train_loss", 4.0), (1, "train_loss", 5.0), (1, "lr", 1.0)],
        )
        job_metrics.record_metrics(session=session, job_id="job_TUNE", attempt=1,
                            rows=[(1, "val_loss", 3.0)])  # fmt: skip
    with factory() as session:
        curves = lineage_curves(session, tenant, "mdl_CHILD")
        assert curves == {
            "mdl_CHILD · val_loss": [(1, 3.0)],
            "mdl_BASE · train_loss": [(1, 5.0), (2, 4.0)],
        }
        assert lineage_curves(session, "another-tenant", "mdl_CHILD") == {}
