"""Input checks shared by the endpoints: the documented safe name pattern, bounded text, and an ASGI guard that
refuses NUL and other control characters anywhere in the path or the query string (422 naming the parameter)
before any endpoint or database sees them."""
from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl

from service.errors import ValidationFailed

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME_RULE = "1-128 characters: letters, digits, '.', '_' and '-', starting with a letter or a digit"
_NAME = re.compile(NAME_PATTERN)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")      # tab, newline, carriage return allowed in text
_ANY_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_DESCRIPTION = 2000
MAX_DB_INT = 2**31 - 1          # the largest value an INTEGER column (and so an offset or a version) holds


def check_name(field: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValidationFailed(field, f"a name is {NAME_RULE}")
    return value


def check_text(field: str, value: str | None, max_len: int = MAX_DESCRIPTION) -> str | None:
    if value is None:
        return None
    if len(value) > max_len:
        raise ValidationFailed(field, f"at most {max_len} characters (got {len(value)})")
    if _CONTROL.search(value):
        raise ValidationFailed(field, "control characters (NUL, ...) are not allowed")
    return value


def _reject(field: str, message: str):
    body = {"error": {"code": "validation_error", "message": f"{field}: {message}", "field": field}}
    return json.dumps(body).encode()


class InputGuard:
    """Plain ASGI: a path or a query parameter with a control character (a NUL that PostgreSQL cannot hold, a
    newline in a name) is answered 422 naming it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            bad = self._find(scope)
            if bad is not None:
                body = _reject(bad, "control characters (NUL, newline, ...) are not allowed")
                await send({"type": "http.response.start", "status": 422,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _find(scope) -> str | None:
        if _ANY_CONTROL.search(scope.get("path", "")):
            return "path"
        qs = scope.get("query_string", b"")
        if not qs:
            return None
        try:
            pairs = parse_qsl(qs.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="replace")
        except ValueError:
            return "query"
        for k, v in pairs:
            if _ANY_CONTROL.search(k):
                return "query"
            if _ANY_CONTROL.search(v):
                return k[:64]
        return None
