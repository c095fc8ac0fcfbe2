"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with bilingual messages.

Clients written for OpenAI or vLLM show `error.message` to people, so it carries the catalogue text
("中文 / English"); `code` is the stable catalogue code for programs.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import StorageUnavailable, TuwenError
from service.messages import Message, msg

STORAGE_RETRY_SECONDS = 30

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    507: "insufficient_storage",
    504: "timeout_error",
}


class ApiError(Exception):
    """Raise inside a handler to answer with an OpenAI-style error."""

    def __init__(
        self,
        status: int,
        message: Message,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(str(message))
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}


def error_response(
    status: int, message: Message, *, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON response for an error."""
    body = {
        "error": {
            "message": str(message),
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": message.code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(api: FastAPI) -> None:
    """Make every error, including FastAPI's own validation errors, come out in OpenAI's shape."""

    @api.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param, headers=exc.headers)

    @api.exception_handler(TuwenError)
    async def _tuwen_error(_: Request, exc: TuwenError) -> JSONResponse:
        return error_response(422, exc.message)

    @api.exception_handler(StorageUnavailable)
    async def _storage(_: Request, exc: StorageUnavailable) -> JSONResponse:
        # 507 Insufficient Storage says exactly what is wrong; the rest (read-only, locked) is temporary.
        status = 507 if exc.kind == "disk_full" else 503
        return error_response(status, exc.message, headers={"Retry-After": str(STORAGE_RETRY_SECONDS)})

    @api.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        reason = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid"))
        if first.get("type") == "json_invalid":
            return error_response(400, msg("api_bad_json"))
        return error_response(400, msg("api_bad_request", reason=reason), param=where or None)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, msg("api_not_found", what=request.url.path))
        if exc.status_code == 405:
            message = msg("api_method_not_allowed", method=request.method, path=request.url.path)
            return error_response(405, message, headers=dict(exc.headers or {}))
        return error_response(exc.status_code, msg("api_bad_request", reason=str(exc.detail)))
