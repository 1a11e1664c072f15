"""The two runtimes a model is evaluated in: torch (Hugging Face folder) and llama.cpp (GGUF).

Both offer the same four things: encode text without special tokens, decode ids (for the
round-trip check), the one prefix token, and a window scorer. A GGUF is scored with its own
embedded tokenizer in llama.cpp, so its bits per byte compare with the torch model's even when
the token ids differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from workers.pipeline.configs.evaluate import EvaluateConfig, SampleOptions
from workers.pipeline.evaluate.perplexity import Scorer, Window, WindowScorer, prefix_token
from workers.pipeline.evaluate.samples import generate_samples
from workers.pipeline.quantize.llamacpp import LlamaCppModel
from workers.pipeline.types import PipelineError

DEFAULT_MAX_LENGTH = 2048


@dataclass
class Backend:
    scorer: WindowScorer
    prefix: int
    info: dict[str, Any] = field(default_factory=dict)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def samples(self, options: SampleOptions) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        return None


def _max_length(config: EvaluateConfig, context: int) -> int:
    max_length = config.perplexity.max_length or min(context, DEFAULT_MAX_LENGTH)
    if max_length > context:
        raise PipelineError(
            "evaluate.max_length", f"max_length {max_length} exceeds the model's context {context}"
        )
    return max_length


@dataclass
class HfBackend(Backend):
    tokenizer: Any = None
    model: Any = None
    device: Any = None

    @classmethod
    def load(cls, folder: Path, config: EvaluateConfig, device: torch.device) -> HfBackend:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.to(device)  # type: ignore[arg-type]
        model.eval()  # type: ignore[no-untyped-call]
        context = int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_MAX_LENGTH)
        max_length = _max_length(config, context)
        scorer = Scorer(
            model, max_length=max_length, batch_size=config.perplexity.batch_size, device=device
        )
        info = {
            "format": "huggingface",
            "architecture": type(model).__name__,
            "params": sum(p.numel() for p in model.parameters()),
            "max_length": max_length,
            "device": device.type,
        }
        return cls(scorer, prefix_token(tokenizer), info, tokenizer, model, device)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(
            self.tokenizer.decode(
                ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    def samples(self, options: SampleOptions) -> list[dict[str, Any]]:
        return generate_samples(
            self.model, self.tokenizer, options, prefix=self.prefix, device=self.device
        )


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
class GgufBackend(Backend):
    model: Any = None

    @classmethod
    def load(cls, path: Path, config: EvaluateConfig) -> GgufBackend:
        probe = LlamaCppModel(path, n_ctx=8, threads=config.threads)
        meta = probe.llm.metadata
        lengths = [int(v) for k, v in meta.items() if k.endswith(".context_length")]
        context = lengths[0] if lengths else DEFAULT_MAX_LENGTH
        probe.close()
        max_length = _max_length(config, context)
        model = LlamaCppModel(path, n_ctx=max_length, threads=config.threads)
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
            "max_length": max_length,
            "device": "cpu",
        }
        return cls(LlamaCppScorer(model, max_length), int(prefix), info, model)

    def encode(self, text: str) -> list[int]:
        return self.model.tokenize(text)  # type: ignore[no-any-return]

    def decode(self, ids: list[int]) -> str:
        raw: bytes = self.model.llm.detokenize(ids)
        return raw.decode("utf-8", errors="replace")

    def samples(self, options: SampleOptions) -> list[dict[str, Any]]:
        llm = self.model.llm
        out = []
        for prompt in options.prompts:
            for seed in options.seeds:
                llm.reset()
                llm.set_seed(seed)
                ids = [self.prefix, *self.encode(prompt)]
                new: list[int] = []
                for token in llm.generate(
                    ids,
                    temp=options.temperature,
                    top_p=options.top_p,
                    top_k=0 if options.temperature > 0 else 1,
                ):
                    if token == llm.token_eos() or len(new) >= options.max_new_tokens:
                        break
                    new.append(token)
                out.append(
                    {
                        "prompt": prompt,
                        "seed": seed,
                        "completion": self.decode(new),
                        "tokens": len(new),
                        "temperature": options.temperature,
                        "top_p": options.top_p,
                        "max_new_tokens": options.max_new_tokens,
                    }
                )
        return out

    def close(self) -> None:
        self.model.close()


def load_backend(folder: Path, config: EvaluateConfig, device: torch.device) -> Backend:
    """A Hugging Face folder, or a folder (or file) holding exactly one ``.gguf``."""
    if folder.is_file() and folder.suffix == ".gguf":
        return GgufBackend.load(folder, config)
    if not (folder / "config.json").exists():
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) == 1:
            return GgufBackend.load(ggufs[0], config)
        raise PipelineError(
            "evaluate.model_format",
            "the model folder holds neither a Hugging Face model nor exactly one .gguf file",
        )
    return HfBackend.load(folder, config, device)
