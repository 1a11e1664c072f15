"""The one codec for stage configs and inputs: JSON ⇄ frozen dataclasses, with their validation.

The API decodes a job's parameters with it, the handler decodes the stored parameters with it,
and the launcher encodes ``run.json`` for torchrun children, which decode it again: the same
rules (``__post_init__`` checks, unknown keys refused, tuples from JSON lists) apply everywhere.

Pydantic does the work, imported when the codec is first used: every process that encodes or
decodes has it (the API, the workers), while importing any config loads the standard library
alone (``tests/pipeline/test_configs_stdlib.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pydantic import TypeAdapter

T = TypeVar("T")


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(cls: Any) -> TypeAdapter[Any]:
    """One TypeAdapter per type: building one walks the whole dataclass tree."""
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        from pydantic import TypeAdapter

        adapter = _ADAPTERS[cls] = TypeAdapter(cls)
    return adapter


def decode(cls: type[T], data: Any) -> T:
    """Validate JSON-like ``data`` into ``cls``.

    Raises:
        pydantic.ValidationError: a value is missing, of the wrong type, or refused by the
            dataclass's own checks (whose ``ConfigError`` names the field).
    """
    value: T = _adapter(cls).validate_python(data)
    return value


def encode(value: Any) -> Any:
    """A dataclass (or any value pydantic knows) as plain JSON data."""
    return _adapter(type(value)).dump_python(value, mode="json")
