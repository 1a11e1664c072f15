"""What people see: tables, progress bars, job events and charts (rich, plotext, matplotlib).

Scripts get ``--json`` instead (see ``commands``); nothing here is parsed by a program.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from app.jobs.states import FINAL_STATES

STATUS_STYLE = {
    "queued": "yellow",
    "validating": "yellow",
    "running": "cyan",
    "cancelling": "magenta",
    "pausing": "blue",
    "paused": "blue",
    "succeeded": "green",
    "ready": "green",
    "failed": "red",
    "cancelled": "magenta",
}
TABLE_TIME = "%m-%d %H:%M"
LEVEL_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}


def styled_status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, '')}]{status}[/]"


def human_bytes(size: float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def short_time(value: str | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """An API timestamp in local time."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone().strftime(fmt)


# --- lists and single objects -------------------------------------------------------------


def _table(*columns: str) -> Table:
    """A borderless table whose id columns never wrap or shorten: ids are for copying."""
    table = Table(box=None, header_style="bold")
    for name in columns:
        whole = name in ("id", "from job")
        table.add_column(name, no_wrap=whole or name == "created")
    return table


def jobs_table(jobs: Sequence[Mapping[str, Any]]) -> Table:
    table = _table("id", "type", "status", "progress", "created")
    for job in jobs:
        progress = job.get("progress") or {}
        done = f"{progress['step']}/{progress['total']}" if progress.get("total") else ""
        table.add_row(
            job["id"],
            job["type"],
            styled_status(job["status"]),
            done,
            short_time(job["created_at"], TABLE_TIME),
        )
    return table


def datasets_table(datasets: Sequence[Mapping[str, Any]]) -> Table:
    table = _table("id", "name", "status", "format", "records", "size", "created")
    for ds in datasets:
        table.add_row(
            ds["id"],
            escape(ds["name"]),
            styled_status(ds["status"]),
            ds.get("format") or "-",
            f"{ds['records']:,}" if ds.get("records") is not None else "-",
            human_bytes(ds["size_bytes"]),
            short_time(ds["created_at"], TABLE_TIME),
        )
    return table


def artifacts_table(artifacts: Sequence[Mapping[str, Any]]) -> Table:
    table = _table("id", "name", "format", "size", "from job", "created")
    for item in artifacts:
        table.add_row(
            item["id"],
            escape(item["name"]),
            item["format"],
            human_bytes(item["size_bytes"]),
            (item.get("lineage") or {}).get("job_id") or "-",
            short_time(item["created_at"], TABLE_TIME),
        )
    return table


def details_table(obj: Mapping[str, Any]) -> Table:
    """One object as ``field  value`` rows; nested values as compact JSON."""
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in obj.items():
        if value is None or value == {} or value == []:
            continue
        if key == "status":
            text = styled_status(str(value))
        elif isinstance(value, dict | list):
            text = escape(
                json.dumps(value, indent=1) if len(json.dumps(value)) > 80 else json.dumps(value)
            )
        elif key.endswith("_bytes") and isinstance(value, int):
            text = f"{human_bytes(value)} ({value:,} bytes)"
        else:
            text = escape(str(value))
        table.add_row(key, text)
    return table


def print_validation(console: Console, dataset: Mapping[str, Any], *, max_errors: int = 10) -> None:
    """The outcome of a dataset's validation: what it is, or the first bad lines and why."""
    if dataset["status"] == "ready":
        console.print(
            f"[green]✔[/] {dataset['id']} ready: {dataset.get('format')} "
            f"({dataset.get('record_type')}), {dataset.get('records') or 0:,} records, "
            f"{human_bytes(dataset.get('text_bytes'))} of text"
        )
        return
    errors = dataset.get("errors") or []
    console.print(f"[red]✘[/] {dataset['id']} failed validation")
    for error in errors[:max_errors]:
        where = f"line {error['line']}: " if error.get("line") is not None else ""
        code = f" ({error['code']})" if error.get("code") else ""
        console.print(f"  {where}{escape(str(error.get('reason', error)))}{code}")
    if len(errors) > max_errors:
        console.print(f"  … and {len(errors) - max_errors} more listed by the server")


# --- transfers ----------------------------------------------------------------------------


def transfer_progress(console: Console) -> Progress:
    """Bytes, rate and ETA: for uploads and downloads."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


# --- job watching -------------------------------------------------------------------------


def progress_summary(job: Mapping[str, Any], metrics: Mapping[str, float]) -> dict[str, str]:
    """Step/total, ETA, tokens/s and loss as short strings (a dash when unknown)."""
    progress = job.get("progress") or {}
    step, total = progress.get("step"), progress.get("total")
    loss = metrics.get("train_loss")
    val = metrics.get("val_loss")
    loss_text = "-" if loss is None else f"loss {loss:.4f}"
    if val is not None:
        loss_text += f" (val {val:.4f})"
    rate = metrics.get("tokens_per_s")
    return {
        "steps": f"{step}/{total}" if total else (str(step) if step is not None else "-"),
        "eta": human_seconds(progress.get("eta_s")) if progress.get("eta_s") is not None else "-",
        "rate": "-" if rate is None else f"{rate:,.0f} tok/s",
        "loss": loss_text,
    }


def event_lines(event: Mapping[str, Any]) -> list[str]:
    """A job event as console lines (rich markup): samples show their text, checkpoints their
    step, warnings and errors stand out."""
    message, data = event["message"], event.get("data") or {}
    style = LEVEL_STYLE.get(event["level"], "")
    when = short_time(event.get("created_at"))[11:]
    head = f"[dim]{when}[/] "
    if message == "samples":
        lines = [f"{head}samples at step {data.get('step')}:"]
        for sample in data.get("samples", []):
            text = sample.get("greedy") or sample.get("top_k") or ""
            lines.append(f"    [bold]{escape(sample['prompt'])}[/]{escape(text)}")
        return lines
    if message == "checkpoint":
        return [f"{head}checkpoint saved at step {data.get('step')}"]
    extra = {k: v for k, v in data.items() if k not in ("path",)}
    suffix = f" [dim]{escape(json.dumps(extra))}[/]" if extra else ""
    text = escape(message)
    return [
        f"{head}[{style}]{event['level']}: {text}[/]{suffix}" if style else f"{head}{text}{suffix}"
    ]


def final_line(job: Mapping[str, Any]) -> str:
    """One line that says how the job ended: what it made, or what went wrong."""
    status, result = job["status"], job.get("result") or {}
    took = ""
    if job.get("started_at") and job.get("finished_at"):
        seconds = (
            datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
        ).total_seconds()
        took = f" in {human_seconds(seconds)}"
    if status == "succeeded":
        made = [
            f"{k.removesuffix('_id')} {v}" for k, v in result.items() if k.endswith("_id") and v
        ]
        for key, value in result.items():  # e.g. prepare's {"dataset_ids": {"train": …}}
            if key.endswith("_ids") and isinstance(value, dict):
                made += [f"{name} {ident}" for name, ident in value.items()]
        for key in ("final_train_loss", "final_val_loss"):
            if isinstance(result.get(key), int | float):
                made.append(f"{key.removeprefix('final_')} {result[key]:.4f}")
        detail = f": {', '.join(made)}" if made else ""
        return f"[green]✔ {job['id']} ({job['type']}) succeeded{took}{escape(detail)}[/]"
    if status == "failed":
        error = job.get("error") or {}
        return (
            f"[red]✘ {job['id']} ({job['type']}) failed{took}: "
            f"{escape(str(error.get('code')))}: {escape(str(error.get('message')))}[/]"
        )
    return f"[magenta]■ {job['id']} ({job['type']}) {status}{took}[/]"


class LiveJobView:
    """A live progress bar on a terminal, with events printed above it as they arrive."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[summary][steps]}"),
            TextColumn("ETA {task.fields[summary][eta]}"),
            TextColumn("{task.fields[summary][rate]}"),
            TextColumn("{task.fields[summary][loss]}"),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self.task: TaskID | None = None

    def start(self, job: Mapping[str, Any]) -> None:
        self.console.print(f"Watching {job['id']} ({job['type']}); Ctrl-C stops watching.")
        self.progress.start()
        self.task = self.progress.add_task(
            self._description(job), total=None, summary=progress_summary(job, {})
        )

    def _description(self, job: Mapping[str, Any]) -> str:
        return f"{job['type']} {styled_status(job['status'])}"

    def update(self, job: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        assert self.task is not None
        progress = job.get("progress") or {}
        total = progress.get("total") or None
        done = progress.get("step") or 0
        if job["status"] == "succeeded" and total:
            done = total
        self.progress.update(
            self.task,
            description=self._description(job),
            total=total,
            completed=done,
            summary=progress_summary(job, metrics),
        )

    def event(self, event: Mapping[str, Any]) -> None:
        for line in event_lines(event):
            self.progress.console.print(line, highlight=False)

    def notice(self, text: str) -> None:
        self.progress.console.print(f"[yellow]{escape(text)}[/]")

    def stop(self) -> None:
        self.progress.stop()

    def final(self, job: Mapping[str, Any]) -> None:
        self.stop()
        self.console.print(final_line(job), highlight=False)


class LineJobView(LiveJobView):
    """The same content for logs and pipes: a plain progress line every ``every_s`` seconds, and
    the last one when the job ends."""

    def __init__(self, console: Console, every_s: float = 10.0) -> None:
        super().__init__(console)
        self.every_s, self._last, self._last_text = every_s, 0.0, ""

    def start(self, job: Mapping[str, Any]) -> None:
        self.console.print(f"Watching {job['id']} ({job['type']}); Ctrl-C stops watching.")

    def update(self, job: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        summary = progress_summary(job, metrics)
        text = (
            f"{job['status']} step {summary['steps']} · ETA {summary['eta']} · "
            f"{summary['rate']} · {summary['loss']}"
        )
        now = time.monotonic()
        due = now - self._last >= self.every_s or job["status"] in FINAL_STATES
        if text != self._last_text and due:
            self._last, self._last_text = now, text
            self.console.print(escape(text), highlight=False)

    def event(self, event: Mapping[str, Any]) -> None:
        for line in event_lines(event):
            self.console.print(line, highlight=False)

    def notice(self, text: str) -> None:
        self.console.print(escape(text))

    def stop(self) -> None:
        pass


class JsonJobView:
    """One JSON object per line, its ``record`` saying what it is: ``progress`` when the step
    changes, each ``event``, ``notice`` (connection lost, reconnected), then the final ``job``:
    easy to consume with ``jq`` or a script."""

    def __init__(self) -> None:
        self._last: tuple[Any, ...] | None = None

    def _emit(self, kind: str, body: Mapping[str, Any]) -> None:
        print(json.dumps({"record": kind, **body}), flush=True)

    def start(self, job: Mapping[str, Any]) -> None:
        pass

    def update(self, job: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        progress = job.get("progress") or {}
        key = (job["status"], progress.get("step"), tuple(sorted(metrics.items())))
        if key != self._last:
            self._last = key
            self._emit("progress", {"status": job["status"], **progress, "metrics": dict(metrics)})

    def event(self, event: Mapping[str, Any]) -> None:
        self._emit("event", event)

    def notice(self, text: str) -> None:
        self._emit("notice", {"message": text})

    def stop(self) -> None:
        pass

    def final(self, job: Mapping[str, Any]) -> None:
        self._emit("job", job)


# --- charts -------------------------------------------------------------------------------

Series = Mapping[str, tuple[Sequence[int], Sequence[float]]]
"""Metric name → (steps, values)."""


def plot_terminal(
    series: Series, *, title: str, width: int, height: int = 24, color: bool = True
) -> str:
    """A line chart drawn with characters (plotext, braille dots), one line per metric."""
    import plotext

    figure = plotext.figure
    figure.clear()
    for name, (steps, values) in series.items():
        signal = figure.signal(list(steps), list(values), marker="braille")
        signal.label(name)
        signal.lines()
        figure.draw(signal)
    figure.title(title)
    figure.label("step", axis="x")
    figure.plot_size(width, height)
    return str(figure.build().string(colorless=not color))


def plot_png(series: Series, out: Path, *, title: str) -> None:
    """A PNG chart (matplotlib's Agg canvas: no display, no global pyplot state)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100, layout="tight")
    axes = figure.add_subplot()
    for name, (steps, values) in series.items():
        axes.plot(list(steps), list(values), label=name, linewidth=1.8)
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
    axes.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
