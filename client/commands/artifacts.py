"""``gristmill models`` and ``gristmill tokenizers``: list, show and download (every file
checked against its sha256) the artifacts jobs made; upload a model of your own (an archive,
or a folder packed here) and delete models."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client import render
from client.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Handler,
    add_read_actions,
    downloaded,
    emit_json,
    emit_list,
    err,
    out,
    take,
    wait_while,
)
from client.http import GristmillClient
from client.resources.artifacts import Artifacts
from client.transfers import pack_folder

if TYPE_CHECKING:
    from client.parser import Leaf, SubParsers

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
"""What the model import unpacks; anything else is refused before a byte is sent."""


def add_actions(actions: SubParsers, leaf: Leaf, group: str) -> None:
    """``group`` is the collection: ``models`` or ``tokenizers``."""
    list_, show, download = handlers(group)
    kind = group.removesuffix("s")
    if group == "models":
        upload = leaf(
            actions,
            "upload",
            "upload a Hugging Face model folder (packed here) or a .tar, .tar.gz or .zip of "
            "one; safetensors only",
        )
        upload.add_argument("path", type=Path, help="an archive or a model folder")
        upload.add_argument("--name", help="a name for it (default: the file or folder name)")
        upload.add_argument(
            "--wait", action="store_true", help="wait for the import's checks; exit 1 if they fail"
        )
        upload.set_defaults(handler=upload_model)
        delete = leaf(actions, "delete", "delete a model (refused while a job uses it)")
        delete.add_argument("id")
        delete.set_defaults(handler=delete_model)
    add_read_actions(
        actions, leaf, kind, list_handler=list_, show_handler=show, download_handler=download
    )


def collection(client: GristmillClient, group: str) -> Artifacts:
    return {"models": client.models, "tokenizers": client.tokenizers}[group]


def handlers(group: str) -> tuple[Handler, Handler, Handler]:
    """List, show and download for one collection."""

    def list_(client: GristmillClient, args: argparse.Namespace) -> int:
        items = take(collection(client, group).list(), args.limit)
        if args.json:
            emit_list(items)
        else:
            out.print(render.artifacts_table(items))
        return EXIT_OK

    def show(client: GristmillClient, args: argparse.Namespace) -> int:
        item = collection(client, group).get(args.id)
        if args.json:
            emit_json(item)
        else:
            out.print(render.details_table(item))
        return EXIT_OK

    def download(client: GristmillClient, args: argparse.Namespace) -> int:
        artifacts = collection(client, group)
        files = artifacts.files(args.id)
        with render.transfer_progress(err) as bar:
            task = bar.add_task(f"download {args.id}", total=sum(f["size_bytes"] for f in files))
            path = artifacts.download(
                args.id, args.dir, files=files, on_progress=lambda n: bar.advance(task, n)
            )
        return downloaded(args, path, [f["sha256"] for f in files])

    return list_, show, download


def upload_model(client: GristmillClient, args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.is_dir():
        folder = path.resolve()
        with tempfile.TemporaryDirectory(prefix="gristmill-") as tmp:
            archive = Path(tmp) / f"{folder.name}.tar"
            with err.status(f"packing {path}…"):
                files = pack_folder(folder, archive)
            if not files:
                err.print(f"[red]error:[/] {path} holds no files")
                return EXIT_USAGE
            model = _send(client, archive, name=args.name or folder.name)
    elif path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
        model = _send(client, path, name=args.name)
    else:
        what = "is neither a folder nor" if path.exists() else "does not exist; expected"
        err.print(f"[red]error:[/] {path} {what} a {', '.join(ARCHIVE_SUFFIXES)} archive")
        return EXIT_USAGE
    if args.wait:
        model = wait_while(
            lambda: client.models.get(model["id"]), "validating", f"checking {model['id']}"
        )
    if args.json:
        emit_json(model)
    elif args.wait:
        render.print_model_import(out, model, _import_error(client, model))
    else:
        out.print(f"uploaded {model['id']}: {render.styled_status(model['status'])}")
        out.print(f"[dim]its checks run on the server; see: gristmill models show {model['id']}[/]")
    return EXIT_FAILED if model["status"] == "failed" else EXIT_OK


def _send(client: GristmillClient, archive: Path, *, name: str | None) -> dict[str, Any]:
    with render.transfer_progress(err) as bar:
        task = bar.add_task(f"upload {archive.name}", total=archive.stat().st_size)
        return client.models.upload(archive, name=name, on_progress=lambda n: bar.advance(task, n))


def _import_error(client: GristmillClient, model: dict[str, Any]) -> dict[str, Any]:
    """Why a model failed its import: the import's own finding, else its job's error."""
    if model["status"] != "failed":
        return {}
    for error in model.get("errors") or []:
        return {"code": error.get("code"), "message": error.get("reason")}
    job_id = (model.get("lineage") or {}).get("job_id")
    return dict(client.jobs.get(job_id).get("error") or {}) if job_id else {}


def delete_model(client: GristmillClient, args: argparse.Namespace) -> int:
    deleted = client.models.delete(args.id)
    if args.json:
        emit_json(deleted)
    else:
        out.print(f"deleted {deleted['id']}")
    return EXIT_OK
