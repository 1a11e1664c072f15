#!/usr/bin/env bash
# Every GPU check in one run, for a machine with one CUDA GPU: the CUDA-only tests (QLoRA on a
# 4-bit base; the vLLM engine where the vllm extra is installed) and the GPU benchmarks
# (pretraining presets in bf16 + compile, fine-tuning full / LoRA / QLoRA, inference streams in
# transformers and vLLM). Each part writes to OUT_DIR as it goes and the whole run keeps within
# BUDGET seconds, so a run cut short still leaves what it measured.
#
#     OUT_DIR=/tmp/gpu BUDGET=570 bash benchmarks/gpu_suite.sh [pretrain-presets]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT_DIR:-/tmp/gristmill-gpu}
budget=${BUDGET:-1800}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
left() { echo $((budget - SECONDS > 10 ? budget - SECONDS : 10)); }
cap() { local n; n=$(left); echo $((n < $1 ? n : $1)); }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
} 2>&1 | tee "$out/gpu.txt"

# The CUDA-only tests; the project's conftest needs the service stack, which a GPU box may lack.
timeout "$(cap 150)" $py -m pytest -q -p no:cacheprovider --noconftest -o addopts="" \
  tests/pipeline/test_finetune_gpu.py tests/pipeline/test_finetune_attention.py \
  tests/inference/test_vllm.py 2>&1 | tee "$out/tests.txt"

# Inference streams (1/2/4/8/16) on the GPU: the transformers engine, then vLLM where installed.
engines=transformers
$py -c "import vllm" 2>/dev/null && engines=transformers,vllm
timeout "$(cap 300)" $py -m benchmarks.bench_vllm --engines "$engines" 2>&1 | tee "$out/inference.txt"

timeout "$(cap 330)" $py benchmarks/bench_pretrain.py --cuda --repeats 1 --steps 20 \
  --gpu-presets "${1:-gpt2-small,350m,1b}" --json "$out/pretrain.jsonl" 2>&1 \
  | grep -v "Writing model shards" | tee "$out/pretrain.txt"

timeout "$(left)" $py benchmarks/bench_finetune.py --cuda --steps 12 2>&1 \
  | grep -v "Loading weights" | tee "$out/finetune.txt"
