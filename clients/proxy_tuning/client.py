"""A proxy-tuned model as a chat client: ``base + alpha * (expert - anti_expert)``.

Composite: it is made of three configured models (looked up in ``bind``). Expert and
anti-expert are local llama.cpp models; their token scorers share the chat clients'
loaded weights. The base is local (a llama.cpp scorer) or remote (token-id
``/completions`` with logprobs). Each role renders the conversation with its own
template: the reference gives the chat expert its chat template and an instruction the
base never sees (``expert_system``).

The vocabulary check runs when the scorers are first built: the models must agree token
by token on the shared range (trailing padding rows are cut); a mismatch refuses the
model with a message naming both.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from clients.base import Capabilities, ChatBody, ChatClient, Readiness, register_backend
from clients.errors import ContextLengthExceeded, InvalidRequest, UpstreamError
from clients.llama_cpp.client import LlamaCppClient
from clients.llama_cpp.decoding import SamplingParams, TextAssembler, grammar_for
from clients.llama_cpp.scorer import LlamaScorer
from clients.openai_client import OpenAIClient
from clients.proxy_tuning.constraint import GrammarConstraint
from clients.proxy_tuning.decoder import DecodeStats, Parts, Prompts, ProxyDecoder, Sampling
from clients.proxy_tuning.vocab import check_vocabularies
from clients.remote_scorer import RemoteScorer

log = logging.getLogger("tandem.proxy_tuning")
UNSUPPORTED = ("tools", "logit_bias")


@dataclass
class _Built:
    parts: Parts
    llm: Any  # the expert's llama.cpp model: tokenizer and detokenizer for every role


@register_backend("proxy_tuning")
class ProxyTuningClient(ChatClient):
    capabilities = Capabilities(tools=False, json_schema=True, logprobs=True, local=False)
    composite = True

    def __init__(self, name: str, config) -> None:
        super().__init__(name)
        self.config = config
        self._clients: dict[str, ChatClient] = {}
        self._built: _Built | None = None
        self._build_task: asyncio.Task | None = None
        # At most `parallel` generations hold scoring slots; the rest wait their turn.
        # Each takes its slots (base, expert, anti-expert) while inside, so requests can
        # never each hold part of what they need and wait on one another.
        self._turns = asyncio.Semaphore(config.parallel)
        self._error: str | None = None
        self.stats = DecodeStats()  # summed over finished requests (benchmarks read it)

    def bind(self, clients: dict[str, ChatClient]) -> None:
        cfg = self.config
        self._clients = {role: clients[getattr(cfg, role)]
                         for role in ("base", "expert", "anti_expert")}
        base_local = isinstance(self._clients["base"], LlamaCppClient)
        self.capabilities = Capabilities(tools=False, json_schema=True, logprobs=True,
                                         local=base_local)

    @property
    def mode(self) -> str:
        if self.config.mode:
            return self.config.mode
        return "reference" if isinstance(self._clients["base"], LlamaCppClient) else "speculative"

    async def start(self) -> None:
        """Build the scorers and check the vocabularies as soon as the parts are loaded,
        so that a mismatch shows at start-up (log, /ready), not at the first request."""
        self._build_task = asyncio.create_task(self._build_in_background())

    async def _build_in_background(self) -> None:
        try:
            self._built = await self._build()
        except Exception as err:  # reported through readiness and every request
            self._error = f"proxy-tuned model '{self.name}' is unavailable: {err}"
            log.error("%s", self._error)

    async def close(self) -> None:
        if self._build_task is not None and not self._build_task.done():
            self._build_task.cancel()

    async def readiness(self) -> Readiness:
        if self._error:
            return Readiness(False, self._error)
        if self._built is None:
            return Readiness(False, "loading")
        states = await asyncio.gather(*(c.readiness() for c in self._clients.values()))
        down = [f"{role}: {s.detail}" for role, s in zip(self._clients, states) if not s.ready]
        return Readiness(not down, "; ".join(down) or "base, expert and anti-expert ready")

    def context_window(self) -> int | None:
        return self.config.n_ctx

    # -- building the scorers (first request) ------------------------------------------
    async def _parts(self) -> _Built:
        if self._built is None and self._build_task is not None:
            await asyncio.shield(self._build_task)
        if self._built is None:
            raise UpstreamError(self._error or f"proxy-tuned model '{self.name}' is not started",
                                status=503, code="model_not_loaded")
        return self._built

    async def _local_scorer(self, client: ChatClient) -> LlamaScorer:
        assert isinstance(client, LlamaCppClient)
        # three sessions per generation when one model plays several roles
        return await client.token_scorer(self.config.n_ctx, 3 * self.config.parallel)

    async def _build(self) -> _Built:
        cfg = self.config
        expert = await self._local_scorer(self._clients["expert"])
        anti = (expert if cfg.anti_expert == cfg.expert
                else await self._local_scorer(self._clients["anti_expert"]))
        base_client = self._clients["base"]
        mode = self.mode
        if isinstance(base_client, LlamaCppClient):
            base = (expert if cfg.base == cfg.expert
                    else await self._local_scorer(base_client))
        else:
            assert isinstance(base_client, OpenAIClient)
            base = RemoteScorer(cfg.base, base_client, expert.n_vocab,
                                None if mode == "reference" else cfg.base_top_k,
                                cfg.scoring_api, expert.llm)
        await check_vocabularies(self.name, {cfg.expert: expert, cfg.anti_expert: anti,
                                             cfg.base: base})
        parts = Parts(base=base, expert=expert, anti=anti, alpha=cfg.alpha,
                      schedule="speculative" if mode == "speculative" else "lockstep",
                      on_uncertified=cfg.on_uncertified, draft_tokens=cfg.draft_tokens,
                      stats=DecodeStats())
        return _Built(parts, expert.llm)

    # -- prompts ---------------------------------------------------------------------------
    def _render(self, role: str, template: str, messages: list[dict]) -> list[int]:
        """One role's prompt tokens. Remote bases are rendered with the expert's chat
        template (the models share a tokenizer family)."""
        client = self._clients[role]
        if not isinstance(client, LlamaCppClient):
            client = self._clients["expert"]
        assert isinstance(client, LlamaCppClient)
        if role == "expert" and self.config.expert_system:
            messages = [{"role": "system", "content": self.config.expert_system},
                        *[m for m in messages if m.get("role") != "system"]]
        if template == "plain":
            text = "\n\n".join(str(m.get("content") or "") for m in messages) + "\n"
            return client.tokenize_text(text)
        return client.prompt_tokens({"messages": messages})

    def _prompts(self, body: ChatBody) -> Prompts:
        cfg, msgs = self.config, body["messages"]
        return Prompts(base=self._render("base", cfg.base_template, msgs),
                       expert=self._render("expert", cfg.expert_template, msgs),
                       anti=self._render("anti_expert", cfg.anti_expert_template, msgs))

    def _check(self, body: ChatBody) -> None:
        for key in UNSUPPORTED:
            if body.get(key):
                raise InvalidRequest(f"model '{self.name}' (proxy-tuned) does not support "
                                     f"'{key}'", param=key)
        if (body.get("n") or 1) != 1:
            raise InvalidRequest(f"model '{self.name}' (proxy-tuned) returns one choice; "
                                 "n must be 1", param="n")

    # -- generation ------------------------------------------------------------------------
    def _constraint(self, llm, body: ChatBody) -> GrammarConstraint | None:
        """The response_format grammar over the fused distribution (worker thread)."""
        grammar = grammar_for(body.get("response_format"))
        return None if grammar is None else GrammarConstraint(llm, grammar)

    async def _events(self, body: ChatBody) -> AsyncIterator[tuple]:
        """("delta", text, logprob entries) ..., then ("finish", reason, prompt_tokens,
        completion_tokens). Logprobs are the fused distribution's (temperature 1)."""
        self._check(body)
        built = await self._parts()
        prompts = await asyncio.to_thread(self._prompts, body)
        n_ctx = self.config.n_ctx
        longest = max(len(prompts.base), len(prompts.expert), len(prompts.anti))
        wanted = body.get("max_completion_tokens") or body.get("max_tokens")
        if longest >= n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, your "
                f"messages resulted in {longest} tokens.")
        max_tokens = min(wanted or n_ctx, n_ctx - longest)
        temperature = body.get("temperature")
        sampling = Sampling(temperature=1.0 if temperature is None else float(temperature),
                            top_p=body.get("top_p") if body.get("top_p") is not None else 1.0,
                            seed=body.get("seed"), max_tokens=max_tokens)
        stop = body.get("stop") or []
        want_lp = bool(body.get("logprobs"))
        text = TextAssembler(built.llm, SamplingParams(
            max_tokens=max_tokens, stop=[stop] if isinstance(stop, str) else list(stop),
            logprobs=want_lp, top_logprobs=body.get("top_logprobs") or 0))
        parts = Parts(**{**built.parts.__dict__, "stats": DecodeStats()})
        reason = "length"
        rows: list = [None]

        def on_step(token: int, row) -> None:
            rows[0] = row

        async with self._turns:
            constraint = await asyncio.to_thread(self._constraint, built.llm, body)
            tokens = ProxyDecoder(parts).generate(prompts, sampling, constraint,
                                                  on_step if want_lp else None)
            try:
                async for token in tokens:
                    delta, finish = text.push(token, rows[0])
                    if delta is not None and (delta.text or delta.logprobs):
                        yield ("delta", delta.text, delta.logprobs)
                    if finish is not None:
                        reason = finish
                        break
            finally:
                await tokens.aclose()
                self.stats.add(parts.stats)
                if constraint is not None:
                    constraint.close()
        yield ("finish", reason, len(prompts.base), text.completion_tokens)

    async def chat(self, body: ChatBody) -> dict:
        pieces: list[str] = []
        entries: list[dict] = []
        async for event in self._events(body):
            if event[0] == "delta":
                pieces.append(event[1])
                entries.extend(event[2])
            else:
                _, reason, prompt, completion = event
        logprobs = {"content": entries} if body.get("logprobs") else None
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": self.name,
            "choices": [{"index": 0, "finish_reason": reason, "logprobs": logprobs,
                         "message": {"role": "assistant", "content": "".join(pieces)}}],
            "usage": _usage(prompt, completion),
        }

    async def chat_stream(self, body: ChatBody) -> AsyncIterator[dict]:
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list[dict], **extra) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": self.name, "choices": choices, **extra}

        events = self._events(body)
        first = await events.__anext__()  # errors before the first chunk raise here
        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])
        event = first
        while True:
            if event[0] == "delta":
                lp = {"content": event[2]} if body.get("logprobs") else None
                yield chunk([{"index": 0, "delta": {"content": event[1]}, "logprobs": lp,
                              "finish_reason": None}])
            else:
                _, reason, prompt, completion = event
                yield chunk([{"index": 0, "delta": {}, "logprobs": None,
                              "finish_reason": reason}])
                yield chunk([], usage=_usage(prompt, completion))
                return
            try:
                event = await events.__anext__()
            except StopAsyncIteration:
                return


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}

