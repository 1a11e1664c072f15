"""What every command group uses: the consoles, exit codes, JSON output for scripts, the
handler signature, waiting for a status to change, and the read actions (list, show, download)
every stored kind has."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from client.http import GristmillClient

if TYPE_CHECKING:
    from client.parser import Leaf, SubParsers

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

Handler = Callable[[GristmillClient, argparse.Namespace], int]
"""An action: the client and the parsed arguments in, an exit code out."""


def _console(stream: Any) -> Console:
    """soft_wrap: long lines (ids, error reasons) stay whole for copying and grepping; a pipe
    or a log gets a wide page instead of rich's 80 columns."""
    width = None if stream.isatty() else 160
    return Console(file=stream, highlight=False, soft_wrap=True, width=width)


out = _console(sys.stdout)
err = _console(sys.stderr)


class MissingField(Exception):
    """``--field`` named something the answer does not hold."""


selected: str | None = None
"""The ``--field`` of this command line, if any (set once by ``client.commands.run``)."""


def pick(value: Any, path: str) -> Any:
    """``result.model_ids.1`` of a JSON value: keys of objects, indexes of lists."""
    for key in path.split("."):
        try:
            value = value[int(key)] if isinstance(value, list) else value[key]
        except (KeyError, IndexError, ValueError, TypeError):
            raise MissingField(f"the answer has no field {path!r} (at {key!r})") from None
    return value


def emit_json(value: Any) -> None:
    """JSON for scripts; with ``--field``, that one field (a string bare, for ``$(…)``)."""
    if selected is not None:
        value = pick(value, selected)
        if not isinstance(value, dict | list):
            print(value if isinstance(value, str) else json.dumps(value))
            return
    print(json.dumps(value, indent=2))


def emit_list(items: list[dict[str, Any]]) -> None:
    """A list for scripts in the API's own shape, whatever the command lists."""
    emit_json({"object": "list", "data": items})


def wait_while(
    fetch: Callable[[], dict[str, Any]],
    status: str,
    what: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll ``fetch`` until what it returns leaves ``status`` (a spinner on stderr meanwhile):
    an upload being validated, a comparison being generated."""
    with err.status(f"{what}…"):
        while True:
            item = fetch()
            if item["status"] != status:
                return item
            sleep(0.5)


def take(items: Iterator[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` items (all of them when ``limit`` is 0 or less)."""
    return list(items if limit <= 0 else itertools.islice(items, limit))


def downloaded(args: argparse.Namespace, path: Path, checksums: list[str]) -> int:
    """Say where a verified download landed."""
    if args.json:
        emit_json({"id": args.id, "path": str(path), "verified_sha256": checksums})
    else:
        out.print(f"[green]✔[/] {path} (sha256 verified, {len(checksums)} file(s))")
    return EXIT_OK


def add_read_actions(
    actions: SubParsers,
    leaf: Leaf,
    kind: str,
    *,
    list_handler: Handler,
    show_handler: Handler,
    download_handler: Handler,
) -> None:
    """``list``, ``show`` and ``download``, the actions every stored kind of thing has."""
    lister = leaf(actions, "list", f"list {kind}s, newest first")
    lister.add_argument("--limit", type=int, default=20, help="how many (0: all)")
    lister.set_defaults(handler=list_handler)
    show = leaf(actions, "show", f"show a {kind}")
    show.add_argument("id")
    show.set_defaults(handler=show_handler)
    download = leaf(actions, "download", f"download a {kind}, verifying sha256 checksums")
    download.add_argument("id")
    download.add_argument("dir", nargs="?", type=Path, default=Path("."))
    download.set_defaults(handler=download_handler)
