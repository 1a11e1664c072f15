"""``gristmill secrets``: store an OpenAI-compatible endpoint's URL and key (encrypted on the
server, never shown again), list them by name, delete them. A judge names one with
``gristmill comparisons judge ID --secret NAME --endpoint-model MODEL``.

The key is read from the environment variable ``--key-env`` names, else from stdin (typed
without echo on a terminal), never from the command line, where shell history would keep it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from client.commands.common import EXIT_OK, EXIT_USAGE, emit_json, err, out
from client.http import GristmillClient
from client.render import TABLE_TIME, short_time

if TYPE_CHECKING:
    from client.parser import Leaf, SubParsers


def add_actions(actions: SubParsers, leaf: Leaf, group: str) -> None:
    create = leaf(actions, "create", "store an endpoint's base URL and API key (admin keys only)")
    create.add_argument("name", help="how judge jobs name it")
    create.add_argument("--base-url", required=True, help="e.g. https://api.openai.com/v1")
    create.add_argument(
        "--key-env", metavar="VAR", help="read the API key from this environment variable"
    )
    create.set_defaults(handler=create_secret)
    lister = leaf(actions, "list", "list the tenant's secrets (names and masked hints only)")
    lister.set_defaults(handler=list_secrets)
    delete = leaf(actions, "delete", "delete a secret (admin keys only)")
    delete.add_argument("name")
    delete.set_defaults(handler=delete_secret)


def _read_key(args: argparse.Namespace) -> str:
    if args.key_env:
        return os.environ.get(args.key_env, "")
    if sys.stdin.isatty():
        return getpass.getpass("API key: ")
    return sys.stdin.readline().strip()


def create_secret(client: GristmillClient, args: argparse.Namespace) -> int:
    key = _read_key(args)
    if not key:
        err.print("[red]error:[/] no API key given (stdin, or --key-env VAR)")
        return EXIT_USAGE
    made = client.secrets.create(name=args.name, base_url=args.base_url, api_key=key)
    if args.json:
        emit_json(made)
    else:
        out.print(f"[green]✔[/] stored {escape(made['name'])} ({escape(made['hint'])})")
    return EXIT_OK


def list_secrets(client: GristmillClient, args: argparse.Namespace) -> int:
    rows = list(client.secrets.list())
    if args.json:
        emit_json({"object": "list", "data": rows})
        return EXIT_OK
    table = Table(box=None, header_style="bold")
    for name in ("name", "hint", "created"):
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(escape(row["name"]), escape(row["hint"]),
                      short_time(row["created_at"], TABLE_TIME))  # fmt: skip
    out.print(table)
    return EXIT_OK


def delete_secret(client: GristmillClient, args: argparse.Namespace) -> int:
    client.secrets.delete(args.name)
    if args.json:
        emit_json({"name": args.name, "deleted": True})
    else:
        out.print(f"[green]✔[/] deleted {escape(args.name)}")
    return EXIT_OK
