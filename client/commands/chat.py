"""``gristmill chat MODEL`` and ``gristmill complete MODEL PROMPT``: talk to a model from the
terminal, the answer printed token by token as the API streams it.

The chat keeps the conversation (the API is stateless: every turn sends the whole history) and
takes a few commands at its prompt: ``/system TEXT`` sets the system message, ``/reset`` forgets
the conversation, ``/exit`` (or Ctrl-D) quits. Ctrl-C while an answer streams stops that answer
only: the connection closes, the server stops generating at its next token, and what was shown
stays in the history, so the model sees what the user saw.
"""

from __future__ import annotations

import argparse
import sys

from rich.markup import escape

from client.commands.common import EXIT_OK, err, out
from client.http import ApiError, GristmillClient
from client.resources.completions import Completions, Message

PROMPT = "you> "
HELP = "/system TEXT sets the system message · /reset · /exit or Ctrl-D · Ctrl-C stops an answer"


def add_command(parser: argparse.ArgumentParser, name: str) -> None:
    """The arguments of ``chat`` or ``complete`` (commands of their own, without actions)."""
    parser.add_argument("model", help="a model id (a GGUF, a fine-tune's ft:… name, …)")
    if name == "complete":
        parser.add_argument("prompt", help="the text to continue")
        parser.set_defaults(handler=complete)
    else:
        parser.add_argument("--system", help="a system message to start with")
        parser.set_defaults(handler=chat)
    parser.add_argument("--max-tokens", type=int, help="the longest answer, in tokens")
    parser.add_argument("--temperature", type=float, help="0 is greedy; the server's default 1")


def shown(piece: str) -> str:
    """Model output as the terminal gets it: control characters (escape sequences, carriage
    returns, backspaces) become U+FFFD, so an answer can only add text, never rewrite the
    screen or the terminal's state. Newlines and tabs stay."""
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in piece)


def _params(args: argparse.Namespace) -> dict[str, object]:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature}


def complete(client: GristmillClient, args: argparse.Namespace) -> int:
    """Print the continuation of the prompt as it streams; Ctrl-C stops it (exit 130). A pipe
    gets the text as the model made it, a terminal what :func:`shown` lets through."""
    terminal = sys.stdout.isatty()
    for piece in Completions(client).complete(args.model, args.prompt, **_params(args)):
        sys.stdout.write(shown(piece) if terminal else piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return EXIT_OK


def chat(client: GristmillClient, args: argparse.Namespace) -> int:
    """A conversation at the terminal until /exit or Ctrl-D."""
    completions = Completions(client)
    system: str | None = args.system
    history: list[Message] = []
    out.print(f"[bold]{args.model}[/] [dim]— {HELP}[/]")
    while True:
        try:
            line = input(PROMPT).strip()
        except EOFError:  # Ctrl-D
            sys.stdout.write("\n")
            return EXIT_OK
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as a shell does
            sys.stdout.write("\n")
            continue
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return EXIT_OK
        if line == "/reset":
            history.clear()
            out.print("[dim]conversation reset[/]")
            continue
        if line == "/system" or line.startswith("/system "):
            system = line[len("/system") :].strip() or None
            out.print(f"[dim]system message {'set' if system else 'cleared'}[/]")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        try:
            answer = _answer(completions, args, messages)
        except ApiError as exc:  # this turn failed (a prompt too long, …): the chat goes on
            err.print(f"[red]error:[/] {escape(exc.message)} [dim]({exc.status} {exc.code})[/]")
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})


def _answer(completions: Completions, args: argparse.Namespace, messages: list[Message]) -> str:
    """Stream one answer to the terminal; Ctrl-C ends it early. Returns what was shown."""
    pieces: list[str] = []
    try:
        for piece in completions.chat(args.model, messages, **_params(args)):
            pieces.append(piece)
            sys.stdout.write(shown(piece))
            sys.stdout.flush()
        sys.stdout.write("\n")
    except KeyboardInterrupt:  # leaving the loop closed the stream: the server stops
        sys.stdout.write("\n")
        out.print("[dim]stopped[/]")
    return "".join(pieces)
