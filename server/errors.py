"""Every error leaves as an OpenAI error object with the right status, never a stack trace."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from clients.errors import TandemError

log = logging.getLogger("tandem.errors")

_STATUS_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(status: int, message: str, type: str | None = None, code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": type or _STATUS_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


def tandem_error_response(err: TandemError, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(err.body()), status_code=err.status,
                    media_type="application/json", headers={**err.headers, **(headers or {})})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TandemError)
    async def _tandem(_: Request, err: TandemError) -> Response:
        return tandem_error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> Response:
        first = err.errors()[0] if err.errors() else {"msg": "invalid request", "loc": ()}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return error_response(400, f"Invalid request: {first['msg']}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> Response:
        message = {404: "Unknown path; see /v1/models and /v1/chat/completions",
                   405: "Method not allowed"}.get(err.status_code, str(err.detail))
        return error_response(err.status_code, message, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> Response:
        return unexpected_error_response(err)


def unexpected_error_response(err: Exception) -> Response:
    """A 500 that names the exception's type, never its text or a stack trace (those go
    to the log)."""
    log.error("unhandled error", exc_info=err)
    return error_response(500, f"Internal error ({type(err).__name__}); see the gateway log")


def response_for_exception(err: Exception) -> Response:
    """What the handlers above answer for ``err``, for code that runs outside FastAPI's
    exception middleware (server/fast_lane.py)."""
    if isinstance(err, TandemError):
        return tandem_error_response(err)
    return unexpected_error_response(err)
