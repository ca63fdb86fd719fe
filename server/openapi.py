"""The OpenAPI document, including the chat route (a plain Starlette route for speed)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.completion_schema import CompletionRequest
from server.schemas import ChatCompletionRequest

_ERROR = {"description": "OpenAI error object",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}


def install_openapi(app: FastAPI, model_names: list[str]) -> None:
    def build() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        request = ChatCompletionRequest.model_json_schema(
            ref_template="#/components/schemas/{model}", by_alias=True)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request.pop("$defs", {}))
        # The names this gateway answers to (anything else is a 404 model_not_found).
        request["properties"]["model"]["enum"] = model_names
        components["ChatCompletionRequest"] = request
        components["Error"] = _ERROR_SCHEMA
        legacy = CompletionRequest.model_json_schema(
            ref_template="#/components/schemas/{model}", by_alias=True)
        components.update(legacy.pop("$defs", {}))
        legacy["properties"]["model"]["enum"] = model_names
        components["CompletionRequest"] = legacy
        schema["paths"]["/v1/completions"] = {"post": {
            "summary": "Create a legacy completion: raw prompt or token ids, logprobs, echo, "
                       "vLLM's prompt_logprobs (JSON, or server-sent events with stream)",
            "operationId": "create_completion",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/CompletionRequest"}}}},
            "responses": {"200": {"description": "text_completion, or text/event-stream"},
                          **{str(s): _ERROR for s in (400, 404, 413, 429, 502, 503, 504)}},
        }}
        schema["paths"]["/v1/chat/completions"] = {"post": {
            "summary": "Create a chat completion (JSON, or server-sent events with stream)",
            "operationId": "create_chat_completion",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}},
            "responses": {"200": {"description": "chat.completion, or text/event-stream"},
                          **{str(s): _ERROR for s in (400, 404, 413, 429, 502, 503, 504)}},
        }}
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
