"""``gristmill keys`` against a live embedded server, run as a person runs it: list, create,
rotate and revoke with the server's admin key; a plain key refused; the last admin key kept; and
the operator's ``keys create --tenant`` on a server installed without the client extra."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.client.conftest import Server
from tests.timing import scaled

pytestmark = pytest.mark.slow


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def refused(done: subprocess.CompletedProcess[str], status: int) -> str:
    assert done.returncode == 1, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert f"({status} " in done.stderr, done.stderr
    return done.stderr


def listed(server: Server, *args: str) -> list[dict[str, Any]]:
    page = json.loads(ok(server.cli("keys", "list", "--json", *args)))
    assert page["object"] == "list"
    return list(page["data"])


def test_keys_are_listed_created_rotated_and_revoked_from_the_command_line(
    server: Server,
) -> None:
    admin_id = next(k["id"] for k in listed(server) if k["admin"])

    made = server.cli("keys", "create", "--label", "ci", "--expires-in-days", "7")
    secret = ok(made).strip()  # the secret alone on stdout; what it is on stderr
    assert secret.startswith("gm_") and "shown this once" in made.stderr
    ci = next(k for k in listed(server) if k["label"] == "ci")
    assert (ci["admin"], ci["prefix"], "key" in ci) == (False, secret[:10], False)
    assert ci["expires_at"] is not None

    refused(server.cli("keys", "create", "--label", "nope", "--key", secret), 403)
    refused(server.cli("keys", "revoke", admin_id, "--key", secret), 403)

    rotated = json.loads(ok(server.cli("keys", "rotate", ci["id"], "--json")))
    assert rotated["label"] == "ci" and rotated["key"] != secret
    refused(server.cli("keys", "list", "--key", secret), 401)
    assert listed(server, "--key", rotated["key"])

    ok(server.cli("keys", "revoke", rotated["id"]))
    refused(server.cli("keys", "list", "--key", rotated["key"]), 401)
    states = {k["id"]: k["revoked_at"] for k in listed(server)}
    assert states[ci["id"]] and states[rotated["id"]] and states[admin_id] is None

    last = refused(server.cli("keys", "revoke", admin_id), 409)
    assert "last admin key" in last


def test_the_operator_makes_a_tenants_first_key_without_the_client_extra(server: Server) -> None:
    # rich (the client extra) cannot be imported: the server-side command must not need it.
    code = (
        "import sys; sys.modules['rich'] = None; from app.cli import main; "
        "main(['keys', 'create', '--tenant', 'initech', '--label', 'first'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    key = ok(done).strip()
    (only,) = listed(server, "--key", key)
    assert (only["label"], only["admin"]) == ("first", True)
