"""Strict numbers in job parameters: ``"5"`` and ``true`` are not numbers, ``0`` is not false.

The stage configs are frozen dataclasses that the workers also decode from stored JSON in
pydantic's lax mode (lists become tuples there), so strictness cannot live in their shared
config. The API applies it on the way in instead: before validation, every value whose field is
typed ``int`` or ``float`` (also inside optional, nested and tuple fields) must be a JSON number
— an integer for ``int`` — never a string or a boolean; a ``bool`` field takes only true/false.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, Union

from pipeline.configs.base import ConfigError


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=False)


def _options(tp: Any) -> list[Any]:
    """The alternatives of a union (``X | None``), else the type itself."""
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return [arg for arg in typing.get_args(tp) if arg is not type(None)]
    return [tp]


def _problem(tp: Any, value: Any) -> str | None:
    """Why ``value`` is not acceptable for the numeric type ``tp`` (None: fine or not numeric)."""
    options = _options(tp)
    if any(opt is str for opt in options) or value is None:
        return None
    if bool in options and not isinstance(value, bool):
        return "must be true or false"
    numeric = [opt for opt in options if opt in (int, float)]
    if not numeric:
        return None
    if isinstance(value, bool):
        return "must be a number, not a boolean"
    if isinstance(value, str):
        return "must be a number, not a string"
    if numeric == [int] and isinstance(value, float):
        return "must be an integer"
    return None


def check_numbers(cls: type, data: Any, prefix: str = "") -> None:
    """Walk ``data`` (decoded JSON) along the dataclass ``cls``.

    Raises:
        ConfigError: a numeric field holds a string, a boolean, or (for ``int``) a fraction; its
            ``field`` is the dotted path, e.g. ``params.model.n_layers``.
    """
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return
    hints = _hints(cls)
    for name, value in data.items():
        tp = hints.get(name)
        if tp is None:
            continue
        path = f"{prefix}{name}"
        reason = _problem(tp, value)
        if reason:
            raise ConfigError(path, reason)
        for option in _options(tp):
            if dataclasses.is_dataclass(option) and isinstance(option, type):
                check_numbers(option, value, f"{path}.")
            elif typing.get_origin(option) in (tuple, list) and isinstance(value, list):
                args = [a for a in typing.get_args(option) if a is not Ellipsis]
                for index, item in enumerate(value):
                    item_type = args[min(index, len(args) - 1)] if args else None
                    reason = _problem(item_type, item) if item_type is not None else None
                    if reason:
                        raise ConfigError(f"{path}.{index}", reason)
