"""The client's command groups (``datasets``, ``jobs``, ``models``, ``tokenizers``,
``comparisons``, ``keys``) and single commands (``chat``, ``complete``) in ``gristmill``'s parser.

Only argparse here. A group's actions are declared by its own module, ``client.commands.<module>``
(which loads httpx and rich), and that module is imported only when the command line names its
group, the way pip and git load a subcommand: the server's commands build their parser without
it, so they start quickly and work where the ``client`` extra is not installed.

A new group is a module in ``client/commands/`` with an ``add_actions`` function (see
``client/commands/jobs.py``) and one entry in ``GROUPS``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # argparse's class is not subscriptable at run time
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
    Leaf = Callable[[SubParsers, str, str], argparse.ArgumentParser]


@dataclass(frozen=True)
class Group:
    help: str
    """One line for ``gristmill --help``."""
    module: str
    """``client.commands.<module>``, whose ``add_actions(actions, leaf, group)`` adds the group's
    actions, each with its handler (``set_defaults(handler=…)``)."""
    command: bool = False
    """A command without actions (``gristmill chat MODEL``): ``add_command(parser, name)`` adds
    its arguments and handler to the command's own parser."""


GROUPS: dict[str, Group] = {
    "datasets": Group("upload, list, show, download and delete datasets", "datasets"),
    "jobs": Group("submit, list, watch, plot, pause, resume and cancel jobs", "jobs"),
    "models": Group("upload, list, show, download and delete models", "artifacts"),
    "tokenizers": Group("list, show and download tokenizers", "artifacts"),
    "keys": Group("list, create, rotate and revoke API keys", "keys"),
    "comparisons": Group(
        "compare models blind: create, invite raters, judge, results", "comparisons"
    ),
    "secrets": Group("store, list and delete endpoint credentials for judges", "secrets"),
    "chat": Group("chat with a model in the terminal, answers streamed", "chat", command=True),
    "complete": Group("stream a model's continuation of a prompt", "chat", command=True),
}
CLIENT_COMMANDS = tuple(GROUPS)


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument("--url", help="server URL (default $GRISTMILL_URL or 127.0.0.1:8000)")
    group.add_argument(
        "--key", help="API key (default $GRISTMILL_API_KEY, or a local server's key file)"
    )
    group.add_argument("--json", action="store_true", help="print JSON for scripts")
    group.add_argument(
        "--field",
        metavar="PATH",
        help="print only this field of the JSON answer, for shell variables "
        "(id, result.model_id, result.model_ids.1); progress goes to stderr",
    )
    return common


def add_client_parsers(sub: SubParsers, argv: Sequence[str]) -> None:
    """Add every group to ``gristmill``'s subcommands, and the actions of the group that
    ``argv`` (the command line after ``gristmill``) names."""
    common = _common()

    def leaf(actions: SubParsers, name: str, help_text: str) -> argparse.ArgumentParser:
        """An action: its help, and the connection and output options every action takes."""
        return actions.add_parser(name, help=help_text, description=help_text, parents=[common])

    for name, group in GROUPS.items():
        parents = [common] if group.command else []
        parser = sub.add_parser(name, help=group.help, parents=parents)
        if list(argv[:1]) == [name]:
            module = importlib.import_module(f"client.commands.{group.module}")
            if group.command:
                module.add_command(parser, name)
            else:
                module.add_actions(parser.add_subparsers(dest="action", required=True), leaf, name)
