"""The llama.cpp runtime: quantise a GGUF, load it, tokenize, score, generate and time it.

Everything goes through ``llama-cpp-python`` (the ``gristmill[gguf]`` extra), so quantisation's
checks and evaluation's figures run the very C++ code users will run, not a Python re-reading of
the file. A GGUF is tokenized with its own embedded tokenizer.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.configs.evaluate import SampleOptions
from pipeline.parts.runtimes.base import (
    DEFAULT_MAX_LENGTH,
    Runtime,
    Window,
    WindowScorer,
    window_length,
)
from pipeline.types import PipelineError

# GGUF type -> llama.cpp's llama_ftype, for the types its quantiser makes.
LLAMA_FTYPES = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:  # the gguf extra is not installed on this worker
        raise PipelineError(
            "quantize.llama_cpp_missing",
            "llama-cpp-python is not installed on this worker (install gristmill[gguf])",
        ) from exc
    return llama_cpp


def quantize_file(source: Path, target: Path, kind: str, *, threads: int) -> Path:
    """Quantise an f32/f16 GGUF to ``kind`` with ``llama_model_quantize`` (atomic).

    Raises:
        PipelineError: ``quantize.llama_cpp_failed`` when llama.cpp reports an error.
    """
    lib = _llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[kind]
    params.nthread = threads
    tmp = target.with_name(target.name + ".tmp")
    rc = lib.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise PipelineError("quantize.llama_cpp_failed", f"llama.cpp could not make {kind}: {rc}")
    tmp.replace(target)
    return target


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has Intel AMX tiles (Linux reports them in /proc/cpuinfo)."""
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def plain_cpu_weights(lib: Any) -> Iterator[None]:
    """Models loaded inside keep their weights in plain CPU buffers (``use_extra_bufts`` off).

    On CPUs with AMX, llama.cpp moves quantised weights into AMX buffers, and its AMX matrix
    multiply crashes the process (SIGSEGV in ``ggml_backend_amx_mul_mat``; llama-cpp-python
    0.3.36, q8_0 models of width 512 and 1024 as well as tiny ones). The check compares numbers,
    which the plain kernels compute as users' builds without AMX do; a crash would instead end
    the worker's process and, attempt after attempt, the job. llama-cpp-python has no argument
    for this model parameter, so its defaults are wrapped while a model loads.
    """
    low = lib.llama_cpp
    defaults = low.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _PARAMS_LOCK:
        low.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            low.llama_model_default_params = defaults


class LlamaCppModel:
    """A GGUF loaded in llama.cpp with per-position logits enabled."""

    def __init__(self, path: Path, *, n_ctx: int, threads: int) -> None:
        lib = _llama_cpp()
        started = time.perf_counter()
        load = plain_cpu_weights(lib) if cpu_has_amx() else contextlib.nullcontext()
        try:
            with load:
                self.llm = lib.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_batch=n_ctx,
                    n_threads=threads,
                    n_threads_batch=threads,
                    logits_all=True,
                    verbose=False,
                )
        except ValueError as exc:  # llama-cpp-python's answer to "failed to load model"
            raise PipelineError(
                "quantize.gguf_unloadable", f"llama.cpp cannot load {path.name}: {exc}"
            ) from exc
        self.load_seconds = time.perf_counter() - started
        self.n_vocab = self.llm.n_vocab()

    def tokenize(self, text: str) -> list[int]:
        """Tokens of plain text, without BOS and with special-token text kept literal."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def logits(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Logits at every position of one sequence: (len(tokens), vocab)."""
        self.llm.reset()
        self.llm.eval(list(tokens))
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def stream(
        self,
        prompt: Sequence[int],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[int]:
        """Ids generated after ``prompt``, one at a time, without end: the caller stops.

        Greedy at temperature 0; otherwise sampled (top-p, no top-k) after setting ``seed``.
        """
        self.llm.reset()
        if seed is not None:
            self.llm.set_seed(seed)
        top_k = 0 if temperature > 0 else 1
        yield from self.llm.generate(list(prompt), temp=temperature, top_p=top_p, top_k=top_k)

    def generation_speed(self, prompt: Sequence[int], n_tokens: int) -> float:
        """Greedy decoding tokens/s after the prompt (prompt processing is not counted)."""
        started = 0.0
        for generated, _ in enumerate(self.stream(prompt)):
            if generated == 0:
                started = time.perf_counter()  # the first token includes prompt processing
            elif generated == n_tokens:
                break
        return n_tokens / max(time.perf_counter() - started, 1e-9)

    def close(self) -> None:
        self.llm.close()


@contextlib.contextmanager
def loaded(path: Path, *, n_ctx: int, threads: int) -> Iterator[LlamaCppModel]:
    model = LlamaCppModel(path, n_ctx=n_ctx, threads=threads)
    try:
        yield model
    finally:
        model.close()


class LlamaCppScorer(WindowScorer):
    """Windows scored one at a time in llama.cpp (its batch is the window's positions)."""

    def __init__(self, model: LlamaCppModel, max_length: int) -> None:
        self.model = model
        self.max_length = max_length

    def score(
        self, seqs: Sequence[Sequence[int]], windows: Sequence[Sequence[Window]]
    ) -> list[float]:
        totals = []
        for seq, ws in zip(seqs, windows, strict=True):
            total = 0.0
            for w in ws:
                logits = self.model.logits(seq[w.start : w.end]).astype(np.float64)
                logits = logits[-w.scored :]
                top = logits.max(axis=1, keepdims=True)
                logz = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
                targets = np.asarray(seq[w.end + 1 - w.scored : w.end + 1])
                total += float((logz - logits[np.arange(w.scored), targets]).sum())
            totals.append(total)
        return totals


@dataclass
class LlamaCppRuntime(Runtime):
    """A GGUF in llama.cpp, on the CPU."""

    model: Any = None

    @classmethod
    def load(cls, path: Path, *, max_length: int | None, threads: int) -> LlamaCppRuntime:
        """Raises:
        PipelineError: ``evaluate.no_bos``, ``evaluate.max_length``,
            ``quantize.gguf_unloadable``, ``quantize.llama_cpp_missing``."""
        probe = LlamaCppModel(path, n_ctx=8, threads=threads)
        meta = probe.llm.metadata
        lengths = [int(v) for k, v in meta.items() if k.endswith(".context_length")]
        context = lengths[0] if lengths else DEFAULT_MAX_LENGTH
        probe.close()
        window = window_length(max_length, context)
        model = LlamaCppModel(path, n_ctx=window, threads=threads)
        llm = model.llm
        prefix = next(
            (t for t in (llm.token_bos(), llm.token_eos()) if t is not None and t >= 0), None
        )
        if prefix is None:
            raise PipelineError("evaluate.no_bos", "the GGUF has neither a BOS nor an EOS token")
        info = {
            "format": "gguf",
            "file": path.name,
            "params": int(llm.n_params()) if hasattr(llm, "n_params") else None,
            "max_length": window,
            "device": "cpu",
        }
        return cls(LlamaCppScorer(model, window), int(prefix), info, model)

    def encode(self, text: str) -> list[int]:
        return self.model.tokenize(text)  # type: ignore[no-any-return]

    def lead_ids(self) -> list[int]:
        # llama.cpp starts text with BOS unless the GGUF says its tokenizer does not.
        adds = str(self.model.llm.metadata.get("tokenizer.ggml.add_bos_token", "true"))
        return [] if adds.lower() == "false" else [self.prefix]

    def decode(self, ids: list[int]) -> str:
        raw: bytes = self.model.llm.detokenize(ids)
        return raw.decode("utf-8", errors="replace")

    def generate(
        self,
        ids: list[int],
        *,
        seed: int,
        options: SampleOptions,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[int]:
        eos = self.model.llm.token_eos()
        new: list[int] = []
        stream = self.model.stream(
            ids, temperature=options.temperature, top_p=options.top_p, seed=seed
        )
        for token in stream:
            if token == eos or len(new) >= options.max_new_tokens or should_stop():
                break
            new.append(token)
        return new

    def close(self) -> None:
        self.model.close()
