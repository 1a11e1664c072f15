"""``import_model``: an uploaded archive becomes a registry model, or the model is refused."""

from __future__ import annotations

from app import layout
from app.artifacts.outputs import ImportVerdict
from app.jobs.kinds.import_model import ImportModelParams
from app.store.errors import ObjectNotFound
from pipeline.configs.finetune import ModelImportConfig
from pipeline.import_model.stage import ModelImportInputs, run_model_import
from pipeline.types import PipelineError
from workers.handlers.base import JobContext, Outcome, figures, run_stage


def handle_import_model(ctx: JobContext[ImportModelParams]) -> Outcome:
    """A verdict whatever the archive holds: a refused upload fails its model, not the job."""
    model = ctx.inputs["model_id"]
    try:
        archive = ctx.file("model_id", layout.UPLOAD_NAME)
    except ObjectNotFound:  # gone (imported already): the stage refuses the missing archive
        archive = ctx.paths.work_dir / layout.UPLOAD_NAME
    inputs = ModelImportInputs(archive=archive)
    # The archive counts against the quota until the import replaces it with the unpacked files.
    held = inputs.archive.stat().st_size if inputs.archive.is_file() else 0
    quota = None if ctx.storage_left is None else ctx.storage_left + held
    try:
        config = ModelImportConfig(quota_bytes=None if quota is None else max(quota, 0))
        result = run_stage(ctx, run_model_import, config, inputs)
    except PipelineError as err:
        verdict = ImportVerdict(model.id, None, errors=[{"code": err.code, "reason": err.message}])
        return Outcome(result={"model_id": model.id, "status": "failed"}, outputs=[verdict])
    info = figures(result)
    verdict = ImportVerdict(model.id, result.model_dir, details=info, format=result.format)
    return Outcome(result={"model_id": model.id, "status": "ready", **info}, outputs=[verdict])
