"""The order-dependent half of ``prepare``: dedup decisions, contamination, split, counters.

Runs in the main process over the pool's results in file order, so "the first occurrence is kept"
and the validation split are the same on every run.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any, Protocol

from pipeline.configs.data import PrepareConfig
from pipeline.parts.text.counterfactual import CounterfactualLog
from pipeline.parts.text.dedup import NearDupIndex
from pipeline.prepare.chunks import DocResult, snippet
from pipeline.prepare.report import LENGTH_EDGES, ReasonLog, Sample, bucket, diversity
from pipeline.types import Hooks, Progress, StageCancelled

_TOP_CLUSTERS = 10


class Sink(Protocol):
    def write(self, line: str, validation: bool) -> int: ...


class State:
    """Counters, dedup index and report material accumulated over one prepare run."""

    def __init__(self, config: PrepareConfig, eval_docs: int) -> None:
        self.config = config
        self.kind: str | None = None
        self.records_in = self.records_out = self.bytes_in = self.bytes_out = 0
        self.split = Counter[str]()
        k = config.examples_per_reason
        self.invalid, self.normalised, self.filtered = ReasonLog(k), ReasonLog(k), ReasonLog(k)
        self.exact, self.near, self.pii_docs = ReasonLog(k), ReasonLog(k), ReasonLog(k)
        self.pii_found = Counter[str]()
        cda = config.counterfactual
        self.counterfactual = CounterfactualLog(cda.mode, cda.fraction, cda.enabled, k)
        self.seen: dict[bytes, int] = {}
        self.exact_clusters = Counter[bytes]()
        self.index = (
            NearDupIndex(config.dedup.near_threshold, config.dedup.num_perm)
            if config.dedup.near
            else None
        )
        self.slot_lines: list[int] = []
        self.near_clusters = Counter[int]()
        self.eval_docs = eval_docs
        self.eval_hits: set[int] = set()
        self.contaminated = ReasonLog(k)
        self.hist_in, self.hist_out = [0] * len(LENGTH_EDGES), [0] * len(LENGTH_EDGES)
        self.sample = Sample()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._started = self._last = time.monotonic()

    def decide(self, doc: DocResult, sink: Sink) -> None:
        """Apply the order-dependent steps to one record's result and write it if it survives."""
        self.records_in += 1
        self.bytes_in += doc.bytes_in
        self.hist_in[bucket(doc.chars_in)] += 1
        for change in doc.changes:
            self.normalised.add(change, {"line": doc.line, "text": doc.snippet})
        if doc.removed is not None or doc.output is None:
            self.filtered.add(doc.removed or "removed", {"line": doc.line, "text": doc.snippet})
            return
        if self._is_duplicate(doc):
            return
        text = doc.head
        if doc.pii:
            self.pii_found.update(doc.pii)
            self.pii_docs.add("scrubbed", {"line": doc.line, "text": snippet(text)})
        if doc.eval_hits:
            self.eval_hits.update(doc.eval_hits)
            self.contaminated.add("shares_eval_ngram", {"line": doc.line, "text": snippet(text)})
            if self.config.drop_contaminated:
                return
        validation = int.from_bytes(doc.key[:8], "big") < self.config.validation_fraction * 2**64
        self.split["validation" if validation else "train"] += 1
        self.records_out += 1
        self.bytes_out += sink.write(doc.output, validation)
        self.hist_out[bucket(doc.chars_out)] += 1
        self.sample.offer(text)
        if doc.counterfactual is not None:
            self._counterfactual(doc, validation, sink)

    def _counterfactual(self, doc: DocResult, validation: bool, sink: Sink) -> None:
        """Count a chosen record's swaps; in ``add`` mode write its copy right after it, in the
        same split, so a pair never straddles train and validation."""
        cf = doc.counterfactual
        assert cf is not None
        self.counterfactual.add(cf.counts, doc.line, cf.before, cf.after)
        if cf.copy is not None:
            self.split["validation" if validation else "train"] += 1
            self.records_out += 1
            self.bytes_out += sink.write(cf.copy, validation)
            self.hist_out[bucket(cf.copy_chars)] += 1

    def _is_duplicate(self, doc: DocResult) -> bool:
        example = {"line": doc.line, "text": doc.snippet}
        if self.config.dedup.exact:
            first = self.seen.setdefault(doc.key, doc.line)
            if first != doc.line:
                self.exact_clusters[doc.key] += 1
                self.exact.add("exact_duplicate", {**example, "duplicate_of_line": first})
                return True
        if self.index is not None and doc.signature is not None:
            _, original = self.index.add(doc.signature)
            if original is not None:
                self.near_clusters[original] += 1
                line = self.slot_lines[original]
                self.near.add("near_duplicate", {**example, "duplicate_of_line": line})
                return True
            self.slot_lines.append(doc.line)
        return False

    def tick(self, hooks: Hooks) -> None:
        """About once a second: report progress and honour a stop request."""
        now = time.monotonic()
        if now - self._last < 1.0:
            return
        self._last = now
        if hooks.should_stop():
            raise StageCancelled("prepare cancelled")
        elapsed = max(1e-9, now - self._started)
        hooks.on_progress(
            Progress(
                step=self.records_in,
                metrics={
                    "docs_per_s": self.records_in / elapsed,
                    "mb_per_s": self.bytes_in / elapsed / 1e6,
                    "records_out": float(self.records_out),
                },
            )
        )

    def report(self, gram_docs: dict[int, list[int]], wall_s: float) -> dict[str, Any]:
        """The JSON-serialisable report: per-step counts with examples, histograms, diversity."""
        return {
            "kind": self.kind,
            "records_in": self.records_in,
            "records_out": self.records_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "invalid_records": self.invalid.as_dict(),
            "steps": {
                "normalise": {"modified": self.normalised.as_dict()},
                "quality": {"removed": self.filtered.as_dict()},
                "exact_dedup": _clusters(self.exact, self.exact_clusters, "exact_duplicate"),
                "near_dedup": _clusters(self.near, self.near_clusters, "near_duplicate"),
                "pii": {
                    "documents_modified": self.pii_docs.total(),
                    "found": dict(sorted(self.pii_found.items())),
                    "examples": self.pii_docs.examples.get("scrubbed", []),
                },
                "counterfactual": self.counterfactual.as_dict(),
                "contamination": self._contamination(gram_docs),
                "split": dict(sorted(self.split.items())),
            },
            "length_histogram": {
                "edges_chars": LENGTH_EDGES,
                "before": self.hist_in,
                "after": self.hist_out,
            },
            "diversity": diversity(self.sample.texts),
            "timings_s": {
                "wall": round(wall_s, 3),
                **{k: round(v, 3) for k, v in sorted(self.seconds.items())},
            },
        }

    def _contamination(self, gram_docs: dict[int, list[int]]) -> dict[str, Any]:
        contaminated_eval = {d for h in self.eval_hits for d in gram_docs.get(h, [])}
        flagged = self.contaminated.total()
        return {
            "checked": self.eval_docs > 0,
            "ngram": self.config.contamination_ngram,
            "eval_docs": self.eval_docs,
            "eval_docs_contaminated": len(contaminated_eval),
            "eval_contaminated_share": len(contaminated_eval) / max(1, self.eval_docs),
            "train_docs_flagged": flagged,
            "train_docs_dropped": flagged if self.config.drop_contaminated else 0,
            "examples": self.contaminated.examples.get("shares_eval_ngram", []),
        }


def _clusters(log: ReasonLog, sizes: Counter[Any], reason: str) -> dict[str, Any]:
    """Removed count, cluster count and the largest clusters (sizes include the kept original)."""
    largest = sorted(sizes.values(), reverse=True)[:_TOP_CLUSTERS]
    return {
        "removed": log.total(),
        "clusters": len(sizes),
        "largest_cluster_sizes": [s + 1 for s in largest],
        "examples": log.examples.get(reason, []),
    }
