"""Files on their way to and from the server: counted and hashed as they stream, so uploads
report progress and are checked against the server's sha256, and downloads land in place only
when their sha256 matches the one the server recorded."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

ProgressFn = Callable[[int], None]
"""Called with the number of bytes just sent or received (negative: a transfer starts over)."""

CHUNK = 1024 * 1024


class ChecksumMismatch(Exception):
    """A transferred file's sha256 is not the one the other side has; nothing was kept."""


class ProgressReader(io.RawIOBase):
    """A binary file that hashes and reports each chunk read from it: httpx's multipart encoder
    reads the file in chunks as it sends them, so this counts bytes as they go out. ``fileno``
    lets httpx size the body up front (a Content-Length, not chunked encoding)."""

    def __init__(self, raw: IO[bytes], on_progress: ProgressFn | None) -> None:
        super().__init__()
        self.raw, self.on_progress, self.sent = raw, on_progress, 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        self.sent += len(chunk)
        self.sha256.update(chunk)
        if self.on_progress is not None and chunk:
            self.on_progress(len(chunk))
        return chunk

    def fileno(self) -> int:
        return self.raw.fileno()

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) == (0, os.SEEK_SET):
            self.rewind()
            return 0
        raise io.UnsupportedOperation("an upload is read from its start only")

    def tell(self) -> int:
        return self.sent

    def rewind(self) -> None:
        """Back to the start (httpx does it before sending; we before a retry): the hash starts
        over and the progress bar goes back to zero."""
        if self.sent and self.on_progress is not None:
            self.on_progress(-self.sent)
        self.sent, self.sha256 = 0, hashlib.sha256()
        self.raw.seek(0)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pack_folder(folder: Path, archive: Path) -> int:
    """Pack ``folder`` into an uncompressed tar at ``archive`` (one top folder, as the model
    import expects); returns the number of files.

    Plain tar, not gzip: weights hardly compress and gzip would cost minutes on a large model.
    Links are followed, so a Hugging Face cache snapshot (a folder of links into its blobs)
    packs as the files themselves; hidden folders (``.git``, ``.cache``) stay out.
    """
    files = 0
    with tarfile.open(archive, "w", dereference=True) as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if any(part.startswith(".") and part != ".gitattributes" for part in rel.parts):
                continue
            if path.is_file():
                tar.add(path, arcname=f"{folder.name}/{rel.as_posix()}", recursive=False)
                files += 1
    return files
