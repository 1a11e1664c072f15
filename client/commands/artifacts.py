"""``gristmill models`` and ``gristmill tokenizers``: list, show and download (every file
checked against its sha256) the artifacts jobs made."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from client import render
from client.commands.common import (
    EXIT_OK,
    Handler,
    add_read_actions,
    downloaded,
    emit_json,
    err,
    out,
    take,
)
from client.http import GristmillClient
from client.resources.artifacts import Artifacts

if TYPE_CHECKING:
    from client.parser import Leaf, SubParsers


def add_actions(actions: SubParsers, leaf: Leaf, group: str) -> None:
    """``group`` is the collection: ``models`` or ``tokenizers``."""
    list_, show, download = handlers(group)
    kind = group.removesuffix("s")
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
            emit_json(items)
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
