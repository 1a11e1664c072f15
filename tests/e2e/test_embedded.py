"""The embedded profile end to end: ``gristmill serve`` with no configuration at all (SQLite,
filesystem broker and store under ``./var``), as someone trying Gristmill on a laptop runs it."""

from __future__ import annotations

import contextlib
import re
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.e2e import procs
from tests.e2e.procs import Proc
from tests.e2e.stack import Api
from tests.e2e.stack import start_serve as start_server
from tests.timing import scaled, wait_for

pytestmark = pytest.mark.slow

KEY_PATTERN = re.compile(r"\bgm_[A-Za-z0-9_-]{20,}")


@dataclass
class Embedded:
    cwd: Path
    proc: Proc
    api: Api

    @property
    def key_file(self) -> Path:
        return self.cwd / "var" / "api-key"

    def printed_keys(self) -> list[str]:
        return KEY_PATTERN.findall(self.proc.log())


def start_serve(cwd: Path) -> Embedded:
    """``gristmill serve`` in ``cwd`` with no GRISTMILL_* variable; wait until the API is ready and
    its worker subprocess too."""
    proc, api = start_server(cwd, log_dir=cwd.parent / f"{cwd.name}-logs")
    return Embedded(cwd=cwd, proc=proc, api=api)


def stop_serve(embedded: Embedded) -> None:
    embedded.api.close()
    procs.stop_all([embedded.proc])


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    server = start_serve(tmp_path_factory.mktemp("embedded"))
    key = wait_for(server.printed_keys, timeout=10, what="a printed key", logs=[server.proc])[0]
    server.api.key = key
    yield server
    stop_serve(server)


def test_first_start_migrates_sqlite_and_keeps_the_printed_key_in_a_private_file(
    embedded: Embedded,
) -> None:
    """First ``serve`` in an empty folder → ``var/gristmill.db`` is migrated, one key is printed
    and the same key is saved in ``var/api-key`` readable by its owner only (0600)."""
    assert (embedded.cwd / "var" / "gristmill.db").is_file()
    assert embedded.printed_keys() == [embedded.api.key]
    assert embedded.key_file.read_text().strip() == embedded.api.key
    assert stat.S_IMODE(embedded.key_file.stat().st_mode) == 0o600
    response = embedded.api.client.get("/v1/jobs", headers=embedded.api.auth)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_load_only_local_assets(embedded: Embedded, page: str) -> None:
    """``/docs`` and ``/redoc`` → HTML that references no internet URL, only ``/docs-assets/…``,
    and every such asset is served (so the docs work offline)."""
    response = embedded.api.client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.search(r"https?://", html), html
    assets = set(re.findall(r"""(?:src|href)=["'](/docs-assets/[^"']+)["']""", html))
    assert any(asset.endswith(".js") for asset in assets), html

    for asset in assets:
        served = embedded.api.client.get(asset)
        assert served.status_code == 200, asset
        minimum = 100_000 if asset.endswith(".js") else 1_000
        assert len(served.content) > minimum, (asset, len(served.content))


def test_probe_job_succeeds_with_the_printed_key(embedded: Embedded) -> None:
    """A probe submitted with the printed key → the embedded worker (filesystem broker, SQLite)
    runs it to ``succeeded`` with metrics."""
    job_id = embedded.api.submit(duration_s=1)["id"]

    job = embedded.api.wait_status(job_id, "succeeded", timeout=60, logs=[embedded.proc])

    assert job["attempt"] == 1
    assert embedded.api.metrics(job_id)


def test_restart_reuses_the_existing_key(tmp_path: Path) -> None:
    """Stop ``serve`` and start it again in the same folder → no new key is made or printed, the
    key file is unchanged and the first key still authenticates."""
    first = start_serve(tmp_path)
    key = wait_for(first.printed_keys, timeout=10, what="a printed key", logs=[first.proc])[0]
    stop_serve(first)

    second = start_serve(tmp_path)
    try:
        assert second.printed_keys() == []
        assert second.key_file.read_text().strip() == key
        response = second.api.client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
    finally:
        stop_serve(second)


def test_sigterm_stops_serve_and_its_worker_leaving_no_process(tmp_path: Path) -> None:
    """SIGTERM to ``serve`` → it exits, and so do its worker subprocess (started in a session of
    its own) and that worker's pool process: no orphan is left."""
    server = start_serve(tmp_path)
    family = [server.proc.popen.pid] + [p.pid for p in server.proc.descendants()]
    assert len(family) >= 3, family  # serve, worker main, worker pool process
    family_procs = [psutil.Process(pid) for pid in family]

    server.proc.popen.send_signal(signal.SIGTERM)
    try:
        server.proc.popen.wait(timeout=scaled(30))
        _, alive = psutil.wait_procs(family_procs, timeout=scaled(20))
        assert [_describe(p) for p in alive if not _is_zombie(p)] == []
    finally:
        stop_serve(server)
        for process in family_procs:  # orphans are no longer anyone's descendants
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def _is_zombie(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {process.status()} {' '.join(process.cmdline())}"
    except psutil.NoSuchProcess:
        return f"{process.pid} gone"


@pytest.mark.timeout(120)
def test_make_run_first_screen_is_clean(tmp_path: Path) -> None:
    """URL, key and a command to try: no alembic INFO lines, no Celery banner or root lecture."""
    proc, api = start_server(
        tmp_path, log_dir=tmp_path / "logs", data_dir=tmp_path, reaper_interval_seconds=0
    )
    # start_serve waited for the worker's "… ready.", which Celery logs after any banner.
    api.close()
    procs.stop_all([proc])
    output = proc.log()
    key = (tmp_path / "api-key").read_text().strip()
    assert api.base_url in output
    assert key in output
    assert "curl" in output
    for noise in ("INFO alembic", "superuser", "-------------- [queues]", "Started server"):
        assert noise not in output, output
