"""The chat-client interface every backend implements, and the registry of backends.

A request is the validated OpenAI chat body as a plain dict (the lingua franca of
every OpenAI-compatible server); a response is the OpenAI completion dict, or an
async iterator of chunk dicts. Backends translate with pure functions of their own.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from clients.errors import InvalidRequest

ChatBody = dict[str, Any]
# Body key a local backend reads as the beginning of the assistant's answer.
ASSISTANT_PREFIX = "tandem_assistant_prefix"
# Tandem's own request fields: read by the gateway, never sent to an upstream.
GATEWAY_FIELDS = frozenset({ASSISTANT_PREFIX, "private_context", "privacy", "conversation_id"})


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared up front so unsupported requests fail clearly."""

    tools: bool = False
    json_schema: bool = True
    logprobs: bool = True
    local: bool = False  # runs on this machine (private data may go there)
    completions: bool = False  # serves legacy /v1/completions (raw prompts, token ids)


@dataclass
class Readiness:
    ready: bool
    detail: str


class ChatClient(abc.ABC):
    """One model the gateway can send chat requests to."""

    capabilities: Capabilities = Capabilities()

    def __init__(self, name: str) -> None:
        self.name = name

    #: Built from other configured models (proxy-tuning, collaborations): rebuilt on every
    #: reload, since the models it is made of may have changed.
    composite: bool = False

    def bind(self, clients: "dict[str, ChatClient]") -> None:
        """Called once every configured client exists; composite clients look up the
        models they are made of here."""

    async def start(self) -> None:
        """Load or connect; called once at start-up, may run in the background."""

    async def close(self) -> None:
        """Release threads, sockets and memory."""

    @abc.abstractmethod
    async def readiness(self) -> Readiness:
        """Whether the model can answer now (loaded, upstream reachable)."""

    @abc.abstractmethod
    async def chat(self, body: ChatBody) -> dict:
        """A whole chat completion (``stream`` false)."""

    @abc.abstractmethod
    def chat_stream(self, body: ChatBody) -> AsyncIterator[dict]:
        """Chat completion chunks; errors before the first chunk raise from the first
        ``__anext__`` so that a caller can still fall back to another model."""

    async def complete(self, body: ChatBody) -> dict:
        """A legacy completion (``/v1/completions`` body, validated; stream false).
        Only backends with ``capabilities.completions`` override this."""
        raise InvalidRequest(f"model '{self.name}' cannot serve /v1/completions",
                             param="model", code="completions_unsupported")

    def complete_stream(self, body: ChatBody) -> AsyncIterator[dict]:
        """Legacy completion chunks (``text_completion`` objects), the last one with
        ``choices: []`` and the usage; errors before the first chunk raise from the
        first ``__anext__``."""
        raise InvalidRequest(f"model '{self.name}' cannot serve /v1/completions",
                             param="model", code="completions_unsupported")

    async def embed(self, body: ChatBody) -> dict:
        """An OpenAI embeddings response for a validated ``/v1/embeddings`` body; each
        ``embedding`` a list of floats, a float32 array or base64 (the server writes the
        format the caller asked for). Backends override this, or register a function for
        their class (``register_embedder``); the others cannot embed, and say so."""
        for cls in type(self).__mro__:
            fn = _EMBEDDERS.get(cls)
            if fn is not None:
                return await fn(self, body)
        raise InvalidRequest(f"model '{self.name}' cannot create embeddings (name a "
                             "llama_cpp or openai model)", param="model",
                             code="embeddings_unsupported")

    def continuation_body(self, body: ChatBody, partial: str) -> ChatBody | None:
        """A request that continues an assistant answer already begun with ``partial``
        (used when another model failed mid-stream), or None when this backend cannot."""
        return None

    def queue_depth(self) -> int:
        """Requests waiting for this model (0 for remote backends)."""
        return 0

    def context_window(self) -> int | None:
        return None


ClientFactory = Callable[[str, Any], ChatClient]
_BACKENDS: dict[str, ClientFactory] = {}
EmbedFunction = Callable[[Any, ChatBody], Awaitable[dict]]
_EMBEDDERS: dict[type, EmbedFunction] = {}


def register_embedder(cls: type) -> Callable[[EmbedFunction], EmbedFunction]:
    """``@register_embedder(LlamaCppClient)``: ``ChatClient.embed`` for a backend whose
    embeddings live in a file of their own."""

    def deco(fn: EmbedFunction) -> EmbedFunction:
        _EMBEDDERS[cls] = fn
        return fn

    return deco


def register_backend(kind: str) -> Callable[[ClientFactory], ClientFactory]:
    """Class decorator: ``@register_backend("llama_cpp")``."""

    def deco(factory: ClientFactory) -> ClientFactory:
        _BACKENDS[kind] = factory
        return factory

    return deco


# Backends whose modules need heavy optional libraries (torch): imported only when a
# configured model uses them, so a gateway without them never loads them.
_LAZY_BACKENDS = {"gpu_proxy_tuning": "clients.gpu.client"}


def build_client(name: str, config: Any) -> ChatClient:
    """Construct the client for one configured model (nothing is loaded yet)."""
    # Import the built-in backends so that they register themselves.
    from clients import openai_client  # noqa: F401
    from clients.llama_cpp import client as _llama_cpp  # noqa: F401
    from clients.llama_cpp import embeddings as _llama_embeddings  # noqa: F401
    from clients.proxy_tuning import client as _proxy_tuning  # noqa: F401

    if config.backend in _LAZY_BACKENDS:
        import importlib

        importlib.import_module(_LAZY_BACKENDS[config.backend])
    try:
        factory = _BACKENDS[config.backend]
    except KeyError:
        raise ValueError(f"models.{name}.backend: unknown backend '{config.backend}'") from None
    return factory(name, config)
