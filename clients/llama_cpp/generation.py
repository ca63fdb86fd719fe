"""One sequence's token loop on an in-process llama.cpp model.

Runs in the model's worker thread. Owns what llama-cpp-python's high-level chat call
does not give a gateway: exact token counts for streamed usage, logprobs without
``logits_all``, stop strings that never leak a partial match, UTF-8 split across
tokens, and a cancel flag checked at every token.
"""

from __future__ import annotations

import codecs
import threading
from dataclasses import dataclass, field
from typing import Iterator

import llama_cpp
import numpy as np

from clients.llama_cpp.internals import is_end_of_generation, last_logits


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


def _bias_processor(bias: dict[int, float]):
    ids = np.fromiter(bias.keys(), dtype=np.intc)
    vals = np.fromiter(bias.values(), dtype=np.single)

    def apply(_input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores[ids] += vals
        return scores

    return llama_cpp.LogitsProcessorList([apply])


class Generation:
    """Iterate to get ``Delta``s; afterwards ``finish_reason`` and ``completion_tokens``."""

    def __init__(
        self,
        llm: llama_cpp.Llama,
        prompt_tokens: list[int],
        params: SamplingParams,
        cancel: threading.Event,
    ) -> None:
        self.llm = llm
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.cancel = cancel
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.tokens: list[int] = []

    def __iter__(self) -> Iterator[Delta]:
        llm, p = self.llm, self.params
        if p.seed is not None:
            llm.set_seed(p.seed)
        else:
            llm.set_seed(int(np.random.randint(0, 2**31 - 1)))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopBuffer(p.stop)
        pending_lp: list[dict] = []
        temp = p.temperature if p.temperature > 0 else 0.0
        tokens = llm.generate(
            self.prompt_tokens,
            temp=temp,
            top_p=p.top_p,
            top_k=p.top_k,
            min_p=p.min_p,
            typical_p=1.0,
            repeat_penalty=p.repeat_penalty,
            frequency_penalty=p.frequency_penalty,
            presence_penalty=p.presence_penalty,
            logits_processor=_bias_processor(p.logit_bias) if p.logit_bias else None,
            grammar=p.grammar,
        )
        try:
            for token in tokens:
                if self.cancel.is_set():
                    self.finish_reason = "cancelled"
                    return
                if is_end_of_generation(llm, token):
                    self.finish_reason = "stop"
                    break
                self.tokens.append(token)
                self.completion_tokens += 1
                if p.logprobs:
                    pending_lp.append(
                        _logprob_entry(llm, token, last_logits(llm), p.top_logprobs)
                    )
                piece = llm.detokenize([token])
                text, stopped = stops.push(decoder.decode(piece))
                if text or (pending_lp and not stopped):
                    yield Delta(text, pending_lp)
                    pending_lp = []
                if stopped:
                    self.finish_reason = "stop"
                    return
                if self.completion_tokens >= p.max_tokens:
                    self.finish_reason = "length"
                    break
            else:
                self.finish_reason = self.finish_reason or "stop"
            tail = stops.flush() + decoder.decode(b"", final=True)
            if tail or pending_lp:
                yield Delta(tail, pending_lp)
        finally:
            tokens.close()
