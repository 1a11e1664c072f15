"""Where the CLI finds its server and key: flags, then ``GRISTMILL_URL``/``GRISTMILL_API_KEY``,
then — for a server on this machine — the key file the embedded server wrote on first start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_FILE = "api-key"
"""The embedded server's key file, inside its data directory (``gristmill serve`` writes it)."""
DEFAULT_DATA_DIR = "var"
"""The server's default data directory (``GRISTMILL_DATA_DIR``), relative to where it runs.
Carried here rather than read from the server's settings, so the client imports nothing of the
server; ``tests/client/test_config_and_params.py`` keeps the two equal."""
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


@dataclass(frozen=True)
class ClientConfig:
    url: str
    api_key: str | None
    key_source: str
    """Where the key came from, for error messages: ``--key``, an env var, a file, or none."""


def is_local(url: str) -> bool:
    return (urlsplit(url).hostname or "") in LOCAL_HOSTS


def resolve_config(
    *, url: str | None, key: str | None, environ: Mapping[str, str] = os.environ
) -> ClientConfig:
    """Flags win over the environment; a local URL without a key reads the embedded key file
    (``$GRISTMILL_DATA_DIR/api-key``, default ``var/api-key``, as ``gristmill serve`` uses)."""
    resolved_url = (url or environ.get("GRISTMILL_URL") or DEFAULT_URL).rstrip("/")
    if key:
        return ClientConfig(resolved_url, key, "--key")
    if environ.get("GRISTMILL_API_KEY"):
        return ClientConfig(resolved_url, environ["GRISTMILL_API_KEY"], "GRISTMILL_API_KEY")
    if is_local(resolved_url):
        data_dir = environ.get("GRISTMILL_DATA_DIR") or DEFAULT_DATA_DIR
        key_file = Path(data_dir) / KEY_FILE
        try:
            text = key_file.read_text().strip()
        except OSError:
            text = ""
        if text:
            return ClientConfig(resolved_url, text, str(key_file))
    return ClientConfig(resolved_url, None, "none")
