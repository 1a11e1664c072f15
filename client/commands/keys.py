"""``gristmill keys``: list, create, rotate and revoke the tenant's API keys over HTTP.

A new secret goes to stdout alone (``KEY=$(gristmill keys create)``), what it is to stderr; it
is shown this once. ``create --tenant NAME`` is the operator's command instead: run on the
server's machine, it makes an admin key straight in the database, the way a new tenant gets its
first key (``app.cli`` handles it before this group loads, so it needs no client extra).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from client.commands.common import EXIT_OK, emit_json, err, out
from client.http import GristmillClient
from client.render import TABLE_TIME, short_time

if TYPE_CHECKING:
    from client.parser import Leaf, SubParsers


def add_actions(actions: SubParsers, leaf: Leaf, group: str) -> None:
    lister = leaf(actions, "list", "list the tenant's keys (prefixes only), newest first")
    lister.set_defaults(handler=list_keys)

    create = leaf(actions, "create", "create a key and print its secret once (admin keys only)")
    create.add_argument("--label", help="what the key is for (ci, a person's laptop)")
    create.add_argument(
        "--expires-in-days", type=int, metavar="DAYS", help="the key stops working after DAYS"
    )
    create.add_argument("--admin", action="store_true", help="the new key may manage keys itself")
    create.add_argument(
        "--tenant",
        metavar="NAME",
        help="operator, on the server's machine: make an admin key for tenant NAME (made if "
        "new) directly in the database, without the API",
    )
    create.set_defaults(handler=create_key)

    revoke = leaf(actions, "revoke", "revoke a key (not the tenant's last admin key)")
    revoke.add_argument("id")
    revoke.set_defaults(handler=revoke_key)

    rotate = leaf(actions, "rotate", "replace a key's secret: a new key, the old one revoked")
    rotate.add_argument("id")
    rotate.add_argument(
        "--grace-seconds",
        type=int,
        default=0,
        metavar="S",
        help="the old secret keeps working for S seconds (default 0: it stops at once)",
    )
    rotate.set_defaults(handler=rotate_key)


def list_keys(client: GristmillClient, args: argparse.Namespace) -> int:
    keys = list(client.keys.list())
    if args.json:
        emit_json({"object": "list", "data": keys})
    else:
        out.print(keys_table(keys))
    return EXIT_OK


def create_key(client: GristmillClient, args: argparse.Namespace) -> int:
    made = client.keys.create(
        label=args.label, expires_in_days=args.expires_in_days, admin=args.admin
    )
    return _secret(args, made, "created")


def rotate_key(client: GristmillClient, args: argparse.Namespace) -> int:
    made = client.keys.rotate(args.id, grace_seconds=args.grace_seconds)
    if args.grace_seconds:
        err.print(f"{escape(args.id)} keeps working for {args.grace_seconds} s more")
    else:
        err.print(f"{escape(args.id)} is revoked")
    return _secret(args, made, "made by rotation")


def revoke_key(client: GristmillClient, args: argparse.Namespace) -> int:
    key = client.keys.revoke(args.id)
    if args.json:
        emit_json(key)
    else:
        out.print(f"[green]✔[/] revoked {escape(key['id'])} ({escape(_label(key))})")
    return EXIT_OK


def _secret(args: argparse.Namespace, made: Mapping[str, Any], what: str) -> int:
    if args.json:
        emit_json(made)
        return EXIT_OK
    admin = ", admin" if made["admin"] else ""
    expires = f", expires {short_time(made['expires_at'])}" if made["expires_at"] else ""
    err.print(
        f"[green]✔[/] {what} {escape(made['id'])} ({escape(_label(made))}{admin}{expires}); "
        "its secret, shown this once:"
    )
    print(made["key"])  # alone on stdout, for KEY=$(gristmill keys create …)
    return EXIT_OK


def _label(key: Mapping[str, Any]) -> str:
    return str(key["label"]) if key.get("label") else "no label"


def _state(key: Mapping[str, Any], now: datetime) -> str:
    """Revoked, expired, working until a rotation's grace period ends, or active."""
    revoked, expires = (
        key[k] and datetime.fromisoformat(key[k]) for k in ("revoked_at", "expires_at")
    )
    if revoked and revoked <= now:
        return "[magenta]revoked[/]"
    if expires and expires <= now:
        return "[magenta]expired[/]"
    if revoked:
        return f"[yellow]until {short_time(key['revoked_at'], TABLE_TIME)}[/]"
    return "[green]active[/]"


def keys_table(keys: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("id", "label", "prefix", "admin", "state", "created", "expires", "last used"):
        table.add_column(name, no_wrap=name in ("id", "prefix"))
    now = datetime.now(UTC)
    for key in keys:
        table.add_row(
            key["id"],
            escape(key["label"] or "-"),
            key["prefix"] + "…",
            "admin" if key["admin"] else "",
            _state(key, now),
            short_time(key["created_at"], TABLE_TIME),
            short_time(key["expires_at"], TABLE_TIME),
            short_time(key["last_used_at"], TABLE_TIME),
        )
    return table
