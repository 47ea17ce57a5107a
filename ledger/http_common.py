"""The log server's HTTP conventions: the status each error maps to (docs/protocol.md
§2.5), JSON error bodies with ``Retry-After`` where a retry helps, cache headers, and
the strict parsing of query parameters. Used by :mod:`ledger.server`."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .errors import (
    MalformedError,
    PotdError,
    PushbackError,
    SignatureError,
    StorageError,
    UsageError,
)
from .sequencer import Rejected

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=10"
NO_CACHE = "no-cache"
JSON_TYPE = "application/json"


class TooLarge(PotdError):
    code = "too_large"
    hint = "entries are at most 65535 bytes; split large batches into smaller requests"


class RequestTimeout(PotdError):
    code = "request_timeout"
    hint = "send the whole request body promptly (the server gives each body a deadline)"


class NotFound(PotdError):
    code = "not_found"
    hint = "check the path and parameters against the current tree size"


def status_of(e: PotdError) -> int:
    """The HTTP status docs/protocol.md §2.5 gives an error."""
    if isinstance(e, Rejected):
        return e.status
    for cls, status in ((TooLarge, 413), (NotFound, 404), (RequestTimeout, 408),
                        (SignatureError, 401), (MalformedError, 400), (UsageError, 400),
                        (PushbackError, 503), (StorageError, 503)):
        if isinstance(e, cls):
            return status
    return 500


def error_response(status: int, code: str, detail: str, hint: str = "",
                   headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"error": code, "detail": detail}
    if hint:
        body["hint"] = hint
    body.update(extra)
    return Response(json.dumps(body), status_code=status, media_type=JSON_TYPE,
                    headers=headers)


def error_payload(e: PotdError) -> tuple[int, bytes, dict[str, str]]:
    """Status, JSON body and extra headers for an error."""
    status = status_of(e)
    extra: dict[str, Any] = dict(e.extra) if isinstance(e, Rejected) else {}
    pos = getattr(e, "statement", None)
    if isinstance(pos, int):
        extra["statement"] = pos
    headers = {}
    if isinstance(e, PushbackError):
        headers["Retry-After"] = str(max(1, round(e.retry_after)))
    elif isinstance(e, StorageError):
        headers["Retry-After"] = "1"
    code, message, hint = e.code, e.message, e.hint
    if status == 500:
        code, message, hint = "internal", "internal error; the log operator has the details", ""
    body: dict[str, Any] = {"error": code, "detail": message}
    if hint:
        body["hint"] = hint
    body.update(extra)
    return status, json.dumps(body).encode(), headers


def potd_error_response(e: PotdError) -> Response:
    status, body, headers = error_payload(e)
    return Response(body, status_code=status, media_type=JSON_TYPE, headers=headers)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status_code=status,
                    media_type=JSON_TYPE, headers={"Cache-Control": NO_CACHE})


_UINT_RE = re.compile(r"0|[1-9][0-9]{0,18}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")


def uint_param(request: Request, name: str, default: int | None = None) -> int:
    v = request.query_params.get(name)
    if v is None:
        if default is None:
            raise UsageError(f"missing query parameter {name!r}",
                             hint=f"add ?{name}=<non-negative integer>")
        return default
    if not _UINT_RE.fullmatch(v):
        raise UsageError(f"query parameter {name}={v[:30]!r} is not a non-negative decimal "
                         "integer", hint="write it without sign, spaces or leading zeros")
    return int(v)
