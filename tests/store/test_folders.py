"""Folders (a model, a checkpoint) count only once complete: the manifest is written last."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.store.base import Store
from app.store.errors import FolderIncomplete, IntegrityError
from app.store.folders import (
    MANIFEST,
    children,
    get_folder,
    put_bytes,
    put_file,
    put_folder,
    read_manifest,
)


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_a_folder_round_trips_with_every_file_verified(store: Store, tmp_path: Path) -> None:
    files = {"config.json": b"{}", "model.safetensors": os.urandom(6 << 20), "tok/vocab.json": b"v"}
    manifest = put_folder(store, "models/mdl_1", make_folder(tmp_path / "src", files))
    assert [e.path for e in manifest.files] == [
        "config.json",
        "model.safetensors",
        "tok/vocab.json",
    ]
    assert read_manifest(store, "models/mdl_1") == manifest
    assert get_folder(store, "models/mdl_1", tmp_path / "out") == manifest
    got = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
           for p in (tmp_path / "out").rglob("*") if p.is_file()}  # fmt: skip
    assert got == files


def test_a_folder_without_its_manifest_is_incomplete(store: Store, tmp_path: Path) -> None:
    # A worker killed while copying a checkpoint: some files are there, the manifest is not.
    put_file(
        store, "jobs/j/checkpoints/step-20/model.bin", make_folder(tmp_path, {"m": b"w"}) / "m"
    )
    assert read_manifest(store, "jobs/j/checkpoints/step-20") is None
    with pytest.raises(FolderIncomplete):
        get_folder(store, "jobs/j/checkpoints/step-20", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rewriting_a_folder_replaces_it_and_drops_stale_files(store: Store, tmp_path: Path) -> None:
    put_folder(store, "ckpt/latest", make_folder(tmp_path / "v1", {"a": b"1", "old": b"x"}))
    put_folder(store, "ckpt/latest", make_folder(tmp_path / "v2", {"a": b"2", "b/c": b"3"}))
    assert sorted(o.key for o in store.list("ckpt/latest")) == [
        f"ckpt/latest/{MANIFEST}",
        "ckpt/latest/a",
        "ckpt/latest/b/c",
    ]
    dest = make_folder(tmp_path / "dest", {"leftover": b"z"})
    get_folder(store, "ckpt/latest", dest)
    assert sorted(p.name for p in dest.rglob("*")) == ["a", "b", "c"]
    assert (dest / "a").read_bytes() == b"2"


def test_a_file_changed_after_its_manifest_is_refused(store: Store, tmp_path: Path) -> None:
    put_folder(store, "models/m", make_folder(tmp_path / "src", {"w": b"weights"}))
    put_bytes(store, "models/m/w", b"tampered")
    with pytest.raises(IntegrityError):
        get_folder(store, "models/m", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_an_empty_folder_is_a_complete_folder(store: Store, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    put_folder(store, "x/empty", tmp_path / "empty")
    assert get_folder(store, "x/empty", tmp_path / "out").files == ()
    assert (tmp_path / "out").is_dir()


def test_children_are_the_folders_under_a_prefix_with_their_newest_time(
    store: Store, tmp_path: Path
) -> None:
    put_bytes(store, "datasets/ds_1/data", b"a")
    put_bytes(store, "datasets/ds_1/report.json", b"{}")
    put_bytes(store, "datasets/ds_2/data", b"b")
    put_bytes(store, "models/m/w", b"c")
    ages = children(store, "datasets")
    assert sorted(ages) == ["ds_1", "ds_2"]
    newest = max(o.modified for o in store.list("datasets/ds_1"))
    assert ages["ds_1"] == newest
    assert children(store, "tokenizers") == {}
