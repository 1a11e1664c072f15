"""``quantize``: a model to GGUF (checked in llama.cpp) or GPTQ, with a quality report."""

from __future__ import annotations

from dataclasses import dataclass

from app.jobs.kinds.registry import JobKind, Queue, ref
from pipeline.configs.base import ConfigError
from pipeline.configs.quantize import QuantizeConfig


@dataclass(frozen=True)
class QuantizeParams(QuantizeConfig):
    model_id: str = ref("model", formats=("huggingface",))
    """The model to quantise (Llama-family, Hugging Face layout)."""
    heldout_dataset_id: str | None = ref("dataset", optional=True)
    """Held-out text for perplexity and bits per byte against full precision."""
    calibration_dataset_id: str | None = ref("dataset", optional=True)
    """GPTQ calibration text (required for format gptq)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format == "gptq" and self.calibration_dataset_id is None:
            raise ConfigError("calibration_dataset_id", "GPTQ needs a calibration dataset")


def queue(params: QuantizeParams) -> Queue:
    """GGUF is made and checked for CPUs; GPTQ is computed where its kernels run."""
    return "gpu" if params.format == "gptq" else "cpu"


KIND = JobKind(
    name="quantize",
    summary=(
        "Quantise a model to GGUF (checked in llama.cpp) or GPTQ (checked against "
        "round-to-nearest), with a quality report."
    ),
    params=QuantizeParams,
    outputs=("model",),
    queue=queue,
    handler="workers.handlers.quantize:handle_quantize",
    stage="pipeline.quantize.stage:run_quantize",
)
