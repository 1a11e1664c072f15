"""``gristmill`` client commands against a live embedded server, run as subprocesses the way a
person runs them: upload and validation, a short pretrain watched to the end, plots, verified
downloads, and a watch that outlives a dropped connection."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.client.conftest import CORPUS, Server
from tests.e2e.procs import GRISTMILL, TcpProxy
from tests.serving import free_port
from tests.timing import scaled, wait_for

pytestmark = pytest.mark.slow

PRETRAIN = [
    "model.preset=tiny",
    "tokenizer.vocab_size=300",
    "max_steps=20",
    "warmup_steps=2",
    "global_batch_tokens=256",
    "micro_batch_size=2",
    "log_interval=2",
    "eval_interval=10",
    "eval_batches=1",
    "checkpoint_interval=10",
    "sample_tokens=8",
]


def pretrain_args(dataset_id: str) -> list[str]:
    args = ["jobs", "submit", "pretrain", "--param", f"dataset_id={dataset_id}"]
    for pair in PRETRAIN:
        args += ["--param", pair]
    return args


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def submit(server: Server, dataset_id: str) -> str:
    return str(json.loads(ok(server.cli(*pretrain_args(dataset_id), "--json")))["id"])


def submit_probe(server: Server, *, duration_s: float) -> str:
    args = ["jobs", "submit", "probe", "--param", f"duration_s={duration_s}", "--json"]
    return str(json.loads(ok(server.cli(*args)))["id"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "stories.jsonl"
    path.write_bytes(b"".join(CORPUS.read_bytes().splitlines(keepends=True)[:300]))
    return path


@pytest.fixture(scope="module")
def dataset_id(server: Server, corpus: Path) -> str:
    dataset = json.loads(ok(server.cli("datasets", "upload", corpus, "--wait", "--json")))
    assert dataset["status"] == "ready", dataset
    return str(dataset["id"])


@pytest.fixture(scope="module")
def watched(server: Server, dataset_id: str) -> tuple[str, str]:
    """A short pretrain submitted and watched to its end: (job id, what ``watch`` printed)."""
    job_id = submit(server, dataset_id)
    return job_id, ok(server.cli("jobs", "watch", job_id, timeout=240))


def test_upload_wait_shows_validation_and_a_bad_file_exits_nonzero(
    server: Server, corpus: Path, tmp_path: Path
) -> None:
    """A good file → exit 0 and 'ready' with its record count; a file with a broken line, an
    array and an object without text → exit 1 and each bad line's number and reason."""
    good = server.cli("datasets", "upload", corpus, "--name", "stories", "--wait")
    assert "ready: jsonl (text), 300 records" in ok(good)
    assert "upload stories.jsonl" in good.stderr  # the transfer bar: bytes, rate, ETA

    lines = corpus.read_text().splitlines()[:5]
    lines[1] = '{"text": broken'
    lines[3] = "[1, 2]"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines, '{"title": "no text"}']) + "\n")

    failed = server.cli("datasets", "upload", bad, "--wait")
    scripted = server.cli("datasets", "upload", bad, "--wait", "--json")

    assert failed.returncode == 1, failed
    assert "failed validation" in failed.stdout
    assert "line 2: invalid JSON" in failed.stdout
    assert "line 4: expected a JSON object" in failed.stdout
    assert "line 6: missing field" in failed.stdout
    assert scripted.returncode == 1
    body = json.loads(scripted.stdout)
    assert body["status"] == "failed" and [e["line"] for e in body["errors"]] == [2, 4, 6]


def test_watch_follows_a_short_pretrain_to_its_end(
    server: Server, watched: tuple[str, str]
) -> None:
    """``jobs watch`` → progress lines with steps and loss, the samples and checkpoints as they
    happen, and a final line naming the model; ``jobs list`` and ``show`` agree."""
    job_id, printed = watched

    assert f"Watching {job_id} (pretrain)" in printed
    assert "samples at step 10" in printed and "checkpoint saved at step 20" in printed
    last_progress = next(ln for ln in reversed(printed.splitlines()) if " step " in ln)
    assert last_progress.startswith("succeeded step 20/20 · ETA 0:00 · "), last_progress
    assert "tok/s" in last_progress and "loss " in last_progress and "(val " in last_progress
    final = printed.strip().splitlines()[-1]
    assert final.startswith(f"✔ {job_id} (pretrain) succeeded"), final
    model_id = server.api.job(job_id)["result"]["model_id"]
    assert f"model {model_id}" in final

    listed = json.loads(ok(server.cli("jobs", "list", "--type", "pretrain", "--json")))
    assert listed["object"] == "list" and job_id in [job["id"] for job in listed["data"]]
    assert job_id in ok(server.cli("jobs", "list"))  # ids stay whole in the table
    again = ok(server.cli("jobs", "watch", job_id))  # a finished job: just the final line
    assert again.strip().splitlines()[-1] == final


def test_plot_draws_in_the_terminal_and_writes_a_png_with_the_curve(
    server: Server, watched: tuple[str, str], tmp_path: Path
) -> None:
    job_id, _ = watched
    png = tmp_path / "loss.png"

    ok(server.cli("jobs", "plot", job_id, "--metric", "train_loss,val_loss", "--out", png))
    chart = ok(server.cli("jobs", "plot", job_id, "--metric", "train_loss"))
    missing = server.cli("jobs", "plot", job_id, "--metric", "no_such_metric")

    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (800, 450)
        pixels = list(image.convert("RGB").getdata())
    blue = sum(1 for r, g, b in pixels if abs(r - 31) < 30 and abs(g - 119) < 30 and b > 150)
    orange = sum(1 for r, g, b in pixels if r > 220 and 100 < g < 160 and b < 60)
    assert blue > 300, blue  # train_loss: a line across the plot (matplotlib's first colour)
    assert orange > 30, orange  # val_loss at steps 10 and 20
    assert "train_loss" in chart and any("\u2800" < ch <= "\u28ff" for ch in chart)
    assert missing.returncode == 1 and "no metrics named no_such_metric" in missing.stderr


def test_download_verifies_checksums_and_keeps_nothing_that_does_not_match(
    server: Server, watched: tuple[str, str], corpus: Path, dataset_id: str, tmp_path: Path
) -> None:
    job_id, _ = watched
    result = server.api.job(job_id)["result"]
    model_id, tokenizer_id = result["model_id"], result["tokenizer_id"]

    got = json.loads(ok(server.cli("models", "download", model_id, tmp_path, "--json")))
    ok(server.cli("tokenizers", "download", tokenizer_id, tmp_path))
    ok(server.cli("datasets", "download", dataset_id, tmp_path / "ds"))

    folder = Path(got["path"])
    assert folder == tmp_path / model_id
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert len(got["verified_sha256"]) == len(list(folder.iterdir()))
    assert (tmp_path / tokenizer_id / "tokenizer.json").is_file()
    assert (tmp_path / "ds" / "stories.jsonl").read_bytes() == corpus.read_bytes()

    # Corrupt the stored weights behind the server's back: the download must refuse them.
    stored = next((server.data_dir / "store" / "models" / model_id).rglob("model.safetensors"))
    stored.write_bytes(stored.read_bytes()[:-8] + b"corrupt!")
    target = tmp_path / "again"
    refused = server.cli("models", "download", model_id, target)

    assert refused.returncode == 1
    assert "checksum mismatch" in refused.stderr and "model.safetensors" in refused.stderr
    assert not list(target.rglob("model.safetensors*"))


class LineReader:
    """Lines of a subprocess's stdout, read in a thread so a test can wait with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stdout: Iterable[str]) -> None:
        for line in stdout:
            self.lines.put(line)

    def until(self, predicate: Any, timeout: float) -> dict[str, Any]:
        """The first record that ``predicate`` accepts, within ``timeout`` seconds (scaled)."""
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            record = json.loads(line)
            if predicate(record):
                return dict(record)
        raise AssertionError(f"nothing matched in {timeout}s; seen: {self.seen}")


def test_watch_resumes_polling_after_the_connection_drops(server: Server, dataset_id: str) -> None:
    """Watch a pretrain through a proxy and cut the proxy while the job still waits for the
    server's one worker (connections reset, new ones refused); let the job start while the watch
    is cut off, restore → the watch says it lost the connection, resumes, misses no event and
    shows none twice, and ends with the job's result and exit 0."""
    blocker = submit_probe(server, duration_s=600)  # holds the worker: the pretrain waits
    server.api.wait_status(blocker, "running", timeout=60)
    proxy = TcpProxy(("127.0.0.1", server.port))
    proxy.start()
    job_id = submit(server, dataset_id)
    args = [GRISTMILL, "jobs", "watch", job_id, "--json", "--interval", "0.5"]
    watch = subprocess.Popen(
        args,
        env=server.env(url=f"http://127.0.0.1:{proxy.port}"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        reader = LineReader(watch)
        reader.until(lambda r: r["record"] == "progress", 60)
        proxy.cut()
        reader.until(lambda r: r["record"] == "notice", 30)  # the watch noticed the drop
        during = server.api.job(job_id)
        server.api.cancel(blocker)
        wait_for(
            lambda: server.api.job(job_id)["started_at"],
            timeout=60,
            what="the pretrain to start while the watch is cut off",
        )
        proxy.restore()
        final = reader.until(lambda r: r["record"] == "job", 180)
        assert watch.wait(timeout=scaled(10)) == 0
    finally:
        watch.kill()
        proxy.stop()
        if server.api.job(blocker)["status"] == "running":
            server.api.cancel(blocker)

    records = [json.loads(line) for line in reader.seen]
    notices = [r["message"] for r in records if r["record"] == "notice"]
    assert any("connection lost" in n for n in notices), reader.seen
    assert any("reconnected" in n for n in notices), reader.seen
    assert during["status"] == "queued"  # not over when the watch lost sight of it
    assert final["status"] == "succeeded" and final["id"] == job_id
    event_ids = [r["id"] for r in records if r["record"] == "event"]
    assert event_ids == sorted(set(event_ids))
    assert event_ids == [e["id"] for e in server.api.events(job_id) if e["level"] != "debug"]


class Tmux:
    """A tmux server of the test's own (``-L``), so nothing else's sessions are touched."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.socket = f"gm-{name}-{free_port()}"
        self.env = env

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=scaled(20),
            env=self.env,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", "t", "-x", "120", "-y", "30", command)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def wait_screen(self, *needles: str, timeout: float) -> str:
        return wait_for(
            lambda: screen if all(n in (screen := self.screen()) for n in needles) else None,
            timeout=timeout,
            interval=0.3,
            what=f"the screen to show {needles}",
        )

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def shell_command(server: Server, *args: str) -> str:
    env = " ".join(
        f"{k}={v!s}" for k, v in server.env().items() if k.startswith(("GRISTMILL_", "PYTHON"))
    )
    return f"env {env} {GRISTMILL} {' '.join(args)}; echo EXIT=$?; sleep 120"


@pytest.fixture
def tmux(request: pytest.FixtureRequest, server: Server) -> Any:
    if subprocess.run(["which", "tmux"], capture_output=True).returncode != 0:
        pytest.fail("tmux is not installed (apt-get install -y tmux; .ci/run installs it)")
    terminal = Tmux(request.node.name[5:25], server.env())
    yield terminal
    terminal.close()


def test_watch_in_a_real_terminal_shows_a_live_bar_and_the_final_line(
    server: Server, dataset_id: str, tmux: Tmux
) -> None:
    """In tmux (a real terminal): a bar with step/total, ETA, tokens/s and loss while it runs,
    events above it, and the final line and exit 0 when it ends."""
    job_id = submit(server, dataset_id)

    tmux.start(shell_command(server, "jobs", "watch", job_id))

    running = tmux.wait_screen("/20", "tok/s", "loss", "━", timeout=120)
    done = tmux.wait_screen("EXIT=", timeout=180)

    bar = next(line for line in running.splitlines() if "tok/s" in line)
    # On a quiet machine the 20 steps can be over before the first redraw: the bar then shows
    # the final state, with the same fields.
    assert ("pretrain running" in bar or "pretrain succeeded" in bar) and "ETA" in bar, running
    assert f"Watching {job_id}" in done and "checkpoint saved at step 10" in done
    assert f"✔ {job_id} (pretrain) succeeded" in done and "EXIT=0" in done
    assert "20/20" in done


def test_ctrl_c_stops_watching_but_leaves_the_job_running(server: Server, tmux: Tmux) -> None:
    """Ctrl-C in the terminal → watch exits 130 saying the job keeps running and how to cancel
    it; the job is still running; ``jobs cancel`` then cancels it."""
    job_id = submit_probe(server, duration_s=60)
    tmux.start(shell_command(server, "jobs", "watch", job_id))
    tmux.wait_screen("probe running", timeout=60)

    tmux.run("send-keys", "-t", "t", "C-c")
    screen = tmux.wait_screen("EXIT=", timeout=20)

    assert "EXIT=130" in screen, screen
    assert f"{job_id} keeps running" in screen
    assert f"gristmill jobs cancel {job_id}" in screen
    assert server.api.job(job_id)["status"] == "running"
    cancelled = ok(server.cli("jobs", "cancel", job_id))
    assert cancelled.startswith(f"{job_id}: cancel")
    server.api.wait_status(job_id, "cancelled", timeout=30)
