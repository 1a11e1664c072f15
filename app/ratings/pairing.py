"""What a rater sees next: one prompt and two answers, sides at random, no model identity.

Stateless by design: everything is derived from the comparison's answers, the rater's own votes
and a server secret, so any API process can answer ``GET …/next`` and check ``POST …/votes``.
The ticket a rater gets is an HMAC of (rater, pair, round, sides): opaque to the rater (model
names cannot be read out of it), unforgeable, and resolvable by the server with
:func:`resolve_ticket`, which recomputes the candidates.

Order: pairs nobody has rated much come first (``counts``), ties broken at random per rater, so
votes spread over every prompt and model pair. Every ``control_every``-th showing is a control:
a pair this rater already voted on, shown again (round 1, usually with sides swapped) to measure
how consistent raters are. A rater is never shown a (pair, round) they already voted on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.ratings.bradley_terry import Vote


@dataclass(frozen=True, order=True)
class PairKey:
    prompt_id: str
    model_x: str
    model_y: str
    """``model_x < model_y``: a pair has one key whatever side each answer was shown on."""
    round: int = 0

    @classmethod
    def of(cls, prompt_id: str, m1: str, m2: str, round: int = 0) -> PairKey:
        x, y = sorted((m1, m2))
        return cls(prompt_id, x, y, round)


@dataclass(frozen=True)
class Showing:
    """A pair as shown to a rater: ``left`` is answer ``a`` of the vote."""

    key: PairKey
    left_model: str
    right_model: str
    ticket: str

    def public(
        self, prompts: Mapping[str, str], answers: Mapping[str, Mapping[str, str]]
    ) -> dict[str, Any]:
        """The body of ``GET …/next``: no model names, nothing that reveals them."""
        p = self.key.prompt_id
        return {
            "ticket": self.ticket,
            "prompt": prompts[p],
            "a": answers[p][self.left_model],
            "b": answers[p][self.right_model],
        }


def ticket(secret: bytes, rater: str, key: PairKey, left_model: str) -> str:
    message = "\x1f".join(
        (rater, key.prompt_id, key.model_x, key.model_y, str(key.round), left_model)
    )
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()[:32]


def all_pairs(answers: Mapping[str, Mapping[str, str]]) -> Iterator[PairKey]:
    """Every (prompt, two models that both answered it), round 0."""
    for prompt_id in sorted(answers):
        for m1, m2 in itertools.combinations(sorted(answers[prompt_id]), 2):
            yield PairKey(prompt_id, m1, m2)


def next_pair(
    answers: Mapping[str, Mapping[str, str]],
    rater: str,
    voted: Sequence[PairKey],
    *,
    secret: bytes,
    counts: Mapping[PairKey, int] | None = None,
    control_every: int = 10,
) -> Showing | None:
    """The next pair for ``rater`` given the keys they voted on, or None when they are done.

    ``answers`` maps prompt id → model → answer text; ``counts`` (votes per round-0 key, all
    raters) steers toward the least-rated pairs; ``control_every`` = 0 disables controls.
    """
    done = set(voted)
    rng = random.Random(f"{rater}\x1f{len(done)}")
    showing_number = len(done) + 1
    if control_every and showing_number % control_every == 0:
        repeatable = sorted(k for k in done if k.round == 0 and PairKey(*_base(k), 1) not in done)
        if repeatable:
            first = rng.choice(repeatable)
            key = PairKey(*_base(first), 1)
            return _show(secret, rater, key, rng)
    fresh = [k for k in all_pairs(answers) if k not in done]
    if not fresh:
        return None
    rng.shuffle(fresh)
    fresh.sort(key=lambda k: (counts or {}).get(k, 0))
    return _show(secret, rater, fresh[0], rng)


def _base(key: PairKey) -> tuple[str, str, str]:
    return key.prompt_id, key.model_x, key.model_y


def _show(secret: bytes, rater: str, key: PairKey, rng: random.Random) -> Showing:
    left, right = (key.model_x, key.model_y) if rng.random() < 0.5 else (key.model_y, key.model_x)
    return Showing(key, left, right, ticket(secret, rater, key, left))


CHOICES = ("a", "b", "tie", "both_bad")


def vote_for(showing: Showing, rater: str, choice: str, note: str | None = None) -> Vote:
    """The vote a rater cast on a resolved showing (``a`` = the left answer).

    Raises:
        ValueError: for a choice other than ``a``, ``b``, ``tie``, ``both_bad``.
    """
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {CHOICES}")
    return Vote(
        rater=rater,
        prompt_id=showing.key.prompt_id,
        model_a=showing.left_model,
        model_b=showing.right_model,
        outcome=choice,  # type: ignore[arg-type]
        round=showing.key.round,
        note=note,
    )


def export_jsonl(votes: Sequence[Vote]) -> str:
    """All votes, one JSON object a line, model identities included (for results, not raters)."""
    return "".join(json.dumps(dataclasses.asdict(v), ensure_ascii=False) + "\n" for v in votes)


def resolve_ticket(
    answers: Mapping[str, Mapping[str, str]], rater: str, value: str, *, secret: bytes
) -> Showing | None:
    """The showing a ticket stands for (None for a forged ticket or another rater's)."""
    for base in all_pairs(answers):
        for rnd in (0, 1):
            key = PairKey(*_base(base), rnd)
            for left, right in ((key.model_x, key.model_y), (key.model_y, key.model_x)):
                if hmac.compare_digest(ticket(secret, rater, key, left), value):
                    return Showing(key, left, right, value)
    return None
