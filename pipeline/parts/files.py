"""Files as the pipeline names and keeps them: content hashes and durable writes.

A file's sha256 is its identity everywhere in the pipeline: a tokenizer is known by the hash of
its ``tokenizer.json`` (token caches and checkpoints record it), a token cache by its dataset's,
and a checkpoint's files carry theirs, so a torn write is never resumed from.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    """The file's sha256 as hex, read a block at a time (files may be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk: a rename is durable once its folder is."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
