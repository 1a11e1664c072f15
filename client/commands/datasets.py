"""``gristmill datasets``: upload (streamed, optionally waiting for validation), list, show,
download and delete datasets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client import render
from client.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
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

if TYPE_CHECKING:
    from client.parser import Leaf, SubParsers


def add_actions(actions: SubParsers, leaf: Leaf, group: str) -> None:
    upload = leaf(
        actions, "upload", "upload a dataset file (streamed), optionally wait for validation"
    )
    upload.add_argument("file", type=Path)
    upload.add_argument("--name", help="a name for it (default: the file name)")
    upload.add_argument("--split", choices=("file", "paragraph", "line"), help="plain text only")
    upload.add_argument("--column", help="the text column of a CSV or Parquet file")
    upload.add_argument(
        "--wait", action="store_true", help="wait for validation; exit 1 if it fails"
    )
    upload.set_defaults(handler=upload_dataset)
    delete = leaf(actions, "delete", "delete a dataset (refused while a job reads it)")
    delete.add_argument("id")
    delete.set_defaults(handler=delete_dataset)
    add_read_actions(
        actions,
        leaf,
        "dataset",
        list_handler=list_datasets,
        show_handler=show_dataset,
        download_handler=download_dataset,
    )


def upload_dataset(client: GristmillClient, args: argparse.Namespace) -> int:
    path: Path = args.file
    options = {k: v for k, v in (("split", args.split), ("column", args.column)) if v}
    with render.transfer_progress(err) as bar:
        task = bar.add_task(f"upload {path.name}", total=path.stat().st_size)
        dataset = client.datasets.upload(
            path, name=args.name, options=options, on_progress=lambda n: bar.advance(task, n)
        )
    if not args.wait:
        if args.json:
            emit_json(dataset)
        else:
            out.print(f"uploaded {dataset['id']}: {render.styled_status(dataset['status'])}")
        return EXIT_OK
    dataset = wait_for_dataset(client, dataset["id"])
    if args.json:
        emit_json(dataset)
    else:
        render.print_validation(out, dataset)
    return EXIT_OK if dataset["status"] == "ready" else EXIT_FAILED


def wait_for_dataset(client: GristmillClient, dataset_id: str) -> dict[str, Any]:
    return wait_while(
        lambda: client.datasets.get(dataset_id), "validating", f"validating {dataset_id}"
    )


def list_datasets(client: GristmillClient, args: argparse.Namespace) -> int:
    items = take(client.datasets.list(), args.limit)
    if args.json:
        emit_list(items)
    else:
        out.print(render.datasets_table(items))
    return EXIT_OK


def show_dataset(client: GristmillClient, args: argparse.Namespace) -> int:
    dataset = client.datasets.get(args.id)
    if args.json:
        emit_json(dataset)
    else:
        out.print(render.details_table(dataset))
        if dataset["status"] == "failed":
            render.print_validation(out, dataset)
    return EXIT_OK


def delete_dataset(client: GristmillClient, args: argparse.Namespace) -> int:
    client.datasets.delete(args.id)
    if args.json:
        emit_json({"id": args.id, "object": "dataset", "deleted": True})
    else:
        out.print(f"deleted {args.id}")
    return EXIT_OK


def download_dataset(client: GristmillClient, args: argparse.Namespace) -> int:
    dataset = client.datasets.get(args.id)
    with render.transfer_progress(err) as bar:
        task = bar.add_task(f"download {args.id}", total=dataset["size_bytes"])
        path = client.datasets.download(
            args.id, args.dir, on_progress=lambda n: bar.advance(task, n)
        )
    return downloaded(args, path, [dataset["sha256"]])
