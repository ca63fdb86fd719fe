"""The OpenAPI document, including the plain Starlette routes (chat, completions,
responses, embeddings: they validate their own bodies, for speed)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.completion_schema import CompletionRequest
from server.embeddings import EmbeddingRequest
from server.responses_schema import ResponsesRequest
from server.schemas import ChatCompletionRequest

_ERROR = {"description": "OpenAI error object",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}


# The plain Starlette routes (they validate their own bodies), documented from their schemas.
_OPERATIONS = (
    ("/v1/chat/completions", "create_chat_completion",
     "Create a chat completion (JSON, or server-sent events with stream)", ChatCompletionRequest),
    ("/v1/completions", "create_completion",
     "Create a legacy completion: raw prompt or token ids, logprobs, echo, vLLM's "
     "prompt_logprobs (JSON, or server-sent events with stream)", CompletionRequest),
    ("/v1/responses", "create_response",
     "Create a response (Responses API, bridged through chat; typed server-sent events "
     "with stream)", ResponsesRequest),
    ("/v1/embeddings", "create_embedding",
     "Embed text or token ids (local llama.cpp, or passed through to the upstream)",
     EmbeddingRequest),
)


def install_openapi(app: FastAPI, model_names: list[str]) -> None:
    def build() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, op_id, summary, model in _OPERATIONS:
            request = model.model_json_schema(ref_template="#/components/schemas/{model}",
                                              by_alias=True)
            components.update(request.pop("$defs", {}))
            # The names this gateway answers to (anything else is a 404 model_not_found).
            request["properties"]["model"]["enum"] = model_names
            components[model.__name__] = request
            schema["paths"][path] = {"post": {
                "summary": summary, "operationId": op_id,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}},
                "responses": {"200": {"description": "JSON, or text/event-stream with stream"},
                              **{str(s): _ERROR for s in (400, 403, 404, 413, 429, 502, 503,
                                                         504)}},
            }}
        components["Error"] = _ERROR_SCHEMA
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
