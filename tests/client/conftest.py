"""The CLI against a live embedded server: ``gristmill serve`` in a subprocess with a data
directory of its own, and ``gristmill`` client commands run as a person runs them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import procs
from tests.e2e.conftest import pytest_runtest_makereport  # noqa: F401  (process logs on failure)
from tests.e2e.procs import GRISTMILL, Proc
from tests.e2e.stack import Api, start_serve
from tests.timing import scaled

CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus" / "stories.jsonl"


@dataclass
class Server:
    """A running ``gristmill serve``: its URL, data directory and process."""

    url: str
    port: int
    data_dir: Path
    proc: Proc
    api: Api

    def env(self, **settings: Any) -> dict[str, str]:
        """The environment a person would have: the URL and the data directory (the CLI finds
        the key in the embedded server's key file), nothing else of Gristmill's."""
        return procs.clean_env(**{"url": self.url, "data_dir": str(self.data_dir), **settings})

    def cli(
        self, *args: str | Path, timeout: float = 120, **settings: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``gristmill ARGS`` to completion; its exit code is the caller's to check."""
        return subprocess.run(
            [GRISTMILL, *map(str, args)],
            env=self.env(**settings),
            capture_output=True,
            text=True,
            timeout=scaled(timeout),
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("client")
    data_dir = root / "data"
    proc, api = start_serve(root, log_dir=root / "logs", data_dir=str(data_dir))
    try:
        api.key = (data_dir / "api-key").read_text().strip()
        port = int(api.base_url.rsplit(":", 1)[1])
        yield Server(url=api.base_url, port=port, data_dir=data_dir, proc=proc, api=api)
    finally:
        api.close()
        procs.stop_all([proc])
