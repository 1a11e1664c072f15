"""Streaming readers for each dataset format, behind a gzip guard and a per-record length cap.

Nothing here reads a whole file: lines come from ``readline(limit)`` so a 10 GB line costs at most
``max_record_bytes`` of memory, gzip is inflated in bounded slices while the output is counted, and
Parquet is read one batch of one column at a time.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from pipeline.configs.data import ValidateConfig
from pipeline.parts.datasets.records import Record, RecordError, parse_json_line
from pipeline.types import DatasetFile, PipelineError

_BUFFER = 1 << 20
Item = Record | RecordError
# BGZF (bgzip, htslib) writes many small gzip members and ends with this empty one, so a BGZF
# file cut at a member boundary, which plain gzip cannot tell from a complete file, is caught.
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


def _is_bgzf(head: bytes) -> bool:
    """The first member carries BGZF's 'BC' extra field (FLG.FEXTRA set, XLEN 6)."""
    return len(head) >= 16 and head[3] & 4 != 0 and head[12:14] == b"BC"


def _truncated(raw: BinaryIO, out: int) -> PipelineError:
    return PipelineError(
        "dataset.truncated_gzip",
        f"The gzip stream ends early, after {raw.tell()} compressed bytes ({out} bytes of "
        "content): the file is incomplete (an interrupted upload or copy?). Upload it again.",
    )


class _GuardedGzip(io.RawIOBase):
    """A gzip decompressor that counts its output and aborts a decompression bomb early.

    ``GzipFile.read(n)`` inflates at most ``n`` bytes per call, so the bomb is stopped after
    ``max_decompressed_bytes`` (or once the ratio is exceeded) without ever being fully inflated.
    """

    def __init__(self, raw: BinaryIO, limits: ValidateConfig) -> None:
        super().__init__()
        self._raw = raw
        self._gz = gzip.GzipFile(fileobj=raw, mode="rb")
        self._limits = limits
        self.out = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._gz.read(len(buffer))
        except EOFError as exc:
            raise _truncated(self._raw, self.out) from exc
        except (gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise PipelineError(
                "dataset.corrupt_gzip",
                f"The gzip data is corrupt near compressed byte {self._raw.tell()} "
                f"({exc}); the file was damaged. Upload an intact copy.",
            ) from exc
        size = len(data)
        buffer[:size] = data
        self.out += size
        self._check()
        return size

    def _check(self) -> None:
        limits = self._limits
        if self.out > limits.max_decompressed_bytes:
            raise PipelineError(
                "dataset.decompression_bomb",
                f"The gzip inflates beyond {limits.max_decompressed_bytes} bytes.",
            )
        if self.out >= limits.ratio_check_min_bytes:
            ratio = self.out / max(1, self._raw.tell())
            if ratio > limits.max_compression_ratio:
                raise PipelineError(
                    "dataset.decompression_bomb",
                    f"The gzip inflates {ratio:.0f}x (limit {limits.max_compression_ratio:g}x).",
                )

    def close(self) -> None:
        self._gz.close()
        super().close()


@contextlib.contextmanager
def open_binary(
    path: Path, compression: str | None, limits: ValidateConfig
) -> Iterator[tuple[io.BufferedReader[Any], BinaryIO]]:
    """Open ``path`` for streaming, inflating gzip through the guard; yields (content, raw file)."""
    if compression != "gzip":
        with io.BufferedReader(io.FileIO(path, "r"), _BUFFER) as plain:
            yield plain, plain
        return
    with path.open("rb") as raw:
        if _is_bgzf(raw.read(16)):
            raw.seek(-min(len(BGZF_EOF), path.stat().st_size), io.SEEK_END)
            if raw.read() != BGZF_EOF:
                raise PipelineError(
                    "dataset.truncated_gzip",
                    f"The BGZF file ends after {raw.tell()} bytes without its end-of-file block: "
                    "it is incomplete (an interrupted upload or copy?). Upload it again.",
                )
        raw.seek(0)
        with io.BufferedReader(_GuardedGzip(raw, limits), _BUFFER) as stream:
            yield stream, raw


class _LineTooLong(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _capped_lines(
    stream: io.BufferedReader[Any], max_bytes: int
) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, line) with ``None`` for a line over ``max_bytes``, which is skipped
    in 1 MiB slices rather than loaded."""
    number = 0
    while line := stream.readline(max_bytes + 1):
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = stream.readline(_BUFFER)
            yield number, None
            continue
        yield number, line


class RecordReader:
    """Iterate a dataset's records and errors, in file order, with byte counters for progress.

    Use as a context manager. Records of a different kind than the first valid one become
    ``mixed kinds`` errors, so consumers can rely on a single kind per dataset.
    """

    def __init__(self, file: DatasetFile, limits: ValidateConfig) -> None:
        self.file = file
        self.limits = limits
        self.total_bytes = file.path.stat().st_size
        self.kind: str | None = None
        self._stack = contextlib.ExitStack()
        self._raw: BinaryIO | None = None
        self._stream: io.BufferedReader[Any] | None = None
        self._parquet_bytes = 0
        self._parquet_fraction = 0.0

    def __enter__(self) -> RecordReader:
        if self.file.format != "parquet":
            opened = open_binary(self.file.path, self.file.compression, self.limits)
            self._stream, self._raw = self._stack.enter_context(opened)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()

    @property
    def bytes_read(self) -> int:
        """Bytes of the stored file consumed so far (compressed bytes for gzip)."""
        if self._raw is None:
            return int(self._parquet_fraction * self.total_bytes)
        return self._raw.tell() if not self._raw.closed else self.total_bytes

    @property
    def content_bytes(self) -> int:
        """Uncompressed bytes of content read so far (text bytes for Parquet)."""
        if self._raw is None:
            return self._parquet_bytes
        raw = self._stream.raw if self._stream is not None else None
        if isinstance(raw, _GuardedGzip):
            return raw.out
        return self.bytes_read

    def __iter__(self) -> Iterator[Item]:
        parsers = {"jsonl": self._jsonl, "text": self._text, "csv": self._csv}
        source = self._parquet() if self.file.format == "parquet" else parsers[self.file.format]()
        for item in source:
            if isinstance(item, Record):
                if self.kind is None:
                    self.kind = item.kind
                elif item.kind != self.kind:
                    item = RecordError(
                        item.line, f"mixed kinds: a {item.kind} record among {self.kind} records"
                    )
            yield item

    def _too_long(self, line: int) -> RecordError:
        return RecordError(line, f"record too long: more than {self.limits.max_record_bytes} bytes")

    def _jsonl(self) -> Iterator[Item]:
        assert self._stream is not None
        for number, line in _capped_lines(self._stream, self.limits.max_record_bytes):
            if line is None:
                yield self._too_long(number)
            elif line.strip():
                yield parse_json_line(line, number)

    def _text(self) -> Iterator[Item]:
        """Plain text split per line, per blank-line-separated paragraph, or as one record."""
        assert self._stream is not None
        split = self.file.options.get("split", "paragraph")
        parts: list[bytes] = []
        start = size = 0
        broken: int | None = None  # first line of the current record that is over-long
        for number, line in _capped_lines(self._stream, self.limits.max_record_bytes):
            blank = line is not None and not line.strip()
            if split != "file" and parts and (split == "line" or blank):
                yield _text_record(parts, start, broken, self.limits.max_record_bytes)
                parts, size, broken = [], 0, None
            if blank and split != "file":
                continue
            if not parts:
                start = number
            size += len(line) if line is not None else self.limits.max_record_bytes + 1
            if line is None or size > self.limits.max_record_bytes:
                broken = broken or number
                parts = [b"x"]  # keep a marker; the content is discarded
            else:
                parts.append(line)
        if parts:
            yield _text_record(parts, start, broken, self.limits.max_record_bytes)

    def _csv(self) -> Iterator[Item]:
        assert self._stream is not None
        options = self.file.options
        column, delimiter = options.get("column", "text"), options.get("delimiter", ",")
        # The limit is process-wide in the csv module; raising it is harmless for other readers.
        csv.field_size_limit(
            max(csv.field_size_limit(), min(self.limits.max_record_bytes, sys.maxsize))
        )
        text = io.TextIOWrapper(
            self._stream, encoding="utf-8", errors="surrogateescape", newline=""
        )
        reader = csv.reader(_text_lines(text, self.limits.max_record_bytes), delimiter=delimiter)
        try:
            header = next(reader, [])
            if column not in header:
                raise PipelineError(
                    "dataset.missing_column",
                    f"The CSV header has no column {column!r} (columns: {header[:20]}).",
                )
            index = header.index(column)
            for row in reader:
                yield _csv_row(row, index, len(header), reader.line_num)
        except _LineTooLong as exc:
            yield self._too_long(exc.line)
        except csv.Error as exc:
            yield RecordError(reader.line_num + 1, f"unreadable CSV: {exc}")
        finally:
            text.detach()

    def _parquet(self) -> Iterator[Item]:
        from pipeline.parts.datasets.parquet import iter_parquet_column

        column = self.file.options.get("column", "text")
        for row, value, fraction in iter_parquet_column(self.file.path, column):
            self._parquet_fraction = fraction
            if value is None or not value.strip():
                yield RecordError(row, "empty record")
                continue
            size = len(value.encode("utf-8", errors="surrogatepass"))
            self._parquet_bytes += size
            yield (
                self._too_long(row)
                if size > self.limits.max_record_bytes
                else Record("text", row, text=value)
            )


def _text_lines(text: io.TextIOWrapper, max_chars: int) -> Iterator[str]:
    """Physical lines for the csv module, refusing one longer than the record limit."""
    number = 0
    while line := text.readline(max_chars + 1):
        number += 1
        if len(line) > max_chars and not line.endswith(("\n", "\r")):
            raise _LineTooLong(number)
        yield line


def _csv_row(row: list[str], index: int, width: int, line: int) -> Item:
    if len(row) != width:
        return RecordError(line, f"ragged row: {len(row)} fields, the header has {width}")
    value = row[index]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return RecordError(line, "invalid UTF-8")
    if not value.strip():
        return RecordError(line, "empty record")
    return Record("text", line, text=value)


def _text_record(parts: list[bytes], start: int, broken: int | None, limit: int) -> Item:
    if broken is not None:
        return RecordError(broken, f"record too long: more than {limit} bytes")
    data = b"".join(parts)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RecordError(start + data.count(b"\n", 0, exc.start), "invalid UTF-8")
    return Record("text", start, text=text.rstrip("\r\n"))
