"""Legacy completions (``/v1/completions``) in backend-neutral pieces.

A row of logits is reduced once, where it is read, to ``PositionScores`` (the token's
log-probability, its rank and the top-k); the two JSON shapes it leaves in are pure
functions of those records: OpenAI's legacy ``logprobs`` object
(``{tokens, token_logprobs, top_logprobs, text_offset}``) and vLLM's ``prompt_logprobs``
(per prompt position ``{token_id: {logprob, rank, decoded_token}}``, ``None`` first).
Both follow vLLM's choices where OpenAI is silent: the chosen token is listed first in
``top_logprobs`` (so up to k+1 entries), ``-inf`` is sent as -9999.0, and
``return_tokens_as_token_ids`` spells tokens ``token_id:<id>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

FULL_VOCABULARY = -1  # ``logprobs``/``prompt_logprobs`` value asking for every token
MIN_LOGPROB = -9999.0  # what vLLM and OpenAI send instead of -inf
Prompt = str | list[int]
TokenText = Callable[[int], str]


def prompt_list(prompt: Any) -> list[Prompt]:
    """The request's ``prompt`` as a list of prompts (one string or token-id list each)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [list(prompt)]
    return list(prompt or [])


@dataclass
class PositionScores:
    """One position's next-token distribution, reduced to what the API returns."""

    token: int  # the token at this position (a prompt token, or the one sampled)
    logprob: float
    rank: int  # 1 = the most likely token (ties share the worse rank, as in vLLM)
    top_ids: np.ndarray  # best first; every token when k = FULL_VOCABULARY
    top_logprobs: np.ndarray


def score_row(logits: np.ndarray, token: int, k: int) -> PositionScores:
    """Log-softmax of one logits row at ``token``, with its rank and the top ``k``."""
    x = np.asarray(logits, dtype=np.float32)
    m = float(x.max())
    tmp = x - m  # one scratch array, exponentiated in place (this runs per position)
    np.exp(tmp, out=tmp)
    lse = m + float(np.log(tmp.sum()))  # float32 pairwise sum: ~1e-7 relative
    target = x[token]
    rank = int(np.count_nonzero(x >= target))
    if k == 0:
        ids = np.empty(0, dtype=np.int64)
    elif k < 0 or k >= len(x):
        ids = np.argsort(-x, kind="stable")
    else:
        ids = np.argpartition(x, len(x) - k)[len(x) - k:]
        ids = ids[np.argsort(-x[ids], kind="stable")]
    return PositionScores(token, float(target) - lse, rank, ids,
                          x[ids].astype(np.float64) - lse)


def _lp(value: float) -> float:
    return max(float(value), MIN_LOGPROB)


def legacy_logprobs(tokens: list[int], scores: list[PositionScores | None], k: int,
                    text_of: TokenText, as_ids: bool, offset: int = 0) -> dict:
    """OpenAI's legacy ``logprobs`` object for ``tokens``; a ``None`` score (the first
    prompt token under ``echo``) gives null entries. ``text_offset`` counts characters
    of each token's text from ``offset``."""
    name = (lambda t: f"token_id:{t}") if as_ids else text_of
    out_tokens, out_lps, out_tops, offsets = [], [], [], []
    for token, s in zip(tokens, scores):
        out_tokens.append(name(token))
        offsets.append(offset)
        offset += len(text_of(token))
        if s is None:
            out_lps.append(None)
            out_tops.append(None)
            continue
        out_lps.append(_lp(s.logprob))
        top = {name(token): _lp(s.logprob)}
        limit = len(s.top_ids) if k < 0 else min(k, len(s.top_ids))
        for tid, lp in zip(s.top_ids[:limit].tolist(), s.top_logprobs[:limit].tolist()):
            top.setdefault(name(tid), _lp(lp))
        out_tops.append(top)
    return {"tokens": out_tokens, "token_logprobs": out_lps, "top_logprobs": out_tops,
            "text_offset": offsets}


def prompt_logprobs(scores: list[PositionScores | None], k: int,
                    text_of: TokenText) -> list[dict | None]:
    """vLLM's ``prompt_logprobs``: per position the prompt token first, then the top
    ``k`` (``FULL_VOCABULARY``: all), keyed by token id as a string (JSON keys)."""
    out: list[dict | None] = []
    for s in scores:
        if s is None:
            out.append(None)
            continue
        entry = {str(s.token): {"logprob": _lp(s.logprob), "rank": s.rank,
                                "decoded_token": text_of(s.token)}}
        limit = len(s.top_ids) if k < 0 else min(k, len(s.top_ids))
        ids = s.top_ids[:limit].tolist()
        for rank, (tid, lp) in enumerate(zip(ids, s.top_logprobs[:limit].tolist()), 1):
            key = str(tid)
            if key not in entry:
                entry[key] = {"logprob": _lp(lp), "rank": rank, "decoded_token": text_of(tid)}
        out.append(entry)
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
