"""Proxy-tuning on one GPU as a chat model (``backend: gpu_proxy_tuning``).

Base, expert and anti-expert are Hugging Face Llama checkpoints (config.json +
safetensors) loaded into the engine of clients/gpu/engine.py; the expert and the
anti-expert must have one shape (they run stacked). All three see one prompt, rendered
by the expert's chat template (or ``chat_template``), and must share a tokenizer: a
mismatch on the shared range fails the load with a message naming the first token that
differs. torch, transformers and the engine are imported in the loading thread, so
configuring this backend is what makes Tandem import them.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from typing import Any, AsyncIterator

from clients.base import ASSISTANT_PREFIX, Capabilities, ChatBody, ChatClient, Readiness, \
    register_backend
from clients.errors import ContextLengthExceeded, InvalidRequest, Overloaded, UpstreamError
from clients.gpu.scheduler import Scheduler, Sequence


def check_tokenizers(model: str, tokenizers: dict[str, Any]) -> None:
    """Refuse the triple unless every tokenizer agrees with the first, id by id."""
    from clients.proxy_tuning.vocab import VocabularyMismatch

    items = list(tokenizers.items())
    ref_name, ref = items[0]
    ref_tokens = ref.convert_ids_to_tokens(list(range(len(ref))))
    for name, tok in items[1:]:
        n = min(len(ref), len(tok))
        other = tok.convert_ids_to_tokens(list(range(n)))
        bad = next((i for i in range(n) if ref_tokens[i] != other[i]), None)
        if bad is not None:
            raise VocabularyMismatch(
                f"proxy-tuned model '{model}': '{ref_name}' and '{name}' do not share a "
                f"vocabulary (token {bad} is {ref_tokens[bad]!r} in '{ref_name}' and "
                f"{other[bad]!r} in '{name}'). Base, expert and anti-expert must use the "
                "same tokenizer.")


class _Loaded:
    def __init__(self, tokenizer, scheduler: Scheduler, capacity: int) -> None:
        self.tokenizer, self.scheduler, self.capacity = tokenizer, scheduler, capacity


@register_backend("gpu_proxy_tuning")
class GpuProxyTuningClient(ChatClient):
    capabilities = Capabilities(tools=False, json_schema=False, logprobs=False, local=True)

    def __init__(self, name: str, config) -> None:
        super().__init__(name)
        self.config = config
        self._model: _Loaded | None = None
        self._load_error: str | None = None
        self._load_task: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def _load(self) -> _Loaded:
        import torch
        from transformers import AutoTokenizer

        from clients.gpu.engine import ProxyEngine
        from clients.gpu.llama import LlamaStack, compiled_kernels, read_shape

        cfg = self.config
        paths = {"base": cfg.base, "expert": cfg.expert, "anti_expert": cfg.anti_expert}
        toks = {role: AutoTokenizer.from_pretrained(p) for role, p in paths.items()}
        check_tokenizers(self.name, toks)
        tokenizer = toks["expert"]
        if cfg.chat_template:
            tokenizer.chat_template = cfg.chat_template
        if not tokenizer.chat_template:
            raise RuntimeError(f"{cfg.expert} has no chat template; set chat_template")
        shapes = {role: read_shape(p) for role, p in paths.items()}
        if shapes["expert"] != shapes["anti_expert"]:
            raise RuntimeError("expert and anti_expert must have the same architecture")
        dtype = getattr(torch, cfg.dtype)
        cuda = cfg.device.startswith("cuda")
        if cuda and not torch.cuda.is_available():
            raise RuntimeError("no CUDA device is visible to torch")
        base = LlamaStack(shapes["base"], [cfg.base], cfg.device, dtype)
        pair = LlamaStack(shapes["expert"], [cfg.expert, cfg.anti_expert], cfg.device, dtype)
        engine = ProxyEngine(base, pair, cfg.alpha, slots=cfg.parallel, capacity=cfg.n_ctx,
                             kernels=compiled_kernels() if cuda else None)
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        scheduler = Scheduler(engine, tokenizer, eos, cfg.speculative, cfg.max_draft,
                              self.name)
        return _Loaded(tokenizer, scheduler, cfg.n_ctx)

    async def start(self) -> None:
        self._load_task = asyncio.create_task(self._load_in_thread())

    async def _load_in_thread(self) -> None:
        try:
            self._model = await asyncio.to_thread(self._load)
        except ModuleNotFoundError as err:
            self._load_error = (f"GPU model '{self.name}' needs torch and transformers "
                                f"(pip install 'tandem-gateway[gpu]'): {err}")
        except Exception as err:  # reported through readiness and every request
            self._load_error = f"GPU model '{self.name}' failed to load: {err}"

    async def _loaded(self) -> _Loaded:
        if self._model is None and self._load_task is not None:
            await asyncio.shield(self._load_task)
        if self._model is None:
            raise UpstreamError(self._load_error or f"GPU model '{self.name}' is not loaded",
                                status=503, code="model_not_loaded")
        return self._model

    async def close(self) -> None:
        if self._model is not None:
            await asyncio.to_thread(self._model.scheduler.close)

    async def readiness(self) -> Readiness:
        if self._model is not None:
            return Readiness(True, f"loaded {self.config.base} + {self.config.expert}")
        return Readiness(False, self._load_error or "loading")

    def queue_depth(self) -> int:
        return self._model.scheduler.waiting() if self._model else 0

    def context_window(self) -> int | None:
        return self.config.n_ctx

    # -- translation ---------------------------------------------------------------------
    def _prepare(self, model: _Loaded, body: ChatBody) -> tuple[list[int], dict]:
        for key, what in (("tools", "tools"), ("logprobs", "logprobs")):
            if body.get(key):
                raise InvalidRequest(f"{what} are not supported by GPU proxy-tuned model "
                                     f"'{self.name}'", param=key)
        fmt = (body.get("response_format") or {}).get("type", "text")
        if fmt != "text":
            raise InvalidRequest(f"response_format {fmt!r} is not supported by GPU "
                                 f"proxy-tuned model '{self.name}'", param="response_format")
        tok = model.tokenizer
        try:
            text = tok.apply_chat_template(body["messages"], tokenize=False,
                                           add_generation_prompt=True)
        except Exception as err:  # template errors (roles must alternate, ...)
            raise InvalidRequest(f"messages cannot be rendered by the chat template: {err}",
                                 param="messages") from None
        text += body.get(ASSISTANT_PREFIX) or ""
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        n_ctx = model.capacity - 1
        wanted = body.get("max_completion_tokens") or body.get("max_tokens")
        if len(prompt) >= n_ctx or (wanted is not None and len(prompt) + wanted > n_ctx):
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, you "
                f"requested {len(prompt) + (wanted or 0)} tokens ({len(prompt)} in the "
                f"messages, {wanted or 0} in the completion).")
        stop = body.get("stop") or []
        temp = body.get("temperature")
        params = dict(
            max_tokens=wanted if wanted is not None else n_ctx - len(prompt),
            temperature=1.0 if temp is None else float(temp),
            top_p=1.0 if body.get("top_p") is None else float(body["top_p"]),
            seed=body["seed"] if body.get("seed") is not None else random.getrandbits(31),
            stop=[stop] if isinstance(stop, str) else list(stop))
        return prompt, params

    async def _run(self, body: ChatBody) -> AsyncIterator[tuple]:
        """Events of the request's ``n`` sequences: ("delta", i, text), ("finish", i,
        reason, tokens), then ("usage", prompt_tokens, completion_tokens)."""
        model = await self._loaded()
        if model.scheduler.waiting() >= self.config.max_queue:
            raise Overloaded(f"GPU model '{self.name}' has {model.scheduler.waiting()} "
                             "requests waiting; retry later", headers={"retry-after": "1"})
        prompt, params = await asyncio.to_thread(self._prepare, model, body)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        n = body.get("n") or 1
        for i in range(n):
            def emit(event: tuple, i: int = i) -> None:
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (event[0], i, *event[1:]))
                except RuntimeError:  # loop closed: the caller is long gone
                    cancel.set()
            model.scheduler.submit(Sequence(prompt, emit=emit, cancel=cancel,
                                            **{**params, "seed": params["seed"] + i}))
        finished, completion = 0, 0
        try:
            while finished < n:
                event = await events.get()
                if event[0] == "error":
                    raise UpstreamError(f"GPU model '{self.name}' failed: {event[2]}",
                                        status=500, retryable=False)
                if event[0] == "finish":
                    finished += 1
                    completion += event[3]
                yield event
            yield ("usage", len(prompt), completion)
        finally:
            cancel.set()

    # -- OpenAI shapes ------------------------------------------------------------------------
    async def chat(self, body: ChatBody) -> dict:
        n = body.get("n") or 1
        texts: list[list[str]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        usage = _usage(0, 0)
        async for event in self._run(body):
            if event[0] == "delta":
                texts[event[1]].append(event[2])
            elif event[0] == "finish":
                finish[event[1]] = event[2]
            elif event[0] == "usage":
                usage = _usage(event[1], event[2])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": self.name,
            "choices": [{"index": i, "message": {"role": "assistant",
                                                 "content": "".join(texts[i])},
                         "logprobs": None, "finish_reason": finish[i]} for i in range(n)],
            "usage": usage,
        }

    async def chat_stream(self, body: ChatBody) -> AsyncIterator[dict]:
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        began: set[int] = set()

        def chunk(choices: list[dict], **extra) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": self.name, "choices": choices, **extra}

        async for event in self._run(body):
            kind = event[0]
            if kind in ("delta", "finish") and event[1] not in began:
                began.add(event[1])
                yield chunk([{"index": event[1], "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}])
            if kind == "delta":
                yield chunk([{"index": event[1], "delta": {"content": event[2]},
                              "logprobs": None, "finish_reason": None}])
            elif kind == "finish":
                yield chunk([{"index": event[1], "delta": {}, "logprobs": None,
                              "finish_reason": event[2]}])
            elif kind == "usage":
                yield chunk([], usage=_usage(event[1], event[2]))


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}
