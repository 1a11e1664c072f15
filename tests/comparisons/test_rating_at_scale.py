"""Rating stays cheap as a comparison grows: a vote and the next pair read a few rows by index,
however many votes and pairs there are, the least-rated pair still comes first, and the results
and chart are computed once per new vote."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from app.comparisons import chart, service
from app.comparisons.outputs import ComparisonAnswers
from app.comparisons.tables import (
    Comparison,
    ComparisonAnswer,
    ComparisonPair,
    ComparisonVote,
)
from app.ratings import bradley_terry

MODELS = [f"mdl_{c}" for c in "abcdef"]
PROMPTS = [f"Prompt {i}" for i in range(40)]


def open_comparison(factory: sessionmaker[Session], tenant_id: str) -> str:
    """An open comparison of six models on forty prompts (600 pairs), as its job leaves it."""
    with factory() as session:
        comparison = Comparison(
            id="cmp_01JBBBBBBBBBBBBBBBBBBBBBBB", tenant_id=tenant_id, status="generating",
            model_ids=list(MODELS), settings={}, secret="s" * 64,
        )  # fmt: skip
        session.add(comparison)
        answers = {m: [f"{m} answers {p}" for p in PROMPTS] for m in MODELS}
        ComparisonAnswers(comparison.id, list(PROMPTS), answers).record(session=session)
        session.commit()
        return comparison.id


def invite(client: TestClient, auth: dict[str, str], cid: str) -> dict[str, str]:
    invited = client.post(f"/v1/comparisons/{cid}/raters", headers=auth)
    assert invited.status_code == 201, invited.text
    return {"X-Rater-Token": invited.json()["token"]}


@pytest.fixture
def loaded() -> Iterator[Counter[str]]:
    """Rows of votes, answers and pairs the ORM loads, by table (in this process)."""
    counts: Counter[str] = Counter()
    listeners = []
    for table in (ComparisonVote, ComparisonAnswer, ComparisonPair):

        def on_load(target: object, context: object, name: str = table.__name__) -> None:
            counts[name] += 1

        event.listen(table, "load", on_load)
        listeners.append((table, on_load))
    yield counts
    for table, on_load in listeners:
        event.remove(table, "load", on_load)


def test_a_vote_reads_a_few_rows_whatever_the_votes_so_far(
    client: TestClient,
    auth: dict[str, str],
    factory: sessionmaker[Session],
    tenant: str,
    loaded: Counter[str],
) -> None:
    cid = open_comparison(factory, tenant)
    # 1,797 earlier votes by three raters on every pair but one, counted as votes count them.
    with factory() as session:
        pairs = list(session.query(ComparisonPair).order_by(ComparisonPair.id))
        spared = pairs[123]
        for rater, pair in itertools.product(("key:p", "key:q", "key:r"), pairs):
            if pair is spared:
                continue
            session.add(
                ComparisonVote(
                    comparison_id=cid, rater=rater, ticket="t", prompt_index=pair.prompt_index,
                    model_x=pair.model_x, model_y=pair.model_y, round=0,
                    left_model=pair.model_x, right_model=pair.model_y, verdict="a",
                )
            )  # fmt: skip
            pair.votes += 1
        session.get_one(Comparison, cid).votes = 3 * 599
        session.commit()
        assert len(pairs) == 40 * 15
    rater = invite(client, auth, cid)
    loaded.clear()

    shown = client.get(f"/v1/comparisons/{cid}/next", headers=rater)
    assert shown.status_code == 200, shown.text
    pair = shown.json()
    # The only pair nobody rated comes first, and its answers are the two shown.
    assert pair["prompt"] == PROMPTS[spared.prompt_index]
    assert {pair["a"], pair["b"]} == {
        f"{spared.model_x} answers {pair['prompt']}",
        f"{spared.model_y} answers {pair['prompt']}",
    }
    voted = client.post(
        f"/v1/comparisons/{cid}/votes", json={"ticket": pair["ticket"], "choice": "a"},
        headers=rater,
    )  # fmt: skip
    assert voted.status_code == 201 and voted.json() == {"votes": 1}
    assert loaded["ComparisonVote"] == 0
    assert loaded["ComparisonAnswer"] == 2 and loaded["ComparisonPair"] <= 2

    # The counters moved with the vote: the spared pair counts one, the comparison one more.
    with factory() as session:
        assert session.get_one(ComparisonPair, spared.id).votes == 1
    assert client.get(f"/v1/comparisons/{cid}", headers=auth).json()["votes"] == 3 * 599 + 1
    # The same rater next gets a pair they did not vote on, still by index.
    loaded.clear()
    again = client.get(f"/v1/comparisons/{cid}/next", headers=rater).json()
    assert again["ticket"] != pair["ticket"]
    assert loaded["ComparisonVote"] == 0 and loaded["ComparisonPair"] <= 2


def test_every_tenth_showing_repeats_an_earlier_pair_as_a_control(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session], tenant: str
) -> None:
    cid = open_comparison(factory, tenant)
    rater = invite(client, auth, cid)
    shown = []
    for _ in range(service.CONTROL_EVERY):
        pair = client.get(f"/v1/comparisons/{cid}/next", headers=rater).json()
        shown.append((pair["prompt"], frozenset((pair["a"], pair["b"]))))
        voted = client.post(
            f"/v1/comparisons/{cid}/votes", json={"ticket": pair["ticket"], "choice": "b"},
            headers=rater,
        )  # fmt: skip
        assert voted.status_code == 201, voted.text
    assert len(set(shown[:-1])) == service.CONTROL_EVERY - 1
    assert shown[-1] == shown[0]  # the oldest pair, again (round 1)
    with factory() as session:
        rounds = session.query(ComparisonVote.round).filter_by(comparison_id=cid).all()
        assert sorted(r for (r,) in rounds) == [0] * (service.CONTROL_EVERY - 1) + [1]


def test_results_and_chart_are_computed_once_per_new_vote(
    client: TestClient,
    auth: dict[str, str],
    factory: sessionmaker[Session],
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cid = open_comparison(factory, tenant)
    rater = invite(client, auth, cid)
    computed: list[int] = []
    drawn: list[int] = []
    fit, draw = bradley_terry.results, chart.ladder_png

    def counting_fit(votes: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        computed.append(len(votes))
        return fit(votes, *args, **kwargs)

    def counting_draw(figures: Any, **kwargs: Any) -> bytes:
        drawn.append(figures["votes"])
        return draw(figures, **kwargs)

    monkeypatch.setattr(bradley_terry, "results", counting_fit)
    monkeypatch.setattr(chart, "ladder_png", counting_draw)

    def vote() -> None:
        pair = client.get(f"/v1/comparisons/{cid}/next", headers=rater).json()
        voted = client.post(
            f"/v1/comparisons/{cid}/votes", json={"ticket": pair["ticket"], "choice": "a"},
            headers=rater,
        )  # fmt: skip
        assert voted.status_code == 201, voted.text

    vote()
    vote()
    first = [client.get(f"/v1/comparisons/{cid}/results", headers=auth) for _ in range(5)]
    assert all(r.status_code == 200 for r in first)
    assert all(r.json() == first[0].json() for r in first) and first[0].json()["votes"] == 2
    pngs = [client.get(f"/v1/comparisons/{cid}/chart.png", headers=auth) for _ in range(3)]
    assert all(p.content == pngs[0].content and p.content[:4] == b"\x89PNG" for p in pngs)
    assert computed == [2] and drawn == [2]

    # A new vote: the next read computes again, over every vote, and is then kept again.
    vote()
    assert client.get(f"/v1/comparisons/{cid}/chart.png", headers=auth).status_code == 200
    again = [client.get(f"/v1/comparisons/{cid}/results", headers=auth).json() for _ in range(3)]
    assert again[0]["votes"] == 3 and again[0] != first[0].json()
    assert computed == [2, 3] and drawn == [2, 3]
