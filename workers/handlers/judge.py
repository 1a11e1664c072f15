"""``judge``: a model or an endpoint votes on a comparison's pairs; the votes go to the
comparison as a judge rater's (:class:`app.comparisons.judges.JudgeVotes`), recorded in the
transaction that marks the job succeeded.

The endpoint's key is decrypted here, handed to the stage in its inputs (never in its config,
which is stored), and appears in no result, event or log line.
"""

from __future__ import annotations

from app.comparisons.judges import JudgeVote, JudgeVotes
from app.errors import GristmillError
from app.flows.judging import judge_material
from app.jobs.kinds.judge import JudgeParams
from pipeline.configs.judge import JudgeConfig
from pipeline.judge.stage import JudgeInputs, JudgePair, run_judge
from pipeline.parts.endpoints import Endpoint
from pipeline.types import PipelineError
from workers.handlers.base import JobContext, Outcome, run_stage, stage_config


def handle_judge(ctx: JobContext[JudgeParams]) -> Outcome:
    params = ctx.params
    assert ctx.session_factory is not None  # the runner always gives one
    try:
        with ctx.session_factory() as session:
            pairs, secret = judge_material(
                session=session, settings=ctx.settings, tenant_id=ctx.tenant_id, params=params
            )
    except GristmillError as err:  # the comparison or the secret was deleted meanwhile
        raise PipelineError(err.code, err.message) from None
    endpoint = None
    if secret is not None:
        endpoint = Endpoint(secret.base_url, params.endpoint_model, secret.api_key)
    folders = ctx.model_folders("judge_model_id") if params.judge_model_id else (None, None)
    inputs = JudgeInputs(
        pairs=tuple(
            JudgePair(p.prompt_index, p.model_x, p.model_y, p.question, p.answer_x, p.answer_y)
            for p in pairs
        ),
        model_dir=folders[0],
        adapter_dir=folders[1],
        endpoint=endpoint,
    )
    result = run_stage(ctx, run_judge, stage_config(params, JudgeConfig), inputs)
    name = (
        f"judge:{params.judge_model_id}"
        if params.judge_model_id
        else f"judge:{params.secret}/{params.endpoint_model}"
    )
    figures = {
        "pairs": result.pairs,
        "wins": result.wins,
        "ties": result.ties,
        "position_bias": result.position_bias,
        "first_position": result.first_position,
        "unanswered": result.unanswered,
    }
    votes = [JudgeVote(v.prompt_index, v.model_x, v.model_y, v.winner) for v in result.verdicts]
    output = JudgeVotes(
        comparison_id=params.comparison_id,
        name=name,
        details={**figures, "job_id": ctx.job_id},
        votes=votes,
    )
    return Outcome(
        result={"comparison_id": params.comparison_id, "judge": name, **figures},
        outputs=[output],
    )
