"""Recognise an uploaded dataset by its bytes and stream its records, refusing hostile input.

Uploads are untrusted: the extension may lie, a gzip may be a bomb, a line may be 100 MB. So the
format is sniffed from content, decompressed bytes are counted while streaming (never inflated up
front), and every line is read with a length cap so memory stays bounded by
``ValidateConfig.max_record_bytes`` whatever the file holds. Per-record problems become
:class:`RecordError` items with a line number; whole-file problems raise :class:`PipelineError`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.configs.data import ValidateConfig
from pipeline.parts.datasets.readers import RecordReader, open_binary
from pipeline.parts.datasets.records import Record, RecordError
from pipeline.types import DatasetFile, Hooks, PipelineError, Progress, StageCancelled

__all__ = [
    "Record",
    "RecordError",
    "RecordReader",
    "ValidationResult",
    "detect_format",
    "iter_records",
    "iter_texts",
    "validate_dataset",
]

SNIFF_BYTES = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_CSV_DELIMITERS = (",", "\t", ";", "|")


def detect_format(path: Path, options: Mapping[str, str]) -> DatasetFile:
    """Work out how to parse ``path`` from its first bytes; the filename is never trusted.

    Returns a DatasetFile whose options are completed (``split`` for text, ``column`` and
    ``delimiter`` for CSV, ``column`` for Parquet).

    Raises:
        PipelineError: ``dataset.empty`` for an empty (or blank) file,
            ``dataset.unsupported_format`` for binary or gzip-wrapped Parquet content,
            ``dataset.truncated_gzip`` / ``dataset.decompression_bomb`` from the gzip guard.
    """
    with path.open("rb") as raw:
        magic = raw.read(4)
    if not magic:
        raise PipelineError("dataset.empty", "The dataset file is empty.")
    if magic == _GZIP_MAGIC[:1]:
        raise PipelineError(
            "dataset.truncated_gzip",
            "The file holds one byte, the start of a gzip header: it is incomplete "
            "(an interrupted upload?). Upload it again.",
        )
    compression = "gzip" if magic[:2] == _GZIP_MAGIC else None
    if magic == b"PAR1":
        column = options.get("column", "text")
        return DatasetFile(path, "parquet", None, {**options, "column": column})
    with open_binary(path, compression, ValidateConfig()) as (stream, _):
        head = stream.read(SNIFF_BYTES)
    if compression and head[:4] == b"PAR1":
        raise PipelineError(
            "dataset.unsupported_format", "Gzip-compressed Parquet is not supported; upload it raw."
        )
    if not head.strip():
        raise PipelineError("dataset.empty", "The dataset contains no text.")
    if _looks_binary(head):
        raise PipelineError(
            "dataset.unsupported_format",
            "The file is binary; expected UTF-8 text, JSONL, CSV, Parquet or gzip of those.",
        )
    text = head.decode("utf-8", errors="replace")
    if _looks_jsonl(text, truncated=len(head) == SNIFF_BYTES):
        return DatasetFile(path, "jsonl", compression, dict(options))
    delimiter = _csv_delimiter(text, options.get("column"))
    if delimiter is not None:
        column = options.get("column", "text")
        opts = {**options, "column": column, "delimiter": delimiter}
        return DatasetFile(path, "csv", compression, opts)
    split = options.get("split", "paragraph")
    if split not in {"file", "paragraph", "line"}:
        raise PipelineError(
            "dataset.bad_option", f"split must be file, paragraph or line: {split!r}"
        )
    return DatasetFile(path, "text", compression, {**options, "split": split})


def _looks_binary(head: bytes) -> bool:
    """NUL bytes, or more than 2% undecodable or control bytes, mean this is not text.

    A few bad bytes are tolerated here so validation can report their line numbers instead of
    rejecting the whole file as binary.
    """
    if b"\x00" in head:
        return True
    text = head.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") + sum(1 for ch in text if ch < " " and ch not in "\t\n\r\f\v")
    return bad > max(2, len(text) // 50)


def _looks_jsonl(text: str, *, truncated: bool) -> bool:
    """The first non-blank line is a JSON object (or, if it is cut by the sniff window, starts
    like one). A broken first line still counts when a later line in the window parses, so its
    error is reported with a line number instead of the whole file being treated as prose."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("{"):
        return False
    window = lines[:-1] if truncated and len(lines) > 1 else lines
    if truncated and len(lines) == 1:
        return True
    for line in window[:20]:
        try:
            if isinstance(json.loads(line), dict):
                return True
        except ValueError:
            continue
    return False


def _csv_delimiter(text: str, column: str | None) -> str | None:
    """The delimiter whose header row has the wanted column (or 'text'); None if not CSV.

    When the caller named a column and the header is clearly delimited but lacks it, the file is
    still CSV: the missing column is reported when records are read.
    """
    first = text.splitlines()[0] if text else ""
    wanted = column or "text"
    best: tuple[int, str] | None = None
    for delimiter in _CSV_DELIMITERS:
        header = next(csv.reader([first], delimiter=delimiter), [])
        if wanted in [h.strip() for h in header]:
            return delimiter
        if len(header) > 1 and (best is None or len(header) > best[0]):
            best = (len(header), delimiter)
    if column is not None and best is not None:
        return best[1]
    return None


def iter_records(file: DatasetFile, limits: ValidateConfig | None = None) -> Iterator[Record]:
    """Yield the valid records of ``file`` in order, streaming; invalid ones are skipped.

    Raises:
        PipelineError: for whole-file problems (missing column, bomb, truncated gzip...).
    """
    with RecordReader(file, limits or ValidateConfig()) as reader:
        for item in reader:
            if isinstance(item, Record):
                yield item


def iter_texts(file: DatasetFile) -> Iterator[str]:
    """Yield the training text of each valid record (the tokenizer and pretraining read this).

    Chat records give their message contents joined by newlines; prompt/completion records give
    the prompt followed by the completion.
    """
    for record in iter_records(file):
        yield record.training_text()


@dataclass(frozen=True)
class ValidationResult:
    """What validation found; ``errors`` lists the first few bad records with their line."""

    ok: bool
    format: str
    compression: str | None
    kind: str | None
    records: int
    bytes: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0


def validate_dataset(
    file: DatasetFile,
    config: ValidateConfig,
    hooks: Hooks = Hooks(),
) -> ValidationResult:
    """Parse the whole dataset and say whether it is usable, listing bad records by line.

    A dataset is ok when it has at least one valid record and no invalid one.

    Raises:
        PipelineError: whole-file problems (see :func:`detect_format` and the gzip guard).
        StageCancelled: when ``hooks.should_stop`` answers True.
    """
    records = error_count = 0
    errors: list[dict[str, Any]] = []
    kind: str | None = None
    last = time.monotonic()
    with RecordReader(file, config) as reader:
        for item in reader:
            if isinstance(item, RecordError):
                error_count += 1
                if len(errors) < config.max_errors_listed:
                    errors.append({"line": item.line, "reason": item.reason})
            else:
                records += 1
                kind = item.kind
            now = time.monotonic()
            if now - last >= 1.0:
                last = now
                if hooks.should_stop():
                    raise StageCancelled("validation cancelled")
                hooks.on_progress(
                    Progress(
                        step=reader.bytes_read,
                        total=reader.total_bytes,
                        metrics={"records": float(records), "errors": float(error_count)},
                    )
                )
        size = reader.content_bytes
    if records == 0 and error_count == 0:
        raise PipelineError("dataset.empty", "The dataset contains no records.")
    return ValidationResult(
        ok=records > 0 and error_count == 0,
        format=file.format,
        compression=file.compression,
        kind=kind,
        records=records,
        bytes=size,
        errors=errors,
        error_count=error_count,
    )
