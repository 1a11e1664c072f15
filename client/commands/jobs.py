"""``gristmill jobs``: submit, list, show, cancel, pause, resume, watch, plot and compare jobs.

The pattern for every group: ``add_actions`` declares each action's arguments and handler;
each handler takes the client and the parsed arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from client import charts, render
from client.commands import common
from client.commands.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    emit_json,
    emit_list,
    err,
    out,
    take,
)
from client.http import GristmillClient, RetryPolicy
from client.jobview import JsonJobView, LineJobView, LiveJobView, final_line, progress_line
from client.statuses import JOB_FINAL
from client.watch import JobView, watch_job

if TYPE_CHECKING:
    from client.parser import Leaf, SubParsers


def add_actions(actions: SubParsers, leaf: Leaf, group: str) -> None:
    submit = leaf(actions, "submit", "submit a job")
    submit.add_argument("kind", help="job type: probe, prepare, tokenizer, pretrain, …")
    submit.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter; VALUE is read as JSON when it parses; dotted keys nest (model.preset)",
    )
    submit.add_argument("--params-file", type=Path, help="a JSON object of parameters")
    submit.add_argument(
        "--task",
        type=Path,
        metavar="FILE",
        help="evaluate only: upload this task JSONL, wait for its validation and score it "
        "(sets task_dataset_id)",
    )
    submit.add_argument("--wait", action="store_true", help="watch it until it ends")
    submit.set_defaults(handler=submit_job)
    lister = leaf(actions, "list", "list jobs, newest first")
    lister.add_argument("--type", dest="job_type")
    lister.add_argument("--status")
    lister.add_argument("--limit", type=int, default=20, help="how many (0: all)")
    lister.set_defaults(handler=list_jobs)
    show = leaf(actions, "show", "show a job")
    show.add_argument("id")
    show.set_defaults(handler=show_job)
    cancel = leaf(actions, "cancel", "cancel a job")
    cancel.add_argument("id")
    cancel.set_defaults(handler=cancel_job)
    pause = leaf(actions, "pause", "pause a job: a running one stops at its next checkpoint")
    pause.add_argument("id")
    pause.set_defaults(handler=pause_job)
    resume = leaf(actions, "resume", "resume a paused job from its checkpoint")
    resume.add_argument("id")
    resume.set_defaults(handler=resume_job)
    watch = leaf(actions, "watch", "follow a job live until it ends (Ctrl-C stops watching only)")
    watch.add_argument("id")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    watch.set_defaults(handler=watch_one)
    plot = leaf(actions, "plot", "chart a job's metrics in the terminal, or into a PNG")
    plot.add_argument("id")
    plot.add_argument("--metric", default="train_loss,val_loss", help="comma-separated names")
    plot.add_argument("--out", type=Path, help="write a PNG here instead of drawing")
    plot.set_defaults(handler=plot_metrics)
    compare = leaf(
        actions, "compare", "two evaluate jobs' task scores, paired item by item (B minus A)"
    )
    compare.add_argument("a", help="the first evaluate job")
    compare.add_argument("b", help="the second evaluate job, on the same task dataset")
    compare.add_argument(
        "--metric",
        default="acc",
        help="acc, acc_norm, exact_match, f1, rouge_l, chrf, bleu, correct or grader_score",
    )
    compare.set_defaults(handler=compare_jobs)


def parse_params(pairs: Iterable[str], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``key=value`` pairs into a params object: values are JSON when they parse (``8``,
    ``true``, ``[1,2]``, ``null``) and strings otherwise; ``a.b=1`` sets ``{"a": {"b": 1}}``.

    Raises:
        ValueError: a pair without ``=``, or a key both set and nested into.
    """
    params: dict[str, Any] = json.loads(json.dumps(dict(base or {})))  # a deep copy
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"{key}: {part!r} is already set to a value, not an object")
            node = child
        node[leaf] = value
    return params


def submit_job(client: GristmillClient, args: argparse.Namespace) -> int:
    try:
        base = json.loads(args.params_file.read_text()) if args.params_file else {}
        if not isinstance(base, dict):
            raise ValueError(f"{args.params_file} must hold a JSON object")
        params = parse_params(args.param, base)
        if args.task is not None and args.kind != "evaluate":
            raise ValueError("--task goes with evaluate jobs only")
        if args.task is not None and not args.task.is_file():
            raise ValueError(f"{args.task} is not a file")
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return EXIT_USAGE
    if args.task is not None:
        task = _upload_task(client, args.task)
        if task["status"] != "ready":
            err.print(f"[red]error:[/] the task file {task['id']} is {task['status']}")
            render.print_validation(err, task)
            return EXIT_FAILED
        params["task_dataset_id"] = task["id"]
    job = client.jobs.submit(args.kind, params)
    if not args.wait:
        if args.json:
            emit_json(job)
        else:
            out.print(
                f"submitted {job['id']} ({job['type']}): {render.styled_status(job['status'])}"
            )
            out.print(f"[dim]follow it with: gristmill jobs watch {job['id']}[/]")
        return EXIT_OK
    return follow(client, job["id"], json_output=args.json)


def _upload_task(client: GristmillClient, path: Path) -> dict[str, Any]:
    """Upload a task file and wait until it is validated (it must be ready to be scored)."""
    dataset = client.datasets.upload(path, name=path.name, options={})
    err.print(f"uploaded {path.name} as {dataset['id']}", highlight=False)
    return common.wait_while(
        lambda: client.datasets.get(dataset["id"]), "validating", f"validating {dataset['id']}"
    )


def compare_jobs(client: GristmillClient, args: argparse.Namespace) -> int:
    found = client.jobs.compare(args.a, args.b, metric=args.metric)
    if args.json:
        emit_json(found)
        return EXIT_OK
    low, high = found["ci95"]
    out.print(
        f"{found['metric']} over {found['n']} paired items: {args.a} {found['mean_a']:.4f}, "
        f"{args.b} {found['mean_b']:.4f}\n"
        f"difference (B - A) {found['difference']:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}], "
        f"p = {found['p_value']:.4g}",
        highlight=False,
    )
    return EXIT_OK


def watch_one(client: GristmillClient, args: argparse.Namespace) -> int:
    return follow(client, args.id, json_output=args.json, interval=args.interval)


def follow(
    client: GristmillClient, job_id: str, *, json_output: bool, interval: float = 1.0
) -> int:
    """Watch until the job ends. Ctrl-C stops watching, never the job. With ``--field`` people
    see the progress on stderr and stdout gets the field of the job as it ended."""
    view: JobView
    picking = json_output and common.selected is not None
    console = err if picking else out
    if json_output and not picking:
        view = JsonJobView()
    elif console.is_terminal:
        view = LiveJobView(console)
    else:
        view = LineJobView(console)
    # The watch loop does its own backoff (and says so); the client retries only briefly.
    client.retry, client.on_retry = RetryPolicy(attempts=2, max_s=2.0), None
    try:
        job = watch_job(client, job_id, view, interval=interval)
    except KeyboardInterrupt:
        view.stop()
        err.print(
            f"\nStopped watching; {job_id} keeps running on the server.\n"
            f"  Watch again: gristmill jobs watch {job_id}\n"
            f"  Cancel it:   gristmill jobs cancel {job_id}"
        )
        return EXIT_INTERRUPTED
    if picking and job["status"] == "succeeded":
        emit_json(job)
    return EXIT_OK if job["status"] == "succeeded" else EXIT_FAILED


def list_jobs(client: GristmillClient, args: argparse.Namespace) -> int:
    jobs = take(client.jobs.list(job_type=args.job_type, status=args.status), args.limit)
    if args.json:
        emit_list(jobs)
    else:
        out.print(render.jobs_table(jobs))
    return EXIT_OK


def show_job(client: GristmillClient, args: argparse.Namespace) -> int:
    job = client.jobs.get(args.id)
    if args.json:
        emit_json(job)
        return EXIT_OK
    out.print(render.details_table(job))
    if job["status"] in JOB_FINAL:
        out.print(final_line(job), highlight=False)
    else:
        out.print(f"{render.styled_status(job['status'])} {escape(progress_line(job, {}))}")
    return EXIT_OK


def cancel_job(client: GristmillClient, args: argparse.Namespace) -> int:
    return _print_state(client.jobs.cancel(args.id), args)


def pause_job(client: GristmillClient, args: argparse.Namespace) -> int:
    return _print_state(client.jobs.pause(args.id), args)


def resume_job(client: GristmillClient, args: argparse.Namespace) -> int:
    return _print_state(client.jobs.resume(args.id), args)


def _print_state(job: Mapping[str, Any], args: argparse.Namespace) -> int:
    """A job after a change of state was asked for: where it is now (the server answers with
    the job unchanged when the change does not apply, e.g. resuming a running job)."""
    if args.json:
        emit_json(job)
    else:
        out.print(f"{job['id']}: {render.styled_status(job['status'])}")
    return EXIT_OK


def plot_metrics(client: GristmillClient, args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.metric.split(",") if n.strip()]
    series: dict[str, tuple[list[int], list[float]]] = {}
    for name in names:
        points = list(client.jobs.metrics(args.id, name=name))
        if points:
            series[name] = ([p["step"] for p in points], [p["value"] for p in points])
    if args.json:
        emit_json({n: {"steps": s, "values": v} for n, (s, v) in series.items()})
        return EXIT_OK if series else EXIT_FAILED
    if not series:
        err.print(f"no metrics named {', '.join(names)} for {args.id} (yet)")
        return EXIT_FAILED
    title = f"{args.id}: {', '.join(series)}"
    if args.out:
        charts.plot_png(series, args.out, title=title)
        out.print(f"wrote {args.out}")
    else:
        height = max(12, min(30, out.height - 4)) if out.is_terminal else 24
        chart = charts.plot_terminal(
            series, title=title, width=min(out.width, 120), height=height, color=out.is_terminal
        )
        print(chart)
    return EXIT_OK
