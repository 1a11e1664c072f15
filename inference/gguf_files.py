"""What the service reads from a GGUF file's header without loading it: its shape (to size the
model and its KV caches against the budget) and its chat template (before a request takes a
slot). gguf-py maps the file; no weights are read."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from inference.engine import ChatTemplate, ModelLoadError, ModelNotFound, ModelRef

log = logging.getLogger("gristmill.inference")

KV_BYTES = 2
"""llama.cpp's default KV cache type is f16."""


def gguf_file(ref: ModelRef) -> Path:
    """The one ``.gguf`` file in the model's folder (a quantize job's output holds one)."""
    if ref.path.is_file() and ref.path.suffix == ".gguf":
        return ref.path
    files = sorted(ref.path.glob("*.gguf")) if ref.path.is_dir() else []
    if not files:
        raise ModelNotFound(f"no .gguf file in {ref.id!r}", param="model")
    if len(files) > 1:
        raise ModelLoadError(
            f"{ref.id!r} holds {len(files)} .gguf files; a GGUF model is one file",
            param="model",
        )
    return files[0]


@dataclass(frozen=True)
class GgufShape:
    """What the memory estimate needs from the file's metadata."""

    context_length: int
    layers: int
    kv_width: int
    """Per layer and position: KV heads × (key length + value length)."""


def read_shape(path: Path) -> GgufShape:
    """Read the header with gguf-py (memory-mapped, no weights read) to size the model before
    llama.cpp loads it."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(path).fields
    except (ValueError, OSError) as exc:
        log.warning("cannot read the GGUF header of %s: %s", path, exc)
        raise ModelLoadError(f"{path.name} is not a readable GGUF", param="model") from exc

    def value(key: str, default: int | None = None) -> int:
        found = fields.get(key)
        if found is None:
            if default is None:
                raise ModelLoadError(f"{path.name} has no {key} in its metadata", param="model")
            return default
        content = found.contents()
        return int(max(content) if isinstance(content, list) else content)

    arch = str(fields["general.architecture"].contents())
    heads = value(f"{arch}.attention.head_count")
    head_dim = value(f"{arch}.embedding_length") // heads
    kv_heads = value(f"{arch}.attention.head_count_kv", heads)
    width = kv_heads * (
        value(f"{arch}.attention.key_length", head_dim)
        + value(f"{arch}.attention.value_length", head_dim)
    )
    return GgufShape(value(f"{arch}.context_length"), value(f"{arch}.block_count"), width)


def read_chat_template(ref: ModelRef) -> ChatTemplate | None:
    """``tokenizer.chat_template`` with the BOS and EOS tokens' text (empty where the file names
    none, as llama.cpp's formatter has it), from the header alone (cached per file version)."""
    path = gguf_file(ref)
    stat = path.stat()
    return _chat_template(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _chat_template(path: Path, mtime_ns: int, size: int) -> ChatTemplate | None:
    from gguf import GGUFReader

    try:
        fields = GGUFReader(path).fields
    except (ValueError, OSError) as exc:
        log.warning("cannot read the GGUF header of %s: %s", path, exc)
        raise ModelLoadError(f"{path.name} is not a readable GGUF", param="model") from exc
    source = fields.get("tokenizer.chat_template")
    if source is None or not source.contents():
        return None
    tokens = fields.get("tokenizer.ggml.tokens")

    def token(key: str) -> str:
        found = fields.get(key)
        if found is None or tokens is None:
            return ""
        return str(tokens.contents(int(found.contents())))

    variables = {
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
    }
    return ChatTemplate(str(source.contents()), variables)


def estimate_bytes(ref: ModelRef, parallel: int = 1) -> int:
    """The file (weights are mapped and read in whole, once) plus an f16 KV cache for the
    context of each of the ``parallel`` llama.cpp contexts."""
    path = gguf_file(ref)
    shape = read_shape(path)
    kv = KV_BYTES * shape.layers * shape.context_length * shape.kv_width
    return path.stat().st_size + parallel * kv
