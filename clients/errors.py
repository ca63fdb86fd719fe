"""Errors that carry their OpenAI shape (status, type, code, param) from where they arise.

Clients raise these; the server turns any of them into an OpenAI error body with the
status they name. Nothing else crosses the HTTP boundary as an error.
"""

from __future__ import annotations


class TandemError(Exception):
    """An error with an OpenAI error object: ``{"error": {message, type, param, code}}``."""

    status: int = 500
    type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(TandemError):
    status = 400
    type = "invalid_request_error"


class ModelNotFound(TandemError):
    status = 404
    type = "invalid_request_error"

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(
            f"The model '{model}' does not exist. Available: {', '.join(known)}",
            code="model_not_found",
            param="model",
        )


class ContextLengthExceeded(InvalidRequest):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="context_length_exceeded", param="messages")


class Overloaded(TandemError):
    """Too many requests already waiting for a model: retry later."""

    status = 429
    type = "rate_limit_error"


class UpstreamError(TandemError):
    """A model backend failed. ``retryable`` errors may go to the next model in the chain.

    ``started`` is True once any output reached the caller: from then on nothing may be
    retried or re-routed (the caller would see text twice).
    """

    type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        retryable: bool = True,
        started: bool = False,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        type: str | None = None,
        param: str | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, headers=headers, type=type, param=param)
        self.retryable = retryable
        self.started = started
        self.upstream_status = upstream_status  # the upstream's own HTTP status, if it sent one
