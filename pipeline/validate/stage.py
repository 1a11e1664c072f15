"""The ``validate`` stage: detect an upload's format, then parse every record of it.

The parsing itself lives in :mod:`pipeline.parts.datasets.formats`; this module gives it the
stage shape every job kind shares, so the handler and the launcher call it like any other stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.configs.data import ValidateConfig
from pipeline.parts.datasets.formats import ValidationResult, detect_format, validate_dataset
from pipeline.types import Hooks, RunPaths


@dataclass(frozen=True)
class ValidateInputs:
    """An uploaded file whose format is not known yet."""

    upload: Path
    options: Mapping[str, str] = field(default_factory=dict)
    """What the uploader said about it, e.g. ``{"column": "body"}``."""


def run_validate(
    config: ValidateConfig, inputs: ValidateInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> ValidationResult:
    """Say whether the upload is usable, listing bad records by line.

    Raises:
        PipelineError: whole-file problems (unknown format, binary data, a broken gzip stream).
        StageCancelled: when ``hooks.should_stop`` answers True.
    """
    return validate_dataset(detect_format(inputs.upload, inputs.options), config, hooks)
