"""The errors the client raises.

Every error is a :class:`BraidError`. Answers from the server with an error
status become a subclass picked by that status (:class:`NotFound` for 404,
:class:`Unauthorized` for 401, ...), carrying the status, the server's
machine-readable ``code`` (``not_found``, ``not_waiting``, ``invalid_input``...),
its ``message`` and, for a 422, its list of ``problems``. The server's error
body is ``{"error": {"code", "message", "problems"?}}``.

Failures that are not an answer from the server (the connection was refused,
a wait ran out of time) have ``status`` ``None``.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Type


class BraidError(Exception):
    """Anything that went wrong talking to a braid server."""

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: Optional[str] = None,
        problems: Optional[List[str]] = None,
        method: Optional[str] = None,
        url: Optional[str] = None,
    ) -> None:
        self.status = status
        """The HTTP status, or ``None`` when the server did not answer."""
        self.code = code
        """The server's error code (``not_found``, ``conflict``...), if it gave one."""
        self.message = message
        """What went wrong, as the server (or the client) put it."""
        self.problems: List[str] = list(problems or [])
        """The individual problems of a 422 (a pipeline's diagnostics, an input's errors)."""
        self.method = method
        self.url = url
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.method} {self.url}: " if self.method and self.url else ""
        head = f"{self.status} {self.code}: " if self.status is not None else ""
        text = f"{where}{head}{self.message}"
        if self.problems:
            text += "".join(f"\n  - {p}" for p in self.problems)
        return text


class BraidConnectionError(BraidError):
    """The server could not be reached, or the connection broke mid-answer."""


class BraidTimeout(BraidError):
    """A wait (``Client.wait``, a stream) ran out of time."""


class ProtocolError(BraidError):
    """The server answered something this client cannot read (not JSON, too big)."""


class ApiError(BraidError):
    """The server answered with an error status (4xx or 5xx)."""


class BadRequest(ApiError):
    """400: the request was malformed (bad JSON, an unknown field)."""


class Unauthorized(ApiError):
    """401: no bearer token, or the wrong one."""


class Forbidden(ApiError):
    """403: refused (an origin, a host, command agents the server does not allow)."""


class NotFound(ApiError):
    """404: no such run, pipeline, agent or route."""


class Conflict(ApiError):
    """409: the request does not fit the resource's state (a run not waiting, already finished...)."""


class PayloadTooLarge(ApiError):
    """413: the body is over the server's ``--max-body-bytes``."""


class UnsupportedMediaType(ApiError):
    """415: a POST without ``application/json`` or ``application/yaml``."""


class ValidationError(ApiError):
    """422: invalid pipeline, input, answer or fork; ``problems`` lists why."""


class TooManyRequests(ApiError):
    """429: too many runs in flight or pipelines compiling; try again later."""


class ServerError(ApiError):
    """5xx: the server failed (its log says why)."""


class ServiceUnavailable(ServerError):
    """503: the server is shutting down or has too many connections."""


_BY_STATUS: Dict[int, Type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationError,
    429: TooManyRequests,
    503: ServiceUnavailable,
}


def error_for(status: int, body: bytes, *, method: str, url: str) -> ApiError:
    """The typed error for an error answer: its class by status, its code,
    message and problems from the server's JSON body (or the raw text when
    the body is not the server's error object)."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    code: Optional[str] = None
    problems: List[str] = []
    text = body.decode("utf-8", errors="replace").strip()
    message = text[:2000] or f"HTTP {status} with an empty body"
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = parsed["error"]
        code = error.get("code") if isinstance(error.get("code"), str) else None
        if isinstance(error.get("message"), str):
            message = error["message"]
        if isinstance(error.get("problems"), list):
            problems = [str(p) for p in error["problems"]]
    return cls(message, status=status, code=code, problems=problems, method=method, url=url)
