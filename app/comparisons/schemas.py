from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from pipeline.configs.compare import MAX_PROMPT_CHARS, MAX_PROMPTS

Prompt = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS)]


class ComparisonCreate(BaseModel):
    """Two or more of your ready models, the prompts they answer, and how they generate."""

    model_config = ConfigDict(extra="forbid")

    models: list[Annotated[str, StringConstraints(min_length=1, max_length=40)]] = Field(
        min_length=2, max_length=16, description="Ids of 2-16 of your ready models."
    )
    prompts: list[Prompt] | None = Field(
        default=None, max_length=MAX_PROMPTS, description="Up to 500 prompts (≤ 4000 characters)."
    )
    dataset_id: str | None = Field(
        default=None, max_length=40, description="A ready dataset whose texts are the prompts."
    )
    max_tokens: int = Field(default=128, ge=1, le=4096, description="Tokens per answer.")
    temperature: float = Field(default=0.7, ge=0.0, le=10.0, description="0 is greedy.")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed set before each answer.")

    @model_validator(mode="after")
    def _one_source(self) -> ComparisonCreate:
        if (self.prompts is None) == (self.dataset_id is None):
            raise ValueError("give prompts or dataset_id (one of them)")
        if self.prompts is not None and not self.prompts:
            raise ValueError("give at least one prompt")
        if len(set(self.models)) != len(self.models):
            raise ValueError("models must be different")
        return self


class ComparisonRead(BaseModel):
    id: str
    object: Literal["comparison"] = "comparison"
    status: str = Field(description="generating → open (rating) → closed | failed")
    models: list[str]
    prompts: int | None = Field(description="Number of prompts (known once generated).")
    dataset_id: str | None
    settings: dict[str, Any]
    job_id: str | None
    votes: int
    created_at: datetime


class RaterCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=255, description="Who the link is for.")


class RaterRead(BaseModel):
    id: str
    name: str | None
    url: str = Field(description="The rater page: send it to the rater (it carries the token).")
    token: str = Field(description="Shown once; stored only as its hash.")


class VoteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ticket: str = Field(min_length=1, max_length=64)
    choice: Literal["a", "b", "tie", "both_bad"]
    note: str | None = Field(default=None, max_length=1000)


class VoteCount(BaseModel):
    votes: int = Field(description="This rater's votes so far.")


class JudgeCreate(BaseModel):
    """A judge for the comparison's pairs: one of your models, or an endpoint's model named by
    one of your secrets."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None, max_length=40, description="A ready model of yours (Hugging Face or GGUF)."
    )
    secret: str | None = Field(
        default=None, max_length=100, description="A secret naming an OpenAI-compatible endpoint."
    )
    endpoint_model: str = Field(
        default="", max_length=200, description="The endpoint's model to ask (with secret)."
    )
    rubric: str | None = Field(
        default=None,
        max_length=8000,
        description="The prompt, with {question}, {answer_a} and {answer_b}; default: MT-Bench's "
        "pairwise prompt, shortened.",
    )
    max_pairs: int = Field(default=2000, ge=1, le=100_000, description="Pairs judged at most.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where a model judge runs."
    )

    @model_validator(mode="after")
    def _one_judge(self) -> JudgeCreate:
        if (self.model is None) == (self.secret is None):
            raise ValueError("give model or secret (one of them)")
        return self


class JudgeStarted(BaseModel):
    comparison_id: str
    job_id: str = Field(description="The ``judge`` job; its votes count when it succeeds.")
