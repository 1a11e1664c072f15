"""Format detection and streaming validation, including hostile input (RELIABILITY items 23-24)."""

from __future__ import annotations

import gzip
import json
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.configs.data import MIB, ValidateConfig
from pipeline.parts.datasets.formats import (
    Record,
    detect_format,
    iter_records,
    iter_texts,
    validate_dataset,
)
from pipeline.parts.datasets.readers import BGZF_EOF
from pipeline.types import Hooks, PipelineError, Progress, StageCancelled


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _chat(*roles: str) -> dict[str, object]:
    return {"messages": [{"role": r, "content": f"{r} says hi"} for r in roles]}


def test_detect_format_recognises_each_format_by_content_not_name(tmp_path: Path) -> None:
    jsonl = _jsonl(tmp_path / "a.csv", [{"text": "hello"}])  # lying extension
    csv_file = tmp_path / "b.txt"
    csv_file.write_text("id,text\n1,hello\n")
    text = tmp_path / "c.jsonl"
    text.write_text("Once upon a time.\n\nThe end.\n")
    parquet = tmp_path / "d.bin"
    pq.write_table(pa.table({"text": ["x"]}), parquet)
    gz = tmp_path / "e"
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    assert detect_format(jsonl, {}).format == "jsonl"
    assert detect_format(csv_file, {}).format == "csv"
    assert detect_format(text, {}).options["split"] == "paragraph"
    assert detect_format(text, {}).format == "text"
    assert detect_format(parquet, {}).format == "parquet"
    detected = detect_format(gz, {})
    assert (detected.format, detected.compression) == ("jsonl", "gzip")
    assert list(iter_texts(detected)) == ["hello"]


def test_text_split_modes(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("a b\nc d\n\ne f\n")
    texts = {
        s: list(iter_texts(detect_format(path, {"split": s})))
        for s in ("file", "paragraph", "line")
    }
    assert texts == {
        "file": ["a b\nc d\n\ne f"],
        "paragraph": ["a b\nc d", "e f"],
        "line": ["a b", "c d", "e f"],
    }


def test_iter_texts_joins_chat_and_prompt_completion(tmp_path: Path) -> None:
    chat = _jsonl(tmp_path / "c.jsonl", [_chat("system", "user", "assistant")])
    pc = _jsonl(tmp_path / "p.jsonl", [{"prompt": "Q: 1+1? ", "completion": "2"}])
    assert list(iter_texts(detect_format(chat, {}))) == [
        "system says hi\nuser says hi\nassistant says hi"
    ]
    assert list(iter_texts(detect_format(pc, {}))) == ["Q: 1+1? 2"]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "dataset.empty"),
        (b"\n \n", "dataset.empty"),
        (bytes(range(256)) * 40, "dataset.unsupported_format"),
    ],
)
def test_detect_format_rejects_empty_and_binary_files(
    tmp_path: Path, content: bytes, code: str
) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    with pytest.raises(PipelineError) as err:
        detect_format(path, {})
    assert err.value.code == code


def test_validate_reports_broken_jsonl_lines_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": f"row {i}"}) for i in range(10)]
    lines[6] = '{"text": "unterminated'
    lines[8] = json.dumps({"body": "wrong field"})
    path.write_bytes(("\n".join(lines[:3]) + "\n").encode() + b'{"text": "bad \xff byte"}\n'
                     + ("\n".join(lines[4:]) + "\n").encode())  # fmt: skip
    result = validate_dataset(detect_format(path, {}), ValidateConfig())
    assert not result.ok
    assert result.records == 7
    assert result.error_count == 3
    assert [e["line"] for e in result.errors] == [4, 7, 9]
    assert "invalid UTF-8" in result.errors[0]["reason"]
    assert "invalid JSON" in result.errors[1]["reason"]
    assert "missing field" in result.errors[2]["reason"]


def test_validate_checks_chat_role_order_and_mixed_kinds(tmp_path: Path) -> None:
    rows = [
        _chat("user", "assistant"),
        _chat("assistant", "user"),
        _chat("user", "user", "assistant"),
        _chat("system", "user", "assistant", "user", "assistant"),
        _chat("user"),
        {"text": "plain"},
    ]
    result = validate_dataset(
        detect_format(_jsonl(tmp_path / "c.jsonl", rows), {}), ValidateConfig()
    )
    assert (result.kind, result.records) == ("chat", 2)
    assert [e["line"] for e in result.errors] == [2, 3, 5, 6]
    assert all("wrong role order" in e["reason"] for e in result.errors[:3])
    assert "mixed kinds" in result.errors[3]["reason"]


def test_csv_needs_the_named_column_and_reports_ragged_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('id,body\n1,"hello, world"\n2\n3,"multi\nline"\n')
    with pytest.raises(PipelineError) as err:
        list(iter_records(detect_format(path, {"column": "text"})))
    assert err.value.code == "dataset.missing_column"
    result = validate_dataset(detect_format(path, {"column": "body"}), ValidateConfig())
    assert result.records == 2
    assert result.errors == [{"line": 3, "reason": "ragged row: 1 fields, the header has 2"}]


def test_parquet_with_the_wrong_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), path)
    with pytest.raises(PipelineError) as err:
        validate_dataset(detect_format(path, {}), ValidateConfig())
    assert err.value.code == "dataset.wrong_schema"
    pq.write_table(pa.table({"body": ["a"]}), path)
    with pytest.raises(PipelineError) as err:
        validate_dataset(detect_format(path, {}), ValidateConfig())
    assert err.value.code == "dataset.missing_column"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(PipelineError) as err:
        validate_dataset(detect_format(path, {}), ValidateConfig())
    assert err.value.code == "dataset.invalid_parquet"


def test_parquet_is_read_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(3000)] + [None]}), path)
    result = validate_dataset(detect_format(path, {}), ValidateConfig())
    assert (result.records, result.errors) == (3000, [{"line": 3001, "reason": "empty record"}])


def test_truncated_gzip_is_reported(tmp_path: Path) -> None:
    data = gzip.compress(
        b"".join(json.dumps({"text": f"row {i} " * 20}).encode() + b"\n" for i in range(5000))
    )
    path = tmp_path / "d.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError) as err:
        validate_dataset(detect_format(path, {}), ValidateConfig())
    assert err.value.code == "dataset.truncated_gzip"


def test_gzip_bomb_aborts_early_without_inflating_everything(tmp_path: Path) -> None:
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(b'{"text": "')
        chunk = b" " * MIB
        for _ in range(200):  # 200 MiB of spaces -> ~200 KB compressed
            f.write(chunk)
    assert path.stat().st_size < 400_000
    started = time.monotonic()
    by_size = ValidateConfig(max_decompressed_bytes=8 * MIB)
    by_ratio = ValidateConfig(max_compression_ratio=100, ratio_check_min_bytes=MIB)
    for limits in (by_size, by_ratio):
        with pytest.raises(PipelineError) as err:
            validate_dataset(detect_format(path, {}), limits)
        assert err.value.code == "dataset.decompression_bomb"
    assert time.monotonic() - started < 5


def test_a_single_huge_line_is_accepted_or_rejected_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w") as f:
        f.write(json.dumps({"text": "short"}) + "\n")
        f.write('{"text": "' + "word " * 4_000_000 + '"}\n')  # ~20 MB line
        f.write(json.dumps({"text": "after"}) + "\n")
    file = detect_format(path, {})
    tracemalloc.start()
    small = validate_dataset(file, ValidateConfig(max_record_bytes=MIB))
    peak_small = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert small.records == 2
    assert small.errors == [{"line": 2, "reason": f"record too long: more than {MIB} bytes"}]
    assert peak_small < 8 * MIB
    big = validate_dataset(file, ValidateConfig())
    assert (big.ok, big.records) == (True, 3)


def test_validate_reports_progress_and_honours_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"text": f"row {i}"} for i in range(100)])
    clock = iter(range(0, 10_000, 2))
    monkeypatch.setattr("pipeline.parts.datasets.formats.time.monotonic", lambda: next(clock))
    seen: list[Progress] = []
    result = validate_dataset(
        detect_format(path, {}), ValidateConfig(), Hooks(on_progress=seen.append)
    )
    assert result.ok and seen and seen[-1].total == path.stat().st_size
    with pytest.raises(StageCancelled):
        validate_dataset(detect_format(path, {}), ValidateConfig(), Hooks(should_stop=lambda: True))


def test_iter_records_carries_line_numbers(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "completion": "b"}] * 2)
    assert list(iter_records(detect_format(path, {}))) == [
        Record("prompt_completion", 1, prompt="a", completion="b"),
        Record("prompt_completion", 2, prompt="a", completion="b"),
    ]


class _CustomText(pa.ExtensionType):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(pa.string(), "gristmill.test.custom")

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> _CustomText:
        return cls()


def test_parquet_extension_types_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ext.parquet"
    pa.register_extension_type(_CustomText())
    try:
        column = pa.ExtensionArray.from_storage(_CustomText(), pa.array(["a", "b"]))
        pq.write_table(pa.table({"text": column}), path)
        with pytest.raises(PipelineError) as err:
            validate_dataset(detect_format(path, {}), ValidateConfig())
    finally:
        pa.unregister_extension_type("gristmill.test.custom")
    assert err.value.code == "dataset.wrong_schema"


def _gzip_of_rows(rows: int) -> bytes:
    return gzip.compress(
        b"".join(json.dumps({"text": f"row {i} " * 20}).encode() + b"\n" for i in range(rows))
    )


def _bgzf(data: bytes, block: int = 4096) -> bytes:
    """BGZF as bgzip writes it: gzip members of at most ``block`` bytes, each with a 'BC' extra
    field giving its size, then the empty end-of-file member."""
    out = b""
    for i in range(0, len(data), block):
        chunk = data[i : i + block]
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = compressor.compress(chunk) + compressor.flush()
        size = 18 + len(body) + 8 - 1
        header = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00"
        out += header + struct.pack("<H", size) + body
        out += struct.pack("<II", zlib.crc32(chunk), len(chunk))
    return out + BGZF_EOF


def _fails_validation(path: Path) -> PipelineError:
    with pytest.raises(PipelineError) as err:
        validate_dataset(detect_format(path, {}), ValidateConfig())
    return err.value


def test_a_gzip_cut_anywhere_fails_validation_as_truncated(tmp_path: Path) -> None:
    data = _gzip_of_rows(300)
    path = tmp_path / "d.gz"
    for cut in [1, 2, 9, 10, 11, *range(12, len(data), max(1, len(data) // 97)), len(data) - 1]:
        path.write_bytes(data[:cut])
        error = _fails_validation(path)
        assert error.code == "dataset.truncated_gzip", cut
        assert "incomplete" in error.message


def test_a_bgzf_file_cut_at_a_member_boundary_is_truncated(tmp_path: Path) -> None:
    content = b"".join(json.dumps({"text": f"line {i}"}).encode() + b"\n" for i in range(2000))
    whole = _bgzf(content)
    path = tmp_path / "d.bgz"
    path.write_bytes(whole)
    assert validate_dataset(detect_format(path, {}), ValidateConfig()).records == 2000
    members = whole[: -len(BGZF_EOF)]
    first_member = struct.unpack("<H", members[16:18])[0] + 1
    for cut in (first_member, len(members)):  # each a complete gzip member sequence
        path.write_bytes(whole[:cut])
        assert gzip.decompress(path.read_bytes())  # plain gzip cannot tell
        assert _fails_validation(path).code == "dataset.truncated_gzip"


@pytest.mark.parametrize(("offset", "what"), [(-8, "CRC"), (-3, "length")])
def test_a_gzip_with_a_bad_checksum_or_length_is_corrupt(
    tmp_path: Path, offset: int, what: str
) -> None:
    data = bytearray(_gzip_of_rows(300))
    data[offset] ^= 0x01
    path = tmp_path / "d.gz"
    path.write_bytes(bytes(data))
    error = _fails_validation(path)
    assert error.code == "dataset.corrupt_gzip"
    assert "corrupt" in error.message and what.lower() in error.message.lower()


def test_lone_surrogates_and_nul_escapes_fail_validation_with_their_line(tmp_path: Path) -> None:
    """JSON escapes can carry what UTF-8 cannot (``\\ud800``) or NUL: refused at validation,
    with the line, so no later job meets them."""
    path = tmp_path / "escapes.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "a\\ud800b"}\n{"text": "c\\u0000d"}\n')

    result = validate_dataset(detect_format(path, {}), ValidateConfig())

    assert not result.ok
    lines = {error["line"]: error["reason"] for error in result.errors}
    assert "surrogate" in lines[2] and "NUL" in lines[3]
