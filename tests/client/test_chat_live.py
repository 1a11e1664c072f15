"""``gristmill complete`` and ``gristmill chat`` against a live embedded server: a tiny model
uploaded and quantised to GGUF by the server's own worker, then called from the terminal (tmux for
the chat, as a person types it). Answers are greedy, so the test knows what the screen must show
by asking the API the same question."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client.conftest import Server
from tests.client.test_cli_live import Tmux, shell_command
from tests.pipeline.finetune_helpers import build_base
from tests.timing import wait_for

pytestmark = pytest.mark.slow

CONTEXT = 8192
"""Room for an answer long enough to interrupt: the tiny model's weights do not depend on it."""


def upload(server: Server, folder: Path) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(str(folder), arcname="tiny")
    return str(server.api.upload("/v1/models", "tiny.tar.gz", buffer.getvalue(), timeout=120)["id"])


@pytest.fixture(scope="module")
def models(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A Hugging Face model with a chat template and a long context, and its f32 GGUF."""
    folder = build_base("qwen2", tmp_path_factory.mktemp("chat") / "base")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": CONTEXT}))
    parent = upload(server, folder)
    params = {"model_id": parent, "format": "gguf", "gguf": {"types": ["f32"]}}
    done = server.api.run_job("quantize", params, timeout=300)
    (gguf,) = done["result"]["model_ids"]
    return {"huggingface": parent, "gguf": str(gguf)}


def greedy(server: Server, path: str, **body: Any) -> str:
    answer = server.api.post(path, status=200, json={**body, "temperature": 0}, timeout=60)
    choice = answer["choices"][0]
    return str(choice["message"]["content"] if "message" in choice else choice["text"])


def squeeze(text: str) -> str:
    """The ASCII letters, digits and punctuation of ``text``: a terminal wraps and pads lines,
    and how it draws other characters depends on its locale."""
    return "".join(c for c in text if c.isascii() and c.isprintable() and not c.isspace())


@pytest.fixture
def tmux(request: pytest.FixtureRequest, server: Server) -> Iterator[Tmux]:
    terminal = Tmux(request.node.name[5:25], server.env())
    yield terminal
    terminal.close()


def test_complete_streams_the_continuation_to_stdout(
    server: Server, models: dict[str, str]
) -> None:
    prompt = "Format: anna in"
    for model in models.values():
        expected = greedy(server, "/v1/completions", model=model, prompt=prompt, max_tokens=12)
        done = server.cli("complete", model, prompt, "--max-tokens", "12", "--temperature", "0")
        assert done.returncode == 0, done.stderr
        assert done.stdout == expected + "\n"
    missing = server.cli("complete", "no-such-model", prompt)
    assert missing.returncode == 1 and "no-such-model" in missing.stderr


def test_chat_keeps_the_history_resets_and_takes_a_system_message(
    server: Server, models: dict[str, str], tmux: Tmux
) -> None:
    model = models["gguf"]
    first = [{"role": "user", "content": "hello"}]
    answer = greedy(server, "/v1/chat/completions", model=model, messages=first, max_tokens=10)
    second = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "more"}]
    follow_up = greedy(server, "/v1/chat/completions", model=model, messages=second, max_tokens=10)
    system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "more"}]
    fresh = greedy(server, "/v1/chat/completions", model=model, messages=system, max_tokens=10)
    # Each turn below is told apart by its answer.
    assert len({squeeze(answer), squeeze(follow_up), squeeze(fresh)}) == 3, (answer, follow_up)

    tmux.start(shell_command(server, "chat", model, "--temperature", "0", "--max-tokens", "10"))
    tmux.wait_screen("you>", timeout=30)

    def say(line: str, expected: str) -> None:
        tmux.run("send-keys", "-t", "t", line, "Enter")
        try:
            wait_for(
                lambda: squeeze(f"{line}{expected}you>") in squeeze(tmux.screen()),
                timeout=30,
                interval=0.3,
                what=f"the answer to {line!r}",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {expected!r} not on\n{tmux.screen()}") from None

    say("hello", answer)
    say("more", follow_up)  # the first turn was sent along
    tmux.run("send-keys", "-t", "t", "/reset", "Enter")
    tmux.run("send-keys", "-t", "t", "/system be brief", "Enter")
    tmux.wait_screen("conversation reset", "system message set", timeout=10)
    say("more", fresh)  # only the system message and this turn
    tmux.run("send-keys", "-t", "t", "C-d")
    assert "EXIT=0" in tmux.wait_screen("EXIT=", timeout=10)


def test_ctrl_c_stops_the_answer_not_the_chat(
    server: Server, models: dict[str, str], tmux: Tmux
) -> None:
    """The long answer of the Hugging Face model (transformers, the slower engine) is cut by
    Ctrl-C: the service stops generating, the chat asks again, and /exit quits with 0."""
    inference = f"http://127.0.0.1:{server.port + 1}/health"
    cancelled = httpx.get(inference).json()["stats"]["cancelled"]
    model = models["huggingface"]
    tmux.start(shell_command(server, "chat", model, "--temperature", "0", "--max-tokens", "8000"))
    before = len(squeeze(tmux.wait_screen("you>", timeout=30)))
    tmux.run("send-keys", "-t", "t", "go on and on", "Enter")
    wait_for(
        lambda: len(squeeze(tmux.screen())) > before + 100,
        timeout=30,
        interval=0.1,
        what="the answer to start",
    )
    tmux.run("send-keys", "-t", "t", "C-c")
    screen = tmux.wait_screen("stopped", timeout=10)
    assert "EXIT=" not in screen
    wait_for(
        lambda: httpx.get(inference).json()["stats"]["cancelled"] > cancelled,
        timeout=10,
        what="the service to stop the generation",
    )
    tmux.run("send-keys", "-t", "t", "/exit", "Enter")
    assert "EXIT=0" in tmux.wait_screen("EXIT=", timeout=10)
