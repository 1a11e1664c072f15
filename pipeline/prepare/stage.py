"""The ``prepare`` stage: turn an uploaded dataset into clean, deduplicated train/validation JSONL.

Steps, in order: normalise → length/quality filters → exact dedup → MinHash LSH near-dup → PII
scrub → counterfactual augmentation (when asked) → contamination check → split by content hash
(a counterfactual copy goes to its original's split). Per-record work runs in a pool of processes
(:mod:`pipeline.prepare.chunks`) over chunks read in file order; results come back in that
order, so the main process decides "first occurrence wins" deterministically and the output is
byte-identical on a re-run. The source is streamed once and never modified; memory is bounded by
the dedup keys and the LSH index, not by the corpus. Outputs are written to ``*.tmp`` and renamed.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.configs.data import PrepareConfig
from pipeline.parts.datasets.formats import RecordReader, iter_records
from pipeline.parts.datasets.records import Record
from pipeline.parts.text.dedup import WordSpans
from pipeline.parts.text.quality import normalise
from pipeline.prepare.chunks import ChunkResult, ChunkSettings, init_process, process_chunk
from pipeline.prepare.state import State
from pipeline.types import PRODUCT, DatasetFile, Hooks, PipelineError, RunPaths

_CHUNK_RECORDS = 256
_CHUNK_CHARS = 2_000_000


@dataclass(frozen=True)
class PrepareInputs:
    source: DatasetFile
    """The dataset to clean (its format already detected by validation)."""
    eval: DatasetFile | None = None
    """Held-out evaluation text to check the output for contamination against."""


@dataclass(frozen=True)
class PrepareResult:
    train_path: Path = field(metadata=PRODUCT)
    validation_path: Path | None = field(metadata=PRODUCT)
    kind: str
    records_in: int
    records_out: int
    bytes_in: int
    bytes_out: int
    report: dict[str, Any] = field(default_factory=dict)
    report_path: Path | None = field(default=None, metadata=PRODUCT)
    """``report`` as a file, kept with the datasets made."""


def run_prepare(
    config: PrepareConfig, inputs: PrepareInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> PrepareResult:
    """Clean ``inputs.source`` into ``output_dir/train.jsonl`` (+ validation.jsonl, report.json).

    Raises:
        PipelineError: ``dataset.*`` for unreadable input, ``prepare.nothing_left`` when every
            record was removed.
        StageCancelled: when ``hooks.should_stop`` answers True (partial outputs are deleted).
    """
    started = time.perf_counter()
    eval_grams, gram_docs, eval_docs = _eval_ngrams(config, inputs.eval)
    state = State(config, eval_docs)
    outputs = _Outputs(paths.output_dir, config.validation_fraction > 0)
    settings = ChunkSettings(config, eval_grams)
    try:
        with RecordReader(inputs.source, config.limits) as reader:
            for chunk in _run_chunks(settings, _chunks(reader, state)):
                for stage, spent in chunk.seconds.items():
                    state.seconds[stage] += spent
                t0 = time.perf_counter()
                for doc in chunk.docs:
                    state.decide(doc, outputs)
                state.seconds["dedup_and_write"] += time.perf_counter() - t0
                state.tick(hooks)
        if state.records_out == 0:
            raise PipelineError("prepare.nothing_left", "Every record was invalid or removed.")
        report = state.report(gram_docs, time.perf_counter() - started)
        outputs.commit(report)
    except BaseException:
        outputs.discard()
        raise
    return PrepareResult(
        train_path=outputs.train_path,
        validation_path=outputs.validation_path,
        kind=state.kind or "text",
        records_in=state.records_in,
        records_out=state.records_out,
        bytes_in=state.bytes_in,
        bytes_out=state.bytes_out,
        report=report,
        report_path=outputs.report_path,
    )


def _eval_ngrams(
    config: PrepareConfig, eval_file: DatasetFile | None
) -> tuple[np.ndarray[Any, np.dtype[np.uint64]], dict[int, list[int]], int]:
    """(sorted unique eval n-gram hashes, hash -> eval docs holding it, number of eval docs)."""
    gram_docs: dict[int, list[int]] = {}
    count = 0
    if eval_file is not None:
        for i, text in enumerate(_texts(iter_records(eval_file, config.limits), config)):
            count += 1
            spans = WordSpans.of(text)
            if spans.words >= config.contamination_ngram:
                for h in np.unique(spans.ngrams(config.contamination_ngram)[0]).tolist():
                    gram_docs.setdefault(int(h), []).append(i)
    grams = np.array(sorted(gram_docs), dtype=np.uint64)
    return grams, gram_docs, count


def _texts(records: Iterable[Record], config: PrepareConfig) -> Iterator[str]:
    for record in records:
        text = record.training_text()
        yield normalise(text, config.normalise, strip=True)[0] if config.normalise.enabled else text


def _chunks(reader: RecordReader, state: State) -> Iterator[list[Record]]:
    """Valid records in chunks of bounded size; invalid ones are logged in the report."""
    chunk: list[Record] = []
    chars = 0
    t0 = time.perf_counter()
    for item in reader:
        if not isinstance(item, Record):
            state.invalid.add("invalid", {"line": item.line, "reason": item.reason})
            continue
        state.kind = state.kind or item.kind
        chunk.append(item)
        chars += sum(map(len, item.contents()))
        if len(chunk) >= _CHUNK_RECORDS or chars >= _CHUNK_CHARS:
            state.seconds["read_parse"] += time.perf_counter() - t0
            yield chunk
            chunk, chars = [], 0
            t0 = time.perf_counter()
    state.seconds["read_parse"] += time.perf_counter() - t0
    if chunk:
        yield chunk


def _run_chunks(settings: ChunkSettings, chunks: Iterator[list[Record]]) -> Iterator[ChunkResult]:
    """Process chunks in a process pool (or in this process for ``processes=1``), in input order."""
    # sched_getaffinity respects CPU pinning (containers, taskset); cpu_count() would not.
    processes = settings.config.processes or len(os.sched_getaffinity(0)) or 1
    init_process(settings)
    if processes == 1:
        yield from map(process_chunk, chunks)
        return
    # spawn, not fork: the caller (a Celery worker) may hold threads and locks a fork would copy.
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(processes, context, init_process, (settings,)) as pool:
        pending: deque[cf.Future[ChunkResult]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(process_chunk, chunk))
                if len(pending) >= 2 * processes:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class _Outputs:
    """train/validation JSONL written to ``*.tmp`` and renamed into place only on success."""

    def __init__(self, output_dir: Path, split: bool) -> None:
        self.train_path = output_dir / "train.jsonl"
        self.validation_path = output_dir / "validation.jsonl" if split else None
        self.report_path = output_dir / "report.json"
        self._final = [p for p in (self.train_path, self.validation_path) if p is not None]
        self._files = {p: _tmp(p).open("w", encoding="utf-8") for p in self._final}

    def write(self, line: str, validation: bool) -> int:
        target = self.validation_path if validation and self.validation_path else self.train_path
        self._files[target].write(line)
        return len(line.encode("utf-8", "surrogatepass"))

    def commit(self, report: dict[str, Any]) -> None:
        for f in self._files.values():
            f.close()
        _tmp(self.report_path).write_text(json.dumps(report, indent=2, ensure_ascii=False))
        for p in [*self._final, self.report_path]:
            os.replace(_tmp(p), p)

    def discard(self) -> None:
        for p, f in self._files.items():
            f.close()
            _tmp(p).unlink(missing_ok=True)
        _tmp(self.report_path).unlink(missing_ok=True)


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")
