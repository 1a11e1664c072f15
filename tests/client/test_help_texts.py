"""Every ``gristmill ... --help`` reads as plain text: no reStructuredText or Markdown markup;
every command of the README's CLI tour parses as written."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from app.cli import main
from client.commands.jobs import parse_params

CHOICES = re.compile(r"^\s*\{([a-z_,-]+)\}", re.MULTILINE)


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def every_help(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """``gristmill --help`` and the help of every subcommand below it, by command line."""
    found: dict[str, str] = {}
    todo: list[list[str]] = [[]]
    while todo:
        argv = todo.pop()
        text = help_text(argv, capsys)
        found[" ".join(["gristmill", *argv])] = text
        for choices in CHOICES.findall(text):
            todo += [[*argv, name] for name in choices.split(",")]
    return found


def test_every_help_text_is_plain(capsys: pytest.CaptureFixture[str]) -> None:
    helps = every_help(capsys)
    assert {"gristmill", "gristmill serve", "gristmill worker", "gristmill jobs"} <= set(helps)
    assert len(helps) > 20  # the subcommands' own subcommands were reached too
    marked = {
        command: line.strip()
        for command, text in helps.items()
        for line in text.splitlines()
        if "`" in line or "**" in line or re.search(r":[a-z]+:`", line)
    }
    assert not marked, marked


def readme_tour() -> list[list[str]]:
    """Every ``gristmill`` command of the README's CLI tour, as argv (shell variables become
    made-up ids; a command ends at ``)``, ``;`` or a comment)."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text.split("## Quickstart (CLI)")[1].split("\n## ")[0]
    block = section.split("```sh\n")[1].split("```")[0].replace("\\\n", " ")
    commands = []
    for line in block.splitlines():
        code = line.split("  #")[0]
        for found in re.finditer(r"gristmill ([^;)]*)", code):
            commands.append(shlex.split(re.sub(r"\$\w+", "id_1", found.group(1))))
    return commands


def test_every_command_of_the_readme_cli_tour_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tour is copied into a shell as written: each command exists, takes those options and
    its ``-p`` parameters read; only the server's answers are left out."""
    parsed: list[argparse.Namespace] = []
    monkeypatch.setattr("client.commands.main", parsed.append)
    tour = readme_tour()

    for argv in tour:
        main(argv)
    for args in parsed:
        if args.command == "jobs" and args.action == "submit":
            parse_params(args.param)

    actions = {f"{args.command} {getattr(args, 'action', '')}".strip() for args in parsed}
    assert len(parsed) == len(tour) > 25
    assert {
        "datasets upload",
        "datasets delete",
        "jobs submit",
        "jobs pause",
        "jobs resume",
        "models upload",
        "models delete",
        "comparisons create",
        "comparisons invite",
        "comparisons results",
        "comparisons chart",
        "comparisons export",
        "complete",
        "chat",
    } <= actions
    kinds = {args.kind for args in parsed if args.command == "jobs" and args.action == "submit"}
    assert kinds == {"prepare", "pretrain", "finetune", "quantize", "evaluate"}
