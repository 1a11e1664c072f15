"""Raters cannot slow the API: another tenant's ``GET /v1/jobs`` while 8 raters vote.

    .venv/bin/python -m benchmarks.bench_raters --seconds 8 --raters 8

Measures, in one run, against a real ``gristmill api`` process of the embedded profile (SQLite:
every vote is a write and SQLite has one writer, the harsher case): the measured tenant lists its
jobs with ``--concurrency`` clients, first with nothing else running (idle), then while
``--raters`` invite links of another tenant's comparison (6 models × 40 prompts, answers planted
as its ``compare`` job writes them) each fetch a pair and vote on it in a loop, then idle again
(ABA, the idle figure is the better of the two). Two rating runs: with the default
per-comparison rater limit, and with it lifted, so the votes themselves are measured, not only
the throttle. Target: the measured tenant's median latency while raters vote <= 1.5 x idle.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.bench_api import Load, run_load, start, stop
from benchmarks.bench_upload import api_env, cli, free_port, wait_ready

TARGET = 1.5
MODELS = [f"mdl_bench{i:02d}" for i in range(6)]
PROMPTS = 40


def plant_comparison(env: dict[str, str], tenant: str) -> str:
    """An open comparison of the tenant's, its answers written as its ``compare`` job does."""
    from sqlalchemy import select

    from app.comparisons import service
    from app.comparisons.outputs import ComparisonAnswers
    from app.comparisons.schemas import ComparisonCreate
    from app.db import make_engine, make_session_factory
    from app.settings import Settings
    from app.tenants.tables import Tenant

    settings = Settings(data_dir=Path(env["GRISTMILL_DATA_DIR"]))
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    prompts = [f"Question {i}: say something about {i}." for i in range(PROMPTS)]
    answers = {m: [f"{m} answers {i} " + "words " * 30 for i in range(PROMPTS)] for m in MODELS}
    with factory() as session:
        tenant_id = session.scalars(select(Tenant.id).where(Tenant.name == tenant)).one()
        comparison = service.add_comparison(
            session=session, comparison_id=service.new_comparison_id(), tenant_id=tenant_id,
            body=ComparisonCreate(models=MODELS, prompts=prompts),
        )  # fmt: skip
        session.flush()
        ComparisonAnswers(comparison.id, prompts, answers).record(session=session)
        session.commit()
        return comparison.id


def rate(base: str, cid: str, token: str, stop_at: float, counts: list[int]) -> None:
    """One rater: fetch a pair, vote on it, until ``stop_at``; counts votes and 429s."""
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(token)
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        while time.monotonic() < stop_at:
            pair = client.get(f"/v1/comparisons/{cid}/next")
            if pair.status_code == 429:
                counts[1] += 1
                time.sleep(float(pair.headers.get("Retry-After", "1")))
                continue
            body = pair.json()
            if "ticket" not in body:
                return
            vote = {"ticket": body["ticket"], "choice": rng.choice(["a", "b", "tie"])}
            answer = client.post(f"/v1/comparisons/{cid}/votes", json=vote)
            counts[0 if answer.status_code == 201 else 1] += 1


def measure_while_rating(
    args: argparse.Namespace, base: str, url: str, auth: dict[str, str], cid: str, owner: str
) -> tuple[Load, int, int]:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {owner}"}) as client:
        tokens = [
            client.post(f"/v1/comparisons/{cid}/raters", json={"name": f"r{i}"}).json()["token"]
            for i in range(args.raters)
        ]
    counts = [[0, 0] for _ in tokens]
    stop_at = time.monotonic() + args.seconds + 2
    threads = [
        threading.Thread(target=rate, args=(base, cid, t, stop_at, c), daemon=True)
        for t, c in zip(tokens, counts, strict=True)
    ]
    for t in threads:
        t.start()
    time.sleep(1.0)
    load = asyncio.run(run_load("while rating", url, auth, args.seconds, args.concurrency))
    for t in threads:
        t.join()
    return load, sum(c[0] for c in counts), sum(c[1] for c in counts)


def idle(args: argparse.Namespace, url: str, auth: dict[str, str]) -> Load:
    return asyncio.run(run_load("idle", url, auth, args.seconds, args.concurrency))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--raters", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    lines: list[str] = []
    for limited in (True, False):
        with tempfile.TemporaryDirectory(prefix="gristmill-bench-raters-") as tmp:
            env = api_env(Path(tmp))
            env["GRISTMILL_RATE_LIMIT"] = "100000000/minute"
            env["GRISTMILL_LOG_LEVEL"] = "WARNING"
            if not limited:
                env["GRISTMILL_RATER_RATE_LIMIT"] = "100000000/minute"
            cli("migrate", env=env)
            key = cli("keys", "create", "--tenant", "measured", env=env).strip()
            owner = cli("keys", "create", "--tenant", "raters", env=env).strip()
            cid = plant_comparison(env, "raters")
            port = free_port()
            api = start([sys.executable, "-m", "app.cli", "api", "--port", str(port)], env=env)
            try:
                base = f"http://127.0.0.1:{port}"
                wait_ready(base, api)
                auth = {"Authorization": f"Bearer {key}"}
                for _ in range(20):
                    httpx.post(f"{base}/v1/jobs", headers=auth,
                               json={"type": "probe", "params": {"duration_s": 1}})  # fmt: skip
                url = f"{base}/v1/jobs?limit=20"

                before = idle(args, url, auth)
                busy, votes, refused = measure_while_rating(args, base, url, auth, cid, owner)
                after = idle(args, url, auth)
            finally:
                stop(api)
        quiet = min((before, after), key=lambda r: r.pct(0.5))
        ratio = busy.pct(0.5) / quiet.pct(0.5)
        verdict = "meets" if ratio <= TARGET else "misses"
        label = "default rater limit" if limited else "rater limit lifted"
        lines += [
            f"{label}: {args.raters} raters cast {votes} votes in {args.seconds + 2:g} s "
            f"({refused} answered 429)",
            "  " + before.line(),
            "  " + busy.line(),
            "  " + after.line(),
            f"  median while rating / idle: {ratio:.2f} x ({verdict} the <= {TARGET} x target); "
            f"p99 {busy.pct(0.99) / quiet.pct(0.99):.2f} x",
        ]
    print(f"GET /v1/jobs of another tenant, {args.concurrency} clients, {args.seconds:g} s runs")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
