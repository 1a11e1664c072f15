"""The client's subcommands (``datasets``, ``jobs``, ``models``, ``tokenizers``) for
``gristmill``'s parser. Only argparse here: building the parser must not import httpx or rich,
so the server's commands work where the ``client`` extra is not installed."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # argparse's class is not subscriptable at run time
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
    Leaf = Callable[[SubParsers, str, str], argparse.ArgumentParser]

CLIENT_COMMANDS = ("datasets", "jobs", "models", "tokenizers")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument("--url", help="server URL (default $GRISTMILL_URL or 127.0.0.1:8000)")
    group.add_argument(
        "--key", help="API key (default $GRISTMILL_API_KEY, or a local server's key file)"
    )
    group.add_argument("--json", action="store_true", help="print JSON for scripts")
    return common


def add_client_parsers(sub: SubParsers) -> None:
    common = _common()

    def leaf(group: SubParsers, name: str, help_text: str) -> argparse.ArgumentParser:
        return group.add_parser(name, help=help_text, description=help_text, parents=[common])

    datasets = sub.add_parser("datasets", help="upload, list, show and download datasets")
    ds = datasets.add_subparsers(dest="action", required=True)
    upload = leaf(ds, "upload", "upload a dataset file (streamed), optionally wait for validation")
    upload.add_argument("file", type=Path)
    upload.add_argument("--name", help="a name for it (default: the file name)")
    upload.add_argument("--split", choices=("file", "paragraph", "line"), help="plain text only")
    upload.add_argument("--column", help="the text column of a CSV or Parquet file")
    upload.add_argument(
        "--wait", action="store_true", help="wait for validation; exit 1 if it fails"
    )
    _add_read_commands(ds, leaf, "dataset")

    jobs = sub.add_parser("jobs", help="submit, list, watch, plot and cancel jobs")
    js = jobs.add_subparsers(dest="action", required=True)
    submit = leaf(js, "submit", "submit a job")
    submit.add_argument("kind", help="job type: probe, prepare, tokenizer, pretrain, …")
    submit.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter; VALUE is read as JSON when it parses; dotted keys nest (model.preset)",
    )
    submit.add_argument("--params-file", type=Path, help="a JSON object of parameters")
    submit.add_argument("--wait", action="store_true", help="watch it until it ends")
    lister = leaf(js, "list", "list jobs, newest first")
    lister.add_argument("--type", dest="job_type")
    lister.add_argument("--status")
    lister.add_argument("--limit", type=int, default=20, help="how many (0: all)")
    leaf(js, "show", "show a job").add_argument("id")
    leaf(js, "cancel", "cancel a job").add_argument("id")
    watch = leaf(js, "watch", "follow a job live until it ends (Ctrl-C stops watching only)")
    watch.add_argument("id")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    plot = leaf(js, "plot", "chart a job's metrics in the terminal, or into a PNG")
    plot.add_argument("id")
    plot.add_argument("--metric", default="train_loss,val_loss", help="comma-separated names")
    plot.add_argument("--out", type=Path, help="write a PNG here instead of drawing")

    for kind, plural in (("model", "models"), ("tokenizer", "tokenizers")):
        parser = sub.add_parser(plural, help=f"list, show and download {plural}")
        _add_read_commands(parser.add_subparsers(dest="action", required=True), leaf, kind)


def _add_read_commands(group: SubParsers, leaf: Leaf, kind: str) -> None:
    lister = leaf(group, "list", f"list {kind}s, newest first")
    lister.add_argument("--limit", type=int, default=20, help="how many (0: all)")
    leaf(group, "show", f"show a {kind}").add_argument("id")
    download = leaf(group, "download", f"download a {kind}, verifying sha256 checksums")
    download.add_argument("id")
    download.add_argument("dir", nargs="?", type=Path, default=Path("."))
