"""Token shards: what they hold, how long documents are cut, and that memory stays bounded."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from benchmarks.corpus import Prose
from pipeline.parts import tokens as data
from pipeline.parts.tokens import special_ids, tokenize_dataset
from pipeline.types import DatasetFile, Hooks, PipelineError, StageCancelled
from tests.pipeline.conftest import text_file
from tests.timing import scaled

REPO = Path(__file__).parents[2]


def _encode(tokenizer_dir: Path, text: str) -> list[int]:
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def test_shard_is_each_documents_ids_followed_by_eos(
    tmp_path: Path,
    tiny_tokenizer_dir: Path,
    corpus_texts: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(data, "_CHUNK_CHARS", 2000)  # many chunks through the read-ahead queue
    texts = [*corpus_texts[:40], "", "  ", "naïve café: 東京 🚀"]
    shard = tokenize_dataset(text_file(tmp_path / "d.jsonl", texts), tiny_tokenizer_dir, tmp_path)

    eos = special_ids(tiny_tokenizer_dir)["eos"]
    kept = [t for t in texts if t.strip()]  # blank records are invalid: the reader skips them
    expected = [i for t in kept for i in [*_encode(tiny_tokenizer_dir, t), eos]]
    assert shard.tokens.tolist() == expected and shard.documents == len(kept)
    assert not list(shard.path.glob("*.tmp"))


def test_long_document_is_encoded_in_pieces_with_the_ids_of_the_whole(
    tmp_path: Path, tiny_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prose = Prose(seed=3)
    long = "\n\n".join(prose.document() for _ in range(8)) + "  two  spaces,  and (brackets) "
    pieces = list(data._pieces(long, 1000))
    assert len(pieces) > 20 and max(end - begin for begin, end in pieces) <= 1000
    assert "".join(long[b:e] for b, e in pieces) == long

    monkeypatch.setattr(data, "_PIECE_CHARS", 1000)
    file = text_file(tmp_path / "long.jsonl", ["short one", long])
    shard = tokenize_dataset(file, tiny_tokenizer_dir, tmp_path)

    eos = special_ids(tiny_tokenizer_dir)["eos"]
    short, whole = _encode(tiny_tokenizer_dir, "short one"), _encode(tiny_tokenizer_dir, long)
    assert shard.tokens.tolist() == [*short, eos, *whole, eos] and shard.documents == 2


def test_text_without_spaces_is_cut_hard_and_still_decodes(
    tmp_path: Path, tiny_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = "".join(f"{i:x}" for i in range(2000))  # no space to cut at
    sizes = [end - begin for begin, end in data._pieces(blob, 1000)]
    assert sizes == [1000] * (len(blob) // 1000) + [len(blob) % 1000]

    monkeypatch.setattr(data, "_PIECE_CHARS", 1000)
    file = text_file(tmp_path / "blob.jsonl", [blob])
    shard = tokenize_dataset(file, tiny_tokenizer_dir, tmp_path)

    tokenizer = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    assert tokenizer.decode(shard.tokens[:-1].tolist()) == blob


def test_a_reader_error_mid_stream_is_raised_and_leaves_no_partial_shard(
    tmp_path: Path,
    tiny_tokenizer_dir: Path,
    corpus_texts: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(data, "_CHUNK_CHARS", 2000)  # several chunks are written before the error
    body = "".join(json.dumps({"text": t}) + "\n" for t in corpus_texts) * 4
    packed = gzip.compress(body.encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) * 2 // 3])  # an interrupted upload
    threads = threading.active_count()

    with pytest.raises(PipelineError) as caught:
        tokenize_dataset(
            DatasetFile(tmp_path / "cut.jsonl.gz", "jsonl", "gzip"), tiny_tokenizer_dir, tmp_path
        )
    assert caught.value.code == "dataset.truncated_gzip"
    assert not list((tmp_path / "tokens").glob("*/*"))  # no tmp file, no manifest
    assert threading.active_count() == threads  # the reader thread has stopped


def test_a_stop_between_chunks_cancels_tokenising_and_a_later_run_starts_clean(
    tmp_path: Path,
    tiny_tokenizer_dir: Path,
    corpus_texts: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(data, "_CHUNK_CHARS", 2000)
    file = text_file(tmp_path / "d.jsonl", corpus_texts * 4)
    asked: list[int] = []

    def stop_on_third_chunk() -> bool:
        asked.append(1)
        return len(asked) == 2  # asked before the 2nd and 3rd chunks, never before the 1st

    threads = threading.active_count()
    with pytest.raises(StageCancelled, match="while tokenising"):
        tokenize_dataset(file, tiny_tokenizer_dir, tmp_path, Hooks(should_stop=stop_on_third_chunk))
    assert len(asked) == 2
    assert not list((tmp_path / "tokens").glob("*/*"))  # no tmp file, no manifest
    assert threading.active_count() == threads

    shard = tokenize_dataset(file, tiny_tokenizer_dir, tmp_path)
    assert not shard.reused and shard.documents == len(corpus_texts) * 4


def test_a_one_chunk_dataset_is_never_asked_to_stop(
    tmp_path: Path, tiny_tokenizer_dir: Path, corpus_texts: list[str]
) -> None:
    hooks = Hooks(should_stop=lambda: pytest.fail("asked to stop"))
    shard = tokenize_dataset(
        text_file(tmp_path / "d.jsonl", corpus_texts[:5]), tiny_tokenizer_dir, tmp_path, hooks
    )
    assert shard.documents == 5


# Peak RSS once a quarter of the corpus is done (threads started, allocator arenas and the
# pipeline's few chunks in flight: the steady state) against peak RSS at the end. ru_maxrss never
# goes down, so the difference is what the other three quarters cost. Chunks are cut to 64 KB so
# the steady state is reached early in a corpus small enough for a quick test.
_CHILD = """
import json, resource, sys
from pathlib import Path
from benchmarks.corpus import generate
from pipeline.parts import tokens as data
from pipeline.types import DatasetFile, Hooks

root, tokenizer, size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
data._CHUNK_CHARS = 64 << 10
corpus = root / "corpus.jsonl"
generate(corpus, size)
peaks = []

def record(message, fields, level):  # called once per chunk
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

hooks = Hooks(on_event=record)
shard = data.tokenize_dataset(DatasetFile(corpus, "jsonl"), tokenizer, root, hooks)
growth = peaks[-1] - peaks[len(peaks) // 4]
print(json.dumps({"growth": growth, "chunks": len(peaks), "tokens": int(shard.tokens.size)}))
"""


def test_tokenising_memory_is_bounded_by_the_chunk_not_the_corpus(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    size = 16_000_000
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path), str(tiny_tokenizer_dir), str(size)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(120),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["tokens"] > size // 10 and report["chunks"] > 100, report
    # Holding three quarters of the corpus's text or ids would add 12 MB or more; streaming
    # measured under 1 MB on a busy 2-core machine.
    assert report["growth"] < size / 2, report
