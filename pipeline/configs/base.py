"""Shared pieces of the stage configs: the validation error and the pydantic settings they carry.

Configs are frozen stdlib dataclasses (this package must stay stdlib-only: the API imports it to
validate job parameters with the very same rules). Pydantic reads ``__pydantic_config__`` when a
config is used as a field type, so unknown keys are rejected and attribute docstrings become the
OpenAPI field descriptions.
"""

from __future__ import annotations

from typing import Any, Final, Literal

Precision = Literal["auto", "fp32", "bf16", "fp16"]
"""Training arithmetic: auto = bf16 on CUDA where supported, fp32 on CPU."""

PYDANTIC_CONFIG: Final[dict[str, Any]] = {"extra": "forbid", "use_attribute_docstrings": True}


class ConfigError(ValueError):
    """An invalid parameter value; ``field`` names the parameter for the API's error body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_range(field: str, value: float, low: float, high: float) -> None:
    """Raise ConfigError unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ConfigError(field, f"must be between {low:g} and {high:g}, got {value!r}")
