"""The client commands: each reads its arguments, calls the API through ``GristmillClient`` and
prints for people (rich) or, with ``--json``, for scripts. Exit codes: 0 done, 1 the thing
failed (a failed job or dataset, an API error, a checksum mismatch), 130 watching interrupted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from app.client import render
from app.client.config import resolve_config
from app.client.http import ApiError, ChecksumMismatch, GristmillClient, RetryPolicy
from app.client.watch import JobView, watch_job

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def _console(stream: Any) -> Console:
    """soft_wrap: long lines (ids, error reasons) stay whole for copying and grepping; a pipe
    or a log gets a wide page instead of rich's 80 columns."""
    width = None if stream.isatty() else 160
    return Console(file=stream, highlight=False, soft_wrap=True, width=width)


out = _console(sys.stdout)
err = _console(sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Dispatch ``gristmill <group> <action>``; turn API and network errors into a message."""
    handler = HANDLERS[(args.command, args.action)]
    config = resolve_config(url=args.url, key=args.key)
    client = GristmillClient(
        config.url,
        config.api_key,
        on_retry=lambda why, s: err.print(f"[dim]{escape(why)}; retrying in {s:.1f}s[/]"),
    )
    try:
        with client:
            return handler(client, args)
    except ApiError as exc:
        hint = ""
        if exc.status == 401:
            hint = f" (key from {config.key_source}; set GRISTMILL_API_KEY or pass --key)"
        err.print(f"[red]error:[/] {escape(exc.message)} [dim]({exc.status} {exc.code}){hint}[/]")
    except httpx.TransportError as exc:
        err.print(
            f"[red]error:[/] cannot reach {config.url}: {escape(str(exc) or type(exc).__name__)}"
        )
    except ChecksumMismatch as exc:
        err.print(f"[red]checksum mismatch:[/] {escape(str(exc))}; nothing was kept")
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def take(items: Iterator[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    return list(items if limit <= 0 else itertools.islice(items, limit))


# --- jobs ---------------------------------------------------------------------------------


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


def jobs_submit(client: GristmillClient, args: argparse.Namespace) -> int:
    try:
        base = json.loads(args.params_file.read_text()) if args.params_file else {}
        if not isinstance(base, dict):
            raise ValueError(f"{args.params_file} must hold a JSON object")
        params = parse_params(args.param, base)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return 2
    job = client.submit_job(args.kind, params)
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


def jobs_watch(client: GristmillClient, args: argparse.Namespace) -> int:
    return follow(client, args.id, json_output=args.json, interval=args.interval)


def follow(
    client: GristmillClient, job_id: str, *, json_output: bool, interval: float = 1.0
) -> int:
    """Watch until the job ends. Ctrl-C stops watching, never the job."""
    view: JobView
    if json_output:
        view = render.JsonJobView()
    elif out.is_terminal:
        view = render.LiveJobView(out)
    else:
        view = render.LineJobView(out)
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
    return EXIT_OK if job["status"] == "succeeded" else EXIT_FAILED


def jobs_list(client: GristmillClient, args: argparse.Namespace) -> int:
    jobs = take(client.list_jobs(job_type=args.job_type, status=args.status), args.limit)
    if args.json:
        emit_json(jobs)
    else:
        out.print(render.jobs_table(jobs))
    return EXIT_OK


def jobs_show(client: GristmillClient, args: argparse.Namespace) -> int:
    job = client.get_job(args.id)
    if args.json:
        emit_json(job)
    else:
        out.print(render.details_table(job))
    return EXIT_OK


def jobs_cancel(client: GristmillClient, args: argparse.Namespace) -> int:
    job = client.cancel_job(args.id)
    if args.json:
        emit_json(job)
    else:
        out.print(f"{job['id']}: {render.styled_status(job['status'])}")
    return EXIT_OK


def jobs_plot(client: GristmillClient, args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.metric.split(",") if n.strip()]
    series: dict[str, tuple[list[int], list[float]]] = {}
    for name in names:
        points = list(client.job_metrics(args.id, name=name))
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
        render.plot_png(series, args.out, title=title)
        out.print(f"wrote {args.out}")
    else:
        height = max(12, min(30, out.height - 4)) if out.is_terminal else 24
        chart = render.plot_terminal(
            series, title=title, width=min(out.width, 120), height=height, color=out.is_terminal
        )
        print(chart)
    return EXIT_OK


# --- datasets -----------------------------------------------------------------------------


def datasets_upload(client: GristmillClient, args: argparse.Namespace) -> int:
    path: Path = args.file
    options = {k: v for k, v in (("split", args.split), ("column", args.column)) if v}
    with render.transfer_progress(err) as bar:
        task = bar.add_task(f"upload {path.name}", total=path.stat().st_size)
        dataset = client.upload_dataset(
            path, name=args.name, options=options, on_progress=lambda n: bar.advance(task, n)
        )
    if not args.wait:
        if args.json:
            emit_json(dataset)
        else:
            out.print(f"uploaded {dataset['id']}: {render.styled_status(dataset['status'])}")
        return EXIT_OK
    dataset = wait_for_dataset(client, dataset["id"])
    if args.json:
        emit_json(dataset)
    else:
        render.print_validation(out, dataset)
    return EXIT_OK if dataset["status"] == "ready" else EXIT_FAILED


def wait_for_dataset(
    client: GristmillClient, dataset_id: str, *, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    with err.status(f"validating {dataset_id}…"):
        while True:
            dataset = client.get_dataset(dataset_id)
            if dataset["status"] != "validating":
                return dataset
            sleep(0.5)


def datasets_list(client: GristmillClient, args: argparse.Namespace) -> int:
    items = take(client.list_datasets(), args.limit)
    if args.json:
        emit_json(items)
    else:
        out.print(render.datasets_table(items))
    return EXIT_OK


def datasets_show(client: GristmillClient, args: argparse.Namespace) -> int:
    dataset = client.get_dataset(args.id)
    if args.json:
        emit_json(dataset)
    else:
        out.print(render.details_table(dataset))
        if dataset["status"] == "failed":
            render.print_validation(out, dataset)
    return EXIT_OK


def datasets_download(client: GristmillClient, args: argparse.Namespace) -> int:
    dataset = client.get_dataset(args.id)
    with render.transfer_progress(err) as bar:
        task = bar.add_task(f"download {args.id}", total=dataset["size_bytes"])
        path = client.download_dataset(
            args.id, args.dir, on_progress=lambda n: bar.advance(task, n)
        )
    return _downloaded(args, path, [dataset["sha256"]])


def _downloaded(args: argparse.Namespace, path: Path, checksums: list[str]) -> int:
    if args.json:
        emit_json({"id": args.id, "path": str(path), "verified_sha256": checksums})
    else:
        out.print(f"[green]✔[/] {path} (sha256 verified, {len(checksums)} file(s))")
    return EXIT_OK


# --- tokenizers and models ----------------------------------------------------------------


def artifact_handlers(kind: str) -> dict[str, Callable[[GristmillClient, argparse.Namespace], int]]:
    def list_(client: GristmillClient, args: argparse.Namespace) -> int:
        items = take(client.list_artifacts(kind), args.limit)
        if args.json:
            emit_json(items)
        else:
            out.print(render.artifacts_table(items))
        return EXIT_OK

    def show(client: GristmillClient, args: argparse.Namespace) -> int:
        item = client.get_artifact(kind, args.id)
        if args.json:
            emit_json(item)
        else:
            out.print(render.details_table(item))
        return EXIT_OK

    def download(client: GristmillClient, args: argparse.Namespace) -> int:
        files = client.artifact_files(kind, args.id)
        with render.transfer_progress(err) as bar:
            task = bar.add_task(f"download {args.id}", total=sum(f["size_bytes"] for f in files))
            path = client.download_artifact(
                kind, args.id, args.dir, files=files, on_progress=lambda n: bar.advance(task, n)
            )
        return _downloaded(args, path, [f["sha256"] for f in files])

    return {"list": list_, "show": show, "download": download}


Handler = Callable[[GristmillClient, argparse.Namespace], int]
HANDLERS: dict[tuple[str, str], Handler] = {
    ("jobs", "submit"): jobs_submit,
    ("jobs", "list"): jobs_list,
    ("jobs", "show"): jobs_show,
    ("jobs", "cancel"): jobs_cancel,
    ("jobs", "watch"): jobs_watch,
    ("jobs", "plot"): jobs_plot,
    ("datasets", "upload"): datasets_upload,
    ("datasets", "list"): datasets_list,
    ("datasets", "show"): datasets_show,
    ("datasets", "download"): datasets_download,
    **{("models", a): h for a, h in artifact_handlers("model").items()},
    **{("tokenizers", a): h for a, h in artifact_handlers("tokenizer").items()},
}


def main(args: argparse.Namespace) -> None:
    sys.exit(run(args))
