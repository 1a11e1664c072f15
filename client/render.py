"""What people see of lists and single objects: styled statuses, sizes and times, tables, a
dataset's validation, transfer bars (rich). Job watching is in ``client.jobview``, charts in
``client.charts``.

Scripts get ``--json`` instead (see ``client.commands``); nothing here is parsed by a program.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

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
    "generating": "yellow",
    "open": "green",
}
"""A colour for every job, dataset and comparison status (``client.statuses``)."""
TABLE_TIME = "%m-%d %H:%M"


def styled_status(status: str) -> str:
    style = STATUS_STYLE.get(status)
    return f"[{style}]{escape(status)}[/]" if style else escape(status)


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


def print_model_import(
    console: Console, model: Mapping[str, Any], error: Mapping[str, Any]
) -> None:
    """The outcome of an uploaded model's checks: what it is, or why it was refused."""
    if model["status"] == "ready":
        details = model.get("details") or {}
        parameters = details.get("parameters")
        size = f", {parameters:,} parameters" if isinstance(parameters, int) else ""
        console.print(
            f"[green]✔[/] {model['id']} ready: {escape(str(details.get('architecture', '-')))}"
            f"{size}, {human_bytes(model.get('size_bytes'))}"
        )
        return
    console.print(
        f"[red]✘[/] {model['id']} failed: {escape(str(error.get('code')))}: "
        f"{escape(str(error.get('message')))}"
    )


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
