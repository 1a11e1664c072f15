"""What a ``compare`` job hands over: every model's answers, which open the comparison.

The output follows the protocol in ``workers/handlers/base.py``: it has no files to place, and it
records itself in the transaction that marks the job succeeded, so rating opens exactly when
the answers are there.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.comparisons.tables import Comparison, ComparisonAnswer, ComparisonPair
from app.storage import Store


@dataclass(frozen=True)
class ComparisonAnswers:
    """A ``compare`` job's output: stored with the job's success, which opens rating."""

    comparison_id: str
    prompts: list[str]
    answers: Mapping[str, Sequence[str]]
    """Model id → its answer to each prompt, in prompt order."""

    def place(self, *, store: Store, tenant_id: str, job_id: str | None) -> ComparisonAnswers:
        """Answers are rows only: placed as they are."""
        return self

    def record(self, *, session: Session) -> None:
        """Store the answers and the pairs to rate, and open the comparison (in the job's final
        commit)."""
        comparison = session.get_one(Comparison, self.comparison_id)
        comparison.prompts = list(self.prompts)
        for model_id, texts in self.answers.items():
            for index, text in enumerate(texts):
                session.add(
                    ComparisonAnswer(
                        comparison_id=comparison.id,
                        prompt_index=index,
                        model_id=model_id,
                        text=text,
                    )
                )
        models = sorted(self.answers)
        for index in range(len(self.prompts)):
            for x, y in itertools.combinations(models, 2):
                session.add(
                    ComparisonPair(
                        comparison_id=comparison.id, prompt_index=index, model_x=x, model_y=y,
                        votes=0, shuffle=secrets.randbelow(2**31),
                    )
                )  # fmt: skip
        comparison.status = "open"

    def discard(self, *, store: Store) -> None:
        """Nothing was placed; the comparison stays closed without its answers."""
