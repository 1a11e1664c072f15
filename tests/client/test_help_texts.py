"""Every ``gristmill ... --help`` reads as plain text: no reStructuredText or Markdown markup."""

from __future__ import annotations

import re

import pytest

from app.cli import main

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
