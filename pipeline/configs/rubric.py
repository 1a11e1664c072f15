"""Rubric prompts with named slots (``{question}``, ``{answer}``…): the one place they are checked
and filled in, for the pairwise judge and the score grader alike.

Stdlib only (the API imports this module to validate a rubric).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from pipeline.configs.base import ConfigError

MAX_RUBRIC_CHARS = 8000


def check_rubric(
    field: str, rubric: str, required: Iterable[str], optional: Iterable[str] = ()
) -> None:
    """Each required slot exactly once, each optional one at most once, bounded length.

    Raises:
        ConfigError: naming ``field``.
    """
    if len(rubric) > MAX_RUBRIC_CHARS:
        raise ConfigError(field, f"at most {MAX_RUBRIC_CHARS} characters")
    for slot in required:
        if rubric.count("{" + slot + "}") != 1:
            raise ConfigError(field, f"must hold {{{slot}}} exactly once")
    for slot in optional:
        if rubric.count("{" + slot + "}") > 1:
            raise ConfigError(field, f"may hold {{{slot}}} at most once")


def fill(rubric: str, values: Mapping[str, str]) -> str:
    """The rubric filled in, in one pass: braces inside the values are kept as they are."""
    slots = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return slots.sub(lambda m: values[m.group(1)], rubric)
