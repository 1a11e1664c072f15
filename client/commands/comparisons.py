"""``gristmill comparisons``: blind side-by-side comparisons of models. Create one (its
``compare`` job writes every answer), invite raters by link, then read the results as a table,
a chart (in the terminal, or the server's PNG) or every vote as JSON lines."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from client import charts, render
from client.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    emit_json,
    err,
    out,
    wait_while,
)
from client.commands.jobs import follow
from client.http import GristmillClient
from client.statuses import JOB_FINAL

if TYPE_CHECKING:
    from client.parser import Leaf, SubParsers


def add_actions(actions: SubParsers, leaf: Leaf, group: str) -> None:
    create = leaf(actions, "create", "have 2-16 models answer the same prompts, for blind rating")
    create.add_argument("models", nargs="+", metavar="MODEL", help="ids of your ready models")
    prompts = create.add_mutually_exclusive_group(required=True)
    prompts.add_argument(
        "--prompt", action="append", dest="prompts", metavar="TEXT", help="a prompt (repeat it)"
    )
    prompts.add_argument("--prompts-file", type=Path, help="a text file, one prompt a line")
    prompts.add_argument("--dataset", metavar="ID", help="a ready dataset whose texts are prompts")
    create.add_argument("--max-tokens", type=int, help="tokens per answer (server default 128)")
    create.add_argument("--temperature", type=float, help="0 is greedy (server default 0.7)")
    create.add_argument("--seed", type=int, help="set before each answer (server default 0)")
    create.add_argument(
        "--wait", action="store_true", help="follow the answers being written; exit 1 if it fails"
    )
    create.set_defaults(handler=create_comparison)
    show = leaf(actions, "show", "show a comparison: its status, models and votes")
    show.add_argument("id")
    show.set_defaults(handler=show_comparison)
    invite = leaf(actions, "invite", "make a rater's link (no API key needed to rate)")
    invite.add_argument("id")
    invite.add_argument("--name", help="who the link is for")
    invite.set_defaults(handler=invite_rater)
    judge = leaf(actions, "judge", "have a model or an endpoint vote on every pair, both orders")
    judge.add_argument("id")
    who = judge.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", metavar="ID", help="one of your ready models as the judge")
    who.add_argument("--secret", metavar="NAME", help="a secret naming an endpoint (see secrets)")
    judge.add_argument("--endpoint-model", default="", help="the endpoint's model (with --secret)")
    judge.add_argument("--rubric-file", type=Path, help="the prompt, with {question}, "
                       "{answer_a} and {answer_b} (default: the server's)")  # fmt: skip
    judge.add_argument("--max-pairs", type=int, help="judge at most this many pairs")
    judge.add_argument("--wait", action="store_true", help="follow the job; exit 1 if it fails")
    judge.set_defaults(handler=judge_comparison)
    results = leaf(actions, "results", "the rating ladder, win rates and rater agreement")
    results.add_argument("id")
    results.set_defaults(handler=show_results)
    chart = leaf(actions, "chart", "chart the ladder in the terminal, or save the server's PNG")
    chart.add_argument("id")
    chart.add_argument("--out", type=Path, help="write the PNG here instead of drawing")
    chart.set_defaults(handler=chart_results)
    export = leaf(actions, "export", "every vote with the models' identities, as JSON lines")
    export.add_argument("id")
    export.add_argument("--out", type=Path, help="write them to this file (default: stdout)")
    export.set_defaults(handler=export_votes)


def create_comparison(client: GristmillClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"models": args.models}
    if args.prompts_file:
        try:
            lines = args.prompts_file.read_text().splitlines()
        except OSError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            return EXIT_USAGE
        body["prompts"] = [line for line in lines if line.strip()]
    elif args.prompts:
        body["prompts"] = args.prompts
    else:
        body["dataset_id"] = args.dataset
    settings = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}
    body.update({k: v for k, v in settings.items() if v is not None})
    comparison = client.comparisons.create(body)
    cid = comparison["id"]
    if args.wait and args.json:
        comparison = wait_while(
            lambda: client.comparisons.get(cid), "generating", f"writing the answers of {cid}"
        )
    elif args.wait:
        out.print(f"created {cid}; its answers are written by {comparison['job_id']}")
        follow(client, comparison["job_id"], json_output=False)
        comparison = client.comparisons.get(cid)
    if args.json:
        emit_json(comparison)
    else:
        out.print(f"{cid}: {render.styled_status(comparison['status'])}")
        if comparison["status"] == "open":
            out.print(f"[dim]invite a rater with: gristmill comparisons invite {cid}[/]")
        elif comparison["status"] == "generating":
            out.print(f"[dim]follow it with: gristmill jobs watch {comparison['job_id']}[/]")
    return EXIT_FAILED if comparison["status"] == "failed" else EXIT_OK


def show_comparison(client: GristmillClient, args: argparse.Namespace) -> int:
    comparison = client.comparisons.get(args.id)
    if args.json:
        emit_json(comparison)
    else:
        out.print(render.details_table(comparison))
    return EXIT_OK


def invite_rater(client: GristmillClient, args: argparse.Namespace) -> int:
    rater = client.comparisons.invite(args.id, name=args.name)
    link = client.base_url.rstrip("/") + rater["url"]
    if args.json:
        emit_json({**rater, "url": link})
    else:
        out.print(link)
        err.print("[dim]send it to the rater; the link is shown once and needs no API key[/]")
    return EXIT_OK


def judge_comparison(client: GristmillClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"endpoint_model": args.endpoint_model}
    body.update({k: v for k, v in (("model", args.model), ("secret", args.secret),
                                   ("max_pairs", args.max_pairs)) if v is not None})  # fmt: skip
    if args.rubric_file:
        try:
            body["rubric"] = args.rubric_file.read_text()
        except OSError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            return EXIT_USAGE
    started = client.comparisons.judge(args.id, body)
    job_id = started["job_id"]
    job = None
    if args.wait and args.json:
        with err.status(f"judging {args.id}…"):
            while (job := client.jobs.get(job_id))["status"] not in JOB_FINAL:
                time.sleep(0.5)
    elif args.wait:
        follow(client, job_id, json_output=False)
        job = client.jobs.get(job_id)
    if args.json:
        emit_json(job or started)
    else:
        out.print(f"[dim]results with: gristmill comparisons results {args.id}[/]")
    return EXIT_FAILED if job is not None and job["status"] == "failed" else EXIT_OK


def show_results(client: GristmillClient, args: argparse.Namespace) -> int:
    results = client.comparisons.results(args.id)
    if args.json:
        emit_json(results)
        return EXIT_OK
    out.print(f"{args.id}: {results['votes']} vote(s) from {results['raters']} rater(s)")
    if not results["ladder"]:
        out.print(
            f"[dim]no votes yet; invite raters with: gristmill comparisons invite {args.id}[/]"
        )
        return EXIT_OK
    per_model = results.get("votes_per_model") or {}
    ladder = Table(box=None, header_style="bold")
    for name in ("rank", "model", "rating", "95% CI", "votes"):
        ladder.add_column(name, no_wrap=True, justify="left" if name == "model" else "right")
    for rank, row in enumerate(results["ladder"], 1):
        low, high = row["ci95"]
        ladder.add_row(
            str(rank),
            row["model"],
            f"{row['rating']:.0f}",
            f"{low:.0f}–{high:.0f}",
            str(per_model.get(row["model"], 0)),
        )
    out.print(ladder)
    models = [row["model"] for row in results["ladder"]]
    wins = Table(box=None, header_style="bold", title="win rate (row over column)")
    wins.add_column("", no_wrap=True)
    for model in models:
        wins.add_column(model, no_wrap=True, justify="right")
    for a in models:
        rates = results["win_rate"].get(a, {})
        wins.add_row(a, *(_share(rates.get(b)) if b != a else "·" for b in models))
    out.print(wins)
    agreement = results.get("rater_agreement") or {}
    out.print(
        f"left side won {_share(results.get('left_win_rate'))} of decisive votes · "
        f"rater agreement {_share(agreement.get('agreement'))} on "
        f"{agreement.get('repeats', 0)} repeat(s) · outcomes "
        + ", ".join(f"{k} {v}" for k, v in (results.get("outcomes") or {}).items())
    )
    if results.get("judges"):
        out.print(_judges_table(results["judges"]))
    return EXIT_OK


def _judges_table(judges: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", title="judges")
    for name in ("judge", "votes", "ties", "position bias", "pairs with people", "kappa"):
        table.add_column(name, no_wrap=True, justify="left" if name == "judge" else "right")
    for judge in judges:
        agreement = judge.get("human_agreement") or {}
        kappa = agreement.get("kappa")
        table.add_row(
            escape(judge["name"] or judge["rater"]), str(judge["votes"]), str(judge["ties"]),
            _share(judge.get("position_bias")), str(agreement.get("pairs", 0)),
            "-" if kappa is None else f"{kappa:.2f}",
        )  # fmt: skip
    return table


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def chart_results(client: GristmillClient, args: argparse.Namespace) -> int:
    if args.out:
        png = client.comparisons.chart_png(args.id)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(png)
        if args.json:
            emit_json({"id": args.id, "path": str(args.out), "size_bytes": len(png)})
        else:
            out.print(f"wrote {args.out}")
        return EXIT_OK
    results = client.comparisons.results(args.id)
    if args.json:
        emit_json({"votes": results["votes"], "ladder": results["ladder"]})
        return EXIT_OK
    if not results["ladder"]:  # as the server's PNG says too: a state, not a failure
        err.print(f"nothing to chart yet: {args.id} has no votes")
        return EXIT_OK
    title = f"{args.id}: ratings (Elo scale, 95% CI) · {results['votes']} votes"
    print(charts.ladder_text(results["ladder"], title=title, width=min(out.width, 120)))
    return EXIT_OK


def export_votes(client: GristmillClient, args: argparse.Namespace) -> int:
    text = client.comparisons.votes_jsonl(args.id)
    if args.out is None:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
        return EXIT_OK
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(text)
    votes = len(text.splitlines())
    if args.json:
        emit_json({"id": args.id, "path": str(args.out), "votes": votes})
    else:
        out.print(f"wrote {votes} vote(s) to {args.out}")
    return EXIT_OK
