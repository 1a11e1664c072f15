"""Following a job as people and scripts see it: a live bar on a terminal, plain lines for logs
and pipes, JSON records for scripts; each shows events as they arrive and one final line that
says how the job ended. ``client.watch`` drives them (the ``JobView`` protocol)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from client.render import human_bytes, human_seconds, short_time, styled_status
from client.statuses import JOB_FINAL

LEVEL_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}


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


def run_seconds(job: Mapping[str, Any], *, now: datetime | None = None) -> float | None:
    """How long the job has run: to its end when it has one, else to ``now`` (None when it
    has not started)."""
    if not job.get("started_at"):
        return None
    started = _utc(job["started_at"])
    if job.get("finished_at"):
        end = _utc(job["finished_at"])
    elif job["status"] in JOB_FINAL:
        return None
    else:
        end = now or datetime.now(UTC)
    return max(0.0, (end - started).total_seconds())


def _utc(value: str) -> datetime:
    when = datetime.fromisoformat(value)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def has_steps(job: Mapping[str, Any]) -> bool:
    """Whether the job counts steps toward a known total (training); a job that only counts
    what it has done (prepare's records, a probe) has no ETA to show."""
    return bool((job.get("progress") or {}).get("total"))


def figures_text(result: Mapping[str, Any], *, most: int = 4) -> str:
    """A finished job's scalar figures, ids left out (the final line names those):
    ``records in 3,000 · records out 2,850 · bytes out 1.2 MB``."""
    shown = []
    for key, value in result.items():
        if key.endswith(("_id", "_ids")) or isinstance(value, bool):
            continue
        name = key.replace("_", " ")
        if isinstance(value, int) and ("bytes" in key.split("_")):
            shown.append(f"{name} {human_bytes(value)}")
        elif isinstance(value, int):
            shown.append(f"{name} {value:,}")
        elif isinstance(value, float):
            shown.append(f"{name} {value:.4g}")
    return " · ".join(shown[:most])


def progress_line(job: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
    """The job's progress as one line after its status. A job with steps: step/total, ETA and,
    when it reports them, tokens/s and loss. One without: how long it ran and, once it has
    ended, what it did."""
    summary = progress_summary(job, metrics)
    if has_steps(job):
        known = [summary[k] for k in ("rate", "loss") if summary[k] != "-"]
        return " · ".join([f"step {summary['steps']}", f"ETA {summary['eta']}", *known])
    seconds = run_seconds(job)
    if job["status"] not in JOB_FINAL:
        if seconds is None:
            return ""
        done = (job.get("progress") or {}).get("step")
        return f"for {human_seconds(seconds)}" + (f" · {done:,} done" if done else "")
    took = f"in {human_seconds(seconds)}" if seconds is not None else ""
    figures = figures_text(job.get("result") or {}) if job["status"] == "succeeded" else ""
    return " · ".join(part for part in (took, figures) if part)


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
    seconds = run_seconds(job)
    took = f" in {human_seconds(seconds)}" if seconds is not None else ""
    if status == "succeeded":
        made = [
            f"{k.removesuffix('_id')} {v}" for k, v in result.items() if k.endswith("_id") and v
        ]
        for key, value in result.items():  # prepare's {"dataset_ids": {"train": …}}, quantize's
            if key.endswith("_ids") and isinstance(value, dict):  # {"model_ids": [...]}
                made += [f"{name} {ident}" for name, ident in value.items()]
            elif key.endswith("_ids") and isinstance(value, list):
                made += [f"{key.removesuffix('_ids')} {ident}" for ident in value]
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
            TextColumn("{task.fields[line]}"),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self.task: TaskID | None = None

    def start(self, job: Mapping[str, Any]) -> None:
        self.console.print(f"Watching {job['id']} ({job['type']}); Ctrl-C stops watching.")
        self.progress.start()
        self.task = self.progress.add_task(
            self._description(job), total=None, line=escape(progress_line(job, {}))
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
            line=escape(progress_line(job, metrics)),
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
        text = f"{job['status']} {progress_line(job, metrics)}".rstrip()
        now = time.monotonic()
        due = now - self._last >= self.every_s or job["status"] in JOB_FINAL
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
