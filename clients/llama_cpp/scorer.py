"""Next-token scores from an in-process llama.cpp model (the token-scorer interface).

The scorer shares the chat client's loaded weights and owns a second multi-sequence
context: each session is one sequence slot, so its KV cache persists between calls and
every step feeds only the new tokens. Logits are read straight from the context after a
decode (no ``logits_all``, no copy of the history). One worker thread owns the context;
``extend_many`` decodes several sessions in one batch, which is how an expert and an
anti-expert on the same weights cost about one decode per step instead of two.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from clients.errors import ContextLengthExceeded
from clients.llama_cpp.internals import (
    batch_add,
    batch_clear,
    logits_row,
    new_parallel_context,
    truncate_sequence,
)
from clients.scoring import NextTokenScores, ScoringSession, TokenScorer, log_softmax


class LlamaScoringSession(ScoringSession):
    def __init__(self, scorer: "LlamaScorer", seq_id: int) -> None:
        self.scorer = scorer
        self.seq_id = seq_id
        self._tokens: list[int] = []
        self._closed = False

    @property
    def tokens(self) -> list[int]:
        return self._tokens

    async def extend(self, tokens: list[int], positions: int = 1) -> list[NextTokenScores]:
        return (await self.scorer.extend_many([(self, tokens, positions)]))[0]

    async def truncate(self, n_tokens: int) -> None:
        if n_tokens < len(self._tokens):
            await self.scorer.run(self._truncate_now, n_tokens)

    def _truncate_now(self, n_tokens: int) -> None:
        truncate_sequence(self.scorer.ctx, self.seq_id, n_tokens)
        del self._tokens[n_tokens:]

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.scorer.free_slots.put_nowait(self.seq_id)


@dataclass
class _Item:
    work: int  # index into the extend_many work list
    token: int
    pos: int
    seq_id: int
    wants: bool


class LlamaScorer(TokenScorer):
    full_vocabulary = True

    def __init__(self, name: str, llm, n_ctx: int, n_seq: int, n_batch: int,
                 n_threads: int, lora=None) -> None:
        super().__init__(name)
        self.llm = llm
        self._n_vocab = llm.n_vocab()
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        # Exact numerics (no flash attention): proxy-tuning adds three models' scores and
        # its tests compare them with plain llama-cpp-python.
        self.ctx, self.batch = new_parallel_context(llm, n_ctx, n_seq, n_batch, n_threads,
                                                    flash_attn=False, lora=lora)
        self.free_slots: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n_seq):
            self.free_slots.put_nowait(i)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"llama-score-{name}")

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    async def run(self, fn, *args):
        """Run ``fn`` on the thread that owns the context."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def open(self) -> LlamaScoringSession:
        seq_id = await self.free_slots.get()
        session = LlamaScoringSession(self, seq_id)
        await self.run(truncate_sequence, self.ctx, seq_id, 0)
        return session

    async def extend_many(self, work):
        for session, tokens, _ in work:
            if len(session.tokens) + len(tokens) > self.n_ctx:
                raise ContextLengthExceeded(
                    f"proxy-tuning model '{self.name}' holds {self.n_ctx} tokens per sequence; "
                    f"this request needs {len(session.tokens) + len(tokens)}"
                )
        return await self.run(self._extend_now, work)

    def _extend_now(self, work) -> list[list[NextTokenScores]]:
        items: list[_Item] = []
        for w, (session, tokens, positions) in enumerate(work):
            start = len(session.tokens)
            first_wanted = len(tokens) - positions
            items.extend(
                _Item(w, t, start + i, session.seq_id, i >= first_wanted)
                for i, t in enumerate(tokens)
            )
        out: list[list[NextTokenScores]] = [[] for _ in work]
        for lo in range(0, len(items), self.n_batch):
            chunk = items[lo: lo + self.n_batch]
            batch_clear(self.batch)
            for it in chunk:
                batch_add(self.batch, it.token, it.pos, it.seq_id, it.wants)
            self.ctx.decode(self.batch)
            for k, it in enumerate(chunk):
                if it.wants:
                    row = logits_row(self.ctx, k, self._n_vocab)
                    out[it.work].append(NextTokenScores(logprobs=log_softmax(row)))
        for session, tokens, _ in work:
            session.tokens.extend(tokens)
        return out

    async def token_texts(self, ids: list[int]) -> list[bytes]:
        return [self.llm.detokenize([i], special=True) for i in ids]

    async def aclose(self) -> None:
        def _close() -> None:
            self.batch.close()
            self.ctx.close()

        await self.run(_close)
        self._worker.shutdown(wait=False)

