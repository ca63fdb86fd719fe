"""A GGUF model run in-process by llama.cpp, as a chat client.

Concurrent requests are decoded together by the model's batch engine (one thread owns
the llama.cpp context); beyond ``parallel`` active sequences they wait in a FIFO queue
(never dropped; 429 only past ``max_queue``). The event loop only ever awaits. A caller
that goes away sets the cancel flag, checked by the engine at every step.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import AsyncIterator

from opentelemetry import context as otel_context
from opentelemetry import trace

from clients.base import (
    ASSISTANT_PREFIX,
    Capabilities,
    ChatBody,
    ChatClient,
    Readiness,
    register_backend,
)
from clients.errors import ContextLengthExceeded, InvalidRequest, Overloaded, UpstreamError
from clients.llama_cpp.batch_engine import BatchEngine, Sequence
from clients.llama_cpp import chat as chat_shapes
from clients.llama_cpp import completion, weights
from clients.llama_cpp.decoding import SamplingParams, grammar_for, sampling_from_body, seeded
from clients.llama_cpp.weights import Lora
from clients.llama_cpp.prompt import template_messages, template_supports_tools
from clients.llama_cpp.tools import ToolPlan, tool_plan

_TRACER = trace.get_tracer("tandem")  # no-op spans without a provider (server/tracing.py)


class _Loaded:
    """What exists once the model file is loaded (built in the worker thread)."""

    def __init__(self, llm, engine: BatchEngine, formatter, tools_ok: bool,
                 lora: Lora | None) -> None:
        self.llm = llm
        self.lora = lora  # applied to this client's contexts only (the weights are shared)
        self.engine = engine
        self.formatter = formatter
        self.tools_ok = tools_ok


@register_backend("llama_cpp")
class LlamaCppClient(ChatClient):
    capabilities = Capabilities(tools=True, json_schema=True, logprobs=True, local=True,
                                completions=True)

    def __init__(self, name: str, config) -> None:
        super().__init__(name)
        self.config = config
        self.max_queue = config.max_queue
        self._model: _Loaded | None = None
        self._load_error: str | None = None
        self._load_task: asyncio.Task | None = None
        self.model_path: str | None = None
        self._scorer = None  # LlamaScorer, built on first use by a composite client
        self._scorer_lock = asyncio.Lock()
        self._pieces: dict[int, str] = {}

    @property
    def n_threads(self) -> int:
        """llama.cpp threads for every context on this model: configured, else all cores."""
        return self.config.n_threads or os.cpu_count() or 1

    # -- lifecycle ---------------------------------------------------------------------
    def _load(self) -> None:
        from clients.model_store import resolve

        cfg = self.config
        self.model_path = str(resolve(cfg.model))
        threads = self.n_threads
        # The Llama object provides weights, vocabulary and metadata, shared by every
        # configured model on the same file; decoding runs in the batch engine's own
        # multi-sequence context, which carries this model's adapter, if any.
        llm = weights.acquire(self.model_path, threads, cfg.seed)
        try:
            lora = (weights.adapter(llm, str(Path(cfg.lora).expanduser()), cfg.lora_scale)
                    if cfg.lora else None)
            self._model = self._finish_load(llm, lora, threads)
        except BaseException:
            weights.release(llm)
            raise

    def _finish_load(self, llm, lora: Lora | None, threads: int) -> _Loaded:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        cfg = self.config
        template = cfg.chat_template or llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise RuntimeError(f"{self.model_path} has no chat template; set chat_template")
        eos, bos = llm.token_eos(), llm.token_bos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        )
        engine = BatchEngine(llm, cfg.n_ctx, cfg.parallel, cfg.n_batch, threads, self.name,
                             lora=lora)
        return _Loaded(llm, engine, formatter, template_supports_tools(template), lora)

    async def start(self) -> None:
        self._load_task = asyncio.create_task(self._load_in_thread())

    async def _load_in_thread(self) -> None:
        try:
            await asyncio.to_thread(self._load)
        except Exception as err:  # reported through readiness and every request
            self._load_error = f"local model '{self.name}' failed to load: {err}"

    async def _loaded(self) -> _Loaded:
        """The loaded model; requests that arrive during the load wait for it."""
        if self._model is None and self._load_task is not None:
            await asyncio.shield(self._load_task)
        if self._model is None:
            raise UpstreamError(self._load_error or f"local model '{self.name}' is not loaded",
                                status=503, code="model_not_loaded")
        return self._model

    async def close(self) -> None:
        if self._scorer is not None:
            await self._scorer.aclose()
        if self._model is not None:
            await asyncio.to_thread(self._model.engine.close)
            weights.release(self._model.llm)
            self._model = None

    async def readiness(self) -> Readiness:
        if self._model is not None:
            return Readiness(True, f"loaded {self.model_path}")
        if self._load_error:
            return Readiness(False, self._load_error)
        return Readiness(False, "loading")

    def queue_depth(self) -> int:
        return self._model.engine.waiting() if self._model else 0

    def continuation_body(self, body: ChatBody, partial: str) -> ChatBody | None:
        """The chat template's generation prompt followed by ``partial``: the model goes
        on with the same answer. ``max_tokens`` shrinks by a rough count of what was sent."""
        out = {**body, ASSISTANT_PREFIX: (body.get(ASSISTANT_PREFIX) or "") + partial}
        for key in ("max_completion_tokens", "max_tokens"):
            if body.get(key):
                out[key] = max(1, body[key] - max(1, len(partial) // 4))
        return out

    def context_window(self) -> int | None:
        return self.config.n_ctx

    # -- token-level access (proxy-tuning) -------------------------------------------------
    async def token_scorer(self, n_ctx: int, n_seq: int):
        """A token scorer on this model's weights with a context of its own (built once;
        the first caller's sizes win)."""
        from clients.llama_cpp.scorer import LlamaScorer

        async with self._scorer_lock:
            if self._scorer is None:
                m = await self._loaded()
                threads = self.n_threads
                self._scorer = await asyncio.to_thread(
                    LlamaScorer, self.name, m.llm, n_ctx, n_seq, self.config.n_batch, threads,
                    m.lora)
            return self._scorer

    def tokenize_text(self, text: str) -> list[int]:
        assert self._model is not None
        return self._model.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def prompt_tokens(self, body: ChatBody) -> list[int]:
        """The chat template's rendering of ``body`` as token ids (worker thread)."""
        return self._prepare(body)[0]

    # -- translation (runs in the worker: it tokenizes) ----------------------------------
    def _prepare(self, body: ChatBody) -> tuple[list[int], SamplingParams, ToolPlan | None]:
        m = self._model
        assert m is not None
        tools = tool_plan(body, self.name, m.tools_ok)
        try:
            rendered = m.formatter(
                messages=template_messages(body["messages"]),
                tools=body["tools"] if tools else None,
            )
        except InvalidRequest:
            raise
        except Exception as err:  # template errors (e.g. roles must alternate)
            raise InvalidRequest(f"messages cannot be rendered by the chat template: {err}",
                                 param="messages") from None
        text = rendered.prompt + (body.get(ASSISTANT_PREFIX) or "")
        prompt = m.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        n_ctx = self.config.n_ctx
        wanted = body.get("max_completion_tokens") or body.get("max_tokens")
        if len(prompt) >= n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, your "
                f"messages resulted in {len(prompt)} tokens."
            )
        if wanted is not None and len(prompt) + wanted > n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                f"{len(prompt) + wanted} tokens ({len(prompt)} in the messages, {wanted} in the "
                "completion). Please reduce the length of the messages or completion."
            )
        params = sampling_from_body(
            body, wanted if wanted is not None else n_ctx - len(prompt),
            logprobs=bool(body.get("logprobs")), top_logprobs=body.get("top_logprobs") or 0,
            grammar=grammar_for(body.get("response_format")))
        if tools is not None:
            params.stop = [*params.stop, *tools.stops()]
        return prompt, params, tools

    # -- the bridge to the engine thread ----------------------------------------------------
    async def _run(self, body: ChatBody) -> AsyncIterator[tuple]:
        """Submit the request's ``n`` sequences and relay their events to the event loop.

        Yields ("tools", ToolPlan | None) first, then ("delta", i, Delta) / ("finish", i,
        reason, n) as they come, then ("usage", prompt_tokens, completion_tokens, cached).
        """
        await self.admit()
        # Template rendering and tokenization are CPU work: off the event loop.
        prompt, params, tools = await asyncio.to_thread(self._prepare, body)
        n = body.get("n") or 1
        sequences = [Sequence(prompt, seeded(params, index, n), None, None, index=index)
                     for index in range(n)]
        yield ("tools", tools)
        relay = self.relay(sequences, len(prompt))
        try:
            async for event in relay:
                yield event
        finally:
            await relay.aclose()  # cancels what still runs when the caller left

    async def admit(self) -> _Loaded:
        """The loaded model, or 429 when too many requests already wait for it."""
        model = await self._loaded()
        if model.engine.waiting() >= self.max_queue:
            raise Overloaded(
                f"local model '{self.name}' has {model.engine.waiting()} requests waiting; "
                "retry later", headers={"retry-after": "1"},
            )
        return model

    async def relay(self, sequences: list[Sequence], prompt_tokens: int) -> AsyncIterator[tuple]:
        """Submit ``sequences`` (their ``emit``/``cancel`` are set here) and yield their
        events: ("delta", i, Delta) / ("finish", i, reason, n) as they come, then
        ("usage", prompt_tokens, completion_tokens, cached_tokens): cached counts, per
        prompt, the most any of its sequences took from the prefix cache. Leaving early
        cancels the rest."""
        engine = self._model.engine
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # loop closed: the caller is long gone
                cancel.set()

        for seq in sequences:
            seq.emit, seq.cancel = emit, cancel
        parent, submitted, wall_ns = otel_context.get_current(), time.perf_counter(), time.time_ns()
        engine.submit_many(sequences)
        n = len(sequences)
        finished, completion_tokens = 0, 0
        try:
            while finished < n:
                event = await events.get()
                if parent is not None:  # the first event: every sequence has its slot
                    self._trace_queue_wait(sequences, parent, submitted, wall_ns)
                    parent = None
                if event[0] == "error":
                    raise UpstreamError(f"local model '{self.name}' failed: {event[1]}",
                                        status=500, retryable=False)
                if event[0] == "finish":
                    finished += 1
                    completion_tokens += event[3]
                yield event
            cached: dict[int, int] = {}  # sequences of one prompt share its token list
            for seq in sequences:
                cached[id(seq.prompt)] = max(cached.get(id(seq.prompt), 0), seq.reused)
            yield ("usage", prompt_tokens, completion_tokens, sum(cached.values()))
        finally:
            cancel.set()  # no-op when all finished; stops the rest when the caller left

    def _trace_queue_wait(self, sequences: list[Sequence], parent, submitted: float,
                          wall_ns: int) -> None:
        """The wait for a slot as a span under the upstream attempt that asked (the
        times are the engine thread's: submitted, and the first admission)."""
        admitted = min((s.admitted_at for s in sequences if s.admitted_at), default=submitted)
        span = _TRACER.start_span("tandem.local.queue_wait", context=parent, start_time=wall_ns,
                                  attributes={"tandem.model": self.name,
                                              "tandem.sequences": len(sequences)})
        span.end(end_time=wall_ns + int(max(0.0, admitted - submitted) * 1e9))

    def token_text(self, token: int) -> str:
        """One token's text, special tokens spelled out (logprobs, vLLM's decoded_token)."""
        text = self._pieces.get(token)
        if text is None:
            piece = self._model.llm.detokenize([token], special=True)
            text = self._pieces[token] = piece.decode("utf-8", "replace")
        return text

    # -- OpenAI shapes --------------------------------------------------------------------
    async def complete(self, body: ChatBody) -> dict:
        return await completion.complete(self, body)

    def complete_stream(self, body: ChatBody) -> AsyncIterator[dict]:
        return completion.complete_stream(self, body)

    async def chat(self, body: ChatBody) -> dict:
        return await chat_shapes.chat(self, body)

    def chat_stream(self, body: ChatBody) -> AsyncIterator[dict]:
        return chat_shapes.chat_stream(self, body)
