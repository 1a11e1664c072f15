"""The pipeline's library of parts: each written once, used by every stage that needs it.

A stage (``pipeline/<stage>/stage.py``) is a recipe over these parts, readable top to bottom.
Parts take plain arguments or a small config (:mod:`pipeline.configs.optim`), never a stage's
config, and know nothing of the job layer.

Training: ``schedule`` (the learning rate of a step), ``optimizer`` (AdamW, decay on matrices),
``step`` (one optimiser step over micro-batches, throughput), ``readback`` (reading a step's
figures one step late), ``losses`` (cross-entropy and DPO arithmetic), ``objectives``
(fine-tuning's losses taken back through the model per rank, held-out figures), ``checkpoint``
(save, find, verify and restore training state), ``distributed`` (DDP/FSDP, the collectives),
``device`` (device, dtype and autocast, seeds, process groups, memory).

Models: ``hf`` (Hugging Face folders in and out), ``llama`` (a fresh Llama; FLOPs and MFU),
``lora`` (the model a fine-tuning method trains, and its export), ``attention`` (packed rows),
``chat`` (chat templates), ``cards`` (model cards), ``runtimes`` (generate and score in
transformers or llama.cpp).

Data: ``datasets`` (reading users' files: formats, records, limits), ``text`` (normalising,
quality filters, near-duplicates, PII), ``tokens`` (pretraining's token shards and batches),
``examples`` and ``batches`` (fine-tuning's labelled examples and their rows), ``files``
(sha256, durable writes).
"""
