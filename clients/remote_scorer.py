"""Next-token scores from a remote OpenAI-compatible ``/completions`` endpoint.

The prompt travels as token ids (the vocabularies were checked to agree), so the server
scores exactly the tokens the gateway chose; its prefix cache (vLLM's automatic prefix
caching, llama.cpp's ``cache_prompt``, Tandem's slot cache) makes a session's growing
prompt cheap to resend. Two dialects:

- ``vllm`` (vLLM, Tandem's own server): ``logprobs`` + ``return_tokens_as_token_ids``
  for the next position, ``prompt_logprobs`` for several positions in one call; token
  ids come back exactly.
- ``echo`` (llama-cpp-python's server): its prompt must be text, so the tokens travel
  detokenized and the echoed token count proves the server re-tokenized them the same
  way; ``echo`` + ``logprobs`` give a row per prompt token. Tokens come back as strings,
  mapped to ids through the local vocabulary (a string shared by several tokens maps
  to the lowest id, the same way in every mode: a lossy server, documented as such).
  Its rows sit one position later than OpenAI's (row j is the distribution *after*
  token j) and each carries the echoed token as an extra entry, which is removed.

Every request goes out through ``OpenAIClient.post``, the backend's one send path.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson

from clients.errors import UpstreamError
from clients.openai_client import OpenAIClient
from clients.scoring import NextTokenScores, StatelessSession, TokenScorer

TOKEN_ID_PREFIX = "token_id:"


class RemoteScoringSession(StatelessSession):
    def __init__(self, scorer: "RemoteScorer") -> None:
        super().__init__()
        self.scorer = scorer

    async def score(self, tokens: list[int], positions: int) -> list[NextTokenScores]:
        return await self.scorer.score(tokens, positions, self.scorer.top_k)

    async def rescore_full(self, n_tokens: int) -> NextTokenScores:
        return (await self.scorer.score(self._tokens[:n_tokens], 1, None))[0]


class RemoteScorer(TokenScorer):
    """``top_k`` None asks for the whole vocabulary at every step (the per-token
    reference); the server must allow that many log-probabilities."""

    def __init__(self, name: str, upstream: OpenAIClient, n_vocab: int, top_k: int | None,
                 dialect: str, llm) -> None:
        super().__init__(name)
        self.upstream = upstream
        self._n_vocab = n_vocab
        self.top_k = top_k
        self.full_vocabulary = top_k is None
        self.dialect = dialect
        self.llm = llm  # the local tokenizer (the vocabularies were checked to agree)
        self._table: dict[str, int] | None = None  # string -> id, echo dialect only
        self.url = upstream.base_url + "/completions"

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    async def open(self) -> RemoteScoringSession:
        return RemoteScoringSession(self)

    # -- one call ------------------------------------------------------------------------
    async def score(self, tokens: list[int], positions: int,
                    top_k: int | None) -> list[NextTokenScores]:
        k = top_k or self._n_vocab
        body: dict[str, Any] = {"model": self.upstream.config.model, "prompt": tokens,
                                "max_tokens": 1, "temperature": 0.0, "logprobs": k}
        if self.dialect == "vllm":
            body["return_tokens_as_token_ids"] = True
            if positions > 1:
                body["prompt_logprobs"] = k
                # Tandem scores only the draft rows and reuses its cached KV before
                # them (vLLM ignores the field and scores the whole prompt).
                body["prompt_logprobs_from"] = len(tokens) - (positions - 1)
        else:
            body["echo"] = positions > 1  # echo makes it score every prompt row: slow
            body["prompt"] = self.llm.detokenize(tokens, special=True).decode("utf-8", "replace")
            if self._table is None:
                self._table = await asyncio.to_thread(piece_table, self.llm)
        reply = await self.upstream.fetch(self.url, orjson.dumps(body))
        try:
            payload = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            raise self._bad("its response is not JSON") from None
        try:
            choice = payload["choices"][0]
            if self.dialect == "vllm":
                rows = self._vllm_rows(choice, positions, top_k)
            elif positions > 1:
                rows = self._echo_rows(choice, len(tokens), positions, top_k)
            else:
                rows = self._next_row(choice, payload.get("usage") or {}, len(tokens), top_k)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise self._bad(f"its logprobs are missing or malformed ({err!r})") from None
        return rows

    def _bad(self, why: str) -> UpstreamError:
        return UpstreamError(
            f"proxy-tuning base '{self.upstream.name}' cannot score tokens: {why}; it needs "
            "a /completions endpoint with token-id prompts and logprobs", status=502)

    def _vllm_rows(self, choice: dict, positions: int, top_k: int | None
                   ) -> list[NextTokenScores]:
        rows = []
        if positions > 1:
            prompt_rows = choice["prompt_logprobs"][-(positions - 1):]
            for entry in prompt_rows:
                ranked = [(int(t), v["logprob"], v.get("rank")) for t, v in entry.items()]
                rows.append(self._scores(ranked, top_k))
        top = choice["logprobs"]["top_logprobs"][0]
        ranked = [(_token_id(key), lp, None) for key, lp in top.items()]
        rows.append(self._scores(ranked, top_k))
        return rows

    def _next_row(self, choice: dict, usage: dict, n_prompt: int, top_k: int | None
                  ) -> list[NextTokenScores]:
        seen = usage.get("prompt_tokens")
        if seen is not None and seen - n_prompt not in (0, 1):  # 1: a BOS it added
            raise ValueError(f"the server re-tokenized {n_prompt} prompt tokens as {seen}")
        lp = choice["logprobs"]
        return [self._named_row(lp["top_logprobs"][0], lp["tokens"][0], top_k)]

    def _echo_rows(self, choice: dict, n_prompt: int, positions: int, top_k: int | None
                   ) -> list[NextTokenScores]:
        lp = choice["logprobs"]
        tops, echoed = lp["top_logprobs"], lp["tokens"]
        # llama-cpp-python pairs echo row j with the distribution *after* token j, unless
        # it added a BOS token, whose row then shifts everything back into OpenAI's order.
        # The generated token follows the echoed prompt unless it ended the text.
        shift = 1 if self.llm._model.add_bos_token() else 0
        if len(echoed) - n_prompt not in (shift, 1):
            raise ValueError(f"the server re-tokenized {n_prompt} prompt tokens as "
                             f"{len(echoed)} echoed tokens")
        return [self._named_row(tops[j], echoed[j], top_k)
                for j in range(n_prompt - positions + shift, n_prompt + shift)]

    def _named_row(self, top: dict[str, float], own: str, top_k: int | None
                   ) -> NextTokenScores:
        """A row keyed by token strings; llama-cpp-python adds the row's own token to its
        top-k, which is dropped when it lies beyond the top-k (it would break the bound)."""
        top = dict(top)
        if len(top) > (top_k or self._n_vocab):
            top.pop(own, None)
        table = self._table or {}
        return self._scores([(table[t], v, None) for t, v in top.items() if t in table],
                            top_k)

    def _scores(self, ranked: list[tuple[int, float, int | None]],
                top_k: int | None) -> NextTokenScores:
        if top_k is None:
            full = np.full(self._n_vocab, -np.inf, dtype=np.float32)
            for tok, lp, _ in ranked:
                if 0 <= tok < self._n_vocab:
                    full[tok] = lp
            return NextTokenScores(logprobs=full)
        ids = np.array([t for t, _, _ in ranked], dtype=np.int64)
        lps = np.array([lp for _, lp, _ in ranked], dtype=np.float32)
        in_top = [lp for _, lp, rank in ranked if rank is None or rank <= top_k]
        bound = float(min(in_top))  # the k-th value: every unlisted token is below it
        order = np.argsort(-lps, kind="stable")
        return NextTokenScores(top_ids=ids[order], top_logprobs=lps[order], bound=bound)


def _token_id(key: str) -> int:
    if key.startswith(TOKEN_ID_PREFIX):
        return int(key[len(TOKEN_ID_PREFIX):])
    raise ValueError(f"token key {key!r} is not 'token_id:N'")


def piece_table(llm) -> dict[str, int]:
    """String -> lowest token id, as a server that detokenizes each token with
    ``errors='ignore'`` (llama-cpp-python's) names them."""
    table: dict[str, int] = {}
    for i in range(llm.n_vocab()):
        table.setdefault(llm.detokenize([i]).decode("utf-8", errors="ignore"), i)
    return table
