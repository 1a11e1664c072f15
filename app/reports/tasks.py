"""The task section of the evaluate report: figures with intervals (a table and a chart), the
confusion matrix of a label task, and the worst-scored items."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from app.reports.charts import task_png
from app.reports.html import cell, img, table

_WORST_COLUMNS = {
    "multiple_choice": ("index", "prompt", "choices", "answer", "pred", "margin"),
    "generation": ("index", "prompt", "references", "output", "f1", "rouge_l"),
    "labels": ("index", "prompt", "label", "pred_label", "output"),
}


def task_section(task: Mapping[str, Any]) -> list[str]:
    """HTML parts for a job result's ``task``."""
    kind = str(task.get("kind"))
    figures: Mapping[str, Mapping[str, Any]] = task.get("figures") or {}
    parts = [
        f"<h2>Task: {html.escape(kind.replace('_', ' '))}</h2>",
        f"<p>{int(task.get('items', 0))} items"
        + (f", {int(task['num_fewshot'])}-shot" if task.get("num_fewshot") else "")
        + "; 95% intervals bootstrap the items.</p>",
    ]
    if figures:
        parts.append(img(task_png(figures), "task figures with 95% intervals"))
        rows = [{"figure": name, **fig} for name, fig in figures.items()]
        parts.append(table(rows, ("figure", "value", "ci95", "n")))
    grader = task.get("grader")
    if grader:
        parts.append(
            f"<p>Grader <code>{html.escape(str(grader.get('name', '')))}</code> rated "
            f"{int(grader.get('scored', 0))} answers 1–10 (grader_score); "
            f"{int(grader.get('missing', 0))} replies held no score.</p>"
        )
    confusion = task.get("confusion")
    if confusion:
        head = "".join(f"<th>{cell(c)}</th>" for c in confusion["columns"])
        body = "".join(
            f"<tr><th>{cell(label)}</th>" + "".join(f"<td>{int(n)}</td>" for n in counts) + "</tr>"
            for label, counts in zip(confusion["labels"], confusion["matrix"], strict=True)
        )
        parts.append("<h3>Confusion matrix (rows: reference, columns: answer)</h3>")
        parts.append(f"<table><tr><th></th>{head}</tr>{body}</table>")
    worst = task.get("worst") or []
    if worst:
        style = "labels" if confusion else kind
        columns = _WORST_COLUMNS.get(style, _WORST_COLUMNS["generation"])
        if any("grader_score" in row for row in worst):
            columns = (*columns, "grader_score")
        parts.append("<h3>Worst examples</h3>")
        parts.append(table(worst, columns))
    if task.get("examples_dataset_id"):
        ident = html.escape(str(task["examples_dataset_id"]))
        parts.append(
            f"<p>Every item's output and scores: dataset <code>{ident}</code> "
            f"(<code>GET /v1/datasets/{ident}/content</code>).</p>"
        )
    return parts
