"""Parameters of the ``probe`` diagnostic job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pipeline.configs.base import PYDANTIC_CONFIG, ConfigError, check_range


@dataclass(frozen=True)
class ProbeConfig:
    """Measure matrix-multiply throughput for a while, to prove the whole job path end to end."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    duration_s: float = 5.0
    """How long to keep measuring, in seconds (0-3600)."""
    matmul_size: int = 256
    """Side of the square matrices multiplied (16-8192)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where to measure; ``cuda`` sends the job to the gpu queue."""
    fail_with: str | None = None
    """Fail with this code after the first measurement (failure drills); null runs normally."""

    def __post_init__(self) -> None:
        check_range("duration_s", self.duration_s, 0, 3600)
        check_range("matmul_size", self.matmul_size, 16, 8192)
        if self.fail_with is not None and (
            len(self.fail_with) > 64
            or not self.fail_with.replace(".", "").replace("_", "").isalnum()
        ):
            raise ConfigError("fail_with", "must be a dotted error code such as 'probe.failed'")
