"""The client commands, one module per group of actions (``jobs``, ``datasets``, ``artifacts``
for models and tokenizers). Each declares its actions for the parser (``add_actions``, called by
``client.parser``) and handles them: it reads its arguments, calls the API through
``GristmillClient`` and prints for people (rich) or, with ``--json``, for scripts.

Exit codes: 0 done, 1 the thing failed (a failed job or dataset, an API error, a checksum
mismatch, a ``--field`` the answer does not have), 2 unusable arguments, 130 watching
interrupted.
"""

from __future__ import annotations

import argparse
import sys

import httpx
from rich.markup import escape

from client.commands import common
from client.commands.common import EXIT_FAILED, EXIT_INTERRUPTED, Handler, err
from client.config import resolve_config
from client.http import ApiError, GristmillClient
from client.transfers import ChecksumMismatch


def run(args: argparse.Namespace) -> int:
    """Call the action's handler with a client for the configured server (``--field`` implies
    ``--json``); turn API and network errors into a message."""
    handler: Handler = args.handler
    common.selected = args.field
    args.json = args.json or args.field is not None
    config = resolve_config(url=args.url, key=args.key)
    client = GristmillClient(
        config.url,
        config.api_key,
        on_retry=lambda why, s: err.print(f"[dim]{escape(why)}; retrying in {s:.1f}s[/]"),
    )
    try:
        with client:
            return handler(client, args)
    except ApiError as exc:
        hint = ""
        if exc.status == 401:
            hint = f" (key from {config.key_source}; set GRISTMILL_API_KEY or pass --key)"
        err.print(f"[red]error:[/] {escape(exc.message)} [dim]({exc.status} {exc.code}){hint}[/]")
    except httpx.TransportError as exc:
        err.print(
            f"[red]error:[/] cannot reach {config.url}: {escape(str(exc) or type(exc).__name__)}"
        )
    except common.MissingField as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
    except ChecksumMismatch as exc:
        err.print(f"[red]checksum mismatch:[/] {escape(str(exc))}; nothing was kept")
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def main(args: argparse.Namespace) -> None:
    sys.exit(run(args))
