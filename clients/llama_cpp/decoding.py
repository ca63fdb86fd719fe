"""Per-sequence decoding pieces: sampling parameters, the sampler chain, and turning
sampled tokens into text (UTF-8 split across tokens, stop strings that never leak a
partial match, logprobs read from llama.cpp's logits row without ``logits_all``)."""

from __future__ import annotations

import codecs
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import llama_cpp
import numpy as np

from clients.errors import InvalidRequest
from clients.llama_cpp.internals import is_end_of_generation


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = whole vocabulary (OpenAI semantics)
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: dict[int, float] | None = None
    grammar: "llama_cpp.LlamaGrammar | None" = None
    # With ``logprobs``: (token, logits row) -> the record a delta carries; None gives
    # the chat format. /v1/completions passes its own (ids and ranks, legacy format).
    score_token: Callable[[int, np.ndarray], Any] | None = None
    # /v1/completions reports the end-of-generation token's logprob and counts it, as
    # vLLM does: a scorer asking "what comes next?" must get an answer when it is the end.
    report_stop_token: bool = False


def seeded(params: SamplingParams, index: int, n: int) -> SamplingParams:
    """The parameters of choice ``index`` of ``n``: its own seed, so choices differ."""
    if n == 1 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=params.seed + index)


def sampling_from_body(body: dict, max_tokens: int, **extra) -> SamplingParams:
    """The OpenAI/vLLM sampling fields of a chat or completions body (``extra``: what
    only one endpoint sets, such as logprobs or a grammar)."""
    stop = body.get("stop") or []
    bias = body.get("logit_bias")
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=body.get("top_k") or 0,
        min_p=body.get("min_p") or 0.0,
        presence_penalty=body.get("presence_penalty") or 0.0,
        frequency_penalty=body.get("frequency_penalty") or 0.0,
        repeat_penalty=body.get("repetition_penalty") or 1.0,
        seed=body.get("seed"),
        stop=[stop] if isinstance(stop, str) else list(stop),
        logit_bias={int(t): float(v) for t, v in bias.items()} if bias else None,
        **extra,
    )


@dataclass
class Delta:
    text: str
    logprobs: list[dict]


class StopBuffer:
    """Holds back text that might be the start of a stop string; cuts at the first match."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return (text safe to emit now, whether a stop string matched)."""
        self.held += text
        if not self.stops:
            out, self.held = self.held, ""
            return out, False
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.held = self.held[:cut], ""
            return out, True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.held)), keep, -1):
                if self.held.endswith(s[:k]):
                    keep = k
                    break
        out = self.held[: len(self.held) - keep]
        self.held = self.held[len(self.held) - keep :]
        return out, False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float32, copy=True)
    x -= x.max()
    x -= np.log(np.exp(x).sum())
    return x


def _token_entry(llm: llama_cpp.Llama, token: int, logprob: float) -> dict:
    piece = llm.detokenize([token], special=False)
    return {
        "token": piece.decode("utf-8", "replace"),
        "logprob": float(logprob),
        "bytes": list(piece),
    }


def _logprob_entry(llm: llama_cpp.Llama, token: int, logits: np.ndarray, top: int) -> dict:
    lp = _log_softmax(logits)
    entry = _token_entry(llm, token, lp[token])
    tops = []
    if top > 0:
        idx = np.argpartition(-lp, top - 1)[:top]
        idx = idx[np.argsort(-lp[idx])]
        tops = [_token_entry(llm, int(t), lp[t]) for t in idx]
    entry["top_logprobs"] = tops
    return entry


def plain_greedy(p: SamplingParams) -> bool:
    """Greedy with nothing that reshapes the logits: an argmax over the row suffices."""
    return (p.temperature <= 0 and p.grammar is None and not p.logit_bias
            and p.repeat_penalty == 1.0 and not p.frequency_penalty and not p.presence_penalty)


def build_sampler(llm: llama_cpp.Llama, p: SamplingParams):
    """llama.cpp's sampler chain for one sequence (stateful: one per sequence)."""
    from llama_cpp._internals import LlamaSampler

    n_vocab = llm.n_vocab()
    s = LlamaSampler()
    if p.logit_bias:
        s.add_logit_bias(n_vocab, p.logit_bias)
    if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
        s.add_penalties(n_vocab, 64, p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
    if p.grammar is not None:
        s.add_grammar(llm._model, p.grammar)
    if p.temperature <= 0:
        s.add_greedy()
        return s
    if p.top_k > 0:
        s.add_top_k(p.top_k)
    if p.top_p < 1.0:
        s.add_top_p(p.top_p, 1)
    if p.min_p > 0:
        s.add_min_p(p.min_p, 1)
    s.add_temp(p.temperature)
    seed = p.seed if p.seed is not None else int(np.random.randint(0, 2**31 - 1))
    s.add_dist(seed & 0xFFFFFFFF)
    return s


class TextAssembler:
    """Sampled tokens in, text deltas out: UTF-8 decoding, stop strings, logprobs."""

    def __init__(self, llm: llama_cpp.Llama, params: SamplingParams) -> None:
        self.llm = llm
        self.params = params
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = StopBuffer(params.stop)
        self.pending_lp: list[dict] = []
        self.completion_tokens = 0

    def push(self, token: int, logits: np.ndarray | None) -> tuple[Delta | None, str | None]:
        """Feed one sampled token; returns (delta to emit or None, finish reason or None)."""
        llm, p = self.llm, self.params
        if is_end_of_generation(llm, token):
            if p.report_stop_token and p.logprobs and logits is not None:
                self.completion_tokens += 1
                self.pending_lp.append(p.score_token(token, logits) if p.score_token is not None
                                       else _logprob_entry(llm, token, logits, p.top_logprobs))
            return self._tail(), "stop"
        self.completion_tokens += 1
        if p.logprobs and logits is not None:
            self.pending_lp.append(p.score_token(token, logits) if p.score_token is not None
                                   else _logprob_entry(llm, token, logits, p.top_logprobs))
        text, stopped = self.stops.push(self.decoder.decode(llm.detokenize([token])))
        if stopped:
            delta = Delta(text, self.pending_lp) if text or self.pending_lp else None
            self.pending_lp = []
            return delta, "stop"
        if self.completion_tokens >= p.max_tokens:
            text += self.stops.flush() + self.decoder.decode(b"", final=True)
            delta = Delta(text, self.pending_lp) if text or self.pending_lp else None
            self.pending_lp = []
            return delta, "length"
        if text or self.pending_lp:
            delta, self.pending_lp = Delta(text, self.pending_lp), []
            return delta, None
        return None, None

    def _tail(self) -> Delta | None:
        tail = self.stops.flush() + self.decoder.decode(b"", final=True)
        if tail or self.pending_lp:
            delta, self.pending_lp = Delta(tail, self.pending_lp), []
            return delta
        return None


def grammar_for(response_format: dict | None):
    """llama.cpp grammar constraining output to JSON (or to a JSON schema)."""
    if not response_format or response_format.get("type", "text") == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    kind = response_format["type"]
    try:
        if kind == "json_object":
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as err:  # the converter raises plain Exceptions on unsupported schemas
        raise InvalidRequest(
            f"response_format: cannot turn this JSON schema into a grammar: {err}",
            param="response_format",
        ) from None
