"""Bounded, safe tar/zip extraction for model imports, apart so stage.py reads as the recipe."""

from __future__ import annotations

import stat
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from pipeline.configs.finetune import ModelImportConfig
from pipeline.types import PipelineError

_CHUNK = 1 << 20
# Headers whose body tarfile reads whole into memory to describe the member that follows.
_EXTENDED_HEADERS = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
    | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


def _fail(code: str, message: str) -> PipelineError:
    return PipelineError(code, message)


def safe_member_path(name: str) -> PurePosixPath:
    """The member's path if it stays inside the folder; raises for absolute paths and ``..``."""
    normal = name.replace("\\", "/")
    path = PurePosixPath(normal)
    if path.is_absolute() or normal.startswith("/") or (len(normal) > 1 and normal[1] == ":"):
        raise _fail("model.unsafe_archive", f"absolute path in the archive: {name!r}")
    if ".." in path.parts:
        raise _fail("model.unsafe_archive", f"path escapes the folder: {name!r}")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise _fail("model.unsafe_archive", f"empty member name: {name!r}")
    return PurePosixPath(*parts)


class _Budget:
    def __init__(self, config: ModelImportConfig, archive_bytes: int) -> None:
        self.config, self.archive_bytes = config, max(archive_bytes, 1)
        self.files = self.bytes = self.entries = 0

    def add_entry(self) -> None:
        """Every member, whatever its kind, before anything else is done with it."""
        self.entries += 1
        if self.entries > self.config.max_entries:
            raise _fail(
                "model.archive_too_many_entries",
                f"the archive has more than {self.config.max_entries} entries",
            )

    def add_file(self) -> None:
        self.files += 1
        if self.files > self.config.max_files:
            raise _fail("model.unsafe_archive", f"more than {self.config.max_files} files")

    def declare(self, name: str, size: int) -> None:
        """A member's declared size, refused before a byte of it is read."""
        self._check_quota(self.bytes + size)
        limit = self.config.max_extracted_bytes
        if size < 0 or self.bytes + size > limit:
            raise _fail(
                "model.archive_too_large",
                f"{name!r} declares {size} bytes: the archive would unpack beyond {limit} bytes",
            )

    def _check_quota(self, total: int) -> None:
        quota = self.config.quota_bytes
        if quota is not None and total > quota:
            raise _fail(
                "model.storage_quota_exceeded",
                f"the unpacked model goes past the {quota} bytes left in the storage quota",
            )

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        self._check_quota(self.bytes)
        if self.bytes > self.config.max_extracted_bytes:
            raise _fail(
                "model.unsafe_archive",
                f"the archive unpacks beyond {self.config.max_extracted_bytes} bytes",
            )
        if self.bytes > (1 << 24) and self.bytes / self.archive_bytes > self.config.max_ratio:
            raise _fail(
                "model.unsafe_archive", f"the archive inflates over {self.config.max_ratio:g}x"
            )


def _copy(source: IO[bytes], dest: Path, budget: _Budget) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL semantics: a duplicate member must not overwrite (or follow) an earlier one.
    with dest.open("xb") as out:
        while block := source.read(_CHUNK):
            budget.add_bytes(len(block))
            out.write(block)


def extract_archive(archive: Path, dest: Path, config: ModelImportConfig) -> tuple[int, int]:
    """Unpack a tar (plain or gzip) or zip into ``dest``; returns (files, bytes)."""
    budget = _Budget(config, archive.stat().st_size)
    with archive.open("rb") as f:
        magic = f.read(4)
    try:
        if magic.startswith(b"PK\x03\x04") or magic.startswith(b"PK\x05\x06"):
            _extract_zip(archive, dest, budget)
        else:
            _extract_tar(archive, dest, budget)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        if isinstance(exc, FileExistsError):
            member = _member(exc, dest)
            raise _fail("model.unsafe_archive", f"duplicate member: {member}") from exc
        # An OSError names the absolute path it failed on: say which member, relative to the top.
        reason = (
            f"{exc.strerror or type(exc).__name__} at {_member(exc, dest)}"
            if isinstance(exc, OSError)
            else str(exc)
        )
        raise _fail("model.bad_archive", f"not a readable .tar, .tar.gz or .zip: {reason}") from exc
    return budget.files, budget.bytes


def _member(exc: OSError, dest: Path) -> str:
    """The member an extraction error is about, as the archive names it (never a server path)."""
    try:
        return Path(exc.filename).relative_to(dest).as_posix()
    except (TypeError, ValueError):
        return "a member"


def _bounded_tarinfo(limit: int) -> type[tarfile.TarInfo]:
    """A TarInfo that refuses an oversized extended header as soon as its 512-byte block is
    parsed, before tarfile reads the body it declares."""

    class Bounded(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Bounded:
            info = super().frombuf(buf, encoding, errors)
            if info.type in _EXTENDED_HEADERS and info.size > limit:
                raise _fail(
                    "model.archive_header_too_large",
                    f"an extended tar header declares {info.size} bytes (at most {limit})",
                )
            return info

    return Bounded


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    tarinfo = _bounded_tarinfo(budget.config.max_header_bytes)
    with tarfile.open(archive, mode="r:*", tarinfo=tarinfo) as tar:
        for member in _tar_members(tar):
            budget.add_entry()
            rel = safe_member_path(member.name)
            if member.isdir():
                (dest / rel).mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                kind = "link" if member.issym() or member.islnk() else "special file"
                raise _fail("model.unsafe_archive", f"{kind} in the archive: {member.name!r}")
            budget.add_file()
            budget.declare(member.name, member.size)
            source = tar.extractfile(member)
            assert source is not None  # regular files always have data
            with source:
                _copy(source, dest / rel, budget)


def _tar_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members one at a time (``getmembers`` would read a bomb's whole index first)."""
    while (member := tar.next()) is not None:
        yield member


def zip_entry_count(archive: Path) -> int | None:
    """The entry count a zip's end record declares (zip64 too), read before ``ZipFile`` loads
    the whole central directory into memory; None when there is no end record to read."""
    with archive.open("rb") as f:
        size = f.seek(0, 2)
        start = max(0, size - (22 + 0xFFFF))
        f.seek(start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) < at + 22:
            return None
        (count,) = struct.unpack("<H", tail[at + 10 : at + 12])
        locator = at - 20
        if count != 0xFFFF or locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
            return int(count)
        (offset,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
        f.seek(offset)
        record = f.read(56)
        if len(record) < 40 or not record.startswith(b"PK\x06\x06"):
            return None
        (count64,) = struct.unpack("<Q", record[32:40])
        return int(count64)


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    declared = zip_entry_count(archive)
    if declared is not None and declared > budget.config.max_entries:
        raise _fail(
            "model.archive_too_many_entries",
            f"the archive has more than {budget.config.max_entries} entries ({declared})",
        )
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            budget.add_entry()
            rel = safe_member_path(info.filename)
            mode = info.external_attr >> 16
            if info.is_dir():
                (dest / rel).mkdir(parents=True, exist_ok=True)
                continue
            # zipfile's own writestr sets permission bits and no file type: a plain file too.
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise _fail("model.unsafe_archive", f"link or special file: {info.filename!r}")
            budget.add_file()
            budget.declare(info.filename, info.file_size)
            with zf.open(info) as source:
                _copy(source, dest / rel, budget)
