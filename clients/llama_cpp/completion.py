"""``/v1/completions`` for an in-process llama.cpp model.

Raw prompts (text, token ids, or a batch of either; no chat template) run through the
same batch engine as chat. Every logits row is reduced where it is read, in the engine
thread (``score_row``: the token's log-probability, rank and top-k), so nothing of
vocabulary size outlives a step unless the caller asked for the whole vocabulary.
Prompt positions are scored only for sequences that need them (``echo`` with
``logprobs``, or vLLM's ``prompt_logprobs``); Tandem's ``prompt_logprobs_from: i`` scores
only prompt tokens from index i on (earlier entries are null), so the KV of the tokens
before i - 1 may come from the prefix cache: a speculative verifier that re-sends a
growing context pays for its new tokens only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator

from clients.completions import (
    FULL_VOCABULARY,
    PositionScores,
    legacy_logprobs,
    prompt_list,
    prompt_logprobs,
    score_row,
    usage,
)
from clients.errors import InvalidRequest
from clients.llama_cpp.batch_engine import Sequence
from clients.llama_cpp.decoding import SamplingParams, sampling_from_body, seeded

if TYPE_CHECKING:
    from clients.llama_cpp.client import LlamaCppClient

DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for legacy completions


@dataclass
class _Prompt:
    tokens: list[int]
    text: str
    scores: list[PositionScores | None] = field(default_factory=list)  # per position

    def score(self, k: int):
        """The engine callback filling ``scores`` (row p scores prompt token p + 1)."""
        self.scores = [None] * len(self.tokens)

        def on_row(pos: int, row) -> None:
            self.scores[pos + 1] = score_row(row, self.tokens[pos + 1], k)

        return on_row


@dataclass
class _Plan:
    """A request resolved against the model: prompts tokenized, limits checked."""

    prompts: list[_Prompt]
    n: int
    echo: bool
    logprobs: int | None  # k for generated (and echoed) tokens
    prompt_logprobs: int | None
    as_ids: bool
    params: SamplingParams
    score_from: int = 0  # first prompt token index whose logprob is computed

    def choice(self, c: int) -> _Prompt:
        return self.prompts[c // self.n]


def _k(value: int | None, n_vocab: int) -> int | None:
    if value is None:
        return None
    return FULL_VOCABULARY if value < 0 or value >= n_vocab else value


def _widest(*ks: int | None) -> int | None:
    given = [k for k in ks if k is not None]
    if not given:
        return None
    return FULL_VOCABULARY if FULL_VOCABULARY in given else max(given)


def _tokens(client: "LlamaCppClient", index: int, prompt) -> _Prompt:
    llm = client._model.llm
    n_vocab = llm.n_vocab()
    where = "prompt" if index == 0 else f"prompt[{index}]"
    if isinstance(prompt, str):
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        text = prompt
    else:
        bad = next((t for t in prompt if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise InvalidRequest(f"{where}: token id {bad} is out of range for model "
                                 f"'{client.name}' (vocabulary of {n_vocab})", param="prompt")
        tokens = list(prompt)
        text = llm.detokenize(tokens, special=True).decode("utf-8", "replace")
    if not tokens:
        raise InvalidRequest(f"{where}: the prompt is empty", param="prompt")
    return _Prompt(tokens, text)


def plan(client: "LlamaCppClient", body: dict) -> _Plan:
    """Tokenize and check a validated body (CPU work: called in a worker thread)."""
    llm = client._model.llm
    n_vocab, n_ctx = llm.n_vocab(), client.config.n_ctx
    prompts = [_tokens(client, i, p) for i, p in enumerate(prompt_list(body.get("prompt")))]
    if not prompts:
        raise InvalidRequest("prompt: at least one prompt is required", param="prompt")
    wanted = body.get("max_tokens")
    wanted = DEFAULT_MAX_TOKENS if wanted is None else wanted
    for p in prompts:
        if len(p.tokens) + wanted > n_ctx:
            raise InvalidRequest(
                f"This model's maximum context length is {n_ctx} tokens. However, you "
                f"requested {len(p.tokens) + wanted} tokens ({len(p.tokens)} in the prompt, "
                f"{wanted} in the completion). Please reduce the length of the prompt or "
                "completion.", code="context_length_exceeded", param="prompt")
    k = _k(body.get("logprobs"), n_vocab)
    params = sampling_from_body(
        body, wanted, logprobs=k is not None, report_stop_token=True,
        score_token=None if k is None else (lambda token, row: score_row(row, token, k)))
    echo = bool(body.get("echo"))
    return _Plan(prompts, body.get("n") or 1, echo, k,
                 _k(body.get("prompt_logprobs"), n_vocab),
                 bool(body.get("return_tokens_as_token_ids")), params,
                 body.get("prompt_logprobs_from") or 0)


async def _start(client: "LlamaCppClient", body: dict) -> tuple[_Plan, AsyncIterator[tuple]]:
    await client.admit()
    p = await asyncio.to_thread(plan, client, body)
    prompt_k = _widest(p.prompt_logprobs, p.logprobs if p.echo else None)
    sequences = []
    for c in range(len(p.prompts) * p.n):
        prompt, i = p.choice(c), c % p.n
        # One sequence per prompt scores the prompt; the prompt's other choices read it.
        scorer = prompt.score(prompt_k) if prompt_k is not None and i == 0 else None
        sequences.append(Sequence(prompt.tokens, seeded(p.params, i, p.n), None, None,
                                  index=c, prompt_logits=scorer,
                                  score_from=max(0, p.score_from - 1)))
    return p, client.relay(sequences, sum(len(x.tokens) for x in p.prompts))


def _echo_part(p: _Plan, c: int) -> tuple[list[int], list[PositionScores | None]]:
    prompt = p.choice(c)
    return (prompt.tokens, prompt.scores or [None] * len(prompt.tokens)) if p.echo else ([], [])


async def complete(client: "LlamaCppClient", body: dict) -> dict:
    p, events = await _start(client, body)
    count = len(p.prompts) * p.n
    texts: list[list[str]] = [[] for _ in range(count)]
    scored: list[list[PositionScores]] = [[] for _ in range(count)]
    finish: list[str | None] = [None] * count
    totals = usage(0, 0)
    try:
        async for event in events:
            if event[0] == "delta":
                texts[event[1]].append(event[2].text)
                scored[event[1]].extend(event[2].logprobs)
            elif event[0] == "finish":
                finish[event[1]] = event[2]
            elif event[0] == "usage":
                totals = usage(event[1], event[2])
    finally:
        await events.aclose()

    def build() -> list[dict]:  # may build vocabulary-sized dicts: off the event loop
        choices = []
        for c in range(count):
            prompt = p.choice(c)
            choice = {"index": c, "text": (prompt.text if p.echo else "") + "".join(texts[c]),
                      "logprobs": None, "finish_reason": finish[c]}
            if p.logprobs is not None:
                tokens, scores = _echo_part(p, c)
                choice["logprobs"] = legacy_logprobs(
                    tokens + [s.token for s in scored[c]], scores + scored[c], p.logprobs,
                    client.token_text, p.as_ids)
            if p.prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs(
                    prompt.scores, p.prompt_logprobs, client.token_text)
            choices.append(choice)
        return choices

    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": client.name,
            "choices": await asyncio.to_thread(build), "usage": totals}


async def complete_stream(client: "LlamaCppClient", body: dict) -> AsyncIterator[dict]:
    p, events = await _start(client, body)
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    offsets = [0] * (len(p.prompts) * p.n)  # characters of each choice's text so far
    echoed: set[int] = set()

    def chunk(c: int, text: str, tokens: list[int], scores: list, finish=None) -> dict:
        lp = None
        if p.logprobs is not None and tokens:
            lp = legacy_logprobs(tokens, scores, p.logprobs, client.token_text, p.as_ids,
                                 offset=offsets[c])
            offsets[c] = lp["text_offset"][-1] + len(client.token_text(tokens[-1]))
        return {"id": cid, "object": "text_completion", "created": created,
                "model": client.name, "choices": [{"index": c, "text": text, "logprobs": lp,
                                                   "finish_reason": finish}]}

    try:
        async for event in events:
            kind, c = event[0], event[1]
            if kind in ("delta", "finish") and p.echo and c not in echoed:
                # The prompt is prefilled (and scored, by the prompt's first choice, which
                # the engine admits and prefills first) before any choice samples.
                echoed.add(c)
                yield chunk(c, p.choice(c).text, *_echo_part(p, c))
            if kind == "delta":
                records = event[2].logprobs
                args = (c, event[2].text, [s.token for s in records], records)
                # A whole-vocabulary dict per token is too much work for the event loop.
                yield (await asyncio.to_thread(chunk, *args) if p.logprobs == FULL_VOCABULARY
                       else chunk(*args))
            elif kind == "finish":
                yield chunk(c, "", [], [], finish=event[2])
            elif kind == "usage":
                yield {"id": cid, "object": "text_completion", "created": created,
                       "model": client.name, "choices": [], "usage": usage(event[1], event[2])}
    finally:
        await events.aclose()
