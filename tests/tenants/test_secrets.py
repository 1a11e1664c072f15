"""Tenant secrets at rest: Fernet ciphertext under the deployment's key, which is a Fernet key,
a passphrase, or (unset) a key file made once in the data directory; another key cannot read
them, and what a worker gets back never prints its key."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy.orm import Session, sessionmaker

from app.errors import GristmillError, NotFound
from app.settings import Settings
from app.tenants import secrets

KEY = "sk-at-rest-0123456789abcdefghij"


def _settings(tmp_path: Path, key: str | None) -> Settings:
    return Settings(data_dir=tmp_path, secret_key=key)


def test_each_form_of_the_deployment_key_encrypts_and_reads_back(tmp_path: Path) -> None:
    fernet_key = Fernet.generate_key().decode()
    for key in (fernet_key, "a passphrase of the operator's", None):
        settings = _settings(tmp_path, key)
        token = secrets.cipher(settings).encrypt(KEY.encode())
        assert KEY.encode() not in token
        assert secrets.cipher(settings).decrypt(token) == KEY.encode()
    key_file = tmp_path / secrets.KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    made = key_file.read_bytes()
    secrets.cipher(_settings(tmp_path, None))
    assert key_file.read_bytes() == made  # made once, then read


def test_a_secret_is_revealed_only_with_the_key_that_stored_it(
    factory: sessionmaker[Session], tenant: str, tmp_path: Path
) -> None:
    first, other = _settings(tmp_path, "first key"), _settings(tmp_path, "another key")
    with factory() as session:
        row = secrets.create_secret(
            session=session, settings=first, tenant_id=tenant, name="grader",
            base_url="https://judge.example/v1", api_key=KEY,
        )  # fmt: skip
        assert row.hint == "…ghij" and KEY.encode() not in row.ciphertext
        endpoint = secrets.reveal(session=session, settings=first, tenant_id=tenant, name="grader")
        assert (endpoint.base_url, endpoint.api_key) == ("https://judge.example/v1", KEY)
        assert KEY not in repr(endpoint) and KEY not in str(endpoint)
        with pytest.raises(GristmillError) as refused:
            secrets.reveal(session=session, settings=other, tenant_id=tenant, name="grader")
        assert refused.value.code == "secret.undecryptable"
        with pytest.raises(NotFound):
            secrets.reveal(session=session, settings=first, tenant_id="ten_other", name="grader")
