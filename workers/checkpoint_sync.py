"""A running job's checkpoints, copied to object storage so that another machine can resume it.

The stage writes each checkpoint into its local work folder as it always has
(``checkpoints/step_00000123/``, renamed into place) and announces it with a ``checkpoint`` event.
:class:`CheckpointSync` then copies it to ``jobs/<id>/work/<same relative path>`` on a thread of
its own, so training never waits for the bucket. A copy counts only once complete: the folder's
manifest goes last (:func:`app.store.folders.put_folder`), and the previous checkpoint is deleted
only after that, so a worker killed mid-copy leaves the previous complete one to resume from.
When checkpoints come faster than they upload, the newest waiting one replaces the others.

At the start of an attempt, :meth:`CheckpointSync.restore` fetches what the local work folder
lacks: the newest complete checkpoint of each series, and the folders a resume depends on
(``COMPANIONS``: an inline tokenizer, whose hash the checkpoints record), and the newest of the
folders saved beside each checkpoint (``BESIDE``: a fine-tune's servable snapshots). The stage's
own ``latest_checkpoint`` then finds it, as if the attempt ran on the machine that wrote it.

On the local folder store the work folder is inside the store already: nothing is copied.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from app import layout
from app.store.base import Store
from app.store.copies import is_local
from app.store.errors import FolderIncomplete, IntegrityError, StorageError
from app.store.folders import MANIFEST, children, get_folder, put_folder, read_manifest
from app.store.local import make_private_dirs, sha256_of

log = logging.getLogger(__name__)

COMPANIONS = ("tokenizer",)
"""Folders of the work folder that a resume needs besides the checkpoint: a job's inline
tokenizer (trained once per job; its checkpoints refuse another tokenizer)."""

BESIDE = {"checkpoint-models": 3}
"""Series of folders saved with each checkpoint, under the checkpoint's own name, and how many
the stage keeps: a fine-tune's servable snapshots (``pipeline.parts.hf.SNAPSHOTS`` and
``KEPT_SNAPSHOTS``; not imported, as that would load transformers into the worker's main
process), which become models of their own when the job ends, so a resumed job must still have
the earlier ones."""

STAGING = ".checkpoint-uploads"
"""Where a checkpoint waits for its upload, hard-linked: the stage deletes its older checkpoint
folders as it writes new ones, and the upload must still see every file of the one it copies."""

_SERIES = re.compile(r"^(?P<series>.*?)(?P<number>\d+)$")


@dataclass(frozen=True)
class _Upload:
    """One checkpoint's folders, each as (relative to the work folder, staged copy): the
    folders saved beside it first, the checkpoint itself (``checkpoints/step_00000123``) last."""

    folders: tuple[tuple[str, Path], ...]

    @property
    def relative(self) -> str:
        return self.folders[-1][0]

    def discard(self) -> None:
        for _, staged in self.folders:
            shutil.rmtree(staged, ignore_errors=True)


class CheckpointSync:
    """Copies one attempt's checkpoints to the store and brings them back on another machine.

    Use it as a context manager around the stage, or call :meth:`restore` before and
    :meth:`close` after. ``on_checkpoint`` is safe to call from any thread.
    """

    def __init__(
        self,
        store: Store,
        job_id: str,
        work_dir: Path,
        *,
        companions: tuple[str, ...] = COMPANIONS,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """``warn`` tells the job's owner (a warning event) that a copy failed."""
        self.store = store
        self.job_id = job_id
        self.work_dir = work_dir
        self.companions = companions
        self.warn = warn
        self.enabled = not is_local(store)
        self.uploaded: list[str] = []
        """Relative paths whose copy completed during this attempt, in order (logs, tests)."""
        self.failed: list[str] = []
        """Relative paths whose copy failed (the next checkpoint tries again)."""
        self._staging = work_dir / STAGING
        self._cond = threading.Condition()
        self._pending: _Upload | None = None
        self._busy = False
        self._closing = False
        self._companions_done: set[str] = set()
        self._thread: threading.Thread | None = None
        self._restoring = False

    @property
    def active(self) -> bool:
        """Whether a copy (either way) is under way: the attempt is alive, if quiet."""
        return self._busy or self._pending is not None or self._restoring

    # -- the start of an attempt --------------------------------------------------------------

    def restore(self) -> list[str]:
        """Fetch the newest complete checkpoint of each series, and the companion folders, that
        the local work folder lacks; returns their relative paths. A checkpoint that fails its
        verification is skipped for the next older complete one. Raises StorageUnavailable
        (retryable: the attempt fails on its budget) when the store cannot be read."""
        if not self.enabled:
            return []
        self._restoring = True
        try:
            return self._restore()
        finally:
            self._restoring = False

    def _restore(self) -> list[str]:
        shutil.rmtree(self._staging, ignore_errors=True)  # a killed attempt's leftovers
        restored: list[str] = []
        series: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for relative in self._stored_folders():
            parent, _, name = relative.rpartition("/")
            match = _SERIES.match(name)
            if match is None:
                missing = name in self.companions and not (self.work_dir / relative).exists()
                if missing and self._fetch(relative):
                    restored.append(relative)
                continue
            key = (parent, match["series"])
            series.setdefault(key, []).append((int(match["number"]), relative))
        for (parent, prefix), stored in series.items():
            local = _local_numbers(self.work_dir / parent if parent else self.work_dir, prefix)
            kept = BESIDE.get(parent, 1)
            wanted = kept  # the newest `kept` of the series, here or fetched
            for number, relative in sorted(stored, reverse=True):
                if wanted == 0:
                    break
                if number in local:
                    wanted -= 1
                elif kept == 1 and local and max(local) > number:
                    break  # this machine has a newer checkpoint already
                elif self._fetch(relative):
                    restored.append(relative)
                    wanted -= 1
        if restored:
            log.info("fetched %s from %s", ", ".join(restored), self.store.url)
        return restored

    def _stored_folders(self) -> list[str]:
        """Relative paths of the complete folders under the job's work prefix."""
        base = f"{layout.job_work(self.job_id)}/"
        ending = f"/{MANIFEST}"
        return [
            item.key[len(base) : -len(ending)]
            for item in self.store.list(layout.job_work(self.job_id))
            if item.key.endswith(ending)
        ]

    def _fetch(self, relative: str) -> bool:
        key = layout.job_work_item(self.job_id, relative)
        try:
            get_folder(self.store, key, self.work_dir / relative)
        except (FolderIncomplete, IntegrityError) as err:  # deleted since listed, or damaged
            log.warning("could not fetch %s: %s", key, err)
            return False
        return True

    # -- while the stage runs -----------------------------------------------------------------

    def on_checkpoint(self, path: Path | str) -> None:
        """Queue a copy of the checkpoint folder ``path`` (inside the work folder); returns at
        once. A copy queued earlier and not yet started is dropped: the newest wins."""
        if not self.enabled:
            return
        folder = Path(path)
        try:
            relative = folder.resolve().relative_to(self.work_dir.resolve()).as_posix()
        except ValueError:
            log.warning("checkpoint %s is outside the work folder; not copied", folder)
            return
        beside = [f"{series}/{folder.name}" for series in BESIDE]
        wanted = [r for r in beside if (self.work_dir / r).is_dir()] + [relative]
        try:
            upload = _Upload(tuple((r, self._stage(self.work_dir / r)) for r in wanted))
        except OSError as err:  # already replaced by a newer one: that one will come
            log.warning("checkpoint %s vanished before its copy started: %s", folder, err)
            return
        with self._cond:
            if self._closing:
                upload.discard()
                return
            if self._pending is not None:
                self._pending.discard()
            self._pending = upload
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"checkpoint-sync-{self.job_id}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _stage(self, folder: Path) -> Path:
        staged = self._staging / f"{folder.name}-{uuid.uuid4().hex}"
        try:
            make_private_dirs(self._staging)
            shutil.copytree(folder, staged, copy_function=_link_or_copy)
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return staged

    def on_event(self, message: str, data: Mapping[str, object] | None) -> None:
        """The stage's events as the monitor sees them: a ``checkpoint`` event with a ``path``
        queues its copy (a restored one too: the check that it is stored already is cheap)."""
        if message == "checkpoint" and data and isinstance(data.get("path"), str):
            self.on_checkpoint(str(data["path"]))

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                upload, self._pending = self._pending, None
                if upload is None:
                    return
                self._busy = True
            try:
                self._copy(upload)
                self.uploaded.append(upload.relative)
            except Exception as err:  # the bucket unreachable, a full disk: the next one retries
                self.failed.append(upload.relative)
                log.warning("checkpoint %s not copied to the store: %s", upload.relative, err,
                            exc_info=not isinstance(err, StorageError))  # fmt: skip
                if self.warn is not None:
                    code = err.code if isinstance(err, StorageError) else "storage.error"
                    self.warn(
                        f"checkpoint {upload.relative} was not copied to the store ({code}); "
                        "training goes on and the next checkpoint tries again"
                    )
            finally:
                upload.discard()
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _copy(self, upload: _Upload) -> None:
        for name in self.companions:
            if name not in self._companions_done and (self.work_dir / name).is_dir():
                self._put_companion(name)
                self._companions_done.add(name)
        copied = False
        for relative, staged in upload.folders:
            key = layout.job_work_item(self.job_id, relative)
            if read_manifest(self.store, key) is None:  # else stored already (a restored one)
                put_folder(self.store, key, staged)
                copied = True
        if copied:
            log.info("checkpoint %s copied to the store", upload.relative)
        # Complete in the store: older folders of each series beyond what the stage keeps (and
        # copies a killed worker left half done) can go.
        for relative, _ in upload.folders:
            self._prune(relative)

    def _prune(self, relative: str) -> None:
        parent, _, name = layout.job_work_item(self.job_id, relative).rpartition("/")
        match = _SERIES.match(name)
        if match is None:
            return
        kept = BESIDE.get(relative.rpartition("/")[0], 1)
        newest = int(match["number"])
        older: list[tuple[int, str]] = []
        for sibling in children(self.store, parent):
            other = _SERIES.match(sibling)
            if sibling == name or other is None or other["series"] != match["series"]:
                continue
            number = int(other["number"])
            if number < newest and read_manifest(self.store, f"{parent}/{sibling}") is not None:
                older.append((number, sibling))
            else:
                self.store.delete(f"{parent}/{sibling}")
        for _, sibling in sorted(older, reverse=True)[kept - 1 :]:
            self.store.delete(f"{parent}/{sibling}")

    def _put_companion(self, name: str) -> None:
        """Store a companion folder unless the store holds the same files already (a tokenizer
        is written once per job: replacing an identical one would only open a window in which
        the store has none)."""
        key = layout.job_work_item(self.job_id, name)
        folder = self.work_dir / name
        stored = read_manifest(self.store, key)
        if stored is not None:
            recorded = {entry.path: (entry.size, entry.sha256) for entry in stored.files}
            local = {
                path.relative_to(folder).as_posix(): (path.stat().st_size, sha256_of(path))
                for path in folder.rglob("*")
                if path.is_file()
            }
            if recorded == local:
                return
        put_folder(self.store, key, folder)

    # -- the end of an attempt ----------------------------------------------------------------

    def close(self, *, upload_pending: bool = True) -> None:
        """Wait for the copy in flight and, with ``upload_pending``, for the last checkpoint
        queued (a paused, preempted or failed attempt's last checkpoint reaches the store before
        the job is handed on). Without it (the job succeeded: its checkpoints serve no resume),
        a copy not yet started is dropped. Safe to call more than once."""
        with self._cond:
            self._closing = True
            if not upload_pending and self._pending is not None:
                self._pending.discard()
                self._pending = None
            self._cond.notify_all()
            while self._pending is not None or self._busy:
                self._cond.wait()
            thread = self._thread
        if thread is not None:
            thread.join()
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> CheckpointSync:
        self.restore()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _local_numbers(folder: Path, prefix: str) -> list[int]:
    """The step numbers of the finished checkpoints ``prefix<n>`` in ``folder``."""
    if not folder.is_dir():
        return []
    numbers = []
    for entry in folder.iterdir():
        match = _SERIES.match(entry.name)
        if match is not None and match["series"] == prefix and entry.is_dir():
            numbers.append(int(match["number"]))
    return numbers


def _link_or_copy(source: str, dest: str) -> None:
    """A hard link (instant, and the stage never rewrites a finished checkpoint's files), or a
    copy where the filesystem has none."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
