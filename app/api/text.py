"""Text no database or JSON encoder can carry, refused at the edge with the field named.

NUL in the query or path; in a JSON body, lone surrogates (``"\\udc80"``), NUL, and integers
longer than Python will convert. The edge gate (``app.api.middleware``) calls these before a
route sees the request.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Scope

from app.errors import InvalidInput, InvalidParameter

MAX_INT_DIGITS = 4300  # Python's int-from-string limit (sys.get_int_max_str_digits)


class _TooLongInt:
    """Stands in for an integer literal too long to convert, so the field can be named."""


TOO_LONG_INT = _TooLongInt()


def _parse_int(text: str) -> int | _TooLongInt:
    digits = len(text.lstrip("-"))
    return int(text) if digits <= MAX_INT_DIGITS else TOO_LONG_INT


def find_bad_text(value: Any, path: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """The first (dotted path, reason) of text that cannot be stored or re-encoded, or None."""
    if isinstance(value, str):
        reason = _bad_string(value)
        return (".".join(path), reason) if reason else None
    if isinstance(value, _TooLongInt):
        return ".".join(path), f"integers may have at most {MAX_INT_DIGITS} digits"
    if isinstance(value, dict):
        for key, item in value.items():
            reason = _bad_string(key)
            if reason:
                return ".".join((*path, printable(key))), reason
            found = find_bad_text(item, (*path, key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_bad_text(item, (*path, str(index)))
            if found:
                return found
    return None


def printable(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, safe to encode and to show."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _bad_string(text: str) -> str | None:
    if "\x00" in text:
        return "text must not contain NUL characters"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "text must be valid Unicode (a lone surrogate such as \\udc80 is not)"
    return None


def is_json(headers: dict[bytes, bytes]) -> bool:
    content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    return content_type in (b"", b"application/json") or content_type.endswith(b"+json")


def check_json_text(body: bytes) -> None:
    """Refuse text no database or JSON encoder can carry, naming the field.

    Malformed JSON is left to the route, which answers it with 400 ``invalid_json``.
    """
    try:
        value = json.loads(body, parse_int=_parse_int)
    except RecursionError:
        raise InvalidInput("The request body is nested too deeply.", code="invalid_json") from None
    except UnicodeDecodeError:
        raise InvalidInput("The request body is not UTF-8.", code="invalid_json") from None
    except ValueError:
        return
    found = find_bad_text(value)
    if found is not None:
        param, reason = found
        raise InvalidParameter(
            f"Invalid value for '{param}': {reason}." if param else f"Invalid body: {reason}.",
            param=param or None,
        )


def check_text_in_url(scope: Scope) -> None:
    if "\x00" in scope["path"]:
        raise InvalidInput("The path must not contain NUL characters.", param="path")
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                raise InvalidParameter(
                    f"Invalid value for '{name.replace(chr(0), '')}': "
                    "text must not contain NUL characters.",
                    param=name.replace("\x00", "") or None,
                )
