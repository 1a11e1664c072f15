"""Packed rows: each example attends only to itself, whichever attention runs, and the model
never has to look at the position ids to find the examples (a host read per forward)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers.masking_utils
from transformers import AutoModelForCausalLM

from pipeline.parts.attention import (
    VARLEN,
    block_causal_mask,
    cumulative_lengths,
    varlen_works,
)
from pipeline.parts.batches import Example, collate
from pipeline.parts.objectives import forward_logits
from tests.pipeline.finetune_helpers import build_base


def examples(lengths: list[int], vocab: int) -> list[Example]:
    gen = torch.Generator().manual_seed(1)
    rows = [
        torch.randint(3, vocab, (n,), generator=gen, dtype=torch.int32).numpy() for n in lengths
    ]
    return [Example(r, r) for r in rows]


def test_segments_give_a_causal_mask_within_each_example() -> None:
    mask = block_causal_mask([(2, 3)], 5)[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    bounds, longest = cumulative_lengths([(2, 3), (4, 1)])
    assert bounds.tolist() == [0, 2, 5, 9, 10] and longest == 4


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("attention", ["sdpa", VARLEN])
def test_packed_logits_equal_each_example_alone(
    family: str, attention: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(build_base(family, tmp_path)))
    model.set_attn_implementation(attention)
    assert_packed_equals_alone(model, torch.device("cpu"), monkeypatch, tolerance=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gpu_packs_with_flash_variable_length_attention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuda = torch.device("cuda")
    assert varlen_works(cuda, torch.bfloat16)
    base = build_base("qwen2", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16).to(cuda)
    model.set_attn_implementation(VARLEN)
    assert_packed_equals_alone(model, cuda, monkeypatch, tolerance=0.05)


def assert_packed_equals_alone(
    model: torch.nn.Module,
    device: torch.device,
    monkeypatch: pytest.MonkeyPatch,
    *,
    tolerance: float,
) -> None:
    model.eval()
    items = examples([9, 5, 13, 4, 7], model.config.vocab_size)
    batch = collate(items, packing=True, capacity=24, pad_id=0)
    assert batch.segments is not None and len(batch.segments) < len(items)  # really packed

    def no_search(position_ids: torch.Tensor) -> None:
        raise AssertionError("the model searched the position ids for packed examples")

    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", no_search)
    with torch.no_grad():
        packed = forward_logits(model, batch, device).float().cpu()
    monkeypatch.undo()

    starts = {}
    for r, row in enumerate(batch.segments):
        start = 0
        for n in row:
            starts[tuple(batch.input_ids[r, start : start + n].tolist())] = (r, start)
            start += n
    for item in items:
        r, start = starts[tuple(item.input_ids.tolist())]
        alone = collate([item], packing=False, capacity=24, pad_id=0)
        with torch.no_grad():
            expected = forward_logits(model, alone, device)[0].float().cpu()
        got = packed[r, start : start + len(item)]
        torch.testing.assert_close(got, expected, rtol=tolerance * 10, atol=tolerance)


def test_variable_length_kernels_are_used_only_where_they_run() -> None:
    assert not varlen_works(torch.device("cpu"), torch.bfloat16)
