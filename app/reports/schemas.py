"""What the report routes return besides HTML pages."""

from __future__ import annotations

from pydantic import BaseModel


class PairedComparison(BaseModel):
    """Two evaluate jobs' per-item scores on the task items both scored."""

    job_id: str
    other_job_id: str
    metric: str
    n: int
    """Task items both jobs scored."""
    mean_a: float
    """The metric's mean over those items for ``job_id``."""
    mean_b: float
    """The same for ``other_job_id``."""
    difference: float
    """Mean per-item difference, other minus this."""
    ci95: list[float]
    """Paired bootstrap 95% interval of the difference."""
    p_value: float
    """Two-sided sign-flip permutation p-value (no difference under the null)."""
