"""A parallel download is hashed while it is written, whatever order its chunks arrive in."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from app.store.s3io import OrderedHasher


def _write(path: Path, chunks: list[tuple[int, bytes]]) -> OrderedHasher:
    hasher = OrderedHasher(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for offset, data in chunks:
        hasher.seek(offset)
        hasher.write(data)
    return hasher


def test_chunks_in_any_order_hash_as_the_whole_file(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(3 * 1024 * 1024 + 17)
    chunks = [(at, data[at : at + 65536]) for at in range(0, len(data), 65536)]
    random.Random(1).shuffle(chunks)
    hasher = _write(tmp_path / "f", chunks)
    assert hasher.hexdigest(len(data)) == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "f").read_bytes() == data


def test_a_retried_range_is_not_hashed_twice(tmp_path: Path) -> None:
    data = random.Random(8).randbytes(400_000)
    chunks = [(0, data[:100_000]), (200_000, data[200_000:]), (150_000, data[150_000:300_000])]
    chunks += [(0, data[:150_000]), (100_000, data[100_000:200_000])]  # retries overlap
    hasher = _write(tmp_path / "f", chunks)
    assert hasher.hexdigest(len(data)) == hashlib.sha256(data).hexdigest()


def test_a_gap_gives_no_digest(tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    hasher = _write(tmp_path / "f", [(0, data[:1000]), (2000, data[2000:])])
    assert hasher.hexdigest(len(data)) is None
