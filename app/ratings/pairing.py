"""What a rater sees next: one prompt and two answers, sides at random, no model identity.

Stateless by design: everything is derived from the comparison's answers, the rater's own votes
and a server secret, so any API process can answer ``GET …/next`` and check ``POST …/votes``.
The ticket a rater gets seals (pair, round, sides) for that rater: the fields are encrypted with a
keystream drawn from the server secret and authenticated by an HMAC that also covers the rater
(deterministic SIV-style), so it is opaque to the rater (model names cannot be read out of it),
unforgeable, and :func:`open_ticket` reads it back in constant time, whatever the number of pairs.

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


_TAG = 12
"""Bytes of HMAC-SHA256 that authenticate a ticket (96 bits)."""
_FIELDS = 4
"""round, index of model_x, index of model_y, left side (0 = model_x), then the prompt id."""
_MAX_PAYLOAD = 32 - _TAG  # a ticket is at most 64 hex digits


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"\x1f".join(parts), hashlib.sha256).digest()


def _stream(secret: bytes, tag: bytes, payload: bytes) -> bytes:
    pad = _mac(secret, b"ticket-stream", tag)
    return bytes(a ^ b for a, b in zip(payload, pad, strict=False))


def ticket(secret: bytes, rater: str, key: PairKey, left_model: str, models: Sequence[str]) -> str:
    """The sealed showing; ``models`` are the prompt's models, sorted (the indices sealed).

    Raises:
        ValueError: a prompt id too long to seal (ids are short: the service uses indices).
    """
    prompt = key.prompt_id.encode()
    payload = bytes(
        (key.round, models.index(key.model_x), models.index(key.model_y),
         int(left_model != key.model_x))
    ) + prompt  # fmt: skip
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError("prompt id too long for a ticket")
    tag = _mac(secret, b"ticket-tag", rater.encode(), payload)[:_TAG]
    return (tag + _stream(secret, tag, payload)).hex()


@dataclass(frozen=True)
class Sealed:
    """What a genuine ticket says, before it is checked against the comparison's models."""

    prompt_id: str
    round: int
    x: int
    y: int
    left_is_y: bool

    def showing(self, models: Sequence[str], value: str) -> Showing | None:
        """The showing over the prompt's sorted ``models`` (None if they do not fit)."""
        if not (0 <= self.x < self.y < len(models)) or self.round not in (0, 1):
            return None
        key = PairKey(self.prompt_id, models[self.x], models[self.y], self.round)
        left, right = (key.model_y, key.model_x) if self.left_is_y else (key.model_x, key.model_y)
        return Showing(key, left, right, value)


def open_ticket(secret: bytes, rater: str, value: str) -> Sealed | None:
    """The fields a ticket seals for ``rater``; None for a forged ticket or another rater's."""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return None
    if not _TAG + _FIELDS <= len(raw) <= _TAG + _MAX_PAYLOAD:
        return None
    tag = raw[:_TAG]
    payload = _stream(secret, tag, raw[_TAG:])
    expected = _mac(secret, b"ticket-tag", rater.encode(), payload)[:_TAG]
    if not hmac.compare_digest(tag, expected):
        return None
    try:
        prompt_id = payload[_FIELDS:].decode()
    except UnicodeDecodeError:
        return None
    rnd, x, y, left = payload[:_FIELDS]
    return Sealed(prompt_id, rnd, x, y, bool(left))


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
            return show(secret, rater, key, sorted(answers[key.prompt_id]), rng)
    fresh = [k for k in all_pairs(answers) if k not in done]
    if not fresh:
        return None
    rng.shuffle(fresh)
    fresh.sort(key=lambda k: (counts or {}).get(k, 0))
    return show(secret, rater, fresh[0], sorted(answers[fresh[0].prompt_id]), rng)


def _base(key: PairKey) -> tuple[str, str, str]:
    return key.prompt_id, key.model_x, key.model_y


def show(
    secret: bytes, rater: str, key: PairKey, models: Sequence[str], rng: random.Random
) -> Showing:
    """``key`` with sides at random and its ticket; ``models``: the prompt's, sorted."""
    left, right = (key.model_x, key.model_y) if rng.random() < 0.5 else (key.model_y, key.model_x)
    return Showing(key, left, right, ticket(secret, rater, key, left, models))


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
    sealed = open_ticket(secret, rater, value)
    if sealed is None or sealed.prompt_id not in answers:
        return None
    return sealed.showing(sorted(answers[sealed.prompt_id]), value)
