"""The legacy completions request (``POST /v1/completions``) as a pydantic schema.

OpenAI's fields plus the vLLM extensions a token-level client needs
(``prompt_logprobs``, ``return_tokens_as_token_ids``, ``top_k``, ``min_p``,
``repetition_penalty``). Like chat, validation is a strict check and the caller's own
dict travels on, so other vendor fields still reach an upstream unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, ValidationError, model_validator

from clients.errors import InvalidRequest
from server.schemas import StreamOptions, _Open, shaped_error

TokenId = Annotated[int, Field(ge=0)]
MAX_CHOICES = 128  # prompts x n, the sequences one request may start


class CompletionRequest(_Open):
    model: str = Field(min_length=1)
    prompt: Union[str, list[TokenId], list[str], list[list[TokenId]]]
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    best_of: int | None = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=-1)
    echo: bool | None = None
    suffix: str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None
    # vLLM extensions
    prompt_logprobs: int | None = Field(None, ge=-1)
    return_tokens_as_token_ids: bool | None = None
    # Tandem: score prompt tokens from this index on (null before); lets the KV of the
    # earlier tokens come from the prefix cache. Ignored by other servers.
    prompt_logprobs_from: int | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)

    @model_validator(mode="after")
    def _cross_field(self) -> "CompletionRequest":
        p = self.prompt
        if p == "" or p == [] or (isinstance(p, list) and any(x in ("", []) for x in p)):
            raise ValueError("prompt: empty prompts are not allowed")
        count = 1 if isinstance(p, str) or isinstance(p[0], int) else len(p)
        if count * (self.n or 1) > MAX_CHOICES:
            raise ValueError(f"prompt: {count} prompts x n={self.n} is over "
                             f"{MAX_CHOICES} choices per request")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 is only allowed with echo")
        if self.stream and self.prompt_logprobs is not None:
            raise ValueError("prompt_logprobs: not available with stream (as in vLLM)")
        if self.suffix:
            raise ValueError("suffix: not supported")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise ValueError("best_of: only best_of == n is supported")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop: at most 4 stop sequences")
        for key in self.logit_bias or {}:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias: key '{key}' is not a token id")
        return self


_PROMPT_SHAPES = ("prompt: must be a string, a list of token ids (integers >= 0), or a list "
                  "of strings or of token-id lists")


def validate_completion_request(body: Any, max_logprobs: int) -> CompletionRequest:
    """Validate a parsed JSON body against the schema and the server's logprobs cap;
    raise ``InvalidRequest`` naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        req = CompletionRequest.model_validate(body)
    except ValidationError as err:
        raise shaped_error(err, CompletionRequest.model_fields, "prompt", _PROMPT_SHAPES) from None
    for name in ("logprobs", "prompt_logprobs"):
        k = getattr(req, name)
        if k is None or max_logprobs == -1:
            continue
        if k == -1 or k > max_logprobs:
            asked = "the whole vocabulary (-1)" if k == -1 else str(k)
            raise InvalidRequest(
                f"{name}: {asked} is over this server's limit of {max_logprobs} "
                "(server.max_logprobs; -1 there allows the whole vocabulary)", param=name)
    return req
