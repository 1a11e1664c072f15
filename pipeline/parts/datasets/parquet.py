"""Read one string column of a Parquet file in batches, mapping every pyarrow failure to a
PipelineError. Kept apart so pyarrow is imported only when a Parquet file is actually read.

pyarrow >= 14.0.1 refuses ``arrow.py_extension_type`` (a pickle) by default; we additionally refuse
any extension type for the text column, so no user-supplied type ever gets deserialised.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.types import PipelineError

_BATCH_ROWS = 1024


def iter_parquet_column(path: Path, column: str) -> Iterator[tuple[int, str | None, float]]:
    """Yield (1-based row, value, share of rows read) for ``column``.

    Raises:
        PipelineError: ``dataset.invalid_parquet`` for an unreadable file,
            ``dataset.missing_column`` / ``dataset.wrong_schema`` for a bad schema.
    """
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise PipelineError("dataset.invalid_parquet", f"Unreadable Parquet file: {exc}") from exc
    if column not in schema.names:
        raise PipelineError(
            "dataset.missing_column",
            f"The Parquet file has no column {column!r} (columns: {schema.names[:20]}).",
        )
    kind = schema.field(column).type
    if isinstance(kind, pa.ExtensionType) or not (
        pa.types.is_string(kind) or pa.types.is_large_string(kind)
    ):
        raise PipelineError(
            "dataset.wrong_schema", f"Column {column!r} must hold strings, not {kind}."
        )
    total = max(1, parquet.metadata.num_rows)
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[column]):
            for value in batch.column(0).to_pylist():
                row += 1
                yield row, value, row / total
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise PipelineError(
            "dataset.invalid_parquet", f"Unreadable Parquet data after row {row}: {exc}"
        ) from exc
